"""Scripted fault servers on real sockets, for tests and benchmarks.

Every server listens on ``127.0.0.1`` port 0 and is an async context manager::

    async with smtp_server(SmtpScript(banner=("421 4.3.2 not now",))) as srv:
        ok = await probe_smtp(srv.address, settings, sink, log, check="t")

Leaving the ``async with`` closes the listener, cancels every connection handler and
aborts every connection, so no task or socket outlives a test.

Servers:

* :func:`refused_address` - a port that was bound and closed again (connection refused);
* :func:`tarpit` - accepts and never speaks;
* :func:`slow_drip` - sends a valid banner one byte per interval;
* :func:`send_then_close` - sends fixed bytes (a 421/554 banner, garbage), then closes or holds;
* :func:`garbage_flood` - an endless stream without a line ending;
* :func:`smtp_server` with :class:`SmtpScript` - a small SMTP server: banners (also the
  postscreen ``220-`` pre-greeting), EHLO replies, STARTTLS (real, or garbage instead of
  a handshake), implicit TLS, AUTH PLAIN/LOGIN, closing after EHLO;
* :func:`imap_server` with :class:`ImapScript` - a small IMAP server: greeting, CAPABILITY,
  STARTTLS, implicit TLS, LOGIN accepted or rejected, SELECT answered, refused or never
  answered (a hang after login).

Certificates (:func:`make_cert_kit`): a trustme CA and leaves with *known* notAfter
values: valid (``localhost``/``127.0.0.1``), expired, self-signed, wrong host.

:func:`run_probe` calls a prober the way the scheduler does (``asyncio.timeout``,
reason ``timeout`` recorded by the caller) and measures the elapsed time;
:func:`metric` reads one sample from a sink.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from exporter.core.model import Sink

HOST = "127.0.0.1"
CRLF = b"\r\n"

#: A connection handler: ``handler(server, reader, writer)``.
Handler = Callable[["FaultServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


# --- the server ----------------------------------------------------------------------------------


class FaultServer:
    """A TCP server on 127.0.0.1:0 running ``handler`` for each connection."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.host = HOST
        self.port = 0
        self.connections = 0
        #: Connections that the client closed while the server was holding them (see hold()).
        self.peer_closed = 0
        #: Unexpected exceptions raised by a handler (a bug in a script shows up here).
        self.errors: list[BaseException] = []

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> FaultServer:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        self.connections += 1
        try:
            await self._handler(self, reader, writer)
            await writer.drain()
        except (OSError, EOFError, asyncio.LimitOverrunError):
            pass  # the client went away: that is the client's business
        except asyncio.CancelledError:
            # close() cancelled us.  End normally: Python 3.11's start_server callback
            # would otherwise log the cancellation as an unhandled exception.
            pass
        except Exception as exc:  # recorded for the test to see
            self.errors.append(exc)
        finally:
            self._tasks.discard(task)
            if not writer.transport.is_closing():
                writer.close()

    async def hold(self, reader: asyncio.StreamReader) -> None:
        """Keep the connection open without a word until the client closes it."""
        while await reader.read(65536):
            pass
        self.peer_closed += 1

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in self._writers:
            writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.sleep(0)  # let connection_lost callbacks run

    async def __aenter__(self) -> FaultServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@asynccontextmanager
async def refused_address() -> AsyncIterator[str]:
    """``127.0.0.1:port`` of a port that was bound and closed again: connecting is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    port = sock.getsockname()[1]
    sock.close()
    yield f"{HOST}:{port}"


def tarpit() -> FaultServer:
    """Accepts connections and never sends a byte."""

    async def handler(srv: FaultServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await srv.hold(reader)

    return FaultServer(handler)


def slow_drip(data: bytes = b"220 drip.test ESMTP\r\n", interval: float = 1.0) -> FaultServer:
    """Sends ``data`` one byte per ``interval`` seconds, then holds the connection."""

    async def handler(srv: FaultServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(interval)
        await srv.hold(reader)

    return FaultServer(handler)


def send_then_close(data: bytes, *, hold: bool = False) -> FaultServer:
    """Sends ``data``; then closes the connection, or with ``hold`` keeps it open silently."""

    async def handler(srv: FaultServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        if hold:
            await srv.hold(reader)

    return FaultServer(handler)


def garbage_flood(chunk: bytes = b"\xfe\xed" * 4096, total: int = 4 << 20) -> FaultServer:
    """Sends ``total`` bytes of ``chunk`` repeated, without a line ending, then holds."""

    async def handler(srv: FaultServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sent = 0
        while sent < total:
            writer.write(chunk)
            sent += len(chunk)
            await writer.drain()
        await srv.hold(reader)

    return FaultServer(handler)


async def _read_command(reader: asyncio.StreamReader) -> str | None:
    line = await reader.readline()
    if not line:
        return None
    return line.decode("utf-8", "replace").rstrip("\r\n")


def _reply(writer: asyncio.StreamWriter, lines: list[str] | tuple[str, ...]) -> None:
    writer.write(b"".join(line.encode() + CRLF for line in lines))


# --- SMTP ------------------------------------------------------------------------------------------


@dataclass
class SmtpScript:
    """What :func:`smtp_server` does.  The defaults make a plain, working server."""

    hostname: str = "faults.test"
    #: Banner lines, sent as they are (``220-...`` continuation lines allowed).
    banner: tuple[str, ...] = ("220 faults.test ESMTP",)
    #: Pause before the last banner line, like postscreen's pregreet test.  A client that
    #: talks during the pause gets ``521 5.5.1 Protocol error`` (and ``pregreeted`` is set).
    banner_pause: float = 0.0
    implicit_tls: ssl.SSLContext | None = None
    #: Advertise STARTTLS and do a real handshake, or answer 220 and then send garbage.
    starttls: ssl.SSLContext | Literal["garbage"] | None = None
    #: Replaces the whole EHLO reply, e.g. ``("421 4.7.0 try again later",)``.
    ehlo_reply: tuple[str, ...] | None = None
    close_after_ehlo: bool = False
    auth: tuple[str, ...] = ()  # mechanisms advertised once TLS is on (or always with auth_clear)
    auth_clear: bool = False
    credentials: tuple[str, str] | None = None  # accepted (username, password); anything else: 535
    #: Set by the server.
    commands: list[str] = field(default_factory=list)
    auth_attempts: list[tuple[str, str]] = field(default_factory=list)
    pregreeted: bool = False


def smtp_server(script: SmtpScript | None = None) -> FaultServer:
    script = script if script is not None else SmtpScript()

    async def handler(srv: FaultServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls = False
        if script.implicit_tls is not None:
            await writer.start_tls(script.implicit_tls)
            tls = True
        for i, line in enumerate(script.banner):
            if i == len(script.banner) - 1 and script.banner_pause:
                await writer.drain()
                try:
                    async with asyncio.timeout(script.banner_pause):
                        early = await reader.read(1)
                except TimeoutError:
                    early = b""
                if early:
                    script.pregreeted = True
                    _reply(writer, ["521 5.5.1 Protocol error"])
                    return
                if reader.at_eof():
                    return
            _reply(writer, [line])
            if script.banner and script.banner[-1][:1] in "45" and i == len(script.banner) - 1:
                return  # a 4xx/5xx banner: say it and hang up, like a real server
        while (command := await _read_command(reader)) is not None:
            script.commands.append(command)
            verb = command.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                if script.ehlo_reply is not None:
                    _reply(writer, script.ehlo_reply)
                    if script.ehlo_reply[-1][:1] in "45":
                        return
                    continue
                keywords = ["PIPELINING", "SIZE 10240000"]
                if script.starttls is not None and not tls:
                    keywords.append("STARTTLS")
                if script.auth and (tls or script.auth_clear):
                    keywords.append("AUTH " + " ".join(script.auth))
                keywords.append("8BITMIME")
                lines = [script.hostname, *keywords]
                _reply(writer, [f"250-{x}" for x in lines[:-1]] + [f"250 {lines[-1]}"])
                if script.close_after_ehlo:
                    return
            elif verb == "STARTTLS" and script.starttls is not None and not tls:
                _reply(writer, ["220 2.0.0 Ready to start TLS"])
                await writer.drain()
                if script.starttls == "garbage":
                    await reader.read(1)  # the ClientHello
                    writer.write(b"this is not a TLS record\r\n" * 4)
                    await writer.drain()
                    return
                await writer.start_tls(script.starttls)
                tls = True
            elif verb == "AUTH" and script.auth:
                await _smtp_auth(script, command, reader, writer)
            elif verb == "QUIT":
                _reply(writer, ["221 2.0.0 Bye"])
                return
            elif verb in ("NOOP", "RSET"):
                _reply(writer, ["250 2.0.0 Ok"])
            else:
                _reply(writer, ["502 5.5.2 Error: command not recognized"])
            await writer.drain()
        srv.peer_closed += 1

    return FaultServer(handler)


async def _smtp_auth(
    script: SmtpScript, command: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    parts = command.split()
    mech = parts[1].upper() if len(parts) > 1 else ""
    user = password = ""
    if mech == "PLAIN":
        if len(parts) > 2:
            blob = parts[2]
        else:
            _reply(writer, ["334 "])
            blob = await _read_command(reader) or ""
        try:
            _, user, password = base64.b64decode(blob).decode().split("\0")
        except ValueError:
            _reply(writer, ["501 5.5.2 malformed"])
            return
    elif mech == "LOGIN":
        _reply(writer, ["334 VXNlcm5hbWU6"])
        user = base64.b64decode(await _read_command(reader) or "").decode()
        _reply(writer, ["334 UGFzc3dvcmQ6"])
        password = base64.b64decode(await _read_command(reader) or "").decode()
    else:
        _reply(writer, ["504 5.5.4 Unrecognized authentication type"])
        return
    script.auth_attempts.append((user, password))
    if script.credentials == (user, password):
        _reply(writer, ["235 2.7.0 Authentication successful"])
    else:
        _reply(writer, ["535 5.7.8 Error: authentication failed: authentication failure"])


# --- IMAP ------------------------------------------------------------------------------------------


@dataclass
class ImapScript:
    """What :func:`imap_server` does.  The defaults make a plain, working server."""

    greeting: str = "* OK faults.test IMAP ready"
    capabilities: tuple[str, ...] = ("IMAP4rev1", "LITERAL+", "ID")
    implicit_tls: ssl.SSLContext | None = None
    starttls: ssl.SSLContext | None = None
    credentials: tuple[str, str] | None = None  # accepted; anything else: NO [AUTHENTICATIONFAILED]
    #: After a successful LOGIN: answer normally, or never answer anything again.
    after_login: Literal["ok", "hang"] = "ok"
    select: Literal["ok", "no"] = "ok"
    #: Set by the server.
    commands: list[str] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)


def _imap_args(text: str) -> list[str]:
    """Quoted strings and atoms of a command line (enough for LOGIN and SELECT)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == " ":
            i += 1
        elif text[i] == '"':
            i += 1
            buf = []
            while i < len(text) and text[i] != '"':
                if text[i] == "\\":
                    i += 1
                buf.append(text[i])
                i += 1
            out.append("".join(buf))
            i += 1
        else:
            j = text.find(" ", i)
            j = len(text) if j < 0 else j
            out.append(text[i:j])
            i = j
    return out


async def _imap_read_command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str | None:
    """A command line with synchronising literals inlined as quoted strings."""
    line = await _read_command(reader)
    if line is None:
        return None
    while line.endswith("}") and "{" in line:
        head, _, size = line[:-1].rpartition("{")
        _reply(writer, ["+ go ahead"])
        data = (await reader.readexactly(int(size.rstrip("+")))).decode()
        rest = await _read_command(reader) or ""
        line = head + '"' + data.replace("\\", "\\\\").replace('"', '\\"') + '"' + rest
    return line


def imap_server(script: ImapScript | None = None) -> FaultServer:
    script = script if script is not None else ImapScript()

    async def handler(srv: FaultServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls = False
        if script.implicit_tls is not None:
            await writer.start_tls(script.implicit_tls)
            tls = True
        _reply(writer, [script.greeting])
        if not script.greeting.startswith(("* OK", "* PREAUTH")):
            await srv.hold(reader)  # garbage or BYE: hold the line open
        authed = False
        while (command := await _imap_read_command(reader, writer)) is not None:
            script.commands.append(command)
            if authed and script.after_login == "hang":
                continue  # read and never answer
            tag, _, rest = command.partition(" ")
            verb, _, args = rest.partition(" ")
            verb = verb.upper()
            if verb == "CAPABILITY":
                caps = list(script.capabilities)
                if script.starttls is not None and not tls:
                    caps.append("STARTTLS")
                _reply(writer, ["* CAPABILITY " + " ".join(caps), f"{tag} OK Capability completed."])
            elif verb == "STARTTLS" and script.starttls is not None and not tls:
                _reply(writer, [f"{tag} OK Begin TLS negotiation now."])
                await writer.drain()
                await writer.start_tls(script.starttls)
                tls = True
            elif verb == "LOGIN":
                user, password = [*_imap_args(args), "", ""][:2]
                script.logins.append((user, password))
                if script.credentials == (user, password):
                    authed = True
                    _reply(writer, [f"{tag} OK Logged in"])
                else:
                    _reply(writer, [f"{tag} NO [AUTHENTICATIONFAILED] Authentication failed."])
            elif verb == "SELECT" and authed:
                if script.select == "ok":
                    _reply(
                        writer,
                        [
                            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
                            "* 0 EXISTS",
                            "* 0 RECENT",
                            "* OK [UIDVALIDITY 1700000000] UIDs valid",
                            f"{tag} OK [READ-WRITE] Select completed.",
                        ],
                    )
                else:
                    _reply(writer, [f"{tag} NO [NONEXISTENT] Mailbox doesn't exist: {args}"])
            elif verb == "LOGOUT":
                _reply(writer, ["* BYE Logging out", f"{tag} OK Logout completed."])
                return
            elif verb == "NOOP":
                _reply(writer, [f"{tag} OK NOOP completed."])
            else:
                _reply(writer, [f"{tag} BAD Error in IMAP command"])
            await writer.drain()
        srv.peer_closed += 1

    return FaultServer(handler)


# --- certificates ------------------------------------------------------------------------------------

UTC = dt.UTC
VALID_NOT_AFTER = dt.datetime(2040, 1, 2, 3, 4, 5, tzinfo=UTC)
EXPIRED_NOT_BEFORE = dt.datetime(2020, 1, 1, 0, 0, 0, tzinfo=UTC)
EXPIRED_NOT_AFTER = dt.datetime(2021, 6, 7, 8, 9, 10, tzinfo=UTC)
SELF_SIGNED_NOT_AFTER = dt.datetime(2039, 5, 6, 7, 8, 9, tzinfo=UTC)
WRONG_HOST_NOT_AFTER = dt.datetime(2038, 10, 11, 12, 13, 14, tzinfo=UTC)


@dataclass(frozen=True)
class ServedCert:
    """A server certificate on disk, with its notAfter as a Unix time."""

    name: str
    cert_file: str  # the leaf and any intermediates, PEM
    key_file: str
    not_after: float

    def server_context(self, *, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        if max_version is not None:
            ctx.maximum_version = max_version
        return ctx


@dataclass(frozen=True)
class CertKit:
    ca_file: str  # trust this CA (TLSSettings.ca_file)
    valid: ServedCert  # localhost and 127.0.0.1, issued by the CA
    expired: ServedCert  # same names, issued by the CA, expired
    self_signed: ServedCert  # same names, self-signed
    wrong_host: ServedCert  # issued by the CA for other.example only


def _served_leaf(directory: Path, name: str, leaf: trustme.LeafCert, not_after: dt.datetime) -> ServedCert:
    cert_file = directory / f"{name}.pem"
    key_file = directory / f"{name}.key"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key_file))
    return ServedCert(name, str(cert_file), str(key_file), not_after.timestamp())


def make_self_signed(
    directory: Path, name: str, names: tuple[str, ...], not_before: dt.datetime, not_after: dt.datetime
) -> ServedCert:
    """A self-signed leaf for ``names`` (DNS names or IP addresses) written to ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    alt: list[x509.GeneralName] = []
    for n in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file = directory / f"{name}.pem"
    key_file = directory / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ServedCert(name, str(cert_file), str(key_file), not_after.timestamp())


def make_cert_kit(directory: Path) -> CertKit:
    """A test CA and four server certificates with known notAfter values, written to ``directory``."""
    ca = trustme.CA()
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    now = dt.datetime.now(UTC)
    return CertKit(
        ca_file=str(ca_file),
        valid=_served_leaf(
            directory,
            "valid",
            ca.issue_cert("localhost", "127.0.0.1", not_before=now - dt.timedelta(days=1), not_after=VALID_NOT_AFTER),
            VALID_NOT_AFTER,
        ),
        expired=_served_leaf(
            directory,
            "expired",
            ca.issue_cert("localhost", "127.0.0.1", not_before=EXPIRED_NOT_BEFORE, not_after=EXPIRED_NOT_AFTER),
            EXPIRED_NOT_AFTER,
        ),
        self_signed=make_self_signed(
            directory, "self_signed", ("localhost", "127.0.0.1"), now - dt.timedelta(days=1), SELF_SIGNED_NOT_AFTER
        ),
        wrong_host=_served_leaf(
            directory,
            "wrong_host",
            ca.issue_cert("other.example", not_before=now - dt.timedelta(days=1), not_after=WRONG_HOST_NOT_AFTER),
            WRONG_HOST_NOT_AFTER,
        ),
    )


# --- calling a prober like the scheduler does ---------------------------------------------------------


@dataclass
class Outcome:
    ok: bool
    sink: Sink
    elapsed: float
    timed_out: bool

    @property
    def reason(self) -> str | None:
        failure = self.sink.failure
        return failure.reason if failure is not None else None


async def run_probe(
    prober: Callable[..., Awaitable[bool]],
    target: str,
    settings: object,
    *,
    protocol: str,
    timeout: float = 2.0,
    check: str = "test",
    debug: bool = True,
) -> Outcome:
    """Run ``prober`` under ``asyncio.timeout`` and record reason ``timeout`` as the caller."""
    sink = Sink(debug=debug)
    log = logging.getLogger("tests.probe")
    started = time.monotonic()
    timed_out = False
    try:
        async with asyncio.timeout(timeout):
            ok = await prober(target, settings, sink, log, check=check)
    except TimeoutError:
        timed_out = True
        ok = False
        sink.fail("timeout", f"timed out after {timeout:g}s", protocol=protocol, check=check, target=target)
    return Outcome(ok, sink, time.monotonic() - started, timed_out)


def metric(sink: Sink, name: str, **labels: str) -> float | None:
    """The value of the one sample ``name`` whose labels include ``labels`` (None if absent)."""
    found = [s.value for s in sink.samples() if s.name == name and set(labels.items()) <= set(s.labels)]
    if len(found) > 1:
        raise AssertionError(f"{name}{labels} matches {len(found)} samples")
    return found[0] if found else None


def failures(sink: Sink) -> dict[str, float]:
    """``mail_probe_failures_total`` by reason."""
    return {dict(s.labels)["reason"]: s.value for s in sink.samples() if s.name == "mail_probe_failures_total"}
