"""The Authentication-Results parser: RFC 8601 and RFC 7601 examples, real MTAs, verdicts, bounds, fuzzing."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.roundtrip.authresults import (
    MAX_COMMENT_DEPTH,
    MAX_FIELDS,
    MAX_HEADER_CHARS,
    MAX_KEYWORD_CHARS,
    MAX_PROPERTIES,
    MAX_RESULTS,
    MAX_VALUE_CHARS,
    METHODS,
    NO_AUTHSERV_ID,
    RESULTS,
    AuthResults,
    MethodResult,
    parse_authentication_results,
    results_for,
    verdict,
)


def mr(method: str, result: str, *props: tuple[str, str], reason: str | None = None) -> MethodResult:
    return MethodResult(method, result, reason, tuple(props))


def ar(authserv_id: str, *results: MethodResult, version: int | None = None) -> AuthResults:
    return AuthResults(authserv_id, version, tuple(results))


# --- RFC 8601 and RFC 7601, Appendix B: every example, as printed ------------------------------------------------
#
# Each example is the message's Authentication-Results fields, newest first, with the field
# name and the RFC's folding (CRLF and the indentation of the RFC text).

RFC_EXAMPLES: list[tuple[str, list[str], list[AuthResults]]] = [
    (
        "rfc8601-B.2-nearly-trivial",
        ["Authentication-Results: example.org 1; none"],
        [ar("example.org", version=1)],
    ),
    (
        "rfc8601-B.3-service-provided",
        ["Authentication-Results: example.com;\r\n          spf=pass smtp.mailfrom=example.net"],
        [ar("example.com", mr("spf", "pass", ("smtp.mailfrom", "example.net")))],
    ),
    (
        "rfc8601-B.4-several-single-mta",
        [
            "Authentication-Results: example.com;\r\n"
            "          auth=pass (cram-md5) smtp.auth=sender@example.net;\r\n"
            "          spf=pass smtp.mailfrom=example.net",
            "Authentication-Results: example.com; iprev=pass\r\n          policy.iprev=192.0.2.200",
        ],
        [
            ar(
                "example.com",
                mr("auth", "pass", ("smtp.auth", "sender@example.net")),
                mr("spf", "pass", ("smtp.mailfrom", "example.net")),
            ),
            ar("example.com", mr("iprev", "pass", ("policy.iprev", "192.0.2.200"))),
        ],
    ),
    (
        "rfc8601-B.5-several-different-mtas",
        [
            "Authentication-Results: example.com;\r\n          dkim=pass (good signature) header.d=example.com",
            "Authentication-Results: example.com;\r\n"
            "          auth=pass (cram-md5) smtp.auth=sender@example.com;\r\n"
            "          spf=fail smtp.mailfrom=example.com",
        ],
        [
            ar("example.com", mr("dkim", "pass", ("header.d", "example.com"))),
            ar(
                "example.com",
                mr("auth", "pass", ("smtp.auth", "sender@example.com")),
                mr("spf", "fail", ("smtp.mailfrom", "example.com")),
            ),
        ],
    ),
    (
        "rfc8601-B.6-multi-tiered",
        [
            "Authentication-Results: example.com;\r\n"
            '      dkim=pass reason="good signature"\r\n'
            "        header.i=@mail-router.example.net;\r\n"
            '      dkim=fail reason="bad signature"\r\n'
            "        header.i=@newyork.example.com",
            "Authentication-Results: example.net;\r\n      dkim=pass (good signature) header.i=@newyork.example.com",
        ],
        [
            ar(
                "example.com",
                mr("dkim", "pass", ("header.i", "@mail-router.example.net"), reason="good signature"),
                mr("dkim", "fail", ("header.i", "@newyork.example.com"), reason="bad signature"),
            ),
            ar("example.net", mr("dkim", "pass", ("header.i", "@newyork.example.com"))),
        ],
    ),
    (
        "rfc8601-B.7-comment-heavy",
        [
            "Authentication-Results: foo.example.net (foobar) 1 (baz);\r\n"
            "    dkim (Because I like it) / 1 (One yay) = (wait for it) fail\r\n"
            "      policy (A dot can go here) . (like that) expired\r\n"
            "      (this surprised me) = (as I wasn't expecting it) 1362471462"
        ],
        [ar("foo.example.net", mr("dkim", "fail", ("policy.expired", "1362471462")), version=1)],
    ),
    # RFC 7601 differs in B.4 and B.5, which used Sender ID (since moved to historic status).
    (
        "rfc7601-B.4-several-single-mta",
        [
            "Authentication-Results: example.com;\r\n"
            "          auth=pass (cram-md5) smtp.auth=sender@example.net;\r\n"
            "          spf=pass smtp.mailfrom=example.net",
            "Authentication-Results: example.com;\r\n          sender-id=pass header.from=example.net",
        ],
        [
            ar(
                "example.com",
                mr("auth", "pass", ("smtp.auth", "sender@example.net")),
                mr("spf", "pass", ("smtp.mailfrom", "example.net")),
            ),
            ar("example.com", mr("sender-id", "pass", ("header.from", "example.net"))),
        ],
    ),
    (
        "rfc7601-B.5-several-different-mtas",
        [
            "Authentication-Results: example.com;\r\n"
            "          sender-id=fail header.from=example.com;\r\n"
            "          dkim=pass (good signature) header.d=example.com",
            "Authentication-Results: example.com;\r\n"
            "          auth=pass (cram-md5) smtp.auth=sender@example.com;\r\n"
            "          spf=fail smtp.mailfrom=example.com",
        ],
        [
            ar(
                "example.com",
                mr("sender-id", "fail", ("header.from", "example.com")),
                mr("dkim", "pass", ("header.d", "example.com")),
            ),
            ar(
                "example.com",
                mr("auth", "pass", ("smtp.auth", "sender@example.com")),
                mr("spf", "fail", ("smtp.mailfrom", "example.com")),
            ),
        ],
    ),
]


@pytest.mark.parametrize(("name", "fields", "expected"), RFC_EXAMPLES, ids=[n for n, _, _ in RFC_EXAMPLES])
def test_rfc_examples(name: str, fields: list[str], expected: list[AuthResults]) -> None:
    assert [parse_authentication_results(f) for f in fields] == expected
    # Without the field name, and unfolded, the values read the same.
    for field, want in zip(fields, expected, strict=True):
        value = field.split(":", 1)[1]
        assert parse_authentication_results(value) == want
        assert parse_authentication_results(re.sub(r"\r\n[ \t]+", " ", value)) == want


def test_rfc_b1_no_field_is_no_verdict() -> None:
    """B.1: a message without the field; nothing is selected and every method reads "none"."""
    assert results_for([], "example.com") == []
    assert [verdict([], m) for m in METHODS] == ["none"] * 4


def test_rfc_b5_b6_select_by_authserv_id() -> None:
    """B.6: the two fields come from two ADMDs; each receiver reads only its own."""
    _, fields, expected = RFC_EXAMPLES[4]
    assert results_for(fields, "example.com") == [expected[0]]
    assert results_for(fields, "example.net") == [expected[1]]
    assert verdict(results_for(fields, "example.com"), "dkim") == "pass"  # one of the two passed
    _, fields, expected = RFC_EXAMPLES[3]
    mine = results_for(fields, "EXAMPLE.COM")
    assert mine == expected
    assert [verdict(mine, m) for m in ("dkim", "spf", "auth", "dmarc")] == ["pass", "fail", "pass", "none"]


# --- grammar ------------------------------------------------------------------------------------------


def test_comments_everywhere_nested_and_with_escaped_parens() -> None:
    value = (
        "(lead) example.com (a (nested \\) paren) comment) 1 (v) ; (c) spf (d) = (e) pass (f (g \\( h)) "
        'reason (r) = (s) "ok" (t) smtp (h) . (i) mailfrom (j) = (k) x@example.com (l (m)) ; (n) '
        "dkim=pass(no space)header.d=example.com(tail)"
    )
    assert parse_authentication_results(value) == ar(
        "example.com",
        mr("spf", "pass", ("smtp.mailfrom", "x@example.com"), reason="ok"),
        mr("dkim", "pass", ("header.d", "example.com")),
        version=1,
    )


def test_semicolons_and_quotes_inside_comments_do_not_split() -> None:
    value = 'mx.example.net; dkim=pass (key; "unprotected) header.d=example.com; spf=pass (a "quote) smtp.mailfrom=b@c'
    parsed = parse_authentication_results(value)
    assert parsed is not None
    assert [(r.method, r.properties) for r in parsed.results] == [
        ("dkim", (("header.d", "example.com"),)),
        ("spf", (("smtp.mailfrom", "b@c"),)),
    ]


def test_quoted_strings_with_escapes() -> None:
    value = (
        'mx.example.net; dkim=fail reason="he said \\"bad\\" \\\\ (twice); sorry" '
        'header.b="Ab/C;d(e)" header.d="example.com"'
    )
    assert parse_authentication_results(value) == ar(
        "mx.example.net",
        mr(
            "dkim",
            "fail",
            ("header.b", "Ab/C;d(e)"),
            ("header.d", "example.com"),
            reason='he said "bad" \\ (twice); sorry',
        ),
    )


def test_quoted_local_part_keeps_its_quotes() -> None:
    parsed = parse_authentication_results('mx.example.net; spf=pass smtp.mailfrom="john doe"@example.com')
    assert parsed is not None and parsed.results[0].prop("smtp.mailfrom") == '"john doe"@example.com'


def test_quoted_authserv_id() -> None:
    assert parse_authentication_results('"Example.ORG"; none') == ar("example.org")
    assert parse_authentication_results('"mail gateway" 1; spf=pass') == ar(
        "mail gateway", mr("spf", "pass"), version=1
    )


def test_none_is_the_only_resinfo() -> None:
    assert parse_authentication_results("example.com; none") == ar("example.com")
    assert parse_authentication_results("EXAMPLE.COM ; NONE ;") == ar("example.com")
    assert parse_authentication_results("example.com (c); (c) none (c)") == ar("example.com")
    # "none" among results is not a result: it is skipped like any broken resinfo.
    assert parse_authentication_results("example.com; none; spf=pass") == ar("example.com", mr("spf", "pass"))
    assert parse_authentication_results("example.com; none=pass") == ar("example.com", mr("none", "pass"))


def test_keywords_are_case_insensitive_values_are_not() -> None:
    parsed = parse_authentication_results(
        "MX.Example.NET; SPF=PASS SMTP.MailFrom=Probe@Example.COM Reason=Ok; DKIM=Fail"
    )
    assert parsed == ar(
        "mx.example.net",
        mr("spf", "pass", ("smtp.mailfrom", "Probe@Example.COM"), reason="Ok"),
        mr("dkim", "fail"),
    )
    assert parsed.get("Dkim") == [mr("dkim", "fail")]
    assert parsed.results[0].prop("SMTP.MAILFROM") == "Probe@Example.COM"
    assert parsed.results[0].prop("smtp.helo") is None


@pytest.mark.parametrize(
    "value",
    [
        "mx.example.net;\r\n\tspf=pass\r\n\tsmtp.mailfrom=probe@example.com;\r\n\tdkim=pass header.d=example.com",
        "mx.example.net;\n spf=pass\n smtp.mailfrom=probe@example.com;\n dkim=pass header.d=example.com",
        "mx.example.net; spf=pass smtp.mailfrom=probe@example.com; dkim=pass header.d=example.com",
        "mx.example.net;\r\n spf=pass\r\n\t\t smtp.mailfrom=probe@example.com;\rdkim=pass\nheader.d=example.com",
    ],
)
def test_folded_input(value: str) -> None:
    assert parse_authentication_results(value) == ar(
        "mx.example.net",
        mr("spf", "pass", ("smtp.mailfrom", "probe@example.com")),
        mr("dkim", "pass", ("header.d", "example.com")),
    )


def test_folding_inside_a_quoted_string_is_unfolded() -> None:
    parsed = parse_authentication_results('mx.example.net; dkim=fail reason="bad\r\n signature"')
    assert parsed is not None and parsed.results[0].reason == "bad signature"


@pytest.mark.parametrize(
    ("value", "version"),
    [
        ("example.com 1; spf=pass", 1),
        ("example.com 2 (a future version); spf=pass", 2),
        ("example.com(c)1(c); spf=pass", 1),
        ("example.com; spf=pass", None),
    ],
)
def test_version(value: str, version: int | None) -> None:
    assert parse_authentication_results(value) == ar("example.com", mr("spf", "pass"), version=version)


def test_method_version_is_read_and_dropped() -> None:
    assert parse_authentication_results("example.com; dkim/1=pass; spf / 2 = fail") == ar(
        "example.com", mr("dkim", "pass"), mr("spf", "fail")
    )


def test_field_names_are_dropped() -> None:
    want = ar("mx.example.net", mr("spf", "pass"))
    for name in ("Authentication-Results:", "authentication-results :", "X-MS-Exchange-Authentication-Results:"):
        assert parse_authentication_results(f"{name} mx.example.net; spf=pass") == want


def test_policy_properties() -> None:
    value = (
        "mx.example.net; dmarc=fail (p=reject dis=reject) header.from=example.com policy.dmarc=reject "
        "policy.published-domain-policy=reject policy.applied-disposition=quarantine"
    )
    parsed = parse_authentication_results(value)
    assert parsed is not None
    (dmarc,) = parsed.get("dmarc")
    assert dmarc.properties == (
        ("header.from", "example.com"),
        ("policy.dmarc", "reject"),
        ("policy.published-domain-policy", "reject"),
        ("policy.applied-disposition", "quarantine"),
    )
    assert dmarc.prop("policy.published-domain-policy") == "reject"


def test_addresses_as_property_values() -> None:
    value = (
        "mx.example.net; spf=pass smtp.mailfrom=probe+tag@example.com; "
        "dkim=pass header.i=@example.com header.d=example.com; iprev=pass smtp.remote-ip=[192.0.2.1]"
    )
    parsed = parse_authentication_results(value)
    assert parsed is not None
    assert parsed.get("spf")[0].prop("smtp.mailfrom") == "probe+tag@example.com"
    assert parsed.get("dkim")[0].prop("header.i") == "@example.com"
    assert parsed.get("iprev")[0].prop("smtp.remote-ip") == "[192.0.2.1]"


def test_unknown_methods_results_and_properties_are_kept() -> None:
    value = "mx.example.net; x-custom=weird x-ptype.x-prop=1 dkim-atps=pass header.from=example.com; bimi=skipped"
    assert parse_authentication_results(value) == ar(
        "mx.example.net",
        mr("x-custom", "weird", ("x-ptype.x-prop", "1"), ("dkim-atps", "pass"), ("header.from", "example.com")),
        mr("bimi", "skipped"),
    )


# --- real MTAs ------------------------------------------------------------------------------------------

GMAIL = (
    "mx.google.com;\r\n"
    "       dkim=pass header.i=@example.com header.s=20230601 header.b=abc;\r\n"
    "       spf=pass (google.com: domain of x@example.com designates 192.0.2.1 as permitted sender)"
    " smtp.mailfrom=x@example.com;\r\n"
    "       dmarc=pass (p=NONE sp=NONE dis=NONE) header.from=example.com"
)
# Microsoft 365 (Exchange Online Protection): no authserv-id at all in Authentication-Results;
# mx.microsoft.com is its authserv-id only in ARC-Authentication-Results.
M365 = (
    "spf=pass (sender IP is 192.0.2.1) smtp.mailfrom=example.com; dkim=pass (signature was verified)"
    " header.d=example.com;dmarc=pass action=none header.from=example.com;compauth=pass reason=100"
)
M365_ARC = (
    "i=1; mx.microsoft.com 1; spf=pass\r\n smtp.mailfrom=example.com; dmarc=pass action=none\r\n"
    " header.from=example.com; dkim=pass header.d=example.com; arc=none"
)
# Outlook.com until about 2021: the recipient's domain as a stray item after some results.
HOTMAIL_2017 = (
    "spf=pass (sender IP is 192.30.252.194)\r\n smtp.mailfrom=github.com; hotmail.com; dkim=test (signature was"
    " verified)\r\n header.d=github.com;hotmail.com; dmarc=pass action=none\r\n header.from=github.com;"
)
OPENDKIM = (
    "mx1.example.test; dkim=pass (2048-bit key; unprotected) header.d=example.test header.i=@example.test"
    " header.a=rsa-sha256 header.s=mce header.b=AbCdEf12"
)
OPENDMARC = "mx1.example.test; dmarc=pass (p=none dis=none) header.from=example.test"
POLICYD_SPF = "mx1.example.test; spf=pass (sender SPF authorized) smtp.mailfrom=probe@example.test"

REAL_WORLD: list[tuple[str, str, AuthResults]] = [
    (
        "gmail",
        GMAIL,
        ar(
            "mx.google.com",
            mr("dkim", "pass", ("header.i", "@example.com"), ("header.s", "20230601"), ("header.b", "abc")),
            mr("spf", "pass", ("smtp.mailfrom", "x@example.com")),
            mr("dmarc", "pass", ("header.from", "example.com")),
        ),
    ),
    (
        "m365",
        M365,
        ar(
            NO_AUTHSERV_ID,
            mr("spf", "pass", ("smtp.mailfrom", "example.com")),
            mr("dkim", "pass", ("header.d", "example.com")),
            mr("dmarc", "pass", ("action", "none"), ("header.from", "example.com")),
            mr("compauth", "pass", reason="100"),
        ),
    ),
    (
        "m365-arc",
        M365_ARC,
        ar(
            "mx.microsoft.com",
            mr("spf", "pass", ("smtp.mailfrom", "example.com")),
            mr("dmarc", "pass", ("action", "none"), ("header.from", "example.com")),
            mr("dkim", "pass", ("header.d", "example.com")),
            mr("arc", "none"),
            version=1,
        ),
    ),
    (
        "hotmail-2017",
        HOTMAIL_2017,
        ar(
            NO_AUTHSERV_ID,
            mr("spf", "pass", ("smtp.mailfrom", "github.com")),
            mr("dkim", "test", ("header.d", "github.com")),
            mr("dmarc", "pass", ("action", "none"), ("header.from", "github.com")),
        ),
    ),
    (
        "opendkim",
        OPENDKIM,
        ar(
            "mx1.example.test",
            mr(
                "dkim",
                "pass",
                ("header.d", "example.test"),
                ("header.i", "@example.test"),
                ("header.a", "rsa-sha256"),
                ("header.s", "mce"),
                ("header.b", "AbCdEf12"),
            ),
        ),
    ),
    ("opendmarc", OPENDMARC, ar("mx1.example.test", mr("dmarc", "pass", ("header.from", "example.test")))),
    ("policyd-spf", POLICYD_SPF, ar("mx1.example.test", mr("spf", "pass", ("smtp.mailfrom", "probe@example.test")))),
    (
        "rfc8617-arc-authentication-results",
        "ARC-Authentication-Results: i=3; clochette.example.org; spf=fail\r\n    smtp.from=jqd@d1.example;"
        " dkim=fail (512-bit key)\r\n    header.i=@d1.example; dmarc=fail; arc=pass (as.2.gmail.example=pass,\r\n"
        "    ams.2.gmail.example=pass, as.1.lists.example.org=pass,\r\n"
        "    ams.1.lists.example.org=fail (message has been altered))",
        ar(
            "clochette.example.org",
            mr("spf", "fail", ("smtp.from", "jqd@d1.example")),
            mr("dkim", "fail", ("header.i", "@d1.example")),
            mr("dmarc", "fail"),
            mr("arc", "pass"),
        ),
    ),
    (
        "openarc-base64-with-slash",
        "mx1.example.test; arc=pass smtp.remote-ip=192.0.2.1 header.oldest-pass=0; dkim=pass header.b=gfT/i2+H=",
        ar(
            "mx1.example.test",
            mr("arc", "pass", ("smtp.remote-ip", "192.0.2.1"), ("header.oldest-pass", "0")),
            mr("dkim", "pass", ("header.b", "gfT/i2+H=")),
        ),
    ),
]


@pytest.mark.parametrize(("name", "value", "expected"), REAL_WORLD, ids=[n for n, _, _ in REAL_WORLD])
def test_real_world(name: str, value: str, expected: AuthResults) -> None:
    assert parse_authentication_results(value) == expected


def test_microsoft_365_verdicts() -> None:
    headers = [M365, "mx.example.net; spf=fail"]
    mine = results_for(headers, NO_AUTHSERV_ID)
    assert [r.authserv_id for r in mine] == [NO_AUTHSERV_ID]
    assert [verdict(mine, m) for m in (*METHODS, "compauth")] == ["pass", "pass", "pass", "none", "pass"]
    arc = results_for([M365_ARC, M365], "mx.microsoft.com")
    assert len(arc) == 1 and verdict(arc, "arc") == "none" and verdict(arc, "dkim") == "pass"


def test_opendkim_opendmarc_policyd_spf_stack() -> None:
    headers = [OPENDMARC, OPENDKIM, POLICYD_SPF]
    mine = results_for(headers, "mx1.example.test")
    assert len(mine) == 3
    assert {m: verdict(mine, m) for m in METHODS} == {"spf": "pass", "dkim": "pass", "dmarc": "pass", "arc": "none"}


# --- results_for: only the receiver's own fields -------------------------------------------------------


def test_forged_field_with_another_authserv_id_is_ignored() -> None:
    headers = [
        "mx.example.net; spf=fail smtp.mailfrom=probe@example.com; dkim=fail header.d=example.com",
        "mx.example.net.evil.test; spf=pass; dkim=pass; dmarc=pass",  # added by the sender
        "example.net; dmarc=pass",  # the parent domain is another authserv-id
        "not a header at all",
    ]
    mine = results_for(headers, "mx.example.net")
    assert [r.authserv_id for r in mine] == ["mx.example.net"]
    assert [verdict(mine, m) for m in ("spf", "dkim", "dmarc")] == ["fail", "fail", "none"]


def test_authserv_id_is_compared_exactly() -> None:
    headers = ["a.example.com; spf=pass", "example.com.; spf=pass", "example.co; spf=pass", "Example.COM; spf=fail"]
    assert [r.results[0].result for r in results_for(headers, "example.com")] == ["fail"]
    assert [r.authserv_id for r in results_for(headers, " A.Example.Com ")] == ["a.example.com"]
    assert results_for(headers, "") == []


def test_results_for_keeps_order_and_reads_the_first_fields_only() -> None:
    headers = [f"mx.example.net; dkim=pass header.s=s{i}" for i in range(MAX_FIELDS + 10)]
    mine = results_for(iter(headers), "mx.example.net")
    assert [r.results[0].prop("header.s") for r in mine] == [f"s{i}" for i in range(MAX_FIELDS)]


# --- verdict ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "method", "want"),
    [
        (["mx; dkim=fail; dkim=pass"], "dkim", "pass"),  # any pass wins
        (["mx; dkim=fail", "mx; dkim=pass"], "dkim", "pass"),  # across fields too
        (["mx; dkim=neutral; dkim=fail"], "dkim", "neutral"),  # else the first
        (["mx; dkim=temperror", "mx; dkim=permerror"], "DKIM", "temperror"),
        (["mx; spf=pass"], "dkim", "none"),  # absent
        (["mx; none"], "spf", "none"),
        (["mx; spf=SoftFail"], "spf", "softfail"),
        (["mx; spf=hardfail"], "spf", "fail"),  # RFC 5451's name
        (["mx; dmarc=bestguesspass"], "dmarc", "other"),  # unknown to the set
        (["mx; dkim=test"], "dkim", "other"),
        (["mx; dkim=policy"], "dkim", "policy"),
        (["mx; spf=none"], "spf", "none"),
        (["mx; arc=fail; arc=x-unknown"], "arc", "fail"),
        (["mx; arc=x-unknown; arc=fail"], "arc", "other"),
    ],
)
def test_verdict(values: list[str], method: str, want: str) -> None:
    results = [r for r in (parse_authentication_results(v) for v in values) if r is not None]
    assert len(results) == len(values)
    assert verdict(results, method) == want


def test_results_and_methods_sets() -> None:
    assert RESULTS == ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy", "other")
    assert METHODS == ("spf", "dkim", "dmarc", "arc")


# --- invalid fields and broken resinfos ---------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   \r\n\t",
        "example.com",  # neither "none" nor a resinfo
        "example.com;",
        "example.com; ;;",
        "example.com; garbage",
        "example.com; =pass; spf=; (just a comment)",
        "a@b; spf=pass",  # not a token
        "example.com junk; spf=pass",  # a word where only a version may be
        "example.com 1x; spf=pass",
        "example.com 1234567890; spf=pass",  # version too long
        "example.com 1 2; spf=pass",
        '""; spf=pass',
        '"  "; spf=pass',
        '"unterminated; spf=pass',
        '"bad\x01id"; spf=pass',
        '"' + "a" * 300 + '"; spf=pass',
        "a" * 300 + "; spf=pass",
        "; spf=pass",
        "(unterminated comment; spf=pass",
        "(" * 100 + "x" + ")" * 100 + " example.com; spf=pass",  # nested deeper than the cap
        "Authentication-Results:",
        "\x00\xff\ufffd",
    ],
)
def test_invalid(value: str) -> None:
    assert parse_authentication_results(value) is None


def test_broken_resinfos_are_skipped_and_good_ones_kept() -> None:
    value = "mx.example.net; =pass; spf=pass; dkim; hotmail.com; spf=(oops); dmarc=fail; " + "x" * 65 + "=pass"
    assert parse_authentication_results(value) == ar("mx.example.net", mr("spf", "pass"), mr("dmarc", "fail"))


def test_a_broken_part_after_the_methodspec_keeps_what_was_stated() -> None:
    value = "mx.example.net; dkim=pass header.d=example.com stray header.s=sel; spf=fail smtp.mailfrom=; dmarc=pass x.y"
    assert parse_authentication_results(value) == ar(
        "mx.example.net",
        mr("dkim", "pass", ("header.d", "example.com")),
        mr("spf", "fail"),
        mr("dmarc", "pass"),
    )
    # A comment left open (a field cut short) ends the field, keeping what came before it.
    assert parse_authentication_results("mx.example.net; spf=pass smtp.mailfrom=a@b (cut") == ar(
        "mx.example.net", mr("spf", "pass", ("smtp.mailfrom", "a@b"))
    )
    # An unterminated quoted string runs to the end: the results inside it are not results.
    assert parse_authentication_results('mx.example.net; dkim=fail reason="x; spf=pass') == ar(
        "mx.example.net", mr("dkim", "fail")
    )


def test_only_the_first_reason_counts() -> None:
    parsed = parse_authentication_results("mx; dkim=fail reason=first reason=second header.d=x")
    assert parsed == ar("mx", mr("dkim", "fail", ("header.d", "x"), reason="first"))


def test_trailing_semicolons() -> None:
    assert parse_authentication_results("mx.example.net; spf=pass;") == ar("mx.example.net", mr("spf", "pass"))
    assert parse_authentication_results("mx.example.net; spf=pass ; ; ") == ar("mx.example.net", mr("spf", "pass"))
    assert parse_authentication_results(M365 + ";") == REAL_WORLD[1][2]


def test_arc_instance_tag_needs_an_authserv_id_after_it() -> None:
    # A Microsoft-style field whose first method happens to be "i" is not an ARC field.
    assert parse_authentication_results("i=1; spf=pass") == ar(NO_AUTHSERV_ID, mr("i", "1"), mr("spf", "pass"))
    assert parse_authentication_results("i = 2 (c) ; mx.example.net; spf=pass") == ar(
        "mx.example.net", mr("spf", "pass")
    )


# --- bounds ---------------------------------------------------------------------------------------------


def test_huge_and_adversarial_inputs_are_bounded() -> None:
    megabyte = 1 << 20
    inputs = [
        "mx.example.net; " + "dkim=pass header.d=example.com; " * (megabyte // 32),
        "mx.example.net; dkim=pass " + "header.b=aaaa " * (megabyte // 14) + "; spf=pass",
        "mx.example.net; dkim=pass (" + "(" * megabyte,
        "mx.example.net; dkim=pass " + "(" * megabyte + ")" * megabyte,
        "mx.example.net; " + ";" * megabyte,
        "mx.example.net; " + '"' * megabyte,
        "mx.example.net; spf=pass reason=" + "\\" * megabyte,
        "mx.example.net; " + "a" * megabyte + "=pass",
        "x" * megabyte,
        "(" * megabyte,
        "i=1;" * (megabyte // 4),
    ]
    # (no time limit here: the bound is on the work, MAX_HEADER_CHARS, and it is checked below)
    parsed = [parse_authentication_results(v) for v in inputs]
    many, props = parsed[0], parsed[1]
    assert many is not None and len(many.results) == MAX_RESULTS
    assert props is not None and len(props.results[0].properties) == MAX_PROPERTIES
    assert props.get("spf") == []  # beyond MAX_HEADER_CHARS: not read
    assert parsed[2] == parsed[3] == ar("mx.example.net", mr("dkim", "pass"))
    for p in parsed:
        assert p is None or (
            len(p.results) <= MAX_RESULTS and all(len(r.properties) <= MAX_PROPERTIES for r in p.results)
        )


def test_values_are_printable_and_cut() -> None:
    value = f'mx; dkim=fail reason="{"r" * 1000}" header.b={"b" * 1000} header.s="a\x00b\tc\u2028d"'
    parsed = parse_authentication_results(value)
    assert parsed is not None
    (dkim,) = parsed.results
    assert dkim.reason == "r" * MAX_VALUE_CHARS
    assert dkim.properties == (("header.b", "b" * MAX_VALUE_CHARS), ("header.s", "a b c d"))


def test_comment_depth_cap() -> None:
    ok = "mx; spf=pass " + "(" * MAX_COMMENT_DEPTH + ")" * MAX_COMMENT_DEPTH + " smtp.mailfrom=a@b"
    deep = "mx; spf=pass " + "(" * (MAX_COMMENT_DEPTH + 1) + ")" * (MAX_COMMENT_DEPTH + 1) + " smtp.mailfrom=a@b"
    assert parse_authentication_results(ok) == ar("mx", mr("spf", "pass", ("smtp.mailfrom", "a@b")))
    assert parse_authentication_results(deep) == ar("mx", mr("spf", "pass"))


def test_keyword_length_cap() -> None:
    longest = "m" * MAX_KEYWORD_CHARS
    assert parse_authentication_results(f"mx; {longest}=pass; {longest}x=pass") == ar("mx", mr(longest, "pass"))


def test_header_cap() -> None:
    head, tail = "mx; x=y reason=", "; spf=pass"
    filler = "a" * (MAX_HEADER_CHARS - len(head) - len(tail))
    inside = parse_authentication_results(head + filler + tail)
    assert inside is not None and inside.results[-1] == mr("spf", "pass")
    cut = parse_authentication_results(head + filler + "a" + tail)  # one character too many: "spf=pas"
    assert cut is not None and cut.results[-1] == mr("spf", "pas")


# --- hypothesis: never raises; generated headers round-trip ------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_fuzz_never_raises(text: str) -> None:
    parsed = parse_authentication_results(text)
    assert parsed is None or isinstance(parsed, AuthResults)
    chosen = results_for([text], parsed.authserv_id if parsed else "x")
    assert all(verdict(chosen, m) in RESULTS for m in METHODS)


_PIECES = st.sampled_from(
    [
        "mx.example.net", "example.com", ";", "; ", "=", ".", "/", "@", " ", "\r\n\t", "(", ")", "\\", '"',
        "spf", "dkim", "dmarc", "arc", "pass", "fail", "none", "reason", "smtp", "mailfrom", "header", "d", "i",
        "1", "12", "policy", "x@example.com", "(comment)", "((nested))", '"quoted"', "i=1;", "Authentication-Results:",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=60), st.sampled_from(["", " "]))
def test_fuzz_structured_never_raises(pieces: list[str], joiner: str) -> None:
    text = joiner.join(pieces)
    parsed = parse_authentication_results(text)
    if parsed is not None:
        assert parsed.authserv_id == parsed.authserv_id.lower()
        assert len(parsed.results) <= MAX_RESULTS
        for r in parsed.results:
            assert r.method == r.method.lower() and r.result == r.result.lower()
            assert all(k == k.lower() for k, _ in r.properties)
    for m in METHODS:
        assert verdict([parsed] if parsed else [], m) in RESULTS


# Generated well-formed fields: structure first, then a rendering with random CFWS, folding and case.

_LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"
_KEYWORD = st.builds(str.__add__, st.sampled_from(_LOWER), st.text(_LOWER + "_-", max_size=15))
_METHOD = st.sampled_from(["spf", "dkim", "dmarc", "arc", "auth", "iprev", "compauth", "x-tls"]) | _KEYWORD
_RESULT = (
    st.sampled_from(["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy"]) | _KEYWORD
)
_PRINTABLE = st.text(
    st.characters(exclude_categories=("C", "Zl", "Zp", "Zs"), include_characters=" "), max_size=40
).filter(str.isprintable)
_DOMAIN = st.builds("{}.{}".format, st.text(_LOWER + "-", min_size=1, max_size=10), st.sampled_from(["com", "test"]))
_VALUE = st.one_of(
    _PRINTABLE,
    st.builds("{}@{}".format, st.text(_LOWER + ".+_-", min_size=1, max_size=12), _DOMAIN),
    _DOMAIN.map("@{}".format),
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=", min_size=8, max_size=12),
)
_KEY = st.one_of(
    st.builds("{}.{}".format, st.sampled_from(["smtp", "header", "body", "policy"]) | _KEYWORD, _KEYWORD),
    _KEYWORD.filter(lambda k: k != "reason"),
)
_AUTHSERV_ID = st.one_of(
    st.builds(str.__add__, st.sampled_from(_LOWER), st.text(_LOWER + ".-", max_size=30)),
    _PRINTABLE.map(str.strip).map(str.lower).filter(lambda s: s != "" and s == s.strip().lower()),
)
_TOKEN = re.compile(r"[!#-'*+\-.0-9A-Z^-~]+")
_RUN = re.compile(r'[^ \t\r\n;()"]+')


@st.composite
def method_results(draw: st.DrawFn) -> MethodResult:
    props = draw(st.lists(st.tuples(_KEY, _VALUE), max_size=4))
    return MethodResult(draw(_METHOD), draw(_RESULT), draw(st.none() | _VALUE), tuple(props))


@st.composite
def auth_results(draw: st.DrawFn) -> AuthResults:
    results = tuple(draw(st.lists(method_results(), max_size=5)))
    if results and draw(st.booleans()) and draw(st.booleans()):
        return AuthResults(NO_AUTHSERV_ID, None, results)  # Microsoft style
    return AuthResults(draw(_AUTHSERV_ID), draw(st.none() | st.integers(0, 10**6)), results)


@dataclass
class Renderer:
    """Writes a field in one of the many ways the grammar allows; ``rnd`` picks the way."""

    rnd: random.Random

    def cfws(self, required: bool) -> str:
        options = [" ", "  ", "\r\n\t", "\r\n ", "\n  ", " (comment) ", " (nested (co\\)mment)) ", "(c)", "\t"]
        return self.rnd.choice(options if required else ["", *options])

    def keyword(self, word: str) -> str:
        return self.rnd.choice([word, word.upper(), word.title()])

    def quote(self, text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def value(self, text: str) -> str:
        return text if _RUN.fullmatch(text) and self.rnd.random() < 0.5 else self.quote(text)

    def resinfo(self, r: MethodResult) -> str:
        out = self.cfws(False) + self.keyword(r.method) + self.cfws(False)
        if self.rnd.random() < 0.3:
            out += "/" + self.cfws(False) + "1" + self.cfws(False)
        out += "=" + self.cfws(False) + self.keyword(r.result)
        if r.reason is not None:
            out += self.cfws(True) + self.keyword("reason") + self.cfws(False) + "=" + self.cfws(False)
            out += self.value(r.reason)
        for key, value in r.properties:
            ptype, dot, prop = key.partition(".")
            out += self.cfws(True) + self.keyword(ptype)
            if dot:
                out += self.cfws(False) + "." + self.cfws(False) + self.keyword(prop)
            out += self.cfws(False) + "=" + self.cfws(False) + self.value(value)
        return out + self.cfws(False)

    def header(self, a: AuthResults) -> str:
        out = self.rnd.choice(["", "Authentication-Results:", "authentication-results: "])
        if a.authserv_id == NO_AUTHSERV_ID:
            return out + ";".join(self.resinfo(r) for r in a.results)
        out += self.cfws(False)
        out += a.authserv_id.upper() if _TOKEN.fullmatch(a.authserv_id) else self.quote(a.authserv_id)
        if a.version is not None:
            out += self.cfws(True) + str(a.version)
        out += self.cfws(False)
        if not a.results:
            out += ";" + self.cfws(False) + self.keyword("none")
        else:
            out += "".join(";" + self.resinfo(r) for r in a.results)
        return out + self.rnd.choice(["", ";", " ; ", "\r\n"])


@settings(max_examples=200, deadline=None)
@given(auth_results(), st.randoms(use_true_random=False))
def test_generated_fields_round_trip(want: AuthResults, rnd: random.Random) -> None:
    header = Renderer(rnd).header(want)
    assert parse_authentication_results(header) == want, header
    if want.authserv_id:
        assert results_for(["forged.invalid; spf=pass", header], want.authserv_id) == [want]


# --- the comment after a result (DMARC policy and disposition live there) ----------------------------


@pytest.mark.parametrize(
    ("value", "method", "comment"),
    [
        ("mx-in.example.test; dmarc=pass (p=reject dis=none) header.from=signed.test", "dmarc", "p=reject dis=none"),
        ("mx.google.com; dmarc=pass (p=NONE dis=NONE) header.from=gmail.com", "dmarc", "p=NONE dis=NONE"),
        ("mx; dkim=pass (2048-bit key; unprotected) header.d=a.test", "dkim", "2048-bit key; unprotected"),
        ("mx; spf=pass (a (nested) one) (and a second) smtp.mailfrom=a.test", "spf", "a (nested) one and a second"),
        ("mx; spf=pass (quoted \\) paren) smtp.mailfrom=a.test", "spf", "quoted ) paren"),
        ("mx; dkim=pass header.d=a.test (a comment after a property is not the result's)", "dkim", ""),
        ("mx; dkim=fail (comment never closed", "dkim", ""),
        ("mx; dmarc=fail", "dmarc", ""),
    ],
)
def test_comment_after_result(value: str, method: str, comment: str) -> None:
    parsed = parse_authentication_results(value)
    assert parsed is not None
    (result,) = parsed.get(method)
    assert result.comment == comment


def test_comment_is_bounded_and_printable() -> None:
    parsed = parse_authentication_results("mx; dmarc=pass (" + "x\x01" * 1000 + ") header.from=a.test")
    assert parsed is not None
    (result,) = parsed.get("dmarc")
    assert len(result.comment) <= MAX_VALUE_CHARS
    assert result.comment.isprintable()
    assert result.prop("header.from") == "a.test"
