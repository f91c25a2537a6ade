"""The IMAP replication canary, and the small IMAP client it needs.

APPEND a small message with a unique token to the primary mailbox, then look for the
token on the replica every ``poll_interval`` until it appears or the timeout passes.
Lag = time seen on the replica - time the primary acknowledged the APPEND.  The canary
is deleted from the primary afterwards (``UID STORE \\Deleted`` and ``UID EXPUNGE`` of
that message only, when the server has UIDPLUS); replication removes the replica's copy.
"""

from __future__ import annotations

__all__ = ["CANARY_GRACE", "CANARY_HEADER", "ImapSession", "canary_message", "measure_canary", "tls_context"]

import asyncio
import contextlib
import logging
import re
import secrets
import ssl
import time
from email.utils import formatdate

from exporter.config import ImapCanaryReplica, ImapEndpoint, TLSSettings, split_address
from exporter.continuity.sources.common import SourceError
from exporter.net.imapwire import ImapResponse, parse_response_line, read_response, sasl_authenticate
from exporter.net.oauth import oauth_token
from exporter.net.sasl import abort_response, choose_mechanism, initial_response, oauth_error
from exporter.net.tls import LINE_LIMIT, ProbeFailure, client_context, read_line

#: The header that carries the canary token.
CANARY_HEADER = "X-Mail-Continuity-Canary"
#: Seconds a canary check may run beyond its ``timeout``: two logins, the APPEND and the
#: cleanup (at most 5 s) come on top of the wait for the replica.
CANARY_GRACE = 15.0


def _quoted(value: str) -> str:
    if not value.isascii() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise SourceError("config", "canary user names, passwords and folders must be printable ASCII")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_APPENDUID_RE = re.compile(r"\[APPENDUID \d+ (\d+)\]", re.IGNORECASE)
_SEARCH_RE = re.compile(r"^SEARCH(?: (.*))?$", re.IGNORECASE)


def tls_context(settings: TLSSettings) -> ssl.SSLContext:
    """A client context that checks the chain *and* the host name (credentials go over it)."""
    return client_context(settings, verify=settings.verifies, check_hostname=True)


class ImapSession:
    """One logged-in IMAP connection: just what the canary needs (LOGIN, APPEND, SELECT, SEARCH)."""

    def __init__(self, endpoint: ImapEndpoint, role: str) -> None:
        self.endpoint = endpoint
        self.role = role
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.capabilities: frozenset[str] = frozenset()
        self._tags = 0

    async def __aenter__(self) -> ImapSession:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _fail(self, reason: str, message: str) -> SourceError:
        return SourceError(reason, f"{self.role} {self.endpoint.address}: {message}")

    async def connect(self) -> None:
        ep = self.endpoint
        host, port = split_address(ep.address)
        hostname = ep.tls_config.server_name or host
        try:
            ctx = tls_context(ep.tls_config) if ep.tls != "none" else None
            if ep.tls == "implicit":
                self.reader, self.writer = await asyncio.open_connection(
                    host, port, ssl=ctx, server_hostname=hostname, limit=LINE_LIMIT
                )
            else:
                self.reader, self.writer = await asyncio.open_connection(host, port, limit=LINE_LIMIT)
            greeting = parse_response_line(await read_line(self.reader, "greeting"))
            if greeting is None or greeting.status not in ("OK", "PREAUTH"):
                raise self._fail("protocol", "not an IMAP greeting")
            if ep.tls == "starttls":
                resp = await self.command("STARTTLS")
                if resp.status != "OK":
                    raise self._fail("tls", f"STARTTLS refused: {resp.summary()}")
                assert self.writer is not None
                await self.writer.start_tls(ctx, server_hostname=hostname)  # type: ignore[arg-type]
            if greeting.status != "PREAUTH" and ep.oauth2 is not None:
                await self._authenticate(hostname, port)
            elif greeting.status != "PREAUTH":
                assert ep.password is not None
                resp = await self.command(
                    f"LOGIN {_quoted(ep.username)} {_quoted(ep.password.reveal())}", shown="LOGIN <redacted>"
                )
                if resp.status != "OK":
                    raise self._fail("auth", f"LOGIN rejected: {resp.summary()}")
            await self._capabilities()
        except ProbeFailure as exc:
            raise self._fail(exc.reason, str(exc)) from None
        except ssl.SSLError as exc:
            raise self._fail("tls", f"TLS failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise self._fail("refused", f"cannot connect: {exc.strerror or exc}") from None

    async def _authenticate(self, hostname: str, port: int) -> None:
        """AUTHENTICATE XOAUTH2 or OAUTHBEARER with the endpoint's OAuth2 token (see exporter.net.oauth)."""
        ep = self.endpoint
        offered = {c[5:] for c in (await self._capabilities()) if c.startswith("AUTH=")}
        mechanism = choose_mechanism(offered, ep.mechanism, oauth=True)
        if mechanism is None:
            shown = " ".join(sorted(offered)) or "none"
            raise self._fail("auth", f"the server does not offer XOAUTH2 or OAUTHBEARER (offered: {shown[:80]})")
        token = await oauth_token(ep.auth)  # ProbeFailure auth_token
        assert self.reader is not None and self.writer is not None
        writer = self.writer

        async def send(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        self._tags += 1
        status, text, challenge = await sasl_authenticate(
            self.reader,
            send,
            f"C{self._tags}",
            mechanism,
            initial_response(mechanism, ep.username, token, hostname, port),
            abort_response(mechanism),
            sasl_ir="SASL-IR" in self.capabilities,
            step="authenticate",
        )
        if status != "OK":
            detail = oauth_error(challenge) if challenge else f"{status} {text[:120]}"
            raise self._fail("auth", f"AUTHENTICATE {mechanism} rejected: {detail}")

    async def _capabilities(self) -> frozenset[str]:
        resp = await self.command("CAPABILITY")
        caps: set[str] = set()
        for line in resp.untagged:
            if line.upper().startswith("CAPABILITY "):
                caps.update(w.upper() for w in line.split()[1:])
        self.capabilities = frozenset(caps)
        return self.capabilities

    async def command(self, text: str, *, shown: str | None = None) -> ImapResponse:
        if self.reader is None or self.writer is None:
            raise self._fail("protocol", "not connected")
        self._tags += 1
        tag = f"C{self._tags}"
        try:
            self.writer.write(f"{tag} {text}\r\n".encode())
            await self.writer.drain()
            return await read_response(self.reader, tag, (shown or text).split(" ")[0].lower())
        except ProbeFailure as exc:
            raise self._fail(exc.reason, str(exc)) from None
        except OSError as exc:
            raise self._fail("protocol", f"connection lost: {exc.strerror or exc}") from None

    async def append(self, folder: str, message: bytes) -> int | None:
        """APPEND ``message`` to ``folder``; returns its UID when the server says (UIDPLUS)."""
        assert self.reader is not None and self.writer is not None
        self._tags += 1
        tag = f"C{self._tags}"
        try:
            self.writer.write(f"{tag} APPEND {_quoted(folder)} {{{len(message)}}}\r\n".encode())
            await self.writer.drain()
            line = parse_response_line(await read_line(self.reader, "append"))
            if line is None or line.kind != "continuation":
                text = line.text if line is not None else "garbage"
                raise self._fail("protocol", f"APPEND refused: {text[:160]}")
            self.writer.write(message + b"\r\n")
            await self.writer.drain()
            resp = await read_response(self.reader, tag, "append")
        except ProbeFailure as exc:
            raise self._fail(exc.reason, str(exc)) from None
        except OSError as exc:
            raise self._fail("protocol", f"connection lost: {exc.strerror or exc}") from None
        if resp.status != "OK":
            raise self._fail("protocol", f"APPEND failed: {resp.summary()}")
        m = _APPENDUID_RE.search(resp.text)
        return int(m.group(1)) if m else None

    async def select(self, folder: str) -> None:
        resp = await self.command(f"SELECT {_quoted(folder)}")
        if resp.status != "OK":
            raise self._fail("protocol", f"SELECT {folder} failed: {resp.summary()}")

    async def search_header(self, header: str, value: str) -> list[int]:
        await self.command("NOOP")  # lets the server report new messages in the selected folder
        resp = await self.command(f"UID SEARCH HEADER {header} {_quoted(value)}")
        if resp.status != "OK":
            raise self._fail("protocol", f"SEARCH failed: {resp.summary()}")
        uids: list[int] = []
        for line in resp.untagged:
            m = _SEARCH_RE.match(line)
            if m and m.group(1):
                uids.extend(int(w) for w in m.group(1).split() if w.isdigit())
        return uids

    async def delete_uid(self, uid: int) -> None:
        if "UIDPLUS" not in self.capabilities:
            return  # a plain EXPUNGE could remove other deleted messages: leave it
        await self.command(f"UID STORE {uid} +FLAGS.SILENT (\\Deleted)")
        await self.command(f"UID EXPUNGE {uid}")

    async def close(self) -> None:
        writer = self.writer
        if writer is None:
            return
        self.writer = None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                writer.write(b"Z LOGOUT\r\n")
                await writer.drain()
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await writer.wait_closed()


def canary_message(token: str, mailbox: str) -> bytes:
    lines = [
        f"From: mail-continuity-exporter <{mailbox}>",
        f"To: <{mailbox}>",
        f"Subject: mail-continuity-exporter replication canary {token}",
        f"Date: {formatdate(localtime=False, usegmt=True)}",
        f"Message-ID: <{token}@mail-continuity-exporter.invalid>",
        f"{CANARY_HEADER}: {token}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        "Replication canary written by mail-continuity-exporter. It is deleted once seen on the replica.",
    ]
    return "\r\n".join(lines).encode("ascii")


async def measure_canary(cfg: ImapCanaryReplica, log: logging.Logger) -> float:
    """One canary round: APPEND on the primary, poll the replica; returns the lag in seconds."""
    token = f"mce-{secrets.token_hex(12)}"
    mailbox = cfg.primary.username if "@" in cfg.primary.username else "canary@mail-continuity-exporter.invalid"
    async with ImapSession(cfg.replica, "replica") as replica, ImapSession(cfg.primary, "primary") as primary:
        await replica.select(cfg.replica.folder)
        uid = await primary.append(cfg.primary.folder, canary_message(token, mailbox))
        appended = time.monotonic()
        try:
            deadline = appended + cfg.timeout
            while True:
                if await replica.search_header(CANARY_HEADER, token):
                    lag = time.monotonic() - appended
                    break
                if time.monotonic() >= deadline:
                    raise SourceError("timeout", f"canary not seen on the replica within {cfg.timeout:g}s")
                await asyncio.sleep(min(cfg.poll_interval, max(0.0, deadline - time.monotonic())))
        finally:
            if uid is not None:
                try:
                    async with asyncio.timeout(5.0):
                        await primary.select(cfg.primary.folder)
                        await primary.delete_uid(uid)
                except (SourceError, TimeoutError) as exc:
                    log.debug("canary cleanup failed", extra={"kv": {"err": str(exc)}})
    return lag
