"""The ``syslog`` log source: a syslog receiver, for containers where Postfix logs to a forwarder.

**Listening.**  On ``listen`` (default ``127.0.0.1:5514``: loopback only, an unprivileged
port) over ``protocol`` ``udp`` or ``tcp``.  The socket is opened by the first
:meth:`SyslogSource.read`, not when the source is built: building a check has no side
effects (a configuration reload may build one and discard it).  From then on it keeps
receiving between reads, into a buffer of at most ``buffer_lines`` records; ``read``
drains the buffer, oldest first.  When the buffer is full, new messages are dropped and
counted (``mail_log_read_errors_total{reason="dropped"}``); so are messages beyond
:data:`MAX_BUFFER_BYTES` in all, which bounds the memory whatever the messages' size.  A failure to bind (address
in use, permission) fails the read with reason ``bind``; the next read tries again.
``close`` stops listening and closes every connection.

**Messages** (:func:`parse_syslog_frame`, pure):

- RFC 3164, ``<PRI>Mmm dd hh:mm:ss host tag[pid]: msg`` as rsyslog and syslog-ng forward
  it, with an RFC 3339 timestamp too, without ``<PRI>``, without the host (glibc's
  ``syslog()`` format: ``<PRI>Mmm dd hh:mm:ss tag[pid]: msg``) and without the timestamp
  (``<PRI>tag[pid]: msg``, Python's ``SysLogHandler``).  The timestamp and tag are read by
  :func:`~exporter.logs.record.parse_line`, the same code as for log files;
- RFC 5424, ``<PRI>1 TIMESTAMP HOST APP-NAME PROCID MSGID [SD] MSG``, with ``-`` for an
  absent field, structured data skipped (escapes included), and a UTF-8 BOM removed.

A message that is neither is kept as a record with an empty program (counted by the
check as not understood), like an unreadable line of a file.  A message without a
timestamp gets the time it was received.  Bytes that are not UTF-8 are replaced
(``reason="decode"``).

**Framing.**  UDP: one message per datagram (RFC 5426).  TCP: per connection, from its
first byte, either octet counting (RFC 6587 ``LEN SP MSG``; a first byte that is a digit)
or non-transparent framing (messages ended by LF or NUL; anything else).  A frame longer
than :data:`MAX_FRAME` bytes is skipped (``reason="too_long"``); a broken octet count
closes the connection (``reason="framing"``); a connection closed in the middle of a frame
loses that frame (``reason="truncated"``).  At most :data:`MAX_CONNECTIONS` TCP connections
are served at once (more are refused: ``reason="connections"``); one idle for
:data:`IDLE_TIMEOUT` seconds is closed, and TCP keepalive finds dead peers sooner.

**Position.**  None: a receiver cannot ask a sender to send again, so ``commit`` does
nothing and nothing is saved.  Messages still in the buffer when the exporter stops (at
most one ``interval`` of traffic) are lost; so are messages sent while it is down, unless
the sender queues them (rsyslog's action queue over TCP does).
"""

from __future__ import annotations

__all__ = [
    "IDLE_TIMEOUT",
    "KEEPALIVE_IDLE",
    "MAX_BUFFER_BYTES",
    "MAX_CONNECTIONS",
    "MAX_FRAME",
    "Framer",
    "SyslogSource",
    "parse_syslog_frame",
]

import asyncio
import dataclasses
import re
import socket
import time
from collections import Counter, deque
from typing import Literal

from exporter.config import SyslogLog
from exporter.logs.position import PositionStore
from exporter.logs.record import LogRecord, parse_line
from exporter.logs.sources import SOURCES, LogSourceError

#: Longest message accepted (bytes of one frame); longer ones are skipped and counted.
MAX_FRAME = 64 * 1024
#: TCP connections served at once; more are refused and counted.
MAX_CONNECTIONS = 256
#: Seconds after which a TCP connection that sent nothing is closed.  Long, because a
#: forwarder whose idle connection was closed may lose its next message (rsyslog writes
#: it into the closed socket); dead peers are found sooner by TCP keepalive.
IDLE_TIMEOUT = 3600.0
#: Seconds of silence before TCP keepalive probes a connection (where the system allows).
KEEPALIVE_IDLE = 300
#: Bytes of messages held in the buffer at most (besides ``buffer_lines``); beyond, dropped.
MAX_BUFFER_BYTES = 64 << 20
#: Receive buffer asked of the kernel for UDP (best effort), so that bursts are not dropped.
_UDP_RCVBUF = 4 << 20

_PRI = re.compile(rb"<(\d{1,3})>")
_BOM = b"\xef\xbb\xbf"
#: The timestamps parse_line reads, at the start of an RFC 3164 message.
_TIMESTAMP = re.compile(
    r"(?:[A-Z][a-z]{2} {1,2}\d{1,2} \d\d:\d\d:\d\d"
    r"|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:?\d\d)?) "
)
#: A syslog tag ending a header: ``prog[pid]: `` or ``prog: ``.
_TAG = re.compile(r"(?P<prog>[^\s\[:]+)(?:\[(?P<pid>\d{1,10})\])?: (?P<msg>.*)$", re.DOTALL)
_TRIM = b"\r\n\0"


# --- one message ----------------------------------------------------------------------------------


def parse_syslog_frame(data: bytes, now: float | None = None) -> LogRecord | None:
    """One syslog message (without framing) as a record, or None when it is not one.

    Pure.  ``now`` is the current time for RFC 3164 timestamps, which have no year.
    A message without a timestamp gets ``timestamp=None``.
    """
    data = data.strip(_TRIM)
    pri = _PRI.match(data)
    if pri is not None and int(pri.group(1)) <= 191:
        body = data[pri.end() :]
        if body.startswith(b"1 "):
            return _rfc5424(body[2:], now)
    elif data.startswith(b"<"):
        return None
    else:
        body = data
    return _rfc3164(body.decode("utf-8", "replace"), now)


def _rfc3164(text: str, now: float | None) -> LogRecord | None:
    ts = _TIMESTAMP.match(text)
    if ts is None:
        tag = _TAG.match(text)  # "<PRI>tag[pid]: msg": no timestamp, no host
        if tag is None:
            return None
        pid = tag.group("pid")
        return LogRecord(None, "", tag.group("prog"), int(pid) if pid else None, tag.group("msg"))
    rest = text[ts.end() :]
    if _TAG.match(rest):  # "Mmm dd hh:mm:ss tag[pid]: msg": no host (a host never ends in ':')
        rec = parse_line(f"{ts.group(0)}- {rest}", now)
        return dataclasses.replace(rec, host="") if rec is not None else None
    return parse_line(text, now)


def _rfc5424(body: bytes, now: float | None) -> LogRecord | None:
    parts = body.split(b" ", 5)
    if len(parts) < 6:
        return None
    stamp, host, app, procid = (parts[i].decode("utf-8", "replace") for i in range(4))
    rest = parts[5]  # parts[4] is the MSGID, not kept
    end = _skip_structured_data(rest)
    if end is None:
        return None
    if end == len(rest):
        message = b""
    elif rest[end : end + 1] == b" ":
        message = rest[end + 1 :]
    else:
        return None
    if message.startswith(_BOM):
        message = message[len(_BOM) :]
    timestamp = None
    if stamp != "-":
        rec = parse_line(f"{stamp} - t: -", now)
        timestamp = rec.timestamp if rec is not None else None
    return LogRecord(
        timestamp,
        "" if host == "-" else host,
        "" if app == "-" else app,
        int(procid) if procid.isdigit() and len(procid) <= 10 else None,
        message.decode("utf-8", "replace"),
    )


def _skip_structured_data(data: bytes) -> int | None:
    """The index just after RFC 5424 STRUCTURED-DATA at the start of ``data``, or None."""
    if data.startswith(b"-"):
        return 1
    i, n = 0, len(data)
    if not data.startswith(b"["):
        return None
    while i < n and data[i] == 0x5B:  # "["
        i += 1
        quoted = False
        while i < n:
            c = data[i]
            if quoted:
                if c == 0x5C:  # "\": escapes the next byte
                    i += 2
                    continue
                if c == 0x22:  # '"'
                    quoted = False
            elif c == 0x22:
                quoted = True
            elif c == 0x5D:  # "]"
                break
            i += 1
        if i >= n:
            return None  # an unterminated element
        i += 1
    return i


# --- TCP framing ------------------------------------------------------------------------------------


class Framer:
    """Splits one TCP stream into messages: octet counting or LF/NUL-terminated, per connection.

    Pure: the caller feeds the bytes as they arrive and gets the complete frames;
    ``errors`` counts ``too_long`` frames (skipped).  After :attr:`broken` is set (an octet
    count that cannot be read) the stream cannot be followed any more: close it.  Holds
    at most ``max_frame`` bytes between calls, and copies each byte a bounded number of
    times however the stream is cut.
    """

    def __init__(self, max_frame: int, errors: Counter[str]) -> None:
        self.max_frame = max_frame
        self.errors = errors
        self.mode: Literal["octet", "newline"] | None = None
        self.broken = False
        self._buf = bytearray()  # bytes received, not yet part of a frame
        self._need: int | None = None  # octet mode: length of the frame being read
        self._skip = 0  # octet mode: bytes still to drop of a frame too long
        self._skipping_line = False  # newline mode: inside a line too long

    def pending(self) -> bool:
        """Whether a frame was started and not finished (at the end of the stream: lost)."""
        started = bool(self._buf.strip(b"\r\n\0"))
        return started or self._need is not None or self._skip > 0 or self._skipping_line

    def feed(self, data: bytes) -> list[bytes]:
        if self.broken:
            return []
        if self.mode is None:
            head = data.lstrip(b"\r\n\0 ")
            if not head:
                return []
            self.mode = "octet" if head[:1].isdigit() else "newline"
            data = head
        if self.mode == "octet":
            return self._octets(data)
        return self._lines(data)

    def _octets(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        buf = self._buf
        buf += data
        pos, end = 0, len(buf)
        while True:
            if self._skip:
                dropped = min(self._skip, end - pos)
                self._skip -= dropped
                pos += dropped
                if self._skip:
                    break
            if self._need is None:
                while pos < end and buf[pos] in b"\r\n":  # some senders end frames with LF too
                    pos += 1
                space = buf.find(b" ", pos, pos + 12)
                if space < 0:
                    rest = bytes(buf[pos:])
                    if len(rest) > 11 or (rest and not rest.isdigit()):
                        self.broken = True
                        pos = end
                    break
                length = bytes(buf[pos:space])
                if not length.isdigit() or length.startswith(b"0"):
                    self.broken = True
                    pos = end
                    break
                pos = space + 1
                size = int(length)
                if size > self.max_frame:
                    self.errors["too_long"] += 1
                    self._skip = size
                    continue
                self._need = size
            if end - pos < self._need:
                break
            out.append(bytes(buf[pos : pos + self._need]))
            pos += self._need
            self._need = None
        del buf[:pos]
        return out

    def _lines(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        start = 0
        while True:
            stop = _delimiter(data, start)
            if stop < 0:
                break
            if self._skipping_line:
                self._skipping_line = False
            elif len(self._buf) + stop - start > self.max_frame:
                self.errors["too_long"] += 1
            else:
                out.append(bytes(self._buf + data[start:stop]) if self._buf else data[start:stop])
            self._buf.clear()
            start = stop + 1
        if not self._skipping_line:
            self._buf += data[start:]
            if len(self._buf) > self.max_frame:
                self.errors["too_long"] += 1
                self._skipping_line = True
                self._buf.clear()
        return out


def _delimiter(data: bytes, start: int) -> int:
    """The index of the first LF or NUL at or after ``start``, or -1."""
    lf = data.find(b"\n", start)
    nul = data.find(b"\0", start, lf if lf >= 0 else len(data))
    return nul if nul >= 0 else lf


# --- the receiver -----------------------------------------------------------------------------------


def _listen_address(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (port 0: any free port, for tests).  Raises ValueError."""
    if listen.startswith("["):
        host, sep, port = listen[1:].partition("]:")
    else:
        host, sep, port = listen.rpartition(":")
        if ":" in host:
            raise ValueError(listen)
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(listen)
    return host, int(port)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, source: SyslogSource) -> None:
        self.source = source

    def datagram_received(self, data: bytes, addr: object) -> None:
        if len(data) > self.source.max_frame:
            self.source.errors["too_long"] += 1
            return
        self.source._message(data, time.time())


class _Tcp(asyncio.Protocol):
    def __init__(self, source: SyslogSource) -> None:
        self.source = source
        self.framer = Framer(source.max_frame, source.errors)
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if len(self.source._connections) >= self.source.max_connections:
            self.source.errors["connections"] += 1
            transport.abort()
            return
        self.transport = transport
        self.source._connections.add(self)
        sock = transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if hasattr(socket, "TCP_KEEPIDLE"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
        except (OSError, AttributeError):
            pass  # the idle timeout still closes it
        self._timer = self._loop.call_later(self.source.idle_timeout, self._check_idle)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        self._last = self._loop.time()
        now = time.time()
        for frame in self.framer.feed(data):
            self.source._message(frame, now)
        if self.framer.broken:
            self.source.errors["framing"] += 1
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return
        self.source._connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if not self.framer.broken and self.framer.pending():
            self.source.errors["truncated"] += 1
        self.transport = None

    def _check_idle(self) -> None:
        if self.transport is None:
            return
        idle = self._loop.time() - self._last
        if idle >= self.source.idle_timeout:
            self.transport.close()
        else:
            self._timer = self._loop.call_later(self.source.idle_timeout - idle, self._check_idle)


@SOURCES.register("syslog")
class SyslogSource:
    """A syslog receiver that buffers what it receives between reads."""

    #: Bounds, as attributes so that a test can lower them before the first read.
    max_frame = MAX_FRAME
    max_connections = MAX_CONNECTIONS
    idle_timeout = IDLE_TIMEOUT
    max_buffer_bytes = MAX_BUFFER_BYTES

    def __init__(self, cfg: SyslogLog, positions: PositionStore) -> None:
        self.cfg = cfg
        self.errors: Counter[str] = Counter()
        #: The port actually bound (useful with ``listen: host:0``); None until listening.
        self.port: int | None = None
        self._buffer: deque[LogRecord] = deque()
        self._buffered = 0  # characters of the messages in the buffer
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[_Tcp] = set()
        self._lock = asyncio.Lock()

    @property
    def listening(self) -> bool:
        return self._udp is not None or self._server is not None

    # --- the LogSource protocol -----------------------------------------------------------------

    async def read(self, max_lines: int) -> list[LogRecord]:
        async with self._lock:
            if not self.listening:
                await self._listen()
            buffer = self._buffer
            out = [buffer.popleft() for _ in range(min(max_lines, len(buffer)))]
            self._buffered = max(0, self._buffered - sum(len(rec.message) for rec in out)) if buffer else 0
            return out

    async def commit(self) -> None:
        """Nothing to save: a receiver has no position (see the module's docstring)."""

    async def close(self) -> None:
        async with self._lock:
            if self._udp is not None:
                self._udp.close()
                self._udp = None
            if self._server is not None:
                self._server.close()
                for conn in list(self._connections):
                    if conn.transport is not None:
                        conn.transport.abort()
                await self._server.wait_closed()
                self._server = None
            self._connections.clear()
            self.port = None

    # --- receiving ---------------------------------------------------------------------------------

    async def _listen(self) -> None:
        listen, protocol = self.cfg.listen, self.cfg.protocol
        try:
            host, port = _listen_address(listen)
        except ValueError:
            raise LogSourceError("bind", f"listen: expected host:port, got {listen!r}") from None
        loop = asyncio.get_running_loop()
        try:
            if protocol == "udp":
                transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(host, port))
                sock = transport.get_extra_info("socket")
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _UDP_RCVBUF)
                except OSError:
                    pass  # the kernel's limit stays: bursts beyond it are lost
                self._udp = transport
                self.port = int(transport.get_extra_info("sockname")[1])
            else:
                self._server = await loop.create_server(lambda: _Tcp(self), host, port)
                self.port = int(self._server.sockets[0].getsockname()[1])
        except OSError as exc:
            why = exc.strerror or str(exc) or type(exc).__name__
            raise LogSourceError("bind", f"cannot listen on {listen} ({protocol}): {why}") from None

    def _message(self, frame: bytes, now: float) -> None:
        """One message received: into the buffer, unless it is empty or the buffer full."""
        if not frame.strip(b"\r\n\0 \t"):
            return
        if len(self._buffer) >= self.cfg.buffer_lines or self._buffered + len(frame) > self.max_buffer_bytes:
            self.errors["dropped"] += 1
            return
        try:
            frame.decode("utf-8")
        except UnicodeDecodeError:
            self.errors["decode"] += 1
        rec = parse_syslog_frame(frame, now)
        if rec is None:
            rec = LogRecord(None, "", "", None, frame.strip(_TRIM).decode("utf-8", "replace"))
        elif rec.timestamp is None:
            rec = dataclasses.replace(rec, timestamp=now)
        self._buffer.append(rec)
        self._buffered += len(rec.message)
