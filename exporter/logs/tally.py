"""The bounded tally that parsers count into, flushed into a check's state once per run.

Parsers run once per log line, so counting must be cheap: a :class:`Tally` keys counts by
``(family, label values)`` in the metrics contract's label order *without* the leading
``source`` label, with no validation per line.  :meth:`Tally.flush` validates each
distinct key once against the contract (:mod:`exporter.core.metrics`) and adds it to the
check's :class:`~exporter.core.model.CheckState`, where counters survive from run to run.

Every label value a parser passes must come from a fixed set (or a configured, bounded
one such as the top-N domains): no queue ids, addresses or free text.
"""

from __future__ import annotations

__all__ = ["DELAY_BUCKETS", "Tally"]

import math
from bisect import bisect_left
from collections import defaultdict

from exporter.core import metrics
from exporter.core.model import CheckState

#: Buckets (seconds) of ``mail_log_delivery_delay_seconds``: 10 ms to 5 days.
DELAY_BUCKETS: tuple[float, ...] = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0, 432000.0,
)  # fmt: skip

#: Histogram families and their buckets.
HISTOGRAM_BUCKETS: dict[str, tuple[float, ...]] = {"mail_log_delivery_delay_seconds": DELAY_BUCKETS}


class Tally:
    """Counts and observations of one batch of lines."""

    __slots__ = ("counts", "observations")

    def __init__(self) -> None:
        self.counts: defaultdict[tuple[str, tuple[str, ...]], float] = defaultdict(float)
        self.observations: defaultdict[tuple[str, tuple[str, ...]], list[float]] = defaultdict(list)

    def inc(self, family: str, labels: tuple[str, ...] = (), n: float = 1.0) -> None:
        """Count ``n`` for ``family`` with ``labels`` (the contract's labels after ``source``)."""
        self.counts[(family, labels)] += n

    def observe(self, family: str, labels: tuple[str, ...], value: float) -> None:
        self.observations[(family, labels)].append(value)

    def get(self, family: str, labels: tuple[str, ...] = ()) -> float:
        return self.counts.get((family, labels), 0.0)

    def __bool__(self) -> bool:
        return bool(self.counts or self.observations)

    def flush(self, state: CheckState, source: str) -> None:
        """Add everything into ``state`` (labels validated against the contract) and reset."""
        for (family, values), n in self.counts.items():
            state.inc(family, n, **_labels(family, source, values))
        for (family, values), seen in self.observations.items():
            buckets = HISTOGRAM_BUCKETS[family]
            per_bucket = [0] * (len(buckets) + 1)
            for value in seen:
                per_bucket[bisect_left(buckets, value)] += 1
            state.merge_histogram(family, buckets, per_bucket, math.fsum(seen), **_labels(family, source, values))
        self.counts.clear()
        self.observations.clear()


def _labels(family: str, source: str, values: tuple[str, ...]) -> dict[str, str]:
    names = metrics.FAMILIES[family].labels
    if len(names) != len(values) + 1 or names[0] != "source":
        raise ValueError(f"{family}: label values {values} do not fit the contract labels {names}")
    return {"source": source, **dict(zip(names[1:], values, strict=True))}
