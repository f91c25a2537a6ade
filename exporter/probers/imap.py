"""The IMAP prober: greeting, CAPABILITY, STARTTLS, LOGIN, SELECT, LOGOUT.

Why not aioimaplib (the project's IMAP client for round trips): as of 2.0.3 it has
no ``starttls`` method, cannot send an SNI/host name different from the address it
connects to, buffers an unterminated line without bound, and turns a garbage greeting
into an unhandled exception in a background task followed by a wait until its own
timeout, so a probe could not tell ``protocol`` from ``timeout``.  The probe needs
only six commands, so it speaks them itself on asyncio streams, with the same bounded
reads, phase timings, redacted transcript and certificate handling as the SMTP prober
(:mod:`exporter.probers.tlsinfo`).

Metrics written to the sink (``check`` and ``target`` as given, ``protocol="imap"``)::

    mail_imap_up{check,target}                      0 at the start, 1 on full success
    mail_probe_phase_duration_seconds{...,phase}    connect, tls (implicit TLS handshake), greeting,
                                                    capability, starttls, login, select, logout
    mail_tls_cert_expiry_timestamp_seconds{...}     after any handshake, even for a bad certificate
    mail_tls_cert_chain_valid / _hostname_valid / _valid
    mail_tls_version_info{...,version}
    mail_probe_failures_total{...,reason}           all reasons created at 0; +1 on failure

Timeouts: the *caller* wraps the call in ``asyncio.timeout`` and records reason
``timeout`` itself when it expires; the prober lets the cancellation through.  Phase
durations are written as each phase completes, so a probe cut off (for example by a
server that stops answering after LOGIN) still shows how far it got.  Every other
failure is recorded by the prober, exactly once, and it returns ``False``:

* ``refused`` / ``dns``: no connection;
* ``tls``: handshake failure, an invalid certificate with ``verify`` on, STARTTLS
  required but not offered or refused, LOGINDISABLED on a clear-text session;
* ``auth``: LOGIN answered ``NO``;
* ``protocol``: a greeting or response that is not IMAP, ``BYE`` before LOGOUT, a
  connection closed mid-dialog, ``BAD``, SELECT answered ``NO``, an overlong line.

As a backstop the prober ends itself after ``settings.max_duration`` (reason
``timeout``).  The CAPABILITY command is skipped when the greeting already carries a
``[CAPABILITY ...]`` code.  LOGIN is skipped after a ``PREAUTH`` greeting.  The
password is sent as a quoted string (or a literal when it is not plain ASCII) and
appears in the transcript only as ``C: A3 LOGIN <redacted>``.
"""

from __future__ import annotations

__all__ = [
    "ImapLine",
    "ImapProbeSettings",
    "ImapResponse",
    "parse_response_line",
    "probe_imap",
    "read_response",
]

import asyncio
import logging
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from exporter.config import AuthConfig, EndpointConfig, TLSSettings, split_target
from exporter.model import Sink
from exporter.probers.tlsinfo import (
    CLOSE_WAIT,
    Conn,
    ProbeFailure,
    ProbeRun,
    dial_with_leaf_fallback,
    printable,
    read_exactly,
    read_line,
)

#: Most lines accepted in one response (SELECT answers with about ten).
MAX_RESPONSE_LINES = 1000
#: Largest literal accepted inside a response.
MAX_LITERAL = 64 * 1024
#: Untagged lines kept per response (the rest is read and dropped).
_KEEP_UNTAGGED = 64

ImapTLSMode = Literal["starttls", "implicit", "none"]

_TAG_RE = re.compile(rb"^[A-Za-z0-9.]{1,32}$")
_LITERAL_RE = re.compile(rb"\{(\d{1,10})\+?\}\r?\n$")


@dataclass(frozen=True)
class ImapProbeSettings:
    """How to probe one IMAP target."""

    tls: ImapTLSMode = "starttls"
    tls_settings: TLSSettings = field(default_factory=TLSSettings)
    auth: AuthConfig | None = None
    select: str | None = None  # mailbox to SELECT after LOGIN
    #: Backstop only: the caller's timeout is authoritative.
    max_duration: float = 300.0

    @classmethod
    def from_endpoint(cls, cfg: EndpointConfig) -> ImapProbeSettings:
        if cfg.tls == "optional":
            raise ValueError('IMAP endpoints take tls "starttls", "implicit" or "none", not "optional"')
        return cls(tls=cfg.tls, tls_settings=cfg.tls_config, auth=cfg.auth, select=cfg.select)


# --- responses (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImapLine:
    kind: Literal["untagged", "continuation", "tagged"]
    tag: str  # "*", "+" or the command tag
    status: str  # OK, NO, BAD, BYE, PREAUTH, or "" for untagged data such as "CAPABILITY ..."
    text: str


@dataclass(frozen=True, slots=True)
class ImapResponse:
    status: str  # OK, NO or BAD
    text: str
    untagged: tuple[str, ...]

    def summary(self) -> str:
        return printable(f"{self.status} {self.text}".rstrip(), 160)


_STATUSES = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})


def parse_response_line(line: bytes) -> ImapLine | None:
    """Classify one response line (line ending optional); ``None`` when it is not IMAP.  Never raises."""
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    if line == b"+" or line.startswith(b"+ "):
        return ImapLine("continuation", "+", "", _text(line[2:]))
    head, sep, rest = line.partition(b" ")
    if not sep:
        return None
    word, _, tail = rest.partition(b" ")
    status = word.decode("ascii", "replace").upper()
    if head == b"*":
        if status in _STATUSES:
            return ImapLine("untagged", "*", status, _text(tail))
        if not word:
            return None
        return ImapLine("untagged", "*", "", _text(rest))
    if _TAG_RE.match(head) and status in ("OK", "NO", "BAD"):
        return ImapLine("tagged", head.decode("ascii"), status, _text(tail))
    return None


def _text(data: bytes) -> str:
    return data[:2048].decode("utf-8", "replace")


def _capabilities(text: str) -> frozenset[str] | None:
    """Capabilities from ``CAPABILITY a b c`` or a ``[CAPABILITY a b c] ...`` response code."""
    if text.startswith("[CAPABILITY "):
        text = text[1:].partition("]")[0]
    elif not text.upper().startswith("CAPABILITY "):
        return None
    return frozenset(token.upper() for token in text.split()[1:])


async def _read_logical_line(
    reader: asyncio.StreamReader, step: str, trace: Callable[[str], None] | None, budget: list[int]
) -> bytes:
    """One response line with any literals inlined (as ``{n}`` placeholders); bounded."""
    raw = await read_line(reader, step)
    budget[0] -= 1
    if trace is not None:
        trace("S: " + printable(raw))
    while (m := _LITERAL_RE.search(raw)) is not None:
        size = int(m.group(1))
        if size > MAX_LITERAL:
            raise ProbeFailure("protocol", f"{step}: literal of {size} bytes is larger than {MAX_LITERAL}")
        await read_exactly(reader, size, step)
        if budget[0] <= 0:
            raise ProbeFailure("protocol", f"{step}: response longer than {MAX_RESPONSE_LINES} lines")
        more = await read_line(reader, step)
        budget[0] -= 1
        if trace is not None:
            trace("S: " + printable(more))
        raw = raw[: m.start()] + b"{literal}" + more
    return raw


async def read_response(
    reader: asyncio.StreamReader,
    tag: str,
    step: str,
    trace: Callable[[str], None] | None = None,
    *,
    bye_ok: bool = False,
) -> ImapResponse:
    """Read untagged lines up to the tagged completion of ``tag``.

    Raises :class:`~exporter.probers.tlsinfo.ProbeFailure` and nothing else for
    anything the server may send.
    """
    untagged: list[str] = []
    budget = [MAX_RESPONSE_LINES]
    while budget[0] > 0:
        raw = await _read_logical_line(reader, step, trace, budget)
        parsed = parse_response_line(raw)
        if parsed is None:
            raise ProbeFailure("protocol", f"{step}: not an IMAP response: {printable(raw, 60)!r}")
        if parsed.kind == "untagged":
            if parsed.status == "BYE" and not bye_ok:
                raise ProbeFailure("protocol", f"{step}: server said BYE: {printable(parsed.text, 120)}")
            if len(untagged) < _KEEP_UNTAGGED:
                untagged.append(f"{parsed.status} {parsed.text}" if parsed.status else parsed.text)
        elif parsed.kind == "continuation":
            raise ProbeFailure("protocol", f"{step}: unexpected continuation request")
        elif parsed.tag != tag:
            raise ProbeFailure("protocol", f"{step}: response for unknown tag {parsed.tag!r}")
        else:
            return ImapResponse(parsed.status, parsed.text, tuple(untagged))
    raise ProbeFailure("protocol", f"{step}: response longer than {MAX_RESPONSE_LINES} lines")


def _quoted(value: str) -> str | None:
    """``value`` as an IMAP quoted string, or ``None`` when it needs a literal."""
    if not value.isascii() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return None
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- the probe ------------------------------------------------------------------------------------


async def probe_imap(target: str, settings: ImapProbeSettings, sink: Sink, log: logging.Logger, *, check: str) -> bool:
    """Probe one IMAP server; see the module documentation.  Raises ``ValueError`` for a bad target."""
    host, port, name = split_target(target)
    if name is not None and settings.tls_settings.server_name is None:
        settings = replace(settings, tls_settings=replace(settings.tls_settings, server_name=name))
    probe = _ImapProbe(host, port, settings, ProbeRun("imap", "mail_imap_up", target, sink=sink, log=log, check=check))
    return await probe.execute()


@dataclass
class _Session:
    conn: Conn
    capabilities: frozenset[str]
    preauth: bool


class _ImapProbe:
    def __init__(self, host: str, port: int, settings: ImapProbeSettings, run: ProbeRun) -> None:
        self.host = host
        self.port = port
        self.settings = settings
        self.run = run
        self.hostname = settings.tls_settings.server_name or host
        self._tags = 0

    async def execute(self) -> bool:
        return await self.run.drive(self._dialog, self.settings.max_duration)

    def _tag(self) -> str:
        self._tags += 1
        return f"A{self._tags}"

    async def _command(self, conn: Conn, command: str, step: str, *, bye_ok: bool = False) -> ImapResponse:
        tag = self._tag()
        self.run.trace(f"C: {tag} {command}")
        await conn.send(f"{tag} {command}\r\n".encode(), step)
        return await read_response(conn.reader, tag, step, self.run.tracer, bye_ok=bye_ok)

    @staticmethod
    def _expect_ok(response: ImapResponse, step: str, reason_no: str) -> None:
        if response.status == "OK":
            return
        reason = reason_no if response.status == "NO" else "protocol"
        raise ProbeFailure(reason, f"{step}: {response.summary()}")

    async def _dial(self, ctx: ssl.SSLContext | None) -> _Session:
        """Connect, (implicit TLS), greeting, CAPABILITY, (STARTTLS): up to the handshake."""
        run = self.run
        mode = self.settings.tls
        conn = await run.open(self.host, self.port, ctx if mode == "implicit" else None, self.hostname)
        started = time.monotonic()
        budget = [1]
        raw = await _read_logical_line(conn.reader, "greeting", run.tracer, budget)
        greeting = parse_response_line(raw)
        if greeting is None or greeting.kind != "untagged" or greeting.status not in ("OK", "PREAUTH"):
            if greeting is not None and greeting.status == "BYE":
                raise ProbeFailure("protocol", f"greeting: server said BYE: {printable(greeting.text, 120)}")
            raise ProbeFailure("protocol", f"greeting: not an IMAP greeting: {printable(raw, 60)!r}")
        run.phase("greeting", started)
        preauth = greeting.status == "PREAUTH"
        caps = _capabilities(greeting.text)
        if caps is None:
            started = time.monotonic()
            response = await self._command(conn, "CAPABILITY", "capability")
            self._expect_ok(response, "capability", "protocol")
            caps = frozenset()
            for line in response.untagged:
                caps = caps | (_capabilities(line) or frozenset())
            run.phase("capability", started)
        if mode == "starttls" and ctx is not None:
            if preauth:
                raise ProbeFailure("tls", "starttls: server sent PREAUTH, so STARTTLS is impossible")
            if "STARTTLS" not in caps:
                raise ProbeFailure("tls", "starttls: STARTTLS not advertised by the server")
            started = time.monotonic()
            response = await self._command(conn, "STARTTLS", "starttls")
            self._expect_ok(response, "starttls", "tls")
            await conn.start_tls(ctx, self.hostname, "starttls")
            run.phase("starttls", started)
            run.trace(f"-- TLS established ({conn.tls_version})")
        return _Session(conn, caps, preauth)

    async def _dialog(self) -> None:
        settings = self.settings
        if settings.tls == "none":
            session = await self._dial(None)
        else:
            session = await dial_with_leaf_fallback(
                self.run, self._dial, lambda s: s.conn, settings.tls_settings, self.hostname
            )
        conn = session.conn
        if settings.auth is not None and not session.preauth:
            if conn.tls_version is None and "LOGINDISABLED" in session.capabilities:
                raise ProbeFailure("tls", "login: the server disables LOGIN without TLS (LOGINDISABLED)")
            await self._login(conn, settings.auth)
        if settings.select is not None:
            started = time.monotonic()
            mailbox = _quoted(settings.select)
            if mailbox is None:
                response = await self._literal_command(conn, "SELECT", [settings.select], "select")
            else:
                response = await self._command(conn, f"SELECT {mailbox}", "select")
            self._expect_ok(response, "select", "protocol")
            self.run.phase("select", started)
        await self._logout(conn)

    async def _login(self, conn: Conn, auth: AuthConfig) -> None:
        password = auth.password.reveal()
        quoted = _quoted(password)
        self.run.add_scrub(password, quoted or "")
        started = time.monotonic()
        response = await self._literal_command(conn, "LOGIN", [auth.username, password], "login", secret=True)
        self._expect_ok(response, "login", "auth")
        self.run.phase("login", started)

    async def _literal_command(
        self, conn: Conn, verb: str, args: list[str], step: str, *, secret: bool = False
    ) -> ImapResponse:
        """Send ``verb`` with string arguments, as quoted strings or synchronising literals."""
        tag = self._tag()
        shown = f"C: {tag} {verb} <redacted>" if secret else f"C: {tag} {verb} {' '.join(args)}"
        self.run.trace(shown)
        pending = f"{tag} {verb}".encode()
        for arg in args:
            quoted = _quoted(arg)
            if quoted is not None:
                pending += b" " + quoted.encode("ascii")
                continue
            data = arg.encode("utf-8")
            await conn.send(pending + b" {%d}\r\n" % len(data), step)
            raw = await read_line(conn.reader, step)
            parsed = parse_response_line(raw)
            if parsed is None or parsed.kind != "continuation":
                if parsed is not None and parsed.kind == "tagged" and parsed.tag == tag:
                    return ImapResponse(parsed.status, parsed.text, ())
                raise ProbeFailure("protocol", f"{step}: expected a continuation, got {printable(raw, 60)!r}")
            pending = data
        await conn.send(pending + b"\r\n", step)
        return await read_response(conn.reader, tag, step, self.run.tracer)

    async def _logout(self, conn: Conn) -> None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(CLOSE_WAIT):
                await self._command(conn, "LOGOUT", "logout", bye_ok=True)
        except (ProbeFailure, TimeoutError):
            pass  # the server may close right after BYE: the probe has succeeded anyway
        self.run.phase("logout", started)
        await conn.close()
