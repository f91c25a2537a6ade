#!/usr/bin/env python3
"""Run the exporter in-process and log where its memory is, to tell a leak from the allocator.

RSS alone cannot say *why* a process grows: live Python objects, C-level allocations
(OpenSSL, SQLite, zlib) and memory that glibc's malloc keeps after it was freed
(fragmentation, per-thread arenas) all count the same.  This wrapper runs
``exporter.cli.main`` with the given argv and a daemon thread that, every ``--every``
seconds, appends one JSON line to ``--out``:

- ``rss_kb`` and its split ``anon_kb`` / ``file_kb`` (pages of mapped files: code paths run
  for the first time fault these in), ``threads`` (``/proc/self/status``);
- glibc ``mallinfo2()``: ``arena`` (bytes of the main and thread arenas obtained by
  brk/mmap), ``hblkhd`` (bytes in large mmapped blocks), ``uordblks`` (bytes in use by
  malloc's callers: the leak signal) and ``fordblks`` (free bytes kept in the heap:
  fragmentation);
- ``blocks`` (``sys.getallocatedblocks()``: live pymalloc blocks), ``gc`` (counts) and
  ``collections`` (collections so far, per generation);
- pymalloc's own figures from ``sys._debugmallocstats()``: ``py_arenas`` (its 1 MiB arenas,
  mmapped directly, so outside mallinfo2), ``py_used`` and ``py_free`` (bytes in used and
  free blocks of those arenas).  That call writes to fd 2, which is pointed at a temporary
  file meanwhile: an exporter log line written in that instant is lost;
- ``pauses``: per generation, the collections in the window and the longest in ms (from
  ``gc.callbacks``: the exporter's own collections, automatic or periodic);
- every ``--objects-every`` seconds, ``objects`` (``len(gc.get_objects())``);
- with ``--tracemalloc``, ``traced_kb``: the live Python heap (slows the exporter).

``--gc-every`` runs a full ``gc.collect()`` before a reading (its pause in ``gc_ms``), so
that the figures are the live set rather than a point on the cyclic collector's saw-tooth.
``--census-at`` once runs a full collection that keeps what it finds (``gc.DEBUG_SAVEALL``)
and logs the most common types of that unreachable garbage, then frees it.  ``--trim-every`` calls
glibc ``malloc_trim(0)`` from the same thread, to test whether the growth is memory that
malloc could give back.  ``soak.py --heapwatch`` launches the exporter through this
file; it is a benchmark tool, not part of the product.

    python benchmarks/soak/heapwatch.py --out heap.jsonl -- --config.file=... [exporter flags]
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import ctypes.util
import gc
import json
import os
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class MallInfo2(ctypes.Structure):
    """``struct mallinfo2`` of glibc >= 2.33 (every field a size_t)."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def load_libc() -> Any:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


def proc_status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "Threads"):
            out[key] = int(value.split()[0])
    return out


PYMALLOC_FIELDS = {
    "# arenas allocated current": "py_arenas",
    "# bytes in allocated blocks": "py_used",
    "# bytes in available blocks": "py_free",
}


def pymalloc_stats() -> dict[str, int]:
    """The figures of ``sys._debugmallocstats()``, which only prints them to the C-level stderr."""
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() in PYMALLOC_FIELDS:
            out[PYMALLOC_FIELDS[key.strip()]] = int(value.strip().replace(",", ""))
    return out


def reading(libc: Any, t0: float, with_objects: bool) -> dict[str, object]:
    status = proc_status()
    mi = libc.mallinfo2()
    row: dict[str, object] = {
        "t": round(time.monotonic() - t0, 1),
        "rss_kb": status["VmRSS"],
        "anon_kb": status["RssAnon"],
        "file_kb": status["RssFile"],
        "threads": status["Threads"],
        "arena": mi.arena,
        "hblkhd": mi.hblkhd,
        "uordblks": mi.uordblks,
        "fordblks": mi.fordblks,
        "blocks": sys.getallocatedblocks(),
        "gc": list(gc.get_count()),
        "collections": [g["collections"] for g in gc.get_stats()],
        **pymalloc_stats(),
    }
    if tracemalloc.is_tracing():
        row["traced_kb"] = tracemalloc.get_traced_memory()[0] // 1024
    if with_objects:
        row["objects"] = len(gc.get_objects())
    return row


class Pauses:
    """Collections and the longest pause per generation since the last ``take()``, via ``gc.callbacks``."""

    def __init__(self) -> None:
        self.started = 0.0
        self.window: dict[int, list[float]] = {}
        gc.callbacks.append(self.callback)

    def callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        ms = (time.perf_counter() - self.started) * 1000
        count, longest = self.window.get(info["generation"], [0, 0.0])
        self.window[info["generation"]] = [count + 1, round(max(longest, ms), 2)]

    def take(self) -> dict[str, list[float]]:
        window, self.window = self.window, {}
        return {str(gen): v for gen, v in sorted(window.items())}


def collect(row: dict[str, object]) -> None:
    t = time.perf_counter()
    row["gc_freed"] = gc.collect()
    row["gc_ms"] = round((time.perf_counter() - t) * 1000, 2)


def census(t0: float) -> dict[str, object]:
    """The 15 commonest types among the unreachable objects a full collection finds now."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = collections.Counter(type(o).__qualname__ for o in gc.garbage)
        total = len(gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
    return {"t": round(time.monotonic() - t0, 1), "census_total": total, "census": found.most_common(15)}


def watch(args: argparse.Namespace, libc: Any) -> None:
    t0 = time.monotonic()
    last_objects = last_trim = last_gc = -1e9
    pauses = Pauses()
    with args.out.open("a") as out:
        while True:
            now = time.monotonic()
            if args.trim_every and now - last_trim >= args.trim_every:
                libc.malloc_trim(0)
                last_trim = now
            timing: dict[str, object] = {}
            if args.gc_every and now - last_gc >= args.gc_every:
                collect(timing)
                last_gc = now
            if args.census_at and now - t0 >= args.census_at:
                out.write(json.dumps(census(t0)) + "\n")
                args.census_at = 0.0
            with_objects = now - last_objects >= args.objects_every
            if with_objects:
                last_objects = now
            row = reading(libc, t0, with_objects) | timing | {"pauses": pauses.take()}
            out.write(json.dumps(row) + "\n")
            out.flush()
            time.sleep(args.every)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSONL file to append readings to")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between readings")
    parser.add_argument("--objects-every", type=float, default=60.0, help="seconds between gc.get_objects() counts")
    parser.add_argument("--tracemalloc", action="store_true", help="also record the live Python heap (slow)")
    parser.add_argument("--gc-every", type=float, default=0.0, help="gc.collect() this often (0: never)")
    parser.add_argument("--census-at", type=float, default=0.0, help="seconds in: log a census of the garbage")
    parser.add_argument("--trim-every", type=float, default=0.0, help="call malloc_trim(0) this often (0: never)")
    parser.add_argument("exporter_argv", nargs=argparse.REMAINDER, help="-- then the exporter's flags")
    args = parser.parse_args()
    argv = args.exporter_argv[1:] if args.exporter_argv[:1] == ["--"] else args.exporter_argv
    if args.tracemalloc:
        tracemalloc.start()
    threading.Thread(target=watch, args=(args, load_libc()), name="heapwatch", daemon=True).start()
    sys.path.insert(0, str(ROOT))
    from exporter.cli import main as exporter_main

    return exporter_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
