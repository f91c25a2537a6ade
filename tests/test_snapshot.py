"""The snapshot renders valid exposition text, grouped by family, cached between changes."""

from __future__ import annotations

import gzip

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from exporter.core.metrics import FAMILIES
from exporter.core.model import REASONS, CheckState, Sink
from exporter.core.snapshot import Snapshot, render_samples


def _sink(check: str, target: str, up: float) -> Sink:
    s = Sink(CheckState())
    s.gauge("mail_smtp_up", up, check=check, target=target)
    s.gauge("mail_smtp_reply_code", 250, check=check, target=target)
    s.init_failures("smtp", check, target)
    return s


def parse(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_families_grouped_once_across_checks() -> None:
    snap = Snapshot()
    snap.update("smtp/a", _sink("a", "h1:25", 1).samples())
    snap.update("smtp/b", _sink("b", "h2:25", 0).samples())
    text = snap.render().decode()
    assert text.count("# TYPE mail_smtp_up gauge") == 1
    assert text.count("# TYPE mail_probe_failures_total counter") == 1
    values = parse(text)
    assert values["mail_smtp_up"] == {
        (("check", "a"), ("target", "h1:25")): 1.0,
        (("check", "b"), ("target", "h2:25")): 0.0,
    }
    # every reason x 2 targets, all present from the start at 0
    assert len(values["mail_probe_failures_total"]) == 2 * len(REASONS) == 24
    assert set(values["mail_probe_failures_total"].values()) == {0.0}


def test_update_replaces_and_remove_drops() -> None:
    snap = Snapshot()
    snap.update("smtp/a", _sink("a", "h1:25", 1).samples())
    first = snap.render()
    assert snap.render() is first  # cached
    snap.update("smtp/a", _sink("a", "h1:25", 0).samples())
    assert parse(snap.render().decode())["mail_smtp_up"] == {(("check", "a"), ("target", "h1:25")): 0.0}
    snap.remove("smtp/a")
    assert snap.render() == b""


def test_unchanged_update_keeps_cache() -> None:
    snap = Snapshot()
    snap.update("k", _sink("a", "t", 1).samples())
    body = snap.render()
    gen = snap.generation
    snap.update("k", _sink("a", "t", 1).samples())
    assert snap.generation == gen and snap.render() is body


def test_gzip_matches_plain() -> None:
    snap = Snapshot()
    snap.update("k", _sink("a", "t", 1).samples())
    assert gzip.decompress(snap.render_gzip()) == snap.render()


def test_histograms_render_and_parse() -> None:
    state = CheckState()
    for v in (0.1, 0.5, 2.0, 100.0):
        state.observe("mail_roundtrip_latency_seconds", v, (0.25, 1, 10), route="r1")
    sink = Sink(state)
    sink.gauge_histogram(
        "mail_queue_message_age_seconds", (60, 3600, float("inf")), (1, 3, 4), 5000.0, source="pf", queue="deferred"
    )
    text = render_samples(sink.samples())
    values = parse(text)
    assert values["mail_roundtrip_latency_seconds_bucket"][(("le", "0.25"), ("route", "r1"))] == 1
    assert values["mail_roundtrip_latency_seconds_bucket"][(("le", "+Inf"), ("route", "r1"))] == 4
    assert values["mail_roundtrip_latency_seconds_count"][(("route", "r1"),)] == 4
    assert values["mail_roundtrip_latency_seconds_sum"][(("route", "r1"),)] == pytest.approx(102.6)
    assert values["mail_queue_message_age_seconds_gcount"][(("queue", "deferred"), ("source", "pf"))] == 4


def test_sink_rejects_labels_outside_contract() -> None:
    sink = Sink()
    with pytest.raises(ValueError, match="do not match the contract"):
        sink.gauge("mail_smtp_up", 1, check="a", target="b", user="bob")
    with pytest.raises(KeyError):
        sink.gauge("mail_made_up_metric", 1)
    with pytest.raises(ValueError, match="unknown failure reason"):
        sink.fail("bogus", "x", protocol="smtp", check="a", target="b")


@given(st.text(max_size=40))
def test_label_values_are_escaped(value: str) -> None:
    sink = Sink()
    sink.gauge("mail_smtp_up", 1, check=value, target="t")
    values = parse(render_samples(sink.samples()))
    assert values["mail_smtp_up"] == {(("check", value), ("target", "t")): 1.0}


def test_every_family_has_help_and_known_type() -> None:
    for name, spec in FAMILIES.items():
        assert name.startswith("mail_")
        assert spec.help.endswith(".")
        assert spec.type in {"gauge", "counter", "histogram", "gaugehistogram"}
        assert (spec.type == "counter") == name.endswith("_total")
