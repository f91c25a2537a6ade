#!/usr/bin/env python3
"""Every benchmark in one command, and one summary table of the ratios (issue 20).

Runs each script of ``benchmarks/`` in sequence, as a subprocess with a time budget
(killed and reported "timed out" when it is exceeded), collects the headline figures
each writes with ``--summary FILE`` (one JSON object per line) and writes
``summary.md``: the date, the command, the machine (CPU, RAM, kernel, Debian, CPython,
the peers' versions) and one table, benchmark | figure | ours | peer | ratio | better |
rounds.  The JSON lines themselves go next to it, in ``summary.jsonl``.

    python3 benchmarks/run_all.py                         # full size; results in benchmarks/results/
    python3 benchmarks/run_all.py --quick                 # small sizes, a few seconds each (CI)
    python3 benchmarks/run_all.py --only starttls,logs    # a subset
    scripts/bench.sh --quick                              # the same, with the repo's python

``runs.json`` lists each benchmark's status (ok, failed, timed out, skipped), the reason and
its seconds.  ``--quick`` passes ``--quick`` to every script and a temporary results directory (or
``--results-dir``), so that the committed full-size results in benchmarks/results/ are
never overwritten by a quick run.  A benchmark whose prerequisites are missing (the peer
binary, the test stack of ``scripts/teststack.sh up``, root) is skipped with the reason.

Exit status: 1 if any benchmark failed (crashed or timed out), else 0; never because of
a measured value (the scripts that judge a target are run with ``--no-target-exit``).
Everything the scripts start listens on or talks to 127.0.0.1 only.

The helpers ``summary_line`` and ``append_summary`` are what the scripts use to write
their ``--summary`` lines.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "benchmarks"
RESULTS = HERE / "results"
STACK_JSON = Path(os.environ.get("MCE_STACK_DIR") or "/tmp/mce-teststack") / "stack.json"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BLACKBOX = "prometheus-blackbox-exporter"
POSTFIX_EXPORTER = "prometheus-postfix-exporter"


# --- the summary lines (used by the scripts) --------------------------------------------------------


def _num(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return float(f"{x:.6g}") if math.isfinite(x) else None


def summary_line(
    benchmark: str,
    figure: str,
    ours: float,
    *,
    unit: str,
    better: str,
    rounds: int,
    quick: bool,
    peer: float | None = None,
    peer_name: str | None = None,
    target: float | None = None,
) -> dict[str, Any]:
    """One headline figure: ours, the peer's (None where there is no peer) and ours / peer.

    ``better`` is "higher" or "lower"; ``target`` is the design's target for the figure
    when there is no peer to compare with (an upper bound when lower is better).  A value
    that is not finite (inf, nan) is written as null.
    """
    assert better in ("higher", "lower"), better
    o, p = _num(ours), _num(peer)
    ratio = _num(o / p) if o is not None and p else None
    return {
        "benchmark": benchmark,
        "figure": figure,
        "ours": o,
        "peer": p,
        "peer_name": peer_name if peer is not None else None,
        "ratio": round(ratio, 4) if ratio is not None else None,
        "better": better,
        "unit": unit,
        "rounds": rounds,
        "quick": quick,
        "target": _num(target),
    }


def append_summary(path: str | Path | None, lines: list[dict[str, Any]]) -> None:
    """Append ``lines`` to ``path`` (``--summary``), one JSON object per line; nothing without a path."""
    if not path:
        return
    with Path(path).open("a", encoding="utf-8") as fh:
        for line in lines:
            fh.write(json.dumps(line) + "\n")


def peer_version(package: str) -> str:
    """``<package> <Debian version>`` from dpkg-query, or just the name."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, timeout=10, check=False
        )
        if out.returncode == 0 and out.stdout.strip():
            return f"{package} {out.stdout.strip()}"
    return package


# --- the benchmarks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    name: str
    script: str  # relative to benchmarks/
    what: str
    budget: float  # seconds, full size
    quick_budget: float  # seconds, --quick
    binaries: tuple[str, ...] = ()
    stack_ports: tuple[str, ...] = ()  # keys of stack.json "ports" that must accept connections
    root: bool = False
    modules: tuple[str, ...] = ()
    args: tuple[str, ...] = ()  # always passed
    quick_args: tuple[str, ...] = field(default=())  # passed with --quick (besides --quick)


BENCHMARKS: tuple[Bench, ...] = (
    Bench(
        "starttls",
        "starttls_vs_blackbox.py",
        "SMTP STARTTLS checks per CPU-second against prometheus-blackbox-exporter (real Postfix)",
        budget=900,
        quick_budget=120,
        binaries=(BLACKBOX,),
        stack_ports=("smtp",),
    ),
    Bench(
        "queue",
        "queue_bench.py",
        "queue reader at a large deferred queue against prometheus-postfix-exporter (real Postfix)",
        budget=3600,
        quick_budget=180,
        binaries=(POSTFIX_EXPORTER, "postqueue", "postsuper", "postconf", "/usr/bin/time"),
        stack_ports=("smtp",),
        root=True,
    ),
    Bench(
        "logs",
        "logs_bench.py",
        "Postfix log lines per CPU-second against prometheus-postfix-exporter",
        budget=4000,
        quick_budget=120,
        binaries=(POSTFIX_EXPORTER,),
    ),
    Bench(
        "metrics_latency",
        "metrics_latency.py",
        "/metrics latency while checks hang on a tarpit",
        budget=600,
        quick_budget=90,
        binaries=("ss",),
    ),
    Bench(
        "webhook",
        "webhook_bench.py",
        "durable Alertmanager webhook ingestion (SQLite; PostgreSQL when it answers)",
        budget=1200,
        quick_budget=90,
    ),
    Bench(
        "idle",
        "idle_vs_poll.py",
        "IMAP IDLE detection overhead against polling (real Postfix and Dovecot)",
        budget=700,
        quick_budget=120,
        stack_ports=("smtp", "imap"),
        args=("--no-target-exit",),
    ),
    Bench(
        "fault_matrix",
        "fault_matrix.py",
        "the fault matrix through the exporter: reasons, run times, /metrics latency",
        budget=180,
        quick_budget=90,
        args=("--no-target-exit",),
    ),
    Bench(
        "failover",
        "failover_bench.py",
        "lease failover of an HA pair on PostgreSQL",
        budget=900,
        quick_budget=120,
        stack_ports=("postgresql",),
        modules=("psycopg",),
    ),
    Bench(
        "soak",
        "soak/soak.py",
        "the soak: RSS, fds and asyncio tasks flat under many checks; /metrics latency",
        budget=900,
        quick_budget=120,
        args=("--no-target-exit", "--plain-every", "5"),  # every 5th scrape uncompressed, timed apart
    ),
)
NAMES = tuple(b.name for b in BENCHMARKS)
#: Benchmarks that use the test stack's Postfix queue or mailboxes: with --quick --jobs N they
#: still run one after the other (one worker), the others beside them on the remaining workers.
SHARED_STACK = frozenset({"starttls", "queue", "idle"})


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def why_skip(b: Bench) -> str | None:
    """None when the benchmark can run here, else why not."""
    path = SYSTEM_PATH + os.pathsep + os.environ.get("PATH", "")
    for binary in b.binaries:
        if shutil.which(binary, path=path) is None:
            return f"{binary} is not installed (scripts/teststack.sh install)"
    for module in b.modules:
        if importlib.util.find_spec(module) is None:
            return f"the Python module {module} is not installed"
    if b.root and os.geteuid() != 0:
        return "needs root"
    if b.stack_ports:
        try:
            ports = json.loads(STACK_JSON.read_text())["ports"]
        except (OSError, ValueError, KeyError, TypeError):
            return f"the test stack is not up ({STACK_JSON} not found: scripts/teststack.sh up)"
        down = [k for k in b.stack_ports if k not in ports or not _port_open(int(ports[k]))]
        if down:
            return f"the test stack is not up ({', '.join(down)} not answering: scripts/teststack.sh up)"
    return None


@dataclass
class Outcome:
    bench: Bench
    status: str  # ok, failed, timed out, skipped
    reason: str = ""
    seconds: float = 0.0
    command: list[str] = field(default_factory=list)
    lines: list[dict[str, Any]] = field(default_factory=list)
    log: Path | None = None


#: Benchmark processes running now (several with --quick --jobs): stopped if run_all is interrupted.
_RUNNING: set[subprocess.Popen[bytes]] = set()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT to the benchmark's process group (Python runs its clean-ups), then SIGKILL."""
    for sig, grace in ((signal.SIGINT, 20.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_one(b: Bench, quick: bool, results_dir: Path, log_dir: Path, budget: float) -> Outcome:
    reason = why_skip(b)
    if reason is not None:
        return Outcome(b, "skipped", reason)
    summary = log_dir / f"{b.name}.jsonl"
    summary.unlink(missing_ok=True)
    log = log_dir / f"{b.name}.log"
    cmd = [sys.executable, str(HERE / b.script), *b.args]
    if quick:
        cmd += ["--quick", *b.quick_args]
    cmd += [f"--results-dir={results_dir}", f"--summary={summary}"]
    started = time.monotonic()
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        _RUNNING.add(proc)
        try:
            rc = proc.wait(budget)
        except subprocess.TimeoutExpired:
            rc = None
            _stop(proc)
        except BaseException:
            _stop(proc)
            raise
        finally:
            _RUNNING.discard(proc)
    took = time.monotonic() - started
    lines = []
    if summary.exists():
        lines = [json.loads(line) for line in summary.read_text().splitlines() if line.strip()]
    out = Outcome(b, "ok", "", took, cmd, lines, log)
    if rc is None:
        out.status, out.reason = "timed out", f"after {budget:.0f} s (stopped)"
    elif rc != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        out.status, out.reason = "failed", f"exit status {rc}: {tail[0][:300]}"
    elif not lines:
        out.status, out.reason = "failed", "wrote no summary line"
    return out


# --- the machine --------------------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _first_line(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        text = (out.stdout or out.stderr).strip()
        if out.returncode == 0 and text:
            return text.splitlines()[0]
    return ""


def machine() -> list[tuple[str, str]]:
    cpuinfo = _read("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    cpu = f"{models[0] if models else platform.processor() or 'unknown'}, {os.cpu_count()} CPUs"
    mem_kb = next(
        (int(line.split()[1]) for line in _read("/proc/meminfo").splitlines() if line.startswith("MemTotal:")), 0
    )
    debian = _read("/etc/debian_version").strip()
    rows = [
        ("CPU", cpu),
        ("RAM", f"{mem_kb / 2**20:.1f} GiB"),
        ("kernel", f"{platform.system()} {platform.release()} ({platform.machine()})"),
        ("Debian", debian or "(not Debian)"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
    ]
    peers = []
    for package in (BLACKBOX, POSTFIX_EXPORTER):
        if shutil.which(package, path=SYSTEM_PATH + os.pathsep + os.environ.get("PATH", "")) is None:
            peers.append(f"{package} (not installed)")
            continue
        said = _first_line([package, "--version"]) if package == BLACKBOX else ""
        peers.append(peer_version(package) + (f" ({said})" if said else ""))
    rows.append(("peers", "; ".join(peers)))
    stack = [peer_version(p) for p in ("postfix", "dovecot-core", "postgresql")]
    rows.append(("test stack packages", ", ".join(s for s in stack if " " in s) or "(not installed)"))
    load = os.getloadavg()
    rows.append(("load average at the start", f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"))
    return rows


# --- the report -----------------------------------------------------------------------------------------


def fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "—"
    a = abs(x)
    if float(x).is_integer() and a < 1e6:
        return f"{x:,.0f} {unit}".strip()
    text = f"{x:,.0f}" if a >= 100 else f"{x:.1f}" if a >= 10 else f"{x:.2f}" if a >= 0.1 else f"{x:.3g}"
    return f"{text} {unit}".strip()


def table_rows(outcomes: list[Outcome]) -> list[str]:
    rows = ["| benchmark | figure | ours | peer | ratio | better | rounds |", "|---|---|---:|---|---:|---|---:|"]
    for o in outcomes:
        if o.status != "ok":
            rows.append(f"| {o.bench.name} | **{o.status}**: {o.reason.replace('|', '/')} |  |  |  |  |  |")
            continue
        for s in o.lines:
            if s.get("peer") is not None:
                peer = f"{fmt(s['peer'], s['unit'])} ({s.get('peer_name') or 'peer'})"
            elif s.get("target") is not None:
                peer = f"target {'≤' if s['better'] == 'lower' else '≥'} {fmt(s['target'], s['unit'])}"
            else:
                peer = "—"
            ratio = f"**{s['ratio']:.2f}×**" if s.get("ratio") is not None else "—"
            rows.append(
                f"| {o.bench.name} | {s['figure']} | {fmt(s['ours'], s['unit'])} | {peer} | {ratio} | "
                f"{s['better']} | {s['rounds']} |"
            )
    return rows


def report(outcomes: list[Outcome], args: argparse.Namespace, command: str, started: dt.datetime) -> str:
    mode = (
        "**quick** (small sizes: a check that every script still runs; its figures are not comparable "
        "with full-size runs)"
        if args.quick
        else "full size"
    )
    out = [
        "# Benchmarks: summary",
        "",
        f"- date: {started.strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{command}`",
        f"- mode: {mode}",
        "",
        "## Machine",
        "",
        *(f"- {k}: {v}" for k, v in machine()),
        "",
        "## Figures",
        "",
        "Ratio = ours / peer, whichever way is better (the `better` column says which). Where there is no peer,",
        "the peer column gives the design's target if the script knows it. Where a script runs several rounds,",
        "the figure is the median of the rounds (`rounds`).",
        "",
        *table_rows(outcomes),
        "",
        "## Runs",
        "",
        "| benchmark | what | status | seconds | command |",
        "|---|---|---|---:|---|",
    ]
    for o in outcomes:
        shown = [c for c in o.command if not c.startswith("--summary=")]
        cmd = " ".join(shlex.quote(c) for c in shown).replace(sys.executable, "python3").replace(str(ROOT) + "/", "")
        status = o.status if not o.reason else f"{o.status}: {o.reason}"
        out.append(
            f"| {o.bench.name} | {o.bench.what} | {status.replace('|', '/')} | {o.seconds:.1f} | "
            f"{f'`{cmd}`' if cmd else ''} |"
        )
    total = sum(o.seconds for o in outcomes)
    out += ["", f"Total: {total:.0f} s.", ""]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, a few seconds each (what CI runs)")
    ap.add_argument(
        "--only", default="", help=f"comma-separated subset of: {', '.join(NAMES)} (default: all, in this order)"
    )
    ap.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help="where the scripts write their results and summary.md goes "
        "(default: benchmarks/results; with --quick a new temporary directory)",
    )
    ap.add_argument(
        "--log-dir", type=Path, default=None, help="each benchmark's output (default: a temporary directory)"
    )
    ap.add_argument("--budget", type=float, default=None, help="seconds each benchmark may take (default: its own)")
    ap.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="with --quick: benchmarks run side by side on this many workers (default 3; the ones that use the "
        "stack's Postfix queue and mailboxes stay one after the other). Full-size runs are always sequential: "
        "their figures would disturb each other",
    )
    args = ap.parse_args()
    # killed politely (SIGTERM): stop the running benchmark's process group too, as Ctrl-C does
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    # SIGINT as KeyboardInterrupt even when started with it ignored (a background job of a script), so
    # that the benchmarks, which inherit an ignored SIGINT, can be interrupted and clean up
    signal.signal(signal.SIGINT, signal.default_int_handler)
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in only if n not in NAMES]
    if unknown:
        ap.error(f"--only: unknown benchmark {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    chosen = [b for b in BENCHMARKS if not only or b.name in only]
    results_dir = args.results_dir or (Path(tempfile.mkdtemp(prefix="mce-bench-quick-")) if args.quick else RESULTS)
    results_dir = results_dir.resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    log_dir = (args.log_dir or Path(tempfile.mkdtemp(prefix="mce-bench-logs-"))).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python3 benchmarks/run_all.py", *(shlex.quote(a) for a in sys.argv[1:])])
    if os.environ.get("MCE_BENCH_COMMAND"):
        command = os.environ["MCE_BENCH_COMMAND"]
    started = dt.datetime.now(dt.UTC)
    print(f"results: {results_dir}\nlogs: {log_dir}", flush=True)
    jobs = max(1, args.jobs or 3) if args.quick else 1

    def one(b: Bench) -> Outcome:
        budget = args.budget or (b.quick_budget if args.quick else b.budget)
        o = run_one(b, args.quick, results_dir, log_dir, budget)
        print(f"== {b.name}: {o.status}{': ' + o.reason if o.reason else ''} ({o.seconds:.1f} s)", flush=True)
        if o.status in ("failed", "timed out") and o.log is not None:
            tail = o.log.read_text(errors="replace").splitlines()[-15:]
            print("\n".join(f"   | {b.name}: " + line for line in tail), file=sys.stderr, flush=True)
        return o

    if jobs == 1:
        outcomes = [one(b) for b in chosen]
    else:
        serial = [b for b in chosen if b.name in SHARED_STACK]
        pool = ThreadPoolExecutor(jobs)
        try:
            chain = pool.submit(lambda: [one(b) for b in serial])
            rest = {b.name: pool.submit(one, b) for b in chosen if b.name not in SHARED_STACK}
            done = {o.bench.name: o for o in chain.result()} | {name: f.result() for name, f in rest.items()}
        except BaseException:  # interrupted: stop what runs, drop what waits
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in list(_RUNNING):
                _stop(proc)
            raise
        pool.shutdown()
        outcomes = [done[b.name] for b in chosen]
    text = report(outcomes, args, command, started)
    (results_dir / "summary.md").write_text(text)
    with (results_dir / "summary.jsonl").open("w", encoding="utf-8") as fh:
        for o in outcomes:
            for line in o.lines:
                fh.write(json.dumps(line) + "\n")
    runs = [
        {"benchmark": o.bench.name, "status": o.status, "reason": o.reason, "seconds": round(o.seconds, 1)}
        for o in outcomes
    ]
    (results_dir / "runs.json").write_text(json.dumps(runs, indent=1) + "\n")
    print()
    print("\n".join(table_rows(outcomes)))
    print(f"\nwrote {results_dir / 'summary.md'} (total {sum(o.seconds for o in outcomes):.0f} s)")
    failed = [o.bench.name for o in outcomes if o.status in ("failed", "timed out")]
    if failed:
        print(f"FAILED: {', '.join(failed)} (logs in {log_dir})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
