"""The IMAP prober: greeting, CAPABILITY, STARTTLS, LOGIN, SELECT, LOGOUT.

Why not aioimaplib (the project's IMAP client for round trips): as of 2.0.3 it has
no ``starttls`` method, cannot send an SNI/host name different from the address it
connects to, buffers an unterminated line without bound, and turns a garbage greeting
into an unhandled exception in a background task followed by a wait until its own
timeout, so a probe could not tell ``protocol`` from ``timeout``.  The probe needs
only six commands, so it speaks them itself on asyncio streams, with the same bounded
reads, phase timings, redacted transcript and certificate handling as the SMTP prober
(:mod:`exporter.net.tls`).

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
import ssl
import time
from dataclasses import dataclass, field, replace
from typing import Literal

from exporter.config import AuthConfig, EndpointConfig, TLSSettings, split_target
from exporter.core.model import Sink
from exporter.net.imapwire import (
    ImapLine,
    ImapResponse,
    capabilities,
    parse_response_line,
    read_logical_line,
    read_response,
    sasl_authenticate,
)
from exporter.net.imapwire import quoted as quote_imap
from exporter.net.oauth import oauth_token
from exporter.net.sasl import abort_response, choose_mechanism, initial_response, oauth_error
from exporter.net.tls import (
    CLOSE_WAIT,
    Conn,
    ProbeFailure,
    ProbeRun,
    dial_session,
    printable,
    read_line,
)

ImapTLSMode = Literal["starttls", "implicit", "none"]


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
        raw = await read_logical_line(conn.reader, "greeting", run.tracer, budget)
        greeting = parse_response_line(raw)
        if greeting is None or greeting.kind != "untagged" or greeting.status not in ("OK", "PREAUTH"):
            if greeting is not None and greeting.status == "BYE":
                raise ProbeFailure("protocol", f"greeting: server said BYE: {printable(greeting.text, 120)}")
            raise ProbeFailure("protocol", f"greeting: not an IMAP greeting: {printable(raw, 60)!r}")
        run.phase("greeting", started)
        preauth = greeting.status == "PREAUTH"
        caps = capabilities(greeting.text)
        if caps is None:
            started = time.monotonic()
            response = await self._command(conn, "CAPABILITY", "capability")
            self._expect_ok(response, "capability", "protocol")
            caps = frozenset()
            for line in response.untagged:
                caps = caps | (capabilities(line) or frozenset())
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
        session = await dial_session(
            self.run, self._dial, lambda s: s.conn, settings.tls, settings.tls_settings, self.hostname
        )
        conn = session.conn
        if settings.auth is not None and not session.preauth:
            if conn.tls_version is None and "LOGINDISABLED" in session.capabilities:
                raise ProbeFailure("tls", "login: the server disables LOGIN without TLS (LOGINDISABLED)")
            if settings.auth.oauth2 is not None:
                await self._authenticate(conn, settings.auth, session.capabilities)
            else:
                await self._login(conn, settings.auth)
        if settings.select is not None:
            started = time.monotonic()
            mailbox = quote_imap(settings.select)
            if mailbox is None:
                response = await self._literal_command(conn, "SELECT", [settings.select], "select")
            else:
                response = await self._command(conn, f"SELECT {mailbox}", "select")
            self._expect_ok(response, "select", "protocol")
            self.run.phase("select", started)
        await self._logout(conn)

    async def _authenticate(self, conn: Conn, auth: AuthConfig, caps: frozenset[str]) -> None:
        """AUTHENTICATE XOAUTH2 or OAUTHBEARER with an OAuth2 access token (RFC 7628, RFC 4959 SASL-IR)."""
        run = self.run
        started = time.monotonic()
        if conn.tls_version is not None and self.settings.tls == "starttls":
            # capabilities learnt before STARTTLS are void (RFC 9051 §6.2.1); AUTH= often appears only now
            response = await self._command(conn, "CAPABILITY", "capability")
            self._expect_ok(response, "capability", "protocol")
            caps = frozenset()
            for line in response.untagged:
                caps = caps | (capabilities(line) or frozenset())
        offered = {c[5:] for c in caps if c.startswith("AUTH=")}
        mechanism = choose_mechanism(offered, auth.mechanism, oauth=True)
        if mechanism is None:
            wanted = auth.mechanism if auth.mechanism != "auto" else "XOAUTH2 or OAUTHBEARER"
            shown = " ".join(sorted(offered)) or "none"
            raise ProbeFailure("auth", f"login: the server does not offer {wanted} (offered: {printable(shown, 80)})")
        token = await oauth_token(auth)
        response_b64 = initial_response(mechanism, auth.username, token, self.hostname, self.port)
        run.add_scrub(response_b64, token)
        status, text, challenge = await sasl_authenticate(
            conn.reader,
            lambda data: conn.send(data, "login"),
            self._tag(),
            mechanism,
            response_b64,
            abort_response(mechanism),
            sasl_ir="SASL-IR" in caps,
            step="login",
            trace=run.tracer,
        )
        if status != "OK":
            detail = f"{oauth_error(challenge)}: " if challenge else ""
            reason = "auth" if status == "NO" else "protocol"
            raise ProbeFailure(reason, f"login: {mechanism}: {detail}{status} {printable(text, 120)}")
        run.phase("login", started)

    async def _login(self, conn: Conn, auth: AuthConfig) -> None:
        assert auth.password is not None
        password = auth.password.reveal()
        quoted = quote_imap(password)
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
            quoted = quote_imap(arg)
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
