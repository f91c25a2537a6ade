"""Pure parsers for the DNS records a mail domain publishes.  No I/O.

Each ``parse_*`` function takes the text of *one* record (already joined with
:func:`join_txt`) and returns a frozen :class:`RecordCheck`: ``ok`` and a short,
bounded ``reason`` for the status page (``"ok"``, ``"missing p= tag"``, ...).  A valid
record may carry a note after the ``ok``, in parentheses (``parse_dmarc``: a report URI
of an unsupported scheme, ignored).
Parsers never raise, whatever the input: anything a remote zone publishes is data.
Parts of a record echoed in a reason are made printable and cut to a few dozen
characters, so a reason stays bounded.

Choosing *which* TXT record to parse (exactly one ``v=spf1`` record, and so on) is
the caller's job; the ``is_*`` predicates here tell the caller which records count.

Also here: :func:`classify_dnsbl_answer` (listing code or blocklist error code) and
:func:`reverse_ip_query` (the name to look up on a DNSBL).

References: SPF RFC 7208 section 4.6 and 12, DMARC RFC 7489 section 6.4, MTA-STS RFC
8461 sections 3.1 and 3.2, TLS-RPT RFC 8460 section 3, DKIM RFC 6376 section 3.6.1 with
RFC 8301 and RFC 8463, null MX RFC 7505.
"""

from __future__ import annotations

__all__ = [
    "RecordCheck",
    "classify_dnsbl_answer",
    "is_dkim_candidate",
    "is_dmarc",
    "is_spf",
    "is_sts",
    "is_tlsrpt",
    "join_txt",
    "mx_pattern_matches",
    "parse_dkim",
    "parse_dmarc",
    "parse_mta_sts_policy",
    "parse_mta_sts_txt",
    "parse_spf",
    "parse_tlsrpt",
    "reverse_ip_query",
]

import base64
import binascii
import ipaddress
import re
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

# --- the result ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordCheck:
    """The verdict on one record: ``ok`` and a short human reason.

    ``fields`` carries the parsed values a caller may need (for example the ``mode``
    and ``mx`` patterns of an MTA-STS policy) as ``(name, value)`` pairs, in order.
    """

    ok: bool
    reason: str
    fields: tuple[tuple[str, str], ...] = ()

    def get(self, name: str) -> str | None:
        """The first value of field ``name``, if any."""
        for key, value in self.fields:
            if key == name:
                return value
        return None

    def values(self, name: str) -> tuple[str, ...]:
        """Every value of field ``name`` (``mx`` may repeat)."""
        return tuple(value for key, value in self.fields if key == name)


def _ok(fields: Iterable[tuple[str, str]] = ()) -> RecordCheck:
    return RecordCheck(True, "ok", tuple(fields))


def _bad(reason: str) -> RecordCheck:
    return RecordCheck(False, reason)


_SHOW_MAX = 32


def _show(text: str) -> str:
    """``text`` made printable ASCII and cut short, for echoing in a reason."""
    clean = "".join(c if "\x20" <= c < "\x7f" else "?" for c in text[: _SHOW_MAX + 1])
    if len(clean) > _SHOW_MAX:
        clean = clean[: _SHOW_MAX - 3] + "..."
    return clean


# --- shared lexical pieces ----------------------------------------------------------------------

_WSP = " \t"
_FWS = " \t\r\n"
_LDH_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_EXT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_EXT_VALUE_RE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")


def _is_hostname(name: str) -> bool:
    """A host name in LDH form (A-labels), optionally with one trailing dot."""
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253:
        return False
    return all(_LDH_LABEL_RE.fullmatch(label) for label in name.split("."))


def _mailto_error(uri: str) -> str | None:
    """Why ``uri`` is not a usable ``mailto:`` URI with one address, or ``None``."""
    if uri[:7].lower() != "mailto:":
        return "not a mailto: URI"
    addr = uri[7:].split("?", 1)[0]
    try:
        addr = urllib.parse.unquote(addr, errors="strict")
    except UnicodeDecodeError:
        return "bad address in mailto: URI"
    local, at, domain = addr.rpartition("@")
    if not at or not local or any(c in local for c in " \t\r\n,;<>") or not local.isascii():
        return "bad address in mailto: URI"
    if not local.isprintable():
        return "bad address in mailto: URI"
    if not _is_hostname(domain):
        return "bad domain in mailto: URI"
    return None


def _https_error(uri: str) -> str | None:
    if not uri.isascii() or any(c in uri for c in " \t\r\n") or not uri.isprintable():
        return "bad https: URI"
    try:
        parts = urllib.parse.urlsplit(uri)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "bad https: URI"
    if parts.scheme.lower() != "https" or not host:
        return "bad https: URI"
    if not _is_hostname(host):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return "bad host in https: URI"
    return None


def _tag_list(text: str) -> list[tuple[str, str]] | str:
    """Split a DKIM-style tag list (RFC 6376 section 3.2).  Returns pairs or an error.

    Tag names are returned as written; values with surrounding white space removed.
    Duplicate names make the whole list invalid.
    """
    if not text.isascii():
        return "non-ASCII character"
    parts = text.split(";")
    if parts and not parts[-1].strip(_FWS):
        parts.pop()  # a trailing ";" is allowed
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for part in parts:
        name, eq, value = part.partition("=")
        name = name.strip(_FWS)
        value = value.strip(_FWS)
        if not eq or not name:
            return "malformed tag list"
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            return f'bad tag name "{_show(name)}"'
        if any(not ("\x21" <= c <= "\x7e" or c in _FWS) for c in value):
            return f"bad character in {_show(name)}= tag"
        if name.lower() in seen:
            return f"duplicate {_show(name)}= tag"
        seen.add(name.lower())
        out.append((name, value))
    return out


def _field_list(text: str, version: str) -> list[tuple[str, str]] | str:
    """Split an MTA-STS or TLS-RPT TXT record: ``version`` then ``name=value`` fields.

    Fields are separated by ``*WSP ";" *WSP`` and a trailing separator is allowed
    (RFC 8461 section 3.1, RFC 8460 section 3).  Returns the fields after the version
    or an error.
    """
    if not text.isascii():
        return "non-ASCII character"
    parts = [p.strip(_WSP) for p in text.split(";")]
    if len(parts) > 1 and not parts[-1]:
        parts.pop()
    if parts[0] != version:
        return f'does not start with "{version}"'
    out: list[tuple[str, str]] = []
    for part in parts[1:]:
        name, eq, value = part.partition("=")
        if not eq or not _EXT_NAME_RE.fullmatch(name):
            return f'malformed field "{_show(part)}"'
        out.append((name, value))
    return out


# --- TXT helpers ----------------------------------------------------------------------------------


def join_txt(strings: Sequence[bytes]) -> str:
    """Join the character-strings of one TXT record into its text (RFC 7208 section 3.3).

    The strings are concatenated without any separator.  Bytes that are not UTF-8 become
    U+FFFD, which no parser here accepts.
    """
    return b"".join(strings).decode("utf-8", errors="replace")


def is_spf(text: str) -> bool:
    """Whether a TXT record is an SPF record: ``v=spf1`` followed by a space or the end."""
    return text[:6].lower() == "v=spf1" and (len(text) == 6 or text[6] == " ")


_DMARC_START_RE = re.compile(r"[ \t]*[vV][ \t]*=[ \t]*DMARC1[ \t]*(?:;|$)")


def is_dmarc(text: str) -> bool:
    """Whether a TXT record at ``_dmarc`` is a DMARC record (its first tag is ``v=DMARC1``)."""
    return _DMARC_START_RE.match(text) is not None


def is_sts(text: str) -> bool:
    """Whether a TXT record at ``_mta-sts`` is an MTA-STS record (starts ``v=STSv1``)."""
    return re.match(r"v=STSv1[ \t]*(?:;|$)", text) is not None


def is_tlsrpt(text: str) -> bool:
    """Whether a TXT record at ``_smtp._tls`` is a TLS-RPT record (starts ``v=TLSRPTv1``)."""
    return re.match(r"v=TLSRPTv1[ \t]*(?:;|$)", text) is not None


def is_dkim_candidate(text: str) -> bool:
    """Whether a TXT record at ``<selector>._domainkey`` claims to be a DKIM key.

    ``v=`` is optional in a key record, so any record counts unless it starts with a
    ``v=`` tag of another value.
    """
    m = re.match(r"[ \t\r\n]*v[ \t\r\n]*=[ \t\r\n]*([^;]*)", text)
    return m is None or m.group(1).strip(_FWS) == "DKIM1"


# --- SPF (RFC 7208) -------------------------------------------------------------------------------

_SPF_MODIFIER_RE = re.compile(r"([A-Za-z][A-Za-z0-9._-]*)=(.*)", re.DOTALL)
_SPF_MACRO_RE = re.compile(r"%\{([A-Za-z])([0-9]*)([rR]?)([.\-+,/_=]*)\}|%%|%_|%-")
_SPF_MACRO_LETTERS = set("slodiphcrtv")
_SPF_TOPLABEL_RE = re.compile(r"[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9]")
_SPF_DUAL_CIDR_RE = re.compile(r"(.*?)((?:/[0-9]*)?(?://[0-9]*)?)", re.DOTALL)
_SPF_LOOKUP_LIMIT = 10


def _macro_string(text: str, *, exp_text: bool) -> tuple[bool, str | None]:
    """Check a macro-string.  Returns (ends with a macro-expand, error or None)."""
    i = 0
    ends_with_macro = False
    while i < len(text):
        c = text[i]
        if c == "%":
            m = _SPF_MACRO_RE.match(text, i)
            if m is None:
                return False, "bad macro"
            if m.group(1) is not None:
                letter = m.group(1).lower()
                if letter not in _SPF_MACRO_LETTERS:
                    return False, f'unknown macro letter "{_show(m.group(1))}"'
                if letter in "crt" and not exp_text:
                    return False, f"macro %{{{letter}}} outside exp text"
                digits = m.group(2)
                if digits and not digits.lstrip("0"):
                    return False, "macro with 0 labels"
            ends_with_macro = True
            i = m.end()
        elif "\x21" <= c <= "\x7e":
            ends_with_macro = False
            i += 1
        else:
            return False, "bad character"
    return ends_with_macro, None


def _domain_spec_error(spec: str) -> str | None:
    """Why ``spec`` is not a domain-spec (RFC 7208 section 7.1), or ``None``."""
    if not spec:
        return "empty domain"
    ends_with_macro, err = _macro_string(spec, exp_text=False)
    if err:
        return err
    if ends_with_macro:
        return None
    # domain-end = "." toplabel ["."], all literal, after the last macro.
    macro_ends = [m.end() for m in _SPF_MACRO_RE.finditer(spec)]
    tail = spec[macro_ends[-1] :] if macro_ends else spec
    if tail.endswith("."):
        tail = tail[:-1]
    head, dot, top = tail.rpartition(".")
    if not dot or not _SPF_TOPLABEL_RE.fullmatch(top):
        return f'bad domain "{_show(spec)}"'
    if not macro_ends and not head:
        return f'bad domain "{_show(spec)}"'
    return None


def _cidr_error(text: str, maximum: int) -> str | None:
    if not re.fullmatch(r"0|[1-9][0-9]{0,2}", text) or int(text) > maximum:
        return f'bad CIDR length "/{_show(text)}"'
    return None


def _dual_cidr_error(suffix: str) -> str | None:
    if not suffix:
        return None
    v4, sep, v6 = suffix.partition("//")
    if v4:
        err = _cidr_error(v4[1:], 32)
        if err:
            return err
    if sep:
        return _cidr_error(v6, 128)
    return None


def _spf_mechanism(mech: str) -> tuple[str, str | None]:
    """Check one mechanism (without qualifier).  Returns (lower-case name, error)."""
    name, err = _spf_mechanism_error(mech)
    if err is not None and not err.startswith((name + " ", "unknown mechanism")):
        err = f"{name}: {err}"
    return name, err


def _spf_mechanism_error(mech: str) -> tuple[str, str | None]:
    cut = min((i for i in (mech.find(":"), mech.find("/")) if i >= 0), default=len(mech))
    name, rest = mech[:cut].lower(), mech[cut:]
    if name == "all":
        return name, None if not rest else 'bad "all"'
    if name in ("include", "exists"):
        if not rest.startswith(":"):
            return name, f"{name} needs a domain"
        return name, _domain_spec_error(rest[1:])
    if name in ("a", "mx"):
        if rest.startswith(":"):
            m = _SPF_DUAL_CIDR_RE.fullmatch(rest[1:])
            assert m is not None  # the pattern matches any string
            return name, _domain_spec_error(m.group(1)) or _dual_cidr_error(m.group(2))
        if not re.fullmatch(r"(?:/[0-9]*)?(?://[0-9]*)?", rest):
            return name, f'bad "{name}" mechanism'
        return name, _dual_cidr_error(rest)
    if name == "ptr":
        if not rest:
            return name, None
        if not rest.startswith(":"):
            return name, 'bad "ptr" mechanism'
        return name, _domain_spec_error(rest[1:])
    if name in ("ip4", "ip6"):
        if not rest.startswith(":"):
            return name, f"{name} needs an address"
        addr, slash, length = rest[1:].partition("/")
        try:
            if name == "ip4":
                ipaddress.IPv4Address(addr)
            else:
                if "%" in addr:
                    raise ValueError(addr)
                ipaddress.IPv6Address(addr)
        except ValueError:
            return name, f'bad address "{_show(addr)}"'
        if slash:
            return name, _cidr_error(length, 32 if name == "ip4" else 128)
        return name, None
    return name, f'unknown mechanism "{_show(mech)}"'


def parse_spf(text: str) -> RecordCheck:
    """Validate the syntax of one SPF record (RFC 7208 section 12).

    Checks the version, every term (qualifiers, mechanisms with their domain-specs,
    macros, addresses and CIDR lengths), that ``redirect=`` and ``exp=`` appear at
    most once, and the static part of the 10 DNS lookup limit.  Does not follow
    ``include:`` or ``redirect=``.
    """
    if not is_spf(text):
        return _bad('does not start with "v=spf1"')
    if not text.isascii():
        return _bad("non-ASCII character")
    fields: list[tuple[str, str]] = []
    modifiers: set[str] = set()
    lookups = 0
    for term in text[6:].split(" "):
        if not term:
            continue
        mod = _SPF_MODIFIER_RE.fullmatch(term)
        if mod is not None:
            name, value = mod.group(1).lower(), mod.group(2)
            if name in ("redirect", "exp"):
                if name in modifiers:
                    return _bad(f"duplicate {name}= modifier")
                modifiers.add(name)
                err = _domain_spec_error(value)
                lookups += name == "redirect"
            else:
                err = _macro_string(value, exp_text=False)[1]
            if err:
                return _bad(f"{_show(name)}=: {err}")
            fields.append((name, value))
            continue
        qualifier = term[0] if term[0] in "+-?~" else ""
        mech = term[len(qualifier) :]
        if not mech:
            return _bad("qualifier without mechanism")
        name, err = _spf_mechanism(mech)
        if err:
            return _bad(err)
        lookups += name in ("include", "a", "mx", "ptr", "exists")
        fields.append((qualifier + name, mech[len(name) :]))
    if lookups > _SPF_LOOKUP_LIMIT:
        return _bad(f"too many DNS lookups ({lookups} > {_SPF_LOOKUP_LIMIT})")
    return _ok(fields)


# --- DMARC (RFC 7489) -----------------------------------------------------------------------------

_DMARC_POLICIES = ("none", "quarantine", "reject")
_DMARC_URI_SIZE_RE = re.compile(r"(.+?)(?:!([0-9]+)([kmgtKMGT])?)?")


_URI_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):[\x21-\x7e]+")


def _dmarc_uris(tag: str, value: str) -> tuple[str | None, list[str]]:
    """Check the DMARC URIs of ``rua``/``ruf`` (RFC 7489 section 6.2 and 6.4).

    Returns (error or None, notes).  ``mailto:`` is the one scheme a receiver must
    support, so a bad ``mailto:`` URI is an error; a well-formed URI of another scheme
    is ignored, as section 6.3 says receivers do ("URIs not supported by Mail
    Receivers MUST be ignored"), and noted.
    """
    if not value:
        return f"empty {tag}= tag", []
    notes: list[str] = []
    for raw in value.split(","):
        uri = raw.strip(_FWS)
        m = _DMARC_URI_SIZE_RE.fullmatch(uri) if uri else None
        if m is None:
            return f"empty URI in {tag}=", []
        scheme = _URI_SCHEME_RE.fullmatch(m.group(1))
        if scheme is None:
            return f"{tag}=: not a URI", []
        if scheme.group(1).lower() != "mailto":
            notes.append(f'ignored {tag}= URI of scheme "{_show(scheme.group(1))}"')
            continue
        err = _mailto_error(m.group(1))
        if err:
            return f"{tag}=: {err}", []
    return None, notes


def parse_dmarc(text: str) -> RecordCheck:
    """Validate one DMARC policy record (RFC 7489 section 6.3 and 6.4).

    As section 6.4's ABNF has it (``dmarc-record = dmarc-version dmarc-sep
    [dmarc-request] ...``; "components other than dmarc-version and dmarc-request may
    appear in any order"), the record starts with ``v=DMARC1`` itself (no leading
    white space), and ``p=`` (REQUIRED for policy records, section 6.3) comes right
    after it.  ``sp``, ``pct``, ``rua``/``ruf`` (URIs with an optional ``!size``),
    ``adkim``/``aspf``, ``fo``, ``rf`` and ``ri`` are checked when present; unknown
    tags are ignored as the RFC requires; a tag given twice makes the record invalid.
    A report URI of a scheme other than ``mailto:`` is ignored (section 6.3): the
    record stays valid and ``reason`` is ``ok`` followed by a note in parentheses.
    """
    if text[:1] in tuple(_FWS):
        return _bad("starts with white space")
    tags = _tag_list(text)
    if isinstance(tags, str):
        return _bad(tags)
    if not tags or tags[0][0].lower() != "v" or tags[0][1] != "DMARC1":
        return _bad('first tag is not "v=DMARC1"')
    values = {name.lower(): value for name, value in tags}
    if "p" not in values:
        return _bad("missing p= tag")
    if tags[1][0].lower() != "p":
        return _bad('p= is not the tag right after "v=DMARC1"')
    for tag in ("p", "sp"):
        if tag in values and values[tag].lower() not in _DMARC_POLICIES:
            return _bad(f'bad {tag}= "{_show(values[tag])}"')
    for tag in ("adkim", "aspf"):
        if tag in values and values[tag].lower() not in ("r", "s"):
            return _bad(f'bad {tag}= "{_show(values[tag])}"')
    if "pct" in values:
        pct = values["pct"]
        if not re.fullmatch(r"[0-9]{1,3}", pct) or int(pct) > 100:
            return _bad(f'bad pct= "{_show(pct)}"')
    if "ri" in values and not re.fullmatch(r"[0-9]{1,10}", values["ri"]):
        return _bad(f'bad ri= "{_show(values["ri"])}"')
    if "fo" in values:
        opts = [o.strip(_FWS) for o in values["fo"].split(":")]
        if not all(o.lower() in ("0", "1", "d", "s") for o in opts):
            return _bad(f'bad fo= "{_show(values["fo"])}"')
    if "rf" in values:
        kws = [k.strip(_FWS) for k in values["rf"].split(":")]
        if not all(re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", k) for k in kws):
            return _bad(f'bad rf= "{_show(values["rf"])}"')
    notes: list[str] = []
    for tag in ("rua", "ruf"):
        if tag in values:
            err, tag_notes = _dmarc_uris(tag, values[tag])
            if err:
                return _bad(err)
            notes += tag_notes
    result = _ok((name.lower(), value) for name, value in tags)
    if notes:
        more = f", {len(notes) - 1} more" if len(notes) > 1 else ""
        return RecordCheck(True, f"ok ({notes[0]}{more})", result.fields)
    return result


# --- MTA-STS TXT (RFC 8461 section 3.1) -----------------------------------------------------------


def parse_mta_sts_txt(text: str) -> RecordCheck:
    """Validate one ``_mta-sts`` TXT record: ``v=STSv1; id=<1-32 letters or digits>``."""
    fields = _field_list(text, "v=STSv1")
    if isinstance(fields, str):
        return _bad(fields)
    ids = [value for name, value in fields if name == "id"]
    if not ids:
        return _bad("missing id= field")
    if len(ids) > 1:
        return _bad("duplicate id= field")
    if not re.fullmatch(r"[A-Za-z0-9]{1,32}", ids[0]):
        return _bad(f'bad id= "{_show(ids[0])}"')
    for name, value in fields:
        if name != "id" and not _EXT_VALUE_RE.fullmatch(value):
            return _bad(f'bad value of field "{_show(name)}"')
    return _ok(fields)


# --- TLS-RPT (RFC 8460 section 3) -----------------------------------------------------------------


def parse_tlsrpt(text: str) -> RecordCheck:
    """Validate one ``_smtp._tls`` TXT record: ``v=TLSRPTv1; rua=<mailto: or https: URIs>``."""
    fields = _field_list(text, "v=TLSRPTv1")
    if isinstance(fields, str):
        return _bad(fields)
    ruas = [value for name, value in fields if name == "rua"]
    if not ruas:
        return _bad("missing rua= field")
    if len(ruas) > 1:
        return _bad("duplicate rua= field")
    for raw in ruas[0].split(","):
        uri = raw.strip(_WSP)
        if uri[:6].lower() == "https:":
            err = _https_error(uri)
        elif uri[:7].lower() == "mailto:":
            err = _mailto_error(uri)
        else:
            err = "URI is not mailto: or https:" if uri else "empty URI"
        if err:
            return _bad(f"rua=: {err}")
    for name, value in fields:
        if name != "rua" and not _EXT_VALUE_RE.fullmatch(value):
            return _bad(f'bad value of field "{_show(name)}"')
    return _ok(fields)


# --- DKIM key record (RFC 6376 section 3.6.1, RFC 8463) -----------------------------------------

_DKIM_MIN_RSA_BITS = 1024  # RFC 8301 section 3.2


def _der(data: bytes, pos: int) -> tuple[int, int, int] | None:
    """One DER TLV at ``pos``: (tag, start of content, end of content), or ``None``."""
    if pos + 2 > len(data):
        return None
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if not 0 < n <= 4 or pos + n > len(data):
            return None
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > len(data):
        return None
    return tag, pos, pos + length


def _rsa_modulus_bits(der: bytes) -> int | None:
    """Bits in the modulus of a SubjectPublicKeyInfo or RSAPublicKey, or ``None``."""
    outer = _der(der, 0)
    if outer is None or outer[0] != 0x30:
        return None
    first = _der(der, outer[1])
    if first is None:
        return None
    if first[0] == 0x30:  # SubjectPublicKeyInfo: AlgorithmIdentifier, then BIT STRING
        bits = _der(der, first[2])
        if bits is None or bits[0] != 0x03 or bits[2] - bits[1] < 2 or der[bits[1]] != 0:
            return None
        inner = _der(der, bits[1] + 1)
        if inner is None or inner[0] != 0x30:
            return None
        first = _der(der, inner[1])
        if first is None:
            return None
    if first[0] != 0x02:
        return None
    return int.from_bytes(der[first[1] : first[2]], "big").bit_length()


def parse_dkim(text: str) -> RecordCheck:
    """Validate one DKIM key record (``<selector>._domainkey``).

    ``v=`` is optional but must be first and ``DKIM1`` when present; ``p=`` must be
    present and base64 (empty means the key was revoked); ``k=`` is ``rsa`` (the
    default) or ``ed25519``; an RSA key must be at least 1024 bits and an Ed25519 key
    32 bytes; ``s=``, when present, must include ``email`` or ``*``.
    """
    tags = _tag_list(text)
    if isinstance(tags, str):
        return _bad(tags)
    names = [name for name, _ in tags]
    values = dict(tags)
    if "v" in values and (names[0] != "v" or values["v"] != "DKIM1"):
        return _bad('v= is not "DKIM1" or not first')
    key_type = values.get("k", "rsa")
    if key_type not in ("rsa", "ed25519"):
        return _bad(f'unknown key type k="{_show(key_type)}"')
    if "p" not in values:
        return _bad("missing p= tag")
    key_text = "".join(values["p"].split())
    if not key_text:
        return _bad("key revoked (empty p=)")
    if not re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", key_text) or len(key_text) % 4:
        return _bad("p= is not base64")
    try:
        key = base64.b64decode(key_text, validate=True)
    except (binascii.Error, ValueError):
        return _bad("p= is not base64")
    if key_type == "ed25519":
        if len(key) != 32:
            return _bad(f"ed25519 key is {len(key)} bytes, not 32")
    else:
        bits = _rsa_modulus_bits(key)
        if bits is None:
            return _bad("p= is not an RSA public key")
        if bits < _DKIM_MIN_RSA_BITS:
            return _bad(f"RSA key too short ({bits} bits)")
    if "s" in values:
        services = {s.strip(_FWS) for s in values["s"].split(":")}
        if not services & {"*", "email"}:
            return _bad("key not for email (s=)")
    return _ok([(name, value) for name, value in tags if name != "p"] + [("k", key_type)])


# --- MTA-STS policy file (RFC 8461 section 3.2) ----------------------------------------------------

_STS_MAX_AGE_LIMIT = 31557600
_STS_MODES = ("enforce", "testing", "none")


def parse_mta_sts_policy(text: str) -> RecordCheck:
    """Validate an MTA-STS policy file (``/.well-known/mta-sts.txt``).

    Lines are ``key: value`` separated by CRLF or LF.  ``version: STSv1``, ``mode``
    (enforce, testing, none) and ``max_age`` (0 to 31557600) are required once each;
    ``mx`` patterns (a host name, or ``*.`` and a host name) are required unless the
    mode is ``none``.  Unknown keys are ignored.  ``fields`` holds ``mode``,
    ``max_age`` and every ``mx`` pattern.
    """
    if not text.isascii():
        return _bad("non-ASCII character")
    fields: list[tuple[str, str]] = []
    seen: set[str] = set()
    for raw_line in text.split("\n"):
        line = raw_line.removesuffix("\r").rstrip(_WSP)
        if not line:
            continue
        key, colon, value = line.partition(":")
        value = value.lstrip(_WSP)
        if not colon or not _EXT_NAME_RE.fullmatch(key):
            return _bad(f'malformed line "{_show(line)}"')
        if any(not ("\x20" <= c <= "\x7e" or c == "\t") for c in value):
            return _bad(f"bad character in {_show(key)}")
        if key in ("version", "mode", "max_age"):
            if key in seen:
                return _bad(f"duplicate {key}")
            seen.add(key)
        if key == "version" and value != "STSv1":
            return _bad(f'bad version "{_show(value)}"')
        if key == "mode" and value not in _STS_MODES:
            return _bad(f'bad mode "{_show(value)}"')
        if key == "max_age" and (not re.fullmatch(r"[0-9]{1,10}", value) or int(value) > _STS_MAX_AGE_LIMIT):
            return _bad(f'bad max_age "{_show(value)}"')
        if key == "mx":
            host = value[2:] if value.startswith("*.") else value
            if not _is_hostname(host) or host.endswith("."):
                return _bad(f'bad mx pattern "{_show(value)}"')
        if key in ("mode", "max_age", "mx"):
            fields.append((key, value))
    for key in ("version", "mode", "max_age"):
        if key not in seen:
            return _bad(f"missing {key}")
    mode = next(value for key, value in fields if key == "mode")
    if mode != "none" and not any(key == "mx" for key, _ in fields):
        return _bad("missing mx")
    return _ok(fields)


def mx_pattern_matches(pattern: str, host: str) -> bool:
    """Whether an MTA-STS ``mx`` pattern covers an MX host (RFC 8461 section 4.1).

    ``*.example.com`` matches exactly one extra leftmost label.  Case-insensitive; a
    trailing dot on the host is ignored.
    """
    pattern = pattern.lower()
    host = host.lower().removesuffix(".")
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first) and bool(dot) and rest == pattern[2:]
    return host == pattern


# --- DNSBL ----------------------------------------------------------------------------------------

_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
_DNSBL_ERRORS = ipaddress.IPv4Network("127.255.255.0/24")


def classify_dnsbl_answer(addresses: Sequence[str]) -> Literal["listed", "error"]:
    """Classify the A records a DNSBL returned for a query.

    Codes in 127.0.0.0/8 mean *listed*, except 127.255.255.0/24, which blocklists
    such as Spamhaus use for errors (127.255.255.252 typing error, .254 query through
    a public resolver, .255 excessive queries).  Anything outside 127/8 (a wildcard
    or hijacked answer), an unparsable address, or no address at all is an *error*.
    If a response mixes error codes and listing codes, it is an error: only real
    listing codes count.  NXDOMAIN (not listed) is the caller's to handle.
    """
    if not addresses:
        return "error"
    for text in addresses:
        try:
            ip = ipaddress.IPv4Address(text)
        except ValueError:
            return "error"
        if ip not in _LOOPBACK or ip in _DNSBL_ERRORS:
            return "error"
    return "listed"


def reverse_ip_query(ip: str, zone: str) -> str:
    """The DNSBL query name for ``ip`` in ``zone`` (no trailing dot).

    IPv4: reversed octets, ``127.0.0.2`` -> ``2.0.0.127.<zone>``.  IPv6: reversed
    nibbles (RFC 5782 section 2.4).  An IPv4-mapped IPv6 address is queried as IPv4.
    Raises ``ValueError`` for an invalid address or an empty zone: these come from
    configuration or from DNS answers already parsed, so a bad one is a bug.
    """
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    zone = zone.strip().strip(".")
    if not zone:
        raise ValueError("empty DNSBL zone")
    suffix = ".in-addr.arpa" if addr.version == 4 else ".ip6.arpa"
    return addr.reverse_pointer.removesuffix(suffix) + "." + zone
