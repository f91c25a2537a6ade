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


def _prefix(sample: Sample) -> str:
    """A sample line up to its value: ``name{labels} ``."""
    if sample.labels:
        labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sample.labels)
        return f"{sample.family}{sample.suffix}{{{labels}}} "
    return f"{sample.family}{sample.suffix} "


def _line(sample: Sample) -> str:
    return f"{_prefix(sample)}{_fmt(sample.value)}\n"


#: A key's rendered line prefixes, by (family, suffix, labels): see :meth:`Snapshot.update`.
_Prefixes = dict[tuple[str, str, tuple[tuple[str, str], ...]], str]


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


def _group(samples: Iterable[Sample], known: _Prefixes | None = None) -> tuple[dict[str, bytes], _Prefixes | None]:
    """Sample lines by family, and the line prefixes used (see :meth:`Snapshot.update`).

    Each line's prefix (``name{labels} ``) is taken from ``known``, the last rendering's,
    when it is there: a check's series rarely change from run to run, only their values,
    so escaping and joining labels is skipped.  When every prefix came from ``known`` and
    none of it went unused, ``known`` itself is returned (no new long-lived dict per run for
    the garbage collector to scan); else a new dict of exactly the prefixes used.
    """
    parts: dict[str, list[str]] = {}
    known = known or {}
    used: _Prefixes = {}
    missed = False
    for s in samples:
        where = (s.family, s.suffix, s.labels)
        prefix = known.get(where)
        if prefix is None:
            prefix = _prefix(s)
            missed = True
        used[where] = prefix
        parts.setdefault(s.family, []).append(f"{prefix}{_fmt(s.value)}\n")
    grouped = {family: "".join(lines).encode() for family, lines in parts.items()}
    if not missed and len(used) == len(known):
        return grouped, known if known else None
    return grouped, used if used else None


def render_samples(samples: Iterable[Sample], openmetrics: bool = False) -> str:
    """Render samples as complete families (used by /probe and for the self-metrics).

    With ``openmetrics``, the families are OpenMetrics 1.0.0 without the final ``# EOF``
    (the caller ends the exposition, usually after more families).
    """
    grouped, _ = _group(samples)
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

#: Keys per block of a family: a change re-joins and re-compresses one block of each family
#: it touches, never a whole family (1,000 checks: 63 blocks of 16).  Smaller blocks compress worse
#: (16: about 20% more gzip bytes than one member per family) but cost less under churn.
BLOCK_KEYS = 16


def _gzip_member(data: bytes) -> bytes:
    # level 1: ~2x faster than 6, about the same ratio on this text; mtime 0: the same bytes every time
    return gzip.compress(data, compresslevel=1, mtime=0)


_TEXT_HEADERS_GZ = {family: _gzip_member(text) for family, text in _TEXT_HEADERS.items()}
_OM_HEADERS_GZ = {family: _gzip_member(text) for family, text in _OM_HEADERS.items()}
_EOF_GZ = _gzip_member(EOF)


class _Block:
    """Up to :data:`BLOCK_KEYS` keys' lines of one family, joined and compressed on demand."""

    __slots__ = ("gz", "joined", "lines")

    def __init__(self) -> None:
        self.lines: dict[str, bytes] = {}
        self.joined: bytes | None = None
        self.gz: bytes | None = None

    def text(self) -> bytes:
        joined = self.joined
        if joined is None:
            joined = self.joined = b"".join(self.lines.values())
        return joined

    def member(self) -> bytes:
        gz = self.gz
        if gz is None:
            gz = self.gz = _gzip_member(self.text())
        return gz


class _Family:
    """The rendered lines of one family, by key, in blocks."""

    __slots__ = ("blocks", "text_gh", "text_gh_gz", "where")

    def __init__(self) -> None:
        self.blocks: list[_Block] = []
        self.where: dict[str, _Block] = {}
        self.text_gh: bytes | None = None  # a gauge histogram's text-format rendering
        self.text_gh_gz: bytes | None = None

    def set(self, key: str, lines: bytes) -> _Block:
        block = self.where.get(key)
        if block is None:
            block = next((b for b in reversed(self.blocks) if len(b.lines) < BLOCK_KEYS), None)
            if block is None:
                block = _Block()
                self.blocks.append(block)
            self.where[key] = block
        block.lines[key] = lines
        block.joined = block.gz = None
        self.text_gh = self.text_gh_gz = None
        return block

    def drop(self, key: str) -> None:
        block = self.where.pop(key, None)
        if block is None:
            return
        del block.lines[key]
        block.joined = block.gz = None
        self.text_gh = self.text_gh_gz = None
        if not block.lines:
            self.blocks.remove(block)

    def text(self) -> bytes:
        return b"".join(b.text() for b in self.blocks)


class Snapshot:
    """Latest rendered samples per check key; thread-safe; a scrape's cost follows what changed.

    Each check's sample lines are rendered once per change, per family, and shared by both
    formats.  A family's lines are kept in blocks of :data:`BLOCK_KEYS` keys; each block's
    joined text and gzip member are made when one of its keys changes (by the check that
    reports, so that a scrape only joins) and kept until the next change.  A body is the
    join of the pre-rendered headers and the blocks' texts; the gzip body is the
    concatenation of pre-compressed header members and the blocks' cached members (RFC
    1952 allows any number of members; Prometheus, curl and Python read them all).  So a
    change costs one block per family it touches, whatever the number of checks.  Both
    bodies are cached per format until the next change.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[str, dict[str, bytes]] = {}
        self._prefixes: dict[str, _Prefixes] = {}  # by key: the line prefixes of its last update
        self._families: dict[str, _Family] = {}
        self._order: list[str] | None = []  # families present, in contract order (None: to sort)
        self._body: list[bytes | None] = [None, None]  # by format: [text 0.0.4, OpenMetrics]
        self._gzip: list[bytes | None] = [None, None]
        self.generation = 0

    def update(self, key: str, samples: Iterable[Sample]) -> None:
        """Replace everything ``key`` contributes with ``samples``."""
        known = self._prefixes.get(key)
        new, prefixes = _group(samples, known)
        with self._lock:
            if prefixes is None:
                self._prefixes.pop(key, None)
            elif prefixes is not known:
                self._prefixes[key] = prefixes
            old = self._by_key.get(key, {})
            if old == new:
                return
            for family in old.keys() - new.keys():
                gone = self._families[family]
                gone.drop(key)
                if not gone.where:
                    del self._families[family]
                    self._order = None
            for family, text in new.items():
                if old.get(family) != text:
                    fam = self._families.get(family)
                    if fam is None:
                        fam = self._families[family] = _Family()
                        self._order = None
                    # Compressed now, when the check reports, not when a scrape asks: a scrape
                    # then only joins, however many checks changed since the last one.
                    fam.set(key, text).member()
            self._by_key[key] = new
            self._body = [None, None]
            self._gzip = [None, None]
            self.generation += 1

    def remove(self, key: str) -> None:
        self.update(key, ())
        with self._lock:
            self._by_key.pop(key, None)
            self._prefixes.pop(key, None)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._by_key)

    def render(self, openmetrics: bool = False) -> bytes:
        """Every family, in the text format 0.0.4 or (ending with ``# EOF``) in OpenMetrics 1.0.0.

        The OpenMetrics body is the end of an exposition: other families (the
        self-metrics) go before it.
        """
        with self._lock:
            body = self._body[openmetrics]
            if body is None:
                body = self._body[openmetrics] = b"".join(self._parts_locked(openmetrics, zipped=False))
            return body

    def render_gzip(self, openmetrics: bool = False) -> bytes:
        """:meth:`render` gzip-compressed (a series of gzip members), cached until the next change."""
        with self._lock:
            zipped = self._gzip[openmetrics]
            if zipped is None:
                zipped = self._gzip[openmetrics] = b"".join(self._parts_locked(openmetrics, zipped=True))
            return zipped

    def _sorted_locked(self) -> list[str]:
        order = self._order
        if order is None:
            order = self._order = sorted(self._families, key=_ORDER.__getitem__)
        return order

    def _parts_locked(self, openmetrics: bool, *, zipped: bool) -> Iterable[bytes]:
        families = self._families
        for family in self._sorted_locked():
            fam = families[family]
            if not openmetrics and family in _GAUGE_HISTOGRAMS:
                # its buckets, _gcount and _gsum lines regrouped across keys: one piece per family
                if fam.text_gh is None:
                    fam.text_gh = _text_gauge_histogram(family, fam.text())
                if zipped:
                    if fam.text_gh_gz is None:
                        fam.text_gh_gz = _gzip_member(fam.text_gh)
                    yield fam.text_gh_gz
                else:
                    yield fam.text_gh
                continue
            if zipped:
                yield (_OM_HEADERS_GZ if openmetrics else _TEXT_HEADERS_GZ)[family]
                for block in fam.blocks:
                    yield block.member()
            else:
                yield (_OM_HEADERS if openmetrics else _TEXT_HEADERS)[family]
                for block in fam.blocks:
                    yield block.text()
        if openmetrics:
            yield _EOF_GZ if zipped else EOF
