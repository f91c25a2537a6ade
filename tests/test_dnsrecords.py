"""Table tests and property tests of the pure DNS record parsers in exporter.probers.dnsrecords."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.probers.dnsrecords import (
    RecordCheck,
    classify_dnsbl_answer,
    is_dkim_candidate,
    is_dmarc,
    is_spf,
    is_sts,
    is_tlsrpt,
    join_txt,
    mx_pattern_matches,
    parse_dkim,
    parse_dmarc,
    parse_mta_sts_policy,
    parse_mta_sts_txt,
    parse_spf,
    parse_tlsrpt,
    reverse_ip_query,
)

# --- SPF ------------------------------------------------------------------------------------------

SPF_GOOD = [
    "v=spf1 -all",
    "v=spf1",
    "v=spf1 mx -all",
    "V=SPF1 MX ~ALL",
    "v=spf1  mx   -all  ",
    "v=spf1 ip4:192.0.2.0/24 ip4:198.51.100.7 ip6:2001:db8::/32 ip6:::1 -all",
    "v=spf1 include:_spf.example.com ?all",
    "v=spf1 a:mail.example.com/28//64 mx:example.com/24 a/24 mx//64 -all",
    "v=spf1 a:example.com. -all",
    "v=spf1 redirect=_spf.example.com",
    "v=spf1 exists:%{i}._spf.%{d} -all",
    "v=spf1 include:%{l1r+-}.%{d2}._spf.example.com -all",
    "v=spf1 ptr:example.com ptr +all",
    "v=spf1 -all exp=explain._spf.%{d}",
    "v=spf1 mx foo-bar=anything%%value -all",
    "v=spf1 " + " ".join(f"include:s{i}.example.com" for i in range(10)) + " -all",
]

SPF_BAD = [
    ("v=spf2 -all", 'does not start with "v=spf1"'),
    ("v=spf1-all", 'does not start with "v=spf1"'),
    ("spf1 -all", 'does not start with "v=spf1"'),
    (" v=spf1 -all", 'does not start with "v=spf1"'),
    ("v=spf1 a:foo", 'a: bad domain "foo"'),
    ("v=spf1 include:.com", "include: bad domain"),
    ("v=spf1 ip4:256.1.1.1", 'ip4: bad address "256.1.1.1"'),
    ("v=spf1 ip4:192.0.2.01", "ip4: bad address"),
    ("v=spf1 ip4:192.0.2.0/33", 'ip4: bad CIDR length "/33"'),
    ("v=spf1 ip4:192.0.2.0/024", "ip4: bad CIDR length"),
    ("v=spf1 ip6:2001:db8::/129", 'ip6: bad CIDR length "/129"'),
    ("v=spf1 ip6:fe80::1%eth0", "ip6: bad address"),
    ("v=spf1 ip4", "ip4 needs an address"),
    ("v=spf1 mx:example.com/24//", "mx: bad CIDR length"),
    ("v=spf1 a//129", "a: bad CIDR length"),
    ("v=spf1 include", "include needs a domain"),
    ("v=spf1 all:example.com", 'all: bad "all"'),
    ("v=spf1 foo -all", 'unknown mechanism "foo"'),
    ("v=spf1 - all", "qualifier without mechanism"),
    ("v=spf1 redirect=a.example.com redirect=b.example.com", "duplicate redirect= modifier"),
    ("v=spf1 -all exp=a.example.com exp=b.example.com", "duplicate exp= modifier"),
    ("v=spf1 redirect=", "redirect=: empty domain"),
    ("v=spf1 exists:%{x}.example.com", "exists: unknown macro letter"),
    ("v=spf1 include:%{c}.example.com", "include: macro %{c} outside exp text"),
    ("v=spf1 include:%{d0}.example.com", "include: macro with 0 labels"),
    ("v=spf1 include:example.com%", "include: bad macro"),
    ("v=spf1 a:ex\u00e4mple.com", "non-ASCII character"),
    (
        "v=spf1 " + " ".join(f"include:s{i}.example.com" for i in range(10)) + " mx -all",
        "too many DNS lookups (11 > 10)",
    ),
]


@pytest.mark.parametrize("text", SPF_GOOD)
def test_spf_good(text: str) -> None:
    result = parse_spf(text)
    assert result.ok and result.reason == "ok", result.reason


@pytest.mark.parametrize(("text", "reason"), SPF_BAD)
def test_spf_bad(text: str, reason: str) -> None:
    result = parse_spf(text)
    assert not result.ok
    assert result.reason.startswith(reason), result.reason


def test_spf_fields() -> None:
    result = parse_spf("v=spf1 ip4:192.0.2.1 ~all redirect=x.example.com")
    assert result.fields == (("ip4", ":192.0.2.1"), ("~all", ""), ("redirect", "x.example.com"))


def test_is_spf() -> None:
    assert is_spf("v=spf1") and is_spf("v=spf1 -all") and is_spf("V=Spf1 mx")
    assert not is_spf("v=spf10 -all") and not is_spf("google-site-verification=x") and not is_spf("")


# --- DMARC ----------------------------------------------------------------------------------------

DMARC_GOOD = [
    "v=DMARC1; p=none",
    "v=DMARC1; p=reject; rua=mailto:dmarc@example.com",
    "v=DMARC1;p=quarantine;pct=50;sp=reject;adkim=s;aspf=r",
    "v=DMARC1; p=reject; rua=mailto:a@example.com,mailto:b@example.net!10m; ruf=mailto:f@example.com; fo=1:d:s",
    "v = DMARC1 ; p = reject ;",
    "v=DMARC1; p=reject; future=tag",
    "v=DMARC1; p=none; ri=86400; rf=afrf",
    "v=DMARC1; p=REJECT; sp=None",
    "v=DMARC1; p=reject; pct=0",
    "v=DMARC1; p=reject; rua=mailto:dmarc%2Breports@example.com",
]

DMARC_BAD = [
    ("v=DMARC1", "missing p= tag"),
    ("v=DMARC1; rua=mailto:x@example.com", "missing p= tag"),
    ("p=reject; v=DMARC1", 'first tag is not "v=DMARC1"'),
    ("v=DMARC2; p=reject", 'first tag is not "v=DMARC1"'),
    ("v=dmarc1; p=reject", 'first tag is not "v=DMARC1"'),
    ("", 'first tag is not "v=DMARC1"'),
    ("v=DMARC1; p=block", 'bad p= "block"'),
    ("v=DMARC1; p=reject; sp=all", 'bad sp= "all"'),
    ("v=DMARC1; p=reject; pct=101", 'bad pct= "101"'),
    ("v=DMARC1; p=reject; pct=-1", 'bad pct= "-1"'),
    ("v=DMARC1; p=reject; pct=" + "9" * 5000, "bad pct="),
    ("v=DMARC1; p=reject; rua=dmarc@example.com", "rua=: not a URI"),
    ("v=DMARC1; p=reject; rua=mailto:example.com", "rua=: bad address in mailto: URI"),
    ("v=DMARC1; p=reject; ruf=mailto:f@bad_domain", "ruf=: bad domain in mailto: URI"),
    ("v=DMARC1; p=reject; rua=", "empty rua= tag"),
    ("v=DMARC1; p=reject; rua=mailto:a@example.com,", "empty URI in rua="),
    ("v=DMARC1; p=reject; adkim=x", 'bad adkim= "x"'),
    ("v=DMARC1; p=reject; aspf=relaxed", 'bad aspf= "relaxed"'),
    ("v=DMARC1; p=reject; p=none", "duplicate p= tag"),
    ("v=DMARC1; p=reject; fo=2", 'bad fo= "2"'),
    ("v=DMARC1; p=reject; ri=daily", 'bad ri= "daily"'),
    ("v=DMARC1; p=reject;; rua=mailto:a@example.com", "malformed tag list"),
    ("v=DMARC1; p=r\u00e9ject", "non-ASCII character"),
]


@pytest.mark.parametrize("text", DMARC_GOOD)
def test_dmarc_good(text: str) -> None:
    result = parse_dmarc(text)
    assert result.ok and result.reason == "ok", result.reason


@pytest.mark.parametrize(("text", "reason"), DMARC_BAD)
def test_dmarc_bad(text: str, reason: str) -> None:
    result = parse_dmarc(text)
    assert not result.ok
    assert result.reason == reason or result.reason.startswith(reason), result.reason


# RFC 7489 section 6.4: dmarc-record = dmarc-version dmarc-sep [dmarc-request] ..., "components
# other than dmarc-version and dmarc-request may appear in any order"; dmarc-version = "v" *WSP
# "=" ... (nothing before the "v").  Section 6.3: "p" is REQUIRED for policy records.
DMARC_ORDER_BAD = [
    (" v=DMARC1; p=reject", "starts with white space"),
    ("\tv=DMARC1; p=reject", "starts with white space"),
    ("v=DMARC1; rua=mailto:a@example.com; p=reject", 'p= is not the tag right after "v=DMARC1"'),
    ("v=DMARC1; sp=none; p=reject", 'p= is not the tag right after "v=DMARC1"'),
    ("v=DMARC1; future=tag; p=reject", 'p= is not the tag right after "v=DMARC1"'),
]


@pytest.mark.parametrize(("text", "reason"), DMARC_ORDER_BAD)
def test_dmarc_version_then_policy(text: str, reason: str) -> None:
    result = parse_dmarc(text)
    assert (result.ok, result.reason, result.fields) == (False, reason, ())


# RFC 7489 section 6.3, rua: "A Mail Receiver MUST implement support for a "mailto:" URI ...
# URIs not supported by Mail Receivers MUST be ignored."  Any URI (section 6.2, 6.4: dmarc-uri =
# URI) is allowed: one of another scheme is ignored with a note, the record stays valid.
DMARC_URI_NOTES = [
    ("v=DMARC1; p=reject; rua=https://example.com/r", 'ok (ignored rua= URI of scheme "https")'),
    ("v=DMARC1; p=reject; ruf=ftp://example.com/f!10m", 'ok (ignored ruf= URI of scheme "ftp")'),
    (
        "v=DMARC1; p=reject; rua=https://example.com/r,mailto:a@example.com; ruf=xmpp:f@example.com",
        'ok (ignored rua= URI of scheme "https", 1 more)',
    ),
]


@pytest.mark.parametrize(("text", "reason"), DMARC_URI_NOTES)
def test_dmarc_unsupported_uri_scheme_is_ignored(text: str, reason: str) -> None:
    result = parse_dmarc(text)
    assert result.ok and result.reason == reason
    assert result.get("p") == "reject"


def test_dmarc_fields_and_predicate() -> None:
    assert parse_dmarc("v=DMARC1; P=quarantine").get("p") == "quarantine"
    # a bad mailto: URI (the scheme every receiver supports) or no URI at all is still an error
    assert parse_dmarc("v=DMARC1; p=none; rua=https://example.com/r,mailto:bad").reason.startswith("rua=: bad")
    assert parse_dmarc("v=DMARC1; p=none; rua=://example.com").reason == "rua=: not a URI"
    assert is_dmarc("v=DMARC1; p=none") and is_dmarc(" v = DMARC1") and is_dmarc("v=DMARC1")
    assert not is_dmarc("v=DMARC10; p=none") and not is_dmarc("p=none; v=DMARC1")


# --- MTA-STS TXT and TLS-RPT ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["v=STSv1; id=20190429T010101;", "v=STSv1;id=abc", "v=STSv1; id=1; ext.name=value", "v=STSv1 ; id=" + "a" * 32],
)
def test_mta_sts_txt_good(text: str) -> None:
    assert parse_mta_sts_txt(text).ok


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("v=STSv1;", "missing id= field"),
        ("v=STSv1", "missing id= field"),
        ("v=STSv1; id=", 'bad id= ""'),
        ("v=STSv1; id=abc-def", 'bad id= "abc-def"'),
        ("v=STSv1; id=" + "a" * 33, "bad id="),
        ("v=STSv2; id=1", 'does not start with "v=STSv1"'),
        ("id=1; v=STSv1", 'does not start with "v=STSv1"'),
        ("v=STSv1; id=1; id=2", "duplicate id= field"),
        ("v=STSv1; id=1; bad", 'malformed field "bad"'),
        ("v=STSv1; id=1; x=a=b", 'bad value of field "x"'),
    ],
)
def test_mta_sts_txt_bad(text: str, reason: str) -> None:
    result = parse_mta_sts_txt(text)
    assert not result.ok and result.reason.startswith(reason), result.reason


@pytest.mark.parametrize(
    "text",
    [
        "v=TLSRPTv1; rua=mailto:tlsrpt@example.com",
        "v=TLSRPTv1;rua=https://reporting.example.com/v1/tlsrpt",
        "v=TLSRPTv1; rua=mailto:a@example.com, https://r.example.com:8443/x;",
    ],
)
def test_tlsrpt_good(text: str) -> None:
    assert parse_tlsrpt(text).ok


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("v=TLSRPTv1;", "missing rua= field"),
        ("v=TLSRPTv1; rua=ftp://x.example.com", "rua=: URI is not mailto: or https:"),
        ("v=TLSRPTv1; rua=mailto:nope", "rua=: bad address in mailto: URI"),
        ("v=TLSRPTv1; rua=https://", "rua=: bad https: URI"),
        ("v=TLSRPTv1; rua=https://x.example.com:99999/", "rua=: bad https: URI"),
        ("v=TLSRPTv1; rua=", "rua=: empty URI"),
        ("v=TLSRPTv2; rua=mailto:a@example.com", 'does not start with "v=TLSRPTv1"'),
        ("v=TLSRPTv1; rua=mailto:a@example.com; rua=mailto:b@example.com", "duplicate rua= field"),
    ],
)
def test_tlsrpt_bad(text: str, reason: str) -> None:
    result = parse_tlsrpt(text)
    assert not result.ok and result.reason == reason, result.reason


def test_sts_and_tlsrpt_predicates() -> None:
    assert is_sts("v=STSv1; id=1") and is_sts("v=STSv1") and not is_sts("v=STSv10; id=1")
    assert is_tlsrpt("v=TLSRPTv1;rua=mailto:a@b.example") and not is_tlsrpt("v=tlsrptv1; rua=x")


# --- DKIM -----------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


RSA_2048 = _b64(
    rsa.generate_private_key(public_exponent=65537, key_size=2048)
    .public_key()
    .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
)
RSA_512_PKCS1 = _b64(_der(0x30, _der_int((1 << 511) | 1) + _der_int(65537)))
RSA_1024_PKCS1 = _b64(_der(0x30, _der_int((1 << 1023) | 1) + _der_int(65537)))
ED25519 = _b64(
    ed25519.Ed25519PrivateKey.generate()
    .public_key()
    .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
)


@pytest.mark.parametrize(
    "text",
    [
        f"v=DKIM1; k=rsa; p={RSA_2048}",
        f"p={RSA_2048}",
        f"v=DKIM1; h=sha256; k=rsa; s=email; t=s; p={RSA_2048[:100]} {RSA_2048[100:]}",
        f"v=DKIM1; p={RSA_1024_PKCS1}",
        f"v=DKIM1; k=ed25519; p={ED25519}",
        f"k=ed25519; p={ED25519}; s=*:email",
    ],
)
def test_dkim_good(text: str) -> None:
    result = parse_dkim(text)
    assert result.ok, result.reason


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("v=DKIM1; k=rsa", "missing p= tag"),
        ("v=DKIM1; p=", "key revoked (empty p=)"),
        ("v=DKIM1; p=!!!!", "p= is not base64"),
        ("v=DKIM1; p=abc", "p= is not base64"),
        # A 1024-bit SubjectPublicKeyInfo cut off after 40 characters, as a 255-octet limit does.
        ("v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC1", "p= is not an RSA public key"),
        (f"v=DKIM1; k=rsa; p={RSA_512_PKCS1}", "RSA key too short (512 bits)"),
        (f"v=DKIM1; k=dsa; p={RSA_2048}", 'unknown key type k="dsa"'),
        (f"v=DKIM2; p={RSA_2048}", 'v= is not "DKIM1" or not first'),
        (f"k=rsa; v=DKIM1; p={RSA_2048}", 'v= is not "DKIM1" or not first'),
        (f"v=DKIM1; k=ed25519; p={_b64(b'x' * 31)}", "ed25519 key is 31 bytes, not 32"),
        (f"v=DKIM1; s=other; p={RSA_2048}", "key not for email (s=)"),
        (f"v=DKIM1; p={RSA_2048}; p={RSA_2048}", "duplicate p= tag"),
    ],
)
def test_dkim_bad(text: str, reason: str) -> None:
    result = parse_dkim(text)
    assert not result.ok and result.reason == reason, result.reason


def test_dkim_candidate() -> None:
    assert is_dkim_candidate("v=DKIM1; p=abc") and is_dkim_candidate("p=abc") and is_dkim_candidate("k=rsa")
    assert not is_dkim_candidate("v=spf1 -all") and not is_dkim_candidate("v=DKIM2; p=x")


# --- MTA-STS policy -------------------------------------------------------------------------------

POLICY = "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmax_age: 604800\n"


@pytest.mark.parametrize(
    "text",
    [
        POLICY,
        POLICY.replace("\n", "\r\n"),
        "version: STSv1\r\nmode: none\r\nmax_age: 0",
        "version:STSv1\nmode:testing\nmx:mx.example.com\nmax_age:31557600\nfuture_key: anything at all\n",
    ],
)
def test_policy_good(text: str) -> None:
    assert parse_mta_sts_policy(text).ok


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("mode: enforce\nmx: a.example.com\nmax_age: 1", "missing version"),
        ("version: STSv2\nmode: enforce\nmx: a.example.com\nmax_age: 1", 'bad version "STSv2"'),
        ("version: STSv1\nmode: strict\nmx: a.example.com\nmax_age: 1", 'bad mode "strict"'),
        ("version: STSv1\nmode: enforce\nmx: a.example.com\nmax_age: 31557601", 'bad max_age "31557601"'),
        ("version: STSv1\nmode: enforce\nmx: a.example.com\nmax_age: 1d", 'bad max_age "1d"'),
        ("version: STSv1\nmode: enforce\nmx: a.example.com", "missing max_age"),
        ("version: STSv1\nmode: testing\nmax_age: 86400", "missing mx"),
        ("version: STSv1\nmode: enforce\nmx: *.*.example.com\nmax_age: 1", 'bad mx pattern "*.*.example.com"'),
        ("version: STSv1\nmode enforce\nmx: a.example.com\nmax_age: 1", 'malformed line "mode enforce"'),
        ("version: STSv1\nmode: enforce\nmode: none\nmx: a.example.com\nmax_age: 1", "duplicate mode"),
        ("<html>Not found</html>", 'malformed line "<html>Not found</html>"'),
    ],
)
def test_policy_bad(text: str, reason: str) -> None:
    result = parse_mta_sts_policy(text)
    assert not result.ok and result.reason == reason, result.reason


def test_policy_fields_and_mx_patterns() -> None:
    result = parse_mta_sts_policy(POLICY)
    assert result.get("mode") == "enforce" and result.get("max_age") == "604800"
    assert result.values("mx") == ("mail.example.com", "*.example.net")
    assert mx_pattern_matches("mail.example.com", "MAIL.example.com.")
    assert mx_pattern_matches("*.example.net", "mx1.example.net")
    assert not mx_pattern_matches("*.example.net", "a.b.example.net")
    assert not mx_pattern_matches("*.example.net", "example.net")
    assert not mx_pattern_matches("mail.example.com", "mail2.example.com")


# --- DNSBL and TXT helpers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (["127.0.0.2"], "listed"),
        (["127.0.0.10", "127.0.0.4"], "listed"),
        (["127.1.2.3"], "listed"),
        (["127.255.255.252"], "error"),
        (["127.255.255.254"], "error"),
        (["127.255.255.255"], "error"),
        (["127.0.0.2", "127.255.255.254"], "error"),
        (["192.0.2.1"], "error"),
        (["not-an-ip"], "error"),
        (["::1"], "error"),
        ([], "error"),
    ],
)
def test_classify_dnsbl_answer(answer: list[str], expected: str) -> None:
    assert classify_dnsbl_answer(answer) == expected


def test_reverse_ip_query() -> None:
    assert reverse_ip_query("127.0.0.2", "zen.example.test") == "2.0.0.127.zen.example.test"
    assert reverse_ip_query("192.0.2.99", "bl.test.") == "99.2.0.192.bl.test"
    assert reverse_ip_query("::ffff:192.0.2.99", "bl.test") == "99.2.0.192.bl.test"
    v6 = reverse_ip_query("2001:db8::1", "bl.test")
    assert v6 == "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test"
    with pytest.raises(ValueError):
        reverse_ip_query("example.com", "bl.test")
    with pytest.raises(ValueError):
        reverse_ip_query("192.0.2.1", ".")


def test_join_txt() -> None:
    assert join_txt([b"v=spf1 ", b"-all"]) == "v=spf1 -all"
    assert join_txt([b"v=DKIM1; p=", b"abc", b"def"]) == "v=DKIM1; p=abcdef"
    assert join_txt([]) == ""
    assert join_txt([b"\xff"]) == "\ufffd"


# --- parsers never raise ------------------------------------------------------------------------------

PARSERS = [parse_spf, parse_dmarc, parse_mta_sts_txt, parse_tlsrpt, parse_dkim, parse_mta_sts_policy]

_SPFISH = st.text(alphabet=" v=spf1:./%{}-+~?aipx46mxlncudeoredtrhs_0123456789", max_size=80)
_TAGGISH = st.text(alphabet=" \t;=,:!/@.vpDMARCSTLRPKI1adkimrusf-_0123456789mailtohttps+", max_size=120)
_POLICYISH = st.text(alphabet=":\r\n \t*.versionmodeSTv1enforcetestingmxmax_age0123456789", max_size=120)

_TEXTS = st.one_of(
    st.text(max_size=200),
    _SPFISH.map(lambda t: "v=spf1 " + t),
    _TAGGISH.map(lambda t: "v=DMARC1; p=none;" + t),
    _TAGGISH.map(lambda t: "v=STSv1;" + t),
    _TAGGISH.map(lambda t: "v=TLSRPTv1; rua=" + t),
    _TAGGISH.map(lambda t: "v=DKIM1; p=" + t),
    _POLICYISH,
)


@settings(max_examples=400, deadline=None)
@given(_TEXTS)
def test_parsers_never_raise(text: str) -> None:
    for parse in PARSERS:
        result = parse(text)
        assert isinstance(result, RecordCheck)
        assert result.reason and len(result.reason) <= 100
        assert result.reason.isprintable() and result.reason.isascii()
    for predicate in (is_spf, is_dmarc, is_sts, is_tlsrpt, is_dkim_candidate):
        assert isinstance(predicate(text), bool)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=4), st.lists(st.binary(max_size=50), max_size=4))
def test_dnsbl_and_join_never_raise(addresses: list[str], strings: list[bytes]) -> None:
    assert classify_dnsbl_answer(addresses) in ("listed", "error")
    assert isinstance(join_txt(strings), str)
