"""Fuzzing of every parser that reads untrusted input, with a committed corpus.

The targets and their invariants live in ``tests/fuzz/fuzz_targets.py`` (shared with the
atheris harness in ``benchmarks/fuzz/``).  Here they are driven three ways:

* every committed seed in ``tests/fuzz/corpus/<target>/`` is replayed as an explicit
  example (a crash found once stays fixed);
* hypothesis mutates the seeds (bit flips, truncation, deletion, duplication, splicing two
  seeds, inserting tokens the grammars care about);
* hypothesis generates valid inputs from the grammar and checks ``parse(render(x)) == x``.

CI runs a bounded, deterministic campaign (``derandomize=True``, no example database);
``MCE_FUZZ_EXAMPLES=<n>`` (or ``HYPOTHESIS_PROFILE=fuzz-long``) runs a long one that
keeps its findings in ``.hypothesis/``.  See docs/testing.md, "Fuzzing".
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
import typing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzz"))

import fuzz_targets as ft

from exporter import config as cfgmod
from exporter.config.decode import Duration
from exporter.core.errors import ConfigError
from exporter.core.secrets import Secret
from exporter.queues.showq_parse import MAX_RECIPIENTS, ShowqMessage, parse_all
from exporter.roundtrip.authresults import AuthResults, MethodResult, parse_authentication_results, verdict
from exporter.roundtrip.received import Received, parse_received

_LONG = int(os.environ.get("MCE_FUZZ_EXAMPLES", "0")) or (
    100_000 if os.environ.get("HYPOTHESIS_PROFILE") == "fuzz-long" else 0
)
_SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "fuzz-ci", max_examples=120, derandomize=True, database=None, deadline=None, suppress_health_check=_SLOW
)
settings.register_profile("fuzz-long", max_examples=_LONG or 100_000, deadline=None, suppress_health_check=_SLOW)
#: Applied per test (not loaded globally, so the rest of the suite keeps its own settings).
FUZZ = settings.get_profile("fuzz-long" if _LONG else "fuzz-ci")

# --- seeds and mutations ---------------------------------------------------------------------------

#: Tokens that matter to one grammar or another: separators, terminators, keywords.
_TOKENS = [
    b"\0",
    b"\0\0",
    b";",
    b" ",
    b"\t",
    b"\r\n",
    b"\n  ",
    b"(",
    b")",
    b"[",
    b"]",
    b"<",
    b">",
    b'"',
    b"\\",
    b":",
    b"=",
    b"/",
    b"%{d}",
    b"{",
    b"}",
    b"[]",
    b"null",
    b"-1",
    b"1e999",
    b"0001-01-01T00:00:00Z",
    b"${MCE_FUZZ_SECRET}",
    b"${UNSET_VARIABLE}",
    b"_file: probe.secret",
    b"&a",
    b"*a",
    b"<<: *a",
    b"!!python/object",
    b"recipient\0",
    b"reason\0",
    b"from ",
    b" by ",
    b" with ",
    b" id ",
    b" for ",
    b"v=spf1 ",
    b"v=DMARC1; ",
    b"\xff",
    b"\xc3\xa9",
]

_op = st.tuples(
    st.sampled_from(["flip", "truncate", "delete", "duplicate", "insert", "splice"]),
    st.integers(min_value=0, max_value=1 << 16),
    st.integers(min_value=0, max_value=1 << 16),
    st.sampled_from(_TOKENS),
)


def _mutate(seed: bytes, ops: list[tuple[str, int, int, bytes]], other: bytes) -> bytes:
    data = bytearray(seed)
    for kind, a, b, token in ops:
        n = len(data) or 1
        i, j = sorted((a % (n + 1), b % (n + 1)))
        if kind == "flip" and data:
            data[i % len(data)] ^= 1 << (b % 8)
        elif kind == "truncate":
            del data[i:]
        elif kind == "delete":
            del data[i : i + 1 + b % 16]
        elif kind == "duplicate":
            data[i:i] = data[i:j][:4096]
        elif kind == "insert":
            data[i:i] = token
        elif kind == "splice":
            data[i:] = other[b % (len(other) + 1) :]
    return bytes(data)


def mutants(target: str) -> st.SearchStrategy[bytes]:
    """Seeds of ``target``, each mutated by up to eight operations (possibly none)."""
    seeds = [data for _, data in ft.corpus(target)]
    return st.builds(_mutate, st.sampled_from(seeds), st.lists(_op, max_size=8), st.sampled_from(seeds))


# --- replay every committed seed --------------------------------------------------------------------

_SEEDS = [(target, name) for target in ft.TARGETS for name, _ in ft.corpus(target)]


def test_every_target_has_a_corpus() -> None:
    assert {t for t, _ in _SEEDS} == set(ft.TARGETS)
    assert all(sum(t == target for t, _ in _SEEDS) >= 8 for target in ft.TARGETS)


@pytest.mark.parametrize(("target", "name"), _SEEDS, ids=[f"{t}/{n}" for t, n in _SEEDS])
def test_corpus_seed(target: str, name: str) -> None:
    ft.TARGETS[target]((ft.CORPUS / target / name).read_bytes())


def test_seeds_are_what_they_claim() -> None:
    """The seeds cover both sides of each parser: they would fail to if the corpus rotted."""
    assert parse_all([(ft.CORPUS / "showq/postfix-3.7-deferred-and-hold.bin").read_bytes()])[1] is None
    assert len(parse_all([(ft.CORPUS / "showq/postfix-3.7-deferred-and-hold.bin").read_bytes()])[0]) == 5
    assert parse_all([(ft.CORPUS / "showq/truncated-mid-record.bin").read_bytes()])[1] == (
        "stream ended in the middle of a record"
    )
    valid = [n for n, d in ft.corpus("config") if ft.check_config_text(d.decode()) is not None]
    assert valid == ["embedded-default.yml", "every-section.yml", "readme-example.yml"]
    every = cfgmod.load_text((ft.CORPUS / "config/every-section.yml").read_text(), "x", ft.SECRETS_DIR)
    assert every.webhook.bearer_token == Secret("file-secret-value-for-fuzzing")
    assert every.routes[0].receive.password == Secret(ft.ENV_SECRET)
    assert every.endpoints[0].auth is not None and every.endpoints[0].auth.password == Secret(
        "inline $ecret with ; and #"
    )
    hdr = parse_received((ft.CORPUS / "received/postfix-esmtp.txt").read_text())
    assert (hdr.by_host, hdr.protocol, hdr.utc_offset) == ("mx1.example.net", "ESMTP", 3600)
    gmail = parse_authentication_results((ft.CORPUS / "authresults/gmail-mx.txt").read_text())
    assert gmail is not None and gmail.authserv_id == "mx.google.com"
    assert [verdict([gmail], m) for m in ("spf", "dkim", "dmarc", "arc")] == ["pass"] * 4
    m365 = parse_authentication_results((ft.CORPUS / "authresults/m365-no-authserv-id.txt").read_text())
    assert m365 is not None and m365.authserv_id == "" and verdict([m365], "compauth") == "pass"
    cut = parse_authentication_results((ft.CORPUS / "authresults/broken-unterminated-quote.txt").read_text())
    assert cut is not None and verdict([cut], "spf") == "none"  # the spf result is inside the open quote


# --- mutated seeds --------------------------------------------------------------------------------


@FUZZ
@given(mutants("config"))
def test_fuzz_config(data: bytes) -> None:
    ft.check_config(data)


@FUZZ
@given(mutants("showq"))
def test_fuzz_showq(data: bytes) -> None:
    ft.check_showq(data)


@FUZZ
@given(mutants("received"))
def test_fuzz_received(data: bytes) -> None:
    ft.check_received(data)


@FUZZ
@given(mutants("authresults"))
def test_fuzz_authresults(data: bytes) -> None:
    ft.check_authresults(data)


@FUZZ
@given(mutants("webhook"))
def test_fuzz_webhook(data: bytes) -> None:
    ft.check_webhook(data)


@FUZZ
@given(mutants("dns_txt"))
def test_fuzz_dns_txt(data: bytes) -> None:
    ft.check_dns_txt(data)


@FUZZ
@given(mutants("exim_log"))
def test_fuzz_exim_log(data: bytes) -> None:
    ft.check_exim_log(data)


@FUZZ
@given(mutants("dovecot_log"))
def test_fuzz_dovecot_log(data: bytes) -> None:
    ft.check_dovecot_log(data)


@FUZZ
@given(mutants("postfix_log"))
def test_fuzz_postfix_log(data: bytes) -> None:
    ft.fuzz_postfix_log(data)


@FUZZ
@given(mutants("syslog_frame"))
def test_fuzz_syslog_frame(data: bytes) -> None:
    ft.check_syslog_frame(data)


# --- generated valid inputs: parse(render(x)) == x -----------------------------------------------

_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF, blacklist_characters="\x7f"), max_size=30)
_NO_NUL = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40)


@st.composite
def showq_messages(draw: st.DrawFn) -> ShowqMessage:
    recipients = draw(st.lists(st.tuples(_NO_NUL, _NO_NUL), max_size=MAX_RECIPIENTS + 3))
    return ShowqMessage(
        queue_name=draw(st.sampled_from(["active", "deferred", "hold", "incoming", "maildrop"])),
        queue_id=draw(st.from_regex(r"[0-9A-F]{10,12}|[0-9B-Zb-z]{15}", fullmatch=True)),
        arrival_time=draw(st.integers(min_value=0, max_value=2**63)),
        size=draw(st.integers(min_value=0, max_value=2**40)),
        forced_expire=draw(st.booleans()),
        sender=draw(_NO_NUL),
        recipients=recipients[:MAX_RECIPIENTS],
        recipient_count=len(recipients),
    )


@FUZZ
@given(st.lists(showq_messages(), max_size=6), st.booleans())
def test_showq_round_trip(messages: list[ShowqMessage], announce: bool) -> None:
    stream = ft.render_showq(messages, announce)
    kept = [dataclasses.replace(m, recipient_count=len(m.recipients)) for m in messages]
    # render_showq writes only the kept recipients, so the count read back is theirs.
    assert parse_all([stream]) == (kept, None)
    ft.check_showq(stream)


_HOST = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){1,3}", fullmatch=True)
_IP = st.ip_addresses().map(str)


@FUZZ
@given(
    _HOST,
    _IP,
    _HOST,
    st.sampled_from(["ESMTP", "ESMTPS", "ESMTPSA", "LMTP", "SMTP", "UTF8SMTPS"]),
    st.from_regex(r"[0-9A-Za-z]{6,20}", fullmatch=True),
    st.from_regex(r"<[a-z0-9.]{1,10}@[a-z]{1,10}\.test>", fullmatch=True),
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1)),
    st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59),
)
def test_received_round_trip(
    from_host: str, ip: str, by_host: str, proto: str, qid: str, rcpt: str, when: datetime, offset_min: int
) -> None:
    sign = "-" if offset_min < 0 else "+"
    zone = f"{sign}{abs(offset_min) // 60:02d}{abs(offset_min) % 60:02d}"
    date = when.strftime("%a, %d %b %Y %H:%M:%S ") + zone  # wall-clock time in that zone
    expected_ts = when.replace(microsecond=0, tzinfo=UTC).timestamp() - offset_min * 60
    want = Received(from_host, ip, by_host, None, proto, qid, rcpt, expected_ts, offset_min * 60, True)
    header = ft.render_received(want, date)
    assert parse_received(header) == want
    ft.check_received(header.encode())


_AR_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
_AR_KEYWORD = st.builds(str.__add__, st.sampled_from(_AR_CHARS), st.text(_AR_CHARS + "_-", max_size=12))
_AR_VALUE = st.one_of(
    _TEXT.filter(str.isprintable), st.builds("{}@{}".format, st.text(_AR_CHARS + ".+-", max_size=10), _AR_KEYWORD)
)
_AR_RESULT = st.builds(
    MethodResult,
    _AR_KEYWORD,
    _AR_KEYWORD,
    st.none() | _AR_VALUE,
    st.lists(st.tuples(st.tuples(_AR_KEYWORD, _AR_KEYWORD).map(".".join), _AR_VALUE), max_size=4).map(tuple),
)


@FUZZ
@given(
    st.one_of(
        _AR_KEYWORD,
        st.just(""),
        _TEXT.map(str.strip).map(str.lower).filter(lambda s: s.isprintable() and s == s.strip().lower()),
    ),
    st.none() | st.integers(min_value=0, max_value=999),
    st.lists(_AR_RESULT, max_size=6).map(tuple),
)
def test_authresults_round_trip(authserv_id: str, version: int | None, results: tuple[MethodResult, ...]) -> None:
    if not authserv_id:  # Microsoft 365's form: no authserv-id, no version, at least one result
        version, results = None, results or (MethodResult("spf", "pass", None, ()),)
    want = AuthResults(authserv_id, version, results)
    header = ft.render_authresults(want)
    assert parse_authentication_results(header) == want, header
    ft.check_authresults(header.encode())


_FINGERPRINT = st.from_regex(r"[0-9a-f]{16}", fullmatch=True)
_LABELS = st.dictionaries(st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,20}", fullmatch=True), _TEXT, min_size=1, max_size=6)
_TIMES = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1))


@FUZZ
@given(
    st.lists(
        st.tuples(st.booleans(), _FINGERPRINT, _LABELS, _TIMES, st.integers(min_value=0, max_value=10**7)),
        max_size=5,
    ),
    st.integers(min_value=0, max_value=1000),
)
def test_webhook_round_trip(alerts: list[tuple[bool, str, dict[str, str], datetime, int]], truncated: int) -> None:
    def iso(dt: datetime) -> str:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond:06d}Z"

    raw = []
    for resolved, fp, labels, starts, duration_ms in alerts:
        ends = starts + timedelta(milliseconds=duration_ms)
        raw.append(
            {
                "status": "resolved" if resolved else "firing",
                "labels": labels,
                "annotations": {"summary": "x"},
                "startsAt": iso(starts),
                "endsAt": iso(ends) if resolved else "0001-01-01T00:00:00Z",
                "fingerprint": fp,
            }
        )
    status = "firing" if any(not r for r, *_ in alerts) else "resolved"
    body = ft.render_notification(status, raw, truncatedAlerts=truncated)
    note = ft.webhook.parse_notification(body)
    assert (note.status, note.truncated_alerts, len(note.alerts)) == (status, truncated, len(alerts))
    epoch = datetime(1970, 1, 1)
    for got, (resolved, fp, labels, starts, duration_ms) in zip(note.alerts, alerts, strict=True):
        assert got.fingerprint == fp and got.labels == tuple(sorted(labels.items()))
        assert got.starts_ms == (starts - epoch) // timedelta(milliseconds=1)
        if resolved:
            want_end = (starts - epoch + timedelta(milliseconds=duration_ms)).total_seconds()
            assert got.ends_at == pytest.approx(want_end, abs=1e-6)
        else:
            assert got.ends_at is None
    ft.check_webhook(body)
    ft.check_webhook(json.dumps([{**a, "status": {"state": "active"}} for a in raw]).encode())


_DOMAIN = st.from_regex(r"([a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?\.){1,3}[a-z]{2,6}", fullmatch=True)
_QUALIFIER = st.sampled_from(["", "+", "-", "~", "?"])
_SPF_TERM = st.one_of(
    st.tuples(_QUALIFIER, st.just("ip4"), st.ip_addresses(v=4).map(lambda a: f":{a}")),
    st.tuples(
        _QUALIFIER,
        st.just("ip6"),
        st.tuples(st.ip_addresses(v=6), st.integers(0, 128)).map(lambda t: f":{t[0]}/{t[1]}"),
    ),
    st.tuples(_QUALIFIER, st.sampled_from(["a", "mx"]), st.one_of(st.just(""), _DOMAIN.map(lambda d: f":{d}"))),
    st.tuples(_QUALIFIER, st.just("include"), _DOMAIN.map(lambda d: f":{d}")),
    st.tuples(_QUALIFIER, st.just("exists"), st.just(":%{i}._spf.%{d}")),
)


@FUZZ
@given(st.lists(_SPF_TERM, max_size=8), _QUALIFIER)
def test_spf_round_trip(terms: list[tuple[str, str, str]], all_qualifier: str) -> None:
    fields = (*tuple((q + name, rest) for q, name, rest in terms), (all_qualifier + "all", ""))
    result = ft.dnsrecords.parse_spf(ft.render_spf(fields))
    assert result.ok and result.fields == fields, result
    ft.check_dns_txt(ft.render_spf(fields).encode())


_MAILTO = st.tuples(st.from_regex(r"[a-z0-9._+-]{1,12}", fullmatch=True), _DOMAIN).map(
    lambda t: f"mailto:{t[0]}@{t[1]}"
)


@FUZZ
@given(
    st.sampled_from(["none", "quarantine", "reject"]),
    st.fixed_dictionaries(
        {},
        optional={
            "sp": st.sampled_from(["none", "quarantine", "reject"]),
            "pct": st.integers(0, 100).map(str),
            "rua": st.lists(_MAILTO, min_size=1, max_size=3).map(",".join),
            "adkim": st.sampled_from(["r", "s"]),
            "ri": st.integers(0, 10**9).map(str),
        },
    ),
    st.from_regex(r"[A-Za-z0-9]{1,32}", fullmatch=True),
    st.lists(st.one_of(_MAILTO, _DOMAIN.map(lambda d: f"https://{d}/tlsrpt")), min_size=1, max_size=3),
)
def test_dmarc_sts_tlsrpt_round_trip(policy: str, tags: dict[str, str], sts_id: str, ruas: list[str]) -> None:
    dmarc = (("v", "DMARC1"), ("p", policy), *tags.items())
    assert ft.dnsrecords.parse_dmarc(ft.render_tags(dmarc)).fields == dmarc
    assert ft.dnsrecords.parse_mta_sts_txt(f"v=STSv1; id={sts_id}").fields == (("id", sts_id),)
    assert ft.dnsrecords.parse_tlsrpt(f"v=TLSRPTv1;rua={','.join(ruas)}").fields == (("rua", ",".join(ruas)),)
    for text in (ft.render_tags(dmarc), f"v=STSv1; id={sts_id}", f"v=TLSRPTv1;rua={','.join(ruas)}"):
        ft.check_dns_txt(text.encode())


# --- generated configs: structurally valid, any values --------------------------------------------

_SECRET_MARK = "SECRET-canary-"
_SAFE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters="$"), max_size=12)
_BY_KEY: dict[str, st.SearchStrategy[Any]] = {
    "name": st.from_regex(r"[a-z][a-z0-9_.-]{0,10}", fullmatch=True),
    "domain": _DOMAIN,
    "address": st.sampled_from(["127.0.0.1:25", "[::1]:2143", "mx.example.test:587", "localhost:0", "host"]),
    "from": st.sampled_from(["probe@example.test", "nobody"]),
    "to": st.sampled_from(["probe@example.test", "nobody"]),
    "start": st.sampled_from(["2030-01-05T22:00:00Z", "2030-01-06T01:00:00+01:00", "soon"]),
    "end": st.sampled_from(["2030-01-06T02:00:00Z", "2030-01-05T21:00:00Z"]),
    "service": st.just("svc"),
    "alertmanager_url": st.sampled_from(["http://127.0.0.1:29093", "ftp://x"]),
    "nameservers": st.lists(st.sampled_from(["127.0.0.1", "::1", "resolver"]), max_size=2),
    "jitter": st.floats(0, 0.6),
    "availability_target": st.floats(0, 1),
}


def plain(tp: Any, key: str = "") -> st.SearchStrategy[Any]:
    """Plain YAML data of the right shape for config type ``tp`` (values may still be invalid)."""
    if key in _BY_KEY:
        return _BY_KEY[key]
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        inner = st.one_of([plain(a, key) for a in options])
        return st.none() | inner if len(options) < len(args) else inner
    if tp == Duration:
        return st.integers(0, 10**8).map(lambda ms: f"{ms}ms")
    if tp is Secret:
        return st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="$"), max_size=8).map(
            lambda t: _SECRET_MARK + t
        )
    simple = {str: _SAFE, bool: st.booleans(), int: st.integers(-2, 70000), float: st.floats(-1, 1e6)}
    if tp in simple:
        return simple[tp]
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (list, tuple):
        return st.lists(plain(args[0]), max_size=2)
    if origin is dict:
        return st.dictionaries(st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,8}", fullmatch=True), plain(args[1]), max_size=2)
    hints = typing.get_type_hints(tp, include_extras=True)
    required, optional = {}, {}
    for f in dataclasses.fields(tp):
        name = str(f.metadata.get("key", f.name))
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        (required if no_default else optional)[name] = plain(hints[f.name], name)
    return st.fixed_dictionaries(required, optional=optional)


@FUZZ
@given(plain(cfgmod.Config))
def test_generated_config(data: dict[str, Any]) -> None:
    text = yaml.safe_dump(data)
    try:
        cfg = cfgmod.load_text(text, "gen.yml")
    except ConfigError as exc:
        message = str(exc)
        assert "unknown key" not in message and "missing required key" not in message, message
        assert _SECRET_MARK not in message, "a secret value was echoed in a config error"
        assert ft.check_config_text(text) is None
        return
    assert ft.check_config_text(text) == cfg
