#!/usr/bin/env python3
"""Queue reader benchmark at a large deferred queue (issue 4), side by side with the peers.

What it does, against the test stack's Postfix (``scripts/teststack.sh up``) or any
instance given with ``--config-dir``/``--smtp``:

1. Measures every reader once on the queue as it is (the "0" point of the memory
   comparison; not with ``--no-empty-point`` or ``--quick``).
2. Fills the deferred queue with ``--messages`` (default 100,000) messages through
   parallel SMTP sessions on loopback to the instance's smtpd, whose relay is a dead
   loopback port, so every message stays deferred.  Filling is bounded by
   ``--fill-budget`` seconds: if it cannot finish, it stops and measures at the count
   it reached (the table says so).  It waits until ``postqueue -j`` shows every
   injected message in the deferred queue; the exact count comes from there.
3. Measures, each in its own process so peak RSS belongs to one reader:

   - ``spool``, ``showq``, ``postqueue``: this exporter's readers; a first read (cold
     cache, new process) and a steady-state read (same process, second read);
   - ``prometheus-postfix-exporter`` (Debian package) started on 127.0.0.1 with
     ``--postfix.showq_path`` at the instance's socket; one scrape of /metrics, first
     and second;
   - ``postqueue -c DIR -j | wc -l``;
   - a raw read of the showq socket (all bytes, discarded);
   - ``find <queue>/deferred -type f | wc -l``, the floor for a directory walk.

   Times are the median of ``--repeat`` runs; peak memory is the process's maximum
   resident set (GNU time's ``%M``, or ``VmHWM`` of the peer exporter).
4. Prints a table with the ratios of issue 4's targets and writes it as Markdown to
   ``queue.md`` in ``--results-dir`` (default ``benchmarks/results``); with ``--summary FILE``,
   appends the headline figures (steady-state reads against the peer's scrape, medians of the
   rounds) as JSON lines, for ``benchmarks/run_all.py``.
5. Deletes the messages it injected (and only those), leaving the queue as it found it; also
   when interrupted (SIGINT, SIGTERM).

Run as root (the spool reader and ``postsuper`` need it)::

    python3 benchmarks/queue_bench.py                 # 100,000 messages, test stack
    python3 benchmarks/queue_bench.py --messages 20000 --repeat 3
    python3 benchmarks/queue_bench.py --quick         # 300 messages, 1 round: does it still run?
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from run_all import append_summary, peer_version, summary_line  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "queue.md"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENV = {**os.environ, "PATH": SYSTEM_PATH + os.pathsep + os.environ.get("PATH", "")}
TIME = "/usr/bin/time"  # GNU time, for the peak RSS of a child process


def tool(name: str) -> str:
    found = shutil.which(name, path=ENV["PATH"])
    if found is None:
        raise SystemExit(f"{name} not found")
    return found


# --- measuring a child process ---------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    peak_kb: int
    output: str = ""


def _timed(argv: list[str], out: str) -> list[str]:
    """Wrap ``argv`` in GNU time, which writes the child's own peak RSS (KB) to ``out``.

    ``ru_maxrss`` seen from this (large) process would be wrong: a child forked from it
    carries this process's resident set until it execs, and Linux counts that too.
    """
    return [TIME, "-f", "%M", "-o", out, *argv]


def _peak(out: str) -> int:
    text = Path(out).read_text().strip().splitlines()
    os.unlink(out)
    return int(text[-1]) if text and text[-1].isdigit() else 0


def _tmp() -> str:
    fd, path = tempfile.mkstemp(prefix="qbench-")
    os.close(fd)
    return path


def run_measured(argv: list[str], timeout: float = 600.0) -> Run:
    """Run one process: wall time and its own peak RSS."""
    rss = _tmp()
    started = time.perf_counter()
    proc = subprocess.run(_timed(argv, rss), capture_output=True, env=ENV, timeout=timeout, check=False)
    took = time.perf_counter() - started
    peak = _peak(rss)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return Run(took, peak, proc.stdout.decode("utf-8", "replace"))


def run_pipeline(first: list[str], second: list[str]) -> Run:
    """``first | second``: wall time and the larger peak RSS of the two."""
    rss_a, rss_b = _tmp(), _tmp()
    started = time.perf_counter()
    a = subprocess.Popen(_timed(first, rss_a), stdout=subprocess.PIPE, env=ENV)
    b = subprocess.Popen(_timed(second, rss_b), stdin=a.stdout, stdout=subprocess.PIPE, env=ENV)
    assert a.stdout is not None
    a.stdout.close()
    out, _ = b.communicate()
    a.wait()
    took = time.perf_counter() - started
    if a.returncode or b.returncode:
        raise SystemExit(f"pipeline failed: {first} | {second}")
    return Run(took, max(_peak(rss_a), _peak(rss_b)), out.decode().strip())


# The exporter's readers, in a child process: a first (cold) read and a steady-state read.
READER_CHILD = r"""
import asyncio, gc, json, logging, resource, sys, time, tracemalloc
sys.path.insert(0, sys.argv[1])
from exporter.config import PostfixQueue
from exporter.core.model import Sink
from exporter.queues import make_cache, read_queue

def rss_kb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

async def main():
    reader, config_dir, reads = sys.argv[2], sys.argv[3], int(sys.argv[4])
    cfg = PostfixQueue(name="bench", type="postfix", config_directory=config_dir, reader=reader, timeout=600.0)
    log = logging.getLogger("bench")
    cache = make_cache()
    base = rss_kb()
    out = {"base_kb": base, "reads": []}
    for i in range(reads):
        sink = Sink()
        t = time.perf_counter()
        ok = await read_queue(cfg, sink, log, cache=cache)
        took = time.perf_counter() - t
        if not ok:
            raise SystemExit(f"read failed: {sink.failures}")
        deferred = [s.value for s in sink.samples()
                    if s.name == "mail_queue_messages" and dict(s.labels)["queue"] == "deferred"][0]
        out["reads"].append({"seconds": took, "peak_kb": rss_kb(), "deferred": deferred})
        if i == 0 and reads > 1:
            time.sleep(1.2)  # the spool cache trusts directories older than a second
        if i == 1 and cache.spool is not None:
            # the third read: as if every directory had changed (a busy queue), all listed again
            for d in [*cache.spool.dirs.values(), *cache.spool.defer_dirs.values()]:
                d.trusted = False
    spool = cache.spool
    if spool is not None:
        out["cache_columns_bytes"] = spool.nbytes()
        out["cache_messages"] = spool.messages()
        # real retained size of a cold cache: traced memory after one read, minus before
        gc.collect()
        tracemalloc.start()
        fresh = make_cache()
        before = tracemalloc.get_traced_memory()[0]
        await read_queue(cfg, Sink(), log, cache=fresh)
        gc.collect()
        out["cache_traced_bytes"] = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
    print(json.dumps(out))

asyncio.run(main())
"""

RAW_SHOWQ_CHILD = r"""
import socket, sys, time
t = time.perf_counter()
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
buf = bytearray(1 << 16)
n = 0
while True:
    k = s.recv_into(buf)
    if not k:
        break
    n += k
print(time.perf_counter() - t, n)
"""


def reader_runs(reader: str, config_dir: str, reads: int = 3) -> dict[str, Any]:
    run = run_measured([sys.executable, "-c", READER_CHILD, str(REPO), reader, config_dir, str(reads)])
    data: dict[str, Any] = json.loads(run.output)
    data["process_peak_kb"] = run.peak_kb
    return data


# --- prometheus-postfix-exporter -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def postfix_exporter(showq: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    argv = [
        tool("prometheus-postfix-exporter"),
        f"--web.listen-address=127.0.0.1:{port}",
        f"--postfix.showq_path={showq}",
        "--postfix.logfile_path=/dev/null",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("prometheus-postfix-exporter did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/metrics", proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def scrape(url: str, pid: int) -> Run:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as resp:
        body = resp.read().decode("utf-8", "replace")
    took = time.perf_counter() - started
    deferred = ""
    for line in body.splitlines():
        if line.startswith("postfix_showq_message_size_bytes_count") and 'queue="deferred"' in line:
            deferred = line.rsplit(" ", 1)[1]
    return Run(took, hwm_kb(pid), deferred)


# --- the queue ----------------------------------------------------------------------------------------


@dataclass
class Instance:
    config_dir: str
    queue_dir: str
    smtp: tuple[str, int]
    sender: str = field(default_factory=lambda: f"mce-bench-{uuid.uuid4().hex[:10]}@example.test")

    @property
    def showq(self) -> str:
        return os.path.join(self.queue_dir, "public", "showq")

    def postqueue_json(self) -> list[dict[str, Any]]:
        out = subprocess.run(
            [tool("postqueue"), "-c", self.config_dir, "-j"], capture_output=True, env=ENV, check=True
        ).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def count_files(self, queue: str) -> int:
        n = 0
        for _root, _dirs, files in os.walk(os.path.join(self.queue_dir, queue)):
            n += len(files)
        return n

    def fill(self, n: int, budget: float, connections: int) -> tuple[int, float]:
        """Send up to ``n`` messages within ``budget`` seconds; returns (sent, seconds)."""
        started = time.monotonic()
        stop_at = started + budget
        stop = threading.Event()  # set when this process is interrupted: stop sending, then clean up
        sent = [0] * connections
        errors: list[BaseException] = []

        def session(k: int) -> None:
            try:
                i = k
                smtp: smtplib.SMTP | None = None
                while i < n and time.monotonic() < stop_at and not stop.is_set():
                    if smtp is None or sent[k] % 500 == 0:  # fresh sessions now and then
                        if smtp is not None:
                            smtp.quit()
                        smtp = smtplib.SMTP(*self.smtp, timeout=60)
                        smtp.ehlo("bench.example")
                    body = f"Subject: bench {i}\r\n\r\nqueue benchmark message {i}\r\n"
                    smtp.sendmail(self.sender, [f"b{i}@d{i % 50}.bench.test"], body)
                    sent[k] += 1
                    i += connections
                if smtp is not None:
                    smtp.quit()
            except BaseException as exc:  # report, do not hang the other sessions
                errors.append(exc)

        threads = [threading.Thread(target=session, args=(k,)) for k in range(connections)]
        for t in threads:
            t.start()
        last = 0.0
        try:
            while any(t.is_alive() for t in threads):
                time.sleep(min(1.0, max(0.05, n / 20_000)))
                if time.monotonic() - last > 15:
                    last = time.monotonic()
                    print(f"  sent {sum(sent)} / {n} in {last - started:.0f}s", flush=True)
        finally:
            stop.set()
            for t in threads:
                t.join(90)
        if errors:
            print(f"  {len(errors)} SMTP session(s) failed: {errors[0]!r}", flush=True)
        return sum(sent), time.monotonic() - started

    def wait_deferred(self, mine: int, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            busy = self.count_files("incoming") + self.count_files("active") + self.count_files("maildrop")
            if busy == 0 or time.monotonic() > deadline:
                listing = self.postqueue_json()
                got = [m for m in listing if m["sender"] == self.sender]
                if all(m["queue_name"] == "deferred" for m in got) and len(got) >= mine:
                    return listing
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {len(got)} of {mine} messages reached the deferred queue")
            time.sleep(2.0 if mine > 5000 else 0.5)

    def delete_mine(self) -> int:
        """Delete the messages of this run's sender; again (at most 10 times) until none is listed."""
        deleted = 0
        for _ in range(10):
            listing = self.postqueue_json()
            ids = [m["queue_id"] for m in listing if m["sender"] == self.sender]
            if not ids:
                break
            subprocess.run(
                [tool("postsuper"), "-c", self.config_dir, "-d", "-"],
                input="\n".join(ids) + "\n",
                text=True,
                capture_output=True,
                env=ENV,
                check=True,
            )
            deleted += len(ids)
            time.sleep(0.5)
        else:
            print(f"WARNING: messages from {self.sender} are still queued", flush=True)
        return deleted


def load_instance(args: argparse.Namespace) -> Instance:
    if args.config_dir:
        queue_dir = subprocess.run(
            [tool("postconf"), "-c", args.config_dir, "-h", "queue_directory"],
            capture_output=True,
            text=True,
            env=ENV,
            check=True,
        ).stdout.strip()
        host, _, port = args.smtp.rpartition(":")
        return Instance(args.config_dir, queue_dir, (host, int(port)))
    stack = json.loads(Path(args.stack).read_text())
    return Instance(
        stack["postfix"]["config_dir"], stack["postfix"]["queue_dir"], (stack["host"], int(stack["ports"]["smtp"]))
    )


# --- measuring everything -------------------------------------------------------------------------


QUIET_WAIT = [60.0]  # --quiet-wait


def wait_quiet(limit: float | None = None) -> None:
    """This machine may be shared: wait (a while) for the 1-minute load to drop below 1.5."""
    deadline = time.monotonic() + (QUIET_WAIT[0] if limit is None else limit)
    while os.getloadavg()[0] >= 1.5 and time.monotonic() < deadline:
        time.sleep(2.0)


def measure(inst: Instance, repeat: int) -> dict[str, dict[str, Any]]:
    """Every tool ``repeat`` times, round-robin (so a noisy moment hits all of them alike)."""
    readers = ("spool", "showq", "postqueue")
    runs: dict[str, list[Any]] = {k: [] for k in (*readers, "postfix_exporter", "postqueue_wc", "raw_showq", "find")}
    deferred_dir = os.path.join(inst.queue_dir, "deferred")
    with postfix_exporter(inst.showq) as (url, pid):
        time.sleep(0.5)
        pfe_base = hwm_kb(pid)
        pfe_first = scrape(url, pid)
        for _ in range(repeat):
            wait_quiet()
            runs["spool"].append(reader_runs("spool", inst.config_dir))
            # the showq reader and the raw socket read back to back, so both meet the same moment
            runs["showq"].append(reader_runs("showq", inst.config_dir))
            raw = run_measured([sys.executable, "-c", RAW_SHOWQ_CHILD, inst.showq])
            seconds, nbytes = raw.output.split()
            runs["raw_showq"].append(Run(float(seconds), raw.peak_kb, nbytes))
            runs["postqueue"].append(reader_runs("postqueue", inst.config_dir))
            runs["postfix_exporter"].append(scrape(url, pid))
            runs["postqueue_wc"].append(
                run_pipeline([tool("postqueue"), "-c", inst.config_dir, "-j"], [tool("wc"), "-l"])
            )
            runs["find"].append(run_pipeline([tool("find"), deferred_dir, "-type", "f"], [tool("wc"), "-l"]))
    res: dict[str, dict[str, Any]] = {}
    for reader in readers:
        rs = runs[reader]
        res[reader] = {
            "first": statistics.median(r["reads"][0]["seconds"] for r in rs),
            # steady state: the later reads of the same process (for showq and postqueue both count)
            "steady": statistics.median(
                read["seconds"] for r in rs for read in (r["reads"][1:2] if reader == "spool" else r["reads"][1:])
            ),
            # peak of the reads themselves (the process's peak also has the traced cache measurement)
            "peak_kb": max(read["peak_kb"] for r in rs for read in r["reads"]),
            "process_peak_kb": max(r["process_peak_kb"] for r in rs),
            "base_kb": max(r["base_kb"] for r in rs),
            "deferred": rs[0]["reads"][0]["deferred"],
        }
        if reader == "spool":
            res[reader]["changed"] = statistics.median(r["reads"][2]["seconds"] for r in rs)
            for key in ("cache_columns_bytes", "cache_traced_bytes", "cache_messages"):
                res[reader][key] = rs[0].get(key)
    steady = [r.seconds for r in runs["postfix_exporter"]]
    res["postfix_exporter"] = {
        "first": pfe_first.seconds,
        "steady": statistics.median(steady),
        "peak_kb": max(r.peak_kb for r in [pfe_first, *runs["postfix_exporter"]]),
        "base_kb": pfe_base,
        "deferred": pfe_first.output,
    }
    for key in ("postqueue_wc", "raw_showq", "find"):
        med = statistics.median(r.seconds for r in runs[key])
        res[key] = {"first": med, "steady": med, "peak_kb": max(r.peak_kb for r in runs[key])}
        res[key]["output"] = runs[key][0].output
    return res


def fmt_s(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def table(res: dict[str, dict[str, Any]], n: int) -> str:
    rows = [
        ("spool (this exporter)", "spool", "steady"),
        ("spool, every directory changed", "spool", "changed"),
        ("showq (this exporter)", "showq", "steady"),
        ("postqueue (this exporter)", "postqueue", "steady"),
        ("prometheus-postfix-exporter scrape", "postfix_exporter", "steady"),
        ("postqueue -j \\| wc -l", "postqueue_wc", "steady"),
        ("raw showq socket read", "raw_showq", "steady"),
        ("find deferred -type f \\| wc -l", "find", "steady"),
    ]
    lines = [
        f"Deferred messages: **{n:,}**",
        "",
        "| reader | first read | steady-state read | peak RSS | postfix-exporter / this | this / find |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    pfe = res["postfix_exporter"]["steady"]
    find = res["find"]["steady"]
    for label, key, col in rows:
        r = res[key]
        t = r[col]
        first = "" if col == "changed" else fmt_s(r["first"])
        lines.append(
            f"| {label} | {first} | {fmt_s(t)} | {r['peak_kb'] / 1024:.1f} MB | {pfe / t:.1f}x | {t / find:.2f}x |"
        )
    return "\n".join(lines)


def targets(res: dict[str, dict[str, Any]], empty: dict[str, dict[str, Any]] | None) -> list[tuple[str, str, bool]]:
    out = []
    pfe, find, raw = res["postfix_exporter"]["steady"], res["find"]["steady"], res["raw_showq"]["steady"]
    spool, changed, showq = res["spool"]["steady"], res["spool"]["changed"], res["showq"]["steady"]
    out.append(("spool steady-state >= 5x faster than postfix-exporter", f"{pfe / spool:.0f}x", pfe / spool >= 5))
    out.append(("spool steady-state within 3x of find", f"{spool / find:.2f}x", spool / find <= 3))
    out.append(
        (
            "(not a target) spool with every directory changed, vs find / vs postfix-exporter",
            f"{changed / find:.1f}x / {pfe / changed:.1f}x faster",
            True,
        )
    )
    out.append(("showq within 1.2x of the raw socket read", f"{showq / raw:.2f}x", showq / raw <= 1.2))
    if empty is not None:
        growth = (res["showq"]["peak_kb"] - empty["showq"]["peak_kb"]) / 1024
        out.append(("showq memory growth from the empty queue < 10 MB", f"{growth:+.1f} MB", growth < 10))
    cached = res["spool"].get("cache_messages") or 0
    if cached:
        traced = res["spool"]["cache_traced_bytes"] / cached
        columns = res["spool"]["cache_columns_bytes"] / cached
        out.append(
            (
                "spool cache <= 100 bytes/message",
                f"{traced:.0f} B/message (traced; {columns:.0f} in columns)",
                traced <= 100,
            )
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=None, help="messages to inject (default 100,000; quick 300)")
    ap.add_argument(
        "--fill-budget", type=float, default=None, help="seconds allowed for filling (default 300; quick 60)"
    )
    ap.add_argument("--connections", type=int, default=6)
    ap.add_argument(
        "--repeat", "--rounds", dest="repeat", type=int, default=None, help="rounds, medians taken (default 3; quick 1)"
    )
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help="seconds each round may wait for the load average to drop below 1.5 (default 60; quick 0)",
    )
    ap.add_argument(
        "--empty-point",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure every reader once before filling, for the memory growth target (default yes; quick no)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="300 messages, 1 round, no empty point, no waiting: a check that it runs",
    )
    ap.add_argument("--results-dir", type=Path, default=RESULTS.parent, help="where queue.md goes")
    ap.add_argument("--summary", default=None, help="append the headline figures to this file as JSON lines")
    ap.add_argument("--stack", default=os.environ.get("MCE_STACK_DIR", "/tmp/mce-teststack") + "/stack.json")
    ap.add_argument("--config-dir", help="a Postfix config directory instead of the test stack's")
    ap.add_argument("--smtp", default="127.0.0.1:25", help="its smtpd, with --config-dir")
    ap.add_argument("--keep", action="store_true", help="do not delete the injected messages")
    ap.add_argument("--no-fill", action="store_true", help="measure the queue as it is")
    args = ap.parse_args()
    for name, full, quick in (
        ("messages", 100_000, 300),
        ("fill_budget", 300.0, 60.0),
        ("repeat", 3, 1),
        ("quiet_wait", 60.0, 0.0),
        ("empty_point", True, False),
    ):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.repeat < 1:
        ap.error("--repeat: at least 1")
    QUIET_WAIT[0] = args.quiet_wait
    # a plain kill (SIGTERM) runs the clean-up below too, as Ctrl-C (SIGINT) does
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    if os.geteuid() != 0:
        raise SystemExit("run as root: the spool reader and postsuper need it")
    inst = load_instance(args)
    print(f"Postfix {inst.config_dir}, queue {inst.queue_dir}, smtp {inst.smtp[0]}:{inst.smtp[1]}", flush=True)

    before = inst.postqueue_json()
    empty: dict[str, dict[str, Any]] | None = None
    if args.empty_point:
        print(f"queue before: {len(before)} messages; measuring the empty point", flush=True)
        empty = measure(inst, 1)
    else:
        print(f"queue before: {len(before)} messages; the empty point is not measured", flush=True)
    fill_note = ""
    try:
        if not args.no_fill:
            sent, took = inst.fill(args.messages, args.fill_budget, args.connections)
            print(f"sent {sent} messages in {took:.0f}s ({sent / max(took, 1e-9):.0f}/s)", flush=True)
            if sent < args.messages:
                fill_note = (
                    f"Filling stopped at the {args.fill_budget:.0f} s budget: measured at {sent:,} of the "
                    f"{args.messages:,} messages asked for."
                )
            listing = inst.wait_deferred(sent, timeout=600)
            # Write the freshly created queue files to disk first: otherwise whichever tool runs
            # first competes with the kernel's writeback of a few hundred MB (seen: 2 minutes).
            started = time.monotonic()
            os.sync()
            print(f"synced the file system in {time.monotonic() - started:.0f}s", flush=True)
            # and let the queue directories settle past the scanner's trust margin (1 s)
            time.sleep(1.5 if args.quick else 5.0)
        else:
            listing = inst.postqueue_json()
        deferred = sum(m["queue_name"] == "deferred" for m in listing)
        print(f"deferred now: {deferred} (exact, postqueue -j)", flush=True)
        res = measure(inst, args.repeat)
        for key in ("spool", "showq", "postqueue"):
            if int(res[key]["deferred"]) != deferred:
                print(f"WARNING: {key} read {res[key]['deferred']} deferred, postqueue -j {deferred}")
    finally:
        if not args.keep and not args.no_fill:
            print(f"deleted {inst.delete_mine()} injected messages", flush=True)

    text = table(res, deferred)
    checks = targets(res, empty)
    empty_n = len([m for m in before if m["queue_name"] == "deferred"])
    version = subprocess.run(
        [tool("postconf"), "-h", "mail_version"], capture_output=True, text=True, env=ENV, check=False
    ).stdout.strip()
    report = [
        "# Queue reader benchmark",
        "",
        f"`python3 benchmarks/queue_bench.py {' '.join(sys.argv[1:])}` on "
        f"{platform.node()}: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}, "
        f"Postfix {version}; instance {inst.config_dir} (queue {inst.queue_dir}), filled through "
        f"smtpd on {inst.smtp[0]}:{inst.smtp[1]}.",
        "Times are medians of the runs (each round waits up to a minute for the machine to be quiet;",
        "the showq reader and the raw socket read run back to back); peak RSS is the measured",
        "process's maximum resident set",
        "(for the exporter's readers a whole Python process, for the peer exporter its VmHWM).",
        "A first read starts with a cold exporter cache (the OS page cache is warm for everyone);",
        "a steady-state read is the next read of the same source.",
        "",
    ]
    if fill_note:
        report += [fill_note, ""]
    report += [text, "", "## Targets (issue 4)", "", "| target | measured | met |", "|---|---|---|"]
    report += [f"| {name} | {value} | {'yes' if ok else 'NO'} |" for name, value, ok in checks]
    if empty is not None:
        report += [
            "",
            f"Memory at the empty point ({empty_n} deferred): "
            + ", ".join(f"{k} {empty[k]['peak_kb'] / 1024:.1f} MB" for k in ("spool", "showq", "postqueue")),
        ]
    report += [
        "",
        "Raw data (seconds, KB):",
        "",
        "```json",
        json.dumps({"at_n": res, "empty": empty}, indent=1, default=str),
        "```",
        "",
    ]
    out = args.results_dir / RESULTS.name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(report))
    print()
    print(text)
    print()
    for name, value, ok in checks:
        print(f"  [{'ok' if ok else '!!'}] {name}: {value}")
    print(f"\nwritten to {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    pfe = res["postfix_exporter"]["steady"] * 1000
    append_summary(
        args.summary,
        [
            summary_line(
                "queue",
                f"{label} steady-state read, {deferred:,} deferred",
                res[key]["steady"] * 1000,
                peer=pfe,
                peer_name=peer_version("prometheus-postfix-exporter") + " (scrape)",
                unit="ms",
                better="lower",
                rounds=args.repeat,
                quick=args.quick,
            )
            for label, key in (("spool reader", "spool"), ("showq reader", "showq"))
        ],
    )


if __name__ == "__main__":
    main()
