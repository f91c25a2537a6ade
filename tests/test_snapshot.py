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


# --- blocks: a change costs one block per family it touches, both formats stay equal ------------------


def _queue_sink(source: str, n: int) -> Sink:
    s = Sink(CheckState())
    s.gauge("mail_queue_messages", n, source=source, queue="deferred")
    age = "mail_queue_message_age_seconds"
    s.gauge_histogram(age, (60.0, float("inf")), (n // 2, n), 30.0 * n, source=source, queue="deferred")
    return s


def _bodies_agree(snap: Snapshot) -> None:
    for om in (False, True):
        plain = snap.render(om)
        assert gzip.decompress(snap.render_gzip(om)) == plain
    parse(snap.render().decode())  # valid text format


def test_many_keys_across_blocks_updates_and_removals_keep_both_bodies_equal() -> None:
    from exporter.core.snapshot import BLOCK_KEYS

    snap = Snapshot()
    n = BLOCK_KEYS * 3 + 5
    for i in range(n):
        snap.update(f"smtp/{i}", _sink(f"c{i}", f"h{i}:25", i % 2).samples())
        if i % 7 == 0:
            snap.update(f"queue/{i}", _queue_sink(f"q{i}", i).samples())
    _bodies_agree(snap)
    values = parse(snap.render().decode())
    assert len(values["mail_smtp_up"]) == n
    # change some, remove a whole block's worth and more, add new ones: nothing lost, nothing stale
    for i in range(0, n, 3):
        snap.update(f"smtp/{i}", _sink(f"c{i}", f"h{i}:25", 5).samples())
    for i in range(BLOCK_KEYS + 10):
        snap.remove(f"smtp/{i}")
    for i in range(n, n + 20):
        snap.update(f"smtp/{i}", _sink(f"c{i}", f"h{i}:25", 1).samples())
    _bodies_agree(snap)
    values = parse(snap.render().decode())
    want = {
        (("check", f"c{i}"), ("target", f"h{i}:25")): (5.0 if i % 3 == 0 and i < n else float(i % 2 if i < n else 1))
        for i in range(BLOCK_KEYS + 10, n + 20)
    }
    assert values["mail_smtp_up"] == want
    for i in range(n):
        snap.remove(f"smtp/{i}")
        snap.remove(f"queue/{i}")
    for i in range(n, n + 20):
        snap.remove(f"smtp/{i}")
    assert snap.render() == b"" and snap.render_gzip() == b""
    assert snap.render(True) == b"# EOF\n" and gzip.decompress(snap.render_gzip(True)) == b"# EOF\n"


def test_a_change_recompresses_one_block_per_family_it_touches(monkeypatch: pytest.MonkeyPatch) -> None:
    from exporter.core import snapshot as snapmod

    snap = Snapshot()
    for i in range(snapmod.BLOCK_KEYS * 8):  # 8 blocks in each of the check's families
        snap.update(f"smtp/{i}", _sink(f"c{i}", f"h{i}:25", 1).samples())
    snap.render_gzip()
    snap.render_gzip(True)
    compressed: list[int] = []
    real = snapmod._gzip_member

    def counting(data: bytes) -> bytes:
        compressed.append(len(data))
        return real(data)

    monkeypatch.setattr(snapmod, "_gzip_member", counting)
    touched = _sink("c5", "h5:25", 0).samples()
    families = {s.family for s in touched if s.family == "mail_smtp_up"}
    snap.update("smtp/5", touched)  # only mail_smtp_up's line changes
    zipped = snap.render_gzip()
    assert gzip.decompress(zipped) == snap.render()
    assert len(compressed) == len(families) == 1  # one block of one family, not the body
    total = len(snap.render())
    assert compressed[0] < total / 8  # a block is a small part of the body
    compressed.clear()
    assert gzip.decompress(snap.render_gzip(True)) == snap.render(True)
    assert compressed == []  # the other format reuses the same block members


def test_line_prefixes_reused_only_for_the_same_series() -> None:
    """A key's line prefixes are cached between updates: new label values, new series and a
    removal must still render exactly what a fresh snapshot renders."""
    snap = Snapshot()

    def sink(version: str, up: float, target: str = "h:25") -> Sink:
        s = _sink("a", target, up)
        s.gauge("mail_tls_version_info", 1, protocol="smtp", check="a", target=target, version=version)
        return s

    steps = [sink("TLSv1.3", 1), sink("TLSv1.3", 0), sink("TLSv1.2", 0), sink("TLSv1.2", 1, "other:25")]
    for s in steps:
        snap.update("smtp/a", s.samples())
        fresh = Snapshot()
        fresh.update("smtp/a", s.samples())
        assert snap.render() == fresh.render()
        assert snap.render(openmetrics=True) == fresh.render(openmetrics=True)
    text = snap.render().decode()
    assert 'version="TLSv1.3"' not in text and 'target="h:25"' not in text
    assert 'mail_smtp_up{check="a",target="other:25"} 1.0' in text
    snap.remove("smtp/a")
    assert snap.render() == b""
    snap.update("smtp/a", steps[0].samples())
    assert 'version="TLSv1.3"' in snap.render().decode()


def test_failure_counters_created_once_per_target() -> None:
    state = CheckState()
    first = Sink(state)
    first.init_failures("smtp", "a", "h:25")
    first.state.inc("mail_probe_failures_total", protocol="smtp", check="a", target="h:25", reason="tls")
    again = Sink(state)
    again.init_failures("smtp", "a", "h:25")  # must not reset the count
    again.init_failures("smtp", "a", "other:25")
    counts = {dict(s.labels)["target"] + "/" + dict(s.labels)["reason"]: s.value for s in again.samples()}
    assert counts["h:25/tls"] == 1.0
    assert len([k for k in counts if k.startswith("other:25/")]) == len(REASONS)
    assert all(v == 0.0 for k, v in counts.items() if k != "h:25/tls")
