"""The webhook payload validator (pure): what Alertmanager sends passes, anything else is a 400."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_continuity_support import ZERO, am_alert, body, payload

from exporter.continuity import webhook as webhook_module
from exporter.continuity.webhook import (
    MAX_LABEL_VALUE,
    parse_active_alerts,
    parse_notification,
    parse_time,
)
from exporter.core.errors import WebhookError

T0 = 1_800_000_000.0

# A real notification as Alertmanager 0.25 sends it (captured shape; values are ours).
REAL = b"""{
 "receiver": "mce", "status": "resolved",
 "alerts": [{"status": "resolved",
   "labels": {"alertname": "MailQueueBackingUp", "service": "inbound", "severity": "warning"},
   "annotations": {"summary": "Queue growing."},
   "startsAt": "2026-11-22T12:53:28.123456789Z", "endsAt": "2026-11-22T13:01:00.5Z",
   "generatorURL": "", "fingerprint": "3f2a8f6e0d4c1b2a"}],
 "groupLabels": {"alertname": "MailQueueBackingUp"}, "commonLabels": {"alertname": "MailQueueBackingUp"},
 "commonAnnotations": {}, "externalURL": "http://am:9093", "version": "4",
 "groupKey": "{}:{alertname=\\"MailQueueBackingUp\\"}", "truncatedAlerts": 0}"""


def test_real_notification_parses() -> None:
    note = parse_notification(REAL)
    assert note.status == "resolved" and note.receiver == "mce" and note.truncated_alerts == 0
    (a,) = note.alerts
    assert a.fingerprint == "3f2a8f6e0d4c1b2a"
    assert a.starts_ms == 1795352008123  # 2026-11-22T12:53:28.123Z, truncated to the millisecond
    assert a.ends_at == pytest.approx(1795352460.5)
    assert a.label("severity") == "warning"
    assert a.labels == tuple(sorted(a.labels))


def test_unknown_fields_and_truncated_alerts_are_tolerated() -> None:
    msg = payload([dict(am_alert("f1", {"a": "b"}, T0), extraField={"x": [1, 2]})], truncatedAlerts=7, newThing=1)
    note = parse_notification(body(msg))
    assert note.truncated_alerts == 7 and len(note.alerts) == 1


def test_firing_alert_end_is_ignored_and_zero_end_tolerated() -> None:
    a = am_alert("f1", {}, T0)
    assert a["endsAt"] == ZERO
    assert parse_notification(body(payload([a]))).alerts[0].ends_at is None
    a["endsAt"] = "2030-01-01T00:00:00Z"  # Prometheus-style "expected end" on a firing alert
    assert parse_notification(body(payload([a]))).alerts[0].ends_at is None
    del a["endsAt"]
    assert parse_notification(body(payload([a]))).alerts[0].ends_at is None


def test_empty_alert_list_is_accepted() -> None:
    assert parse_notification(body(payload([]))).alerts == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-01-05T22:00:00Z", 1893880800 * 10**9),
        ("2030-01-05T22:00:00.5Z", 1893880800 * 10**9 + 500_000_000),
        ("2030-01-05T23:00:00+01:00", 1893880800 * 10**9),
        ("2030-01-05t22:00:00.000000001z", 1893880800 * 10**9 + 1),
        (ZERO, None),
    ],
)
def test_parse_time(text: str, expected: int | None) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize(
    "text", ["2030-01-05T22:00:00", "2030-01-05 22:00:00Z", "2030-13-01T00:00:00Z", "yesterday", "", "1893880800"]
)
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time(text)


def _good() -> dict[str, Any]:
    return payload([am_alert("f1", {"alertname": "A", "service": "inbound"}, T0)])


def _without(path: str) -> bytes:
    msg = _good()
    if path.startswith("alerts[0]."):
        del msg["alerts"][0][path.split(".", 1)[1]]
    else:
        del msg[path]
    return body(msg)


def _with(path: str, value: Any) -> bytes:
    msg = _good()
    if path.startswith("alerts[0]."):
        msg["alerts"][0][path.split(".", 1)[1]] = value
    else:
        msg[path] = value
    return body(msg)


#: (case, body, text the error must contain): what a new user might send by mistake.
MALFORMED = [
    ("not JSON", b"{", "not valid JSON"),
    ("not UTF-8", b'{"version": "4\xff"}', "UTF-8"),
    ("JSON array", b"[]", "expected a JSON object"),
    ("JSON string", b'"hello"', "expected a JSON object"),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ("no version", _without("version"), "missing required field version"),
    ("version 3", _with("version", "3"), 'version: expected "4"'),
    ("version as number", _with("version", 4), 'version: expected "4"'),
    ("no status", _without("status"), "missing required field status"),
    ("bad status", _with("status", "ok"), 'status: expected one of "firing", "resolved", got "ok"'),
    ("no alerts", _without("alerts"), "missing required field alerts"),
    ("alerts not a list", _with("alerts", {}), "alerts: expected a list"),
    ("alert not an object", _with("alerts", ["x"]), "alerts[0]: expected an object"),
    ("no labels", _without("alerts[0].labels"), "alerts[0]: missing required field labels"),
    ("labels a list", _with("alerts[0].labels", ["a"]), "alerts[0].labels: expected an object"),
    ("label not a string", _with("alerts[0].labels", {"a": 1}), "alerts[0].labels.a: expected a string, got 1"),
    ("label null", _with("alerts[0].labels", {"a": None}), "alerts[0].labels.a: expected a string, got null"),
    ("empty label name", _with("alerts[0].labels", {"": "x"}), "expected names of 1 to"),
    (
        "huge label value",
        _with("alerts[0].labels", {"a": "x" * (MAX_LABEL_VALUE + 1)}),
        f"expected at most {MAX_LABEL_VALUE} characters",
    ),
    ("too many labels", _with("alerts[0].labels", {f"l{i}": "v" for i in range(101)}), "at most 100 entries"),
    ("annotation not a string", _with("alerts[0].annotations", {"a": []}), "alerts[0].annotations.a: expected"),
    ("no startsAt", _without("alerts[0].startsAt"), "alerts[0]: missing required field startsAt"),
    ("startsAt not a time", _with("alerts[0].startsAt", "yesterday"), "alerts[0].startsAt: expected an RFC 3339"),
    ("startsAt a number", _with("alerts[0].startsAt", 1800000000), "alerts[0].startsAt: expected an RFC 3339"),
    ("startsAt zero", _with("alerts[0].startsAt", ZERO), "zero time"),
    ("no fingerprint", _without("alerts[0].fingerprint"), "missing required field fingerprint"),
    ("fingerprint number", _with("alerts[0].fingerprint", 12), "alerts[0].fingerprint: expected a string"),
    ("fingerprint empty", _with("alerts[0].fingerprint", ""), "alerts[0].fingerprint: expected 1 to 128"),
    ("fingerprint spaces", _with("alerts[0].fingerprint", "a b"), "alerts[0].fingerprint: expected 1 to 128"),
    ("alert status bad", _with("alerts[0].status", "FIRING"), "alerts[0].status: expected one of"),
    ("truncatedAlerts negative", _with("truncatedAlerts", -1), "truncatedAlerts: expected an integer >= 0"),
    ("truncatedAlerts string", _with("truncatedAlerts", "0"), "truncatedAlerts: expected an integer >= 0"),
    ("receiver a number", _with("receiver", 5), "receiver: expected a string"),
    ("commonLabels a list", _with("commonLabels", []), "commonLabels: expected an object"),
    (
        "resolved without end",
        body(payload([dict(am_alert("f1", {}, T0, T0 + 5), endsAt=ZERO)])),
        "a resolved alert needs a real end time",
    ),
    (
        "resolved, end missing",
        body(payload([{k: v for k, v in am_alert("f1", {}, T0, T0 + 5).items() if k != "endsAt"}])),
        "missing required field endsAt",
    ),
    (
        "ends before it starts",
        body(payload([am_alert("f1", {}, T0, T0 - 5)])),
        "alerts[0].endsAt: expected a time not before startsAt",
    ),
]


@pytest.mark.parametrize(("case", "data", "message"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_payloads_are_400_with_a_clear_message(case: str, data: bytes, message: str) -> None:
    with pytest.raises(WebhookError) as info:
        parse_notification(data)
    assert info.value.status == 400
    assert message in str(info.value), str(info.value)
    assert len(str(info.value)) < 300


def test_one_bad_alert_rejects_the_whole_notification() -> None:
    msg = payload([am_alert(f"f{i}", {}, T0) for i in range(5)])
    msg["alerts"][3]["startsAt"] = "bad"
    with pytest.raises(WebhookError, match=r"alerts\[3\]\.startsAt"):
        parse_notification(body(msg))


# --- hypothesis -------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, st.dictionaries(st.sampled_from(list(_good())), json_values, max_size=8)))
def test_arbitrary_json_is_rejected_or_parsed_never_crashes(value: Any) -> None:
    try:
        parse_notification(json.dumps(value).encode())
    except WebhookError as exc:
        assert exc.status == 400


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    try:
        parse_notification(data)
    except WebhookError as exc:
        assert exc.status == 400


label_names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=30)
label_values = st.text(max_size=60)
times = st.floats(min_value=1e9, max_value=4e9, allow_nan=False).map(lambda t: round(t, 3))


@st.composite
def valid_alerts(draw: st.DrawFn) -> dict[str, Any]:
    labels = draw(st.dictionaries(label_names, label_values, max_size=8))
    starts = draw(times)
    ends = draw(st.none() | st.floats(min_value=0, max_value=1e6).map(lambda d: starts + round(d, 3)))
    fp = draw(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40))
    return am_alert(fp, labels, starts, ends)


@settings(max_examples=200, deadline=None)
@given(st.lists(valid_alerts(), max_size=5))
def test_valid_notifications_round_trip(alerts: list[dict[str, Any]]) -> None:
    note = parse_notification(body(payload(alerts)))
    assert len(note.alerts) == len(alerts)
    for parsed, raw in zip(note.alerts, alerts, strict=True):
        assert dict(parsed.labels) == raw["labels"]
        assert parsed.fingerprint == raw["fingerprint"]
        assert parsed.status == raw["status"]
        assert (parsed.ends_at is None) == (raw["status"] == "firing")


#: Ways to break a valid notification: each yields a payload that must be rejected.
BREAKERS: list[tuple[str, Any]] = [
    ("version", st.one_of(st.none(), st.integers(), st.text().filter(lambda s: s != "4"))),
    ("status", st.one_of(st.none(), st.integers(), st.text().filter(lambda s: s not in ("firing", "resolved")))),
    ("alerts", st.one_of(st.none(), st.integers(), st.text(), st.dictionaries(st.text(max_size=5), st.integers()))),
    ("truncatedAlerts", st.one_of(st.text(), st.integers(max_value=-1), st.floats(), st.lists(st.integers()))),
    ("alerts[0].labels", st.one_of(st.none(), st.text(), st.lists(st.text()), st.integers())),
    ("alerts[0].labels.x", st.one_of(st.none(), st.integers(), st.floats(), st.lists(st.text()), st.booleans())),
    ("alerts[0].startsAt", st.one_of(st.none(), st.integers(), st.text(max_size=30))),
    ("alerts[0].fingerprint", st.one_of(st.none(), st.integers(), st.just(""), st.text(min_size=129))),
    ("alerts[0].status", st.one_of(st.none(), st.text().filter(lambda s: s not in ("firing", "resolved")))),
]


@st.composite
def broken_payloads(draw: st.DrawFn) -> bytes:
    """A valid notification with one field replaced by a wrong value (or removed)."""
    msg = payload([am_alert("fp1", {"alertname": "A"}, T0), am_alert("fp2", {}, T0, T0 + 60)])
    path, values = draw(st.sampled_from(BREAKERS))
    remove = draw(st.booleans()) and path in ("version", "status", "alerts", "alerts[0].labels", "alerts[0].startsAt")
    value = draw(values)
    target: Any = msg
    parts = path.replace("[0]", ".0").split(".")
    for p in parts[:-1]:
        target = target[int(p)] if p.isdigit() else target[p]
    last = parts[-1]
    if remove:
        del target[last]
    else:
        target[last] = value
    if path == "alerts[0].startsAt" and isinstance(value, str):
        try:
            if parse_time(value) is not None:
                target[last] = value + "x"  # a valid time is not a breakage
        except ValueError:
            pass
    return body(copy.deepcopy(msg))


@settings(max_examples=400, deadline=None)
@given(broken_payloads())
def test_broken_payloads_are_always_rejected(data: bytes) -> None:
    with pytest.raises(WebhookError) as info:
        parse_notification(data)
    assert info.value.status == 400


# --- the fast path agrees with the checked path ------------------------------------------------------------


def _both_paths(data: bytes) -> None:
    """The fast path builds what the checked path builds, and gives up on whatever the checked path refuses."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return
    fast = webhook_module._fast_notification(value)
    try:
        checked = webhook_module._checked_notification(value)
    except WebhookError:
        assert fast is None
        return
    assert fast is None or fast == checked


def test_fast_path_takes_the_real_notification_and_refuses_every_malformed_one() -> None:
    assert webhook_module._fast_notification(json.loads(REAL)) == webhook_module._checked_notification(json.loads(REAL))
    for _, data, _ in MALFORMED:
        _both_paths(data)


@settings(max_examples=200, deadline=None)
@given(st.lists(valid_alerts(), max_size=5))
def test_fast_path_agrees_on_valid_notifications(alerts: list[dict[str, Any]]) -> None:
    data = body(payload(alerts))
    assert webhook_module._fast_notification(json.loads(data)) is not None
    _both_paths(data)


@settings(max_examples=300, deadline=None)
@given(broken_payloads())
def test_fast_path_agrees_on_broken_payloads(data: bytes) -> None:
    _both_paths(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, st.dictionaries(st.sampled_from(list(_good())), json_values, max_size=8)))
def test_fast_path_agrees_on_arbitrary_json(value: Any) -> None:
    _both_paths(json.dumps(value).encode())


def test_active_alerts_list() -> None:
    data = json.dumps(
        [
            {
                "fingerprint": "abc",
                "startsAt": "2026-11-22T12:53:28.123Z",
                "endsAt": "2026-11-22T12:58:28.123Z",
                "labels": {"alertname": "X"},
                "annotations": {},
                "receivers": [{"name": "r"}],
                "status": {"state": "suppressed", "silencedBy": ["s"], "inhibitedBy": []},
                "updatedAt": "2026-11-22T12:53:28.123Z",
            }
        ]
    ).encode()
    (a,) = parse_active_alerts(data)
    assert (a.fingerprint, a.starts_ms, a.state) == ("abc", 1795352008123, "suppressed")
    with pytest.raises(WebhookError) as info:
        parse_active_alerts(b'{"not": "a list"}')
    assert info.value.status == 502
