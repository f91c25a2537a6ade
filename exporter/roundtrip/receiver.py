"""The IMAP side of a round trip: one connection per mailbox, IDLE or polling, search, cleanup.

A :class:`Mailbox` owns one aioimaplib connection and one background task (the
*receiver loop*).  Every route that reads the same mailbox (same address, TLS,
user and password) shares it through :func:`get_mailbox`; each route attaches a
:class:`Watcher` listing the folders it searches and the probe tokens it waits for.
The loop ends, with DONE and LOGOUT, when the last watcher detaches.

The loop:

* **connects** (implicit TLS, STARTTLS or clear text, as configured), logs in, and
  reconnects after any failure with a backoff of 1 s doubling to 30 s (cut short when
  a route asks for the mailbox, see :meth:`Mailbox.ready`);
* **waits with IDLE** on the primary folder (``INBOX`` when a route lists it) when
  the server advertises IDLE and a route wants it.  Every untagged ``EXISTS`` (in IDLE
  or in the answer to any other command) ends the wait at once, and the pending
  tokens are searched for in the primary folder.  While a probe is pending, every
  folder (junk folders included) is searched every ``poll_interval``; without IDLE,
  that polling is all there is;
* **searches by header**, ``UID SEARCH HEADER X-Mail-Continuity-Probe <token>``,
  several tokens at once joined with ``OR``.  The time the answer to the SEARCH
  that first lists a message arrives is its *seen* time.  The matching messages'
  probe and ``Received`` headers are then fetched (``BODY.PEEK``, so nothing is
  marked read), and each found probe is handed to its watcher;
* **deletes** each found probe (``UID STORE +FLAGS.SILENT (\\Deleted)`` then ``UID
  EXPUNGE``; without UIDPLUS a plain ``EXPUNGE``, but only when no other message in
  the folder is flagged ``\\Deleted``, so that nothing else is ever expunged), unless
  a watcher keeps messages;
* **sweeps** every 10 minutes (and after each connect): ``UID SEARCH HEADER
  X-Mail-Continuity-Probe ""`` finds every probe message; those whose header is a
  token of ours (32 hex digits whose first 10 encode the time it was made), that no
  watcher is waiting for, and that are older than the largest ``max_age`` of the
  watchers, are deleted.  Probes of another exporter sharing the mailbox are left
  alone until they are that old.  A mailbox whose watchers keep messages is never swept,
  and of an HA pair only the exporter holding the lease sweeps (``Watcher.may_sweep``).

Every IMAP command is bounded by the mailbox's timeout; a command that does not
finish in time, a lost connection or an unexpected answer drops the connection and
the loop reconnects.  Credentials are only ever sent on the wire: the aioimaplib
logger is held at WARNING, and error texts are passed through
:func:`exporter.core.secrets.redact`.
"""

from __future__ import annotations

__all__ = [
    "PROBE_HEADER",
    "SWEEP_INTERVAL",
    "TOKEN_RE",
    "Found",
    "Mailbox",
    "MailboxSpec",
    "ReceiverError",
    "Watcher",
    "close_all",
    "get_mailbox",
    "imap_mailbox_name",
    "new_token",
    "parse_fetch",
    "token_time",
]

import asyncio
import base64
import contextlib
import email.parser
import email.policy
import logging
import math
import re
import secrets
import socket
import ssl
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import aioimaplib

from exporter.config import ImapTLS, OAuth2Config, ReceiveConfig, TLSSettings, split_address
from exporter.core.errors import Failure
from exporter.core.secrets import Secret, redact
from exporter.net.oauth import TokenError, token_source
from exporter.net.sasl import abort_response, choose_mechanism, initial_response, oauth_error
from exporter.net.tls import client_context, inspect_leaf, printable
from exporter.roundtrip.verdict import FETCHED_HEADERS

# aioimaplib logs every byte at DEBUG and every ignored untagged response at INFO.
logging.getLogger("aioimaplib").setLevel(logging.WARNING)
logging.getLogger("aioimaplib.aioimaplib").setLevel(logging.WARNING)

PROBE_HEADER = "X-Mail-Continuity-Probe"
#: Header fields of a found probe kept for the verdict, at most.
MAX_VERDICT_FIELDS = 256
_VERDICT_FIELDS = frozenset(h.lower() for h in FETCHED_HEADERS)
#: A token of ours: 10 hex digits of the Unix time it was made, then 22 random hex digits.
TOKEN_RE = re.compile(r"[0-9a-f]{32}")

#: Time between two sweeps of a mailbox.
SWEEP_INTERVAL = 600.0
#: Probe messages examined per folder and sweep (the rest wait for the next sweep).
SWEEP_LIMIT = 500
#: Tokens per SEARCH (joined with OR) and messages per FETCH.
SEARCH_BATCH = 16
FETCH_BATCH = 100
#: IDLE is renewed after this long (RFC 2177: servers may drop an IDLE after 30 minutes).
IDLE_RENEW = 25 * 60.0
#: IDLE recheck: the first search 50 ms after a probe is watched for, then every 2.5% of its
#: age, but at least 50 ms apart: an error of at most 100 ms for a probe that takes 4 s.
RECHECK_FIRST = 0.05
RECHECK_FRACTION = 0.025
#: Without IDLE and with nothing pending, a NOOP keeps the connection alive this often.
KEEPALIVE = 300.0
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
#: Time given to DONE and LOGOUT when the loop ends.
CLOSE_WAIT = 2.0
#: Longest incomplete line buffered from the server before the connection is dropped.
BUFFER_LIMIT = 1 << 20

_EXISTS_RE = re.compile(rb"^\* \d+ EXISTS")
_FETCH_START_RE = re.compile(rb"^\d+ FETCH \(")
_UID_RE = re.compile(rb"\bUID (\d+)")
_INTERNALDATE_RE = re.compile(rb'INTERNALDATE "([^"]+)"')


class ReceiverError(Failure):
    """An IMAP failure: ``reason`` is one of refused, dns, timeout, tls, auth, protocol."""


# --- tokens --------------------------------------------------------------------------------------------


def new_token(now: float | None = None) -> str:
    """A fresh probe token: the creation time (10 hex digits) and 88 random bits."""
    stamp = int(time.time() if now is None else now)
    return f"{max(0, min(stamp, 0xFFFFFFFFFF)):010x}{secrets.token_hex(11)}"


def token_time(token: str) -> float | None:
    """The Unix time a token of ours was made, or None when it is not one of ours."""
    if not TOKEN_RE.fullmatch(token):
        return None
    return float(int(token[:10], 16))


# --- mailbox names ---------------------------------------------------------------------------------------


def _mutf7(name: str) -> str:
    """RFC 3501 modified UTF-7 for a mailbox name."""
    out: list[str] = []
    buf: list[str] = []

    def flush() -> None:
        if buf:
            raw = "".join(buf).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode().rstrip("=").replace("/", ",") + "-")
            buf.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            buf.append(ch)
    flush()
    return "".join(out)


def imap_mailbox_name(name: str) -> str:
    """A mailbox name as a quoted IMAP string (modified UTF-7 for non-ASCII names)."""
    encoded = _mutf7(name).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{encoded}"'


# --- what is found ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Found:
    """A probe message found in a folder."""

    token: str
    folder: str
    uid: int
    seen_at: float  # time.time() when the SEARCH answer that listed it arrived
    received: tuple[str, ...]  # Received header values, in message order (newest first)
    internal_date: float | None
    #: The receiver's verdict fields (verdict.FETCHED_HEADERS: Authentication-Results, spam
    #: filters) as (name, value), in message order.
    fields: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class FetchRecord:
    uid: int
    internal_date: float | None
    token: str
    received: tuple[str, ...]
    fields: tuple[tuple[str, str], ...] = ()


def _parse_internaldate(text: str) -> float | None:
    try:
        return datetime.strptime(text.strip(), "%d-%b-%Y %H:%M:%S %z").timestamp()
    except ValueError:
        return None


def parse_fetch(lines: Iterable[Any]) -> list[FetchRecord]:
    """Records of an aioimaplib ``UID FETCH (UID INTERNALDATE BODY.PEEK[HEADER.FIELDS ...])`` answer."""
    records: list[FetchRecord] = []
    uid: int | None = None
    internal: float | None = None
    header = b""

    def close() -> None:
        if uid is None:
            return
        msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(header)
        token = str(msg.get(PROBE_HEADER, "") or "").strip()
        received = tuple(str(v) for v in (msg.get_all("Received") or []))
        fields = tuple(
            (str(k), str(v)) for k, v in msg.items()[:MAX_VERDICT_FIELDS] if str(k).lower() in _VERDICT_FIELDS
        )
        records.append(FetchRecord(uid, internal, token, received, fields))

    for line in lines:
        if isinstance(line, bytearray):
            header = bytes(line)
            continue
        if not isinstance(line, bytes):
            continue
        if _FETCH_START_RE.match(line):
            close()
            uid, internal, header = None, None, b""
        m = _UID_RE.search(line)
        if m:
            uid = int(m.group(1))
        d = _INTERNALDATE_RE.search(line)
        if d:
            internal = _parse_internaldate(d.group(1).decode("ascii", "replace"))
    close()
    return records


def _search_uids(lines: Iterable[Any]) -> list[int]:
    """UIDs of a SEARCH answer.  aioimaplib hands over the untagged ``* SEARCH 3 4 5``
    as ``b"3 4 5"`` (or with the keyword, depending on the path), then the completion text."""
    uids: list[int] = []
    for line in lines:
        if not isinstance(line, bytes):
            continue
        words = line.split()
        if words and words[0].upper() == b"SEARCH":
            words = words[1:]
        if words and all(w.isdigit() for w in words):
            uids.extend(int(w) for w in words)
    return uids


# --- the aioimaplib client, with the three things the loop needs ------------------------------------------


class _Protocol(aioimaplib.IMAP4ClientProtocol):  # type: ignore[misc]
    """aioimaplib's protocol, which also reports every untagged EXISTS and bounds its buffer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, conn_lost_cb: Any, on_exists: Callable[[], None]) -> None:
        super().__init__(loop, conn_lost_cb)
        self._on_exists = on_exists
        #: An AUTHENTICATE in progress: [initial response, abort response, error challenge seen or ""].
        self.sasl: list[str] | None = None

    def _continuation(self, line: bytes) -> None:
        cmd = self.pending_sync_command
        if self.sasl is None or cmd is None or cmd.name != "AUTHENTICATE" or self.transport is None:
            super()._continuation(line)
            return
        if self.sasl[0]:  # the server asks for the initial response
            response, self.sasl[0] = self.sasl[0], ""
        else:  # the error challenge (RFC 7628 §3.2.2): answer it, the failure follows
            self.sasl[2] = oauth_error(line.decode("ascii", "replace")[1:].strip()) or "refused"
            response = self.sasl[1]
        self.transport.write(response.encode("ascii") + b"\r\n")

    def data_received(self, d: bytes) -> None:
        if len(self.incomplete_line) + len(d) > BUFFER_LIMIT:
            if self.transport is not None:
                self.transport.abort()
            return
        super().data_received(d)

    def _untagged_response(self, line: bytes) -> Any:
        if _EXISTS_RE.match(line):
            self._on_exists()
        return super()._untagged_response(line)


class _Client(aioimaplib.IMAP4):  # type: ignore[misc]
    """aioimaplib's client with an SNI name of our choosing and STARTTLS."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        ssl_context: ssl.SSLContext | None,
        server_hostname: str,
        on_exists: Callable[[], None],
        on_lost: Callable[[Exception | None], None],
    ) -> None:
        self._sni = server_hostname
        self._on_exists = on_exists
        super().__init__(host, port, timeout=timeout, conn_lost_cb=on_lost, ssl_context=ssl_context)

    def create_client(
        self,
        host: str,
        port: int,
        loop: asyncio.AbstractEventLoop | None,
        conn_lost_cb: Any = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        local_loop = loop if loop is not None else asyncio.get_running_loop()
        self.protocol = _Protocol(local_loop, conn_lost_cb, self._on_exists)
        extra: dict[str, Any] = {}
        if ssl_context is not None:
            extra = {"ssl": ssl_context, "server_hostname": self._sni}
        self._client_task = local_loop.create_task(
            local_loop.create_connection(lambda: self.protocol, host, port, **extra)
        )

    async def starttls(self, ctx: ssl.SSLContext, timeout: float) -> None:
        proto = self.protocol
        if "STARTTLS" not in proto.capabilities:
            raise ReceiverError("tls", "STARTTLS is required but the server does not offer it")
        resp = await proto.execute(aioimaplib.Command("STARTTLS", proto.new_tag(), loop=proto.loop))
        if resp.result != "OK":
            raise ReceiverError("tls", f"STARTTLS refused: {_text(resp)}")
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(
            proto.transport, proto, ctx, server_hostname=self._sni, ssl_handshake_timeout=timeout
        )
        if transport is None:
            raise ReceiverError("tls", "STARTTLS: the connection closed during the handshake")
        proto.transport = transport
        await proto.capability()  # RFC 3501: capabilities are asked again after STARTTLS

    def reap(self) -> None:
        """Cancel or collect every task aioimaplib started, so none is left behind."""
        tasks: list[asyncio.Future[Any]] = [self._client_task, *self.tasks, *self.protocol.tasks]
        for task in tasks:
            if task.done():
                if not task.cancelled():
                    task.exception()
            else:
                task.cancel()


def _text(resp: Any) -> str:
    lines = [line for line in getattr(resp, "lines", []) if isinstance(line, bytes | bytearray)]
    return printable(bytes(lines[-1]) if lines else b"", 160)


# --- identity and watchers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MailboxSpec:
    """What makes two routes share one IMAP connection."""

    address: str
    tls: ImapTLS
    tls_config: TLSSettings
    username: str
    password: Secret | None
    oauth2: OAuth2Config | None = None
    mechanism: str = "auto"

    @classmethod
    def from_receive(cls, cfg: ReceiveConfig) -> MailboxSpec:
        return cls(cfg.address, cfg.tls, cfg.tls_config, cfg.username, cfg.password, cfg.oauth2, cfg.mechanism)

    @property
    def label(self) -> str:
        return f"{self.username}@{self.address}"


@dataclass(eq=False)
class Watcher:
    """One route's interest in a mailbox: where it looks, and which tokens it waits for."""

    folders: tuple[str, ...]
    junk_folders: tuple[str, ...]
    on_found: Callable[[Found], None]
    keep_messages: bool = False
    max_age: float = 3600.0
    poll_interval: float = 5.0
    idle: bool = True
    recheck: bool = True
    #: Whether this exporter may sweep now: of an HA pair, only the lease holder does.
    may_sweep: Callable[[], bool] = lambda: True
    tokens: set[str] = field(default_factory=set)

    @property
    def all_folders(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.folders, *self.junk_folders)))


_T = TypeVar("_T")


def _describe(exc: BaseException, host: str, port: int) -> ReceiverError:
    if isinstance(exc, ReceiverError):
        return exc
    if isinstance(exc, socket.gaierror):
        return ReceiverError("dns", f"connect: cannot resolve {host}: {exc.strerror}")
    if isinstance(exc, ConnectionRefusedError):
        return ReceiverError("refused", f"connect: connection refused by {host} port {port}")
    if isinstance(exc, ssl.SSLError):
        return ReceiverError("tls", f"TLS error: {exc.reason or type(exc).__name__}")
    if isinstance(exc, TimeoutError | aioimaplib.CommandTimeout):
        return ReceiverError("timeout", "timed out")
    if isinstance(exc, OSError):
        return ReceiverError("protocol", f"connection error: {exc.strerror or type(exc).__name__}")
    return ReceiverError("protocol", f"{type(exc).__name__}: {printable(str(exc), 160)}")


# --- the mailbox ------------------------------------------------------------------------------------------------


class Mailbox:
    """One IMAP mailbox, one connection, one receiver loop; see the module doc."""

    def __init__(self, spec: MailboxSpec, *, timeout: float, log: logging.Logger) -> None:
        self.spec = spec
        self.host, self.port = split_address(spec.address)
        self.timeout = timeout
        self.log = log
        self.closed = False
        self.connected = False
        self.error = ""
        self.idle_supported = False
        self.uidplus = False
        self.idling = False
        self.missing_folders: set[str] = set()
        # counters, for tests and benchmarks
        self.connects = 0
        self.cycles = 0
        self.deleted = 0
        self.swept = 0
        self._watchers: list[Watcher] = []
        self._client: _Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._kick = asyncio.Event()
        self._changed = asyncio.Event()
        self._arrived = False
        self._lost = False
        self._selected: str | None = None
        self._last_full = 0.0
        self._next_sweep = 0.0
        self._hot_since: float | None = None
        self._next_recheck = 0.0
        self._refresh_waiters: list[asyncio.Future[bool]] = []
        self._generation = 0  # of the connection, so that a late callback of an old one is ignored

    # --- API for routes ------------------------------------------------------------------------------------

    def attach(self, watcher: Watcher) -> None:
        if self.closed:
            raise RuntimeError("mailbox is closed")
        if watcher not in self._watchers:
            self._watchers.append(watcher)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"imap:{self.spec.label}")
        self.kick()

    def detach(self, watcher: Watcher) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)
        if not self._watchers:
            self._close()

    def watch(self, watcher: Watcher, token: str) -> None:
        now = time.monotonic()
        if not self.pending():
            self._last_full = now  # no full search before the next tick of the poll grid
        self._hot_since = now  # the recheck schedule starts again with each new probe
        self._next_recheck = now + RECHECK_FIRST
        watcher.tokens.add(token)
        self.kick()  # re-plan the wait (a reschedule only: IDLE is not interrupted for it)

    def unwatch(self, watcher: Watcher, token: str) -> None:
        watcher.tokens.discard(token)

    def kick(self) -> None:
        self._kick.set()

    def pending(self) -> bool:
        return any(w.tokens for w in self._watchers)

    async def ready(self, timeout: float) -> str:
        """Wait until connected; "" when it is, else why not (also after ``timeout``)."""
        deadline = time.monotonic() + timeout
        tried = False
        while not self.connected:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (tried and self.error):
                return self.error or f"not connected within {timeout:g}s"
            changed = self._changed
            self.kick()  # cut a reconnect backoff short
            try:
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                return self.error or f"not connected within {timeout:g}s"
            tried = True
        return ""

    async def refresh(self, timeout: float) -> bool:
        """Search every folder now; True when a complete search finished after this call."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._refresh_waiters.append(fut)
        self.kick()
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            return False
        finally:
            if fut in self._refresh_waiters:
                self._refresh_waiters.remove(fut)

    async def sweep_now(self, timeout: float) -> bool:
        """Sweep now (see the module doc); True when the sweep ran."""
        self._next_sweep = 0.0
        return await self.refresh(timeout)

    async def aclose(self) -> None:
        """Stop the loop (DONE, LOGOUT) and wait for it."""
        self._watchers.clear()
        self._close()
        task = self._task
        if task is not None:
            await asyncio.wait([task])

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        _forget(self)
        task = self._task
        if task is not None and not task.done():
            task.cancel()  # the loop says DONE and LOGOUT (bounded by CLOSE_WAIT) on its way out
            _CLOSING.add(task)
            task.add_done_callback(_CLOSING.discard)
        for fut in self._refresh_waiters:
            if not fut.done():
                fut.set_result(False)

    # --- callbacks from the protocol --------------------------------------------------------------------

    def _on_exists(self) -> None:
        self._arrived = True
        self._kick.set()

    def _on_lost(self, exc: Exception | None, generation: int) -> None:
        client = self._client
        if client is None or generation != self._generation:
            return  # a connection dropped earlier: old news
        self._lost = True
        self._kick.set()
        proto = client.protocol
        for cmd in [proto.pending_sync_command, *proto.pending_async_commands.values()]:
            if cmd is not None:
                cmd.close(b"connection lost", "BYE")

    # --- the loop -----------------------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = BACKOFF_FIRST
        try:
            while self._watchers and not self.closed:
                try:
                    await self._connect()
                    backoff = BACKOFF_FIRST
                    await self._serve()
                except (ReceiverError, OSError, TimeoutError, ssl.SSLError, aioimaplib.AioImapException) as exc:
                    self._failed(_describe(exc, self.host, self.port))
                except (asyncio.CancelledError, GeneratorExit):
                    raise
                except Exception as exc:  # a bug must not kill the receiver: report and reconnect
                    self.log.error("IMAP receiver error", exc_info=exc, extra={"kv": {"mailbox": self.spec.label}})
                    self._failed(ReceiverError("protocol", f"internal error: {type(exc).__name__}"))
                self._drop()
                if not self._watchers or self.closed:
                    break
                self._kick.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await self._kick.wait()
                backoff = min(backoff * 2, BACKOFF_MAX)
        finally:
            await self._logout()

    def _set_changed(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _failed(self, exc: ReceiverError) -> None:
        message = redact(exc.message)
        if message != self.error or self.connected:
            self.log.warning(
                "IMAP mailbox unavailable",
                extra={"kv": {"mailbox": self.spec.label, "reason": exc.reason, "err": message}},
            )
        self.connected = False
        self.error = f"{exc.reason}: {message}"
        waiters, self._refresh_waiters = self._refresh_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(False)
        self._set_changed()

    async def _call(self, what: str, aw: Awaitable[_T]) -> _T:
        """Await one IMAP command under the mailbox timeout."""
        try:
            async with asyncio.timeout(self.timeout):
                result = await aw
        except TimeoutError:
            raise ReceiverError("timeout", f"{what}: no answer within {self.timeout:g}s") from None
        except aioimaplib.CommandTimeout:
            raise ReceiverError("timeout", f"{what}: no answer within {self.timeout:g}s") from None
        except aioimaplib.AioImapException as exc:
            raise ReceiverError("protocol", f"{what}: {printable(str(exc), 160)}") from None
        if self._lost:
            raise ReceiverError("protocol", f"{what}: connection closed by the server")
        return result

    async def _connect(self) -> None:
        spec = self.spec
        ctx: ssl.SSLContext | None = None
        if spec.tls != "none":
            try:
                ctx = client_context(spec.tls_config, verify=spec.tls_config.verifies)
            except (OSError, ssl.SSLError) as exc:
                raise ReceiverError("tls", f"cannot load ca_file: {exc}") from None
        name = spec.tls_config.server_name or self.host
        self._lost = False
        self._arrived = False
        self._selected = None
        self._generation += 1
        generation = self._generation
        client = _Client(
            self.host,
            self.port,
            timeout=self.timeout,
            ssl_context=ctx if spec.tls == "implicit" else None,
            server_hostname=name,
            on_exists=self._on_exists,
            on_lost=lambda exc: self._on_lost(exc, generation),
        )
        self._client = client
        try:
            async with asyncio.timeout(self.timeout):
                await client.wait_hello_from_server()
        except TimeoutError:
            raise ReceiverError("timeout", f"no IMAP greeting within {self.timeout:g}s") from None
        except (OSError, ssl.SSLError, aioimaplib.AioImapException) as exc:
            raise _describe(exc, self.host, self.port) from None
        if spec.tls == "starttls" and ctx is not None:
            try:
                async with asyncio.timeout(self.timeout):
                    await client.starttls(ctx, self.timeout)
            except TimeoutError:
                raise ReceiverError("timeout", f"STARTTLS: no answer within {self.timeout:g}s") from None
            except (OSError, ssl.SSLError, aioimaplib.AioImapException) as exc:
                raise _describe(exc, self.host, self.port) from None
        if ctx is not None and spec.tls_config.verifies:
            self._check_hostname(client, name)
        if client.protocol.state == aioimaplib.NONAUTH:
            if spec.oauth2 is not None:
                await self._authenticate(client, spec)
            else:
                assert spec.password is not None
                login = client.login(aioimaplib.quoted(spec.username), spec.password.reveal())
                resp = await self._call("LOGIN", login)
                if resp.result != "OK":
                    raise ReceiverError("auth", f"LOGIN rejected: {_text(resp)}")
            await self._call("CAPABILITY", client.protocol.capability())
        self.idle_supported = client.has_capability("IDLE")
        self.uidplus = client.has_capability("UIDPLUS")
        self.connects += 1
        self.connected = True
        if self.error:
            self.log.info("IMAP mailbox available again", extra={"kv": {"mailbox": spec.label}})
        self.error = ""
        self._next_sweep = 0.0  # sweep after every connect
        self._set_changed()

    async def _authenticate(self, client: _Client, spec: MailboxSpec) -> None:
        """AUTHENTICATE XOAUTH2 or OAUTHBEARER with the credential's access token."""
        assert spec.oauth2 is not None
        await self._call("CAPABILITY", client.protocol.capability())  # AUTH= may appear only after STARTTLS
        offered = {c[5:] for c in client.protocol.capabilities if c.upper().startswith("AUTH=")}
        mechanism = choose_mechanism({m.upper() for m in offered}, spec.mechanism, oauth=True)
        if mechanism is None:
            shown = printable(" ".join(sorted(offered)) or "none", 80)
            raise ReceiverError("auth", f"the server does not offer XOAUTH2 or OAUTHBEARER (offered: {shown})")
        try:
            token = await token_source(spec.oauth2, spec.username).token()
        except TokenError as exc:
            raise ReceiverError("auth_token", str(exc)) from None
        host, port = self.host, self.port
        name = spec.tls_config.server_name or host
        protocol = client.protocol
        protocol.sasl = [initial_response(mechanism, spec.username, token, name, port), abort_response(mechanism), ""]
        try:
            command = aioimaplib.Command("AUTHENTICATE", protocol.new_tag(), mechanism, loop=protocol.loop)
            resp = await self._call(f"AUTHENTICATE {mechanism}", protocol.execute(command))
        finally:
            refused, protocol.sasl = protocol.sasl[2], None
        if resp.result != "OK":
            raise ReceiverError("auth", f"AUTHENTICATE {mechanism} rejected: {refused or _text(resp)}")
        protocol.state = aioimaplib.AUTH

    def _check_hostname(self, client: _Client, name: str) -> None:
        transport = client.protocol.transport
        obj = transport.get_extra_info("ssl_object") if transport is not None else None
        der = obj.getpeercert(binary_form=True) if isinstance(obj, ssl.SSLObject | ssl.SSLSocket) else None
        if not der:
            raise ReceiverError("tls", "no server certificate")
        try:
            ok = inspect_leaf(der, name).hostname_ok
        except ValueError:
            ok = False
        if not ok:
            raise ReceiverError("tls", f"certificate does not match host name {name!r}")

    def _drop(self) -> None:
        client, self._client = self._client, None
        self.connected = False
        self.idling = False
        self._selected = None
        if client is None:
            return
        transport = client.protocol.transport
        if transport is not None:
            transport.abort()
        client.reap()

    async def _logout(self) -> None:
        """DONE (when idling) and LOGOUT, politely but within CLOSE_WAIT; then drop the connection."""
        client = self._client
        try:
            if client is not None and self.connected and not self._lost:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(CLOSE_WAIT):
                        if self.idling:
                            self.idling = False
                            client.idle_done()
                        await client.protocol.logout()
        finally:
            self._drop()

    # --- serving --------------------------------------------------------------------------------------------

    def _poll_interval(self) -> float:
        return min((w.poll_interval for w in self._watchers), default=5.0)

    def _use_idle(self) -> bool:
        return self.idle_supported and any(w.idle for w in self._watchers)

    def _folders(self) -> list[str]:
        """Every folder of every watcher, the primary one last (so the loop ends in it)."""
        folders = list(dict.fromkeys(f for w in self._watchers for f in w.all_folders))
        primary = self._primary()
        if primary in folders:
            folders.remove(primary)
            folders.append(primary)
        return folders

    def _primary(self) -> str:
        names = [f for w in self._watchers for f in w.folders]
        for name in names:
            if name.upper() == "INBOX":
                return name
        return names[0] if names else "INBOX"

    def _junk_only(self, folder: str) -> bool:
        return not any(folder in w.folders for w in self._watchers)

    def _next_tick(self, after: float) -> float:
        """The first tick of the poll grid (multiples of poll_interval on the monotonic clock) after ``after``.

        Full searches follow a fixed grid rather than starting over with each probe, so
        that the moment a probe is sent and the next poll are unrelated: the polling
        delay is spread evenly over the interval instead of always being a whole one.
        """
        step = self._poll_interval()
        return (math.floor(after / step) + 1) * step

    def _rechecking(self) -> bool:
        return self._use_idle() and any(w.recheck and w.tokens for w in self._watchers)

    def _next_wait(self) -> float:
        """Seconds until the next recheck or full search (while a probe is pending), sweep or keepalive."""
        now = time.monotonic()
        if self.pending():
            until = self._next_tick(self._last_full) - now
            if self._rechecking():
                until = min(until, self._next_recheck - now)
        else:
            until = IDLE_RENEW if self._use_idle() else KEEPALIVE
        if self._next_sweep:
            until = min(until, self._next_sweep - now)
        return max(0.0, until)

    async def _serve(self) -> None:
        while self._watchers and not self.closed:
            if self._lost:
                raise ReceiverError("protocol", "connection closed by the server")
            now = time.monotonic()
            sweep_due = now >= self._next_sweep
            full = (
                bool(self._refresh_waiters) or sweep_due or (self.pending() and now >= self._next_tick(self._last_full))
            )
            self._arrived = False
            self._kick.clear()
            if full:
                waiters, self._refresh_waiters = self._refresh_waiters, []
                try:
                    await self._cycle(self._folders())
                except BaseException:
                    self._refresh_waiters = waiters + self._refresh_waiters
                    raise
                self._last_full = time.monotonic()
                if sweep_due:
                    self._next_sweep = time.monotonic() + SWEEP_INTERVAL
                    await self._sweep()
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(True)
            elif self.pending():
                await self._cycle([self._primary()])
            now = time.monotonic()
            if self._hot_since is not None and now >= self._next_recheck:
                self._next_recheck = now + max(RECHECK_FIRST, RECHECK_FRACTION * (now - self._hot_since))
            if self._arrived and self.pending():
                continue
            await self._wait()

    async def _wait(self) -> None:
        client = self._client
        assert client is not None
        if self._use_idle():
            await self._select(self._primary())
            if self._arrived or self._refresh_waiters or self._lost:
                return
            self.idling = True
            try:
                idle = await self._call("IDLE", client.idle_start(timeout=IDLE_RENEW + 60))
                await self._sleep(min(self._next_wait(), IDLE_RENEW))
            finally:
                self.idling = False
                if not self._lost and client.has_pending_idle():
                    client.idle_done()
            resp = await self._call("IDLE", idle)
            queue = client.protocol.idle_queue
            while not queue.empty():
                queue.get_nowait()
            if resp.result != "OK":
                raise ReceiverError("protocol", f"IDLE ended with {resp.result}: {_text(resp)}")
            return
        quiet = not self.pending()
        slept = await self._sleep(self._next_wait())
        if quiet and slept and not self.pending():
            resp = await self._call("NOOP", client.noop())
            if resp.result != "OK":
                raise ReceiverError("protocol", f"NOOP: {_text(resp)}")

    async def _sleep(self, seconds: float) -> bool:
        """Wait for ``seconds`` or for something to do; True when the time ran out."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            try:
                async with asyncio.timeout(remaining):
                    await self._kick.wait()
            except TimeoutError:
                return True
            if self._arrived or self._lost or self._refresh_waiters or self.closed or not self._watchers:
                return False
            # only a reschedule (a new token, a new watcher): plan again, without ending IDLE
            self._kick.clear()
            deadline = time.monotonic() + self._next_wait()

    async def _select(self, folder: str) -> bool:
        if self._selected == folder:
            return True
        client = self._client
        assert client is not None
        self._selected = None
        resp = await self._call(f"SELECT {folder}", client.select(imap_mailbox_name(folder)))
        if resp.result == "OK":
            self._selected = folder
            self.missing_folders.discard(folder)
            return True
        if resp.result == "NO" and self._junk_only(folder):
            if folder not in self.missing_folders:
                self.log.info(
                    "junk folder cannot be selected; skipped",
                    extra={"kv": {"mailbox": self.spec.label, "folder": folder, "err": _text(resp)}},
                )
            self.missing_folders.add(folder)
            return False
        raise ReceiverError("protocol", f"SELECT {folder}: {resp.result} {_text(resp)}")

    async def _search(self, criteria: list[str]) -> list[int]:
        client = self._client
        assert client is not None
        resp = await self._call("SEARCH", client.uid_search(*criteria, charset=None))
        if resp.result != "OK":
            raise ReceiverError("protocol", f"SEARCH: {resp.result} {_text(resp)}")
        return _search_uids(resp.lines)

    async def _fetch(self, uids: list[int], fields: tuple[str, ...]) -> list[FetchRecord]:
        client = self._client
        assert client is not None
        out: list[FetchRecord] = []
        items = f"(UID INTERNALDATE BODY.PEEK[HEADER.FIELDS ({' '.join(fields)})])"
        for i in range(0, len(uids), FETCH_BATCH):
            uid_set = ",".join(str(u) for u in uids[i : i + FETCH_BATCH])
            resp = await self._call("FETCH", client.uid("fetch", uid_set, items))
            if resp.result != "OK":
                raise ReceiverError("protocol", f"FETCH: {resp.result} {_text(resp)}")
            out.extend(parse_fetch(resp.lines))
        return out

    async def _delete(self, uids: list[int]) -> None:
        client = self._client
        assert client is not None
        uid_set = ",".join(str(u) for u in sorted(set(uids)))
        resp = await self._call("STORE", client.uid("store", uid_set, "+FLAGS.SILENT", "(\\Deleted)"))
        if resp.result != "OK":
            raise ReceiverError("protocol", f"STORE: {resp.result} {_text(resp)}")
        if self.uidplus:
            resp = await self._call("UID EXPUNGE", client.uid("expunge", uid_set))
        else:
            flagged = await self._search(["DELETED"])
            if not set(flagged) <= set(uids):
                self.log.info(
                    "other messages are flagged deleted and the server has no UIDPLUS; probe left flagged",
                    extra={"kv": {"mailbox": self.spec.label, "folder": self._selected or ""}},
                )
                return
            resp = await self._call("EXPUNGE", client.expunge())
        if resp.result != "OK":
            raise ReceiverError("protocol", f"EXPUNGE: {resp.result} {_text(resp)}")
        self.deleted += len(set(uids))

    @staticmethod
    def _criteria(tokens: list[str]) -> list[str]:
        out: list[str] = []
        for i, token in enumerate(tokens):
            if i < len(tokens) - 1:
                out.append("OR")
            out.extend(("HEADER", PROBE_HEADER, token))
        return out

    async def _cycle(self, folders: list[str]) -> None:
        self.cycles += 1
        for folder in folders:
            by_token: dict[str, list[Watcher]] = {}
            for w in self._watchers:
                if folder in w.all_folders:
                    for token in w.tokens:
                        by_token.setdefault(token, []).append(w)
            if not by_token:
                continue
            if not await self._select(folder):
                continue
            tokens = sorted(by_token)
            uids: list[int] = []
            seen_at = 0.0
            for i in range(0, len(tokens), SEARCH_BATCH):
                found = await self._search(self._criteria(tokens[i : i + SEARCH_BATCH]))
                if found and not uids:
                    seen_at = time.time()
                uids.extend(found)
            if not uids:
                continue
            records = await self._fetch(sorted(set(uids)), (PROBE_HEADER, "Received", *FETCHED_HEADERS))
            hits: list[tuple[Found, list[Watcher]]] = []
            delete: list[int] = []
            for rec in records:
                watchers = by_token.get(rec.token)
                if not watchers:
                    continue
                for w in watchers:
                    w.tokens.discard(rec.token)
                hit = Found(rec.token, folder, rec.uid, seen_at, rec.received, rec.internal_date, rec.fields)
                hits.append((hit, watchers))
                if not any(w.keep_messages for w in watchers):
                    delete.append(rec.uid)
            try:
                if delete:
                    await self._delete(delete)  # first, so that a route that ends at once leaves nothing behind
            finally:
                for found_msg, watchers in hits:
                    for w in watchers:
                        try:
                            w.on_found(found_msg)
                        except Exception as exc:  # a route's bookkeeping must not break the mailbox
                            self.log.error("probe handler failed", exc_info=exc)

    async def _sweep(self) -> None:
        if not self._watchers or any(w.keep_messages for w in self._watchers):
            return
        if not any(w.may_sweep() for w in self._watchers):
            return  # another exporter of the pair sweeps (it holds the lease)
        max_age = max(w.max_age for w in self._watchers)
        pending = {t for w in self._watchers for t in w.tokens}
        for folder in self._folders():
            if not await self._select(folder):
                continue
            uids = sorted(await self._search(["HEADER", PROBE_HEADER, '""']))[:SWEEP_LIMIT]
            if not uids:
                continue
            now = time.time()
            old: list[int] = []
            for rec in await self._fetch(uids, (PROBE_HEADER,)):
                made = token_time(rec.token)
                if made is not None and rec.token not in pending and now - made > max_age:
                    old.append(rec.uid)
            if old:
                await self._delete(old)
                self.swept += len(old)
                self.log.info(
                    "swept old probe messages",
                    extra={"kv": {"mailbox": self.spec.label, "folder": folder, "messages": len(old)}},
                )


# --- registry --------------------------------------------------------------------------------------------------

#: Loops of closed mailboxes that are still saying LOGOUT (awaited by close_all).
_CLOSING: set[asyncio.Task[None]] = set()

_REGISTRY: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[MailboxSpec, Mailbox]] = (
    weakref.WeakKeyDictionary()
)


def get_mailbox(spec: MailboxSpec, *, timeout: float, log: logging.Logger) -> Mailbox:
    """The shared :class:`Mailbox` for ``spec`` in the running event loop (created on first use)."""
    boxes = _REGISTRY.setdefault(asyncio.get_running_loop(), {})
    box = boxes.get(spec)
    if box is None or box.closed:
        box = Mailbox(spec, timeout=timeout, log=log)
        boxes[spec] = box
    return box


def _forget(box: Mailbox) -> None:
    for boxes in list(_REGISTRY.values()):
        if boxes.get(box.spec) is box:
            del boxes[box.spec]


async def close_all() -> None:
    """Close every mailbox of the running loop and wait for every receiver loop to end."""
    loop = asyncio.get_running_loop()
    boxes = _REGISTRY.pop(loop, {})
    for box in list(boxes.values()):
        await box.aclose()
    closing = [t for t in _CLOSING if t.get_loop() is loop]
    if closing:
        await asyncio.gather(*closing, return_exceptions=True)
