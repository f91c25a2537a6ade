"""The Postfix log parser: one pure function over a :class:`~exporter.logs.record.LogRecord`.

:func:`parse_postfix` dispatches on the daemon, the last component of the syslog tag
(``postfix/smtpd``, ``postfix-out/smtp``, ``postfix/submission/smtpd`` all work: any
``syslog_name``, any instance), then reads the message with a few startswith tests and at
most one or two anchored regular expressions.  Formats are those of Postfix 3.7 (Debian 12),
with the 3.10 form of ``lost connection after`` (prefixed by a queue id or ``NOQUEUE``) too.

What counts where (every line counts at most once per family):

- **smtpd** (also ``submission``/``smtps`` daemons of old-style ``master.cf`` names):
  ``connect from`` and ``disconnect from``; ``lost connection after STAGE`` by stage
  (:data:`LOST_STAGES`; ``timeout after`` and ``too many errors after`` are recognised but
  not counted); ``reject:`` with or without a queue id, smtpd's own ``milter-reject:``
  (also counted as a milter action, see cleanup) and ``proxy-reject:`` by reply code
  (:data:`REJECT_CODES`) and reason class (:data:`REJECT_REASONS`, from the reply text only,
  never from the client-controlled ``from=``/``to=``/``helo=`` fields; milter and proxy
  rejects that match no class are ``policy``); ``reject_warning:`` is not a reject;
  ``warning: ...: SASL <mech> authentication failed`` once per line (Cyrus's companion
  ``SASL authentication failure`` warning is not counted).
- **TLS**: ``<trust> TLS connection established from|to ...: <protocol> with cipher`` by
  direction and protocol (:data:`TLS_PROTOCOLS`), from smtpd (inbound), smtp/lmtp
  (outbound) and tlsproxy (inbound only: with ``smtp_tls_connection_reuse`` the smtp
  client logs the outbound handshake tlsproxy made for it again, so tlsproxy's ``to`` lines
  would count it twice).  ``TLS connection reused`` is not a new connection.  A failed
  handshake counts once, at the one line Postfix's TLS library always writes for it,
  ``SSL_accept error from`` (inbound) or ``SSL_connect error to`` (outbound), in whichever
  process ran it; its companions (``warning: TLS library problem``, smtpd's ``lost
  connection after STARTTLS`` -- still a lost connection --, tlsproxy's ``TLS handshake
  failed for``, smtp's ``Cannot start TLS: handshake failure``) are not counted again.
- **Delivery agents** (smtp, lmtp, local, virtual, pipe; error, retry, discard, qmgr and
  unknown daemons as transport ``other``): each ``to=<...>, relay=..., delay=...,
  delays=a/b/c/d, dsn=..., status=...`` line is one recipient-delivery attempt and counts
  once in ``mail_log_deliveries_total{transport,status}``, in
  ``mail_log_delivery_dsn_total{status,dsn}`` (:data:`DSN_LABELS`), and with
  ``by_domain`` in ``mail_log_deliveries_by_domain_total``; ``status=sent`` also observes
  ``delay=`` (stage ``total``) and the four ``delays=`` parts (:data:`DELAY_STAGES`).
  ``status=deliverable``/``undeliverable`` are address-verification probes (the probe
  message is never delivered), recognised and not counted.  A recipient address with a
  ``>`` in it (a quoted local part) is not read: such a line is "not understood".
- **qmgr**: ``removed``; ``from=<...>, status=expired|force-expired, returned to sender``
  counts ``mail_postfix_qmgr_expired_total`` only: it is one line per *message* after its
  recipients' last attempts were already counted as deferred, so counting it as a delivery
  too would count an attempt twice.  ``(queue active)`` is not an arrival: a deferred
  message logs it again on every retry.
- **cleanup**: ``message-id=`` counts ``mail_log_messages_received_total``: every message,
  from smtpd, pickup, bounce or qmqpd, passes cleanup once, and cleanup logs ``message-id=``
  for it even when the header is missing (``message-id=<>``); ``resent-message-id=`` is a
  companion.  A message that cleanup then rejects or a milter discards has been counted
  too (those are counted below), and one with two Message-ID headers counts twice.
  ``reject:`` (header/body checks, mime errors), ``milter-reject:`` and
  ``milter-<where>-reject:`` count ``mail_postfix_cleanup_rejects_total``;
  ``milter-reject|discard|hold|quarantine:`` count ``mail_postfix_cleanup_milter_actions_total``
  (:data:`MILTER_ACTIONS`) -- so do smtpd's milter actions at CONNECT..RCPT, which cleanup
  never sees, so that the family holds every milter action.  header_checks ``hold:`` and
  ``discard:`` are not milter actions and are not counted.
- **bounce**: ``sender|postmaster non-delivery|delay|delivery status notification``.
- **postscreen**: :data:`POSTSCREEN_ACTIONS` x :data:`POSTSCREEN_TESTS`: ``CONNECT from``
  (connect), ``PASS NEW``/``PASS OLD``, ``ALLOWLISTED``/``WHITELISTED``,
  ``DENYLISTED``/``BLACKLISTED``, ``NOQUEUE: reject:`` and ``reject: connect`` (reject; test
  dnsbl for ``blocked using``), ``DISCONNECT`` (drop: the session ended at postscreen and
  was not handed to smtpd), the test failures ``DNSBL rank``, ``PREGREET``, ``BARE
  NEWLINE``, ``NON-SMTP COMMAND``, ``COMMAND PIPELINING`` (action fail), and ``HANGUP``
  (action other: Postfix says a hangup is not a test failure), ``COMMAND ... LIMIT`` and
  ``ALLOWLIST VETO`` (other, none).

Lines Postfix writes that carry nothing to count (``warning:``, ``statistics:``,
``client=``, ``(queue active)``, ``connect to``, a delivery agent's queue-id trouble
reports, master's start and reload, ...) return True; anything else returns False.  The
parser never raises: :func:`parse_postfix` wraps :func:`parse` (which tests and fuzzers call
directly, so that a bug is not hidden) and returns False on any exception.
"""

from __future__ import annotations

__all__ = [
    "DELAY_STAGES",
    "DELIVERY_STATUSES",
    "DSN_CODES",
    "DSN_LABELS",
    "LABEL_SETS",
    "LOST_STAGES",
    "MILTER_ACTIONS",
    "POSTSCREEN_ACTIONS",
    "POSTSCREEN_TESTS",
    "REJECT_CODES",
    "REJECT_REASONS",
    "TLS_DIRECTIONS",
    "TLS_PROTOCOLS",
    "TRANSPORTS",
    "classify_reject",
    "dsn_label",
    "parse",
    "parse_postfix",
]

import re
from collections.abc import Callable

from exporter.logs.dsn import DSN_CODES
from exporter.logs.parsers import PARSERS, ParseOptions
from exporter.logs.record import LogRecord
from exporter.logs.tally import Tally

# --- bounded label values ---------------------------------------------------------------------

#: Transport classes of ``mail_log_deliveries_total`` and ``mail_log_delivery_delay_seconds``.
TRANSPORTS = frozenset({"smtp", "lmtp", "local", "virtual", "pipe", "other"})
#: Statuses of a recipient-delivery attempt.
DELIVERY_STATUSES = frozenset({"sent", "deferred", "bounced", "expired"})
#: Stages of ``mail_log_delivery_delay_seconds``: ``delay=`` and the four ``delays=`` parts.
DELAY_STAGES = ("total", "before_queue", "in_queue", "connection", "transmission")
#: Enhanced status codes that keep their own label value; any other is ``<class>.other``.
#: Every value of the ``dsn`` label.
DSN_LABELS = DSN_CODES | {"2.other", "4.other", "5.other", "other"}
#: The SMTP stage of ``mail_postfix_smtpd_lost_connections_total``.
LOST_STAGES = frozenset({
    "connect", "helo", "ehlo", "starttls", "auth", "mail", "rcpt", "data", "end-of-data", "bdat",
    "rset", "quit", "noop", "vrfy", "unknown", "other",
})  # fmt: skip
#: Reply codes of ``mail_postfix_smtpd_rejects_total``: 400..599, else ``other``.
REJECT_CODES = frozenset({str(code) for code in range(400, 600)} | {"other"})
#: Reason classes of ``mail_postfix_smtpd_rejects_total`` (see :func:`classify_reject`).
REJECT_REASONS = frozenset({
    "unknown_user", "relay_denied", "blocklist", "policy", "greylist", "helo", "sender_domain",
    "client_hostname", "rate_limit", "other",
})  # fmt: skip
TLS_DIRECTIONS = frozenset({"inbound", "outbound"})
TLS_PROTOCOLS = frozenset({"TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3", "other"})
MILTER_ACTIONS = frozenset({"reject", "discard", "hold", "quarantine", "other"})
POSTSCREEN_ACTIONS = frozenset({
    "connect", "pass_new", "pass_old", "allowlisted", "denylisted", "reject", "drop", "fail", "other",
})  # fmt: skip
POSTSCREEN_TESTS = frozenset({"dnsbl", "pregreet", "hangup", "bare_newline", "non_smtp_command", "pipelining", "none"})

# --- families (the metrics contract, exporter/core/metrics.py) ------------------------------------

_RECEIVED = "mail_log_messages_received_total"
_DELIVERIES = "mail_log_deliveries_total"
_DSN = "mail_log_delivery_dsn_total"
_DELAY = "mail_log_delivery_delay_seconds"
_BY_DOMAIN = "mail_log_deliveries_by_domain_total"
_CONNECT = "mail_postfix_smtpd_connections_total"
_DISCONNECT = "mail_postfix_smtpd_disconnections_total"
_LOST = "mail_postfix_smtpd_lost_connections_total"
_REJECTS = "mail_postfix_smtpd_rejects_total"
_SASL = "mail_postfix_smtpd_sasl_failures_total"
_TLS = "mail_postfix_tls_connections_total"
_TLS_FAIL = "mail_postfix_tls_failures_total"
_REMOVED = "mail_postfix_qmgr_removed_total"
_EXPIRED = "mail_postfix_qmgr_expired_total"
_CLEANUP_REJECTS = "mail_postfix_cleanup_rejects_total"
_MILTER = "mail_postfix_cleanup_milter_actions_total"
_BOUNCE = "mail_postfix_bounce_notices_total"
_POSTSCREEN = "mail_postfix_postscreen_actions_total"

#: The fixed label values of every family this parser counts, in the contract's order after
#: ``source`` (``None`` for the ``domain`` label, bounded by :class:`ParseOptions` instead).
LABEL_SETS: dict[str, tuple[frozenset[str] | None, ...]] = {
    _RECEIVED: (),
    _DELIVERIES: (TRANSPORTS, DELIVERY_STATUSES),
    _DSN: (DELIVERY_STATUSES, DSN_LABELS),
    _DELAY: (TRANSPORTS, frozenset(DELAY_STAGES)),
    _BY_DOMAIN: (DELIVERY_STATUSES, None),
    _CONNECT: (),
    _DISCONNECT: (),
    _LOST: (LOST_STAGES,),
    _REJECTS: (REJECT_CODES, REJECT_REASONS),
    _SASL: (),
    _TLS: (TLS_DIRECTIONS, TLS_PROTOCOLS),
    _TLS_FAIL: (TLS_DIRECTIONS,),
    _REMOVED: (),
    _EXPIRED: (),
    _CLEANUP_REJECTS: (),
    _MILTER: (MILTER_ACTIONS,),
    _BOUNCE: (),
    _POSTSCREEN: (POSTSCREEN_ACTIONS, POSTSCREEN_TESTS),
}

# --- regular expressions (all anchored: used with .match) ----------------------------------------

# A queue id, short (hex) or long (Postfix's vowel-free base 52), or NOQUEUE, and its ": ".  No
# lower-case vowels: "warning: ", "fatal: ", "statistics: ", "table ..." are never queue ids.
_ID = r"[0-9A-Zb-df-hj-np-tv-z]{5,32}"
_QID = re.compile(rf"(?:{_ID}|NOQUEUE): ")
_DELIVERY = re.compile(
    rf"{_ID}: to=<([^>]*)>,(?: orig_to=<[^>]*>,)? relay=[^,]*,(?: conn_use=\d+,)?"
    r" delay=([0-9.]{1,16}), delays=([0-9.]{1,16})/([0-9.]{1,16})/([0-9.]{1,16})/([0-9.]{1,16}),"
    r" dsn=(\S+?), status=([a-z-]+)"
)
_TLS_LINE = re.compile(r"\w+ TLS connection (established|reused) (from|to) \S+?(?: to \S+)?: (\S+) with cipher ")
_SASL_FAILED = re.compile(r"warning: \S+: SASL \S+ authentication failed")
_STAGE = re.compile(r"(?:lost connection|timeout|too many errors) after ([A-Z-]+)")
# "RCPT from host[addr]: 550 5.1.1 ..." (the reply code is missing in cleanup-style milter texts).
_REJECT_HEAD = re.compile(r"[A-Z][A-Z-]*(?: content)? from \S*?: (?:([45]\d\d) )?")
_PROXY_HEAD = re.compile(r"[A-Z][A-Z-]*: (?:([45]\d\d) )?")
_NOTIFICATION = re.compile(rf"{_ID}: (?:sender|postmaster) (?:non-delivery|delay|delivery status) notification: ")
_NAMADDR_PORT = re.compile(r"\S+\[[^\]\s]*\]:\d+: ")

_LOST_STAGE = {
    "CONNECT": "connect", "HELO": "helo", "EHLO": "ehlo", "STARTTLS": "starttls", "AUTH": "auth",
    "MAIL": "mail", "RCPT": "rcpt", "DATA": "data", "END-OF-MESSAGE": "end-of-data",
    "END-OF-DATA": "end-of-data", "BDAT": "bdat", "RSET": "rset", "QUIT": "quit", "NOOP": "noop",
    "VRFY": "vrfy", "UNKNOWN": "unknown",
}  # fmt: skip
_TLS_PROTOCOL = {p: p for p in TLS_PROTOCOLS}
_DELAY_LABELS: dict[str, tuple[tuple[str, str], ...]] = {
    t: tuple((t, stage) for stage in DELAY_STAGES) for t in TRANSPORTS
}

# Message starts that every daemon may write and that carry nothing to count.
_HARMLESS = (
    "warning: ", "fatal: ", "panic: ", "error: ", "statistics: ", "table ", "cache ", "daemon started",
    "reload ", "terminating on signal", "using backwards-compatible default setting",
    "starting the Postfix mail system", "stopping the Postfix mail system",
    "refreshing the Postfix mail system",
)  # fmt: skip
# smtpd lines without a queue id that carry nothing to count.
_SMTPD_HARMLESS = (
    "timeout after ", "too many errors after ", "improper command pipelining after ", "proxy-accept: ",
    "setting up TLS connection ", "SSL_accept:", "discarding EHLO keywords", "bare <LF> received after ",
)  # fmt: skip
# "<queue id or NOQUEUE>: <action>: ..." actions of smtpd that are not counted.
_SMTPD_ACTIONS = frozenset({
    "reject_warning", "permit", "bcc", "delay", "discard", "filter", "hangup", "hold", "info", "redirect",
    "warn", "abort",  # abort: TLS from ...: the client certificate was missing or not trusted
})  # fmt: skip
# "<queue id>: <action>: ..." of header/body checks in cleanup that are not counted.
_CLEANUP_ACTIONS = frozenset({
    "warning", "info", "filter", "pass", "discard", "hold", "redirect", "replace", "prepend", "bcc",
    "strip", "dunno", "ignore", "delay",
})  # fmt: skip
# Outbound lines of smtp/lmtp without a queue id that carry nothing to count.
_AGENT_HARMLESS = (
    "connect to ", "Host offered STARTTLS", "setting up TLS connection ", "SSL_connect:",
    "certificate verification failed for ", "server certificate verification failed for ",
)  # fmt: skip

Handler = Callable[[str, Tally, ParseOptions], bool]


# --- helpers ---------------------------------------------------------------------------------------


def dsn_label(dsn: str) -> str:
    """The bounded label value of an enhanced status code: itself if common, else ``<class>.other``."""
    if dsn in DSN_CODES:
        return dsn
    head = dsn[:2]
    if head in ("2.", "4.", "5."):
        return head + "other"
    return "other"


def classify_reject(text: str, fallback: str = "other") -> str:
    """The reason class of a reject reply text (without the client's ``from=``... fields)."""
    t = text.lower()
    if "blocked using" in t:
        return "blocklist"
    if "greylist" in t or "graylist" in t or "postgrey" in t:
        return "greylist"
    if "relay access denied" in t:
        return "relay_denied"
    if "user unknown" in t or "undeliverable address" in t or "mailbox unavailable" in t:
        return "unknown_user"
    if "helo command rejected" in t:
        return "helo"
    if "sender address rejected: domain " in t:
        return "sender_domain"
    if "cannot find your" in t:
        return "client_hostname"
    if "rate limit" in t or "ratelimit" in t or "too many " in t or "too much mail" in t:
        return "rate_limit"
    if "rejected:" in t or "access denied" in t or "policy" in t:
        return "policy"
    return fallback


def _reply_text(text: str) -> str:
    """The reply of a reject line, without the client-controlled fields smtpd appends."""
    end = text.find("; from=<")
    if end < 0:
        end = text.find("; to=<")
        if end < 0:
            end = text.find("; proto=")
    return text if end < 0 else text[:end]


def _reject(tail: str, tally: Tally, head: re.Pattern[str], fallback: str) -> None:
    m = head.match(tail)
    code = "other"
    if m is not None:
        code = m.group(1) or "other"
        tail = tail[m.end() :]
    tally.inc(_REJECTS, (code, classify_reject(_reply_text(tail), fallback)))


def _lost(rest: str, tally: Tally) -> bool:
    m = _STAGE.match(rest)
    if m is None:
        return False
    if rest[0] == "l":  # lost connection (timeouts and error limits are not counted)
        tally.inc(_LOST, (_LOST_STAGE.get(m.group(1), "other"),))
    return True


def _tls(msg: str, tally: Tally, outbound: bool = True) -> bool:
    m = _TLS_LINE.match(msg)
    if m is None:
        return False
    if m.group(1) == "established":
        if m.group(2) == "from":
            tally.inc(_TLS, ("inbound", _TLS_PROTOCOL.get(m.group(3), "other")))
        elif outbound:
            tally.inc(_TLS, ("outbound", _TLS_PROTOCOL.get(m.group(3), "other")))
    return True


def _tls_failure(msg: str, tally: Tally) -> bool:
    if msg.startswith("SSL_accept error from "):
        tally.inc(_TLS_FAIL, ("inbound",))
        return True
    if msg.startswith("SSL_connect error to "):
        tally.inc(_TLS_FAIL, ("outbound",))
        return True
    return False


def _delivery(m: re.Match[str], transport: str, tally: Tally, opts: ParseOptions) -> bool:
    status = m.group(8)
    if status not in DELIVERY_STATUSES:
        # Address verification probes: the probe never leaves the queue, nothing was delivered.
        return status in ("deliverable", "undeliverable")
    if status == "sent":
        try:
            values = (float(m.group(2)), float(m.group(3)), float(m.group(4)), float(m.group(5)), float(m.group(6)))
        except ValueError:
            return False
        for labels, value in zip(_DELAY_LABELS[transport], values, strict=True):
            tally.observe(_DELAY, labels, value)
    tally.inc(_DELIVERIES, (transport, status))
    tally.inc(_DSN, (status, dsn_label(m.group(7))))
    if opts.by_domain:
        tally.inc(_BY_DOMAIN, (status, opts.domain_label(m.group(1).rpartition("@")[2])))
    return True


# --- daemons ----------------------------------------------------------------------------------------


def _common(msg: str) -> bool:
    return msg.startswith(_HARMLESS)


def _smtpd(msg: str, tally: Tally, opts: ParseOptions) -> bool:
    if msg.startswith("connect from "):
        tally.inc(_CONNECT)
        return True
    if msg.startswith("disconnect from "):
        tally.inc(_DISCONNECT)
        return True
    if msg.startswith("warning: "):
        if _SASL_FAILED.match(msg) is not None:
            tally.inc(_SASL)
        return True
    m = _QID.match(msg)
    if m is not None:
        return _smtpd_queued(msg[m.end() :], tally)
    if msg.startswith("lost connection after "):
        return _lost(msg, tally)
    if msg.startswith(("Anonymous TLS", "Trusted TLS", "Untrusted TLS", "Verified TLS")):
        return _tls(msg, tally)
    if msg.startswith("proxy-reject: "):
        _reject(msg[14:], tally, _PROXY_HEAD, "policy")
        return True
    return msg.startswith(_SMTPD_HARMLESS) or _tls_failure(msg, tally) or _common(msg)


def _smtpd_queued(rest: str, tally: Tally) -> bool:
    """smtpd lines after ``<queue id>: `` or ``NOQUEUE: ``."""
    if rest.startswith("client="):
        return True
    if rest.startswith("reject: "):
        _reject(rest[8:], tally, _REJECT_HEAD, "other")
        return True
    if rest.startswith("milter-"):
        action, sep, tail = rest[7:].partition(": ")
        if not sep:
            return False
        if action == "reject":
            _reject(tail, tally, _REJECT_HEAD, "policy")
        tally.inc(_MILTER, (action if action in MILTER_ACTIONS else "other",))
        return True
    if rest.startswith(("lost connection after ", "timeout after ", "too many errors after ")):
        return _lost(rest, tally)
    action, sep, _ = rest.partition(": ")
    return bool(sep) and action in _SMTPD_ACTIONS


def _agent(transport: str, outbound_tls: bool) -> Handler:
    """The handler of a delivery agent of transport class ``transport``."""

    def parse_agent(msg: str, tally: Tally, opts: ParseOptions) -> bool:
        m = _DELIVERY.match(msg)
        if m is not None:
            return _delivery(m, transport, tally, opts)
        return _agent_other(msg, tally, outbound_tls)

    return parse_agent


def _agent_other(msg: str, tally: Tally, outbound_tls: bool) -> bool:
    if msg.startswith(("Verified TLS", "Trusted TLS", "Untrusted TLS", "Anonymous TLS")):
        return _tls(msg, tally, outbound_tls)
    if _tls_failure(msg, tally) or msg.startswith(_AGENT_HARMLESS) or _common(msg):
        return True
    m = _QID.match(msg)
    if m is not None:
        # A delivery agent's own trouble reports ("host ... said:", "lost connection with ...",
        # "conversation with ... timed out", "enabling PIX workarounds", ...).  A "to=<" that the
        # delivery pattern did not read is a format we do not know.
        return not msg.startswith("to=<", m.end())
    return _NAMADDR_PORT.match(msg) is not None  # TLS details: "host[addr]:25: Matched ..."


def _qmgr(msg: str, tally: Tally, opts: ParseOptions) -> bool:
    m = _QID.match(msg)
    if m is None:
        return _common(msg)
    rest = msg[m.end() :]
    if rest.startswith("from=<"):
        if rest.endswith(" (queue active)"):
            return True
        if rest.endswith((", status=expired, returned to sender", ", status=force-expired, returned to sender")):
            tally.inc(_EXPIRED)
            return True
        return False
    if rest == "removed":
        tally.inc(_REMOVED)
        return True
    if rest.startswith("to=<"):
        d = _DELIVERY.match(msg)
        return d is not None and _delivery(d, "other", tally, opts)
    return rest.startswith(("skipped, still being delivered", "warning: "))


def _cleanup(msg: str, tally: Tally, opts: ParseOptions) -> bool:
    m = _QID.match(msg)
    if m is None:
        return _common(msg)
    rest = msg[m.end() :]
    if rest.startswith("message-id="):
        tally.inc(_RECEIVED)
        return True
    if rest.startswith("resent-message-id="):
        return True
    action, sep, _ = rest.partition(": ")
    if not sep:
        return False
    if action == "reject":
        tally.inc(_CLEANUP_REJECTS)
        return True
    if action.startswith("milter-"):
        what = action[7:]
        if what == "reject":
            tally.inc(_CLEANUP_REJECTS)
            tally.inc(_MILTER, ("reject",))
        elif what in MILTER_ACTIONS:
            tally.inc(_MILTER, (what,))
        elif "-" in what:  # milter-header-reject: header_checks on the headers a milter added
            if what.endswith("-reject"):
                tally.inc(_CLEANUP_REJECTS)
        else:
            tally.inc(_MILTER, ("other",))
        return True
    return action in _CLEANUP_ACTIONS or action == "ignoring redundant or conflicting milter reply"


def _bounce(msg: str, tally: Tally, opts: ParseOptions) -> bool:
    if _NOTIFICATION.match(msg) is not None:
        tally.inc(_BOUNCE)
        return True
    return _common(msg)


# postscreen: the first word, then the action and test it counts as.
_PS_WORD: dict[str, tuple[str, str]] = {
    "CONNECT": ("connect", "none"),
    "DISCONNECT": ("drop", "none"),
    "PREGREET": ("fail", "pregreet"),
    "DNSBL": ("fail", "dnsbl"),
    "HANGUP": ("other", "hangup"),
    "ALLOWLISTED": ("allowlisted", "none"),
    "WHITELISTED": ("allowlisted", "none"),
    "DENYLISTED": ("denylisted", "none"),
    "BLACKLISTED": ("denylisted", "none"),
    "ALLOWLIST": ("other", "none"),  # ALLOWLIST VETO
    "WHITELIST": ("other", "none"),
}
_PS_PHRASE: dict[str, tuple[str, str]] = {
    "PASS NEW ": ("pass_new", "none"),
    "PASS OLD ": ("pass_old", "none"),
    "BARE NEWLINE ": ("fail", "bare_newline"),
    "NON-SMTP COMMAND ": ("fail", "non_smtp_command"),
    "COMMAND PIPELINING ": ("fail", "pipelining"),
    "COMMAND TIME LIMIT ": ("other", "none"),
    "COMMAND COUNT LIMIT ": ("other", "none"),
    "COMMAND LENGTH LIMIT ": ("other", "none"),
}
_PS_HARMLESS = (
    "DATA without valid RCPT", "BDAT without valid RCPT", "entering STRESS mode", "leaving STRESS mode",
    "[", "> [", "< [", "skip ",
)  # fmt: skip


def _postscreen(msg: str, tally: Tally, opts: ParseOptions) -> bool:
    word, sep, _ = msg.partition(" ")
    hit = _PS_WORD.get(word) if sep else None
    if hit is not None:
        tally.inc(_POSTSCREEN, hit)
        return True
    if msg.startswith(("NOQUEUE: reject: ", "reject: connect from ")):
        tally.inc(_POSTSCREEN, ("reject", "dnsbl" if "blocked using " in _reply_text(msg) else "none"))
        return True
    for phrase, labels in _PS_PHRASE.items():
        if msg.startswith(phrase):
            tally.inc(_POSTSCREEN, labels)
            return True
    return msg.startswith(_PS_HARMLESS) or _common(msg)


def _tlsproxy(msg: str, tally: Tally, opts: ParseOptions) -> bool:
    if msg.startswith(("Anonymous TLS", "Trusted TLS", "Untrusted TLS", "Verified TLS")):
        return _tls(msg, tally, outbound=False)
    return (
        _tls_failure(msg, tally)
        or msg.startswith(("CONNECT ", "DISCONNECT ", "TLS handshake failed for ", "setting up TLS connection "))
        or _common(msg)
    )


def _queue_tool(msg: str, tally: Tally, opts: ParseOptions) -> bool:
    """pickup, postsuper, postdrop, sendmail, postqueue: queue-id notes and summaries."""
    return _QID.match(msg) is not None or _common(msg) or msg.endswith((" message", " messages"))


def _quiet(msg: str, tally: Tally, opts: ParseOptions) -> bool:
    """Daemons that write nothing to count (master, anvil, scache, tlsmgr, verify, ...)."""
    return _common(msg) or msg.startswith("addr ")  # dnsblog: "addr 192.0.2.1 listed by domain ..."


def _unknown(msg: str, tally: Tally, opts: ParseOptions) -> bool:
    """A daemon this parser does not know (a custom service name): maybe a delivery agent."""
    m = _DELIVERY.match(msg)
    if m is not None:
        return _delivery(m, "other", tally, opts)
    return _common(msg)


def _script(msg: str, tally: Tally, opts: ParseOptions) -> bool:
    return True  # postfix-script: start, stop, reload and check notes


_SMTP = _agent("smtp", True)
_HANDLERS: dict[str, Handler] = {
    "smtpd": _smtpd,
    "submission": _smtpd,
    "smtps": _smtpd,
    "smtp": _SMTP,
    "relay": _SMTP,
    "lmtp": _agent("lmtp", True),
    "local": _agent("local", False),
    "virtual": _agent("virtual", False),
    "pipe": _agent("pipe", False),
    "error": _agent("other", False),
    "retry": _agent("other", False),
    "discard": _agent("other", False),
    "qmgr": _qmgr,
    "oqmgr": _qmgr,
    "cleanup": _cleanup,
    "bounce": _bounce,
    "defer": _bounce,
    "trace": _bounce,
    "postscreen": _postscreen,
    "tlsproxy": _tlsproxy,
    "pickup": _queue_tool,
    "postsuper": _queue_tool,
    "postdrop": _queue_tool,
    "sendmail": _queue_tool,
    "postqueue": _queue_tool,
    "qmqpd": _queue_tool,
    "postfix-script": _script,
}
_HANDLERS.update(dict.fromkeys((
    "master", "anvil", "scache", "tlsmgr", "verify", "dnsblog", "flush", "proxymap", "spawn", "showq",
    "trivial-rewrite", "postlogd", "postmap", "postalias", "postconf", "postlog", "postkick", "postcat",
), _quiet))  # fmt: skip


# --- entry points --------------------------------------------------------------------------------


def parse(rec: LogRecord, tally: Tally, opts: ParseOptions) -> bool:
    """Count what ``rec`` says into ``tally``; whether the line was understood.  May raise on a bug."""
    program = rec.program
    return _HANDLERS.get(program[program.rfind("/") + 1 :], _unknown)(rec.message, tally, opts)


@PARSERS.register("postfix")
def parse_postfix(rec: LogRecord, tally: Tally, opts: ParseOptions) -> bool:
    """:func:`parse`, which never raises: a line that makes it fail is a line not understood."""
    try:
        return parse(rec, tally, opts)
    except Exception:  # a parser bug must not stop a log source
        return False
