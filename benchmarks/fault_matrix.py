#!/usr/bin/env python3
"""The fault matrix, end to end: the real exporter against scripted faulty servers.

Starts every fault server of tests/faults.py and a scripted DNS server
(tests/dnsserver.py) on 127.0.0.1, then the exporter with one check per fault.
While the checks fail, it polls /metrics continuously and reports, per case, the
reason the exporter recorded, how long the failing run took (against timeout + 1 s),
and the latency of /metrics throughout.

    python benchmarks/fault_matrix.py            # prints a table, writes benchmarks/results/fault_matrix.md
    python benchmarks/fault_matrix.py --quick    # /metrics timed for 5 s instead of 15 s

``--results-dir DIR`` (default benchmarks/results) is where fault_matrix.md goes;
``--summary FILE`` appends the headline figures as JSON lines, for benchmarks/run_all.py.

Loopback only; bounded (about 30 s).  Exit status 1 if any case ends with the wrong
reason or takes longer than its timeout + 1 s (the latter not with --no-target-exit).
"""

from __future__ import annotations

import argparse
import asyncio
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
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from dnsserver import DnsServer  # noqa: E402
from faults import ImapScript, SmtpScript, imap_server, send_then_close, slow_drip, smtp_server, tarpit  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from run_all import append_summary, summary_line  # noqa: E402

TIMEOUT = 3.0
METRICS_TARGET_MS = 10.0  # the design's target for /metrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[float, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    t0 = time.perf_counter()
    conn.request("GET", path)
    body = conn.getresponse().read().decode()
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed, body


async def main(args: argparse.Namespace) -> int:
    servers = {
        "tarpit": (tarpit(), "smtp", "none", "timeout"),
        "slow-drip": (slow_drip(), "smtp", "none", "timeout"),
        "banner-421": (send_then_close(b"421 4.3.2 Service shutting down\r\n"), "smtp", "none", "reply_4xx"),
        "banner-554": (send_then_close(b"554 5.7.1 No SMTP service here\r\n"), "smtp", "none", "reply_5xx"),
        "postscreen": (
            smtp_server(SmtpScript(banner=("220-faults.test ESMTP", "220 faults.test ESMTP"), banner_pause=0.2)),
            "smtp",
            "none",
            "success",
        ),
        "starttls-broken": (smtp_server(SmtpScript(starttls="garbage")), "smtp", "starttls", "tls"),
        # STARTTLS advertised, then the connection drops before the client's next command
        "closed-after-ehlo": (
            smtp_server(SmtpScript(starttls="garbage", close_after_ehlo=True)),
            "smtp",
            "optional",
            "protocol",
        ),
        "garbage": (send_then_close(b"\x00\xffHTTP/1.1 400 Bad Request\r\n\r\n"), "smtp", "none", "protocol"),
        "imap-login-rejected": (imap_server(ImapScript(credentials=("probe", "right"))), "imap", "none", "auth"),
        "imap-hang": (
            imap_server(ImapScript(credentials=("probe", "pw"), after_login="hang")),
            "imap",
            "none",
            "timeout",
        ),
    }
    for srv, *_ in servers.values():
        await srv.start()
    refused = f"127.0.0.1:{free_port()}"
    dns = DnsServer()
    await dns.start()
    dns.add("nx.test", "SOA", "ns.test. hostmaster.test. 1 3600 600 86400 60")
    dns.set_mode("nxdomain.test", "nxdomain")
    dns.set_mode("servfail.test", "servfail")
    dns.set_mode("silent.test", "drop")

    lines = [
        "global:",
        f"  interval: 4s\n  timeout: {TIMEOUT:g}s",
        f"  resolver: {{nameservers: ['{dns.host}'], port: {dns.port}, timeout: {TIMEOUT:g}s}}",
        "endpoints:",
        f'  - {{name: refused, protocol: smtp, address: "{refused}", tls: none}}',
    ]
    expected = {"refused": ("smtp", "refused")}
    for name, (srv, proto, tls, reason) in servers.items():
        auth = ""
        if proto == "imap":
            pw = "wrong" if name == "imap-login-rejected" else "pw"
            auth = f", auth: {{username: probe, password: {pw}}}, select: INBOX"
        lines.append(f'  - {{name: {name}, protocol: {proto}, address: "{srv.address}", tls: {tls}{auth}}}')
        expected[name] = (proto, reason)
    lines.append("domains:")
    for d, reason in (("nxdomain.test", "dns"), ("servfail.test", "dns"), ("silent.test", "dns")):
        lines.append(f"  - {{domain: {d}, dns: {{mx: false, spf: false, dmarc: false}}}}")
        expected[d] = ("mx", reason)

    tmp = Path(tempfile.mkdtemp(prefix="mce-faults-"))
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
    text = ""
    poller = None
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # wait until the exporter answers
            try:
                await asyncio.to_thread(get, port, "/-/ready")
                break
            except OSError:
                await asyncio.sleep(0.1)
        # time /metrics from a separate process, so that this process's fault servers
        # cannot disturb the measurement
        poller = subprocess.Popen(
            [sys.executable, __file__, "--poll", str(port), f"{args.poll_seconds:g}"], stdout=subprocess.PIPE, text=True
        )
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            _, text = await asyncio.to_thread(get, port, "/metrics")
            runs = _values(text, "mail_exporter_check_runs_total")
            if set(expected) <= {dict(k)["name"] for k, v in runs.items() if v > 0}:
                break
        out, _ = await asyncio.to_thread(poller.communicate)
        latencies = [float(x) for x in out.split()]
        _, text = await asyncio.to_thread(get, port, "/metrics")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        for srv, *_ in servers.values():
            await srv.close()
        await dns.close()

    durations = _values(text, "mail_exporter_check_duration_seconds")
    success = _values(text, "mail_exporter_check_success")
    failures = _values(text, "mail_probe_failures_total")
    bad = slow = good_cases = 0
    rows = ["| case | expected | observed | run took (s) | within timeout + 1 s |", "|---|---|---|---|---|"]
    for name, (kind, want) in expected.items():
        key = next((k for k in durations if dict(k)["name"] == name), None)
        took = durations.get(key, float("nan")) if key else float("nan")
        ok_run = key is not None and success.get(key) == 1.0
        reasons = sorted({dict(k)["reason"] for k, v in failures.items() if dict(k)["check"] == name and v > 0})
        if kind == "mx":
            observed = "dns" if key is not None and success.get(key) == 0.0 else "?"
        else:
            observed = "success" if ok_run else ",".join(reasons) or "?"
        in_time = took <= TIMEOUT + 1.0 + (2 * TIMEOUT if kind == "mx" else 0)
        good = observed == want and in_time
        good_cases += good
        bad += observed != want
        slow += not in_time
        rows.append(f"| {name} | {want} | {observed} | {took:.2f} | {'yes' if in_time else 'NO'} |")
    lat = sorted(latencies)
    report = "\n".join(
        [
            "### Fault matrix through the exporter",
            "",
            f"Probe timeout {TIMEOUT:g} s (MX/DNS checks: discovery with a {TIMEOUT:g} s resolver timeout).",
            "",
            *rows,
            "",
            f"/metrics while the faults ran (timed from a separate process): {len(lat)} requests, "
            f"p50 {statistics.median(lat) * 1000:.2f} ms, "
            f"p99 {lat[int(0.99 * (len(lat) - 1))] * 1000:.2f} ms, max {lat[-1] * 1000:.2f} ms.",
            "",
        ]
    )
    print(report)
    out = args.results_dir / "fault_matrix.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    figures = [
        summary_line(
            "fault_matrix",
            f"cases failing with the right reason within timeout + 1 s (of {len(expected)})",
            good_cases,
            unit="cases",
            better="higher",
            rounds=1,
            quick=args.quick,
            target=len(expected),
        )
    ]
    if lat:
        figures.append(
            summary_line(
                "fault_matrix",
                "GET /metrics p99 while the faults ran",
                lat[int(0.99 * (len(lat) - 1))] * 1000,
                unit="ms",
                better="lower",
                rounds=1,
                quick=args.quick,
                target=METRICS_TARGET_MS,
            )
        )
    append_summary(args.summary, figures)
    return 1 if bad or (slow and not args.no_target_exit) else 0


def _values(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def poll(port: int, seconds: float) -> None:
    """Time GET /metrics back to back for ``seconds``; print one latency per line."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        print(get(port, "/metrics")[0])
        time.sleep(0.02)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--poll":
        poll(int(sys.argv[2]), float(sys.argv[3]))
        sys.exit(0)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="time /metrics for 5 s instead of 15 s")
    ap.add_argument("--poll-seconds", type=float, default=None, help="how long /metrics is timed (default 15; quick 5)")
    ap.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks/results", help="where fault_matrix.md goes")
    ap.add_argument("--summary", default=None, help="append the headline figures to this file as JSON lines")
    ap.add_argument(
        "--no-target-exit",
        action="store_true",
        help="exit 0 when the reasons are right but a run took longer than timeout + 1 s (still reported)",
    )
    cli = ap.parse_args()
    if cli.poll_seconds is None:
        cli.poll_seconds = 5.0 if cli.quick else 15.0
    sys.exit(asyncio.run(main(cli)))
