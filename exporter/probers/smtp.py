"""The SMTP prober: banner, EHLO, STARTTLS, EHLO again, AUTH, QUIT.

The dialog is written by hand on asyncio streams (``StreamWriter.start_tls`` for
STARTTLS) rather than with aiosmtplib, because the probe needs things a mail-sending
client hides: every reply code as it arrives, the multi-line ``220-`` pre-greeting of
Postfix postscreen accepted as the banner, per-phase timings, a bounded line length
and reply size, a redacted transcript, and the leaf certificate of a handshake that
failed verification.

Metrics written to the sink (``check`` and ``target`` as given, ``protocol="smtp"``)::

    mail_smtp_up{check,target}                            0 at the start, 1 on full success
    mail_smtp_reply_code{check,target}                    last reply code seen before QUIT, e.g. 250 or 421
    mail_probe_phase_duration_seconds{...,phase}          connect, tls (implicit TLS handshake),
                                                          banner, ehlo, starttls, ehlo_tls, auth, quit
    mail_tls_cert_expiry_timestamp_seconds{...}           after any handshake, even for a bad certificate
    mail_tls_cert_chain_valid / _hostname_valid / _valid
    mail_tls_version_info{...,version}
    mail_probe_failures_total{...,reason}                 all reasons created at 0; +1 on failure

Timeouts: the *caller* wraps the call in ``asyncio.timeout`` and, when that expires,
records the failure with reason ``timeout`` itself; the prober does not catch the
cancellation.  Because each phase's duration and each reply code is written to the
sink as soon as it is known, a probe cut off by the timeout still shows how far it
got.  Every other failure (refused, dns, tls, auth, protocol, reply_4xx, reply_5xx) is
recorded by the prober, exactly once, and the prober returns ``False``.  As a
backstop the prober also ends itself after ``settings.max_duration`` seconds (reason
``timeout``), so it cannot hang forever even without a caller's timeout.

Rules of the dialog:

* Any 4xx/5xx reply ends the probe at once (``reply_4xx``/``reply_5xx``), except that
  a 5xx answer to AUTH is reason ``auth``.  A line that is not an SMTP reply is
  ``protocol``; so is a connection closed mid-dialog, a line over 8 KiB or a reply of
  more than 64 lines.
* ``tls="starttls"`` (required) fails with ``tls`` when STARTTLS is not advertised;
  ``"optional"`` uses it when advertised and otherwise carries on in clear text;
  ``"implicit"`` starts TLS right after connecting (port 465); ``"none"`` never does.
* AUTH (PLAIN, else LOGIN) is only attempted over TLS unless ``tls="none"``.  When
  credentials are configured but the session is not encrypted (``optional`` and no
  STARTTLS offered), the probe fails with ``tls`` rather than skipping the login.
  AUTH lines appear in the transcript as ``C: AUTH PLAIN <redacted>``; the password
  and its base64 forms are scrubbed from every message and transcript line.
* QUIT is sent at the end; a server that closes the connection right after QUIT (or
  does not answer it within a second) does not fail the probe.
"""

from __future__ import annotations

__all__ = [
    "MAX_REPLY_LINES",
    "Reply",
    "ReplyLine",
    "SmtpProbeSettings",
    "parse_ehlo",
    "parse_reply_line",
    "probe_smtp",
    "read_reply",
]

import asyncio
import base64
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from exporter.config import AuthConfig, EndpointConfig, SmtpSettings, TLSSettings, split_target
from exporter.core.model import Sink
from exporter.net.oauth import oauth_token
from exporter.net.sasl import abort_response, choose_mechanism, initial_response, oauth_error
from exporter.net.tls import (
    CLOSE_WAIT,
    Conn,
    ProbeFailure,
    ProbeRun,
    TlsJudge,
    dial_session,
    printable,
    read_line,
)

#: Most lines accepted in one reply (an EHLO reply has about 10).
MAX_REPLY_LINES = 64
#: Characters of each reply line kept (extension keywords are short).
_KEEP = 512

SmtpTLSMode = Literal["starttls", "optional", "implicit", "none"]


#: Longest AUTH command line with its initial response: SMTP's 512-octet command line, CRLF
#: included (RFC 5321 §4.5.3.1.4).  A longer response (an OAuth2 token always is) follows
#: the server's 334 on a line of its own (RFC 4954 §4); Postfix cuts longer lines at 2048.
MAX_COMMAND_LINE = 510


@dataclass(frozen=True)
class SmtpProbeSettings:
    """How to probe one SMTP target."""

    tls: SmtpTLSMode = "starttls"  # STARTTLS required
    tls_settings: TLSSettings = field(default_factory=TLSSettings)
    helo: str = "mail-continuity-exporter.invalid"
    auth: AuthConfig | None = None
    #: Name to check the certificate against and send as SNI (for example the MX host
    #: name when the target is one of its addresses); overrides ``tls_settings.server_name``.
    server_name: str | None = None
    #: Backstop only: the caller's timeout is authoritative.
    max_duration: float = 300.0
    #: Judges the session right after EHLO/STARTTLS under the domain's transport policy
    #: (the MX check); a failure it returns ends the probe with that failure's reason.
    tls_judge: TlsJudge | None = None

    @classmethod
    def from_endpoint(cls, cfg: EndpointConfig) -> SmtpProbeSettings:
        return cls(tls=cfg.tls, tls_settings=cfg.tls_config, helo=cfg.helo, auth=cfg.auth)

    @classmethod
    def from_domain(cls, smtp: SmtpSettings) -> SmtpProbeSettings:
        return cls(tls=smtp.tls, tls_settings=smtp.tls_config, helo=smtp.helo)


# --- replies (pure) ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplyLine:
    code: int
    final: bool  # "250 x" ends a reply, "250-x" continues it
    text: str


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return self.lines[0] if self.lines else ""

    def summary(self) -> str:
        """``421 4.3.2 service not available`` (the first line, bounded)."""
        return printable(f"{self.code} {self.text}".rstrip(), 160)


def parse_reply_line(line: bytes) -> ReplyLine | None:
    """Parse one reply line (line ending optional); ``None`` when it is not an SMTP reply.

    Accepts ``ddd``, ``ddd text`` and ``ddd-text`` with a first digit of 2 to 5.
    Never raises.
    """
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    head = line[:3]
    if len(head) < 3 or not head.isdigit() or head[0] not in b"2345":
        return None
    sep = line[3:4]
    if sep in (b"", b" "):
        final = True
    elif sep == b"-":
        final = False
    else:
        return None
    text = line[4 : 4 + _KEEP * 4].decode("utf-8", "replace")[:_KEEP]
    return ReplyLine(int(head), final, text)


def parse_ehlo(reply: Reply) -> dict[str, str]:
    """EHLO keywords (upper case) and their parameters, from the lines after the greeting."""
    out: dict[str, str] = {}
    for line in reply.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword.startswith("AUTH="):  # old-style "AUTH=LOGIN PLAIN"
            keyword, params = "AUTH", f"{keyword[5:]} {params}".strip()
            params = " ".join(filter(None, (out.get("AUTH", ""), params)))
        if keyword:
            out[keyword] = params.strip()
    return out


async def read_reply(reader: asyncio.StreamReader, step: str, trace: Callable[[str], None] | None = None) -> Reply:
    """Read one complete (possibly multi-line) reply.

    Raises :class:`~exporter.net.tls.ProbeFailure` and nothing else for
    anything the server may send.
    """
    code = 0
    lines: list[str] = []
    for _ in range(MAX_REPLY_LINES):
        raw = await read_line(reader, step)
        if trace is not None:
            trace("S: " + printable(raw, _KEEP))
        parsed = parse_reply_line(raw)
        if parsed is None:
            raise ProbeFailure("protocol", f"{step}: not an SMTP reply: {printable(raw, 60)!r}")
        if code and parsed.code != code:
            raise ProbeFailure("protocol", f"{step}: reply code changed from {code} to {parsed.code} mid-reply")
        code = parsed.code
        lines.append(parsed.text)
        if parsed.final:
            return Reply(code, tuple(lines))
    raise ProbeFailure("protocol", f"{step}: reply longer than {MAX_REPLY_LINES} lines")


# --- the probe ------------------------------------------------------------------------------------


async def probe_smtp(target: str, settings: SmtpProbeSettings, sink: Sink, log: logging.Logger, *, check: str) -> bool:
    """Probe one SMTP server; see the module documentation.  Raises ``ValueError`` for a bad target."""
    host, port, name = split_target(target)
    if name is not None and settings.server_name is None and settings.tls_settings.server_name is None:
        settings = replace(settings, server_name=name)
    probe = _SmtpProbe(host, port, settings, ProbeRun("smtp", "mail_smtp_up", target, sink=sink, log=log, check=check))
    return await probe.execute()


@dataclass
class _Session:
    conn: Conn
    ehlo: dict[str, str]


class _SmtpProbe:
    def __init__(self, host: str, port: int, settings: SmtpProbeSettings, run: ProbeRun) -> None:
        self.host = host
        self.port = port
        self.settings = settings
        self.run = run
        self.hostname = settings.server_name or settings.tls_settings.server_name or host

    async def execute(self) -> bool:
        return await self.run.drive(self._dialog, self.settings.max_duration)

    # helpers ---------------------------------------------------------------------------------
    def _code(self, reply: Reply) -> None:
        self.run.sink.gauge("mail_smtp_reply_code", reply.code, check=self.run.check, target=self.run.target)

    async def _reply(self, conn: Conn, step: str) -> Reply:
        reply = await read_reply(conn.reader, step, self.run.tracer)
        self._code(reply)
        return reply

    async def _command(self, conn: Conn, line: str, step: str, *, shown: str | None = None) -> Reply:
        if "\r" in line or "\n" in line:
            raise ValueError(f"{step}: a command must not contain a line break (check the helo setting)")
        self.run.trace("C: " + (shown if shown is not None else line))
        await conn.send(line.encode("utf-8") + b"\r\n", step)
        return await self._reply(conn, step)

    @staticmethod
    def _expect(reply: Reply, step: str, *codes: int, reason_5xx: str = "reply_5xx") -> None:
        if reply.code in codes:
            return
        if 400 <= reply.code < 500:
            reason = "reply_4xx"
        elif reply.code >= 500:
            reason = reason_5xx
        else:
            reason = "protocol"
        raise ProbeFailure(reason, f"{step}: {reply.summary()}")

    async def _ehlo(self, conn: Conn, step: str) -> dict[str, str]:
        started = time.monotonic()
        reply = await self._command(conn, f"EHLO {self.settings.helo}", step)
        self._expect(reply, step, 250)
        self.run.phase(step, started)
        return parse_ehlo(reply)

    # the dialog ------------------------------------------------------------------------------
    async def _dial(self, ctx: ssl.SSLContext | None) -> _Session:
        """Connect, (implicit TLS), banner, EHLO, (STARTTLS): up to and including the handshake."""
        run = self.run
        mode = self.settings.tls
        conn = await run.open(self.host, self.port, ctx if mode == "implicit" else None, self.hostname)
        started = time.monotonic()
        banner = await self._reply(conn, "banner")
        self._expect(banner, "banner", 220)
        run.phase("banner", started)
        ehlo = await self._ehlo(conn, "ehlo")
        if mode in ("starttls", "optional") and ctx is not None:
            if "STARTTLS" in ehlo:
                started = time.monotonic()
                reply = await self._command(conn, "STARTTLS", "starttls")
                self._expect(reply, "starttls", 220)
                await conn.start_tls(ctx, self.hostname, "starttls")
                run.phase("starttls", started)
                run.trace(f"-- TLS established ({conn.tls_version})")
            elif mode == "starttls":
                raise ProbeFailure("tls", "starttls: STARTTLS not advertised by the server")
        return _Session(conn, ehlo)

    async def _dialog(self) -> None:
        settings = self.settings
        session = await dial_session(
            self.run, self._dial, lambda s: s.conn, settings.tls, settings.tls_settings, self.hostname
        )
        conn = session.conn
        if settings.tls_judge is not None:
            verdict = settings.tls_judge(self.run.tls_report if conn.tls_version else None, conn.peer_chain)
            if verdict is not None:
                raise ProbeFailure(verdict.reason, verdict.message)
        if conn.tls_version is not None and settings.tls != "implicit":
            session.ehlo = await self._ehlo(conn, "ehlo_tls")
        if settings.auth is not None:
            if conn.tls_version is None and settings.tls != "none":
                raise ProbeFailure("tls", "auth: not sending credentials without TLS (STARTTLS not offered)")
            await self._auth(conn, session.ehlo, settings.auth)
        await self._quit(conn)

    async def _auth(self, conn: Conn, ehlo: dict[str, str], auth: AuthConfig) -> None:
        run = self.run
        if "AUTH" not in ehlo:
            raise ProbeFailure("auth", "auth: the server does not advertise AUTH")
        offered = set(ehlo["AUTH"].upper().split())
        mechanism = choose_mechanism(offered, auth.mechanism, auth.oauth2 is not None)
        if mechanism is None:
            wanted = auth.mechanism if auth.mechanism != "auto" else "a supported mechanism"
            raise ProbeFailure(
                "auth", f"auth: the server does not offer {wanted} (offered: {printable(ehlo['AUTH'], 80)})"
            )
        started = time.monotonic()
        if auth.oauth2 is not None:
            token = await oauth_token(auth)
            response = initial_response(mechanism, auth.username, token, self.hostname, self.port)
            run.add_scrub(response, token)
            line = f"AUTH {mechanism} {response}"
            if len(line) <= MAX_COMMAND_LINE:
                reply = await self._command(conn, line, "auth", shown=f"AUTH {mechanism} <redacted>")
            else:  # too long for an SMTP command line: the response follows the 334 (RFC 4954 §4)
                reply = await self._command(conn, f"AUTH {mechanism}", "auth")
                if reply.code == 334:
                    reply = await self._command(conn, response, "auth", shown="<redacted>")
            if reply.code == 334:  # the server's error challenge (RFC 7628 §3.2.2): answer it to get the failure
                refused = oauth_error(reply.lines[0] if reply.lines else "")
                reply = await self._command(conn, abort_response(mechanism), "auth", shown="<abort>")
                if reply.code != 235:
                    raise ProbeFailure("auth", f"auth: {mechanism}: {refused}: {reply.summary()}")
            self._expect(reply, "auth", 235, reason_5xx="auth")
            run.phase("auth", started)
            return
        assert auth.password is not None
        user = auth.username.encode("utf-8")
        password = auth.password.reveal().encode("utf-8")
        plain = base64.b64encode(b"\0" + user + b"\0" + password).decode("ascii")
        b64_user = base64.b64encode(user).decode("ascii")
        b64_password = base64.b64encode(password).decode("ascii")
        run.add_scrub(plain, b64_password, auth.password.reveal())
        if mechanism == "PLAIN":
            reply = await self._command(conn, f"AUTH PLAIN {plain}", "auth", shown="AUTH PLAIN <redacted>")
            if reply.code == 334:  # a server that wants the response on its own line
                reply = await self._command(conn, plain, "auth", shown="<redacted>")
        else:
            reply = await self._command(conn, "AUTH LOGIN", "auth")
            if reply.code == 334:
                reply = await self._command(conn, b64_user, "auth", shown="<redacted>")
            if reply.code == 334:
                reply = await self._command(conn, b64_password, "auth", shown="<redacted>")
        self._expect(reply, "auth", 235, reason_5xx="auth")
        run.phase("auth", started)

    async def _quit(self, conn: Conn) -> None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(CLOSE_WAIT):
                self.run.trace("C: QUIT")
                await conn.send(b"QUIT\r\n", "quit")
                await read_reply(conn.reader, "quit", self.run.tracer)  # its code is not recorded
        except (ProbeFailure, TimeoutError):
            pass  # the server may close right after QUIT: the probe has succeeded anyway
        self.run.phase("quit", started)
        await conn.close()
