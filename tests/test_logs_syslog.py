"""The syslog receiver: its pure frame parser and framer, and real sockets on 127.0.0.1 (port 0)."""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config import SyslogLog
from exporter.logs.position import PositionStore
from exporter.logs.record import LogRecord, classic_timestamp
from exporter.logs.sources import SOURCES, LogSourceError
from exporter.logs.sources.syslog import Framer, SyslogSource, parse_syslog_frame

NOW = time.mktime((2025, 12, 7, 12, 0, 0, 0, 0, -1))
DEC7 = time.mktime((2025, 12, 7, 8, 0, 1, 0, 0, -1))  # "Dec  7 08:00:01", local time

# --- the frame parser ------------------------------------------------------------------------------

FRAMES = [
    (  # rsyslog / syslog-ng forwarding, RFC 3164
        b"<22>Dec  7 08:00:01 mx1 postfix/smtpd[1234]: connect from unknown[192.0.2.1]\n",
        LogRecord(DEC7, "mx1", "postfix/smtpd", 1234, "connect from unknown[192.0.2.1]"),
    ),
    (  # no PRI
        b"Dec  7 08:00:01 mx1 postfix-out/smtp[7]: 4F2A1B: to=<a@b.test>, status=sent",
        LogRecord(DEC7, "mx1", "postfix-out/smtp", 7, "4F2A1B: to=<a@b.test>, status=sent"),
    ),
    (  # glibc syslog(): no host
        b"<22>Dec  7 08:00:01 postfix/qmgr[99]: 4F2A1B: removed",
        LogRecord(DEC7, "", "postfix/qmgr", 99, "4F2A1B: removed"),
    ),
    (  # RFC 3339 timestamp (rsyslog's high-precision template)
        b"<22>2025-12-07T08:00:01.250000+00:00 mx1 dovecot: imap-login: Login: user=<u>",
        LogRecord(1765094401.25, "mx1", "dovecot", None, "imap-login: Login: user=<u>"),
    ),
    (  # Python's SysLogHandler: no timestamp, no host, NUL-terminated
        b"<14>postfix/smtpd[5]: hello\x00",
        LogRecord(None, "", "postfix/smtpd", 5, "hello"),
    ),
    (  # IPv6 host
        b"<22>Dec  7 08:00:01 2001:db8::1 postfix/smtpd[1]: x: y",
        LogRecord(DEC7, "2001:db8::1", "postfix/smtpd", 1, "x: y"),
    ),
    (  # RFC 5424 with structured data and a BOM (the RFC's example)
        b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 "
        b'[exampleSDID@32473 iut="3" eventSource="Application" eventID="1011"] '
        b"\xef\xbb\xbfAn application event log entry...",
        LogRecord(1065910455.003, "mymachine.example.com", "evntslog", None, "An application event log entry..."),
    ),
    (  # RFC 5424 as rsyslog forwards Postfix
        b"<22>1 2025-12-07T08:00:01.000000+00:00 mx1 postfix/smtpd 1234 - - connect from a[192.0.2.1]",
        LogRecord(1765094401.0, "mx1", "postfix/smtpd", 1234, "connect from a[192.0.2.1]"),
    ),
    (  # RFC 5424, every field NIL, no message
        b"<165>1 - - - - - -",
        LogRecord(None, "", "", None, ""),
    ),
    (  # RFC 5424, escapes in SD-PARAM values, two elements
        b'<165>1 - h app 12 - [a b="x\\"]y" c="\\\\"][d e="f"] msg [not sd]',
        LogRecord(None, "h", "app", 12, "msg [not sd]"),
    ),
]


@pytest.mark.parametrize(("frame", "expected"), FRAMES, ids=range(len(FRAMES)))
def test_parse_syslog_frame(frame: bytes, expected: LogRecord) -> None:
    got = parse_syslog_frame(frame, now=NOW)
    assert got is not None
    assert got.timestamp == pytest.approx(expected.timestamp) if expected.timestamp else got.timestamp is None
    assert (got.host, got.program, got.pid, got.message) == (
        expected.host,
        expected.program,
        expected.pid,
        expected.message,
    )


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\xff\xfe\x00 binary",
        b"<999>Dec  7 08:00:01 mx1 postfix/smtpd[1]: PRI out of range",
        b"<22>1 2025-12-07T08:00:01Z mx1 app",  # header cut short
        b'<22>1 - h a 1 - [sd x="unterminated',
        b"<22>1 - h a 1 - nosd",
        b"<22",
        b"just some text",
    ],
)
def test_parse_syslog_frame_rejects(frame: bytes) -> None:
    assert parse_syslog_frame(frame, now=NOW) is None


_PRINT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20)


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(
    host=_PRINT.filter(lambda s: s != "-"),
    app=_PRINT.filter(lambda s: s != "-"),
    pid=st.none() | st.integers(0, 10**9),
    message=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\0"), max_size=40).map(
        str.strip
    ),
    bom=st.booleans(),
)
def test_rfc5424_round_trip(host: str, app: str, pid: int | None, message: str, bom: bool) -> None:
    frame = (
        f"<13>1 2025-12-07T08:00:01.5Z {host} {app} {'-' if pid is None else pid} - - ".encode()
        + (b"\xef\xbb\xbf" if bom else b"")
        + message.encode()
    )
    assert parse_syslog_frame(frame) == LogRecord(1765094401.5, host, app, pid, message)


# --- the TCP framer ----------------------------------------------------------------------------------


def frames_of(chunks: list[bytes], max_frame: int = 100) -> tuple[list[bytes], Counter[str], Framer]:
    errors: Counter[str] = Counter()
    framer = Framer(max_frame, errors)
    out = []
    for chunk in chunks:
        out += framer.feed(chunk)
    return out, errors, framer


def test_framer_octet_counting_in_any_chunks() -> None:
    stream = b"6 <13>ab11 <13>x: y z\n" + b"120 " + b"x" * 120 + b"3 abc"
    for size in (1, 2, 5, len(stream)):
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        out, errors, framer = frames_of(chunks)
        assert out == [b"<13>ab", b"<13>x: y z\n", b"abc"], size
        assert errors == {"too_long": 1} and framer.mode == "octet" and not framer.pending()


def test_framer_newline_and_nul() -> None:
    stream = b"<13>one\n<13>two\r\n<13>three\x00<13>" + b"y" * 150 + b"\n<13>four\npart"
    for size in (1, 3, len(stream)):
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        out, errors, framer = frames_of(chunks)
        assert out == [b"<13>one", b"<13>two\r", b"<13>three", b"<13>four"], size
        assert errors == {"too_long": 1} and framer.mode == "newline" and framer.pending()


def test_framer_broken_octet_count() -> None:
    out, _, framer = frames_of([b"5 <1>ab", b"x12 <13>"])
    assert out == [b"<1>ab"] and framer.broken
    assert framer.feed(b"3 abc") == []


# --- real sockets --------------------------------------------------------------------------------------


def make(protocol: str = "udp", **kw: object) -> SyslogSource:
    kw.setdefault("listen", "127.0.0.1:0")
    cfg = SyslogLog(name="syslog", type="syslog", protocol=protocol, **kw)  # type: ignore[arg-type]
    src = SOURCES["syslog"](cfg, PositionStore(None))
    assert isinstance(src, SyslogSource)
    return src


@pytest.fixture
async def udp() -> AsyncIterator[SyslogSource]:
    src = make("udp")
    yield src
    await src.close()


@pytest.fixture
async def tcp() -> AsyncIterator[SyslogSource]:
    src = make("tcp")
    yield src
    await src.close()


async def collect(src: SyslogSource, n: int, timeout: float = 5.0) -> list[LogRecord]:
    """Read until ``n`` records have come (or fail after ``timeout``)."""
    got: list[LogRecord] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        got += await src.read(1000)
        if len(got) >= n:
            break
        assert time.monotonic() < deadline, f"got {len(got)} of {n}: {got}"
        await asyncio.sleep(0.01)
    return got


async def settle(src: SyslogSource, check: object = None, timeout: float = 5.0) -> None:
    """Wait until ``check()`` is true (the loop has handled what the kernel holds)."""
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


def send_udp(port: int, *datagrams: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for d in datagrams:
            s.sendto(d, ("127.0.0.1", port))


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """Whether the receiver closed the connection (a FIN, or a reset)."""
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        return True


async def send_tcp(port: int, data: bytes) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def test_building_has_no_side_effects_and_commit_is_a_noop() -> None:
    src = make("tcp", listen="127.0.0.1:5514")
    assert src.port is None and not src.listening
    await src.commit()
    await src.close()


async def test_udp_rfc3164_and_rfc5424(udp: SyslogSource) -> None:
    assert await udp.read(10) == []  # starts listening
    assert udp.port
    send_udp(udp.port, FRAMES[0][0], FRAMES[7][0], b"<14>postfix/pickup[3]: no time\x00")
    before = time.time()
    got = await collect(udp, 3)
    assert got[0] == LogRecord(
        classic_timestamp("Dec", 7, "08:00:01"), "mx1", "postfix/smtpd", 1234, "connect from unknown[192.0.2.1]"
    )
    assert got[1] == LogRecord(1765094401.0, "mx1", "postfix/smtpd", 1234, "connect from a[192.0.2.1]")
    assert got[2].program == "postfix/pickup" and got[2].timestamp is not None
    assert before - 5 <= got[2].timestamp <= time.time()  # the time it was received
    assert not udp.errors


async def test_tcp_octet_counting_and_newline_framing(tcp: SyslogSource) -> None:
    await tcp.read(1)
    assert tcp.port
    rfc5424 = [b"<22>1 - mx1 postfix/qmgr 9 - - A%d: removed" % i for i in range(3)]
    await send_tcp(tcp.port, b"".join(b"%d %s" % (len(m), m) for m in rfc5424))
    await send_tcp(tcp.port, b"".join(b"<22>Dec  7 08:00:01 mx1 postfix/smtpd[1]: line %d\n" % i for i in range(3)))
    got = await collect(tcp, 6)
    messages = sorted(r.message for r in got)
    assert messages == ["A0: removed", "A1: removed", "A2: removed", "line 0", "line 1", "line 2"]
    assert not tcp.errors


async def test_tcp_in_small_pieces(tcp: SyslogSource) -> None:
    await tcp.read(1)
    assert tcp.port
    stream = b"".join(b"%d <13>mx1: piece %d" % (len(b"<13>mx1: piece %d" % i), i) for i in range(20))
    _, writer = await asyncio.open_connection("127.0.0.1", tcp.port)
    for i in range(0, len(stream), 3):
        writer.write(stream[i : i + 3])
        await writer.drain()
        await asyncio.sleep(0)
    writer.close()
    await writer.wait_closed()
    got = await collect(tcp, 20)
    assert [r.message for r in got] == [f"piece {i}" for i in range(20)]


async def test_buffer_limit_drops_and_counts() -> None:
    src = make("tcp", buffer_lines=5)
    try:
        await src.read(1)
        assert src.port
        await send_tcp(src.port, b"".join(b"<13>p: m%d\n" % i for i in range(8)))
        await settle(src, lambda: sum(src.errors.values()) >= 3)
        assert [r.message for r in await src.read(100)] == [f"m{i}" for i in range(5)]
        assert src.errors == {"dropped": 3}
        await send_tcp(src.port, b"<13>p: after\n")
        assert [r.message for r in await collect(src, 1)] == ["after"]
        # read(max_lines) drains at most max_lines, oldest first.
        await send_tcp(src.port, b"<13>p: a\n<13>p: b\n<13>p: c\n")
        await settle(src, lambda: len(src._buffer) == 3)
        assert [r.message for r in await src.read(2)] == ["a", "b"]
        assert [r.message for r in await src.read(2)] == ["c"]
    finally:
        await src.close()


async def test_buffer_byte_bound(udp: SyslogSource) -> None:
    udp.max_buffer_bytes = 1000
    await udp.read(1)
    assert udp.port
    send_udp(udp.port, *[b"<13>p: " + b"z" * 293 for _ in range(5)])
    await settle(udp, lambda: len(udp._buffer) + udp.errors["dropped"] == 5)
    assert len(await udp.read(100)) == 3 and udp.errors == {"dropped": 2}
    send_udp(udp.port, b"<13>p: room again")
    assert [r.message for r in await collect(udp, 1)] == ["room again"]


async def test_oversize_frames_udp_and_tcp() -> None:
    for protocol in ("udp", "tcp"):
        src = make(protocol)
        src.max_frame = 100
        try:
            await src.read(1)
            assert src.port
            big = b"<13>p: " + b"x" * 200
            if protocol == "udp":
                send_udp(src.port, big, b"<13>p: small")
                expected = {"too_long": 1}
            else:
                await send_tcp(src.port, big + b"\n<13>p: small\n")
                await send_tcp(src.port, b"%d %s12 <13>p: small" % (len(big), big))
                expected = {"too_long": 2}
            got = await collect(src, 1 if protocol == "udp" else 2)
            assert [r.message for r in got] == ["small"] * len(got)
            assert src.errors == expected, protocol
        finally:
            await src.close()


async def test_garbage_and_binary(tcp: SyslogSource) -> None:
    await tcp.read(1)
    assert tcp.port
    await send_tcp(tcp.port, b"\xff\xfe\x01binary junk\n\n\r\nnot syslog at all\n<13>p: ok\n")
    got = await collect(tcp, 3)
    assert [(r.program, r.message) for r in got] == [
        ("", "\ufffd\ufffd\x01binary junk"),
        ("", "not syslog at all"),
        ("p", "ok"),
    ]
    assert got[0].timestamp is None
    assert tcp.errors == {"decode": 1}


async def test_client_disconnecting_mid_frame(tcp: SyslogSource) -> None:
    await tcp.read(1)
    assert tcp.port
    await send_tcp(tcp.port, b"11 <13>p: done50 <13>p: cut short")
    await send_tcp(tcp.port, b"<13>p: whole\n<13>p: no newline")
    got = await collect(tcp, 2)
    await settle(tcp, lambda: tcp.errors["truncated"] >= 2)
    assert sorted(r.message for r in got) == ["done", "whole"]
    assert tcp.errors == {"truncated": 2}
    assert await tcp.read(10) == []


async def test_broken_octet_count_closes_the_connection(tcp: SyslogSource) -> None:
    await tcp.read(1)
    assert tcp.port
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp.port)
    writer.write(b"11 <13>p: done12x <13>p: bad")
    await writer.drain()
    assert await closed_by_peer(reader)  # closed by the receiver
    writer.close()
    assert [r.message for r in await collect(tcp, 1)] == ["done"]
    assert tcp.errors == {"framing": 1}


async def test_connection_limit_and_idle_timeout(tcp: SyslogSource) -> None:
    tcp.max_connections = 2
    tcp.idle_timeout = 0.3
    await tcp.read(1)
    assert tcp.port
    conns = [await asyncio.open_connection("127.0.0.1", tcp.port) for _ in range(3)]
    await settle(tcp, lambda: tcp.errors["connections"] == 1)
    # The third was refused; the first two are closed once idle.
    for reader, _ in conns:
        assert await closed_by_peer(reader)
    for _, writer in conns:
        writer.close()
    assert not tcp._connections


async def test_active_connection_is_not_idle(tcp: SyslogSource) -> None:
    tcp.idle_timeout = 0.3
    await tcp.read(1)
    assert tcp.port
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp.port)
    for i in range(6):
        writer.write(b"<13>p: tick %d\n" % i)
        await writer.drain()
        await asyncio.sleep(0.1)
    assert len(await collect(tcp, 6)) == 6
    assert await closed_by_peer(reader)  # and closed once quiet
    writer.close()


async def test_bind_failure_is_reported_and_retried() -> None:
    for protocol, kind in (("tcp", socket.SOCK_STREAM), ("udp", socket.SOCK_DGRAM)):
        holder = socket.socket(socket.AF_INET, kind)
        holder.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            holder.listen()
        port = holder.getsockname()[1]
        src = make(protocol, listen=f"127.0.0.1:{port}")
        try:
            with pytest.raises(LogSourceError) as exc:
                await src.read(10)
            assert exc.value.reason == "bind" and "in use" in exc.value.message
            assert not src.listening
            holder.close()
            assert await src.read(10) == []  # retried at the next read
            assert src.port == port
        finally:
            holder.close()
            await src.close()


async def test_close_stops_listening_and_closes_connections(tcp: SyslogSource) -> None:
    await tcp.read(1)
    port = tcp.port
    assert port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await settle(tcp, lambda: len(tcp._connections) == 1)
    await tcp.close()
    assert await closed_by_peer(reader)
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
async def test_python_sysloghandler_as_client(protocol: str) -> None:
    src = make(protocol)
    try:
        await src.read(1)
        assert src.port
        kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
        handler = logging.handlers.SysLogHandler(("127.0.0.1", src.port), socktype=kind)
        handler.setFormatter(logging.Formatter("%(asctime)s mx1 postfix/smtpd[4321]: %(message)s", "%b %d %H:%M:%S"))
        logger = logging.getLogger(f"test_syslog_{protocol}")
        logger.propagate = False
        logger.addHandler(handler)
        try:
            logger.warning("connect from client.example[192.0.2.7]")
            logger.warning("disconnect from client.example[192.0.2.7]")
        finally:
            logger.removeHandler(handler)
            handler.close()
        got = await collect(src, 2)
        assert [(r.host, r.program, r.pid, r.message) for r in got] == [
            ("mx1", "postfix/smtpd", 4321, "connect from client.example[192.0.2.7]"),
            ("mx1", "postfix/smtpd", 4321, "disconnect from client.example[192.0.2.7]"),
        ]
        assert got[0].timestamp is not None and abs(got[0].timestamp - time.time()) < 60
        assert not src.errors
    finally:
        await src.close()
