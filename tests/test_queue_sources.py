"""Queue sources without the mail stack: scripted showq servers, Exim spools, directories, commands.

Every failure case ends in ``mail_queue_up 0`` with a reason, within the source's
timeout, with no exception and no stale counts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from exporter.config import CommandQueue, DirectoryQueue, EximQueue, PostfixQueue, QueueConfig
from exporter.core.model import Sink
from exporter.queues import POSTFIX_QUEUES, QueueCache, make_cache, read_queue
from exporter.queues.registry import READERS

LOG = logging.getLogger("test.queues")

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def values(sink: Sink) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, s.labels): s.value for s in sink.samples()}


def value(sink: Sink, name: str, **labels: str) -> float | None:
    for s in sink.samples():
        if s.name == name and dict(s.labels) == labels:
            return s.value
    return None


def names(sink: Sink) -> set[str]:
    return {s.name for s in sink.samples()}


def rec(*attrs: bytes) -> bytes:
    """One showq attribute list: name, value, ..., then the terminator."""
    return b"".join(a + b"\0" for a in attrs) + b"\0"


ANNOUNCE = rec(b"protocol", b"mail_queue_list_protocol")


def message(queue: bytes, qid: bytes, age: int, size: int, *rcpts: tuple[bytes, bytes], now: int = 0) -> bytes:
    when = str((now or int(time.time())) - age).encode()
    attrs = [b"queue_name", queue, b"queue_id", qid, b"time", when, b"size", str(size).encode()]
    attrs += [b"forced_expire", b"0", b"sender", b"s@example.test"]
    for addr, why in rcpts:
        attrs += [b"recipient", addr, b"reason", why]
    return rec(*attrs)


def listing(now: int) -> bytes:
    return (
        ANNOUNCE
        + message(b"deferred", b"AAA1", 4000, 100, (b"a@one.test", b"connect to x[1.2.3.4]:25: refused"), now=now)
        + message(b"deferred", b"AAA2", 50, 200, (b"b@two.test", b"host x[1.2.3.4] said: 450 4.7.1 later"), now=now)
        + message(b"deferred", b"AAA3", 10, 300, (b"c@one.test", b""), (b"d@two.test", b"Host not found"), now=now)
        + message(b"hold", b"AAA4", 90000, 400, (b"e@one.test", b""), now=now)
        + message(b"active", b"AAA5", 1, 500, (b"f@one.test", b""), now=now)
        + b"\0"
    )


LISTING = listing(int(time.time()))


class ShowqServer:
    """A scripted showq service on ``<dir>/public/showq``, with a config dir that points at it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.queue_dir = root / "spool"
        self.config_dir = root / "etc"
        (self.queue_dir / "public").mkdir(parents=True)
        self.config_dir.mkdir()
        (self.config_dir / "main.cf").write_text(f"queue_directory = {self.queue_dir}\n")
        (self.config_dir / "master.cf").write_text("")  # postconf stalls for seconds on warnings without it
        # Postfix waits for a config file modified in the last second to settle: make them old.
        past = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(self.config_dir / name, (past, past))
        self.server: asyncio.Server | None = None
        self.connections = 0

    @property
    def path(self) -> str:
        return str(self.queue_dir / "public" / "showq")

    async def serve(self, handler: Handler) -> None:
        async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_unix_server(wrapped, path=self.path)

    def cfg(self, reader: str = "showq", timeout: float = 2.0, top: int = 10) -> PostfixQueue:
        return PostfixQueue(
            name="scripted",
            type="postfix",
            config_directory=str(self.config_dir),
            reader=reader,  # type: ignore[arg-type]
            timeout=timeout,
            top_destinations=top,
        )

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def showq(tmp_path: Path) -> AsyncIterator[ShowqServer]:
    server = ShowqServer(tmp_path)
    yield server
    await server.close()


async def read(cfg: object, cache: object | None = None) -> tuple[bool, Sink, float]:
    sink = Sink()
    started = time.monotonic()
    ok = await read_queue(cfg, sink, LOG, cache=cache)  # type: ignore[arg-type]
    return ok, sink, time.monotonic() - started


# --- showq: a good listing ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_scripted_listing_is_counted_exactly(showq: ShowqServer) -> None:
    now = int(time.time())
    data = listing(now)

    async def send(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for i in range(0, len(data), 7):  # small writes: records cross every boundary
            w.write(data[i : i + 7])
            await w.drain()

    await showq.serve(send)
    ok, sink, _ = await read(showq.cfg(top=1))
    assert ok, sink.failures
    src = {"source": "scripted"}
    assert value(sink, "mail_queue_up", **src) == 1
    assert value(sink, "mail_queue_reader_info", **src, reader="showq") == 1
    for q in POSTFIX_QUEUES:  # all five queues, zero when empty
        assert value(sink, "mail_queue_messages", **src, queue=q) is not None
    assert value(sink, "mail_queue_messages", **src, queue="deferred") == 3
    assert value(sink, "mail_queue_size_bytes", **src, queue="deferred") == 600
    assert value(sink, "mail_queue_messages", **src, queue="hold") == 1
    assert value(sink, "mail_queue_messages", **src, queue="maildrop") == 0
    assert value(sink, "mail_queue_oldest_message_age_seconds", **src, queue="maildrop") == 0
    oldest = value(sink, "mail_queue_oldest_message_age_seconds", **src, queue="deferred")
    assert oldest is not None and 4000 <= oldest <= 4000 + (time.time() - now) + 1
    assert value(sink, "mail_queue_message_age_seconds_bucket", **src, queue="deferred", le="60.0") == 2
    assert value(sink, "mail_queue_message_age_seconds_bucket", **src, queue="deferred", le="+Inf") == 3
    assert value(sink, "mail_queue_message_age_seconds_gcount", **src, queue="deferred") == 3
    reasons = {
        dict(s.labels)["reason"]: s.value for s in sink.samples() if s.name == "mail_queue_deferred_reason_messages"
    }
    assert reasons == {
        "refused_or_timeout": 1,
        "dns": 1,
        "tls": 0,
        "greylist_or_ratelimit": 1,
        "rejected": 0,
        "other": 0,
    }
    dests = {
        dict(s.labels)["domain"]: s.value
        for s in sink.samples()
        if s.name == "mail_queue_deferred_destination_messages"
    }
    assert dests == {"two.test": 2, "other": 1}  # top 1; the third message counts under d@two.test


# --- showq: faults -----------------------------------------------------------------------------------


async def _expect_failure(showq: ShowqServer, reason: str, timeout: float = 1.0) -> Sink:
    ok, sink, took = await read(showq.cfg(timeout=timeout))
    assert not ok
    assert sink.failure is not None and sink.failure.reason == reason, sink.failures
    assert took < timeout + 0.5
    assert value(sink, "mail_queue_up", source="scripted") == 0
    assert value(sink, "mail_queue_reader_info", source="scripted", reader="showq") == 1
    assert value(sink, "mail_queue_read_duration_seconds", source="scripted") is not None
    # no stale or partial counts on a failed read
    assert not {n for n in names(sink) if n.startswith(("mail_queue_messages", "mail_queue_size", "mail_queue_age"))}
    assert "mail_queue_deferred_reason_messages" not in names(sink)
    return sink


@pytest.mark.asyncio
async def test_slow_drip_times_out(showq: ShowqServer) -> None:
    async def drip(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        for i in range(len(LISTING)):
            w.write(LISTING[i : i + 1])
            await w.drain()
            await asyncio.sleep(0.05)

    await showq.serve(drip)
    await _expect_failure(showq, "timeout", timeout=1.0)


@pytest.mark.asyncio
async def test_stall_mid_record_times_out(showq: ShowqServer) -> None:
    async def stall(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(LISTING[: len(ANNOUNCE) + 30])
        await w.drain()
        await asyncio.sleep(30)

    await showq.serve(stall)
    await _expect_failure(showq, "timeout", timeout=0.8)


@pytest.mark.asyncio
@pytest.mark.parametrize("cut", [0, len(ANNOUNCE), len(ANNOUNCE) + 30, len(LISTING) - 1])
async def test_close_mid_read_is_unavailable(showq: ShowqServer, cut: int) -> None:
    async def close_early(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(LISTING[:cut])
        await w.drain()

    await showq.serve(close_early)
    sink = await _expect_failure(showq, "unavailable")
    assert sink.failure is not None and "early" in sink.failure.message


@pytest.mark.asyncio
async def test_reset_mid_read_is_unavailable(showq: ShowqServer) -> None:
    async def reset(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(LISTING[:100])
        await w.drain()
        transport = w.transport
        transport.abort()

    await showq.serve(reset)
    await _expect_failure(showq, "unavailable")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "garbage",
    [
        ANNOUNCE + rec(b"queue_name", b"deferred", b"queue_id", b"X", b"time", b"soon", b"size", b"1", b"sender", b""),
        b"\0\0\0",
        ANNOUNCE + b"recipient\0x\0reason\0y\0\0\0",
    ],
)
async def test_garbage_is_a_parse_failure(showq: ShowqServer, garbage: bytes) -> None:
    async def send(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(garbage)
        await w.drain()
        await asyncio.sleep(5)

    await showq.serve(send)
    await _expect_failure(showq, "parse")


@pytest.mark.asyncio
async def test_missing_socket(showq: ShowqServer) -> None:
    await _expect_failure(showq, "unavailable")


@pytest.mark.asyncio
async def test_failed_read_after_a_good_one_drops_the_counts(showq: ShowqServer) -> None:
    calls = 0

    async def good_then_bad(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal calls
        calls += 1
        w.write(LISTING if calls == 1 else LISTING[:50])
        await w.drain()

    await showq.serve(good_then_bad)
    cache = make_cache()
    ok, first, _ = await read(showq.cfg(), cache)
    assert ok and value(first, "mail_queue_messages", source="scripted", queue="deferred") == 3
    ok, second, _ = await read(showq.cfg(), cache)
    assert not ok
    assert value(second, "mail_queue_messages", source="scripted", queue="deferred") is None
    assert value(second, "mail_queue_up", source="scripted") == 0


@pytest.mark.asyncio
async def test_auto_falls_back_to_postqueue_and_says_so(showq: ShowqServer) -> None:
    # No readable deferred directory and no socket: auto ends at postqueue, which fails here.
    ok, sink, _ = await read(showq.cfg(reader="auto", timeout=5.0))
    assert not ok
    assert value(sink, "mail_queue_reader_info", source="scripted", reader="postqueue") == 1
    assert sink.failure is not None and sink.failure.reason == "command"


@pytest.mark.asyncio
async def test_auto_uses_showq_when_the_spool_is_unreadable(showq: ShowqServer) -> None:
    async def send(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(LISTING)
        await w.drain()

    await showq.serve(send)
    ok, sink, _ = await read(showq.cfg(reader="auto"))
    assert ok, sink.failures
    assert value(sink, "mail_queue_reader_info", source="scripted", reader="showq") == 1


@pytest.mark.asyncio
async def test_spool_reader_without_a_queue(showq: ShowqServer) -> None:
    ok, sink, _ = await read(showq.cfg(reader="spool"))
    assert not ok
    assert sink.failure is not None and sink.failure.reason == "unavailable"
    assert value(sink, "mail_queue_reader_info", source="scripted", reader="spool") == 1


@pytest.mark.asyncio
async def test_cache_may_be_a_plain_dict(showq: ShowqServer) -> None:
    async def send(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(LISTING)
        await w.drain()

    await showq.serve(send)
    holder: dict[str, object] = {}
    ok, _, _ = await read(showq.cfg(), holder)
    assert ok
    cache = holder["queue_cache"]
    assert isinstance(cache, QueueCache) and cache.queue_directory == str(showq.queue_dir)


# --- Exim ----------------------------------------------------------------------------------------------

OLD_IDS = ["1rJ0mK-0004Xy-2B", "1rJ0mL-0004Xz-3C", "1rJ0mM-0004Y0-4D"]  # 16 characters (before 4.97)
NEW_IDS = ["1rJ0mN-000000004Y1-5Eab", "1rJ0mO-000000004Y2-6Fcd"]  # 23 characters (4.97 and later)


def exim_message(input_dir: Path, msg_id: str, arrival: int, frozen: bool = False, body: bytes = b"x\n") -> int:
    input_dir.mkdir(parents=True, exist_ok=True)
    options = "-ident exim\n-received_protocol esmtp\n" + (f"-frozen {arrival + 5}\n" if frozen else "")
    header = (
        f"{msg_id}-H\nDebian-exim 101 103\n<sender@example.test>\n{arrival} 0\n{options}"
        f"XX\n1\nrcpt@example.net\n\n042P Received: from x\n"
    ).encode()
    (input_dir / f"{msg_id}-H").write_bytes(header)
    (input_dir / f"{msg_id}-D").write_bytes(f"{msg_id}-D\n".encode() + body)
    return len(header) + len(msg_id) + 3 + len(body)


@pytest.fixture
def exim_spool(tmp_path: Path) -> tuple[Path, dict[str, int], int]:
    spool = tmp_path / "exim4"
    now = int(time.time())
    sizes: dict[str, int] = {}
    for i, msg_id in enumerate(OLD_IDS):
        sizes[msg_id] = exim_message(spool / "input", msg_id, now - 100 * (i + 1), frozen=(i == 1))
    for i, msg_id in enumerate(NEW_IDS):  # split_spool_directory layout: input/<6th char>/
        sizes[msg_id] = exim_message(spool / "input" / msg_id[5], msg_id, now - 7200 * (i + 1))
    # not messages: a journal, a header being written, a lone -D, a stray file
    (spool / "input" / f"{OLD_IDS[0]}-J").write_text("journal\n")
    (spool / "input" / "hdr.12345").write_text("partial\n")
    (spool / "input" / "1rJ0zz-0009Zz-9Z-D").write_text("orphan body\n")
    (spool / "input" / "README").write_text("nothing\n")
    (spool / "msglog").mkdir()
    return spool, sizes, now


def exim_cfg(spool: Path, **kw: object) -> EximQueue:
    return EximQueue(name="exim", type="exim", spool_directory=str(spool), **kw)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_exim_counts_ids_of_any_length(exim_spool: tuple[Path, dict[str, int], int]) -> None:
    spool, sizes, now = exim_spool
    ok, sink, _ = await read(exim_cfg(spool), make_cache())
    assert ok, sink.failures
    src = {"source": "exim", "queue": "queue"}
    assert value(sink, "mail_queue_messages", **src) == 5
    assert value(sink, "mail_queue_size_bytes", **src) == sum(sizes.values())
    assert value(sink, "mail_queue_frozen_messages", source="exim") == 1
    oldest = value(sink, "mail_queue_oldest_message_age_seconds", **src)
    assert oldest is not None and abs(oldest - (time.time() - (now - 14400))) < 2
    assert value(sink, "mail_queue_message_age_seconds_bucket", **src, le="60.0") == 0
    assert value(sink, "mail_queue_message_age_seconds_bucket", **src, le="900.0") == 3
    assert value(sink, "mail_queue_message_age_seconds_bucket", **src, le="+Inf") == 5
    assert value(sink, "mail_queue_reader_info", source="exim", reader="exim") == 1


@pytest.mark.asyncio
async def test_exim_header_budget(exim_spool: tuple[Path, dict[str, int], int]) -> None:
    spool, sizes, _ = exim_spool
    cache = make_cache()
    ok, sink, _ = await read(exim_cfg(spool, header_time_budget=0.0), cache)
    assert ok
    src = {"source": "exim", "queue": "queue"}
    # the count and bytes are exact; frozen and ages are left out rather than reported incomplete
    assert value(sink, "mail_queue_messages", **src) == 5
    assert value(sink, "mail_queue_size_bytes", **src) == sum(sizes.values())
    assert value(sink, "mail_queue_frozen_messages", source="exim") is None
    assert value(sink, "mail_queue_oldest_message_age_seconds", **src) is None
    assert any("budget" in text for text in sink.details.values())
    ok, sink, _ = await read(exim_cfg(spool), cache)
    assert ok and value(sink, "mail_queue_frozen_messages", source="exim") == 1


@pytest.mark.asyncio
async def test_exim_cache_reads_each_header_once(exim_spool: tuple[Path, dict[str, int], int]) -> None:
    spool, _, now = exim_spool
    cache = make_cache()
    assert (await read(exim_cfg(spool), cache))[0]
    assert cache.exim.headers_read == 5
    assert (await read(exim_cfg(spool), cache))[0]
    assert cache.exim.headers_read == 5
    # Exim rewrites -H by rename when it freezes a message: a new inode is read again
    msg_id = OLD_IDS[0]
    path = spool / "input" / f"{msg_id}-H"
    text = path.read_text().replace("-ident exim\n", f"-ident exim\n-frozen {now}\n")
    tmp = spool / "input" / "hdr.999"
    tmp.write_text(text)
    os.replace(tmp, path)
    (spool / "input" / f"{OLD_IDS[2]}-H").unlink()
    ok, sink, _ = await read(exim_cfg(spool), cache)
    assert ok
    assert cache.exim.headers_read == 6
    assert value(sink, "mail_queue_messages", source="exim", queue="queue") == 4
    assert value(sink, "mail_queue_frozen_messages", source="exim") == 2


@pytest.mark.asyncio
async def test_exim_missing_spool(tmp_path: Path) -> None:
    ok, sink, _ = await read(exim_cfg(tmp_path / "nope"))
    assert not ok and sink.failure is not None and sink.failure.reason == "unavailable"


@pytest.mark.asyncio
async def test_exim_bpc_cross_check(exim_spool: tuple[Path, dict[str, int], int], tmp_path: Path) -> None:
    spool, _, _ = exim_spool
    fake = tmp_path / "exim"
    fake.write_text(f"#!{sys.executable}\nimport sys\nassert sys.argv[1:] == ['-bpc']\nprint(7)\n")
    fake.chmod(0o755)
    ok, sink, _ = await read(exim_cfg(spool, exim_binary=str(fake)))
    assert ok  # a disagreement is a note, not a failure
    assert value(sink, "mail_queue_messages", source="exim", queue="queue") == 5
    assert any("exim -bpc counts 7" in text for text in sink.details.values())


# --- directory and command ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_directory_queue(tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    (maildir / "new").mkdir(parents=True)
    now = time.time()
    for i, size in enumerate((10, 20, 30)):
        f = maildir / "new" / f"msg{i}"
        f.write_bytes(b"x" * size)
        os.utime(f, (now - 1000 * i, now - 1000 * i))
    (maildir / "new" / "subdir").mkdir()
    cfg = DirectoryQueue(name="maildir", type="directory", path=str(maildir), pattern="new/*", queue="new")
    ok, sink, _ = await read(cfg)
    assert ok, sink.failures
    src = {"source": "maildir", "queue": "new"}
    assert value(sink, "mail_queue_messages", **src) == 3
    assert value(sink, "mail_queue_size_bytes", **src) == 60
    oldest = value(sink, "mail_queue_oldest_message_age_seconds", **src)
    assert oldest is not None and abs(oldest - 2000) < 2
    assert value(sink, "mail_queue_reader_info", source="maildir", reader="directory") == 1
    # ** for any depth
    cfg = DirectoryQueue(name="maildir", type="directory", path=str(maildir), pattern="**/msg*")
    ok, sink, _ = await read(cfg)
    assert ok and value(sink, "mail_queue_messages", source="maildir", queue="queue") == 3


@pytest.mark.asyncio
async def test_directory_queue_missing(tmp_path: Path) -> None:
    ok, sink, _ = await read(DirectoryQueue(name="d", type="directory", path=str(tmp_path / "nope")))
    assert not ok and sink.failure is not None and sink.failure.reason == "unavailable"
    assert value(sink, "mail_queue_messages", source="d", queue="queue") is None


def command_cfg(*argv: str, timeout: float = 5.0) -> CommandQueue:
    return CommandQueue(name="cmd", type="command", command=tuple(argv), queue="outbound", timeout=timeout)


@pytest.mark.asyncio
async def test_command_queue() -> None:
    ok, sink, _ = await read(command_cfg(sys.executable, "-c", "print(' 42 ')"))
    assert ok, sink.failures
    assert value(sink, "mail_queue_messages", source="cmd", queue="outbound") == 42
    # only a count is known
    assert value(sink, "mail_queue_size_bytes", source="cmd", queue="outbound") is None
    assert value(sink, "mail_queue_oldest_message_age_seconds", source="cmd", queue="outbound") is None
    assert value(sink, "mail_queue_reader_info", source="cmd", reader="command") == 1


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("print('12 13')", "parse"),
        ("print('many')", "parse"),
        ("print(-1)", "parse"),
        ("print('')", "parse"),
        ("print('x' * 100000)", "parse"),
        ("import sys; sys.stderr.write('boom\\n'); sys.exit(3)", "command"),
    ],
)
async def test_command_queue_failures(code: str, reason: str) -> None:
    ok, sink, _ = await read(command_cfg(sys.executable, "-c", code))
    assert not ok
    assert sink.failure is not None and sink.failure.reason == reason, sink.failures
    assert value(sink, "mail_queue_messages", source="cmd", queue="outbound") is None


@pytest.mark.asyncio
async def test_command_not_found() -> None:
    ok, sink, _ = await read(command_cfg("/nonexistent/qcount"))
    assert not ok and sink.failure is not None and sink.failure.reason == "command"


@pytest.mark.asyncio
async def test_command_timeout_kills_the_process(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    code = f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    ok, sink, took = await read(command_cfg(sys.executable, "-c", code, timeout=0.5))
    assert not ok and sink.failure is not None and sink.failure.reason == "timeout"
    assert took < 1.5
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# --- the registry ---------------------------------------------------------------------------------


def test_every_queue_type_has_exactly_one_reader() -> None:
    types = {typing.get_args(typing.get_type_hints(c)["type"])[0] for c in typing.get_args(QueueConfig)}
    assert set(READERS) == types
