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
median of the rounds.

Two more rows put the figure in context:

- **scheduled checks** (this exporter's main job): the same STARTTLS check configured
  ``--scheduled-checks`` times (default 40) with ``interval: 1s``, run by the exporter's own
  scheduler for ``--scheduled-seconds`` while ``/metrics`` is scraped (gzip) once a second.
  Checks are counted from ``mail_exporter_check_runs_total``; the CPU includes the scrapes.
  blackbox_exporter has no scheduler: each of its checks is a /probe request from
  Prometheus, which is what its row measures.
- **the floor**: the same dialog by a minimal client in this interpreter with this
  OpenSSL, doing nothing else (no metrics, no timing, no HTTP): once with blocking sockets,
  once on asyncio streams (``--no-floor`` skips it).  No exporter written in Python on
  asyncio can spend less per check than the asyncio floor.

``--summary FILE`` appends the headline figures as JSON lines (for benchmarks/run_all.py).

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


def check_runs(url: str) -> float:
    """Successful runs of every check, summed, from ``mail_exporter_check_runs_total``."""
    with urllib.request.urlopen(url, timeout=15) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("mail_exporter_check_runs_total{") and 'result="success"' in line
    )


def drive_scheduled(pid: int, base: str, seconds: float) -> dict[str, float]:
    """CPU per check of the exporter's own scheduler, with a gzip scrape of /metrics every second."""
    metrics = f"{base}/metrics"
    time.sleep(2.5)  # every check has had its first run (first runs are spread over at most the interval)
    runs0, cpu0, t0 = check_runs(metrics), cpu_seconds(pid), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        time.sleep(1.0)
        req = urllib.request.Request(metrics, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(req, timeout=15) as resp:
            resp.read()
    runs = check_runs(metrics) - runs0
    cpu = cpu_seconds(pid) - cpu0
    return {"ok": runs, "wall": time.perf_counter() - t0, "cpu": cpu, "per_cpu_s": runs / cpu if cpu else float("inf")}


def exporter_process(config: Path, port: int, data: Path) -> subprocess.Popen[bytes]:
    """This exporter (``python -m exporter``) on ``config``, listening on 127.0.0.1:``port``."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.path={data}",
            "--log.level=error",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def scheduled(tmp: Path, seconds: float) -> dict[str, float]:
    """Start an exporter on ``scheduled.yml``, measure :func:`drive_scheduled`, stop it."""
    port = free_port()
    proc = exporter_process(tmp / "scheduled.yml", port, tmp / "scheduled-data")
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready")
        return drive_scheduled(proc.pid, f"http://127.0.0.1:{port}", seconds)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


FLOOR_CLIENT = r"""
import asyncio, socket, ssl, sys, time
host, port, ca, helo, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].encode(), int(sys.argv[5])
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False  # the exporters check the name themselves, from the certificate

def reply(f):
    while (line := f.readline())[3:4] == b"-":
        pass
    if not line[:1] in b"23":
        raise SystemExit(f"unexpected reply {line!r}")

def blocking():
    with socket.create_connection((host, port)) as s:
        f = s.makefile("rb")
        reply(f); s.sendall(b"EHLO " + helo + b"\r\n"); reply(f); s.sendall(b"STARTTLS\r\n"); reply(f)
        t = ctx.wrap_socket(s, server_hostname="mx1.example.test")
        t.getpeercert(True)
        tf = t.makefile("rb"); t.sendall(b"EHLO " + helo + b"\r\n"); reply(tf); t.sendall(b"QUIT\r\n")
        t.close()

async def areply(r):
    while (line := await r.readline())[3:4] == b"-":
        pass
    if not line[:1] in b"23":
        raise SystemExit(f"unexpected reply {line!r}")

async def streams():
    r, w = await asyncio.open_connection(host, port)
    await areply(r); w.write(b"EHLO " + helo + b"\r\n"); await areply(r)
    w.write(b"STARTTLS\r\n"); await areply(r)
    await w.start_tls(ctx, server_hostname="mx1.example.test")
    w.get_extra_info("ssl_object").getpeercert(True)
    w.write(b"EHLO " + helo + b"\r\n"); await areply(r); w.write(b"QUIT\r\n"); await w.drain()
    w.transport.abort()

async def concurrently(k):
    sem = asyncio.Semaphore(k)
    async def one():
        async with sem:
            await streams()
    await asyncio.gather(*(one() for _ in range(n)))

blocking()
c = time.process_time(); [blocking() for _ in range(n)]; b = time.process_time() - c
c = time.process_time(); asyncio.run(concurrently(4)); a = time.process_time() - c
print(n / b, n / a)
"""


def floor(smtp: str, ca: str, probes: int) -> tuple[float, float]:
    """Checks per CPU-second of the minimal clients: (blocking sockets, asyncio streams)."""
    host, port = smtp.rsplit(":", 1)
    out = subprocess.run(
        [sys.executable, "-c", FLOOR_CLIENT, host, port, ca, "prober.example.test", str(probes)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout.split()
    return float(out[0]), float(out[1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probes", type=int, default=None, help="probes per exporter and round (default 400; quick 30)")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument(
        "--rounds", type=int, default=None, help="rounds; the table gives their median (default 3; quick 1)"
    )
    ap.add_argument(
        "--scheduled-checks", type=int, default=None, help="checks run by the scheduler (default 40; quick 10)"
    )
    ap.add_argument(
        "--scheduled-seconds",
        type=float,
        default=None,
        help="seconds of scheduled checks per round (default 10; quick 3)",
    )
    ap.add_argument("--no-floor", action="store_true", help="skip the minimal clients' rows")
    ap.add_argument("--quick", action="store_true", help="small sizes (30 probes, 1 round): a check that it runs")
    ap.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks/results", help="where starttls.md goes")
    ap.add_argument("--summary", default=None, help="append the headline figure to this file as a JSON line")
    args = ap.parse_args()
    if args.probes is None:
        args.probes = 30 if args.quick else 400
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.scheduled_checks is None:
        args.scheduled_checks = 10 if args.quick else 40
    if args.scheduled_seconds is None:
        args.scheduled_seconds = 3.0 if args.quick else 10.0
    if args.probes < 1 or args.rounds < 1 or args.scheduled_checks < 1:
        ap.error("--probes, --rounds and --scheduled-checks: at least 1")
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
    checks = "\n".join(
        f"""  - {{name: starttls-{i}, protocol: smtp, address: "{smtp}", tls: starttls, helo: prober.example.test,
     tls_config: {{ca_file: "{ca}", server_name: mx1.example.test}}}}"""
        for i in range(args.scheduled_checks)
    )
    (tmp / "scheduled.yml").write_text(f"""
global: {{interval: 1s, timeout: 10s}}
endpoints:
{checks}
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
        exporter_process(tmp / "mce.yml", mce_port, tmp / "data"),
    ]
    try:
        wait_http(f"http://127.0.0.1:{bb_port}/-/healthy")
        wait_http(f"http://127.0.0.1:{mce_port}/-/ready")
        targets = {
            BB_NAME: ("blackbox", procs[0].pid, f"http://127.0.0.1:{bb_port}/probe?module=smtp_starttls&target={smtp}"),
            MCE_NAME: ("mce", procs[1].pid, f"http://127.0.0.1:{mce_port}/probe?module=starttls"),
        }
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in (*targets, SCHED_NAME)}
        for i in range(args.rounds):
            order = list(targets) if i % 2 == 0 else list(reversed(targets))
            for name in order:
                rounds[name].append(drive(*targets[name], args.probes, args.concurrency))
            rounds[SCHED_NAME].append(scheduled(tmp, args.scheduled_seconds))
            print(
                f"round {i + 1}/{args.rounds}: "
                + ", ".join(f"{name} {rs[-1]['per_cpu_s']:.0f}/CPU-s" for name, rs in rounds.items()),
                file=sys.stderr,
                flush=True,
            )
        floors = None if args.no_floor else floor(smtp, ca, args.probes)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(20)
    results = {
        name: {key: statistics.median(r[key] for r in rs) for key in ("ok", "wall", "cpu", "per_cpu_s")}
        for name, rs in rounds.items()
    }
    bb, mce, sched = results[BB_NAME], results[MCE_NAME], results[SCHED_NAME]
    of_rounds = f", median of {args.rounds} rounds" if args.rounds > 1 else ""
    rows = [
        f"### SMTP STARTTLS checks per CPU-second ({args.probes} probes via /probe, concurrency {args.concurrency}, "
        f"real Postfix on loopback{of_rounds})",
        "",
        "| exporter | successful | wall s | exporter CPU s | checks per CPU-second | / blackbox_exporter |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        rows.append(
            f"| {name} | {r['ok']:.0f} | {r['wall']:.2f} | {r['cpu']:.2f} | {r['per_cpu_s']:.0f} "
            f"| {r['per_cpu_s'] / bb['per_cpu_s']:.2f}× |"
        )
    if floors is not None:
        for label, value in zip(FLOOR_NAMES, floors, strict=True):
            rows.append(f"| {label} | {args.probes:.0f} | | | {value:.0f} | {value / bb['per_cpu_s']:.2f}× |")
    rows += [
        "",
        f"Ratio (this exporter / blackbox_exporter): **{mce['per_cpu_s'] / bb['per_cpu_s']:.2f}×** through /probe, "
        f"**{sched['per_cpu_s'] / bb['per_cpu_s']:.2f}×** as scheduled checks "
        f"({args.scheduled_checks} checks every second for {args.scheduled_seconds:g} s a round, /metrics scraped "
        "every second).",
        "",
    ]
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
    peer = peer_version("prometheus-blackbox-exporter")
    append_summary(
        args.summary,
        [
            summary_line(
                "starttls",
                figure,
                ours["per_cpu_s"],
                peer=bb["per_cpu_s"],
                peer_name=peer,
                unit="checks/CPU-s",
                better="higher",
                rounds=args.rounds,
                quick=args.quick,
            )
            for figure, ours in (
                ("SMTP STARTTLS checks per CPU-second", mce),
                ("SMTP STARTTLS scheduled checks per CPU-second", sched),
            )
        ],
    )
    return 0


BB_NAME = "prometheus-blackbox-exporter (smtp_starttls)"
MCE_NAME = "mail-continuity-exporter (smtp, tls: starttls)"
SCHED_NAME = "mail-continuity-exporter, scheduled checks"
FLOOR_NAMES = ("floor: minimal client, blocking sockets", "floor: minimal client, asyncio streams")


if __name__ == "__main__":
    sys.exit(main())
