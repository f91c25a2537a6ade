"""The Dovecot log parser (2.3, as in Debian 12; 2.4's login lines too): logins and LMTP deliveries.

Pure: one :class:`~exporter.logs.record.LogRecord` in, counts into a
:class:`~exporter.logs.tally.Tally`.  Two shapes of the same line are read:

- through syslog or the journal, program ``dovecot``; the level is left out for ``Info``::

    dovecot: imap-login: Login: user=<u>, method=PLAIN, rip=192.0.2.1, lip=192.0.2.2, mpid=7, TLS, session=<...>
    dovecot: lmtp(u)<4567><Ab1C>: msgid=<x@y>: saved mail to INBOX

- Dovecot's own log file (``log_path``; :func:`~exporter.logs.record.parse_line` makes records of
  program ``dovecot`` of them), where every line carries its level::

    imap-login: Info: Disconnected: Connection closed (auth failed, 1 attempts in 2 secs): user=<u>, ...
    lmtp(u)<4567><Ab1C>: Info: sieve: msgid=<x@y>: stored mail into mailbox 'INBOX'

(and a syslog tag that is the service itself, ``imap-login: Login: ...``, as older setups log).

Logins (``mail_dovecot_logins_total{protocol, result, reason}``) are counted from the
``*-login`` process, one per client connection, whatever its outcome:

- ``Login: user=<...>`` is ``result="success", reason="ok"``;
- the line a login process logs when it lets go of a client that did not log in
  (``Disconnected...``, ``Aborted login...``, 2.4's ``Login aborted...``) is one
  ``result="failure"``, with the reason class (:data:`REASONS`) of the text *before* the
  ``user=<...>`` field (which the client chose), in this order:
  ``(auth failed, N attempts ...)`` or ``(authorization failed, ...)`` is ``auth_failed``;
  ``(tried to use disallowed plaintext auth)`` is ``plaintext_disallowed``; a TLS failure
  (``SSL_accept() failed``, ``TLS initialization failed``, a ``TLS handshaking`` field) is ``tls``;
  ``(no auth attempts ...)`` is ``no_auth_attempts``; a failure of the auth service, user or
  mechanism (``(user disabled)``, ``(password expired)``, ``(internal failure ...)``,
  ``(auth service reported temporary failure)``, ...) is ``other``; anything else (inactivity,
  connection closed, logged out, gave up while authenticating) is ``disconnected``.
- ``N attempts`` is *not* multiplied in: a connection that failed N passwords counts one failure.
  Dovecot logs the failed attempts of a connection only on this one line, and not at all when a
  later attempt on the same connection succeeds, so per-attempt counts could not be exact; per
  connection, every counted line is one client outcome (``sum by (reason)`` is the number of
  connections that did not log in).  A client that sends each wrong password on a new
  connection counts one failure per password.
- The auth process's detail lines (``auth: passwd-file(u,...): Password mismatch``,
  ``auth-worker(...): pam(u,...): pam_authenticate() failed``, ``unknown user``) are recognised
  but not counted: the ``*-login`` line is the one per attempt.  So are ``Login failed: ...``
  notes that come before the disconnect line.

LMTP deliveries (``mail_dovecot_lmtp_deliveries_total{result}``, :data:`LMTP_RESULTS`):
``saved mail to <box>`` (and, with Sieve, ``sieve: ... stored mail into mailbox``) is
``saved``; ``save failed to <box>``, Sieve's ``failed to store into mailbox``, and the
errors that fail a recipient before saving (``Failed to initialize user``, ``Failed to lookup
user``) are ``failed``.  With Sieve, a message filed into two mailboxes counts two saves.
"""

from __future__ import annotations

__all__ = ["LMTP_RESULTS", "PROTOCOLS", "REASONS", "RESULTS", "login_reason", "parse_dovecot"]

import re

from exporter.logs.parsers import PARSERS, ParseOptions
from exporter.logs.record import LogRecord
from exporter.logs.tally import Tally

#: ``protocol`` label values of ``mail_dovecot_logins_total``.
PROTOCOLS: tuple[str, ...] = ("imap", "pop3", "submission", "managesieve", "other")
#: ``result`` label values of ``mail_dovecot_logins_total``.
RESULTS: tuple[str, ...] = ("success", "failure")
#: ``reason`` label values of ``mail_dovecot_logins_total``.
REASONS: tuple[str, ...] = (
    "ok", "auth_failed", "no_auth_attempts", "plaintext_disallowed", "disconnected", "tls", "other",
)  # fmt: skip
#: ``result`` label values of ``mail_dovecot_lmtp_deliveries_total``.
LMTP_RESULTS: tuple[str, ...] = ("saved", "failed")

_LOGINS = "mail_dovecot_logins_total"
_LMTP = "mail_dovecot_lmtp_deliveries_total"

# Dovecot's log_timestamp in front of the log prefix: "%b %d %H:%M:%S" (Debian) or ISO 8601.
_STAMP = re.compile(r"[A-Z][a-z]{2} {1,2}\d{1,2} \d\d:\d\d:\d\d|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d\S{0,20}")
_LEVELS = frozenset({"Debug", "Info", "Warning", "Error", "Fatal", "Panic"})
_PROTOCOLS = {
    "imap-login": "imap",
    "pop3-login": "pop3",
    "submission-login": "submission",
    "managesieve-login": "managesieve",
}
# The login process's line for a client that leaves without logging in.
_GONE = ("Disconnected", "Aborted login", "Login aborted")
# Other lines of a login process that are understood and counted nowhere.
_LOGIN_INFO = (
    "Login failed",
    "proxy(",
    "Maximum number of connections",
    "Connection queue full",
    "Timeout while finishing login",
    "Logging in timed out",
    "login_trusted_networks",
    "Failed to expand",
    "Auth process",
    "Authentication",
    "SSL",
    "ssl",
    "TLS",
    "Waiting for",
    "Warning",
    "Received ",
    "Client sent",
)
_OTHER_FAILURES = (
    "(user disabled)",
    "(password expired)",
    "(login disabled)",
    "(internal failure",
    "(auth service reported temporary failure)",
    "(auth process communication failure)",
    "(proxy dest auth failed)",
    "(sent invalid base64",
    "(tried to use unsupported auth mechanism)",
    "(client didn't send a cert)",
    "(client sent an invalid cert)",
    "(cert required",
)
_TLS_FAILURES = ("SSL_accept", "TLS initialization failed", "SSL_", "TLS handshake", "ssl_", "(TLS")


def login_reason(text: str) -> str:
    """The ``reason`` of a login process's disconnect line (the text after ``imap-login: [Info: ]``)."""
    cut = text.find(": user=<")
    head, fields = (text, "") if cut < 0 else (text[:cut], text[cut:])
    if "(auth failed" in head or "(authorization failed" in head or "(auth_failed)" in head:
        return "auth_failed"
    if "plaintext auth" in head or "(auth_plaintext_disabled)" in head:
        return "plaintext_disallowed"
    if any(t in head for t in _TLS_FAILURES) or "TLS handshaking" in fields:
        return "tls"
    if "(no auth attempts" in head or "(no_auth_attempts)" in head:
        return "no_auth_attempts"
    if any(t in head for t in _OTHER_FAILURES):
        return "other"
    return "disconnected"


def _login(service: str, text: str, tally: Tally) -> bool:
    if text.startswith("Login: "):
        tally.inc(_LOGINS, (_PROTOCOLS.get(service, "other"), "success", "ok"))
        return True
    if text.startswith(_GONE):
        tally.inc(_LOGINS, (_PROTOCOLS.get(service, "other"), "failure", login_reason(text)))
        return True
    return text.startswith(_LOGIN_INFO)


def _lmtp(text: str, level: str, tally: Tally) -> bool:
    if text.startswith("sieve: "):
        text = text[7:]
    if text.startswith("msgid="):
        # "msgid=<...>: what" (deliver_log_format "msgid=%m: %$"); a Message-ID may hold ": ".
        end = text.find(">: ")
        what = text[end + 3 :] if end >= 0 else text.partition(": ")[2]
        if what.startswith(("saved mail to ", "stored mail into mailbox ")):
            tally.inc(_LMTP, ("saved",))
        elif what.startswith(("save failed to ", "failed to store into mailbox ")):
            tally.inc(_LMTP, ("failed",))
        return True
    if text.startswith(("saved mail to ", "stored mail into mailbox ")):  # deliver_log_format without msgid
        tally.inc(_LMTP, ("saved",))
        return True
    if text.startswith(("save failed to ", "failed to store into mailbox ")):
        tally.inc(_LMTP, ("failed",))
        return True
    if level in ("Error", "Fatal", "Panic") and text.startswith(("Failed to initialize user", "Failed to lookup user")):
        tally.inc(_LMTP, ("failed",))
        return True
    return level != "Info" or text.startswith(("Connect from ", "Disconnect from ", "Disconnect "))


def _parse(program: str, msg: str, tally: Tally) -> bool:
    if program.startswith("dovecot"):
        prefix, sep, text = msg.partition(": ")
        if not sep:
            return False
    else:
        prefix, text = program, msg
    level = "Info"
    if text[:1] in ("D", "I", "W", "E", "F", "P"):
        head, sep, rest = text.partition(": ")
        if sep and head in _LEVELS:
            level, text = head, rest
    paren = prefix.find("(")
    service = prefix if paren < 0 else prefix[:paren]
    if " " in service:
        # Dovecot logging to stderr (containers, journald) writes its log_timestamp first.
        stamp, _, service = service.rpartition(" ")
        if not _STAMP.fullmatch(stamp):
            return False
    if service.endswith("-login"):
        return level != "Info" or _login(service, text, tally)
    if service == "lmtp":
        return _lmtp(text, level, tally)
    # auth, auth-worker, master, imap, pop3, ...: understood, nothing to count.
    return bool(service) and service.replace("-", "").replace("_", "").isalnum()


@PARSERS.register("dovecot")
def parse_dovecot(rec: LogRecord, tally: Tally, opts: ParseOptions) -> bool:
    """Count one Dovecot record; True when the line was understood."""
    try:
        return _parse(rec.program, rec.message, tally)
    except Exception:  # a parser bug must not stop a source (the fuzz targets call _parse directly)
        return False
