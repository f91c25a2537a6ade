#!/usr/bin/env python3
"""How much later than Dovecot's own delivery does a route see its probe: IDLE against polling.

Runs N probes back to back through the real Postfix and Dovecot of the test stack
(scripts/teststack.sh up) for each receive mode:

* ``idle + recheck``: the defaults (``idle: true``, ``idle_recheck: true``, ``poll_interval: 5s``);
* ``idle only``: ``idle_recheck: false`` and ``poll_interval: 60s``, so that only IDLE
  notifications find the probe and the time Dovecot takes to send them shows;
* ``poll 1s``: ``idle: false``, ``poll_interval: 1s``.

For each probe, the detection overhead is the time the route saw the message minus
Dovecot's save time, taken from its LMTP log line (microsecond timestamps), and, for
reference, minus the time Dovecot began to write the Maildir file (the ``M`` field of
its name).  Also reported: IMAP searches per probe.  Probes start 0 to 1 s (random)
after the previous one was found, as scheduled runs would, so that polling is not
phase-locked to the probes.

    python benchmarks/idle_vs_poll.py            # N=30; writes benchmarks/results/idle_vs_poll.md
    python benchmarks/idle_vs_poll.py -n 10
    python benchmarks/idle_vs_poll.py --quick    # N=3: does it still run?

``--results-dir DIR`` (default benchmarks/results) is where idle_vs_poll.md goes unless
``--out`` says otherwise; ``--summary FILE`` appends the headline figures as JSON lines, for
benchmarks/run_all.py.

Loopback only; bounded: N probes per mode, each at most 10 s, the whole run at most 10 minutes.
Exit status 1 if a probe of the default mode failed, or if the default mode's median or p95
overhead is 100 ms or more (not with --quick, where three probes say nothing, nor with
--no-target-exit).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from stack import Stack  # noqa: E402
from test_roundtrip_stack import MaildirWatch, maildir, route_cfg, saved_times  # noqa: E402

from exporter.core.model import Sink  # noqa: E402
from exporter.roundtrip.receiver import close_all  # noqa: E402
from exporter.roundtrip.route import Route  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from run_all import append_summary, summary_line  # noqa: E402

USER = "probe@example.test"
TARGET_MS = 100.0  # the design's target: IDLE adds under 100 ms
BUDGET = 600.0
MODES: dict[str, tuple[bool, bool, str]] = {  # idle, idle_recheck, poll_interval
    "idle + recheck (the defaults)": (True, True, "5s"),
    "idle only (idle_recheck: false, poll_interval: 60s)": (True, False, "60s"),
    "poll 1s (idle: false, poll_interval: 1s)": (False, False, "1s"),
}


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


async def run_mode(
    stack: Stack, name: str, idle: bool, recheck: bool, poll: str, n: int, deadline: float
) -> dict[str, object]:
    cfg = route_cfg(stack, "bench", user=USER, timeout="10s", idle=idle, recheck=recheck, poll=poll)
    route = Route(cfg, imap_timeout=5, send_timeout=10, log=logging.getLogger("bench"))
    watch = MaildirWatch(maildir(stack, USER))
    seen: list[tuple[str, float]] = []
    rng = random.Random(n)
    failures = 0
    try:
        assert await route.run(Sink(route.state), route.log), "warm-up probe failed"
        box = route.mailbox()
        cycles0 = box.cycles
        for _ in range(n):
            if time.monotonic() > deadline:
                break
            # runs are started by the scheduler, not by the last detection: unrelated phase
            await asyncio.sleep(rng.uniform(0, 1))
            ok = await route.run(Sink(route.state), route.log)
            probe = route.last
            if not ok or probe is None or probe.found is None:
                failures += 1
                continue
            seen.append((probe.token, probe.found.seen_at))
        cycles = box.cycles - cycles0
        await asyncio.sleep(0.05)
    finally:
        watch.close()
        route.close()
        await close_all()
    saved = saved_times(stack)
    vs_log = [(at - saved[tok][0]) * 1000 for tok, at in seen if tok in saved]
    vs_file = [(at - watch.began[tok]) * 1000 for tok, at in seen if tok in watch.began]
    return {
        "mode": name,
        "probes": len(seen),
        "failures": failures,
        "median": statistics.median(vs_log),
        "p95": p95(vs_log),
        "max": max(vs_log),
        "file_median": statistics.median(vs_file) if vs_file else float("nan"),
        "file_p95": p95(vs_file) if vs_file else float("nan"),
        "searches": cycles / max(1, len(seen)),
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=None, help="probes per mode (default 30; quick 3)")
    parser.add_argument("--quick", action="store_true", help="3 probes per mode: a check that it runs")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--out", default=None, help="the report (default: idle_vs_poll.md in --results-dir)")
    parser.add_argument("--summary", default=None, help="append the headline figures to this file as JSON lines")
    parser.add_argument(
        "--no-target-exit",
        action="store_true",
        help="exit 0 even when the 100 ms target is missed (it is still reported); failed probes still exit 1",
    )
    args = parser.parse_args()
    if args.n is None:
        args.n = 3 if args.quick else 30
    if args.n < 1:
        parser.error("-n: at least 1")
    if args.out is None:
        args.out = str(args.results_dir / "idle_vs_poll.md")
    stack = Stack.load()
    deadline = time.monotonic() + BUDGET
    rows = []
    for name, (idle, recheck, poll) in MODES.items():
        rows.append(await run_mode(stack, name, idle, recheck, poll, args.n, deadline))
        print(rows[-1], flush=True)
    lines = [
        f"### IMAP detection overhead: IDLE against polling (N={args.n} probes per mode, real Postfix + Dovecot"
        " on loopback)",
        "",
        "Overhead = the time the route saw the probe (the answer to the SEARCH that listed it) minus Dovecot's",
        "save time from its LMTP log line (`stored mail into mailbox`, microsecond timestamps). For reference,",
        "the same against the time Dovecot began to write the Maildir file (the `M` field of its name).",
        "Probes start a random 0-1 s after the previous one was found, so the 1 s poll grid is unrelated to them.",
        "",
        "| mode | probes | overhead median | p95 | max | vs Maildir M: median | p95 | search rounds per probe |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['probes']} | {r['median']:.1f} ms | {r['p95']:.1f} ms | {r['max']:.1f} ms | "
            f"{r['file_median']:.1f} ms | {r['file_p95']:.1f} ms | {r['searches']:.1f} |"
        )
    default = rows[0]
    lines += [
        "",
        f"Target: IDLE adds under 100 ms. The defaults: median {default['median']:.1f} ms, "
        f"p95 {default['p95']:.1f} ms.",
        "",
        "Dovecot delays every IDLE notification by a fixed 500 ms (`NOTIFY_DELAY_MSECS` in",
        "src/lib-storage/mailbox-watch.c), which is what the `idle only` row shows. The default `idle_recheck`",
        "searches again 50 ms apart while a young probe is pending (then every 2.5% of its age), so the",
        "overhead stays under 100 ms without depending on the server's notification delay.",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    poll = rows[-1]
    append_summary(
        args.summary,
        [
            summary_line(
                "idle",
                f"IMAP detection overhead, {label}, {args.n} probes",
                float(value),  # type: ignore[arg-type]
                unit="ms",
                better="lower",
                rounds=1,
                quick=args.quick,
                target=target,
            )
            for label, value, target in (
                ("IDLE + recheck (the defaults): median", default["median"], TARGET_MS),
                ("IDLE + recheck (the defaults): p95", default["p95"], TARGET_MS),
                ("poll 1s: median", poll["median"], None),
            )
        ],
    )
    if default["failures"]:
        print(f"{default['failures']} probe(s) of the default mode failed", file=sys.stderr)
        return 1
    met = default["median"] < TARGET_MS and default["p95"] < TARGET_MS  # type: ignore[operator]
    return 0 if met or args.quick or args.no_target_exit else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(asyncio.run(main()))
