"""The in-memory snapshot that ``/metrics`` serves, rendered when results change.

Rendering a sample costs microseconds; a scrape of 1,000 checks would pay tens of
milliseconds if it rendered everything each time.  Instead each check's samples
are rendered to text once, when the check reports, and kept per metric family.
A scrape joins the cached family texts (and their gzip) and never waits on the
network or on a check.

Two exposition formats are served from the same cache (docs/metrics.md, "Exposition
formats"):

- the Prometheus text format 0.0.4 (the default);
- OpenMetrics 1.0.0, when the scraper's ``Accept`` header prefers it
  (:func:`wants_openmetrics`).

A sample line is the same in both formats (``name{labels} value``), so the lines are
rendered once per change and shared; only the per-family metadata differs, and is
rendered once at import: OpenMetrics names a counter family without ``_total`` (its
samples keep it), declares ``gaugehistogram`` as such, adds ``# UNIT`` where the name
ends in a base unit, and ends with ``# EOF``.  In the text format, which has no gauge
histogram type, a gauge histogram is written as prometheus-client writes it and as
``promtool check metrics`` accepts it: a ``histogram`` family of the ``_bucket`` series,
followed by the ``_gcount`` and ``_gsum`` series as gauge families of their own.  Every
sample keeps its name, labels and value in both formats.

One ``# HELP``/``# TYPE`` header per family, all of a family's samples together (in
OpenMetrics, each label set's samples together), families in contract order.
"""

from __future__ import annotations

__all__ = ["OPENMETRICS_CONTENT_TYPE", "Snapshot", "render_samples", "wants_openmetrics"]

import functools
import gzip
import threading
from collections.abc import Callable, Iterable
from typing import cast

from prometheus_client.utils import floatToGoString

from exporter.core.metrics import FAMILIES, MetricDef
from exporter.core.model import Sample

#: What ``/metrics`` answers with when the scraper prefers OpenMetrics.
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
#: The end of every OpenMetrics exposition (the snapshot's OpenMetrics body ends with it).
EOF = b"# EOF\n"

_fmt = cast(Callable[[float], str], floatToGoString)
_ORDER = {name: i for i, name in enumerate(FAMILIES)}
_TYPE_TEXT = {"gauge": "gauge", "counter": "counter", "histogram": "histogram", "gaugehistogram": "histogram"}
#: Base units a family name may end in; OpenMetrics declares them with ``# UNIT``.
_UNITS = ("seconds", "bytes", "ratio")
_GAUGE_HISTOGRAMS = frozenset(name for name, spec in FAMILIES.items() if spec.type == "gaugehistogram")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _line(sample: Sample) -> str:
    if sample.labels:
        labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels)
        return f"{sample.family}{sample.suffix}{{{labels}}} {_fmt(sample.value)}\n"
    return f"{sample.family}{sample.suffix} {_fmt(sample.value)}\n"


# --- metadata, rendered once --------------------------------------------------------------------


def _help_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def header(family: str) -> str:
    """The text-format (0.0.4) ``# HELP``/``# TYPE`` lines of a family."""
    spec = FAMILIES[family]
    return f"# HELP {family} {_help_text(spec.help)}\n# TYPE {family} {_TYPE_TEXT[spec.type]}\n"


def _gauge_header(family: str, suffix: str, what: str) -> str:
    """Text format: a gauge histogram's ``_gcount`` or ``_gsum`` series, declared as a gauge family."""
    spec = FAMILIES[family]
    help_text = _help_text(f"{spec.help} {what} of the gauge histogram {family}.")
    return f"# HELP {family}{suffix} {help_text}\n# TYPE {family}{suffix} gauge\n"


def openmetrics_name(spec: MetricDef) -> str:
    """The OpenMetrics family name: a counter's without ``_total`` (its samples keep it)."""
    return spec.name.removesuffix("_total") if spec.type == "counter" else spec.name


def openmetrics_header(family: str) -> str:
    """The OpenMetrics 1.0.0 ``# HELP``/``# TYPE`` (and ``# UNIT``) lines of a family."""
    spec = FAMILIES[family]
    name = openmetrics_name(spec)
    out = f"# HELP {name} {_escape(spec.help)}\n# TYPE {name} {spec.type}\n"
    unit = name.rpartition("_")[2]
    if unit in _UNITS:
        out += f"# UNIT {name} {unit}\n"
    return out


_TEXT_HEADERS = {family: header(family).encode() for family in FAMILIES}
_OM_HEADERS = {family: openmetrics_header(family).encode() for family in FAMILIES}
_GCOUNT_HEADERS = {f: _gauge_header(f, "_gcount", "The count").encode() for f in _GAUGE_HISTOGRAMS}
_GSUM_HEADERS = {f: _gauge_header(f, "_gsum", "The sum").encode() for f in _GAUGE_HISTOGRAMS}


def _text_gauge_histogram(family: str, lines: bytes) -> bytes:
    """Text format of a gauge histogram: the buckets as a histogram, then ``_gcount`` and ``_gsum`` as gauges.

    ``lines`` are the family's sample lines in OpenMetrics order (each label set's
    buckets, ``_gsum`` and ``_gcount`` together).  Label values never hold a raw newline
    (it is escaped), so every ``\\n`` ends a line.
    """
    gcount, gsum = f"{family}_gcount".encode(), f"{family}_gsum".encode()
    buckets: list[bytes] = []
    counts: list[bytes] = []
    sums: list[bytes] = []
    for line in lines.split(b"\n")[:-1]:
        (counts if line.startswith(gcount) else sums if line.startswith(gsum) else buckets).append(line)
    return b"".join(
        (
            _TEXT_HEADERS[family],
            *(line + b"\n" for line in buckets),
            _GCOUNT_HEADERS[family],
            *(line + b"\n" for line in counts),
            _GSUM_HEADERS[family],
            *(line + b"\n" for line in sums),
        )
    )


def _family(family: str, lines: bytes, openmetrics: bool) -> bytes:
    if openmetrics:
        return _OM_HEADERS[family] + lines
    if family in _GAUGE_HISTOGRAMS:
        return _text_gauge_histogram(family, lines)
    return _TEXT_HEADERS[family] + lines


def _group(samples: Iterable[Sample]) -> dict[str, bytes]:
    parts: dict[str, list[str]] = {}
    for s in samples:
        parts.setdefault(s.family, []).append(_line(s))
    return {family: "".join(lines).encode() for family, lines in parts.items()}


def render_samples(samples: Iterable[Sample], openmetrics: bool = False) -> str:
    """Render samples as complete families (used by /probe and for the self-metrics).

    With ``openmetrics``, the families are OpenMetrics 1.0.0 without the final ``# EOF``
    (the caller ends the exposition, usually after more families).
    """
    grouped = _group(samples)
    return b"".join(_family(f, grouped[f], openmetrics) for f in sorted(grouped, key=_ORDER.__getitem__)).decode()


# --- content negotiation ------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def wants_openmetrics(accept: str) -> bool:
    """Whether an HTTP ``Accept`` header prefers OpenMetrics 1.0.0 to the text format 0.0.4.

    Each media range weighs its q-value (default 1; 0 means "not acceptable").
    ``application/openmetrics-text`` counts when its ``version`` is 1.x or absent;
    ``text/plain`` when its version is 0.0.4, 1.x or absent (our text-format body is
    valid as either, every name being a legacy one); ``text/*`` and ``*/*`` count as
    the text format.  The highest q wins, a tie goes to the range listed first, and
    when nothing fits the text format is served (as prometheus-client does, rather
    than a 406).  Prometheus 2 and 3 both list OpenMetrics 1.0.0 with the highest q.
    Cached: a scraper sends the same header every time.
    """
    accept = accept.lower()
    if "openmetrics" not in accept:
        return False
    best_q, best = 0.0, False
    for media_range in accept.split(","):
        fields = media_range.split(";")
        media_type = fields[0].strip()
        params: dict[str, str] = {}
        for field in fields[1:]:
            key, _, value = field.partition("=")
            params[key.strip()] = value.strip().strip('"')
        try:
            q = min(float(params.get("q", "1")), 1.0)
        except ValueError:
            continue
        if not q > 0:  # also NaN
            continue
        version = params.get("version")
        if media_type == "application/openmetrics-text":
            if version is not None and version.split(".")[0] != "1":
                continue
            openmetrics = True
        elif media_type == "text/plain":
            if version is not None and version != "0.0.4" and version.split(".")[0] != "1":
                continue
            openmetrics = False
        elif media_type in ("text/*", "*/*"):
            openmetrics = False
        else:
            continue
        if q > best_q:
            best_q, best = q, openmetrics
    return best


# --- the snapshot -------------------------------------------------------------------------------


class Snapshot:
    """Latest rendered samples per check key; thread-safe; scrape cost is a join.

    Each check's sample lines are rendered once per change, per family, and shared by
    both formats.  A body (and its gzip member) is built per format when first asked
    for after a change, from the families' joined lines and the pre-rendered headers.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[str, dict[str, bytes]] = {}
        self._families: dict[str, dict[str, bytes]] = {}  # family -> key -> rendered lines
        self._joined: dict[str, bytes] = {}  # family -> every key's lines, in either format
        self._text_gh: dict[str, bytes] = {}  # gauge histogram family -> its text-format rendering
        self._order: list[str] = []  # families present, in contract order
        self._dirty: set[str] = set()
        self._body: list[bytes | None] = [None, None]  # by format: [text 0.0.4, OpenMetrics]
        self._gzip: list[bytes | None] = [None, None]
        self.generation = 0

    def update(self, key: str, samples: Iterable[Sample]) -> None:
        """Replace everything ``key`` contributes with ``samples``."""
        new = _group(samples)
        with self._lock:
            old = self._by_key.get(key, {})
            if old == new:
                return
            for family in old.keys() - new.keys():
                self._families[family].pop(key, None)
                self._dirty.add(family)
            for family, text in new.items():
                if old.get(family) != text:
                    self._families.setdefault(family, {})[key] = text
                    self._dirty.add(family)
            self._by_key[key] = new
            self._body = [None, None]
            self._gzip = [None, None]
            self.generation += 1

    def remove(self, key: str) -> None:
        self.update(key, ())
        with self._lock:
            self._by_key.pop(key, None)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._by_key)

    def render(self, openmetrics: bool = False) -> bytes:
        """Every family, in the text format 0.0.4 or (ending with ``# EOF``) in OpenMetrics 1.0.0.

        The OpenMetrics body is the end of an exposition: other families (the
        self-metrics) go before it.
        """
        with self._lock:
            return self._render_locked(openmetrics)

    def render_gzip(self, openmetrics: bool = False) -> bytes:
        """:meth:`render` as one gzip member, cached until the next change."""
        with self._lock:
            body = self._render_locked(openmetrics)
            zipped = self._gzip[openmetrics]
            if zipped is None:
                # level 1: ~2x faster than 6, same ratio on this text
                zipped = self._gzip[openmetrics] = gzip.compress(body, compresslevel=1, mtime=0)
            return zipped

    def _render_locked(self, openmetrics: bool) -> bytes:
        body = self._body[openmetrics]
        if body is not None:
            return body
        if self._dirty:
            self._refresh_locked()
        joined = self._joined
        parts: list[bytes] = []
        if openmetrics:
            for family in self._order:
                parts.append(_OM_HEADERS[family])
                parts.append(joined[family])
            parts.append(EOF)
        else:
            for family in self._order:
                if family in _GAUGE_HISTOGRAMS:
                    text = self._text_gh.get(family)
                    if text is None:
                        text = self._text_gh[family] = _text_gauge_histogram(family, joined[family])
                    parts.append(text)
                else:
                    parts.append(_TEXT_HEADERS[family])
                    parts.append(joined[family])
        body = self._body[openmetrics] = b"".join(parts)
        return body

    def _refresh_locked(self) -> None:
        for family in self._dirty:
            self._text_gh.pop(family, None)
            parts = self._families.get(family)
            if parts:
                self._joined[family] = b"".join(parts.values())
            else:
                self._joined.pop(family, None)
                self._families.pop(family, None)
        self._dirty.clear()
        self._order = sorted(self._joined, key=_ORDER.__getitem__)
