#!/usr/bin/env python3
"""How fast is /metrics while many checks hang on a tarpit?

Starts a tarpit on 127.0.0.1 (a listening socket that is never accepted from: the
kernel completes the handshake, nobody ever speaks), starts the real exporter with
N SMTP checks aimed at it (plus M refused ones so the snapshot is large), waits until
every check is in flight, then times sequential GET /metrics requests.

    python benchmarks/metrics_latency.py                 # 200 tarpit checks, 800 refused
    python benchmarks/metrics_latency.py --tarpit 200 --refused 0 --requests 500
    python benchmarks/metrics_latency.py --quick         # 20 tarpit, 50 refused, 30 requests: does it run?

Loopback only; bounded in count and time.  Prints a markdown table and appends it to
metrics_latency.md in --results-dir (default benchmarks/results), or to --out.
``--summary FILE`` appends the headline figures (p50, p99; target: under 10 ms) as JSON
lines, for benchmarks/run_all.py.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from run_all import append_summary, summary_line  # noqa: E402

TARGET_MS = 10.0  # the design's target: /metrics under 10 ms


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


def hanging(address: str) -> int:
    """Established TCP connections to ``address`` (host:port), counted by ss."""
    return int(
        subprocess.run(
            ["ss", "-Htn", "state", "established", f"dport = :{address.rsplit(':', 1)[1]}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.count("\n")
    )


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--tarpit",
        type=int,
        default=None,
        help="checks aimed at the tarpit (in flight throughout; default 200, quick 20)",
    )
    ap.add_argument(
        "--refused", type=int, default=None, help="extra checks aimed at a closed port (default 800, quick 50)"
    )
    ap.add_argument(
        "--refused-interval",
        default="2s",
        help="interval of the refused checks (default 2s: a "
        "very high change rate, ~400 snapshot updates a second with 800 checks)",
    )
    ap.add_argument(
        "--requests", type=int, default=None, help="sequential /metrics requests to time (default 300, quick 30)"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, and start timing as soon as the tarpit connections are open: a check that it runs",
    )
    ap.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks/results")
    ap.add_argument("--out", default=None, help="the file to append to (default: metrics_latency.md in --results-dir)")
    ap.add_argument("--summary", default=None, help="append the headline figures to this file as JSON lines")
    args = ap.parse_args()
    for name, full, quick in (("tarpit", 200, 20), ("refused", 800, 50), ("requests", 300, 30)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.requests < 1:
        ap.error("--requests: at least 1")
    if args.out is None:
        args.out = str(args.results_dir / "metrics_latency.md")

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
        if args.quick:  # no longer than that (at most the same 7 s)
            settle = time.monotonic() + 7
            while hanging(tarpit_addr) < args.tarpit and time.monotonic() < settle:
                time.sleep(0.25)
        else:
            time.sleep(7)
        conns = hanging(tarpit_addr)
        plain, zipped = [], []
        size = 0
        for _ in range(args.requests):
            t, size = timed_get(port, "/metrics", False)
            plain.append(t)
            zipped.append(timed_get(port, "/metrics", True)[0])
        still_hanging = hanging(tarpit_addr)
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
    checks = f"{args.tarpit + args.refused} checks, {args.tarpit} on a tarpit"
    append_summary(
        args.summary,
        [
            summary_line(
                "metrics_latency",
                f"GET /metrics {label}, {checks}",
                value * 1000,
                unit="ms",
                better="lower",
                rounds=1,
                quick=args.quick,
                target=TARGET_MS,
            )
            for label, value in (
                ("p50", statistics.median(plain)),
                ("p99", percentile(plain, 0.99)),
                ("(gzip) p99", percentile(zipped, 0.99)),
            )
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
