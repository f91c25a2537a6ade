#!/usr/bin/env python3
"""SMTP STARTTLS checks per CPU-second: this exporter against prometheus-blackbox-exporter.

Both run side by side in the same run, against the real Postfix of the test stack
(scripts/teststack.sh up; 127.0.0.1:2525), each driven through its /probe endpoint
by the same client at the same concurrency.  CPU is read from /proc/<pid>/stat
(user + system) of each exporter process before and after.

blackbox_exporter uses the classic ``smtp_starttls`` module of its example config
(tcp prober: expect 220, EHLO, expect STARTTLS, STARTTLS, handshake, EHLO, QUIT).
This exporter's module does the same dialog and additionally times each phase,
inspects the leaf certificate and checks the host name itself.

    python benchmarks/starttls_vs_blackbox.py [--probes 400] [--concurrency 4] [--rounds 3]
    python benchmarks/starttls_vs_blackbox.py --quick     # 30 probes, 1 round: does it still run?

Each round drives both exporters (alternating which goes first); the table gives the
median of the rounds.  ``--summary FILE`` appends the headline figure as a JSON line (for
benchmarks/run_all.py).

Loopback only, bounded.  Prints a table and writes starttls.md to --results-dir
(default benchmarks/results).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from run_all import append_summary, peer_version, summary_line  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout}s")


def probe_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=15) as resp:
        return "probe_success 1" in resp.read().decode()


def drive(name: str, pid: int, url: str, probes: int, concurrency: int) -> dict[str, float]:
    assert probe_ok(url), f"{name}: a single probe does not succeed: {url}"
    before = cpu_seconds(pid)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda _: probe_ok(url), range(probes)))
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - before
    return {"ok": sum(results), "wall": wall, "cpu": cpu, "per_cpu_s": probes / cpu if cpu else float("inf")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probes", type=int, default=None, help="probes per exporter and round (default 400; quick 30)")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument(
        "--rounds", type=int, default=None, help="rounds; the table gives their median (default 3; quick 1)"
    )
    ap.add_argument("--quick", action="store_true", help="small sizes (30 probes, 1 round): a check that it runs")
    ap.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks/results", help="where starttls.md goes")
    ap.add_argument("--summary", default=None, help="append the headline figure to this file as a JSON line")
    args = ap.parse_args()
    if args.probes is None:
        args.probes = 30 if args.quick else 400
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.probes < 1 or args.rounds < 1:
        ap.error("--probes and --rounds: at least 1")
    stack = json.loads(Path(os.environ.get("MCE_STACK_DIR", "/tmp/mce-teststack"), "stack.json").read_text())
    smtp = f"127.0.0.1:{stack['ports']['smtp']}"
    ca = stack["certs"]["ca"]["cert"]
    blackbox = shutil.which("prometheus-blackbox-exporter")
    if blackbox is None:
        raise SystemExit("prometheus-blackbox-exporter is not installed (apt-get install prometheus-blackbox-exporter)")

    tmp = Path(tempfile.mkdtemp(prefix="mce-starttls-"))
    (tmp / "blackbox.yml").write_text(f"""
modules:
  smtp_starttls:
    prober: tcp
    timeout: 10s
    tcp:
      preferred_ip_protocol: ip4
      tls_config: {{ca_file: "{ca}", server_name: mx1.example.test}}
      query_response:
        - expect: "^220 ([^ ]+) ESMTP (.+)$"
        - send: "EHLO prober.example.test\\r"
        - expect: "^250-STARTTLS"
        - send: "STARTTLS\\r"
        - expect: "^220"
        - starttls: true
        - send: "EHLO prober.example.test\\r"
        - expect: "^250-AUTH|^250 "
        - send: "QUIT\\r"
""")
    (tmp / "mce.yml").write_text(f"""
global: {{interval: 1h, timeout: 10s}}
probe: {{rate_limit: {{requests_per_second: 0}}}}  # the benchmark's one client sends every probe
endpoints:
  - {{name: starttls, protocol: smtp, address: "{smtp}", tls: starttls, helo: prober.example.test,
     tls_config: {{ca_file: "{ca}", server_name: mx1.example.test}}}}
""")
    bb_port, mce_port = free_port(), free_port()
    procs = [
        subprocess.Popen(
            [
                blackbox,
                f"--config.file={tmp / 'blackbox.yml'}",
                f"--web.listen-address=127.0.0.1:{bb_port}",
                "--log.level=error",
            ]
        ),
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                f"--config.file={tmp / 'mce.yml'}",
                f"--web.listen-address=127.0.0.1:{mce_port}",
                f"--storage.path={tmp / 'data'}",
                "--log.level=error",
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        ),
    ]
    try:
        wait_http(f"http://127.0.0.1:{bb_port}/-/healthy")
        wait_http(f"http://127.0.0.1:{mce_port}/-/ready")
        targets = {
            BB_NAME: ("blackbox", procs[0].pid, f"http://127.0.0.1:{bb_port}/probe?module=smtp_starttls&target={smtp}"),
            MCE_NAME: ("mce", procs[1].pid, f"http://127.0.0.1:{mce_port}/probe?module=starttls"),
        }
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        for i in range(args.rounds):
            order = list(targets) if i % 2 == 0 else list(reversed(targets))
            for name in order:
                rounds[name].append(drive(*targets[name], args.probes, args.concurrency))
            print(
                f"round {i + 1}/{args.rounds}: "
                + ", ".join(f"{name} {rounds[name][-1]['per_cpu_s']:.0f}/CPU-s" for name in targets),
                file=sys.stderr,
                flush=True,
            )
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(20)
    results = {
        name: {key: statistics.median(r[key] for r in rs) for key in ("ok", "wall", "cpu", "per_cpu_s")}
        for name, rs in rounds.items()
    }
    bb, mce = results[BB_NAME], results[MCE_NAME]
    of_rounds = f", median of {args.rounds} rounds" if args.rounds > 1 else ""
    rows = [
        f"### SMTP STARTTLS checks per CPU-second ({args.probes} probes via /probe, concurrency {args.concurrency}, "
        f"real Postfix on loopback{of_rounds})",
        "",
        "| exporter | successful | wall s | exporter CPU s | checks per CPU-second |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        rows.append(f"| {name} | {r['ok']:.0f} | {r['wall']:.2f} | {r['cpu']:.2f} | {r['per_cpu_s']:.0f} |")
    rows += ["", f"Ratio (this exporter / blackbox_exporter): **{mce['per_cpu_s'] / bb['per_cpu_s']:.2f}×**", ""]
    if args.rounds > 1:
        rows += [
            "Checks per CPU-second in each round: "
            + "; ".join(name + ": " + ", ".join(f"{r['per_cpu_s']:.0f}" for r in rs) for name, rs in rounds.items()),
            "",
        ]
    report = "\n".join(rows)
    print(report)
    out = args.results_dir / "starttls.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    append_summary(
        args.summary,
        [
            summary_line(
                "starttls",
                "SMTP STARTTLS checks per CPU-second",
                mce["per_cpu_s"],
                peer=bb["per_cpu_s"],
                peer_name=peer_version("prometheus-blackbox-exporter"),
                unit="checks/CPU-s",
                better="higher",
                rounds=args.rounds,
                quick=args.quick,
            )
        ],
    )
    return 0


BB_NAME = "prometheus-blackbox-exporter (smtp_starttls)"
MCE_NAME = "mail-continuity-exporter (smtp, tls: starttls)"


if __name__ == "__main__":
    sys.exit(main())
