#!/usr/bin/env python3
"""Sustained Alertmanager webhook ingestion: notifications per second and latency, durable commits.

Starts the real exporter (``python -m exporter``) with a fresh SQLite store
(``synchronous=FULL``: every acknowledged notification is fsynced), then posts
realistic Alertmanager version 4 notifications from C concurrent clients
(keep-alive connections, like Alertmanager's) for D seconds and reports the
sustained rate of 200 answers and the latency percentiles.  Two workloads:

- ``lifecycle``: each alert group goes through firing (3 new alerts), a repeat of
  the same notification (Alertmanager's repeat_interval), then resolved: one third
  new alerts, one third duplicates, one third resolutions.  Alerts are spread over
  3 services, so incidents open and close all the time.
- ``new``: every notification carries 3 alerts never seen before (the worst case
  for the store: every alert is an insert plus incident bookkeeping).

    python benchmarks/webhook_bench.py                      # both workloads, 8 clients, 10 s each
    python benchmarks/webhook_bench.py --clients 8 --duration 10 --workload new

Loopback only; bounded in time (each run stops after --duration seconds) and count
(--max-requests).  Prints a markdown table and writes it to benchmarks/results/webhook.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "webhook.md"
SERVICES = ("inbound", "outbound", "imap")
CONFIG = """
global: {interval: 1h, timeout: 10s}
continuity:
  services:
    - {name: inbound, incident_match: {service: inbound}}
    - {name: outbound, incident_match: {service: outbound}}
    - {name: imap, incident_match: {service: imap}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ts(t: float) -> str:
    dt = datetime.fromtimestamp(t, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond:06d}000Z"


def alert(fp: str, service: str, starts: float, ends: float | None, n: int) -> dict[str, object]:
    return {
        "status": "resolved" if ends is not None else "firing",
        "labels": {
            "alertname": "MailQueueBackingUp",
            "service": service,
            "severity": ("critical", "warning", "info")[n % 3],
            "instance": f"mta{n % 7}.example.com:10587",
            "job": "mail",
            "queue": "deferred",
        },
        "annotations": {
            "summary": "The deferred queue is growing.",
            "description": f"mta{n % 7}.example.com has {100 + n % 900} deferred messages.",
            "runbook_url": "https://example.com/runbooks#mailqueuebackingup",
        },
        "startsAt": ts(starts),
        "endsAt": ts(ends) if ends is not None else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example.com:9090/graph?g0.expr=mail_queue_messages",
        "fingerprint": fp,
    }


def notification(alerts: list[dict[str, object]], status: str, group: int) -> bytes:
    return json.dumps(
        {
            "version": "4",
            "groupKey": f'{{}}:{{alertname="MailQueueBackingUp", group="{group}"}}',
            "truncatedAlerts": 0,
            "status": status,
            "receiver": "mail-continuity-exporter",
            "groupLabels": {"alertname": "MailQueueBackingUp"},
            "commonLabels": {"alertname": "MailQueueBackingUp", "job": "mail"},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager.example.com:9093",
            "alerts": alerts,
        }
    ).encode()


def bodies(workload: str, client: int, base: float):  # type: ignore[no-untyped-def]
    """An endless stream of notification bodies for one client."""
    group = 0
    while True:
        group += 1
        gid = client * 10_000_000 + group
        starts = base + group * 0.001
        service = SERVICES[gid % len(SERVICES)]
        fps = [f"{gid:012x}{k:04x}" for k in range(3)]
        firing = [alert(fp, service, starts, None, gid + k) for k, fp in enumerate(fps)]
        body = notification(firing, "firing", gid)
        yield body, 3
        if workload == "lifecycle":
            yield body, 0  # Alertmanager's repeat: same alerts, nothing new
            resolved = [alert(fp, service, starts, starts + 30, gid + k) for k, fp in enumerate(fps)]
            yield notification(resolved, "resolved", gid), 0


class RawClient:
    """A minimal HTTP/1.1 keep-alive client, so that the load generator costs little CPU
    (it shares the machine with the exporter); like wrk or hey, it only sends and times."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        header = await self.reader.readuntil(b"\r\n\r\n")
        status = int(header[9:12])
        length = 0
        for line in header.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def client_loop(
    port: int,
    workload: str,
    client: int,
    stop_at: float,
    budget: list[int],
    latencies: list[float],
    errors: list[str],
    base: float,
) -> int:
    alerts = 0
    http = RawClient(port)
    try:
        for body, new in bodies(workload, client, base):
            if time.monotonic() >= stop_at or budget[0] <= 0:
                break
            budget[0] -= 1
            t0 = time.perf_counter()
            status = await http.post("/alertmanager", body)
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors.append(str(status))
            else:
                alerts += new
    finally:
        http.close()
    return alerts


async def run_load(port: int, workload: str, clients: int, duration: float, max_requests: int) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[str] = []
    budget = [max_requests]
    base = time.time() - 3600
    # warm-up: one second, not measured
    await asyncio.gather(
        *(
            client_loop(port, "new", 90 + c, time.monotonic() + 1.0, [10_000], [], [], base - 7200)
            for c in range(clients)
        )
    )
    t0 = time.perf_counter()
    stop_at = time.monotonic() + duration
    new_alerts = await asyncio.gather(
        *(client_loop(port, workload, c, stop_at, budget, latencies, errors, base) for c in range(clients))
    )
    elapsed = time.perf_counter() - t0
    lat = sorted(latencies)

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000

    return {
        "requests": len(lat),
        "errors": len(errors),
        "seconds": elapsed,
        "rate": (len(lat) - len(errors)) / elapsed,
        "alerts_new": sum(new_alerts),
        "p50": pct(0.50),
        "p90": pct(0.90),
        "p99": pct(0.99),
        "max": lat[-1] * 1000,
        "mean": statistics.fmean(lat) * 1000,
    }


def store_counts(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path) as conn:
        alerts = conn.execute("SELECT count(*) FROM alerts").fetchone()[0]
        incidents = conn.execute("SELECT count(*) FROM incidents").fetchone()[0]
    return int(alerts), int(incidents)


def run_one(workload: str, clients: int, duration: float, max_requests: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="mce-webhook-bench-") as tmp:
        cfg = Path(tmp) / "config.yml"
        cfg.write_text(CONFIG)
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.path={tmp}/data",
                f"--config.file={cfg}",
                "--log.level=warn",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit("exporter did not start") from None
                    time.sleep(0.1)
            cpu0 = _cpu(proc.pid)
            result = asyncio.run(run_load(port, workload, clients, duration, max_requests))
            result["server_cpu"] = (_cpu(proc.pid) - cpu0) / result["seconds"]
            alerts, incidents = store_counts(Path(tmp) / "data" / "mail-continuity.sqlite")
            result["stored_alerts"] = alerts
            result["incidents"] = incidents
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return result


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its children (the store writer)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:  # fields[1]: the parent pid
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per workload (at most 60)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per workload (at most 5); the table shows each")
    ap.add_argument("--max-requests", type=int, default=200_000)
    ap.add_argument("--workload", choices=["lifecycle", "new", "both"], default="both")
    ap.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/webhook.md")
    args = ap.parse_args()
    duration = min(args.duration, 60.0)
    workloads = ["lifecycle", "new"] if args.workload == "both" else [args.workload]
    rows = []
    for _ in range(max(1, min(args.repeat, 5))):
        for wl in workloads:
            load = os.getloadavg()[0]
            r = run_one(wl, args.clients, duration, args.max_requests)
            r["load"] = load
            rows.append((wl, r))
            print(
                f"{wl}: {r['rate']:.0f}/s p50 {r['p50']:.1f} ms p99 {r['p99']:.1f} ms errors {r['errors']:.0f}"
                f" (load average before: {load:.2f})",
                flush=True,
            )
    lines = [
        f"### Webhook ingestion, durable (SQLite WAL, synchronous=FULL, group commit in a writer process), "
        f"{args.clients} clients",
        "",
        f"{platform.python_implementation()} {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} CPUs (client and exporter share them; exporter CPU includes its store writer process, "
        f"100% = one core); {duration:g} s per run after 1 s of "
        "warm-up; each notification is a realistic Alertmanager v4 payload with 3 alerts (about 2 KiB); "
        "keep-alive connections; a 200 is sent only after the commit (fsync) that holds the notification. "
        "The load average is the machine's (1 minute) just before the run: other work on the machine shows "
        "there, and in the tail latencies.",
        "",
        "| workload | notifications/s | alerts/s | p50 ms | p90 ms | p99 ms | max ms | non-200 | exporter CPU | "
        "stored alerts | incidents | load average |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for wl, r in rows:
        lines.append(
            f"| {wl} | {r['rate']:.0f} | {r['rate'] * 3:.0f} | {r['p50']:.2f} | {r['p90']:.2f} | {r['p99']:.2f} | "
            f"{r['max']:.1f} | {r['errors']:.0f} | {r['server_cpu'] * 100:.0f}% | {r['stored_alerts']:.0f} | "
            f"{r['incidents']:.0f} | {r['load']:.2f} |"
        )
    lines.append("")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
