"""The spool scanner on synthetic Postfix queue trees: which files count, sizes, ages, the cache.

The queue files are written in Postfix's record format (type byte, length in 7-bit
groups, data) like cleanup writes them; the real files recorded from Postfix are
in test_queue_parsers.py, and test_queue_postfix.py runs the scanner against the
real queue of the test stack.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from test_queue_parsers import DEFER_LOG, QF_DEFERRED, QF_MAILDROP

from exporter.queues import POSTFIX_QUEUES, QueueStats
from exporter.queues import spool as spool_module
from exporter.queues.spool import SpoolCache, parse_queue_file_header, scan_spool


def record(rtype: bytes, data: bytes) -> bytes:
    out = bytearray(rtype)
    n = len(data)
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes(out) + data


def queue_file(arrival: float, size: int, rcpt: str = "r@example.net", body: bytes = b"x" * 300) -> bytes:
    sec, usec = int(arrival), round((arrival - int(arrival)) * 1e6)
    return b"".join(
        [
            record(b"C", f"{size:15d} {200:15d} {1:15d} {0:15d}".encode()),
            record(b"T", f"{sec} {usec}".encode()),
            record(b"A", b"rewrite_context=local"),
            record(b"S", b"sender@example.test"),
            record(b"R", rcpt.encode()),
            record(b"M", b""),
            record(b"N", body),  # a long record: two length bytes
            record(b"X", b""),
            record(b"E", b""),
        ]
    )


def defer_log(rcpt: str, reason: str) -> bytes:
    return (
        f"<{rcpt}>: {reason}\nrecipient={rcpt}\noffset=236\nstatus=4.4.1\naction=delayed\nreason={reason}\n\n"
    ).encode()


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        for q in (*POSTFIX_QUEUES, "defer"):
            (root / q).mkdir(parents=True)

    def put(self, queue: str, qid: str, data: bytes, mode: int = 0o700, hashed: bool = True) -> Path:
        d = self.root / queue
        if hashed and queue in ("deferred", "defer"):
            d = d / qid[0]
            d.mkdir(exist_ok=True)
        path = d / qid
        path.write_bytes(data)
        path.chmod(mode)
        return path

    def scan(self, cache: SpoolCache) -> QueueStats:
        return scan_spool(str(self.root), cache, time.monotonic() + 30)


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


@pytest.fixture
def no_trust_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust a directory listing at once (the real margin, 1 s, is tested on its own)."""
    monkeypatch.setattr(spool_module, "TRUST_AGE", 0.0)


def test_header_parser_reads_the_synthetic_files() -> None:
    h = parse_queue_file_header(queue_file(1700000000.25, 1234))
    assert h.arrival == pytest.approx(1700000000.25)
    assert h.size == 1234
    assert h.recipient == "r@example.net"


def test_counts_sizes_and_ages(spool: Spool) -> None:
    now = time.time()
    spool.put("deferred", "A1111111", queue_file(now - 7200, 500, "a@one.test"))
    spool.put("deferred", "B2222222", queue_file(now - 30, 700, "b@two.test"))
    f = spool.put("deferred", "C3333333", queue_file(now - 100000, 900, "c@one.test"))
    # the deferred file's mtime is its next retry time, in the future: never its age
    os.utime(f, (now + 3600, now + 3600))
    spool.put("hold", "D4444444", queue_file(now - 50, 100))
    spool.put("active", "E5555555", queue_file(now - 5, 200))
    spool.put("incoming", "F6666666", queue_file(now - 1, 300), mode=0o600)  # not committed yet: not counted
    spool.put("maildrop", "G7777777", QF_MAILDROP, mode=0o744)  # postdrop's file: no size record
    (spool.root / "deferred" / "A" / "not-a-queue-id").write_bytes(b"junk")
    (spool.root / "deferred" / "x").mkdir()  # an empty hash subdirectory
    stats = spool.scan(SpoolCache())
    q = stats.queues
    assert q["deferred"].messages == 3
    assert q["deferred"].size == 500 + 700 + 900  # content sizes from the C records, not st_size
    assert q["deferred"].oldest == pytest.approx(now - 100000, abs=1e-3)
    assert q["hold"].messages == 1 and q["active"].messages == 1
    assert q["incoming"].messages == 0
    assert q["maildrop"].messages == 1
    assert q["maildrop"].size == len(QF_MAILDROP)  # showq falls back to the file size
    assert sum(q["deferred"].buckets) == 3
    assert q["deferred"].buckets[0] == 1  # the 30 s old one is within le=60


def test_reasons_and_destinations_from_defer_logs(spool: Spool) -> None:
    now = time.time()
    spool.put("deferred", "A1111111", queue_file(now - 70, 1, "a@one.test"))
    spool.put("defer", "A1111111", defer_log("a@one.test", "connect to x[192.0.2.1]:25: Connection refused"))
    spool.put("deferred", "B2222222", queue_file(now - 70, 1, "b@two.test"))
    spool.put("defer", "B2222222", defer_log("b@two.test", "host x[192.0.2.1] said: 450 4.7.1 greylisted"))
    spool.put("deferred", "C3333333", queue_file(now - 70, 1, "c@three.test"))  # no defer log: other
    spool.put("deferred", "D4444444", queue_file(now - 70, 1, "d@two.test"))
    spool.put("defer", "D4444444", DEFER_LOG[:50])  # first entry still being written: not used yet
    spool.put("hold", "E5555555", queue_file(now - 70, 1, "e@one.test"))
    spool.put("defer", "E5555555", defer_log("e@one.test", "Host or domain name not found"), hashed=True)
    stats = spool.scan(SpoolCache())
    assert stats.with_reasons
    assert stats.reasons == {
        "refused_or_timeout": 1,
        "dns": 0,  # the held message's log does not count: it is not deferred
        "tls": 0,
        "greylist_or_ratelimit": 1,
        "rejected": 0,
        "other": 2,
    }
    assert stats.domains == {"one.test": 1, "two.test": 2, "three.test": 1}


@pytest.mark.usefixtures("no_trust_margin")
def test_cache_reads_each_header_once_and_follows_changes(spool: Spool) -> None:
    now = time.time()
    for i in range(40):
        qid = f"{'0123456789ABCDEF'[i % 16]}{i:07d}"
        spool.put("deferred", qid, queue_file(now - 1000 - i, 100))
        spool.put("defer", qid, defer_log(f"u{i}@d{i % 3}.test", "Connection refused"))
    cache = SpoolCache()
    first = spool.scan(cache)
    assert first.queues["deferred"].messages == 40
    assert cache.headers_read == 40 and cache.logs_read == 40
    listed = cache.dirs_listed
    # steady state: no directory listed, no file read
    second = spool.scan(cache)
    assert cache.headers_read == 40 and cache.logs_read == 40
    assert cache.dirs_listed == listed
    assert second.queues["deferred"].messages == 40
    assert second.queues["deferred"].size == first.queues["deferred"].size
    assert second.reasons == first.reasons and second.domains == first.domains
    assert 0 < cache.nbytes() <= 100 * cache.messages()
    # a message leaves (delivered), another moves to hold, a new one arrives
    gone = next((spool.root / "deferred" / "0").iterdir())
    gone.unlink()
    (spool.root / "defer" / "0" / gone.name).unlink()
    moved = next((spool.root / "deferred" / "1").iterdir())
    os.rename(moved, spool.root / "hold" / moved.name)
    spool.put("deferred", "Z9999999", queue_file(now - 5, 100))
    third = spool.scan(cache)
    assert third.queues["deferred"].messages == 39
    assert third.queues["hold"].messages == 1
    # the new file's header, and the moved one's again in hold: the cache is per directory
    assert cache.headers_read == 42
    assert third.reasons["refused_or_timeout"] == 38 and third.reasons["other"] == 1
    # a whole hash directory disappears: its cache goes with it
    for f in (spool.root / "deferred" / "2").iterdir():
        f.unlink()
    (spool.root / "deferred" / "2").rmdir()
    fourth = spool.scan(cache)
    assert fourth.queues["deferred"].messages == 39 - 3
    assert str(spool.root / "deferred" / "2") not in cache.dirs


@pytest.mark.usefixtures("no_trust_margin")
def test_rewritten_defer_log_is_read_again(spool: Spool) -> None:
    now = time.time()
    spool.put("deferred", "A1111111", queue_file(now - 70, 1, "a@one.test"))
    log = spool.put("defer", "A1111111", defer_log("a@one.test", "Connection refused"))
    cache = SpoolCache()
    assert spool.scan(cache).reasons["refused_or_timeout"] == 1
    # the next delivery attempt: qmgr removes the log, the bounce daemon writes a new one
    log.unlink()
    log.write_bytes(defer_log("a@one.test", "host x[192.0.2.1] said: 421 4.7.0 rate limited, try later"))
    stats = spool.scan(cache)
    assert stats.reasons["refused_or_timeout"] == 0
    assert stats.reasons["greylist_or_ratelimit"] == 1


def test_recently_changed_directory_is_listed_again(spool: Spool) -> None:
    now = time.time()
    spool.put("deferred", "A1111111", queue_file(now - 70, 1))
    cache = SpoolCache()
    spool.scan(cache)  # the directories were just written: not trusted yet
    listed = cache.dirs_listed
    spool.scan(cache)
    assert cache.dirs_listed > listed
    time.sleep(spool_module.TRUST_AGE + 0.1)
    spool.scan(cache)  # listed once more, now older than the margin: trusted from here on
    listed = cache.dirs_listed
    spool.scan(cache)
    assert cache.dirs_listed == listed


@pytest.mark.usefixtures("no_trust_margin")
def test_uncommitted_file_is_counted_once_committed(spool: Spool) -> None:
    now = time.time()
    f = spool.put("incoming", "A1111111", queue_file(now - 1, 100), mode=0o600)
    cache = SpoolCache()
    assert spool.scan(cache).queues["incoming"].messages == 0
    f.chmod(0o700)  # cleanup commits the file: only the mode changes, not the directory
    assert spool.scan(cache).queues["incoming"].messages == 1


def test_real_deferred_file(spool: Spool) -> None:
    spool.put("deferred", "83E7220C19D", QF_DEFERRED)
    stats = spool.scan(SpoolCache())
    assert stats.queues["deferred"].messages == 1
    assert stats.queues["deferred"].size == 252
