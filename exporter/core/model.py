"""The values that flow from checks to the snapshot.

A check (a prober, a queue reader, a round trip, a continuity source) writes what it
measured into a :class:`Sink`.  The sink validates every sample against the metrics
contract in :mod:`exporter.core.metrics` (family known, label names exactly as declared),
so an unbounded or misspelt label is a programming error caught in tests, not a
cardinality incident in production.

Counters and cumulative histograms must survive from one run of a check to the
next; they live in a :class:`CheckState` that the scheduler keeps per check and
hands to every run's sink.  ``/probe`` gives each request a fresh state.
"""

from __future__ import annotations

__all__ = [
    "REASONS",
    "CheckState",
    "Failure",
    "Sample",
    "Sink",
]

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from exporter.core import metrics

#: The fixed set of failure reasons a probe may report (``mail_probe_failures_total``).
REASONS: tuple[str, ...] = (
    "timeout",
    "refused",
    "tls",
    "auth",
    "protocol",
    "dns",
    "reply_4xx",
    "reply_5xx",
    "tls_policy",
    "dane_mismatch",
    "dnssec",
    "auth_token",
)

LabelPairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Sample:
    """One exposition line: ``family`` + ``suffix`` is the sample name."""

    family: str
    suffix: str
    labels: LabelPairs
    value: float

    @property
    def name(self) -> str:
        return self.family + self.suffix


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a check failed: a reason from a bounded set and a short message without secrets."""

    reason: str
    message: str
    target: str = ""


def _labels(family: str, labels: dict[str, str]) -> LabelPairs:
    spec = metrics.FAMILIES.get(family)
    if spec is None:
        raise KeyError(f"metric family {family!r} is not in the metrics contract")
    names = spec.labels
    if tuple(labels) != names:
        if set(labels) != set(names):
            raise ValueError(f"{family}: labels {sorted(labels)} do not match the contract {list(names)}")
        return tuple((k, str(labels[k])) for k in names)
    return tuple(zip(names, map(str, labels.values()), strict=True))


@dataclass
class _Histogram:
    buckets: tuple[float, ...]
    counts: list[int]
    total: float = 0.0
    count: int = 0


@dataclass
class CheckState:
    """Cumulative values of one check, kept across its runs (counters, histograms)."""

    counters: dict[tuple[str, LabelPairs], float] = field(default_factory=dict)
    histograms: dict[tuple[str, LabelPairs], _Histogram] = field(default_factory=dict)
    #: (protocol, check, target) whose failure counters exist (:meth:`Sink.init_failures`).
    failures_ready: set[tuple[str, str, str]] = field(default_factory=set)

    def inc(self, family: str, amount: float = 1.0, **labels: str) -> None:
        key = (family, _labels(family, labels))
        self.counters[key] = self.counters.get(key, 0.0) + amount

    def init_counter(self, family: str, **labels: str) -> None:
        """Create a counter at 0 so that the series exists before the first event."""
        key = (family, _labels(family, labels))
        self.counters.setdefault(key, 0.0)

    def observe(self, family: str, value: float, buckets: Sequence[float], **labels: str) -> None:
        hist = self._hist(family, buckets, labels)
        for i, le in enumerate(hist.buckets):
            if value <= le:
                hist.counts[i] += 1
        hist.total += value
        hist.count += 1

    def merge_histogram(
        self, family: str, buckets: Sequence[float], per_bucket: Sequence[int], total: float, **labels: str
    ) -> None:
        """Add pre-bucketed observations: ``per_bucket[i]`` values fell in ``(buckets[i-1], buckets[i]]``,
        the last entry above every bound (+Inf); ``total`` is their sum."""
        hist = self._hist(family, buckets, labels)
        if len(per_bucket) != len(hist.buckets):
            raise ValueError(f"{family}: {len(per_bucket)} bucket counts for {len(hist.buckets)} buckets")
        running = 0
        for i, n in enumerate(per_bucket):
            running += n
            hist.counts[i] += running
        hist.total += total
        hist.count += running

    def init_histogram(self, family: str, buckets: Sequence[float], **labels: str) -> None:
        self._hist(family, buckets, labels)

    def _hist(self, family: str, buckets: Sequence[float], labels: dict[str, str]) -> _Histogram:
        key = (family, _labels(family, labels))
        hist = self.histograms.get(key)
        if hist is None:
            bounds = tuple(sorted(set(float(b) for b in buckets) | {math.inf}))
            hist = _Histogram(buckets=bounds, counts=[0] * len(bounds))
            self.histograms[key] = hist
        return hist

    def samples(self) -> Iterable[Sample]:
        for (family, labels), value in self.counters.items():
            yield Sample(family, "", labels, value)
        for (family, labels), hist in self.histograms.items():
            yield from histogram_samples(family, labels, hist.buckets, hist.counts, hist.total, hist.count)


def histogram_samples(
    family: str,
    labels: LabelPairs,
    buckets: Sequence[float],
    cumulative_counts: Sequence[int],
    total: float,
    count: int,
    gauge: bool = False,
) -> Iterable[Sample]:
    """Samples of a histogram (or gauge histogram) from cumulative bucket counts."""
    for le, n in zip(buckets, cumulative_counts, strict=True):
        yield Sample(family, "_bucket", (*labels, ("le", _le(le))), float(n))
    yield Sample(family, "_gsum" if gauge else "_sum", labels, total)
    yield Sample(family, "_gcount" if gauge else "_count", labels, float(count))


def _le(bound: float) -> str:
    if math.isinf(bound):
        return "+Inf"
    text = repr(float(bound))
    return text


class Sink:
    """What one run of a check measured.

    Gauges are written fresh every run.  Counters and histograms go to the check's
    :class:`CheckState`, so they accumulate.  ``fail`` records why the run failed
    (and counts ``mail_probe_failures_total`` when a protocol is given).  A sink
    created with ``debug=True`` also keeps a transcript of the dialog, which the
    caller must only ever fill with redacted text.
    """

    def __init__(self, state: CheckState | None = None, debug: bool = False) -> None:
        self.state = state if state is not None else CheckState()
        self._gauges: dict[tuple[str, LabelPairs], Sample] = {}
        self._extra: list[Sample] = []
        self.failures: list[Failure] = []
        self.details: dict[str, str] = {}
        self.transcript: list[str] | None = [] if debug else None

    def gauge(self, family: str, value: float, **labels: str) -> None:
        labs = _labels(family, labels)
        self._gauges[(family, labs)] = Sample(family, "", labs, float(value))

    def gauge_histogram(
        self,
        family: str,
        buckets: Sequence[float],
        cumulative_counts: Sequence[int],
        total: float,
        **labels: str,
    ) -> None:
        labs = _labels(family, labels)
        count = cumulative_counts[-1] if cumulative_counts else 0
        self._extra.extend(histogram_samples(family, labs, buckets, cumulative_counts, total, count, gauge=True))

    def fail(self, reason: str, message: str, *, protocol: str = "", check: str = "", target: str = "") -> None:
        """Record a failure.  With ``protocol``, also count it in ``mail_probe_failures_total``."""
        if protocol:
            if reason not in REASONS:
                raise ValueError(f"unknown failure reason {reason!r}")
            self.state.inc("mail_probe_failures_total", protocol=protocol, check=check, target=target, reason=reason)
        self.failures.append(Failure(reason, message, target))

    def init_failures(self, protocol: str, check: str, target: str) -> None:
        """Create every reason's failure counter at 0 for one target (once: every run asks)."""
        ready = (protocol, check, target)
        if ready in self.state.failures_ready:
            return
        self.state.failures_ready.add(ready)
        for reason in REASONS:
            self.state.init_counter(
                "mail_probe_failures_total", protocol=protocol, check=check, target=target, reason=reason
            )

    def trace(self, line: str) -> None:
        if self.transcript is not None:
            self.transcript.append(line)

    def detail(self, key: str, text: str) -> None:
        """A short, bounded note for the status page (for example why a DNS record is not ok)."""
        self.details[key] = text

    @property
    def failure(self) -> Failure | None:
        return self.failures[0] if self.failures else None

    def samples(self) -> list[Sample]:
        out = list(self._gauges.values())
        out.extend(self._extra)
        out.extend(self.state.samples())
        return out
