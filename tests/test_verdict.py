"""The receiver's verdict on a probe (exporter/roundtrip/verdict.py): authentication results from the
receiver's own header only, DKIM alignment, DMARC policy and disposition, and the spam filters' verdict,
as headers real receivers write them; and how a route counts and exports it."""

from __future__ import annotations

import pytest
from test_roundtrip import T0, Clock, found, route_config, samples, value

from exporter.roundtrip.authresults import parse_authentication_results
from exporter.roundtrip.receiver import Found, parse_fetch
from exporter.roundtrip.route import Route
from exporter.roundtrip.verdict import (
    AUTH_METHODS,
    DMARC_POLICIES,
    SPAM_VERDICTS,
    dkim_aligned,
    dmarc_policy,
    judge,
    spam_verdict,
)

ID = "mx-in.example.test"

# What OpenDKIM, OpenDMARC and policyd-spf add (each its own field, the newest on top).
ALIGNED = (
    ("Authentication-Results", f"{ID}; dmarc=pass (p=reject dis=none) header.from=signed.test"),
    (
        "Authentication-Results",
        f"{ID};\r\n\tdkim=pass (2048-bit key; unprotected) header.d=signed.test header.i=@signed.test "
        "header.a=rsa-sha256 header.s=mce header.b=Ab1+/cd2",
    ),
    ("Authentication-Results", f"{ID}; spf=pass (mailfrom) smtp.mailfrom=signed.test (client-ip=127.0.0.1)"),
)


def fields_with(*extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return (*extra, *ALIGNED)


# --- judge: whose header counts ---------------------------------------------------------------------


def test_aligned_probe_passes_all_three() -> None:
    v = judge(ALIGNED, authserv_id=ID, from_domain="probe@signed.test")
    assert v.auth_checked and v.header_present
    assert v.auth == (("spf", "pass"), ("dkim", "pass"), ("dmarc", "pass"))
    assert v.dkim_aligned is True
    assert (v.dmarc_policy, v.dmarc_disposition) == ("reject", "none")
    assert (v.spam, v.spam_score) == ("none", None)
    assert v.describe() == "spf=pass dkim=pass dmarc=pass (p=reject) spam=none"


def test_a_forged_header_from_another_authserv_id_is_ignored() -> None:
    forged = ("Authentication-Results", "evil.test; spf=pass; dkim=pass header.d=signed.test; dmarc=pass")
    real = (
        ("Authentication-Results", f"{ID}; dkim=fail (bad signature) header.d=wrongkey.test"),
        ("Authentication-Results", f"{ID}; dmarc=fail (p=reject dis=none) header.from=wrongkey.test"),
    )
    v = judge((*real, forged), authserv_id=ID, from_domain="wrongkey.test")
    assert v.auth == (("spf", "none"), ("dkim", "fail"), ("dmarc", "fail"))
    assert v.dkim_aligned is None
    # and a forgery alone is no verdict at all
    v = judge((forged,), authserv_id=ID, from_domain="signed.test")
    assert not v.header_present
    assert v.auth == (("spf", "none"), ("dkim", "none"), ("dmarc", "none"))
    assert v.describe() == "no Authentication-Results from the receiver spam=none"


def test_authserv_id_match_is_exact_and_case_insensitive() -> None:
    fields = (("Authentication-Results", "MX-IN.Example.TEST; spf=fail smtp.mailfrom=a.test"),)
    assert judge(fields, authserv_id=ID, from_domain="a.test").result("spf") == "fail"
    assert not judge(fields, authserv_id="example.test", from_domain="a.test").header_present
    assert not judge(fields, authserv_id="in.example.test", from_domain="a.test").header_present


def test_no_authserv_id_no_auth_verdict_but_spam_still_read() -> None:
    v = judge(fields_with(("X-Spam-Status", "Yes, score=9.1 required=5.0")), authserv_id=None, from_domain="a.test")
    assert not v.auth_checked and v.auth == ()
    assert (v.spam, v.spam_score) == ("spam", 9.1)
    assert v.describe() == "spam=spam score=9.1"


def test_microsoft_365_header_without_authserv_id() -> None:
    fields = (
        (
            "Authentication-Results",
            "spf=pass (sender IP is 192.0.2.10) smtp.mailfrom=signed.test; dkim=pass (signature was verified) "
            "header.d=signed.test;dmarc=pass action=none header.from=signed.test;compauth=pass reason=100",
        ),
        ("X-MS-Exchange-Organization-SCL", "1"),
    )
    v = judge(fields, authserv_id="", from_domain="signed.test")
    assert v.auth == (("spf", "pass"), ("dkim", "pass"), ("dmarc", "pass"))
    assert (v.dmarc_policy, v.dmarc_disposition) == ("unknown", "none")
    assert (v.spam, v.spam_score) == ("ham", 1.0)


def test_arc_only_when_stated_and_several_dkim_results_fold_to_pass() -> None:
    fields = (
        (
            "Authentication-Results",
            "mx.google.com; dkim=fail header.i=@old.test; dkim=pass header.i=@signed.test; arc=pass (i=1); "
            "spf=softfail smtp.mailfrom=signed.test; "
            "dmarc=pass (p=QUARANTINE sp=NONE dis=NONE) header.from=signed.test",
        ),
    )
    v = judge(fields, authserv_id="mx.google.com", from_domain="signed.test")
    assert v.auth == (("spf", "softfail"), ("dkim", "pass"), ("dmarc", "pass"), ("arc", "pass"))
    assert v.dkim_aligned is True
    assert (v.dmarc_policy, v.dmarc_disposition) == ("quarantine", "none")
    assert "arc" not in dict(judge(ALIGNED, authserv_id=ID, from_domain="signed.test").auth)


# --- alignment ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signer", "author", "aligned"),
    [
        ("signed.test", "signed.test", True),
        ("Signed.Test.", "signed.test", True),
        ("mail.signed.test", "signed.test", True),  # relaxed: a child of the From domain
        ("signed.test", "news.signed.test", True),  # relaxed: a parent
        ("esp.example", "signed.test", False),  # a third party's signature
        ("notsigned.test", "signed.test", False),  # a suffix match is not a parent
        ("test", "signed.test", False),  # a top-level domain is not an organisational domain
    ],
)
def test_dkim_alignment(signer: str, author: str, aligned: bool) -> None:
    ar = parse_authentication_results(f"{ID}; dkim=pass header.d={signer}")
    assert ar is not None
    assert dkim_aligned([ar], author) is aligned


def test_alignment_uses_header_i_when_header_d_is_missing_and_none_when_nothing_passed() -> None:
    ar = parse_authentication_results(f"{ID}; dkim=pass header.i=probe@mail.signed.test")
    assert ar is not None and dkim_aligned([ar], "probe@signed.test") is True
    failed = parse_authentication_results(f"{ID}; dkim=fail header.d=signed.test")
    assert failed is not None and dkim_aligned([failed], "signed.test") is None


# --- DMARC policy and disposition ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resinfo", "policy", "disposition"),
    [
        ("dmarc=fail (p=reject dis=none) header.from=a.test", "reject", "none"),  # OpenDMARC, RejectFailures off
        ("dmarc=fail (p=reject dis=reject) header.from=a.test", "reject", "reject"),
        ("dmarc=pass (p=NONE sp=QUARANTINE dis=NONE) header.from=a.test", "none", "none"),  # Gmail: sp= is not p=
        ("dmarc=fail action=oreject header.from=a.test", "unknown", "quarantine"),  # Microsoft 365: to Junk
        ("dmarc=fail action=pct.quarantine header.from=a.test", "unknown", "none"),
        ("dmarc=fail action=quarantine header.from=a.test", "unknown", "quarantine"),
        ("dmarc=bestguesspass action=none header.from=a.test", "unknown", "none"),
        ("dmarc=fail policy.published-domain-policy=quarantine header.from=a.test", "quarantine", "unknown"),
        ("dmarc=none header.from=a.test", "unknown", "unknown"),
        ("dmarc=fail (p=weird dis=bogus) header.from=a.test", "unknown", "unknown"),
    ],
)
def test_dmarc_policy_and_disposition(resinfo: str, policy: str, disposition: str) -> None:
    ar = parse_authentication_results(f"{ID}; {resinfo}")
    assert ar is not None
    got = dmarc_policy([ar])
    assert got == (policy, disposition)
    assert set(got) <= set(DMARC_POLICIES)


def test_dmarc_absent() -> None:
    assert dmarc_policy([]) == ("unknown", "unknown")


# --- spam filters ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "verdict", "score"),
    [
        ([("X-Spam-Status", "No, score=-0.1 required=5.0 tests=DKIM_SIGNED,DKIM_VALID autolearn=ham")], "ham", -0.1),
        ([("X-Spam-Status", "Yes, score=12.5 required=5.0\r\n\ttests=BAYES_99")], "spam", 12.5),
        ([("X-Spam-Flag", "YES"), ("X-Spam-Status", "Yes, score=6.0")], "spam", 6.0),
        ([("X-Spam-Flag", "NO"), ("X-Spam-Status", "Yes, score=6.0")], "ham", 6.0),  # the flag decides
        ([("X-Spam", "Yes"), ("X-Rspamd-Score", "8.20")], "spam", 8.2),  # rspamd milter headers
        ([("X-Rspamd-Action", "no action"), ("X-Rspamd-Score", "-1.5")], "ham", -1.5),
        ([("X-Rspamd-Action", "add header")], "spam", None),
        ([("X-Rspamd-Action", "greylist")], "ham", None),
        ([("X-MS-Exchange-Organization-SCL", "5")], "spam", 5.0),
        ([("X-MS-Exchange-Organization-SCL", "-1")], "ham", -1.0),
        ([("X-Forefront-Antispam-Report", "CIP:192.0.2.1;CTRY:;LANG:en;SCV:NSPM;SFV:NSPM;SCL:1;SRV:;")], "ham", 1.0),
        ([("X-Forefront-Antispam-Report", "CIP:192.0.2.1;SFV:SPM;SCL:9;")], "spam", 9.0),
        ([("X-Spam-Status", "Maybe, score=nan")], "none", None),
        ([("X-Spam-Status", "No, score=1e999")], "ham", None),  # not finite: no score
        ([], "none", None),
    ],
)
def test_spam_verdict(fields: list[tuple[str, str]], verdict: str, score: float | None) -> None:
    got = spam_verdict(fields)
    assert got == (verdict, score)
    assert got[0] in SPAM_VERDICTS


def test_spam_verdict_takes_the_first_field_of_a_kind() -> None:
    # the receiver's filter adds its field on top; an older one further down is not the verdict
    fields = [("X-Spam-Status", "No, score=0.2"), ("X-Spam-Status", "Yes, score=50")]
    assert spam_verdict(fields) == ("ham", 0.2)


# --- fetched with the probe --------------------------------------------------------------------------------


def test_parse_fetch_keeps_the_verdict_fields_in_order() -> None:
    header = (
        b"Authentication-Results: mx-in.example.test;\r\n\tdmarc=pass (p=reject dis=none) header.from=signed.test\r\n"
        b"Authentication-Results: mx-in.example.test; spf=pass smtp.mailfrom=signed.test\r\n"
        b"X-Spam-Status: No, score=0.0\r\n"
        b"Received: from a by b; Sun, 22 Nov 2026 13:04:24 +0000\r\n"
        b"X-Mail-Continuity-Probe: 006b02e858a4f4a130a47cba828cdf2d\r\n\r\n"
    )
    lines = [b"3 FETCH (UID 5 BODY[HEADER.FIELDS (X-MAIL-CONTINUITY-PROBE RECEIVED AUTHENTICATION-RESULTS)] {1}"]
    (rec,) = parse_fetch([*lines, bytearray(header), b")"])
    assert [name for name, _ in rec.fields] == ["Authentication-Results", "Authentication-Results", "X-Spam-Status"]
    v = judge(rec.fields, authserv_id=ID, from_domain="signed.test")
    assert v.auth == (("spf", "pass"), ("dkim", "none"), ("dmarc", "pass"))
    assert v.spam == "ham"


# --- a route counts and exports it -------------------------------------------------------------------------


def verdict_found(token: str, seen_at: float, fields: tuple[tuple[str, str], ...], folder: str = "INBOX") -> Found:
    base = found(token, seen_at, folder)
    return Found(base.token, base.folder, base.uid, base.seen_at, base.received, base.internal_date, fields)


def route_with_id(**kw: str) -> Route:
    return Route(route_config(extra_receive=f', authserv_id: "{ID}"', **kw), clock=Clock(T0))


def deliver(route: Route, fields: tuple[tuple[str, str], ...], folder: str = "INBOX") -> None:
    p = route.new_probe()
    route.sent(p, route.clock())
    route.on_found(verdict_found(p.token, route.clock() + 1, fields, folder))
    assert p.outcome is not None


def test_route_series_exist_from_start_up_only_with_an_authserv_id() -> None:
    plain = Route(route_config(), clock=Clock(T0))
    assert value(plain, "mail_roundtrip_auth_results_total", route="r1", method="dmarc", result="pass") is None
    for v in SPAM_VERDICTS:
        assert value(plain, "mail_roundtrip_spam_verdicts_total", route="r1", verdict=v) == 0
    route = route_with_id()
    for method in AUTH_METHODS:
        for result in ("pass", "fail", "none"):
            assert value(route, "mail_roundtrip_auth_results_total", route="r1", method=method, result=result) == 0
    # no gauge before a probe was found: nothing is known yet
    assert value(route, "mail_roundtrip_auth_header_present", route="r1") is None
    assert value(route, "mail_roundtrip_dkim_aligned", route="r1") is None


def test_route_counts_each_found_probe_and_the_gauges_follow_the_newest() -> None:
    route = route_with_id()
    # the route sends From: probe@example.test; make the receiver's verdict about that domain
    aligned = tuple((n, v.replace("signed.test", "example.test")) for n, v in ALIGNED)
    for _ in range(3):
        deliver(route, aligned)
    wrong = (
        ("Authentication-Results", f"{ID}; dkim=fail (bad signature) header.d=example.test"),
        ("Authentication-Results", f"{ID}; dmarc=fail (p=quarantine dis=quarantine) header.from=example.test"),
        ("X-Spam-Status", "Yes, score=7.5"),
    )
    deliver(route, wrong, folder="Junk")
    count = "mail_roundtrip_auth_results_total"
    assert value(route, count, route="r1", method="spf", result="pass") == 3
    assert value(route, count, route="r1", method="spf", result="none") == 1
    assert value(route, count, route="r1", method="dkim", result="pass") == 3
    assert value(route, count, route="r1", method="dkim", result="fail") == 1
    assert value(route, count, route="r1", method="dmarc", result="fail") == 1
    assert value(route, "mail_roundtrip_spam_verdicts_total", route="r1", verdict="none") == 3
    assert value(route, "mail_roundtrip_spam_verdicts_total", route="r1", verdict="spam") == 1
    assert value(route, "mail_roundtrip_probes_total", route="r1", result="junk") == 1
    # the gauges: the newest probe (the junk one)
    state = {
        dict(labels)["result"]: v
        for (name, labels), v in samples(route).items()
        if name == "mail_roundtrip_auth_result" and dict(labels)["method"] == "dmarc"
    }
    assert state.pop("fail") == 1 and set(state.values()) == {0.0}
    assert value(route, "mail_roundtrip_auth_header_present", route="r1") == 1
    assert value(route, "mail_roundtrip_dkim_aligned", route="r1") == 0
    assert value(route, "mail_roundtrip_dmarc_policy", route="r1", policy="quarantine") == 1
    assert value(route, "mail_roundtrip_dmarc_policy", route="r1", policy="reject") == 0
    assert value(route, "mail_roundtrip_dmarc_disposition", route="r1", disposition="quarantine") == 1
    assert value(route, "mail_roundtrip_spam_verdict", route="r1", verdict="spam") == 1
    assert value(route, "mail_roundtrip_spam_score", route="r1") == 7.5


def test_an_older_probe_found_late_does_not_replace_the_newest_verdict() -> None:
    route = route_with_id()
    old = route.new_probe()
    route.sent(old, T0)
    route.timed_out(old)
    deliver(route, ALIGNED)  # a newer probe, judged first
    route.on_found(verdict_found(old.token, T0 + 500, (("Authentication-Results", f"{ID}; dmarc=fail"),)))
    assert old.outcome == "late"
    assert value(route, "mail_roundtrip_auth_result", route="r1", method="dmarc", result="pass") == 1
    assert value(route, "mail_roundtrip_auth_results_total", route="r1", method="dmarc", result="fail") == 1


def test_lost_and_failed_probes_have_no_verdict() -> None:
    route = route_with_id(max_age="20s")
    p = route.new_probe()
    route.send_failed(p)
    q = route.new_probe()
    route.sent(q, T0)
    route.expire(T0 + 100)
    assert q.outcome == "lost"
    assert all(v == 0 for (name, _), v in samples(route).items() if name == "mail_roundtrip_auth_results_total")
    assert value(route, "mail_roundtrip_auth_header_present", route="r1") is None


def test_authserv_id_config_errors_name_the_key() -> None:
    from exporter import config
    from exporter.core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        route_config(extra_receive=', authserv_id: "mx in; evil"')
    assert "routes[0].receive.authserv_id" in str(err.value)
    assert route_config(extra_receive=', authserv_id: ""').receive.authserv_id == ""
    assert config.ReceiveConfig("127.0.0.1:993", "u").authserv_id is None
