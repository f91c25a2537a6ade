"""What the queue readers share: the counts of one read, the cache, failures, reason classes.

Every reader builds a :class:`QueueStats` and raises :class:`QueueReadError` on a
failure; :func:`exporter.queues.read_queue` emits the one and records the other.
This module imports no reader and not the package :mod:`exporter.queues`, so that
the readers can import it (and the package can import the readers) without a cycle.
"""

from __future__ import annotations

__all__ = [
    "AGE_BUCKETS",
    "DEFERRED_REASONS",
    "FAILURE_REASONS",
    "MAX_DOMAINS",
    "POSTFIX_QUEUES",
    "QueueCache",
    "QueueReadError",
    "QueueStats",
    "classify_reason",
    "first_reason",
    "make_cache",
    "recipient_domain",
    "top_domains",
]

import functools
import math
import re
import time
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from exporter.core.errors import Failure
from exporter.core.model import Sink

#: Age buckets (seconds) of ``mail_queue_message_age_seconds``: 1 minute to 5 days, then +Inf.
AGE_BUCKETS: tuple[float, ...] = (
    60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0, 172800.0, 345600.0, 432000.0,
)  # fmt: skip
_BOUNDS: tuple[float, ...] = (*AGE_BUCKETS, math.inf)

#: Postfix's queues, in the order showq scans them.
POSTFIX_QUEUES: tuple[str, ...] = ("maildrop", "incoming", "active", "deferred", "hold")

#: Fixed deferral reason classes (``mail_queue_deferred_reason_messages{reason}``).
DEFERRED_REASONS: tuple[str, ...] = (
    "refused_or_timeout",
    "dns",
    "tls",
    "greylist_or_ratelimit",
    "rejected",
    "other",
)

#: Reasons a read may fail with.
FAILURE_REASONS: tuple[str, ...] = ("timeout", "unavailable", "permission", "parse", "command")

#: Distinct destination domains counted exactly in one read; more are counted as "other".
MAX_DOMAINS = 10_000


class QueueReadError(Failure, RuntimeError):
    """A read failed; ``reason`` is one of :data:`FAILURE_REASONS`.

    Raised by readers, caught by :func:`exporter.queues.read_queue`.
    """

    def __init__(self, reason: str, message: str) -> None:
        if reason not in FAILURE_REASONS:
            raise ValueError(f"unknown queue failure reason {reason!r}")
        super().__init__(reason, message)


# --- deferral reasons -----------------------------------------------------------------------------

# A remote server's reply inside Postfix's reason text: "host mx[1.2.3.4] said: 450 4.7.1 ..." or
# "host mx[1.2.3.4] refused to talk to me: 421 ...".
_REMOTE_REPLY = re.compile(r"(?:\bsaid|refused to talk to me):\s*([245])\d\d\b")
_TLS = re.compile(r"\b(?:TLS|SSL|STARTTLS|certificate|handshake)\b", re.IGNORECASE)
_DNS = re.compile(
    r"Host or domain name not found|Name service error|Host not found|No MX|"
    r"Domain not found|unable to look up|MX host .* has no address|DNS|NXDOMAIN|SERVFAIL",
    re.IGNORECASE,
)
_REFUSED_OR_TIMEOUT = re.compile(
    r"Connection refused|timed out|Connection reset|No route to host|Network is unreachable|"
    r"Host is down|lost connection|Connection timed out|connect to .*:",
    re.IGNORECASE,
)


@functools.lru_cache(maxsize=4096)
def classify_reason(reason: str) -> str:
    """Map Postfix's free-text deferral reason to one of :data:`DEFERRED_REASONS`.

    A remote reply is classified by its code (a TLS complaint wins): 4xx is
    ``greylist_or_ratelimit``, 5xx ``rejected``.  Local failures by what Postfix says:
    TLS, then DNS, then connection refused/timed out/lost.  Anything else, and an
    empty reason, is ``other``.  Memoised: a queue repeats the same few texts.
    """
    if not reason:
        return "other"
    m = _REMOTE_REPLY.search(reason)
    if m is not None:
        if _TLS.search(reason):
            return "tls"
        return "rejected" if m.group(1) == "5" else "greylist_or_ratelimit"
    if _TLS.search(reason):
        return "tls"
    if _DNS.search(reason):
        return "dns"
    if _REFUSED_OR_TIMEOUT.search(reason):
        return "refused_or_timeout"
    return "other"


def recipient_domain(address: str) -> str:
    """The lower-case domain of an address; ``"local"`` when it has none."""
    domain = address.rpartition("@")[2] if "@" in address else ""
    domain = domain.strip().strip("<>").rstrip(".").lower()
    return domain or "local"


def first_reason(recipients: Iterable[tuple[str, str]]) -> tuple[str, str] | None:
    """The ``(class, domain)`` of a message from its ``(address, reason)`` pairs in stream order."""
    first: str | None = None
    for address, reason in recipients:
        if reason:
            return classify_reason(reason), recipient_domain(address)
        if first is None:
            first = address
    if first is None:
        return None
    return "other", recipient_domain(first)


# --- accumulation ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Queue:
    messages: int = 0
    size: int = 0
    oldest: float = math.inf
    age_sum: float = 0.0
    unknown_age: int = 0  # messages whose arrival time is not known (yet)
    size_known: bool = True
    ages_known: bool = True
    # non-cumulative bucket counts, one per bound in _BOUNDS
    buckets: list[int] = field(default_factory=lambda: [0] * len(_BOUNDS))


class QueueStats:
    """What one read found: per queue counts, bytes, oldest arrival and age histogram,
    and (for deferred mail) reason classes and destination domains.

    ``now`` is fixed at the start of the read, so every age is taken at one instant.
    Messages of queues not declared in ``queues`` are ignored (labels stay bounded).
    """

    def __init__(self, queues: Sequence[str], now: float | None = None) -> None:
        self.now = time.time() if now is None else now
        self.queues: dict[str, _Queue] = {q: _Queue() for q in queues}
        self.reasons: dict[str, int] = dict.fromkeys(DEFERRED_REASONS, 0)
        self.domains: dict[str, int] = {}
        self.domains_overflow = 0
        self.frozen: int | None = None
        self.ignored = 0
        #: Short notes for the status page (``sink.detail``), e.g. an Exim cross-check mismatch.
        self.notes: dict[str, str] = {}
        #: Whether reason/destination families are emitted (readers that know them set this).
        self.with_reasons = False
        #: Destination domains named in ``mail_queue_deferred_destination_messages`` (the rest
        #: add up under ``other``); set by readers that count destinations, from their config.
        self.top_destinations = 0

    def add(self, queue: str, arrival: float, size: int) -> bool:
        """One message.  Returns ``False`` (and counts it in ``ignored``) for an unknown queue."""
        q = self.queues.get(queue)
        if q is None:
            self.ignored += 1
            return False
        age = max(self.now - arrival, 0.0)
        q.messages += 1
        q.size += size
        q.age_sum += age
        q.oldest = min(q.oldest, arrival)
        q.buckets[bisect_left(AGE_BUCKETS, age)] += 1
        return True

    def add_unknown_age(self, queue: str, size: int) -> None:
        """A message whose arrival time is unknown: counted, but the queue's age series are left out."""
        q = self.queues.get(queue)
        if q is None:
            self.ignored += 1
            return
        q.messages += 1
        q.size += size
        q.unknown_age += 1

    def set_count(self, queue: str, messages: int) -> None:
        """Only a count is known (a command source): no size, no ages."""
        q = self.queues[queue]
        q.messages = messages
        q.size_known = False
        q.ages_known = False

    def add_sorted(self, queue: str, arrivals: Sequence[float], size: int) -> None:
        """Many messages at once: ``arrivals`` sorted ascending, ``size`` their total bytes."""
        q = self.queues.get(queue)
        n = len(arrivals)
        if q is None:
            self.ignored += n
            return
        if not n:
            return
        now = self.now
        q.messages += n
        q.size += size
        q.oldest = min(q.oldest, arrivals[0])
        # ages <= b  <=>  arrival >= now - b; arrivals in the future count as age 0.
        future = n - bisect_left(arrivals, now)  # arrival >= now: age <= 0
        past = n - future
        q.age_sum += past * now - math.fsum(arrivals[:past])
        prev = 0
        for i, bound in enumerate(AGE_BUCKETS):
            within = n - bisect_left(arrivals, now - bound)
            q.buckets[i] += within - prev
            prev = within
        q.buckets[-1] += n - prev

    def add_deferred(self, reason: str, domain: str, count: int = 1) -> None:
        """Deferred message(s) of a reason class and destination domain."""
        if reason not in self.reasons:
            reason = "other"
        self.reasons[reason] += count
        domains = self.domains
        if domain in domains:
            domains[domain] += count
        elif len(domains) < MAX_DOMAINS:
            domains[domain] = count
        else:
            self.domains_overflow += count

    def add_deferred_counts(self, reasons: Mapping[str, int], domains: Mapping[str, int]) -> None:
        """Deferred messages already counted by reason class and, separately, by domain."""
        for reason, n in reasons.items():
            self.reasons[reason if reason in self.reasons else "other"] += n
        for domain, n in domains.items():
            if domain in self.domains or len(self.domains) < MAX_DOMAINS:
                self.domains[domain] = self.domains.get(domain, 0) + n
            else:
                self.domains_overflow += n

    def emit(self, sink: Sink, source: str) -> None:
        """Write every count to ``sink`` (the caller adds up/reader/duration)."""
        now = self.now
        for name, q in self.queues.items():
            sink.gauge("mail_queue_messages", q.messages, source=source, queue=name)
            if q.size_known:
                sink.gauge("mail_queue_size_bytes", q.size, source=source, queue=name)
            if q.unknown_age or not q.ages_known:
                continue  # an age series over part of the queue would look complete; leave it out
            oldest = max(0.0, now - q.oldest) if q.messages else 0.0
            sink.gauge("mail_queue_oldest_message_age_seconds", oldest, source=source, queue=name)
            cumulative: list[int] = []
            total = 0
            for n in q.buckets:
                total += n
                cumulative.append(total)
            sink.gauge_histogram(
                "mail_queue_message_age_seconds", _BOUNDS, cumulative, q.age_sum, source=source, queue=name
            )
        if self.frozen is not None:
            sink.gauge("mail_queue_frozen_messages", self.frozen, source=source)
        if self.with_reasons:
            for reason, n in self.reasons.items():
                sink.gauge("mail_queue_deferred_reason_messages", n, source=source, reason=reason)
            for domain, n in top_domains(self.domains, self.top_destinations, self.domains_overflow):
                sink.gauge("mail_queue_deferred_destination_messages", n, source=source, domain=domain)


def top_domains(counts: Mapping[str, int], n: int, overflow: int = 0) -> list[tuple[str, int]]:
    """The ``n`` largest ``(domain, count)`` pairs (ties by name), then ``("other", rest)``."""
    ranked = sorted(((d, c) for d, c in counts.items() if d != "other"), key=lambda dc: (-dc[1], dc[0]))
    top = ranked[:n] if n > 0 else []
    rest = sum(c for _, c in ranked[len(top) :]) + counts.get("other", 0) + overflow
    return [*top, ("other", rest)]


# --- cache ------------------------------------------------------------------------------------------


@dataclass
class QueueCache:
    """State a source keeps between reads (pass the same object to every read).

    Holds the spool scanner's per-directory cache, Exim's header cache and the
    Postfix queue directory found with ``postconf``.  Made by :func:`make_cache`.
    """

    spool: Any = None
    exim: Any = None
    queue_directory: str | None = None
    queue_directory_key: str | None = None
    queue_directory_at: float = 0.0


def make_cache() -> QueueCache:
    """A fresh cache for one source.  Pass it to every :func:`~exporter.queues.read_queue` of that source."""
    return QueueCache()
