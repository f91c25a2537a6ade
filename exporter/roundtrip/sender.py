"""The SMTP side of a round trip: build the probe message and send it with aiosmtplib.

:func:`send_probe` connects (clear text, STARTTLS or implicit TLS, as the route's
``send`` says), says EHLO, logs in when credentials are configured, and sends one
message.  It returns a :class:`SendResult`:

* on success, ``accepted_at`` is ``time.time()`` taken the moment the ``250`` reply to
  the end of DATA has been read: the start of the round trip's latency;
* on failure, ``reason`` is one of :data:`exporter.core.model.REASONS` (``refused``,
  ``dns``, ``timeout``, ``tls``, ``auth``, ``protocol``, ``reply_4xx``, ``reply_5xx``),
  ``code`` is the SMTP reply code that ended the dialog (None when there was none) and
  ``message`` says which step failed, with the server's text.  Secrets never appear
  in it: the password is only handed to aiosmtplib, and the text is passed through
  :func:`exporter.core.secrets.redact`.

TLS: the certificate chain is verified against ``tls_config`` (``verify``,
``ca_file``) and the host name is checked against ``tls_config.server_name`` (or the
host of ``address``), as the SMTP prober does.  With ``verify: false`` any
certificate is accepted.  For STARTTLS the server name is also sent as SNI; with
implicit TLS aiosmtplib sends the host of ``address``.

The whole dialog is bounded by ``timeout``; QUIT is given one more second at most.
"""

from __future__ import annotations

__all__ = ["RESERVED_HEADERS", "SendResult", "build_message", "send_probe"]

import asyncio
import contextlib
import email.utils
import socket
import ssl
import time
from dataclasses import dataclass

import aiosmtplib

from exporter.config import AuthConfig, SendConfig, split_address
from exporter.core.secrets import redact
from exporter.net.oauth import TokenError, token_source
from exporter.net.sasl import abort_response, choose_mechanism, initial_response, oauth_error
from exporter.net.tls import client_context, inspect_leaf, printable
from exporter.roundtrip.receiver import PROBE_HEADER

#: Header fields the probe always sets; ``send.headers`` cannot replace them.
RESERVED_HEADERS = frozenset(
    name.lower()
    for name in (
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        PROBE_HEADER,
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Auto-Submitted",
        "X-Auto-Response-Suppress",
    )
)

QUIT_WAIT = 1.0


@dataclass(frozen=True, slots=True)
class SendResult:
    accepted_at: float | None  # time.time() when the 250 to DATA arrived; None when the send failed
    code: int | None  # the last reply code: 250 on success, the one that ended the dialog otherwise
    reason: str  # "" on success
    message: str  # "" on success; what failed, for the status page (no secrets)
    reply: str = ""  # the server's text of the final reply to DATA (for example the queue id)

    @property
    def ok(self) -> bool:
        return self.accepted_at is not None


def _clean_value(value: str) -> str:
    """A header value made safe: one line, printable ASCII."""
    text = " ".join(value.split())
    return "".join(ch if 0x20 <= ord(ch) < 0x7F else "?" for ch in text)[:900]


def build_message(
    *,
    token: str,
    route: str,
    mail_from: str,
    rcpt_to: str,
    headers: dict[str, str] | None = None,
    now: float | None = None,
) -> bytes:
    """The probe message: the token in the probe header and the Message-ID, a short body."""
    domain = mail_from.rpartition("@")[2] or "localhost"
    lines = [
        f"From: <{_clean_value(mail_from)}>",
        f"To: <{_clean_value(rcpt_to)}>",
        f"Subject: mail-continuity-exporter probe {_clean_value(route)}",
        f"Date: {email.utils.formatdate(now, localtime=False, usegmt=True)}",
        f"Message-ID: <mce.{token}@{_clean_value(domain)}>",
        f"{PROBE_HEADER}: {token}",
        # automatic mail (RFC 3834 §5): no vacation or out-of-office answer to a probe;
        # Exchange honours its own suppression header rather than Auto-Submitted
        "Auto-Submitted: auto-generated",
        "X-Auto-Response-Suppress: All",
    ]
    for name, value in (headers or {}).items():
        if name.lower() not in RESERVED_HEADERS:
            lines.append(f"{name}: {_clean_value(value)}")
    lines += [
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Transfer-Encoding: 7bit",
        "",
        "This is an automated end-to-end delivery probe of mail-continuity-exporter.",
        f"Route: {_clean_value(route)}",
        "It is deleted automatically once it has been found.",
        "",
    ]
    return "\r\n".join(lines).encode("ascii")


def _reason_for_code(code: int) -> str:
    if 400 <= code < 500:
        return "reply_4xx"
    if 500 <= code < 600:
        return "reply_5xx"
    return "protocol"


async def _oauth_login(smtp: aiosmtplib.SMTP, auth: AuthConfig, host: str, port: int) -> SendResult | None:
    """AUTH XOAUTH2 or OAUTHBEARER with the credential's access token; a failure's result, or None."""
    offered = {m.upper() for m in smtp.esmtp_extensions.get("auth", "").split()}
    mechanism = choose_mechanism(offered, auth.mechanism, oauth=True)
    if mechanism is None:
        shown = printable(" ".join(sorted(offered)) or "none", 80)
        return _fail("auth", f"auth: the server does not offer XOAUTH2 or OAUTHBEARER (offered: {shown})")
    assert auth.oauth2 is not None
    try:
        token = await token_source(auth.oauth2, auth.username).token()
    except TokenError as exc:
        return _fail("auth_token", f"auth: {exc}")
    response = initial_response(mechanism, auth.username, token, host, port)
    # always after the 334: a token is longer than an SMTP command line may be (RFC 4954 §4)
    reply = await smtp.execute_command(b"AUTH", mechanism.encode())
    if reply.code == 334:
        reply = await smtp.execute_command(response.encode())
    refused = ""
    if reply.code == 334:  # the error challenge (RFC 7628 §3.2.2): answer it, the failure follows
        refused = oauth_error(reply.message)
        reply = await smtp.execute_command(abort_response(mechanism).encode())
    if reply.code != 235:
        detail = f"{refused}: " if refused else ""
        return _fail("auth", f"auth: {mechanism}: {detail}{reply.code} {printable(reply.message, 160)}", reply.code)
    return None


def _fail(reason: str, message: str, code: int | None = None) -> SendResult:
    return SendResult(None, code, reason, redact(message))


def _reply(exc: aiosmtplib.SMTPResponseException) -> str:
    return f"{exc.code} {printable(exc.message, 160)}"


def _connect_failure(exc: BaseException, host: str, port: int) -> SendResult:
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, aiosmtplib.SMTPConnectResponseError):
        return _fail(_reason_for_code(exc.code), f"banner: {_reply(exc)}", exc.code)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError):
        return _fail("timeout", f"connect: timed out connecting to {host} port {port}")
    if isinstance(cause, socket.gaierror):
        return _fail("dns", f"connect: cannot resolve {host}: {cause.strerror}")
    if isinstance(cause, ConnectionRefusedError):
        return _fail("refused", f"connect: connection refused by {host} port {port}")
    if isinstance(cause, ssl.SSLError):
        return _fail("tls", f"connect: TLS handshake failed: {cause.reason or type(cause).__name__}")
    if isinstance(cause, OSError):
        return _fail("refused", f"connect: {cause.strerror or type(cause).__name__} ({host} port {port})")
    return _fail("protocol", f"connect: {printable(str(exc), 160)}")


async def send_probe(cfg: SendConfig, message: bytes, *, timeout: float) -> SendResult:
    """Send ``message`` as the route's ``send`` says; see the module doc.  Never raises for a server's fault."""
    host, port = split_address(cfg.address)
    name = cfg.tls_config.server_name or host
    ctx: ssl.SSLContext | None = None
    if cfg.tls != "none":
        try:
            ctx = client_context(cfg.tls_config, verify=cfg.tls_config.verifies)
        except (OSError, ssl.SSLError) as exc:
            return _fail("tls", f"tls: cannot load ca_file: {exc}")
    smtp = aiosmtplib.SMTP(
        hostname=host,
        port=port,
        local_hostname=cfg.helo,
        timeout=timeout,
        use_tls=cfg.tls == "implicit",
        start_tls=False,
        tls_context=ctx,
    )
    step = "connect"
    try:
        async with asyncio.timeout(timeout):
            try:
                await smtp.connect()
            except aiosmtplib.SMTPConnectError as exc:
                return _connect_failure(exc, host, port)
            step = "ehlo"
            await smtp.ehlo()
            tls_on = cfg.tls == "implicit"
            if cfg.tls in ("starttls", "optional"):
                if smtp.supports_extension("starttls"):
                    step = "starttls"
                    assert ctx is not None
                    await smtp.starttls(server_hostname=name, tls_context=ctx)
                    tls_on = True
                    step = "ehlo"
                    await smtp.ehlo()
                elif cfg.tls == "starttls":
                    return _fail("tls", "starttls: STARTTLS is required but the server does not offer it")
            if tls_on and cfg.tls_config.verifies:
                problem = _hostname_problem(smtp, name)
                if problem:
                    return _fail("tls", f"tls: {problem}")
            if cfg.auth is not None:
                if not tls_on and cfg.tls != "none":
                    return _fail("tls", "auth: credentials are configured but the session is not encrypted")
                step = "auth"
                try:
                    if cfg.auth.oauth2 is not None:
                        failed = await _oauth_login(smtp, cfg.auth, name, port)
                        if failed is not None:
                            return failed
                    else:
                        assert cfg.auth.password is not None
                        await smtp.login(cfg.auth.username, cfg.auth.password.reveal())
                except aiosmtplib.SMTPAuthenticationError as exc:
                    return _fail("auth", f"auth: {_reply(exc)}", exc.code)
                except aiosmtplib.SMTPException as exc:
                    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | aiosmtplib.SMTPTimeoutError):
                        raise
                    return _fail("auth", f"auth: {printable(str(exc), 160)}")
            step = "mail from"
            await smtp.mail(cfg.envelope_sender)
            step = "rcpt to"
            await smtp.rcpt(cfg.rcpt_to)
            step = "data"
            response = await smtp.data(message)
            accepted_at = time.time()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(QUIT_WAIT):
                    await smtp.quit()
            return SendResult(accepted_at, response.code, "", "", printable(response.message, 160))
    except aiosmtplib.SMTPResponseException as exc:
        return _fail(_reason_for_code(exc.code), f"{step}: {_reply(exc)}", exc.code)
    except aiosmtplib.SMTPTimeoutError:
        return _fail("timeout", f"{step}: no answer within {timeout:g}s")
    except TimeoutError:
        return _fail("timeout", f"{step}: not finished within {timeout:g}s")
    except aiosmtplib.SMTPServerDisconnected:
        return _fail("protocol", f"{step}: connection closed by the server")
    except ssl.SSLError as exc:
        return _fail("tls", f"{step}: TLS error: {exc.reason or type(exc).__name__}")
    except aiosmtplib.SMTPException as exc:
        return _fail("protocol", f"{step}: {printable(str(exc), 160)}")
    except OSError as exc:
        return _fail("protocol", f"{step}: connection error: {exc.strerror or type(exc).__name__}")
    finally:
        smtp.close()


def _hostname_problem(smtp: aiosmtplib.SMTP, name: str) -> str:
    obj = smtp.get_transport_info("ssl_object")
    der = obj.getpeercert(binary_form=True) if isinstance(obj, ssl.SSLObject | ssl.SSLSocket) else None
    if not der:
        return "no server certificate"
    try:
        leaf = inspect_leaf(der, name)
    except ValueError:
        return "unparsable server certificate"
    return "" if leaf.hostname_ok else f"certificate does not match host name {name!r}"
