#!/usr/bin/env python3
"""Lease failover of an HA pair: how long the once-only jobs are without a runner.

Starts two real exporters (``python -m exporter``) on one scratch database of the test
stack's PostgreSQL, with the default ``continuity.store.lease_ttl`` (6 s) unless
``--lease-ttl`` says otherwise.  Each round stops the lease holder, by SIGKILL (a crash:
the lease must expire) or SIGTERM (a clean stop: the holder releases it), and measures
the time from the signal until the other exporter's ``/metrics`` shows
``mail_exporter_leader 1`` (polled every 50 ms, so the figures are up to 50 ms late).
The stopped exporter is started again before the next round, so the lease alternates.

    python benchmarks/failover_bench.py                 # 5 rounds of each, default ttl
    python benchmarks/failover_bench.py --rounds 3 --lease-ttl 10s
    python benchmarks/failover_bench.py --quick      # 1 round of each: does it still run?

Loopback only; bounded (each wait gives up after 60 s).  Prints a markdown table and
writes it to failover.md in --results-dir (default benchmarks/results); ``--summary FILE``
appends the headline figures (medians of the rounds) as JSON lines, for benchmarks/run_all.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from run_all import append_summary, summary_line  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "failover.md"
STACK_JSON = Path(os.environ.get("MCE_STACK_DIR") or "/tmp/mce-teststack") / "stack.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def leader(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("mail_exporter_leader "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


class Exporter:
    def __init__(self, workdir: Path, config: Path, url: str) -> None:
        self.workdir, self.config, self.url = workdir, config, url
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.port = free_port()
        log = (self.workdir / "exporter.log").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                f"--config.file={self.config}",
                f"--storage.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MCE_BENCH_STORE_URL": self.url},
            cwd=ROOT,
        )
        deadline = time.monotonic() + 60
        while leader(self.port) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("exporter did not start:\n" + (self.workdir / "exporter.log").read_text()[-2000:])
            time.sleep(0.05)

    def stop(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(30)
        self.proc = None


def measure(pair: list[Exporter], sig: int) -> float:
    holder = next(e for e in pair if leader(e.port) == 1.0)
    other = next(e for e in pair if e is not holder)
    t0 = time.monotonic()
    holder.stop(sig)
    while leader(other.port) != 1.0:
        if time.monotonic() - t0 > 60:
            raise SystemExit("the standby never took the lease")
        time.sleep(0.05)
    took = time.monotonic() - t0
    holder.start()
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=None, help="rounds of each (default 5; quick 1)")
    ap.add_argument("--lease-ttl", default="", help="continuity.store.lease_ttl (default: the exporter's, 6s)")
    ap.add_argument("--no-write", action="store_true", help="print only; write no failover.md")
    ap.add_argument("--quick", action="store_true", help="1 round of each: a check that it runs")
    ap.add_argument("--results-dir", type=Path, default=RESULTS.parent, help="where failover.md goes")
    ap.add_argument("--summary", default=None, help="append the headline figures to this file as JSON lines")
    args = ap.parse_args()
    if args.rounds is None:
        args.rounds = 1 if args.quick else 5
    if args.rounds < 1:
        ap.error("--rounds: at least 1")
    if not STACK_JSON.exists():
        raise SystemExit(f"{STACK_JSON} not found: start the test stack (sudo scripts/teststack.sh up)")
    pg = json.loads(STACK_JSON.read_text())["postgresql"]
    admin = make_conninfo(pg["dsn"], password=pg["password"])
    name = f"mce_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = f"postgresql://{pg['user']}:{pg['password']}@{pg['host']}:{pg['port']}/{name}"
    ttl = f"    lease_ttl: {args.lease_ttl}\n" if args.lease_ttl else ""
    results: dict[str, list[float]] = {"SIGKILL (crash)": [], "SIGTERM (clean stop)": []}
    with tempfile.TemporaryDirectory(prefix="mce-failover-") as tmp:
        config = Path(tmp) / "config.yml"
        config.write_text(
            "global: {interval: 1h}\ncontinuity:\n  store:\n    url: ${MCE_BENCH_STORE_URL}\n"
            + ttl
            + "  services:\n    - {name: inbound, incident_match: {service: inbound}}\n"
        )
        pair = []
        for tag in ("a", "b"):
            (Path(tmp) / tag).mkdir()
            pair.append(Exporter(Path(tmp) / tag, config, url))
        try:
            for e in pair:
                e.start()
            for _ in range(args.rounds):
                results["SIGKILL (crash)"].append(measure(pair, signal.SIGKILL))
                results["SIGTERM (clean stop)"].append(measure(pair, signal.SIGTERM))
        finally:
            for e in pair:
                if e.proc is not None:
                    e.proc.kill()
                    e.proc.wait(10)
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    rows = [
        f"| {how} | {len(v)} | {min(v):.2f} | {statistics.median(v):.2f} | {max(v):.2f} |" for how, v in results.items()
    ]
    server = conninfo_to_dict(pg["dsn"]).get("host", "")
    text = "\n".join(
        [
            f"### Lease failover of an HA pair (lease_ttl {args.lease_ttl or '6s, the default'})",
            "",
            f"CPython {platform.python_version()}, PostgreSQL of the test stack on {server}, "
            f"{os.cpu_count()} CPUs; two exporters on one database; seconds from stopping the lease holder "
            "until the other exporter's /metrics shows mail_exporter_leader 1 (polled every 50 ms). "
            "A crash waits for the lease to expire (at most lease_ttl after the last renewal, plus the "
            "standby's 1 s poll); a clean stop releases it.",
            "",
            "| holder stopped by | rounds | min s | median s | max s |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    print(text)
    if not args.no_write:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        (args.results_dir / RESULTS.name).write_text(text)
    append_summary(
        args.summary,
        [
            summary_line(
                "failover",
                f"lease failover, holder stopped by {how} (lease_ttl {args.lease_ttl or '6s'})",
                statistics.median(v),
                unit="s",
                better="lower",
                rounds=len(v),
                quick=args.quick,
            )
            for how, v in results.items()
        ],
    )


if __name__ == "__main__":
    main()
