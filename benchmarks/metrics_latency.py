#!/usr/bin/env python3
"""How fast is /metrics while many checks hang on a tarpit?

Starts a tarpit on 127.0.0.1 (a listening socket that is never accepted from: the
kernel completes the handshake, nobody ever speaks), starts the real exporter with
N SMTP checks aimed at it (plus M refused ones so the snapshot is large), waits until
every check is in flight, then times sequential GET /metrics requests.

    python benchmarks/metrics_latency.py                 # 200 tarpit checks, 800 refused
    python benchmarks/metrics_latency.py --tarpit 200 --refused 0 --requests 500

Loopback only; bounded in count and time.  Prints a markdown table and writes it to
benchmarks/results/metrics_latency.md.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed_get(port: int, path: str, gz: bool) -> tuple[float, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Accept-Encoding": "gzip"} if gz else {}
    t0 = time.perf_counter()
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    elapsed = time.perf_counter() - t0
    conn.close()
    if gz:
        body = gzip.decompress(body)
    return elapsed, len(body)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tarpit", type=int, default=200, help="checks aimed at the tarpit (in flight throughout)")
    ap.add_argument("--refused", type=int, default=800, help="extra checks aimed at a closed port")
    ap.add_argument(
        "--refused-interval",
        default="2s",
        help="interval of the refused checks (default 2s: a "
        "very high change rate, ~400 snapshot updates a second with 800 checks)",
    )
    ap.add_argument("--requests", type=int, default=300, help="sequential /metrics requests to time")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/metrics_latency.md"))
    args = ap.parse_args()

    tarpit = socket.socket()
    tarpit.bind(("127.0.0.1", 0))
    tarpit.listen(4096)  # never accept(): connections complete in the kernel and stay silent
    tarpit_addr = f"127.0.0.1:{tarpit.getsockname()[1]}"
    closed = f"127.0.0.1:{free_port()}"

    lines = ["global: {interval: 10s, timeout: 60s, max_concurrency: 2000}", "endpoints:"]
    for i in range(args.tarpit):
        lines.append(f'  - {{name: tarpit-{i}, protocol: smtp, address: "{tarpit_addr}", tls: none}}')
    for i in range(args.refused):
        lines.append(
            f'  - {{name: refused-{i}, protocol: smtp, address: "{closed}", tls: none, '
            f"interval: {args.refused_interval}}}"
        )
    tmp = Path(tempfile.mkdtemp(prefix="mce-bench-"))
    (tmp / "config.yml").write_text("\n".join(lines) + "\n")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            f"--config.file={tmp / 'config.yml'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.path={tmp / 'data'}",
            "--log.level=error",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if timed_get(port, "/-/ready", False)[1]:
                    break
            except OSError:
                time.sleep(0.1)
        # first runs are spread over 5 s; wait until all tarpit connections are open and hanging
        time.sleep(7)
        conns = int(
            subprocess.run(
                ["ss", "-Htn", "state", "established", f"dport = :{tarpit_addr.rsplit(':', 1)[1]}"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.count("\n")
        )
        plain, zipped = [], []
        size = 0
        for _ in range(args.requests):
            t, size = timed_get(port, "/metrics", False)
            plain.append(t)
            zipped.append(timed_get(port, "/metrics", True)[0])
        still_hanging = int(
            subprocess.run(
                ["ss", "-Htn", "state", "established", f"dport = :{tarpit_addr.rsplit(':', 1)[1]}"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.count("\n")
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        tarpit.close()

    def row(name: str, xs: list[float]) -> str:
        return (
            f"| {name} | {statistics.median(xs) * 1000:.2f} | {percentile(xs, 0.99) * 1000:.2f} | "
            f"{max(xs) * 1000:.2f} |"
        )

    report = "\n".join(
        [
            f"### /metrics latency with {args.tarpit + args.refused} checks configured",
            "",
            f"{args.tarpit} checks hanging on a tarpit (open connections seen: {conns} before, {still_hanging} after "
            f"the timed requests), {args.refused} checks failing fast every {args.refused_interval}; "
            f"{args.requests} sequential requests "
            f"each; body {size / 1024:.0f} KiB. Client: http.client over loopback, new connection per request.",
            "",
            "| request | p50 ms | p99 ms | max ms |",
            "|---|---|---|---|",
            row("GET /metrics", plain),
            row("GET /metrics (gzip)", zipped),
            "",
        ]
    )
    print(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with Path(args.out).open("a") as out:
        out.write(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
