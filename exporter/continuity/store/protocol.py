"""The :class:`Store` interface: what the rest of the exporter asks of the incident store.

:class:`~exporter.continuity.store.sqlite.SqliteStore` implements it today; a PostgreSQL
store can implement it next without changing the incident rules, the figures or the
webhook.  The incident rules run against
:class:`~exporter.continuity.incidents.IncidentTx` (the operations of one transaction),
so a new store implements that over one of its transactions and calls
:func:`~exporter.continuity.incidents.apply_event` and friends inside it, as
:mod:`exporter.continuity.store.tx` does for SQLite.

Contract shared by every method:

- **Never blocks the event loop.**  Every method is a coroutine; blocking driver calls run
  in a thread, another process or an async driver.
- **Errors** are :class:`~exporter.core.errors.StoreError` (not open, unreachable, a
  failed commit, a schema it does not know).  Nothing else escapes.
- **Atomic writes.**  Each write method applies all of its arguments in one transaction:
  when it raises, none of that call is stored.  Several calls may share one commit
  (group commit), but one call failing never fails or undoes another.
- **Durable acknowledgement.**  A write returns only once its transaction is committed
  *durably* (fsynced, or the database's equivalent): the webhook answers Alertmanager 200
  on the strength of it, and a ``kill -9`` or power cut right after must not lose it.
- **Idempotent on the alert occurrence.**  An alert occurrence is keyed by
  (``fingerprint``, ``startsAt`` to the millisecond: ``starts_ms``) and stored once.
  Sending the same events again (Alertmanager's repeats and retries, a replay after a
  crash) updates only the occurrence's last-seen time; state moves only from firing to
  resolved, never back.  Imports are idempotent on their own key (service, kind, start).
- **Consistent reads.**  Each read method sees one committed snapshot.
"""

from __future__ import annotations

__all__ = ["Store"]

from collections.abc import Sequence
from typing import Protocol

from exporter.continuity.incidents import AlertEvent, Changes, ImportRecord
from exporter.continuity.store.records import IncidentRecord, Summary


class Store(Protocol):
    """Persistent incident state.  Every method is a coroutine that never blocks the event loop."""

    #: Where the data lives, for logs and the status page (``sqlite:/var/lib/.../mail-continuity.sqlite``).
    #: Never carries a password.
    description: str

    #: Whether several exporters may share this store, so that the once-only jobs need
    #: :meth:`lease` (PostgreSQL); False when one exporter owns it (SQLite).
    shared: bool

    async def open(self) -> None:
        """Create or open the store and apply pending schema migrations (all or none).

        Called once, before any other method.  Refuses (StoreError) a store whose schema
        is newer than this code knows, and a store it cannot reach or create.  A read-only
        store only checks that the schema is one it can read.
        """

    async def close(self) -> None:
        """Finish the writes already accepted (commit and answer them), then release everything.

        Safe to call twice.  After it, every other method raises StoreError.
        """

    async def ingest(self, events: Sequence[AlertEvent], now: float) -> Changes:
        """Record alert occurrences, durably, in one transaction; returns after the commit.

        Applies :func:`~exporter.continuity.incidents.apply_event` to each event in order:
        a new (fingerprint, starts_ms) is inserted and attached to its incidents, a known
        one is a repeat (``Changes.repeats``) or its resolution.  ``now`` is the time
        recorded as first/last seen.  Returns what this call changed.
        """

    async def reconcile(
        self, active: frozenset[tuple[str, int]], new_events: Sequence[AlertEvent], fetched_at: float, now: float
    ) -> Changes:
        """Align the store with Alertmanager's list of active alerts, durably, in one transaction.

        Resolves at ``now`` every firing alert of source ``alertmanager`` or ``reconcile``
        that was first seen before ``fetched_at`` (when the list was asked for) and whose
        (fingerprint, starts_ms) is not in ``active``; then applies ``new_events`` as
        :meth:`ingest` does.  Returns what changed; a second identical call changes nothing.
        """

    async def promote_overruns(self, now: float) -> Changes:
        """Open incidents for alerts still firing when their maintenance window ended (by ``now``).

        Durable; each maintenance record is promoted at most once, so repeating the call
        changes nothing.  May skip the write entirely when nothing is due (the common case).
        """

    async def import_records(self, records: Sequence[ImportRecord], now: float) -> Changes:
        """Import past incidents and drills, durably, all or nothing.

        A record whose key (service, kind, start to the millisecond) is already stored is
        skipped (``Changes.skipped``); the others count in ``Changes.imported``.
        """

    async def summary(self, now: float, horizon: float, buckets: Sequence[float]) -> Summary:
        """Everything the figures need, from one snapshot (see :class:`~.records.Summary`).

        ``spans`` holds the incidents and drills open or ended at or after ``horizon``;
        totals and open counts cover all time.  Recovery histograms use the finite
        ``buckets``, sorted and de-duplicated, plus ``+Inf``, with cumulative counts.
        ``open`` lists at most 100 open incidents, oldest first.
        """

    async def firing_check_outages(self) -> list[tuple[str, int, float]]:
        """(fingerprint, starts_ms, starts_at) of the exporter's own check outages still open.

        These are the alerts of source ``check``: after a restart the service takes them
        back so that it can resolve them when the check recovers.
        """

    async def incidents(
        self, *, service: str | None = None, open_only: bool = False, limit: int | None = None
    ) -> list[IncidentRecord]:
        """Incident, drill and maintenance records for listings and export.

        Filtered by ``service`` and to open ones with ``open_only``; ordered by start, then
        id; at most ``limit``.  ``labels`` (JSON) is the record's own (imports), else its earliest
        alert's.
        """

    async def lease(self, name: str, holder: str, ttl: float) -> str | None:
        """Take or renew the lease ``name`` for ``holder`` for ``ttl`` seconds; returns who holds it now.

        Granted (the result is ``holder``) when nobody holds it, when its holder let it
        expire, or when ``holder`` holds it already (a renewal).  Otherwise the result is
        the live holder (or None).  Expiry is judged by the store's clock, so the
        exporters' clocks need not agree.  A store that is not :attr:`shared` always grants it.
        Raises StoreError when the store cannot answer: the caller keeps a lease it held
        only until the ``ttl`` counted from its last successful renewal runs out.
        """

    async def release(self, name: str, holder: str) -> None:
        """Give the lease up at once (clean shutdown), if ``holder`` holds it."""

    async def alert_keys(self) -> list[tuple[str, int]]:
        """Every stored (fingerprint, starts_ms), for audits and tests."""
