"""TLS inspection and the stream plumbing shared by the SMTP and IMAP probers.

What lives here:

* **Contexts.** :func:`client_context` builds (and caches) an ``ssl.SSLContext`` from
  :class:`~exporter.config.TLSSettings`.  Host name checking is always *off* in the
  context: OpenSSL only verifies the chain, and :func:`hostname_matches` checks the
  name on the leaf ourselves, so that the two verdicts are reported separately
  (``mail_tls_cert_chain_valid``, ``mail_tls_cert_hostname_valid``).
* **The leaf, always.**  ``mail_tls_cert_expiry_timestamp_seconds`` must exist even for
  an expired, self-signed or wrong-host certificate.  Python 3.11 cannot hand us the
  peer certificate of a handshake that failed verification, so
  :func:`dial_with_leaf_fallback` redoes the dialog up to the handshake with a
  non-verifying context when the first handshake is rejected, and reads the leaf there.
  Both attempts run inside the caller's one overall timeout.
* **Pure inspection.** :func:`inspect_leaf` parses a DER certificate with
  ``cryptography``: notAfter, subject, issuer and the RFC 6125 host name verdict.
* **Streams.** :class:`ProbeRun` is one run of a prober: it owns the sink labels,
  phase timings, the redacted transcript, the single failure record and every
  connection it opened (all aborted when the run ends, also on cancellation).
  :func:`read_line` reads one bounded line and turns every low-level error into a
  :class:`ProbeFailure` with a reason from :data:`exporter.core.model.REASONS`.
* **The connect guard.** ``/probe`` runs checks on targets a client names, so it sets
  :data:`CONNECT_GUARD` for the duration of a request: :meth:`ProbeRun.connect` then
  asks the guard for the addresses of a host (it resolves and vets them, or raises
  :class:`ProbeFailure`) and connects to those addresses, never to the name, so a
  second DNS answer (rebinding) cannot slip past the check.  A context variable
  reaches every task a request starts, and never the scheduled checks.

Host name rules (:func:`hostname_matches`):

* IP address targets match only ``iPAddress`` SANs (never a DNS SAN or the CN).
* DNS names match the ``dNSName`` SANs, case-insensitively, trailing dot ignored,
  non-ASCII names compared as IDNA A-labels.  The subject CN is consulted only when
  the certificate has no ``dNSName`` SAN at all (RFC 6125 section 6.4.4).
* A wildcard is honoured only as the whole leftmost label (``*.example.com``) of a
  pattern with at least three labels; it matches exactly one label.  Partial-label
  wildcards (``f*.example.com``) and wildcards elsewhere never match.
"""

from __future__ import annotations

__all__ = [
    "CONNECT_GUARD",
    "LINE_LIMIT",
    "CertRejected",
    "Conn",
    "ConnectGuard",
    "LeafInfo",
    "ProbeFailure",
    "ProbeRun",
    "TLSReport",
    "TlsJudge",
    "client_context",
    "dial_session",
    "dial_with_leaf_fallback",
    "hostname_matches",
    "inspect_leaf",
    "presented_chain",
    "prewarm",
    "printable",
    "read_exactly",
    "read_line",
]

import asyncio
import ipaddress
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

from cryptography import x509
from cryptography.x509.oid import NameOID

from exporter.config import TLSSettings
from exporter.core.errors import Failure
from exporter.core.model import Sink
from exporter.core.secrets import REDACTED, redact

#: Longest line (including CRLF) a prober accepts from a server.  A longer line is a
#: protocol failure, so that a garbage flood cannot grow a buffer without bound.
LINE_LIMIT = 8192

#: How long a prober waits, at most, for the server's answer to QUIT/LOGOUT and for a
#: graceful close.  The probe has already succeeded by then; this only bounds the
#: politeness.
CLOSE_WAIT = 1.0

#: Resolves and vets a host: returns the addresses a probe may connect to (at least one),
#: or raises :class:`ProbeFailure`.  ``socket.gaierror`` passes through as reason ``dns``.
ConnectGuard = Callable[[str, int], Awaitable[list[str]]]

#: Set by ``/probe`` for one request; None (no checks) for the scheduled checks.
CONNECT_GUARD: ContextVar[ConnectGuard | None] = ContextVar("connect_guard", default=None)

#: Characters of server text kept in a transcript line or a failure message.
_TEXT_KEEP = 200

_TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS1.0": ssl.TLSVersion.TLSv1,
    "TLS1.1": ssl.TLSVersion.TLSv1_1,
    "TLS1.2": ssl.TLSVersion.TLSv1_2,
    "TLS1.3": ssl.TLSVersion.TLSv1_3,
}


# --- errors ----------------------------------------------------------------------------------


class ProbeFailure(Failure):
    """A target misbehaved: ``reason`` is one of :data:`exporter.core.model.REASONS`.

    Internal to the probers: :meth:`ProbeRun.fail` turns it into exactly one
    ``sink.fail`` call at the prober boundary.
    """


class CertRejected(Failure):
    """The TLS handshake failed certificate verification (the chain, not the host name); reason ``tls``."""

    def __init__(self, message: str) -> None:
        super().__init__("tls", message)


#: Judges a finished handshake under a transport policy (MTA-STS, DANE): given what the
#: handshake showed (None: the session is not encrypted) and the presented chain (leaf
#: first, DER), returns the failure that ends the probe, or None to go on.
TlsJudge = Callable[["TLSReport | None", tuple[bytes, ...]], Failure | None]


# --- contexts ----------------------------------------------------------------------------------


def client_context(settings: TLSSettings, *, verify: bool, check_hostname: bool = False) -> ssl.SSLContext:
    """A client context for ``settings``; ``verify=False`` gives one that accepts any chain.

    Probers check the host name themselves (:func:`hostname_matches`, so that a wrong name
    is reported, not refused); ``check_hostname=True`` (with ``verify``) makes the handshake
    refuse it, for clients that send credentials (the IMAP canary).  Contexts are cached
    (loading a trust store costs milliseconds); the CA file's modification time is part of
    the key so that a rotated CA bundle is picked up.  Raises ``OSError``/``ssl.SSLError``
    when ``ca_file`` cannot be loaded.
    """
    mtime = 0
    if verify and settings.ca_file:
        mtime = os.stat(settings.ca_file).st_mtime_ns
    ca_file = settings.ca_file if verify else None
    return _context(verify, ca_file, mtime, settings.min_version, verify and check_hostname)


@lru_cache(maxsize=64)
def _context(
    verify: bool, ca_file: str | None, _mtime: int, min_version: str | None, check_hostname: bool
) -> ssl.SSLContext:
    if verify:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
        ctx.check_hostname = check_hostname  # else we check the name ourselves: see hostname_matches
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if min_version is not None:
        ctx.minimum_version = _TLS_VERSIONS[min_version]
    return ctx


def prewarm(settings: Iterable[TLSSettings]) -> None:
    """Build the client contexts of ``settings`` now, verifying and not.

    Loading a trust store takes about 50 ms, which would otherwise stall the event loop
    (and ``/metrics``) during a check's first run.  Check kinds call this when they build.
    An unreadable ``ca_file`` is skipped here: the check itself reports it, as reason ``tls``.
    """
    for tls in set(settings):
        for verify in (True, False):
            try:
                client_context(tls, verify=verify)
            except (OSError, ValueError):
                pass


# --- certificate inspection ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LeafInfo:
    """What a prober reports about the server's leaf certificate."""

    not_after: float  # Unix time
    not_before: float
    hostname_ok: bool
    subject: str
    issuer: str

    @property
    def self_signed(self) -> bool:
        return self.subject == self.issuer


@lru_cache(maxsize=1024)
def inspect_leaf(der: bytes, hostname: str) -> LeafInfo:
    """Parse a DER leaf certificate and check it against ``hostname`` (pure; no I/O).

    Cached: a server presents the same certificate probe after probe, and parsing it costs
    more than the rest of a probe's Python work; a new certificate is a new key, so a
    renewal is seen at once.  Raises ``ValueError`` when ``der`` is not a certificate
    (not cached).
    """
    cert = x509.load_der_x509_certificate(der)
    return LeafInfo(
        not_after=cert.not_valid_after_utc.timestamp(),
        not_before=cert.not_valid_before_utc.timestamp(),
        hostname_ok=hostname_matches(cert, hostname),
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
    )


def hostname_matches(cert: x509.Certificate, hostname: str) -> bool:
    """Whether ``cert`` is valid for ``hostname`` (DNS name or IP address); see the module doc."""
    host = hostname.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        san: x509.SubjectAlternativeName | None = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
    except x509.ExtensionNotFound:
        san = None
    except ValueError:  # a malformed extension: trust nothing in it
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        return san is not None and ip in san.get_values_for_type(x509.IPAddress)
    name = _a_label(host)
    if name is None:
        return False
    patterns = san.get_values_for_type(x509.DNSName) if san is not None else []
    if not patterns:
        patterns = [
            cn.value if isinstance(cn.value, str) else ""
            for cn in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
    return any(_dns_match(pattern, name) for pattern in patterns)


def _a_label(name: str) -> str | None:
    name = name.rstrip(".").lower()
    if not name:
        return None
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return None


def _dns_match(pattern: str, host: str) -> bool:
    pat = _a_label(pattern)
    if pat is None:
        return False
    if "*" not in pat:
        return pat == host
    labels = pat.split(".")
    if labels[0] != "*" or any("*" in label for label in labels[1:]) or len(labels) < 3:
        return False
    host_labels = host.split(".")
    return len(host_labels) == len(labels) and host_labels[0] != "" and host_labels[1:] == labels[1:]


@dataclass(frozen=True, slots=True)
class TLSReport:
    """The TLS facts of one handshake, as reported in the metrics."""

    version: str
    chain_valid: bool
    chain_error: str  # why the chain did not verify; "" when it did
    leaf: LeafInfo | None  # None when the server sent no parsable certificate
    hostname: str

    @property
    def hostname_valid(self) -> bool:
        return self.leaf is not None and self.leaf.hostname_ok

    @property
    def valid(self) -> bool:
        return self.chain_valid and self.hostname_valid

    def problem(self) -> str:
        """A short description of why the certificate is invalid ("" when it is valid)."""
        if not self.chain_valid:
            return f"certificate chain does not verify: {self.chain_error}"
        if self.leaf is None:
            return "no parsable server certificate"
        if not self.leaf.hostname_ok:
            return f"certificate does not match host name {self.hostname!r} (subject {self.leaf.subject})"
        return ""


# --- connections -----------------------------------------------------------------------------------


def printable(data: bytes | str, keep: int = _TEXT_KEEP) -> str:
    """Server text made safe for a transcript or a message: no control characters, bounded."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = text.rstrip("\r\n")
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text[: keep + 1])
    return cleaned if len(cleaned) <= keep else cleaned[:keep] + "..."


async def read_line(reader: asyncio.StreamReader, step: str) -> bytes:
    """One line (with its line ending), at most :data:`LINE_LIMIT` bytes.

    ``reader`` must have been created with ``limit=LINE_LIMIT`` (as
    :meth:`ProbeRun.connect` does), so that an endless line is never buffered whole.

    Raises :class:`ProbeFailure`: ``protocol`` for a closed connection, an overlong
    line or a reset, ``tls`` for a TLS error, ``timeout`` for a socket-level timeout.
    """
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        raise ProbeFailure("protocol", f"{step}: connection closed by the server") from None
    except asyncio.LimitOverrunError:
        raise ProbeFailure("protocol", f"{step}: line longer than {LINE_LIMIT} bytes") from None
    except (OSError, ssl.SSLError) as exc:
        raise _io_failure(step, exc) from None
    if len(line) > LINE_LIMIT:
        raise ProbeFailure("protocol", f"{step}: line longer than {LINE_LIMIT} bytes")
    return line


async def read_exactly(reader: asyncio.StreamReader, n: int, step: str) -> bytes:
    """Exactly ``n`` bytes; the same failures as :func:`read_line`."""
    try:
        return await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        raise ProbeFailure("protocol", f"{step}: connection closed by the server") from None
    except (OSError, ssl.SSLError) as exc:
        raise _io_failure(step, exc) from None


def _io_failure(step: str, exc: BaseException) -> ProbeFailure:
    if isinstance(exc, ssl.SSLError):
        return ProbeFailure("tls", f"{step}: TLS error: {_ssl_text(exc)}")
    if isinstance(exc, TimeoutError):
        return ProbeFailure("timeout", f"{step}: timed out")
    if isinstance(exc, OSError):
        return ProbeFailure("protocol", f"{step}: connection lost: {exc.strerror or type(exc).__name__}")
    return ProbeFailure("protocol", f"{step}: {type(exc).__name__}")


def _ssl_text(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return str(exc.verify_message)
    return str(exc.reason or exc.strerror or type(exc).__name__)


@dataclass(eq=False)
class Conn:
    """One connection of a probe; created by :meth:`ProbeRun.connect`."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    tls_version: str | None = None  # set once a handshake succeeded
    peer_der: bytes | None = None
    _ssl_object: ssl.SSLObject | ssl.SSLSocket | None = None
    _peer_chain: tuple[bytes, ...] | None = None

    def __post_init__(self) -> None:
        # The socket transport under any TLS layered on it later: see abort().
        self._socket_transport: asyncio.BaseTransport = self.writer.transport

    @property
    def peer_chain(self) -> tuple[bytes, ...]:
        """The certificates the server presented, leaf first, as sent (for DANE), DER.

        Read from the TLS session on first use only: most probes never need it, and
        re-encoding every certificate costs more than the rest of the bookkeeping.
        """
        if self._peer_chain is None:
            chain = presented_chain(self._ssl_object) if self._ssl_object is not None else ()
            self._peer_chain = chain or ((self.peer_der,) if self.peer_der else ())
        return self._peer_chain

    async def send(self, data: bytes, step: str) -> None:
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (OSError, ssl.SSLError) as exc:
            raise _io_failure(step, exc) from None

    async def start_tls(self, ctx: ssl.SSLContext, server_hostname: str, step: str) -> None:
        """Handshake on this connection; raises :class:`CertRejected` or :class:`ProbeFailure` (tls)."""
        try:
            await self.writer.start_tls(ctx, server_hostname=server_hostname)
        except ssl.SSLCertVerificationError as exc:
            raise CertRejected(_ssl_text(exc)) from None
        except ssl.SSLError as exc:
            raise ProbeFailure("tls", f"{step}: TLS handshake failed: {_ssl_text(exc)}") from None
        except TimeoutError:
            raise ProbeFailure("timeout", f"{step}: TLS handshake timed out") from None
        except (OSError, EOFError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else "connection closed"
            raise ProbeFailure("tls", f"{step}: TLS handshake failed: {detail}") from None
        obj = self.writer.get_extra_info("ssl_object")
        version = None
        if isinstance(obj, ssl.SSLObject | ssl.SSLSocket):
            self.peer_der = obj.getpeercert(binary_form=True)
            self._ssl_object = obj
            version = obj.version()
        self.tls_version = version or "unknown"

    def abort(self) -> None:
        """Drop the connection now (also cuts short a pending graceful TLS shutdown).

        On CPython 3.11 a closed selector transport stays in a reference cycle with its own
        bound ``_read_ready_cb`` (cpython#100348, fixed in 3.12), so only the cyclic garbage
        collector frees it, its socket and its dict: with 10,000 checks that was 10,000 to
        20,000 objects for each young collection to free, and 60 to 140 ms pauses in
        ``/metrics``.  Once aborted the transport's reader is removed (and its pending
        callback cancelled), so the cycle is cut here and reference counting frees it all
        at once.  Other loops (uvloop) have no such attribute.
        """
        self.writer.transport.abort()
        raw = self._socket_transport
        if getattr(raw, "_read_ready_cb", None) is not None and raw.is_closing():
            raw._read_ready_cb = None  # type: ignore[attr-defined]

    async def close(self) -> None:
        """Close: a TLS session is dropped at once, a plain one politely within :data:`CLOSE_WAIT`.

        The dialog has ended (QUIT or LOGOUT answered, or given up on) before this is
        called, so TLS's close_notify exchange would add a record each way and a wait
        for the server's, and tell nothing: the server closes the session itself.
        """
        if self.tls_version is not None:
            self.abort()
            return
        try:
            self.writer.close()
            async with asyncio.timeout(CLOSE_WAIT):
                await self.writer.wait_closed()
        except (OSError, ssl.SSLError, TimeoutError):
            pass
        finally:
            self.abort()


def presented_chain(obj: ssl.SSLObject | ssl.SSLSocket) -> tuple[bytes, ...]:
    """The chain the server sent, leaf first, DER; () when this Python cannot tell.

    Python 3.13 has ``get_unverified_chain()`` on SSL objects; 3.10 to 3.12 have it on the
    underlying ``_ssl._SSLSocket`` only, returning ``_ssl.Certificate`` objects.  It is the
    chain as presented, not as built by verification, which is what DANE matches.
    """
    getter = getattr(obj, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(obj, "_sslobj", None), "get_unverified_chain", None)
    if getter is None:
        return ()
    try:
        certs = getter() or []
    except (ssl.SSLError, ValueError, AttributeError):
        return ()
    out: list[bytes] = []
    for cert in certs:
        if isinstance(cert, bytes):
            out.append(cert)
        else:
            der = cert.public_bytes(_ENCODING_DER)
            out.append(der if isinstance(der, bytes) else bytes(der))
    return tuple(out)


#: ``_ssl.ENCODING_DER``: the encoding argument of ``_ssl.Certificate.public_bytes``.
_ENCODING_DER: int = getattr(getattr(ssl, "_ssl", None), "ENCODING_DER", 2)


_C = TypeVar("_C")


class ProbeRun:
    """The bookkeeping of one probe run: labels, phases, transcript, the failure, connections.

    The caller owns the overall timeout.  Every connection opened through
    :meth:`connect` is aborted in :meth:`finish` (call it in ``finally``), so a
    cancelled probe leaves no socket behind.
    """

    def __init__(
        self, protocol: str, up_family: str, target: str, *, sink: Sink, log: logging.Logger, check: str
    ) -> None:
        self.protocol = protocol
        self.up_family = up_family
        self.target = target
        self.sink = sink
        self.log = log
        self.check = check
        self.record_phases = True
        self._conns: list[Conn] = []
        self._scrub: list[str] = []
        self.failed = False
        #: What the last handshake showed (set by :func:`dial_with_leaf_fallback`).
        self.tls_report: TLSReport | None = None

    # metrics ------------------------------------------------------------------------------
    async def open(self, host: str, port: int, implicit_tls: ssl.SSLContext | None, hostname: str) -> Conn:
        """Connect; with ``implicit_tls`` (SMTPS, IMAPS) also do the handshake at once (phase ``tls``)."""
        conn = await self.connect(host, port)
        if implicit_tls is not None:
            started = time.monotonic()
            await conn.start_tls(implicit_tls, hostname, "tls")
            self.phase("tls", started)
            self.trace(f"-- TLS established ({conn.tls_version})")
        return conn

    async def drive(self, dialog: Callable[[], Awaitable[None]], max_duration: float) -> bool:
        """Run a prober's dialog and record its outcome: the shared skeleton of every prober.

        ``max_duration`` is only a backstop; the caller's own timeout cancels the task
        (``CancelledError``) and the caller records reason ``timeout`` itself.
        """
        self.start()
        try:
            async with asyncio.timeout(max_duration):
                await dialog()
        except ProbeFailure as failure:
            self.fail(failure)
            return False
        except TimeoutError:  # our own backstop, not the caller's timeout
            self.fail(ProbeFailure("timeout", f"probe exceeded its own limit of {max_duration:g}s"))
            return False
        finally:
            self.finish()
        self.succeed()
        return True

    def start(self) -> None:
        self.sink.init_failures(self.protocol, self.check, self.target)
        self.sink.gauge(self.up_family, 0, check=self.check, target=self.target)

    def succeed(self) -> None:
        self.sink.gauge(self.up_family, 1, check=self.check, target=self.target)

    def phase(self, name: str, started: float) -> None:
        """Record a completed phase that started at ``started`` (``time.monotonic()``)."""
        if self.record_phases:
            self.sink.gauge(
                "mail_probe_phase_duration_seconds",
                time.monotonic() - started,
                protocol=self.protocol,
                check=self.check,
                target=self.target,
                phase=name,
            )

    def fail(self, failure: ProbeFailure) -> None:
        """Record the run's one failure."""
        if self.failed:  # the probers call this once by construction; never count twice
            return
        self.failed = True
        message = self.clean(failure.message)
        self.log.debug(
            "probe failed",
            extra={"check": self.check, "target": self.target, "reason": failure.reason, "error": message},
        )
        self.sink.fail(failure.reason, message, protocol=self.protocol, check=self.check, target=self.target)

    def emit_tls(self, report: TLSReport) -> None:
        labels = {"protocol": self.protocol, "check": self.check, "target": self.target}
        if report.leaf is not None:
            self.sink.gauge("mail_tls_cert_expiry_timestamp_seconds", report.leaf.not_after, **labels)
        self.sink.gauge("mail_tls_cert_chain_valid", int(report.chain_valid), **labels)
        self.sink.gauge("mail_tls_cert_hostname_valid", int(report.hostname_valid), **labels)
        self.sink.gauge("mail_tls_cert_valid", int(report.valid), **labels)
        self.sink.gauge("mail_tls_version_info", 1, version=report.version, **labels)

    # transcript ----------------------------------------------------------------------------
    def add_scrub(self, *values: str) -> None:
        """Strings (credential encodings) to remove from every transcript line and message."""
        self._scrub.extend(v for v in values if len(v) >= 3)

    def clean(self, text: str) -> str:
        for value in self._scrub:
            if value in text:
                text = text.replace(value, REDACTED)
        return redact(text)

    def trace(self, line: str) -> None:
        if self.sink.transcript is not None:
            self.sink.trace(self.clean(line))

    @property
    def tracer(self) -> Callable[[str], None] | None:
        """``trace`` when a transcript is being kept, else None (so callers skip formatting)."""
        return self.trace if self.sink.transcript is not None else None

    # connections --------------------------------------------------------------------------
    async def connect(self, host: str, port: int) -> Conn:
        """Open a TCP connection (phase ``connect``, name resolution included)."""
        started = time.monotonic()
        try:
            reader, writer = await _open_connection(host, port)
        except socket.gaierror as exc:
            raise ProbeFailure("dns", f"connect: cannot resolve {host}: {exc.strerror}") from None
        except UnicodeError:  # the IDNA codec rejects the name before any query is sent
            raise ProbeFailure("dns", f"connect: invalid host name {host!r}") from None
        except ConnectionRefusedError:
            raise ProbeFailure("refused", f"connect: connection refused by {host} port {port}") from None
        except TimeoutError:
            raise ProbeFailure("timeout", f"connect: timed out connecting to {host} port {port}") from None
        except OSError as exc:
            # unreachable network or host, address not available: no connection was made
            raise ProbeFailure("refused", f"connect: {exc.strerror or type(exc).__name__}") from None
        conn = Conn(reader, writer)
        self._conns.append(conn)
        self.phase("connect", started)
        self.trace(f"-- connected to {host} port {port}")
        return conn

    def finish(self) -> None:
        """Abort every connection still open (synchronous: safe while being cancelled)."""
        for conn in self._conns:
            conn.abort()
        self._conns.clear()


async def _open_connection(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``host``; under a :data:`CONNECT_GUARD`, only to the addresses it vetted, in order."""
    guard = CONNECT_GUARD.get()
    if guard is None:
        return await asyncio.open_connection(host, port, limit=LINE_LIMIT)
    addresses = await guard(host, port)
    for address in addresses[:-1]:
        try:
            return await asyncio.open_connection(address, port, limit=LINE_LIMIT)
        except OSError:
            continue  # as open_connection does with a name: try the next address
    return await asyncio.open_connection(addresses[-1], port, limit=LINE_LIMIT)


async def dial_session(
    run: ProbeRun,
    dial: Callable[[ssl.SSLContext | None], Awaitable[_C]],
    conn_of: Callable[[_C], Conn],
    mode: str,
    tls: TLSSettings,
    hostname: str,
) -> _C:
    """Open a probe's session: plain when ``mode`` is ``none``, else with the TLS reporting
    and certificate fallback of :func:`dial_with_leaf_fallback`.  Shared by the probers."""
    if mode == "none":
        return await dial(None)
    return await dial_with_leaf_fallback(run, dial, conn_of, tls, hostname)


async def dial_with_leaf_fallback(
    run: ProbeRun,
    dial: Callable[[ssl.SSLContext], Awaitable[_C]],
    conn_of: Callable[[_C], Conn],
    tls: TLSSettings,
    hostname: str,
) -> _C:
    """Run ``dial`` (connect up to and including the TLS handshake) and report TLS.

    ``dial`` is called with a verifying context.  If that handshake rejects the
    certificate chain, the rejected connection is dropped and ``dial`` runs again with a
    non-verifying context, only to learn the leaf; phases of that second dial are
    recorded only when the probe continues on it (``tls.verify`` is false).

    Emits the TLS metrics whenever a handshake happened.  Raises :class:`ProbeFailure`
    (``tls``) when ``tls.verify`` is set and the certificate is invalid.  When ``dial``
    returns a connection without TLS (STARTTLS optional and not offered), nothing is
    emitted.
    """
    try:
        ctx = client_context(tls, verify=True)
    except (OSError, ssl.SSLError) as exc:
        raise ProbeFailure("tls", f"tls: cannot load ca_file: {exc}") from None
    chain_error = ""
    try:
        result = await dial(ctx)
    except CertRejected as exc:
        chain_error = exc.message
        run.finish()
        run.trace(f"-- certificate chain rejected ({chain_error}); reconnecting without verification to read it")
        run.record_phases = not tls.verifies
        try:
            result = await dial(client_context(tls, verify=False))
        except (ProbeFailure, CertRejected) as again:
            if tls.verifies or isinstance(again, CertRejected):
                raise ProbeFailure("tls", f"tls: certificate chain does not verify: {chain_error}") from None
            raise
        finally:
            run.record_phases = True
    conn = conn_of(result)
    if conn.tls_version is None:
        return result
    leaf: LeafInfo | None = None
    if conn.peer_der:
        try:
            leaf = inspect_leaf(conn.peer_der, hostname)
        except ValueError:
            leaf = None
    report = TLSReport(
        version=conn.tls_version,
        chain_valid=not chain_error,
        chain_error=chain_error,
        leaf=leaf,
        hostname=hostname,
    )
    run.tls_report = report
    run.emit_tls(report)
    if not report.valid:
        run.trace(f"-- {report.problem()}")
        if tls.verifies:
            raise ProbeFailure("tls", f"tls: {report.problem()}")
    return result
