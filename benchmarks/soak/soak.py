#!/usr/bin/env python3
"""The soak: does the exporter stay flat under hours of checks?  Measured over ten minutes.

A leak that costs a few bytes, a file descriptor or an asyncio task per check run is
invisible in a unit test and fatal after a month.  This runs the real exporter (``python -m
exporter``) with 1,000 checks for up to ten minutes and watches its resources:

- 700 checks against healthy scripted SMTP and IMAP servers, 200 against tarpits (each run
  ends in a timeout), 100 against flapping servers (up and down every 25 s), all served
  by ``servers.py`` in its own process on 127.0.0.1;
- every 10 s a sample: the floor and peak of the exporter's RSS (``/proc/<pid>/status``)
  and open file descriptors (``/proc/<pid>/fd``), read once a second in that window; its
  CPU time; its ``mail_exporter_asyncio_tasks`` and check-run counts (from ``/metrics``);
- meanwhile ``/metrics`` is scraped 5 times a second, gzip like Prometheus, on one
  keep-alive connection: p50/p99/max latency and errors (which must be 0).

After a warm-up (default 120 s: first runs, connection set-up and allocator arenas settle)
it fits a least-squares line to the RSS peaks, the fd floors and the task counts and
reports the slope per hour.  It
exits 1 when a slope exceeds its bound, a scrape failed, or a check class ended
differently than its servers dictate (healthy checks never fail, tarpit checks never
succeed, flapping checks do both).  The bounds, and why they are what they are, are in
README.md next to this file.

    python benchmarks/soak/soak.py                  # 10 minutes (the cap), writes benchmarks/results/soak-<date>.json
    python benchmarks/soak/soak.py --duration 60    # a short try-out (-short.json; slopes are noise at this length)
    python benchmarks/soak/soak.py --duration 300 --heapwatch heap.jsonl   # where the memory is (heapwatch.py)
    python benchmarks/soak/soak.py --quick          # 12 s, 100 checks: does it still run? (slopes not judged)

``--results-dir DIR`` (default benchmarks/results) is where the JSON report goes unless ``--out``
says otherwise; ``--summary FILE`` appends the headline figures as JSON lines, for
benchmarks/run_all.py; ``--no-target-exit`` reports the slopes without judging them (scrape
errors and check outcomes still decide the exit status).

Loopback only; bounded in time (``--duration`` at most 600 s) and in count (5 scrapes/s).
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from run_all import append_summary, summary_line  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
MAX_DURATION = 600.0
SAMPLE_EVERY = 10.0
READ_EVERY = 1.0  # /proc readings within a sample's window
SCRAPES_PER_SECOND = 5.0
#: Slope bounds after warm-up, per Sample field; see README.md for the reasoning.
BOUNDS = {"rss_peak_mb": 5.0, "fds": 120.0, "tasks": 30.0}


@dataclass
class Sample:
    t: float  # seconds since the exporter became ready
    rss_mb: float  # the lowest of the window's readings
    rss_peak_mb: float  # the highest: the heap's extent plus a scrape's buffers, steadier than the floor
    fds: int  # the lowest (connections in flight come and go; a leaked fd raises the floor)
    fds_peak: int
    tasks: int
    cpu_s: float
    runs: dict[str, int]  # result -> runs so far


@dataclass
class Scrapes:
    latencies_ms: list[float] = field(default_factory=list)
    at: list[float] = field(default_factory=list)  # time.monotonic() of each gzip scrape's start
    errors: list[str] = field(default_factory=list)
    body_bytes: int = 0
    plain_ms: list[float] = field(default_factory=list)  # the scrapes without gzip (--plain-every)
    plain_body_bytes: int = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- set-up -------------------------------------------------------------------------------------


def start_servers(args: argparse.Namespace) -> tuple[subprocess.Popen[str], dict[str, list[str]]]:
    cmd = [
        sys.executable,
        str(HERE / "servers.py"),
        f"--flap-period={args.flap_period}",
        f"--max-seconds={args.duration + 300}",
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"servers.py exited with {proc.wait()}")
    return proc, json.loads(line)


def plan(args: argparse.Namespace) -> dict[str, int]:
    """How many checks of each class: tarpit and flapping as asked, the rest healthy."""
    healthy = args.checks - args.tarpit - args.flapping
    if healthy < 0:
        raise SystemExit("--tarpit + --flapping exceed --checks")
    return {"healthy": healthy, "tarpit": args.tarpit, "flapping": args.flapping}


def spread_interval(base: float, i: int) -> float:
    """``base`` ± 20 %, spread evenly over the checks (golden-ratio sequence).

    The scheduler starts every check within its first 5 s, so with one common interval all
    1,000 checks would run in one burst per interval, and the burst would smear out only
    slowly through the jitter: the number of connections in flight, and so the fd count,
    would drift for the whole soak and look like a leak.  Distinct intervals decorrelate
    the phases within the warm-up, after which the load is stationary.
    """
    return round(base * (0.8 + 0.4 * ((i * 0.618033988749895) % 1.0)), 2)


def endpoint_lines(counts: dict[str, int], addrs: dict[str, list[str]], interval: float) -> list[str]:
    """One endpoint per check, alternating SMTP and IMAP, spread round-robin over the servers."""
    lines = []
    for cls, n in counts.items():
        for i in range(n):
            proto = "smtp" if i % 2 == 0 else "imap"
            pool = addrs["tarpit"] if cls == "tarpit" else addrs[f"{cls}_{proto}"]
            address = pool[(i // 2) % len(pool)]
            every = spread_interval(interval, len(lines))
            lines.append(
                f"  - {{name: {cls}-{i:04d}, protocol: {proto}, address: '{address}', tls: none, interval: {every}s}}"
            )
    return lines


def write_config(path: Path, args: argparse.Namespace, counts: dict[str, int], addrs: dict[str, list[str]]) -> None:
    head = f"global: {{timeout: {args.timeout}s, max_concurrency: {args.max_concurrency}}}\nendpoints:\n"
    path.write_text(head + "\n".join(endpoint_lines(counts, addrs, args.interval)) + "\n")


def exporter_command(args: argparse.Namespace, port: int, workdir: Path, config: Path) -> list[str]:
    """``python -m exporter ...``, or the same flags through ``heapwatch.py`` with ``--heapwatch``."""
    flags = [
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.path={workdir / 'data'}",
        f"--config.file={config}",
    ]
    if args.heapwatch is None:
        return [sys.executable, "-m", "exporter", *flags]
    args.heapwatch.unlink(missing_ok=True)  # heapwatch.py appends
    watch = [str(HERE / "heapwatch.py"), f"--out={args.heapwatch.resolve()}", *args.heapwatch_option]
    return [sys.executable, *watch, "--", *flags]


def exporter_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment plus each ``--env KEY=VALUE`` (e.g. ``MALLOC_ARENA_MAX=2``, for experiments)."""
    env = dict(os.environ)
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    return env


def start_exporter(args: argparse.Namespace, workdir: Path, config: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = exporter_command(args, port, workdir, config)
    with (workdir / "exporter.log").open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=exporter_env(args))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"exporter exited with {proc.returncode}; see {workdir / 'exporter.log'}")
        try:
            status, _ = get(port, "/-/ready")
            if status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("exporter not ready after 60 s")


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# --- measuring ----------------------------------------------------------------------------------


def scrape_loop(port: int, stop: threading.Event, out: Scrapes, plain_every: int = 0) -> None:
    """GET /metrics with gzip at SCRAPES_PER_SECOND on one keep-alive connection, as Prometheus does;
    with ``plain_every`` N, every Nth scrape asks for the uncompressed body (timed apart)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    period = 1.0 / SCRAPES_PER_SECOND
    next_at = time.monotonic()
    n = 0
    while not stop.is_set():
        n += 1
        plain = plain_every > 0 and n % plain_every == 0
        t0_mono = time.monotonic()
        t0 = time.perf_counter()
        try:
            conn.request("GET", "/metrics", headers={} if plain else {"Accept-Encoding": "gzip"})
            resp = conn.getresponse()
            body = resp.read()
            elapsed = (time.perf_counter() - t0) * 1000
            if resp.status != 200:
                out.errors.append(f"status {resp.status}")
            elif plain:
                out.plain_ms.append(elapsed)
                out.plain_body_bytes = len(body)
            else:
                out.latencies_ms.append(elapsed)
                out.at.append(t0_mono)
                out.body_bytes = len(body)
        except (OSError, http.client.HTTPException) as exc:
            out.errors.append(f"{type(exc).__name__}: {exc}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        next_at += period
        stop.wait(max(0.0, next_at - time.monotonic()))
    conn.close()


def proc_figures(pid: int) -> tuple[float, int, float]:
    """RSS in MB, open fds, CPU seconds (user + system) of a process, from /proc."""
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return rss_kb / 1024, fds, cpu


def self_figures(port: int) -> tuple[int, dict[str, int]]:
    """mail_exporter_asyncio_tasks and the check runs so far by result, by a line scan of /metrics."""
    status, body = get(port, "/metrics")
    if status != 200:
        raise OSError(f"/metrics answered {status}")
    tasks = -1
    runs: dict[str, int] = {}
    for line in body.decode().splitlines():
        if line.startswith("mail_exporter_asyncio_tasks "):
            tasks = int(float(line.split()[1]))
        elif line.startswith("mail_exporter_check_runs_total{"):
            result = line.split('result="', 1)[1].split('"', 1)[0]
            runs[result] = runs.get(result, 0) + int(float(line.rsplit(" ", 1)[1]))
    return tasks, runs


def runs_by_class(port: int) -> dict[str, dict[str, int]]:
    """Runs by check class (the name prefix) and result, at the end of the soak."""
    _, body = get(port, "/metrics")
    out: dict[str, dict[str, int]] = {}
    for line in body.decode().splitlines():
        if line.startswith("mail_exporter_check_runs_total{"):
            name = line.split('name="', 1)[1].split('"', 1)[0]
            result = line.split('result="', 1)[1].split('"', 1)[0]
            per = out.setdefault(name.rsplit("-", 1)[0], {})
            per[result] = per.get(result, 0) + int(float(line.rsplit(" ", 1)[1]))
    return out


# --- analysis -----------------------------------------------------------------------------------


def slope_per_hour(ts: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over ts (seconds), per hour."""
    if len(ts) < 3:
        return float("nan")
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    var = sum((t - mt) ** 2 for t in ts)
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / var * 3600


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def analyse(samples: list[Sample], warmup: float) -> dict[str, dict[str, float]]:
    steady = [s for s in samples if s.t >= warmup]
    out = {}
    for key in BOUNDS:
        ys = [float(getattr(s, key)) for s in steady]
        out[key] = {
            "slope_per_hour": slope_per_hour([s.t for s in steady], ys),
            "bound_per_hour": BOUNDS[key],
            "min": min(ys, default=float("nan")),
            "max": max(ys, default=float("nan")),
            "first": ys[0] if ys else float("nan"),
            "last": ys[-1] if ys else float("nan"),
        }
    return out


def heap_slopes(path: Path, warmup: float) -> dict[str, float]:
    """Slopes per hour after warm-up of heapwatch.py's readings: MB for the memory figures, blocks for pymalloc.

    Its clock starts when the exporter starts, a second or two before soak.py's.
    """
    lines = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    rows = [r for r in lines if "rss_kb" in r]  # not the --census-at line
    scale = {"rss_kb": 1024.0, "arena": 2**20, "hblkhd": 2**20, "uordblks": 2**20, "fordblks": 2**20, "blocks": 1.0}
    scale |= {"py_arenas": 1.0, "py_used": 2**20, "py_free": 2**20, "objects": 1.0}  # every --objects-every s
    out = {}
    for key, d in scale.items():
        steady = [r for r in rows if r["t"] >= warmup and key in r]
        ys = [r[key] / d for r in steady]
        out[f"{key}_slope_per_hour"] = round(slope_per_hour([float(r["t"]) for r in steady], ys), 2)
    out["threads_max"] = max((r["threads"] for r in rows), default=-1)
    return out


def verdicts(
    resources: dict[str, dict[str, float]], scrapes: Scrapes, classes: dict[str, dict[str, int]], short: bool
) -> list[str]:
    """Why the soak failed; empty when it passed."""
    bad = [f"scrape errors: {len(scrapes.errors)} ({scrapes.errors[:3]})"] if scrapes.errors else []
    if not short:
        bad += [
            f"{key} slope {r['slope_per_hour']:+.2f}/h exceeds {r['bound_per_hour']}/h"
            for key, r in resources.items()
            if not abs(r["slope_per_hour"]) <= r["bound_per_hour"]
        ]
    healthy, tarpit, flapping = (classes.get(c, {}) for c in ("healthy", "tarpit", "flapping"))
    if healthy.get("failure", 0) or healthy.get("error", 0) or not healthy.get("success"):
        bad.append(f"healthy checks did not all succeed: {healthy}")
    if tarpit.get("success", 0) or tarpit.get("error", 0) or not tarpit.get("failure"):
        bad.append(f"tarpit checks did not all fail: {tarpit}")
    if (flapping and not (flapping.get("success") and flapping.get("failure"))) or flapping.get("error", 0):
        bad.append(f"flapping checks did not both succeed and fail: {flapping}")
    return bad


# --- the run ------------------------------------------------------------------------------------


def window_floor(pid: int, proc: subprocess.Popen[bytes], until: float) -> tuple[list[float], list[int], float]:
    """RSS and fd readings once a second until ``until``, and the CPU seconds at the end."""
    rss, fds, cpu = [], [], 0.0
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"exporter died with {proc.returncode}")
        r, f, cpu = proc_figures(pid)
        rss.append(r)
        fds.append(f)
        if time.monotonic() >= until:
            return rss, fds, cpu
        time.sleep(min(READ_EVERY, max(0.0, until - time.monotonic())))


def sample_until(
    pid: int,
    port: int,
    ready_at: float,
    duration: float,
    proc: subprocess.Popen[bytes],
    every: float = SAMPLE_EVERY,
) -> list[Sample]:
    """One Sample per ``every`` seconds (SAMPLE_EVERY): the floor and peak of the readings in that window."""
    samples = []
    next_at = time.monotonic()
    while next_at - ready_at <= duration:
        rss, fds, cpu = window_floor(pid, proc, next_at)
        tasks, runs = self_figures(port)
        t = round(time.monotonic() - ready_at, 1)
        s = Sample(t, round(min(rss), 2), round(max(rss), 2), min(fds), max(fds), tasks, round(cpu, 2), runs)
        samples.append(s)
        rss_range = f"{s.rss_mb:.1f}-{s.rss_peak_mb:.1f}MB"
        print(f"  t={t:5.0f}s rss={rss_range} fds={s.fds:4d} tasks={s.tasks:5d} runs={sum(runs.values())}", flush=True)
        next_at += every
    return samples


def run(args: argparse.Namespace) -> dict[str, object]:
    counts = plan(args)
    servers, addrs = start_servers(args)
    try:
        with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
            workdir = Path(tmp)
            write_config(workdir / "config.yml", args, counts, addrs)
            exporter, port = start_exporter(args, workdir, workdir / "config.yml")
            try:
                return measure(args, counts, exporter, port)
            finally:
                exporter.terminate()
                exporter.wait(30)
    finally:
        assert servers.stdin is not None and servers.stdout is not None
        servers.stdin.close()  # servers.py ends when its stdin closes
        tail = servers.stdout.read()
        servers.wait(30)
        print(f"servers: {tail.strip()}")


def measure(args: argparse.Namespace, counts: dict[str, int], exporter: subprocess.Popen[bytes], port: int) -> dict:  # type: ignore[type-arg]
    ready_at = time.monotonic()
    scrapes, stop = Scrapes(), threading.Event()
    scraper = threading.Thread(target=scrape_loop, args=(port, stop, scrapes, args.plain_every), daemon=True)
    scraper.start()
    try:
        samples = sample_until(exporter.pid, port, ready_at, args.duration, exporter, args.sample_every)
    finally:
        stop.set()
        scraper.join(15)
    classes = runs_by_class(port)
    warmup = min(args.warmup, args.duration / 3)
    resources = analyse(samples, warmup)
    first, last = samples[0], samples[-1]
    lat = scrapes.latencies_ms
    steady = [ms for ms, at in zip(lat, scrapes.at, strict=True) if at - ready_at >= warmup]
    report: dict[str, object] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "settings": {**{k: v for k, v in vars(args).items() if k != "out"}, "checks_by_class": counts},
        "check_runs": sum(last.runs.values()),
        "check_runs_by_class": classes,
        "exporter_cpu_percent": round(100 * (last.cpu_s - first.cpu_s) / max(1e-9, last.t - first.t), 1),
        "warmup_s": warmup,
        "resources": resources,
        "scrapes": {
            "count": len(lat),
            "errors": len(scrapes.errors),
            "error_examples": scrapes.errors[:5],
            "p50_ms": round(percentile(lat, 0.50), 2),
            "p99_ms": round(percentile(lat, 0.99), 2),
            "max_ms": round(max(lat, default=float("nan")), 2),
            # after the warm-up (start-up, first runs and the heap's settling left out)
            "steady_count": len(steady),
            "steady_p50_ms": round(percentile(steady, 0.50), 2) if steady else None,
            "steady_p99_ms": round(percentile(steady, 0.99), 2) if steady else None,
            "gzip_body_bytes": scrapes.body_bytes,
        },
        "plain_scrapes": {
            "count": len(scrapes.plain_ms),
            "p50_ms": round(percentile(scrapes.plain_ms, 0.50), 2) if scrapes.plain_ms else None,
            "p99_ms": round(percentile(scrapes.plain_ms, 0.99), 2) if scrapes.plain_ms else None,
            "body_bytes": scrapes.plain_body_bytes,
        },
        "samples": [asdict(s) for s in samples],
    }
    if args.heapwatch is not None:
        report["heapwatch"] = {"file": str(args.heapwatch), **heap_slopes(args.heapwatch, warmup)}
    report["slopes_judged"] = args.duration >= MAX_DURATION and not args.no_target_exit
    report["failures"] = verdicts(resources, scrapes, classes, short=not report["slopes_judged"])
    return report


def print_table(report: dict) -> None:  # type: ignore[type-arg]
    print(f"\ncheck runs: {report['check_runs']:,}  by class: {report['check_runs_by_class']}")
    print(f"exporter CPU: {report['exporter_cpu_percent']}% of one core")
    print(
        f"\n{'resource':<11} {'slope/h':>10} {'bound/h':>8} {'min':>8} {'max':>8}   (after {report['warmup_s']:.0f} s)"
    )
    for key, r in report["resources"].items():
        print(f"{key:<11} {r['slope_per_hour']:>+10.2f} {r['bound_per_hour']:>8} {r['min']:>8.1f} {r['max']:>8.1f}")
    s = report["scrapes"]
    print(
        f"\n/metrics (gzip, {s['gzip_body_bytes']:,} B): {s['count']} scrapes, {s['errors']} errors, "
        f"p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, max {s['max_ms']} ms"
    )
    if s.get("steady_count"):
        print(
            f"/metrics (gzip) after the {report['warmup_s']:g} s warm-up: {s['steady_count']} scrapes, "
            f"p50 {s['steady_p50_ms']} ms, p99 {s['steady_p99_ms']} ms"
        )
    plain = report.get("plain_scrapes") or {}
    if plain.get("count"):
        print(
            f"/metrics (plain, {plain['body_bytes']:,} B): {plain['count']} scrapes, "
            f"p50 {plain['p50_ms']} ms, p99 {plain['p99_ms']} ms"
        )
    if "heapwatch" in report:
        print(f"heapwatch (MB/h; blocks/h): {report['heapwatch']}")
    for reason in report["failures"]:
        print(f"FAIL: {reason}")


#: The size options: name, type, full-size default, --quick default, what it is (for --help).
SIZES: dict[str, tuple[type[float] | type[int], float, float, str]] = {
    "duration": (float, MAX_DURATION, 12.0, f"seconds, at most {MAX_DURATION:g}"),
    "checks": (int, 1000, 100, "checks"),
    "tarpit": (int, 200, 20, "checks against tarpits"),
    "flapping": (int, 100, 10, "checks against flapping servers"),
    "interval": (float, 12.0, 4.0, "mean seconds between runs (±20%%)"),
    "timeout": (float, 5.0, 2.0, "check timeout (a tarpit run lasts this long)"),
    "flap_period": (float, 25.0, 6.0, "seconds up, then down"),
    "warmup": (float, 120.0, 5.0, "seconds left out of the slopes"),
    "sample_every": (float, SAMPLE_EVERY, 2.0, "seconds per resource sample"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--plain-every", type=int, default=0, help="every Nth scrape without gzip, timed apart (default 0: none)"
    )
    for name, (kind, full, quick, what) in SIZES.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=kind, default=None, help=f"{what} (default {full:g}; quick {quick:g})"
        )
    parser.add_argument("--max-concurrency", type=int, default=400)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="20 s, 100 checks, 5 s warm-up, samples every 2 s: a check that it runs (slopes are not judged)",
    )
    parser.add_argument("--no-target-exit", action="store_true", help="report the slopes, do not judge them")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where the JSON report goes")
    parser.add_argument("--summary", default=None, help="append the headline figures to this file as JSON lines")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default <results-dir>/soak-<date>)")
    parser.add_argument("--heapwatch", type=Path, default=None, help="run the exporter under heapwatch.py, JSONL here")
    parser.add_argument(
        "--heapwatch-option", action="append", default=[], help="a flag for heapwatch.py, e.g. --trim-every=10"
    )
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the exporter's environment")
    args = parser.parse_args()
    for name, (_, full, quick, _) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.sample_every <= 0:
        parser.error("--sample-every must be positive")
    if not 0 < args.duration <= MAX_DURATION:
        parser.error(f"--duration must be in (0, {MAX_DURATION:g}]")
    report = run(args)
    print_table(report)
    suffix = "" if args.duration >= MAX_DURATION else "-short"
    out = args.out or args.results_dir / f"soak-{dt.date.today().isoformat()}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    append_summary(args.summary, summary(report, args))
    return 1 if report["failures"] else 0


def summary(report: dict, args: argparse.Namespace) -> list[dict[str, object]]:  # type: ignore[type-arg]
    """The headline figures: /metrics p99, the exporter's CPU and the slopes against their bounds."""
    common = {"rounds": 1, "quick": args.quick}
    s = report["scrapes"]
    minutes = f"{args.duration / 60:g} min" if args.duration >= 60 else f"{args.duration:g} s"
    lines = [
        summary_line(
            "soak",
            f"GET /metrics p99 (gzip, {s['count']} scrapes over {minutes}, {args.checks} checks)",
            s["p99_ms"],
            unit="ms",
            better="lower",
            target=10.0,
            **common,
        ),
    ]
    plain = report.get("plain_scrapes") or {}
    if plain.get("count"):
        lines.append(
            summary_line(
                "soak",
                f"GET /metrics p99 (plain, {plain['count']} scrapes over {minutes}, {args.checks} checks)",
                plain["p99_ms"],
                unit="ms",
                better="lower",
                target=10.0,
                **common,
            )
        )
    lines += [
        summary_line(
            "soak",
            "exporter CPU, share of one core",
            report["exporter_cpu_percent"],
            unit="%",
            better="lower",
            **common,
        ),
    ]
    names = {
        "rss_peak_mb": ("RSS peak slope", "MB/h"),
        "fds": ("fd floor slope", "fds/h"),
        "tasks": ("task slope", "tasks/h"),
    }
    for key, r in report["resources"].items():
        label, unit = names.get(key, (key, "/h"))
        judged = "" if report["slopes_judged"] else " (not judged)"
        lines.append(
            summary_line(
                "soak",
                f"{label} after {report['warmup_s']:g} s warm-up{judged}",
                r["slope_per_hour"],
                unit=unit,
                better="lower",
                target=r["bound_per_hour"],
                **common,
            )
        )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
