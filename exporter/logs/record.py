"""One log line, split into its syslog fields: the input of every parser.

:func:`parse_line` reads the three shapes mail logs come in:

- classic syslog (RFC 3164 style, as rsyslog and Postfix's ``postlogd`` write it)::

    Dec  7 08:00:01 mx1 postfix/smtpd[1234]: connect from ...

- RFC 3339 timestamps (rsyslog's high-precision format, syslog-ng, journald forwarding)::

    2026-12-07T08:00:01.123456+00:00 mx1 postfix/smtpd[1234]: connect from ...

- Exim's own main log (no host, no program)::

    2026-12-07 08:00:01 1tJq2B-000ABC-1x <= sender@example.test H=... S=1234
    2026-12-07 08:00:01.123 +0100 [4567] 1tJq2B-000ABC-1x => ...

- Dovecot's own log file (``log_path``, with any ``log_timestamp`` of the two shapes above; no
  host): a record of program ``dovecot`` whose message is everything after the timestamp::

    Dec 07 08:00:01 imap-login: Info: Login: user=<u>, method=PLAIN, ...
    2026-12-07 08:00:01.123456 lmtp(u)<4567><Ab1C>: Info: msgid=<...>: saved mail to INBOX

Pure: no I/O.  A line that is none of these returns ``None`` (counted as ``malformed``).
"""

from __future__ import annotations

__all__ = ["DOVECOT", "EXIM", "LogRecord", "classic_timestamp", "parse_line", "program_class"]

import calendar
import re
import time
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

#: The ``program`` of records from an Exim main log (which carries no syslog tag).
EXIM = "exim"
#: The ``program`` of records from Dovecot's own log file (``log_path``, no syslog tag).
DOVECOT = "dovecot"


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One log entry.  ``program`` is the syslog tag without the pid (``postfix-out/smtp``)."""

    timestamp: float | None  # Unix time, None when the line carries none that can be read
    host: str
    program: str
    pid: int | None
    message: str


_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}  # fmt: skip

# "Dec  7 08:00:01 host prog[pid]: msg" and "2026-12-07T08:00:01.123+00:00 host prog[pid]: msg".
_SYSLOG = re.compile(
    r"(?:(?P<mon>[A-Z][a-z]{2}) {1,2}(?P<day>\d{1,2}) (?P<hms>\d\d:\d\d:\d\d)"
    r"|(?P<iso>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:?\d\d)?))"
    # The host never is "[pid]", "(...", an Exim message id nor "X=..." (H=, U=): Exim main log lines.
    r" (?P<host>(?![\[(]|[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4} )[^\s=]+)"
    r" (?P<prog>[^\s\[:]+)(?:\[(?P<pid>\d{1,10})\])?: (?P<msg>.*)$"
)
#: Dovecot's own log file (``log_path``) has no host: after the timestamp come the log prefix
#: and the level, "imap-login: Info: Login: ...", which :data:`_SYSLOG` reads as host
#: "imap-login:" and program "Info".
_DOVECOT_LEVELS = frozenset({"Debug", "Info", "Warning", "Error", "Fatal", "Panic"})
# Exim main log: "2026-12-07 08:00:01[.123] [+0100] [[pid]] rest".
_EXIM = re.compile(
    r"(?P<date>\d{4}-\d\d-\d\d) (?P<time>\d\d:\d\d:\d\d)(?:\.(?P<ms>\d{1,6}))?"
    r"(?: (?P<tz>[+-]\d{4}))?(?: \[(?P<pid>\d{1,10})\])? (?P<msg>.*)$"
)

#: Postfix daemons: a program "<syslog_name>/<daemon>" with one of these is Postfix,
#: whatever the syslog_name (multiple instances: postfix-out/smtp, mta-in/smtpd, ...).
POSTFIX_DAEMONS = frozenset({
    "anvil", "bounce", "cleanup", "discard", "dnsblog", "error", "flush", "local", "lmtp", "master",
    "oqmgr", "pickup", "pipe", "postdrop", "postfix-script", "postlogd", "postmap", "postqueue",
    "postscreen", "postsuper", "proxymap", "qmgr", "qmqpd", "scache", "sendmail", "showq", "smtp",
    "smtpd", "spawn", "tlsmgr", "tlsproxy", "trivial-rewrite", "verify", "virtual", "submission",
    "smtps", "relay", "retry",
})  # fmt: skip


def program_class(program: str) -> str:
    """The parser a program belongs to: ``postfix``, ``exim``, ``dovecot`` or ``other``."""
    head, sep, daemon = program.rpartition("/")
    if sep and (daemon in POSTFIX_DAEMONS or "postfix" in head):
        return "postfix"
    if program.startswith("dovecot") or program in ("imap-login", "pop3-login", "auth", "lmtp", "imap", "pop3"):
        return "dovecot"
    if program.startswith("exim"):
        return "exim"
    return "other"


def classic_timestamp(mon: str, day: int, hms: str, now: float | None = None) -> float | None:
    """A classic syslog time (no year, local time): the most recent such moment not far in the future."""
    month = _MONTHS.get(mon)
    if month is None:
        return None
    now = time.time() if now is None else now
    year = time.localtime(now).tm_year
    try:
        h, m, s = (int(x) for x in hms.split(":"))
        ts = time.mktime((year, month, day, h, m, s, 0, 0, -1))
    except (ValueError, OverflowError):
        return None
    if ts > now + 86400:  # December's lines read in January belong to last year
        ts = time.mktime((year - 1, month, day, h, m, s, 0, 0, -1))
    return ts


@lru_cache(maxsize=1024)
def _classic_cached(stamp: str) -> float | None:
    """:func:`classic_timestamp` of a ``Mmm dd hh:mm:ss`` prefix; lines of one second share it.

    Cached: ``time.mktime`` costs more than the rest of the line's parsing.  The year is the
    one at the first sight of a stamp; a cache entry outlives a new year's night only for
    stamps of that night, which cannot repeat until the next year.
    """
    return classic_timestamp(stamp[:3], int(stamp[4:6]), stamp[7:15])


@lru_cache(maxsize=1024)
def _iso_cached(text: str) -> float | None:
    return _iso_timestamp(text)


def _iso_timestamp(text: str) -> float | None:
    try:
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        elif len(text) > 5 and text[-5] in "+-" and text[-3] != ":":
            text = text[:-2] + ":" + text[-2:]
        frac = ""
        if "." in text:
            head, rest = text.split(".", 1)
            digits = re.match(r"\d+", rest)
            assert digits is not None
            frac, text = digits.group(0), head + rest[digits.end() :]
        dt = datetime.fromisoformat(text.replace(" ", "T", 1))
    except (ValueError, AssertionError):
        return None
    base = dt.timestamp() if dt.tzinfo is not None else time.mktime(dt.timetuple())
    return base + (int(frac) / 10 ** len(frac) if frac else 0.0)


@lru_cache(maxsize=1024)
def _exim_cached(date: str, hms: str, tz: str | None) -> float | None:
    """:func:`_exim_timestamp` to the second (``time.mktime`` is costly); lines of one second share it."""
    return _exim_timestamp(date, hms, None, tz)


def _exim_timestamp(date: str, hms: str, ms: str | None, tz: str | None) -> float | None:
    try:
        y, mo, d = (int(x) for x in date.split("-"))
        h, mi, s = (int(x) for x in hms.split(":"))
        if tz is not None:
            offset = (int(tz[1:3]) * 3600 + int(tz[3:5]) * 60) * (1 if tz[0] == "+" else -1)
            ts: float = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) - offset
        else:
            ts = time.mktime((y, mo, d, h, mi, s, 0, 0, -1))
    except (ValueError, OverflowError):
        return None
    return ts + (int(ms) / 10 ** len(ms) if ms else 0.0)


def parse_line(line: str, now: float | None = None) -> LogRecord | None:
    """Split one line (without its newline) into a :class:`LogRecord`, or ``None``."""
    m = _SYSLOG.match(line)
    if m is not None:
        iso = m.group("iso")
        if iso is not None:
            ts = _iso_cached(iso) if len(iso) <= 19 or iso[19] != "." else _iso_timestamp(iso)
        elif now is None:
            ts = _classic_cached(line[: m.end("hms")])
        else:
            ts = classic_timestamp(m.group("mon"), int(m.group("day")), m.group("hms"), now)
        host = m.group("host")
        if host[-1] == ":" and m.group("prog") in _DOVECOT_LEVELS and m.group("pid") is None:
            return LogRecord(ts, "", DOVECOT, None, line[m.start("host") :])
        pid = m.group("pid")
        return LogRecord(ts, m.group("host"), m.group("prog"), int(pid) if pid else None, m.group("msg"))
    m = _EXIM.match(line)
    if m is not None:
        ms = m.group("ms")
        base = _exim_cached(m.group("date"), m.group("time"), m.group("tz"))
        ts = None if base is None else base + (int(ms) / 10 ** len(ms) if ms else 0.0)
        pid = m.group("pid")
        return LogRecord(ts, "", EXIM, int(pid) if pid else None, m.group("msg"))
    return None
