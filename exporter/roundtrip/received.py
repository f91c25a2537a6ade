"""A pure parser of ``Received:`` header fields, and per-hop delays computed from them.

Every MTA writes its own dialect of RFC 5321 section 4.4: Postfix, Exim, Sendmail,
Exchange and Microsoft 365, Gmail, qmail (comment only), Dovecot LMTP, courier,
Zimbra (Postfix with extras), and many gateways.  The parser takes what it can and
never raises:

* the header is unfolded, and split at the last ``;`` that is outside a comment,
  quoted string or angle address: the text after it is the date;
* the clauses before it are tokenized (comments may nest, and may contain
  quoted-pairs) and read by keyword, case-insensitively: ``from``, ``by``, ``via``,
  ``with``, ``id``, ``for``; the first occurrence of each counts.  ``from``, ``by``,
  ``id`` and ``for`` take one token; ``with`` and ``via`` take the words up to the next
  comment or keyword (``with Microsoft SMTP Server``, ``via Frontend Transport``);
  the connection address is kept as ``from_ip`` (see :func:`_comment_ip`): from the
  comments after ``from`` (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``, Exim's
  ``[192.0.2.1]:54321`` with the port dropped, qmail's ``(user@192.0.2.1)`` or a bare
  address), never from a client's claim (qmail's ``(HELO ...)``, Exim's ``helo=...``),
  and otherwise from the ``from`` host when it is an address itself (Exim's
  ``from [192.0.2.1] (helo=...)``).  So Postfix's and Sendmail's
  ``from [claimed] (rdns [actual])`` reads the actual address;
* the date is RFC 5322 (with or without weekday, seconds or fractions of seconds,
  two- or four-digit year), its obsolete named zones (``GMT``, ``EST``, ``PDT``, ``Z``...),
  ``asctime`` style (``Mon Nov 20 10:15:42 2023``) or ISO 8601.  A numeric offset
  always wins over a zone name in a trailing comment.  A missing or unknown zone is
  read as UTC and ``utc_offset`` is None.  A date that does not exist (30 Feb) gives
  ``timestamp=None``.

:func:`hop_delays` turns a chain into per-hop delays: the delay of hop *i* is its
timestamp minus the timestamp of hop *i-1*; the first hop is measured from the time
the probe was sent.  Received timestamps usually have one-second resolution, so when
a hop's timestamp is whole seconds the time it is compared with is truncated to whole
seconds too (otherwise every first hop would read up to a second short, often
negative).
"""

from __future__ import annotations

__all__ = [
    "HOST_LABEL_MAX",
    "MAX_HEADER_CHARS",
    "MAX_HOPS",
    "Hop",
    "ParsedDate",
    "Received",
    "hop_delays",
    "hop_label",
    "parse_chain",
    "parse_date",
    "parse_received",
    "server_delivery_delay",
]

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

#: Characters of one header value that are looked at (a real header is a few hundred).
MAX_HEADER_CHARS = 8192
#: Hops exported per route (``mail_roundtrip_hop_delay_seconds``): the first ten.
MAX_HOPS = 10
#: Longest host name kept in a ``hop`` label.
HOST_LABEL_MAX = 64

_KEYWORDS = frozenset({"from", "by", "via", "with", "id", "for"})
_ONE_TOKEN = frozenset({"from", "by", "id", "for"})

_MONTHS = {
    "jan": 1,
    "feb": 2,
    "mar": 3,
    "apr": 4,
    "may": 5,
    "jun": 6,
    "jul": 7,
    "aug": 8,
    "sep": 9,
    "oct": 10,
    "nov": 11,
    "dec": 12,
}

#: Named zones: RFC 5322 section 4.3 (obsolete zones) plus a few common abbreviations.
#: Military single letters other than Z are unreliable (RFC 5322) and read as unknown.
_ZONES = {
    "UT": 0,
    "UTC": 0,
    "GMT": 0,
    "Z": 0,
    "EST": -5,
    "EDT": -4,
    "CST": -6,
    "CDT": -5,
    "MST": -7,
    "MDT": -6,
    "PST": -8,
    "PDT": -7,
    "AKST": -9,
    "AKDT": -8,
    "HST": -10,
    "WET": 0,
    "WEST": 1,
    "BST": 1,
    "CET": 1,
    "CEST": 2,
    "MET": 1,
    "MEST": 2,
    "EET": 2,
    "EEST": 3,
    "MSK": 3,
    "JST": 9,
    "KST": 9,
    "AEST": 10,
    "AEDT": 11,
    "NZST": 12,
    "NZDT": 13,
}

_TIME = r"(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?P<frac>[.,]\d{1,9})?)?"
_ZONE = r"(?P<zone>[+-]\d{2}:?\d{2}|[A-Za-z]{1,5}\b)?"
_RFC_RE = re.compile(
    r"(?:[A-Za-z]{2,9}\.?,?\s*)?"
    r"(?P<d>\d{1,2})[\s-]+(?P<mon>[A-Za-z]{3,9})\.?[\s-]+(?P<y>\d{2,4})\s+(?:at\s+)?" + _TIME + r"\s*" + _ZONE
)
_ASCTIME_RE = re.compile(
    r"(?:[A-Za-z]{2,9},?\s+)?(?P<mon>[A-Za-z]{3,9})\.?\s+(?P<d>\d{1,2})\s+"
    + _TIME
    + r"\s*(?:(?P<zone1>[+-]\d{4}|[A-Za-z]{1,5})\s+)?(?P<y>\d{4})(?:\s+(?P<zone>[+-]\d{4}|[A-Za-z]{1,5}\b))?"
)
_ISO_RE = re.compile(
    r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})[T\s]" + _TIME + r"\s*(?P<zone>Z\b|[+-]\d{2}:?\d{2}|[A-Za-z]{1,5}\b)?"
)
# An address literal; Exim appends ":<port>" when port logging is on ("[192.0.2.1]:54321").
_BRACKET_IP_RE = re.compile(r"\[(?:IPv6:)?([0-9A-Fa-f:.]{2,45})\](?::[0-9]{1,5})?")
# A client's claimed name, not its address: qmail's "(HELO name)", Exim's "helo=name".
_HELO_COMMENT_RE = re.compile(r"E?HELO\s", re.IGNORECASE)
_HELO_ARG_RE = re.compile(r"\bhelo=\S*", re.IGNORECASE)
_BARE_IP_RE = re.compile(r"(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7})")
_LABEL_BAD_RE = re.compile(r"[^a-z0-9._:\[\]-]")
_WS_RE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class ParsedDate:
    timestamp: float  # Unix time
    utc_offset: int | None  # seconds east of UTC as written; None when the zone is missing or unknown
    whole_seconds: bool  # no fraction of a second was given


@dataclass(frozen=True, slots=True)
class Received:
    """One parsed ``Received:`` field.  Every part is optional: None when absent or unreadable."""

    from_host: str | None = None
    from_ip: str | None = None
    by_host: str | None = None
    via: str | None = None
    protocol: str | None = None  # the ``with`` clause: ESMTP, ESMTPS, LMTP, HTTPS, Microsoft SMTP Server...
    id: str | None = None
    for_addr: str | None = None
    timestamp: float | None = None
    utc_offset: int | None = None
    whole_seconds: bool = True


@dataclass(frozen=True, slots=True)
class Hop:
    index: int  # 1 = the first server after the sender
    host: str  # receiving host (the ``by`` clause), made safe for a label
    timestamp: float | None
    delay: float | None  # seconds since the previous hop (the first: since sending); None without a date

    @property
    def label(self) -> str:
        return hop_label(self.index, self.host)


# --- tokenizer -----------------------------------------------------------------------------------


def _unfold(value: str) -> str:
    return _WS_RE.sub(" ", value[:MAX_HEADER_CHARS]).strip()


def _split_date(text: str) -> tuple[str, str]:
    """Split at the last ``;`` outside comments, quotes and angle brackets."""
    depth = 0
    quoted = False
    angle = False
    escaped = False
    cut = -1
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
            continue
        if ch == "\\" and (quoted or depth):
            escaped = True
        elif quoted:
            if ch == '"':
                quoted = False
        elif ch == '"' and not depth:
            quoted = True
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif depth:
            continue
        elif ch == "<":
            angle = True
        elif ch == ">":
            angle = False
        elif ch == ";" and not angle:
            cut = i
    if cut < 0:
        return text, ""
    return text[:cut], text[cut + 1 :]


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, text) pairs: kind is ``atom``, ``comment`` (without its parentheses) or ``quoted``."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace() or ch == ";":
            i += 1
        elif ch == "(":
            depth, j, buf = 1, i + 1, []
            while j < n and depth:
                c = text[j]
                if c == "\\" and j + 1 < n:
                    buf.append(text[j + 1])
                    j += 2
                    continue
                if c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if not depth:
                        break
                buf.append(c)
                j += 1
            out.append(("comment", "".join(buf).strip()))
            i = j + 1
        elif ch == '"':
            j = text.find('"', i + 1)
            j = n if j < 0 else j
            out.append(("quoted", text[i + 1 : j]))
            i = j + 1
        elif ch == "<":
            j = text.find(">", i + 1)
            j = n - 1 if j < 0 else j
            out.append(("atom", text[i : j + 1]))
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in '(;"':
                j += 1
            out.append(("atom", text[i:j]))
            i = j
    return out


def _clean_host(value: str) -> str | None:
    value = value.strip().rstrip(";,")
    return value or None


# --- dates -----------------------------------------------------------------------------------------


def _zone_offset(zone: str | None) -> int | None:
    """Seconds east of UTC for a zone token; None for a missing or unknown zone."""
    if not zone:
        return None
    if zone[0] in "+-":
        digits = zone[1:].replace(":", "")
        if len(digits) != 4 or not digits.isdigit():
            return None
        hh, mm = int(digits[:2]), int(digits[2:])
        if hh > 23 or mm > 59:
            return None
        if zone == "-0000":  # RFC 5322: UTC, but the local zone is unknown
            return None
        sign = -1 if zone[0] == "-" else 1
        return sign * (hh * 3600 + mm * 60)
    hours = _ZONES.get(zone.upper())
    return None if hours is None else hours * 3600


def _year(text: str) -> int:
    y = int(text)
    if len(text) == 2:
        return 2000 + y if y < 50 else 1900 + y
    if len(text) == 3:
        return 1900 + y
    return y


def _build(
    year: int, month: int, day: int, h: str, mi: str, s: str | None, frac: str | None, zone: str | None
) -> ParsedDate | None:
    hour, minute = int(h), int(mi)
    second = int(s) if s else 0
    leap = 0
    if second == 60:  # a leap second: 23:59:60 is one second after 23:59:59
        second, leap = 59, 1
    offset = _zone_offset(zone)
    try:
        tz = timezone(timedelta(seconds=offset or 0))
        dt = datetime(year, month, day, hour, minute, second, tzinfo=tz)
    except (ValueError, OverflowError):
        return None
    fraction = float("0." + frac[1:]) if frac else 0.0
    return ParsedDate(dt.timestamp() + leap + fraction, offset, not frac)


def parse_date(text: str) -> ParsedDate | None:
    """The first date in ``text`` (see the module doc for the formats), or None.  Never raises."""
    try:
        return _parse_date(text[:MAX_HEADER_CHARS])
    except Exception:  # defensive: a parser bug must not break a probe
        return None


def _parse_date(text: str) -> ParsedDate | None:
    m = _RFC_RE.search(text)
    if m:
        month = _MONTHS.get(m["mon"][:3].lower())
        if month is not None:
            return _build(_year(m["y"]), month, int(m["d"]), m["h"], m["mi"], m["s"], m["frac"], m["zone"])
    m = _ISO_RE.search(text)
    if m:
        return _build(int(m["y"]), int(m["mo"]), int(m["d"]), m["h"], m["mi"], m["s"], m["frac"], m["zone"])
    m = _ASCTIME_RE.search(text)
    if m:
        month = _MONTHS.get(m["mon"][:3].lower())
        if month is not None:
            zone = m["zone"] or m["zone1"]
            return _build(int(m["y"]), month, int(m["d"]), m["h"], m["mi"], m["s"], m["frac"], zone)
    return None


def _ip_in(text: str) -> str | None:
    """An address in brackets (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``), or a bare address as the whole text."""
    m = _BRACKET_IP_RE.search(text)
    if m:
        return m.group(1)
    text = text.strip()
    return text if _BARE_IP_RE.fullmatch(text) else None


def _comment_ip(comment: str) -> str | None:
    """The connection address in one comment after ``from``, or None.

    * Postfix, Sendmail, OpenSMTPD, Gmail...: ``(rdns [192.0.2.1])``, ``([192.0.2.1])``;
    * Exim (``$sender_rcvhost``): ``([192.0.2.1]:54321 helo=name)``; the ``helo=``
      argument is the client's claim and is skipped, even when it is a literal;
    * qmail-smtpd (``received.c``): ``(remoteinfo@192.0.2.1)`` or ``(192.0.2.1)``;
      ``(HELO name)`` is the client's claim;
    * Exchange: ``(192.0.2.1)`` or ``(2001:db8::1)``.
    """
    if _HELO_COMMENT_RE.match(comment):
        return None
    comment = _HELO_ARG_RE.sub(" ", comment)
    ip = _ip_in(comment)
    if ip is None and "@" in comment:
        ip = _ip_in(comment.rpartition("@")[2]) if not any(c.isspace() for c in comment.strip()) else None
    return ip


# --- Received --------------------------------------------------------------------------------------


def parse_received(value: str) -> Received:
    """Parse one ``Received:`` field value (without the field name).  Never raises."""
    try:
        return _parse_received(value)
    except Exception:  # defensive: a parser bug must not break a probe
        return Received()


def _parse_received(value: str) -> Received:
    text = _unfold(value)
    if text[:9].lower() == "received:":
        text = text[9:].strip()
    clauses, date_text = _split_date(text)
    date = parse_date(date_text) if date_text else None
    if date is None:
        # no semicolon (or nothing readable after it): some gateways put the date elsewhere
        date = parse_date(text)
    fields: dict[str, str] = {}
    comment_ip: str | None = None
    tokens = _tokens(clauses)
    i = 0
    while i < len(tokens):
        kind, tok = tokens[i]
        key = tok.lower()
        if kind != "atom" or key not in _KEYWORDS or key in fields:
            i += 1
            continue
        j = i + 1
        words: list[str] = []
        while j < len(tokens):
            k2, t2 = tokens[j]
            if k2 == "comment":
                if key == "from" and comment_ip is None:
                    comment_ip = _comment_ip(t2)
                if words and key not in _ONE_TOKEN:
                    break  # "with esmtps (TLS1.3) tls ...": the protocol ends at the comment
                j += 1
                continue
            if (k2 == "atom" and t2.lower() in _KEYWORDS) or (key in _ONE_TOKEN and words):
                break
            words.append(t2)
            j += 1
        if words:
            fields[key] = " ".join(words)
        i = j
    from_host = _clean_host(fields.get("from", ""))
    # The address in the comments is the one the server saw ("from [claimed] (rdns [actual])");
    # without one, the host itself when it is an address (Exim: "from [192.0.2.1] (helo=name)").
    from_ip = comment_ip or (_ip_in(from_host) if from_host else None)
    return Received(
        from_host=from_host,
        from_ip=from_ip,
        by_host=_clean_host(fields.get("by", "")),
        via=fields.get("via"),
        protocol=fields.get("with"),
        id=_clean_host(fields.get("id", "")),
        for_addr=_clean_host(fields.get("for", "")),
        timestamp=date.timestamp if date else None,
        utc_offset=date.utc_offset if date else None,
        whole_seconds=date.whole_seconds if date else True,
    )


def parse_chain(values: Sequence[str]) -> list[Received]:
    """Parse ``Received:`` values given in message order (newest first); return them oldest first."""
    return [parse_received(v) for v in reversed(values)]


# --- hops ------------------------------------------------------------------------------------------


def hop_label(index: int, host: str) -> str:
    """The ``hop`` label value: ``"<index>:<host>"``."""
    return f"{index}:{host}"


def _safe_host(host: str | None) -> str:
    if not host:
        return "unknown"
    cleaned = _LABEL_BAD_RE.sub("_", host.lower().rstrip("."))
    return cleaned[:HOST_LABEL_MAX] or "unknown"


def _since(timestamp: float, whole_seconds: bool, previous: float) -> float:
    if whole_seconds:
        previous = math.floor(previous)
    return timestamp - previous


def hop_delays(chain: Sequence[Received], sent_at: float, *, max_hops: int = MAX_HOPS) -> list[Hop]:
    """Per-hop delays of a chain (oldest first, as from :func:`parse_chain`); the first ``max_hops``.

    A hop without a readable date has ``delay=None``; the hop after it is measured from
    the last hop that had one.
    """
    out: list[Hop] = []
    previous = sent_at
    for index, rec in enumerate(chain, start=1):
        if index > max_hops:
            break
        delay = None
        if rec.timestamp is not None and math.isfinite(rec.timestamp):
            delay = _since(rec.timestamp, rec.whole_seconds, previous)
            previous = rec.timestamp
        out.append(Hop(index, _safe_host(rec.by_host), rec.timestamp, delay))
    return out


def server_delivery_delay(chain: Sequence[Received], sent_at: float) -> float | None:
    """Time from sending to the newest hop's timestamp (the delivering server), or None."""
    for rec in reversed(chain):
        if rec.timestamp is not None and math.isfinite(rec.timestamp):
            return _since(rec.timestamp, rec.whole_seconds, sent_at)
    return None
