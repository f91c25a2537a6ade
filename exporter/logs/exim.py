"""The Exim main log parser: arrivals, deliveries, deferrals, bounces, rejects, freezes, panics.

Pure: one :class:`~exporter.logs.record.LogRecord` in, counts into a
:class:`~exporter.logs.tally.Tally`.  It reads Exim's own main log (Debian's exim4:
``/var/log/exim4/mainlog``; records of program ``exim`` from
:func:`~exporter.logs.record.parse_line`) and Exim logging through syslog (program
``exim``/``exim4``, with or without ``syslog_timestamp``, split lines ``[1/2]``).

Message lines (``<msgid> <flag> ...``; both the 16 character id of Exim < 4.97 and the
23 character one of 4.97+):

======================================  ==================================================
``<=`` arrival, ``(=`` fakereject       ``mail_log_messages_received_total``
``=>`` ``->`` ``>>`` (cutthrough)       ``mail_log_deliveries_total{transport, status="sent"}``
``==`` deferral                         ``... status="deferred"`` (not "retry time not reached")
``**`` failure                          ``... status="bounced"``
``*>`` (``-N``), ``Completed``          recognised, nothing counted
``Frozen``..., ``frozen by <user>``     ``mail_exim_frozen_total`` (``Message is frozen``: not)
======================================  ==================================================

With each delivery, deferral and failure: ``mail_log_delivery_dsn_total{status, dsn}`` (see
:func:`dsn_label`), ``mail_log_deliveries_by_domain_total{status, domain}`` when the source
has domains configured, and for a delivery with ``QT=`` (log_selector ``+queue_time``)
``mail_log_delivery_delay_seconds{transport, stage="total"}``.

Counting decisions:

* A deferral that Exim logs because the retry time was *not reached* (``retry time not reached
  [for any host]``, log_selector ``retry_defer``) is recognised but not counted: no delivery
  was attempted, and ``mail_log_deliveries_total`` counts attempts (Postfix logs nothing then).
* ``=> :blackhole:`` and ``=> discarded (system filter)`` are not deliveries: not counted.
* DSN: the enhanced status code of the remote reply on the line (``C="250 2.0.0 ..."``, or
  ``...: 550 5.1.1 ...`` after ``SMTP error from remote mail server``); without one, the class
  of the basic reply code (``250`` gives ``2.other``); without any reply (local deliveries,
  routing failures) the class of the status (sent ``2.other``, deferred ``4.other``, bounced
  ``5.other``).  So, as for Postfix, every counted delivery has exactly one DSN count.
* Rejects (``mail_exim_rejects_total{reason}``, :data:`REJECT_REASONS`): every
  ``[temporarily] rejected ...`` line of an SMTP session (connect, HELO/EHLO, MAIL, RCPT,
  DATA, after DATA, ...), ``SMTP protocol/syntax error``, ``SMTP protocol synchronization
  error``, refused connections, ``dropped: too many nonmail commands``.  ``SMTP call ...
  dropped: too many syntax or protocol errors`` / ``unrecognized commands`` is not counted
  again: the error that went over the limit was.  ``sender verify fail``, ``authenticator
  failed``, TLS errors and lost connections are recognised and not counted (no family).
  The reason class comes from the ACL's message, never from the host, sender or recipient.
* Panics (``mail_exim_panics_total``): Exim writes the panic log in the main log's format, and
  writes most panic entries (``LOG_MAIN|LOG_PANIC``: failed expansions, tainted values,
  crashed processes, scanner failures, configuration problems found at run time) to *both*
  logs.  A line is a panic when it is none of the main log forms above and its wording is a
  panic's (:data:`_PANIC`, taken from Exim's ``log_write(..., LOG_PANIC, ...)`` calls).  So
  the main log alone counts the panics Exim also writes there; the panic log read as a
  source of its own adds the panic-only entries (startup configuration errors, a main log
  that cannot be opened), but counts again a deferral or reject that Exim wrote to both.
"""

from __future__ import annotations

__all__ = [
    "DSN_CODES",
    "REJECT_REASONS",
    "STATUSES",
    "TRANSPORTS",
    "dsn_label",
    "exim_duration",
    "parse_exim",
    "transport_class",
]

import re

from exporter.logs.dsn import DSN_CODES
from exporter.logs.parsers import PARSERS, ParseOptions
from exporter.logs.record import LogRecord
from exporter.logs.tally import Tally

#: ``transport`` label values (the class of the ``T=`` transport name).
TRANSPORTS: tuple[str, ...] = ("smtp", "lmtp", "local", "pipe", "other")
#: ``status`` label values this parser counts.
STATUSES: tuple[str, ...] = ("sent", "deferred", "bounced")
#: ``reason`` label values of ``mail_exim_rejects_total``.
REJECT_REASONS: tuple[str, ...] = (
    "unknown_user", "relay_denied", "blocklist", "sender_verify", "helo", "policy", "rate_limit", "protocol", "other",
)  # fmt: skip
#: Enhanced status codes (RFC 3463) that get their own ``dsn`` label value; others are ``X.other``.

_RECEIVED = "mail_log_messages_received_total"
_DELIVERIES = "mail_log_deliveries_total"
_DSN = "mail_log_delivery_dsn_total"
_DELAY = "mail_log_delivery_delay_seconds"
_BY_DOMAIN = "mail_log_deliveries_by_domain_total"
_REJECTS = "mail_exim_rejects_total"
_FROZEN = "mail_exim_frozen_total"
_PANICS = "mail_exim_panics_total"

# Message ids: "1tJq2B-000ABC-1x" (Exim < 4.97) and "1tJq2B-00000000ABC-1x2y" (4.97+).
_MSGID = re.compile(r"[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4}(?= |$)")
# What syslog adds: a split line's "[1/2] " and, with syslog_timestamp, Exim's own timestamp.
_SYSLOG_PREFIX = re.compile(
    r"(?:\[(?P<part>\d{1,4})[/\\]\d{1,4}\] )?"
    r"(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,6})?(?: [+-]\d{4})? (?:\[\d{1,10}\] )?)?"
)
# Exim's time intervals (readconf_printtime, string_timediff): "1w2d3h4m5s", "0s", "1.234s".
_DURATION = re.compile(r"(?:(\d{1,6})w)?(?:(\d{1,6})d)?(?:(\d{1,6})h)?(?:(\d{1,6})m)?(?:(\d{1,9}(?:\.\d{1,6})?)s)?")
# The quoted confirmation C="..." (with \" and \\ escaped) of a delivery.
_CONFIRMATION = re.compile(r'"(?:[^"\\]|\\.)*"')
# An SMTP reply inside a line: "250 2.0.0 Ok", "550-5.1.1 ...", or a basic "451 Try later".
_REPLY = re.compile(r"(?:^|: )([245])\d\d(?:[ -]([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]))?(?=[ -]|$)")

# Reject reason classes, tried in order on the ACL's message (never on host, sender, recipient).
_REJECT_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("sender_verify", re.compile(r"sender verif|sender address verif|verify sender", re.I)),
    ("relay_denied", re.compile(r"relay", re.I)),
    (
        "unknown_user",
        re.compile(
            r"unrouteable address|unknown user|user unknown|no such (?:user|address|recipient|mailbox)|unknown local"
            r"|unknown recipient|recipient unknown|mailbox (?:unavailable|not found|does not exist)|no mailbox"
            r"|does not exist|invalid recipient|recipient verify fail|not a valid recipient",
            re.I,
        ),
    ),
    (
        "blocklist",
        re.compile(
            r"black ?list|block ?list|listed (?:at|in|on|by)|dnsbl|dnslist|\brbl\b|spamhaus|spamcop|blocked using",
            re.I,
        ),
    ),
    ("rate_limit", re.compile(r"rate.?limit|sending rate|too many|too fast|too frequent", re.I)),
    (
        "protocol",
        re.compile(
            r"synchroni[sz]ation|pipelining|protocol|syntax|syntactically|no helo|bare lf|out of sequence"
            r"|bad sequence",
            re.I,
        ),
    ),
    ("helo", re.compile(r"helo|ehlo", re.I)),
    (
        "policy",
        re.compile(
            r"prohibit|policy|spam|virus|malware|content|grey.?list|gray.?list|\bspf\b|dmarc|dkim|forged"
            r"|restricted characters|unqualified|not accepted|denied|blocked|not permitted|not allowed|refused"
            r"|attachment|reputation|banned|authenticat|tls required|too (?:big|large)|size",
            re.I,
        ),
    ),
)

# Panic wording, from Exim's log_write(..., LOG_PANIC / LOG_PANIC_DIE / LOG_CONFIG, ...) calls.
_PANIC = re.compile(
    r"Exim configuration error|[Ff]ailed to (?:expand|open|read|write|get|find|fsync|update|parse|fork|load|stat"
    r"|retrieve|create)|[Ee]xpansion of .{0,200}? failed|[Tt]ainted|(?:malware|spam|regex) acl condition: (?!warning)"
    r"|acl_smtp_mime: |\bDCC: |Error in system filter|SIGSEGV|SIGBUS|crashed with signal|daemon: |daemon abandoned"
    r"|listen\(\) failed|socket creation failed|re-exec of exim|\bexec of |returned non-zero status"
    r"|is not (?:untainted|absolute) after expansion|configured error code|invalid (?:value for )?message_size_limit"
    r"|bad value for|ACL for (?:not-)?QUIT returned ERROR|ACL \"warn\" with \"message\"|\"(?:drop|discard)\" verb"
    r"|EHLO/HELO response must not|Daemon cannot be run|never_users|lost privilege|found in headers"
    r"|DKIM: signing failed|WARNING: deprecated|routing loop|[Ii]nternal error|making callout connection"
    r"|[Uu]nable to (?:set|open|read|scan|expand|get|write|create)|[Cc]annot open|[Cc]ouldn't (?:open|fdopen|set|get)"
    r"|Could not open datafile|LOG_PANIC|More than one path|Wrong ownership|Stat failed|[gs]etrlimit\(|backtrace"
    r"|[Ll]ookup module|Duplicate lookup name|is not compatible with this version|dnslist query is too long"
    r"|unknown item in dnslist|delivery process count|remote transport process list|Delivery status for"
    r"|rewrite rule repeat|Rewrite of .{0,200}? yielded|too many lookups open|string too large|null conn-context"
    r"|smtp-wait database|Error/short write|TLS error \((?:D-H|RSA)|OCSP response|PEM file|bounce_message_file"
    r"|Bad db record|\(SSL_CTX_|lock for .{0,200}? (?:timed out|failed)|unknown log name|panic|PANIC"
)

# Main log lines without a message id that are understood and carry nothing to count.
_INFO_PREFIXES = (
    "SMTP connection from",
    "SMTP command timeout",
    "SMTP data timeout",
    "SMTP call from",  # "dropped: too many syntax or protocol errors": its last error was counted
    "unexpected disconnection while reading",
    "unexpected EOF while reading",
    "no host name found",
    "no IP address found",
    "Start queue run",
    "End queue run",
    "exim ",
    "pid ",
    "daemon killed",
    "TLS error on",
    "TLS error (",
    "TLS session",
    "DNS list lookup defer",
    "Spool file is locked",
    "cwd=",
    "ETRN ",
    "VRFY ",
    "EXPN ",
    "DKIM:",
    "ARC:",
    "DANE ",
    "SPF:",
    "DMARC:",
    "socket bind() to port",
    "Warning:",
    "list matching forced to fail",
    "internal scanner error (ignored)",
    "no immediate delivery",
    "spool directory space check failed",
    "log directory space check failed",
    "SSL verify error",
    "Received TLS cert status",
    "Failed to create IPv6 socket",
    "Setting IPV6_V6ONLY",
)
# Message lines (after "<msgid> ") that are understood and carry nothing to count.
_MESSAGE_INFO_PREFIXES = (
    "Completed",
    "Message is frozen",
    "Unfrozen",
    "thawed by",
    "cancelled by",
    "removed by",
    "edited by",
    "Spool file is locked",
    "no immediate delivery",
    "DKIM:",
    "ARC:",
    "SPF:",
    "DMARC:",
    "SA:",
    "Warning:",
    "SMTP connection outbound",
    "SMTP error from remote",
    "Sender identification",
    "ctasd",
    "Error while reading message with no usable sender address",
    "sender verify",
    "recipient verify",
    "original recipients ignored",
)


def exim_duration(text: str) -> float | None:
    """Seconds of an Exim interval (``1d2h``, ``3m4s``, ``1.234s``, ``0s``), or None."""
    if not text:
        return None
    m = _DURATION.fullmatch(text)
    if m is None:
        return None
    w, d, h, mi, s = m.groups()
    return int(w or 0) * 604800 + int(d or 0) * 86400 + int(h or 0) * 3600 + int(mi or 0) * 60 + float(s or 0)


def transport_class(name: str) -> str:
    """The ``transport`` label value of an Exim transport name (see :data:`TRANSPORTS`)."""
    n = name.lower()
    if "lmtp" in n:
        return "lmtp"
    if "smtp" in n:
        return "smtp"
    if "pipe" in n:
        return "pipe"
    if (
        n in ("local_delivery", "mail_spool", "maildir_home", "address_file", "address_directory")
        or "maildir" in n
        or "mbox" in n
        or n.startswith("local")
        or n.endswith("_spool")
        or "appendfile" in n
    ):
        return "local"
    return "other"


def dsn_label(text: str, status: str) -> str:
    """The ``dsn`` label value of a delivery line's text (see the module's docstring)."""
    m = _REPLY.search(text)
    if m is not None:
        if m.group(2) is not None:
            code = f"{m.group(2)}.{int(m.group(3))}.{int(m.group(4))}"
            return code if code in DSN_CODES else f"{m.group(2)}.other"
        return f"{m.group(1)}.other"
    return "2.other" if status == "sent" else "4.other" if status == "deferred" else "5.other"


def _domain(rest: str) -> str:
    """The recipient domain of a delivery line's text after the flag ("" when there is none)."""
    end = rest.find(" ")
    first = rest if end < 0 else rest[:end]
    first = first.rstrip(":")
    if "@" not in first:
        lt = rest.find(" <")
        if lt < 0:
            return ""
        gt = rest.find(">", lt)
        first = rest[lt + 2 : gt] if gt > 0 else ""
        if "@" not in first:
            return ""
    domain = first.rpartition("@")[2].lower().rstrip(">")
    return domain if _HOSTNAME.fullmatch(domain) else ""


_HOSTNAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9])?")


def _field(rest: str, key: str) -> str:
    """The value of `` key=value`` in ``rest`` (first occurrence), or ""."""
    i = rest.find(key)
    if i < 0:
        return ""
    i += len(key)
    j = rest.find(" ", i)
    return rest[i:] if j < 0 else rest[i:j]


def _delivery(rest: str, status: str, tally: Tally, opts: ParseOptions) -> None:
    """Count a ``=>``/``->``/``>>`` (sent), ``==`` (deferred) or ``**`` (bounced) line's text after the flag."""
    if status == "sent":
        # Routing fields, then the remote's confirmation C="..." (quoted), then QT= and DT=.
        c = rest.find(' C="')
        if c >= 0:
            q = _CONFIRMATION.match(rest, c + 3)
            end = q.end() if q is not None else len(rest)
            head, reply, tail = rest[:c], rest[c + 4 : end - 1], rest[end:]
        else:
            head, reply, tail = rest, "", rest
    else:
        # Routing fields, then ": " and the error (with the remote's reply, if any).
        colon = rest.find(": ")
        head, reply, tail = (rest, "", "") if colon < 0 else (rest[:colon], rest[colon + 2 :], "")
    transport = transport_class(_field(head, " T="))
    tally.inc(_DELIVERIES, (transport, status))
    tally.inc(_DSN, (status, dsn_label(reply, status)))
    if tail:
        qt_at = tail.rfind(" QT=")
        if qt_at >= 0:
            qt = exim_duration(_field(tail[qt_at:], " QT="))
            if qt is not None:
                tally.observe(_DELAY, (transport, "total"), qt)
    if opts.by_domain:
        tally.inc(_BY_DOMAIN, (status, opts.domain_label(_domain(rest))))


def _reject_reason(what_and_text: str) -> str:
    """Reason class of the text after ``rejected `` (or the whole line of a special form)."""
    if what_and_text.startswith(("EHLO", "HELO", '"EHLO', '"HELO')):
        return "helo"
    i = 0
    if what_and_text.startswith(("RCPT <", "MAIL <")):
        i = max(what_and_text.find(">", 5), 0)
    colon = what_and_text.find(": ", i)
    text = what_and_text[colon + 2 :] if colon >= 0 else ""
    for reason, rule in _REJECT_RULES:
        if rule.search(text):
            return reason
    return "other"


def _special_reject(msg: str) -> str | None:
    """Reason class of a reject line that has no ``rejected <what>``, or None if ``msg`` is none."""
    if msg.startswith(("SMTP protocol synchronization error", "SMTP protocol error in", "SMTP syntax error in")):
        return "protocol"
    if msg.startswith("SMTP call from") and "dropped: too many nonmail commands" in msg:
        return "protocol"
    if msg.startswith("unqualified ") and " rejected: " in msg:
        return "policy"
    if msg.startswith("too many recipients:"):
        return "rate_limit"
    if msg.startswith(("Connection from ", "connection from ", "refused connection from ")) and "refused" in msg:
        if "too many" in msg:
            return "rate_limit"
        return "other" if "load average" in msg else "policy"
    return None


def _rejected(msg: str) -> int:
    """Index just after ``rejected `` of an SMTP reject line, or -1."""
    i = msg.find("rejected ")
    while i >= 0:
        if i == 0 or msg[i - 1] == " ":
            return i + 9
        i = msg.find("rejected ", i + 1)
    return -1


def _connection_line(msg: str, tally: Tally) -> bool:
    """A line without a message id (or a message line of no message form): rejects, info, panics."""
    special = _special_reject(msg)
    if special is not None:
        tally.inc(_REJECTS, (special,))
        return True
    if (msg.startswith(_INFO_PREFIXES) and "daemon abandoned" not in msg) or (
        msg.startswith("[") and "SSL verify error" in msg
    ):
        return True
    if " sender verify " in msg or " authenticator failed" in msg or " incomplete transaction " in msg:
        return True
    if ": discarded by " in msg:
        return True
    at = _rejected(msg)
    if at >= 0 and (msg.startswith(("H=", "U=", "rejected ", "[")) or " H=" in msg[:at]):
        tally.inc(_REJECTS, (_reject_reason(msg[at:]),))
        return True
    if msg.startswith(("H=", "U=")) or " router: skipped error" in msg or msg.endswith(": error ignored"):
        return True  # a session's or a delivery's host notes (Warning:, Connection refused, ...)
    if _PANIC.search(msg):
        tally.inc(_PANICS)
        return True
    return False


def _parse(msg: str, tally: Tally, opts: ParseOptions) -> bool:
    if msg[:1] == "[" or msg[:1].isdigit():
        m = _SYSLOG_PREFIX.match(msg)
        if m is not None and m.end():
            part = m.group("part")
            if part is not None and part != "1":
                return True  # the continuation of a line Exim's syslog split
            msg = msg[m.end() :]
    idm = _MSGID.match(msg) if len(msg) > 16 and msg[6] == "-" else None
    if idm is None:
        return _connection_line(msg, tally)
    rest = msg[idm.end() + 1 :]
    flag = rest[:3]
    if len(flag) == 3 and flag[2] == " ":
        body = rest[3:]
        f = flag[:2]
        if f in ("=>", "->", ">>"):
            if body.startswith((":blackhole:", "discarded ")):
                return True
            _delivery(body, "sent", tally, opts)
            return True
        if f == "==":
            if "retry time not reached" in body:
                return True
            _delivery(body, "deferred", tally, opts)
            return True
        if f == "**":
            _delivery(body, "bounced", tally, opts)
            return True
        if f in ("<=", "(="):
            tally.inc(_RECEIVED)
            return True
        if f == "*>":
            return True
    if rest.startswith("Frozen") or rest.startswith("frozen by "):
        tally.inc(_FROZEN)
        return True
    if rest.startswith(_MESSAGE_INFO_PREFIXES):
        return True
    return _connection_line(rest, tally)


@PARSERS.register("exim")
def parse_exim(rec: LogRecord, tally: Tally, opts: ParseOptions) -> bool:
    """Count one Exim main log (or syslog) record; True when the line was understood."""
    try:
        return _parse(rec.message, tally, opts)
    except Exception:  # a parser bug must not stop a source (the fuzz targets call _parse directly)
        return False
