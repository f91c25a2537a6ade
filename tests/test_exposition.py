"""``/metrics`` in both exposition formats, checked by the real tools (issue 14).

A snapshot holds every kind of family the contract has, each made by the code that
makes it in production: gauges and failure counters of a probe, a cumulative
histogram in a :class:`CheckState`, and the queue families (a gauge histogram among
them) from the shipped default config's Postfix source, read by
:func:`exporter.queues.read_queue` from a ``postqueue -j`` stand-in that lists real
messages.  The samples that went in are the ground truth.

- The text format 0.0.4 must pass ``promtool check metrics``, which refused gauge
  histograms written as a ``histogram`` family with ``_gcount``/``_gsum`` samples.
- OpenMetrics 1.0.0: ``promtool check metrics`` reads only the text format (it refuses
  ``# TYPE ... gaugehistogram``), so Prometheus's own OpenMetrics parser checks it,
  through ``promtool tsdb create-blocks-from openmetrics``; ``promtool tsdb dump`` then
  gives back every series, compared with the ground truth.  That import needs a
  timestamp on every sample, so one is added to a copy of the text, for that check only.
- Both formats parse with prometheus-client's parsers (its OpenMetrics parser is strict:
  grouping, ``_total``, units, bucket order, ``# EOF``) to exactly the ground truth.
- The aiohttp application negotiates the format from ``Accept`` (q-values honoured),
  with gzip for both.

promtool comes from Debian's ``prometheus`` package (``scripts/teststack.sh install``); the
CI has it.  Without it, the promtool tests are skipped locally and say why.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter import config
from exporter.app import Exporter, Options
from exporter.config import PostfixQueue
from exporter.core.metrics import FAMILIES
from exporter.core.model import CheckState, Sample, Sink
from exporter.core.snapshot import OPENMETRICS_CONTENT_TYPE, Snapshot, render_samples, wants_openmetrics
from exporter.queues import AGE_BUCKETS, read_queue
from exporter.web.server import CONTENT_TYPE, make_app

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package prometheus: scripts/teststack.sh install)"
)

#: What Prometheus 3 sends by default (scrape_protocols), and Prometheus 2.
PROMETHEUS_3_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=underscores;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=underscores;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
PROMETHEUS_2_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]
Client = TestClient[web.Request, web.Application]
parse_openmetrics = cast(Callable[[str], Iterable[Any]], openmetrics_parser.text_string_to_metric_families)

#: Messages in the Postfix queue: (queue, age in seconds, size).  Ages stay clear of the
#: bucket bounds, so that a second passing during the read moves none.
MESSAGES = [
    ("deferred", 30, 1_000),
    ("deferred", 1_000, 2_000),
    ("deferred", 5_000, 3_000),
    ("deferred", 100_000, 4_000),
    ("deferred", 400_000, 5_000),
    ("deferred", 600_000, 6_000),
    ("active", 10, 700),
    ("hold", 40_000, 800),
]


def series(samples: list[Sample]) -> Series:
    out: Series = {}
    for s in samples:
        key = (s.name, tuple(sorted(s.labels)))
        assert key not in out, f"duplicate series {key}"
        out[key] = s.value
    return out


def parsed(families: Iterable[Any], names: set[str] | None = None) -> Series:
    out: Series = {}
    for fam in families:
        for s in fam.samples:
            if names is None or s.name in names:
                out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


# --- the snapshot, made by the production code ------------------------------------------------


def probe_samples() -> list[Sample]:
    """An SMTP endpoint's gauges and counters (every failure reason at 0, one counted)."""
    sink = Sink(CheckState())
    check, target = "mx-a", 'mx1.example.test[192.0.2.1]:25 "quoted" \\ back'
    sink.init_failures("smtp", check, target)
    sink.fail("timeout", "no banner", protocol="smtp", check=check, target=target)
    sink.gauge("mail_smtp_up", 0, check=check, target=target)
    sink.gauge("mail_smtp_reply_code", 421, check=check, target=target)
    sink.gauge("mail_probe_phase_duration_seconds", 0.25, protocol="smtp", check=check, target=target, phase="connect")
    sink.gauge("mail_tls_cert_expiry_timestamp_seconds", 1.9e9, protocol="smtp", check=check, target=target)
    state = sink.state
    state.inc("mail_exporter_check_runs_total", 3, check="smtp", name=check, result="failure")
    sink.gauge("mail_exporter_check_success", 0, check="smtp", name=check)
    return sink.samples()


def roundtrip_samples() -> list[Sample]:
    """A cumulative histogram and a counter, as a route keeps them in its CheckState."""
    state = CheckState()
    for seconds in (0.4, 3.0, 3.5, 45.0, 900.0):
        state.observe("mail_roundtrip_latency_seconds", seconds, (1, 5, 30, 300), route="inbound")
    state.inc("mail_roundtrip_probes_total", 5, route="inbound", result="success")
    sink = Sink(state)
    sink.gauge("mail_availability_ratio", 0.9999, service="inbound", window="30d")
    return sink.samples()


def shipped_queue() -> PostfixQueue:
    """The shipped default config's Postfix source, read with ``postqueue -j``."""
    queue = config.load_text(config.DEFAULT_CONFIG_YAML, "<embedded default>").queues[0]
    assert isinstance(queue, PostfixQueue) and queue.name == "local"
    return dataclasses.replace(queue, reader="postqueue")


def fake_postqueue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``postqueue`` on PATH that lists :data:`MESSAGES` as ``postqueue -j`` does."""
    now = int(time.time())
    lines = []
    for i, (queue, age, size) in enumerate(MESSAGES):
        reason = "connect to mx.example.net[192.0.2.9]:25: Connection refused" if queue == "deferred" else ""
        recipient = f'{{"address": "user{i}@example.net", "delay_reason": "{reason}"}}'
        lines.append(
            f'{{"queue_name": "{queue}", "queue_id": "4Q{i:08X}", "arrival_time": {now - age}, '
            f'"message_size": {size}, "sender": "a@example.test", "recipients": [{recipient}]}}'
        )
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "queue.jsonl").write_text("\n".join(lines) + "\n")
    script = bindir / "postqueue"
    script.write_text(f'#!/bin/sh\n[ "$1" = -j ] || exit 64\nexec cat "{bindir / "queue.jsonl"}"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")


async def queue_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Sample]:
    fake_postqueue(tmp_path, monkeypatch)
    sink = Sink(CheckState())
    assert await read_queue(shipped_queue(), sink, logging.getLogger("test"), cache=None), sink.failures
    return sink.samples()


@dataclasses.dataclass
class Built:
    snapshot: Snapshot
    truth: Series


async def build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, snapshot: Snapshot | None = None) -> Built:
    snap = snapshot if snapshot is not None else Snapshot()
    parts = {
        "smtp/mx-a": probe_samples(),
        "route/inbound": roundtrip_samples(),
        "queue/local": await queue_samples(tmp_path, monkeypatch),
    }
    truth: Series = {}
    for key, samples in parts.items():
        snap.update(key, samples)
        truth.update(series(samples))
    kinds = {FAMILIES[s.family].type for samples in parts.values() for s in samples}
    assert kinds == {"gauge", "counter", "histogram", "gaugehistogram"}
    return Built(snap, truth)


def check_queue_truth(truth: Series) -> None:
    """The queue families say what the stand-in listed: 6 deferred messages, their ages bucketed."""
    deferred = (("queue", "deferred"), ("source", "local"))
    assert truth[("mail_queue_messages", deferred)] == 6
    assert truth[("mail_queue_size_bytes", deferred)] == 21_000
    assert truth[("mail_queue_message_age_seconds_gcount", deferred)] == 6
    gsum = truth[("mail_queue_message_age_seconds_gsum", deferred)]
    assert gsum == pytest.approx(sum(a for q, a, _ in MESSAGES if q == "deferred"), abs=60)
    for bound in AGE_BUCKETS:
        le = (("le", repr(bound)), *deferred)
        want = sum(1 for q, a, _ in MESSAGES if q == "deferred" and a <= bound)
        assert truth[("mail_queue_message_age_seconds_bucket", le)] == want, bound
    assert truth[("mail_queue_message_age_seconds_bucket", (("le", "+Inf"), *deferred))] == 6


# --- promtool --------------------------------------------------------------------------------


def promtool_check_metrics(text: bytes) -> None:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


_DUMP = re.compile(r"^\{(.*)\} (\S+) (-?\d+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def prometheus_openmetrics_import(text: bytes, tmp_path: Path) -> Series:
    """Every series of an OpenMetrics text as Prometheus's OpenMetrics parser reads it.

    ``promtool tsdb create-blocks-from openmetrics`` runs the parser Prometheus scrapes
    OpenMetrics with; backfilling needs a timestamp on every sample, so each sample line
    gets the same one here.  ``promtool tsdb dump`` lists what was stored.
    """
    assert PROMTOOL is not None
    lines = text.decode().splitlines()
    stamped = [line if line.startswith("#") else f"{line} 1700000000" for line in lines]
    source = tmp_path / "metrics.om"
    source.write_text("\n".join(stamped) + "\n")
    blocks = tmp_path / "blocks"
    done = subprocess.run(
        [PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", str(source), str(blocks)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode()
    (blocks / "wal").mkdir(exist_ok=True)  # dump opens the directory as a database
    dump = subprocess.run(
        [PROMTOOL, "tsdb", "dump", str(blocks)], capture_output=True, timeout=120, check=True, text=True
    ).stdout
    out: Series = {}
    for line in dump.splitlines():
        m = _DUMP.match(line)
        assert m, line
        labels = dict((k, v.encode().decode("unicode_escape")) for k, v in _LABEL.findall(m.group(1)))
        name = labels.pop("__name__")
        out[(name, tuple(sorted(labels.items())))] = float(m.group(2))
    return out


# --- the formats -------------------------------------------------------------------------------


@needs_promtool
async def test_text_format_passes_promtool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = await build(tmp_path, monkeypatch)
    promtool_check_metrics(built.snapshot.render())


@needs_promtool
async def test_openmetrics_is_read_by_prometheus_to_the_ground_truth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = await build(tmp_path, monkeypatch)
    stored = prometheus_openmetrics_import(built.snapshot.render(openmetrics=True), tmp_path)
    assert stored == built.truth
    check_queue_truth(stored)


async def test_both_formats_parse_to_the_ground_truth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = await build(tmp_path, monkeypatch)
    check_queue_truth(built.truth)
    text = built.snapshot.render().decode()
    om = built.snapshot.render(openmetrics=True).decode()
    assert parsed(parse_text(text)) == built.truth
    assert parsed(parse_openmetrics(om)) == built.truth


async def test_openmetrics_metadata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = await build(tmp_path, monkeypatch)
    om = built.snapshot.render(openmetrics=True).decode()
    assert om.endswith("\n# EOF\n") and om.count("# EOF") == 1
    types = {f.name: (f.type, f.unit) for f in parse_openmetrics(om)}
    # counters: the family without _total, the samples with it
    assert types["mail_probe_failures"] == ("counter", "")
    assert types["mail_roundtrip_probes"] == ("counter", "")
    assert "# TYPE mail_probe_failures counter\n" in om
    assert 'mail_probe_failures_total{protocol="smtp",check="mx-a"' in om
    # a gauge histogram is one, with its unit
    assert types["mail_queue_message_age_seconds"] == ("gaugehistogram", "seconds")
    assert types["mail_roundtrip_latency_seconds"] == ("histogram", "seconds")
    assert types["mail_queue_size_bytes"] == ("gauge", "bytes")
    assert types["mail_availability_ratio"] == ("gauge", "ratio")
    assert types["mail_smtp_up"] == ("gauge", "")


async def test_text_format_writes_gauge_histograms_as_prometheus_client_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A histogram family of the buckets, then ``_gcount`` and ``_gsum`` declared as gauges."""
    built = await build(tmp_path, monkeypatch)
    text = built.snapshot.render().decode()
    family = "mail_queue_message_age_seconds"
    start = text.index(f"# HELP {family} ")
    block = text[start : text.index("# HELP mail_queue_deferred_reason_messages ")]
    heads = [line for line in block.splitlines() if line.startswith("# TYPE")]
    assert heads == [f"# TYPE {family} histogram", f"# TYPE {family}_gcount gauge", f"# TYPE {family}_gsum gauge"]
    kinds = [line.split("{")[0] for line in block.splitlines() if not line.startswith("#")]
    assert kinds == sorted(kinds, key=_suffix_rank) and len(set(kinds)) == 3
    assert block.count("# HELP") == 3
    types = {f.name: f.type for f in parse_text(text)}
    assert types[family] == "histogram"
    assert types[f"{family}_gcount"] == types[f"{family}_gsum"] == "gauge"


def _suffix_rank(name: str) -> int:
    return ["_bucket", "_gcount", "_gsum"].index("_" + name.rpartition("_")[2])


def every_family() -> list[Sample]:
    """One series of every family of the contract, each made as its kind is made in production."""
    state = CheckState()
    sink = Sink(state)
    for name, spec in FAMILIES.items():
        labels = {label: "x" for label in spec.labels}
        if spec.type == "gauge":
            sink.gauge(name, 1, **labels)
        elif spec.type == "counter":
            state.inc(name, 2, **labels)
        elif spec.type == "histogram":
            state.observe(name, 3, (1, 10), **labels)
        else:
            sink.gauge_histogram(name, (1, float("inf")), (0, 1), 3, **labels)
    return sink.samples()


def test_every_family_of_the_contract_renders_in_both_formats() -> None:
    """Valid OpenMetrics metadata for every family (no name clashes, units that match), both formats parse."""
    samples = every_family()
    om = render_samples(samples, openmetrics=True) + "# EOF\n"
    families = list(parse_openmetrics(om))  # raises on a clash, a bad unit or bad grouping
    assert len(families) == len(FAMILIES)
    assert parsed(families) == series(samples)
    assert parsed(parse_text(render_samples(samples))) == series(samples)
    for spec in FAMILIES.values():
        assert (spec.type == "counter") == spec.name.endswith("_total")


@needs_promtool
def test_every_family_of_the_contract_passes_promtool(tmp_path: Path) -> None:
    samples = every_family()
    promtool_check_metrics(render_samples(samples).encode())
    om = render_samples(samples, openmetrics=True) + "# EOF\n"
    assert prometheus_openmetrics_import(om.encode(), tmp_path) == series(samples)


# --- the snapshot's caches ------------------------------------------------------------------------


def test_openmetrics_body_is_cached_per_format_and_invalidated_by_a_change() -> None:
    snap = Snapshot()
    assert snap.render() == b"" and snap.render(openmetrics=True) == b"# EOF\n"
    snap.update("smtp/mx-a", probe_samples())
    text, om = snap.render(), snap.render(openmetrics=True)
    assert snap.render() is text and snap.render(openmetrics=True) is om
    zipped = snap.render_gzip(openmetrics=True)
    assert snap.render_gzip(openmetrics=True) is zipped and gzip.decompress(zipped) == om
    assert gzip.decompress(snap.render_gzip()) == text
    snap.update("route/inbound", roundtrip_samples())
    assert snap.render(openmetrics=True) != om and snap.render() != text
    assert gzip.decompress(snap.render_gzip(openmetrics=True)) == snap.render(openmetrics=True)
    snap.remove("route/inbound")
    assert snap.render(openmetrics=True) == om and snap.render() == text
    snap.remove("smtp/mx-a")
    assert snap.render() == b"" and snap.render(openmetrics=True) == b"# EOF\n"


# --- content negotiation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        ("", False),
        ("*/*", False),
        ("text/plain", False),
        ("text/plain;version=0.0.4", False),
        (PROMETHEUS_3_ACCEPT, True),
        (PROMETHEUS_2_ACCEPT, True),
        ("application/openmetrics-text", True),
        ("application/openmetrics-text; version=1.0.0; charset=utf-8", True),
        ("Application/OpenMetrics-Text;Version=1.0.0", True),
        # q-values: the highest wins, whatever the order
        ("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5", False),
        ("text/plain;version=0.0.4;q=0.3,application/openmetrics-text;version=1.0.0;q=0.5", True),
        ("text/plain;version=1.0.0;q=0.6,application/openmetrics-text;version=1.0.0;q=0.5", False),
        ("*/*;q=0.8,application/openmetrics-text;q=0.9", True),
        # a tie goes to the range listed first
        ("application/openmetrics-text, text/plain", True),
        ("text/plain, application/openmetrics-text", False),
        # q=0 is "not acceptable"; bad q-values and unknown versions do not count
        ("application/openmetrics-text;q=0,text/plain;q=0.1", False),
        ("application/openmetrics-text;q=0", False),
        ("application/openmetrics-text;q=bogus,text/plain;q=0.1", False),
        ("application/openmetrics-text;version=0.0.1", False),
        ("application/openmetrics-text;version=2.0.0;q=1,text/plain;q=0.1", False),
        ("application/openmetrics-text;version=0.0.1;q=0.9,application/openmetrics-text;version=1.0.0;q=0.2", True),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),
    ],
)
def test_negotiation(accept: str, openmetrics: bool) -> None:
    assert wants_openmetrics(accept) is openmetrics


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[Client, Exporter]]:
    exp = Exporter(Options(config_file=None, storage_path=str(tmp_path / "data")))
    async with TestClient(TestServer(make_app(exp)), auto_decompress=False) as c:  # 127.0.0.1, port 0
        yield c, exp


async def get(c: Client, accept: str | None, gz: bool) -> tuple[str, str, bytes]:
    headers = {"Accept-Encoding": "gzip"} if gz else {}
    if accept is not None:
        headers["Accept"] = accept
    skip = [h for h in ("Accept", "Accept-Encoding") if h not in headers]
    resp = await c.get("/metrics", headers=headers, skip_auto_headers=skip)
    assert resp.status == 200
    raw = await resp.read()
    encoding = resp.headers.get("Content-Encoding", "")
    assert encoding == ("gzip" if gz else "")
    assert "Accept" in resp.headers.get("Vary", "")
    return resp.headers["Content-Type"], encoding, gzip.decompress(raw) if gz else raw


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
async def test_app_negotiates_the_format(
    client: tuple[Client, Exporter], gz: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c, exp = client
    built = await build(tmp_path, monkeypatch, exp.snapshot)
    mine = {name for name, _ in built.truth}

    for om_accept in (PROMETHEUS_3_ACCEPT, "application/openmetrics-text"):
        ctype, _, body = await get(c, om_accept, gz)
        assert ctype == OPENMETRICS_CONTENT_TYPE
        text = body.decode()
        assert text.endswith("\n# EOF\n") and text.count("# EOF") == 1
        families = list(parse_openmetrics(text))
        names = {f.name for f in families}
        assert {"mail_exporter_build_info", "process_cpu_seconds", "python_gc_objects_collected"} <= names
        assert parsed(families, mine) == built.truth

    for text_accept in (None, "text/plain;version=0.0.4", "*/*"):
        ctype, _, body = await get(c, text_accept, gz)
        assert ctype == CONTENT_TYPE
        text = body.decode()
        assert "# EOF" not in text
        families = list(parse_text(text))
        assert {"mail_exporter_build_info", "process_cpu_seconds"} <= {f.name for f in families}
        assert parsed(families, mine) == built.truth


@needs_promtool
async def test_shipped_config_with_a_busy_postfix_queue_serves_metrics_promtool_accepts(
    client: tuple[Client, Exporter], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default config's Postfix source, with mail in its queue: /metrics in both formats."""
    c, exp = client
    built = await build(tmp_path, monkeypatch, exp.snapshot)
    check_queue_truth(built.truth)
    mine = {name for name, _ in built.truth}

    _, _, text = await get(c, None, gz=True)
    assert b"mail_queue_message_age_seconds_gcount" in text
    promtool_check_metrics(text)

    _, _, om = await get(c, PROMETHEUS_3_ACCEPT, gz=True)
    stored = prometheus_openmetrics_import(om, tmp_path)
    assert {k: v for k, v in stored.items() if k[0] in mine} == built.truth
    assert {"mail_exporter_build_info", "process_cpu_seconds_total"} <= {name for name, _ in stored}
