"""A pure parser of ``Authentication-Results:`` header fields (RFC 8601), and a bounded verdict.

After a probe is delivered, the receiving domain's own verdict on it (SPF, DKIM, DMARC,
ARC) is in the ``Authentication-Results`` field that its border MTA added, the one that
carries the receiver's *authserv-id*.  Any other such field is someone else's claim (a
relay's, or the sender's forgery) and is ignored by :func:`results_for`.

The grammar (RFC 8601 section 2.2; CFWS is RFC 5322's comments and folding whitespace,
allowed between any two tokens)::

    authres-payload = [CFWS] authserv-id [ CFWS authres-version ]
                      ( no-result / 1*resinfo ) [CFWS] CRLF
    authserv-id     = value                         ; RFC 2045: token / quoted-string
    authres-version = 1*DIGIT [CFWS]
    no-result       = [CFWS] ";" [CFWS] "none"
    resinfo         = [CFWS] ";" methodspec [ CFWS reasonspec ] [ CFWS 1*propspec ]
    methodspec      = [CFWS] method [CFWS] "=" [CFWS] result
    method          = Keyword [ [CFWS] "/" [CFWS] method-version ]
    reasonspec      = "reason" [CFWS] "=" [CFWS] value
    propspec        = ptype [CFWS] "." [CFWS] property [CFWS] "=" pvalue
    pvalue          = [CFWS] ( value / [ [ local-part ] "@" ] domain-name ) [CFWS]

Decisions:

* **Input.**  One field's value, folded (CRLF or LF followed by a space or tab) or not.
  A leading field name is dropped (``Authentication-Results:``, and any
  ``...-Authentication-Results:`` such as Microsoft's ``X-MS-Exchange-Authentication-Results:``
  or ``ARC-Authentication-Results:``): no authserv-id can contain a colon, so this is never
  ambiguous.  An ARC-Authentication-Results value (RFC 8617: ``i=1; mx.microsoft.com 1; ...``)
  is read past its instance tag when what follows has an authserv-id.  Only the first
  :data:`MAX_HEADER_CHARS` characters are looked at.
* **Keywords** (methods, results, ptypes, properties, ``none``, ``reason``) are
  case-insensitive and returned lower-case; they are letters, digits, ``-`` and ``_``,
  at most :data:`MAX_KEYWORD_CHARS` long.  Unknown methods, results and properties are kept.
* **Values** (``reason=`` and properties) are unquoted (quoted-pairs resolved) and stripped
  of comments.  Unquoted values are read leniently, up to the next space, comment,
  ``;`` or quote, because real MTAs write base64 with ``/``, ``+`` and ``=``
  (``header.b=gfT/i2HB``) and addresses unquoted; a quoted local-part keeps its quotes
  (``"john doe"@example.com``).  Each value is made printable (anything else becomes a
  space) and cut to :data:`MAX_VALUE_CHARS`.  A ``key=value`` without a ptype (Microsoft's
  ``action=none``) is kept as a property under its bare name.  Only the first ``reason=``
  of a resinfo counts.  The method version (``dkim/1``) is read and dropped.
* **Invalid: None.**  A value with no readable authserv-id (blank; not a token or quoted
  string; quoted but blank, non-printable or longer than :data:`MAX_AUTHSERV_ID_CHARS`),
  anything other than a version number between the authserv-id and the first ``;``, an
  over-long version, or no ``none`` and not a single readable resinfo (``example.com;``).
* **Broken resinfos are skipped, the good ones kept**: a resinfo whose methodspec
  (``method[/version]=result``) is unreadable is dropped up to the next ``;`` outside
  quotes and comments (so a stray ``none`` or ``hotmail.com`` between results costs
  nothing).  When the methodspec reads but a later part does not (a stray word, a missing
  value, a comment left open by truncation), the method and result are kept with the
  properties read before it: the verdict is what matters, and it was stated.
* **Microsoft 365** writes its ``Authentication-Results`` with no authserv-id at all
  (``spf=pass (sender IP is 192.0.2.1) smtp.mailfrom=example.com; dkim=pass ...;
  compauth=pass reason=100``); its authserv-id ``mx.microsoft.com`` appears only in its
  ARC-Authentication-Results.  A value that starts with a methodspec is read this way,
  with ``authserv_id == ""`` (:data:`NO_AUTHSERV_ID`), which :func:`results_for` selects
  like any other id.
* **Bounded work**: input cut at :data:`MAX_HEADER_CHARS`, at most :data:`MAX_RESULTS`
  resinfos and :data:`MAX_PROPERTIES` properties each, comments nested at most
  :data:`MAX_COMMENT_DEPTH` deep (deeper makes the part that holds it unreadable); work
  linear in the input (a part is read at most a few times; no backtracking regular
  expression).  Nothing raises.

:func:`verdict` folds the results of one method into a label value from :data:`RESULTS`:
``pass`` when any of them passed (a message may carry several DKIM signatures), else the
first; ``none`` when the method is absent; ``hardfail`` (SPF's pre-RFC 7001 name for
``fail``) counts as ``fail``; anything else is ``other``.
"""

from __future__ import annotations

__all__ = [
    "MAX_AUTHSERV_ID_CHARS",
    "MAX_COMMENT_DEPTH",
    "MAX_FIELDS",
    "MAX_HEADER_CHARS",
    "MAX_KEYWORD_CHARS",
    "MAX_PROPERTIES",
    "MAX_RESULTS",
    "MAX_VALUE_CHARS",
    "METHODS",
    "NO_AUTHSERV_ID",
    "RESULTS",
    "AuthResults",
    "MethodResult",
    "parse_authentication_results",
    "results_for",
    "verdict",
]

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

#: Characters of one header value that are looked at (a real one is a few hundred).
MAX_HEADER_CHARS = 16384
#: Resinfos kept per header value; the rest is not read.
MAX_RESULTS = 64
#: Properties kept per resinfo.
MAX_PROPERTIES = 32
#: Deepest comment nesting accepted.
MAX_COMMENT_DEPTH = 32
#: Longest reason or property value kept (longer ones are cut).
MAX_VALUE_CHARS = 200
#: Longest method, result, ptype or property keyword.
MAX_KEYWORD_CHARS = 64
#: Longest authserv-id (a domain name has at most 253 characters).
MAX_AUTHSERV_ID_CHARS = 255
#: Header values :func:`results_for` looks at: the first ones given (a receiver adds its own on top).
MAX_FIELDS = 64
#: The authserv-id of a header that has none (Microsoft 365's ``Authentication-Results``).
NO_AUTHSERV_ID = ""

#: Label values :func:`verdict` may return.
RESULTS: tuple[str, ...] = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy", "other")
#: Methods the round-trip probes export a verdict for.
METHODS: tuple[str, ...] = ("spf", "dkim", "dmarc", "arc")

_ALIASES = {"hardfail": "fail"}  # RFC 5451's SPF result, renamed "fail" by RFC 7001

_KEYWORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_DIGITS_RE = re.compile(r"[0-9]+")
_TOKEN_RE = re.compile(r"[!#-'*+\-.0-9A-Z^-~]+")  # RFC 2045 token: no space, CTL or tspecial
_RUN_RE = re.compile(r'[^ \t\r\n;()"]+')  # a lenient unquoted value
_FIELD_NAME_RE = re.compile(r"[ \t]*(?:[A-Za-z0-9-]*-)?Authentication-Results[ \t]*:", re.IGNORECASE)
_FOLD_RE = re.compile(r"\r?\n(?=[ \t])|\r(?=[ \t])")
_MAX_DIGITS = 9
_FWS = " \t\r\n"


@dataclass(frozen=True, slots=True)
class MethodResult:
    """One resinfo: ``method=result [reason=...] [ptype.property=value ...]``."""

    method: str  # lower-case keyword: spf, dkim, dmarc, arc, auth, iprev, compauth...
    result: str  # lower-case keyword: pass, fail, softfail, neutral, none, temperror, permerror, policy...
    reason: str | None  # the reason= value, unquoted, printable, at most MAX_VALUE_CHARS
    properties: tuple[tuple[str, str], ...]  # (lower-case "ptype.property", value), in order
    #: The text of the comments right after the result (``dmarc=pass (p=reject dis=none)``: ``p=reject
    #: dis=none``), printable, at most MAX_VALUE_CHARS; "" when there are none.  Not compared: a
    #: comment is not part of the result.
    comment: str = field(default="", compare=False)

    def prop(self, name: str) -> str | None:
        """The first value of property ``name`` (``"header.d"``, case-insensitive), or None."""
        key = name.lower()
        return next((v for k, v in self.properties if k == key), None)


@dataclass(frozen=True, slots=True)
class AuthResults:
    """One parsed ``Authentication-Results`` field."""

    authserv_id: str  # lower-case; NO_AUTHSERV_ID ("") when the header has none (Microsoft 365)
    version: int | None  # the version after the authserv-id, when given
    results: tuple[MethodResult, ...]  # empty for "none"

    def get(self, method: str) -> list[MethodResult]:
        """Every result for ``method`` (case-insensitive), in order: a message may carry several DKIM results."""
        key = method.lower()
        return [r for r in self.results if r.method == key]


class _Bad(Exception):
    """The part being read is not valid; caught inside this module."""


def _printable(value: str) -> str:
    return "".join(c if c.isprintable() else " " for c in value[:MAX_VALUE_CHARS])


class _Cursor:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.end = len(text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < self.end else ""

    def at_end(self) -> bool:
        return self.pos >= self.end

    def cfws(self) -> None:
        """Skip folding white space and comments (nested, with quoted-pairs)."""
        text, i, end = self.text, self.pos, self.end
        while i < end:
            ch = text[i]
            if ch in _FWS:
                i += 1
            elif ch == "(":
                depth = 0
                while True:
                    if i >= end:
                        self.pos = i
                        raise _Bad("comment not closed")
                    c = text[i]
                    if c == "\\":
                        i += 2
                        continue
                    if c == "(":
                        depth += 1
                        if depth > MAX_COMMENT_DEPTH:
                            self.pos = i
                            raise _Bad("comment nested too deep")
                    elif c == ")":
                        depth -= 1
                        if not depth:
                            i += 1
                            break
                    i += 1
            else:
                break
        self.pos = min(i, end)

    def char(self, ch: str) -> bool:
        if self.pos < self.end and self.text[self.pos] == ch:
            self.pos += 1
            return True
        return False

    def match(self, pattern: re.Pattern[str]) -> str | None:
        m = pattern.match(self.text, self.pos)
        if m is None:
            return None
        self.pos = m.end()
        return m.group()

    def keyword(self) -> str:
        word = self.match(_KEYWORD_RE)
        if word is None or len(word) > MAX_KEYWORD_CHARS:
            raise _Bad("keyword expected")
        return word.lower()

    def number(self) -> int:
        digits = self.match(_DIGITS_RE)
        if digits is None or len(digits) > _MAX_DIGITS:
            raise _Bad("number expected")
        return int(digits)

    def quoted(self) -> str:
        """A quoted-string at the cursor (which is on its opening quote), unquoted."""
        text, i, end = self.text, self.pos + 1, self.end
        out: list[str] = []
        while i < end:
            c = text[i]
            if c == "\\" and i + 1 < end:
                out.append(text[i + 1])
                i += 2
            elif c == '"':
                self.pos = i + 1
                return "".join(out)
            else:
                out.append(c)
                i += 1
        self.pos = end
        raise _Bad("quoted string not closed")

    def value(self) -> str:
        """A reason or property value: a quoted string (a quoted local-part keeps its quotes), or a run."""
        self.cfws()
        if self.peek() == '"':
            text = self.quoted()
            if self.peek() == "@":  # "john doe"@example.com
                escaped = text.replace("\\", "\\\\").replace('"', '\\"')
                text = f'"{escaped}"' + (self.match(_RUN_RE) or "")
            return _printable(text)
        run = self.match(_RUN_RE)
        if run is None:
            raise _Bad("value expected")
        return _printable(run)

    def skip_to_semicolon(self, start: int) -> None:
        """Move to the next ``;`` after ``start`` that is outside quotes and comments (or to the end)."""
        text, i, end = self.text, start, self.end
        depth = 0
        quoted = False
        while i < end:
            c = text[i]
            if c == "\\" and (quoted or depth):
                i += 2
                continue
            if quoted:
                quoted = c != '"'
            elif c == "(":
                depth += 1
            elif depth:
                if c == ")":
                    depth -= 1
            elif c == '"':
                quoted = True
            elif c == ";":
                break
            i += 1
        self.pos = min(i, end)


def _unfold(value: str) -> str:
    text = _FOLD_RE.sub("", value[:MAX_HEADER_CHARS])
    return text.replace("\r", " ").replace("\n", " ")


def _starts_with_methodspec(cur: _Cursor) -> bool:
    """Whether the text at the cursor reads ``keyword [CFWS] ("=" / "/")``; the cursor does not move."""
    start = cur.pos
    try:
        cur.keyword()
        cur.cfws()
        return cur.peek() in ("=", "/")
    except _Bad:
        return False
    finally:
        cur.pos = start


def _authserv_id(cur: _Cursor) -> str:
    if cur.peek() == '"':
        text = cur.quoted().strip().lower()
        if not text or len(text) > MAX_AUTHSERV_ID_CHARS or not text.isprintable():
            raise _Bad("authserv-id")
        return text
    token = cur.match(_TOKEN_RE)
    if token is None or len(token) > MAX_AUTHSERV_ID_CHARS:
        raise _Bad("authserv-id")
    return token.lower()


def _methodspec(cur: _Cursor) -> tuple[str, str]:
    cur.cfws()
    method = cur.keyword()
    cur.cfws()
    if cur.char("/"):
        cur.cfws()
        cur.number()  # the method version: read, not kept
        cur.cfws()
    if not cur.char("="):
        raise _Bad("'=' expected")
    cur.cfws()
    return method, cur.keyword()


def _comment_text(segment: str) -> str:
    """The text inside the comments of a CFWS ``segment`` (nested parentheses kept, outer ones dropped)."""
    out: list[str] = []
    depth = 0
    i, end = 0, len(segment)
    while i < end and len(out) <= MAX_VALUE_CHARS:
        c = segment[i]
        if c == "\\" and depth and i + 1 < end:
            out.append(segment[i + 1])
            i += 2
            continue
        if c == "(":
            if depth:
                out.append(c)
            elif out:
                out.append(" ")
            depth += 1
        elif c == ")":
            depth -= 1
            if depth:
                out.append(c)
        elif depth:
            out.append(c)
        i += 1
    return " ".join(_printable("".join(out)).split())


def _resinfo(cur: _Cursor) -> MethodResult:
    """One resinfo up to (not past) the next ``;``.  Raises :class:`_Bad` when its methodspec is unreadable."""
    method, result = _methodspec(cur)
    reason: str | None = None
    props: list[tuple[str, str]] = []
    item = cur.pos
    comment = ""
    try:
        cur.cfws()
        comment = _comment_text(cur.text[item : cur.pos]) if "(" in cur.text[item : cur.pos] else ""
        while True:
            cur.cfws()
            if cur.at_end() or cur.peek() == ";":
                return MethodResult(method, result, reason, tuple(props), comment)
            item = cur.pos
            key = cur.keyword()
            cur.cfws()
            if cur.char("."):
                cur.cfws()
                key = f"{key}.{cur.keyword()}"
                cur.cfws()
            if not cur.char("="):
                raise _Bad("'=' expected")
            value = cur.value()
            if key == "reason":
                if reason is None:
                    reason = value
            elif len(props) < MAX_PROPERTIES:
                props.append((key, value))
    except _Bad:
        # Keep what was stated before the unreadable part; resume at the next resinfo.
        cur.skip_to_semicolon(item)
        return MethodResult(method, result, reason, tuple(props), comment)


def _is_none(cur: _Cursor) -> bool:
    """Whether the rest is the no-result ``none`` (a trailing ``;`` allowed); the cursor is past a ``;``."""
    start = cur.pos
    try:
        cur.cfws()
        if cur.keyword() != "none":
            return False
        cur.cfws()
        if cur.char(";"):
            cur.cfws()
        return cur.at_end()
    except _Bad:
        return False
    finally:
        cur.pos = start


def _resinfos(cur: _Cursor, first: bool) -> list[MethodResult]:
    """Resinfos from the cursor; ``first``: the cursor is on a resinfo rather than on its ``;``."""
    out: list[MethodResult] = []
    while len(out) < MAX_RESULTS:
        if not first:
            cur.cfws()
            if not cur.char(";"):
                break  # the end (a resinfo always stops at a ";" or the end)
        first = False
        start = cur.pos
        try:
            out.append(_resinfo(cur))
        except _Bad:
            cur.skip_to_semicolon(start)
    return out


def _payload(text: str) -> AuthResults | None:
    cur = _Cursor(text)
    try:
        cur.cfws()
    except _Bad:
        return None
    if cur.at_end():
        return None
    if _starts_with_methodspec(cur):  # Microsoft 365: no authserv-id
        results = _resinfos(cur, first=True)
        return AuthResults(NO_AUTHSERV_ID, None, tuple(results)) if results else None
    try:
        authserv_id = _authserv_id(cur)
        cur.cfws()
        version = cur.number() if _DIGITS_RE.match(cur.text, cur.pos) else None
        cur.cfws()
    except _Bad:
        return None
    if not cur.char(";"):
        return None
    if _is_none(cur):
        return AuthResults(authserv_id, version, ())
    cur.pos -= 1  # back onto the ";"
    results = _resinfos(cur, first=False)
    return AuthResults(authserv_id, version, tuple(results)) if results else None


def _arc_payload(text: str) -> str | None:
    """The authres-payload after an ARC instance tag (``i=1;``), or None when ``text`` has none."""
    cur = _Cursor(text)
    try:
        cur.cfws()
        if cur.keyword() != "i":
            return None
        cur.cfws()
        if not cur.char("="):
            return None
        cur.cfws()
        cur.number()
        cur.cfws()
        return text[cur.pos :] if cur.char(";") else None
    except _Bad:
        return None


def _parse(value: str) -> AuthResults | None:
    """:func:`parse_authentication_results` without its guard (the fuzz targets call this one)."""
    text = _unfold(value)
    name = _FIELD_NAME_RE.match(text)
    if name:
        text = text[name.end() :]
    rest = _arc_payload(text)
    if rest is not None:
        arc = _payload(rest)
        if arc is not None and arc.authserv_id:
            return arc
    return _payload(text)


def parse_authentication_results(value: str) -> AuthResults | None:
    """One header field's value (unfolded or folded); None when it is not a valid A-R header.  Never raises."""
    try:
        return _parse(value)
    except Exception:  # defensive: a parser bug must not break a probe
        return None


def results_for(headers: Iterable[str], authserv_id: str) -> list[AuthResults]:
    """Of the given Authentication-Results header values, those whose authserv-id equals
    ``authserv_id`` (case-insensitive, exact: a header claiming another authserv-id, e.g.
    forged by a sender, is ignored), in the order given.  Only the first :data:`MAX_FIELDS`
    values are read.  :data:`NO_AUTHSERV_ID` selects headers that have none (Microsoft 365).
    """
    want = authserv_id.strip().lower()
    out: list[AuthResults] = []
    for index, header in enumerate(headers):
        if index >= MAX_FIELDS:
            break
        parsed = parse_authentication_results(header)
        if parsed is not None and parsed.authserv_id == want:
            out.append(parsed)
    return out


def _bounded(result: str) -> str:
    result = _ALIASES.get(result, result)
    return result if result in RESULTS else "other"


def verdict(results: Sequence[AuthResults], method: str) -> str:
    """The single result for a method across the receiver's headers: for several results of one
    method (e.g. two DKIM signatures), "pass" if any is pass, else the first; "none" when absent.
    Values bounded to the set :data:`RESULTS`; anything else becomes "other".
    """
    key = method.lower()
    found = [_bounded(r.result) for ar in results for r in ar.results if r.method == key]
    if not found:
        return "none"
    return "pass" if "pass" in found else found[0]
