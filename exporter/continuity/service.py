"""The :class:`Continuity` service the exporter owns: store, ingestion, figures, objectives, reconciliation.

Domain logic only: the HTTP side of the webhook (auth, content type, size, status
codes) is :mod:`exporter.web.webhook`, the status page's incident table is
:mod:`exporter.web.status`, and the backup, replica and reconcile checks are
:mod:`exporter.checks` kinds that report their readings here through the
:class:`~exporter.checks.registry.ContinuityHooks` methods.

- **Ingestion** (:meth:`Continuity.ingest_notification`): a validated notification is
  classified into incident events and stored in one durable transaction; it returns
  only after the commit, and raises StoreError when the store fails.
- **Figures** are recomputed from the store in the background, shortly after a change
  (at most once a second) and every :data:`REFRESH_INTERVAL` seconds, and published to
  the snapshot under ``continuity/incidents`` and ``continuity/figures``.  Objectives
  (RTO, RPO, targets, maintenance) go under ``continuity/objectives``, recomputed after
  every backup or replica reading too.  A scrape never touches the store.
- **Sources** are scheduler checks built in :mod:`exporter.checks`: kind ``backup``
  (name ``dataset/backup``), kind ``replica`` (``dataset/replica``) and kind
  ``reconcile`` (``alertmanager``); their readings arrive through :meth:`record_backup`,
  :meth:`record_replica` and :meth:`reconcile_once`.
- **Check outages**: a scheduler listener counts consecutive failed runs of the checks a
  service lists in ``check_outages``; at ``check_outage_threshold`` it records an outage
  starting at the first failed run, which ends when a run of that check succeeds.
"""

from __future__ import annotations

__all__ = ["RECONCILE_TIMEOUT", "REFRESH_INTERVAL", "WEBHOOK_RESULTS", "Continuity", "source_names"]

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout

from exporter import config as cfgmod
from exporter.continuity import figures
from exporter.continuity.figures import RECOVERY_BUCKETS, WINDOWS
from exporter.continuity.incidents import (
    SEVERITIES,
    AlertEvent,
    Changes,
    Classifier,
    MaintenanceSpan,
    events_from_notification,
    parse_maintenance,
    severity_of,
)
from exporter.continuity.store import OpenIncident, SqliteStore, Store, Summary
from exporter.continuity.webhook import Notification, parse_active_alerts
from exporter.core.errors import StoreError, WebhookError
from exporter.core.model import CheckState, Sample, Sink, histogram_samples
from exporter.core.scheduler import Check, RunRecord
from exporter.core.snapshot import Snapshot
from exporter.core.timefmt import format_time

log = logging.getLogger("exporter.continuity")

#: Seconds between two recomputations of the figures when nothing changes.
REFRESH_INTERVAL = 15.0
#: Least time between two recomputations (a burst of notifications costs one).
MIN_REFRESH_GAP = 1.0
#: How long before the oldest window the store is read (incidents that started earlier still count).
HORIZON = WINDOWS[-1][1] + figures.DAY
#: ``result`` label values of mail_webhook_notifications_total.
WEBHOOK_RESULTS = ("accepted", "invalid", "too_large", "unsupported_media_type", "unauthorized", "error")
#: Alertmanager API request time limit.
RECONCILE_TIMEOUT = 30.0


@dataclass
class _BackupState:
    timestamp: float | None
    good: bool


@dataclass
class _ReplicaState:
    lag: float | None
    healthy: bool


@dataclass
class _Outage:
    streak: int = 0
    first_failure: float = 0.0
    open: tuple[str, int, float] | None = None  # (fingerprint, starts_ms, starts_at) while recorded


def source_names(items: Sequence[cfgmod.BackupConfig] | Sequence[cfgmod.ReplicaConfig]) -> list[str]:
    """Label values for a dataset's sources: the configured name, else the type (numbered if repeated)."""
    types = [i.type for i in items]
    out: list[str] = []
    for i, item in enumerate(items):
        name = item.name or (item.type if types.count(item.type) == 1 else f"{item.type}-{i}")
        while name in out:
            name = f"{name}-{i}"
        out.append(name)
    return out


class Continuity:
    """Incidents, figures and objectives for the configured services and datasets."""

    def __init__(self, storage_path: str, snapshot: Snapshot, *, store: Store | None = None) -> None:
        self.snapshot = snapshot
        self.store: Store = store if store is not None else SqliteStore(storage_path, writer="process")
        self.config: cfgmod.Config | None = None
        self.classifier = Classifier((), ())
        self.maintenance: tuple[MaintenanceSpan, ...] = ()
        self.summary: Summary | None = None
        self.summary_time = 0.0
        self._backups: dict[tuple[str, str], _BackupState] = {}
        self._replicas: dict[tuple[str, str], _ReplicaState] = {}
        self._outages: dict[tuple[str, str, str], _Outage] = {}
        self._webhook = dict.fromkeys(WEBHOOK_RESULTS, 0)
        self._webhook_publish: asyncio.TimerHandle | None = None
        self._dirty: asyncio.Event | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.reconcile_state = "not configured"

    # --- lifecycle -----------------------------------------------------------------------------

    async def open(self, cfg: cfgmod.Config) -> None:
        """Open the store, take ``cfg`` and start the background refresh.  Raises StoreError."""
        await self.store.open()
        self.apply_config(cfg)
        for fingerprint, starts_ms, starts_at in await self.store.firing_check_outages():
            key = _outage_key(fingerprint)
            if key is not None:
                self._outages[key] = _Outage(open=(fingerprint, starts_ms, starts_at))
        self._dirty = asyncio.Event()
        self._publish_webhook()
        await self.refresh()
        self._refresh_task = asyncio.create_task(self._refresh_loop(), name="continuity:refresh")

    async def close(self) -> None:
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh_task
            self._refresh_task = None
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)
        if self._webhook_publish is not None:
            self._webhook_publish.cancel()
        await self.store.close()

    def apply_config(self, cfg: cfgmod.Config) -> None:
        """Swap in a new config (called only once it has loaded and its checks were built)."""
        c = cfg.continuity
        self.maintenance = parse_maintenance(c.maintenance)
        self.classifier = Classifier(c.services, self.maintenance)
        self.config = cfg
        datasets = {(d.name, n) for d in c.datasets for n in source_names(d.backups) + source_names(d.replicas)}
        for table in (self._backups, self._replicas):
            for key in list(table):
                if key not in datasets:
                    del table[key]
        self.reconcile_state = "configured" if c.reconcile.alertmanager_url else "not configured"
        if self._dirty is not None:
            self._close_orphan_outages()
            self._dirty.set()
            self.publish_objectives()

    @property
    def services(self) -> tuple[cfgmod.ServiceConfig, ...]:
        return self.config.continuity.services if self.config is not None else ()

    @property
    def webhook_config(self) -> cfgmod.WebhookConfig:
        return self.config.webhook if self.config is not None else cfgmod.WebhookConfig()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- ingestion ---------------------------------------------------------------------------------

    async def ingest(self, events: Sequence[AlertEvent]) -> Changes:
        """Store events durably; returns after the commit.  Raises StoreError."""
        changes = await self.store.ingest(events, time.time())
        if changes.changed:
            self.mark_dirty()
        return changes

    def mark_dirty(self) -> None:
        if self._dirty is not None:
            self._dirty.set()

    def count_webhook(self, result: str) -> None:
        """Count one webhook request by outcome (``mail_webhook_notifications_total{result}``)."""
        self._webhook[result] += 1
        if self._webhook_publish is None:
            with contextlib.suppress(RuntimeError):
                loop = asyncio.get_running_loop()
                self._webhook_publish = loop.call_later(0.5, self._publish_webhook)

    def _publish_webhook(self) -> None:
        self._webhook_publish = None
        state = CheckState()
        for result, n in self._webhook.items():
            state.inc("mail_webhook_notifications_total", float(n), result=result)
        self.snapshot.update("continuity/webhook", list(state.samples()))

    async def ingest_notification(self, note: Notification) -> int:
        """Classify a validated notification and store it durably; returns the number of alerts.

        Returns after the commit.  Raises StoreError (the caller answers 503, so that
        Alertmanager retries).
        """
        events = events_from_notification(note, self.classifier)
        await self.ingest(events)
        if note.truncated_alerts:
            log.warning(
                "notification truncated by Alertmanager (max_alerts); the missing alerts are not recorded",
                extra={"kv": {"truncated": note.truncated_alerts, "receiver": note.receiver}},
            )
        return len(events)

    # --- refresh ----------------------------------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        assert self._dirty is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), REFRESH_INTERVAL)
            self._dirty.clear()
            try:
                changes = await self.store.promote_overruns(time.time())
                if changes.opened:
                    log.info("maintenance overran; incidents opened", extra={"kv": {"incidents": changes.opened}})
                await self.refresh()
            except StoreError as exc:
                log.error("continuity refresh failed", extra={"kv": {"err": str(exc)}})
            except Exception:
                log.exception("continuity refresh failed")
            await asyncio.sleep(MIN_REFRESH_GAP)

    async def refresh(self) -> None:
        """Read the store and publish every continuity family."""
        now = time.time()
        self.summary = await self.store.summary(now, now - HORIZON, RECOVERY_BUCKETS)
        self.summary_time = now
        self.publish_incidents(now)
        self.publish_objectives(now)

    def publish_incidents(self, now: float) -> None:
        summary = self.summary
        if summary is None:
            return
        sink = Sink(CheckState())
        extra: list[Sample] = []
        fig = Sink(CheckState())
        for svc in self.services:
            name = svc.name
            for sev in SEVERITIES:
                sink.state.inc(
                    "mail_incidents_total", float(summary.totals.get((name, sev), 0)), service=name, severity=sev
                )
                sink.gauge("mail_incidents_open", summary.open_counts.get((name, sev), 0), service=name, severity=sev)
                hist = summary.recoveries.get((name, sev))
                labels = (("service", name), ("severity", sev))
                bounds = (*RECOVERY_BUCKETS, math.inf)
                if hist is None:
                    extra.extend(
                        histogram_samples("mail_incident_recovery_seconds", labels, bounds, [0] * len(bounds), 0.0, 0)
                    )
                else:
                    extra.extend(
                        histogram_samples(
                            "mail_incident_recovery_seconds", labels, hist.buckets, hist.counts, hist.total, hist.count
                        )
                    )
            oldest = summary.oldest_open.get(name)
            sink.gauge(
                "mail_incident_oldest_open_seconds", 0.0 if oldest is None else max(0.0, now - oldest), service=name
            )
            drill = summary.last_drill.get(name)
            sink.gauge("mail_drill_last_timestamp_seconds", 0.0 if drill is None else drill[0], service=name)
            spans = [s for s in summary.spans if s.service == name and s.kind == "incident"]
            maint = [(w.start, w.end) for w in self.classifier.windows(name)]
            for window, length in WINDOWS:
                f = figures.window_figures(spans, maint, now, window, length)
                fig.gauge("mail_mttr_seconds", f.mttr, service=name, window=window)
                fig.gauge("mail_mtbf_seconds", f.mtbf, service=name, window=window)
                fig.gauge("mail_availability_ratio", f.availability, service=name, window=window)
                fig.gauge("mail_downtime_seconds", f.downtime, service=name, window=window)
        self.snapshot.update("continuity/incidents", [*sink.samples(), *extra])
        self.snapshot.update("continuity/figures", fig.samples())

    def rto_estimate(self, service: str, now: float) -> float:
        summary = self.summary
        if summary is None:
            return math.nan
        spans = [s for s in summary.spans if s.service == service]
        drill = summary.last_drill.get(service)
        return figures.rto_estimate(figures.recovery_times(spans, now), None if drill is None else drill[1])

    def rpo_estimate(self, dataset: cfgmod.DatasetConfig, now: float) -> float:
        lags = []
        for name in source_names(dataset.replicas):
            st = self._replicas.get((dataset.name, name))
            if st is not None and st.healthy and st.lag is not None:
                lags.append(st.lag)
        backups = []
        for name in source_names(dataset.backups):
            b = self._backups.get((dataset.name, name))
            if b is not None and b.good and b.timestamp is not None:
                backups.append(b.timestamp)
        return figures.rpo_estimate(lags, backups, now)

    def publish_objectives(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if self.config is None:
            return
        sink = Sink(CheckState())
        for svc in self.services:
            sink.gauge("mail_rto_estimate_seconds", self.rto_estimate(svc.name, now), service=svc.name)
            if svc.rto_target is not None:
                sink.gauge("mail_rto_target_seconds", svc.rto_target, service=svc.name)
            if svc.mttr_target is not None:
                sink.gauge("mail_mttr_target_seconds", svc.mttr_target, service=svc.name)
            sink.gauge("mail_availability_target_ratio", svc.availability_target, service=svc.name)
            active = self.classifier.window_at(svc.name, now) is not None
            sink.gauge("mail_maintenance_active", 1.0 if active else 0.0, service=svc.name)
        for ds in self.config.continuity.datasets:
            sink.gauge("mail_rpo_estimate_seconds", self.rpo_estimate(ds, now), dataset=ds.name)
            if ds.rpo_target is not None:
                sink.gauge("mail_rpo_target_seconds", ds.rpo_target, dataset=ds.name)
        self.snapshot.update("continuity/objectives", sink.samples())

    # --- readings of the backup and replica checks ---------------------------------------------------------

    def record_backup(self, dataset: str, name: str, timestamp: float | None, good: bool) -> None:
        """A backup check's reading (``timestamp`` None when the read failed)."""
        self._backups[(dataset, name)] = _BackupState(timestamp, good)
        self.publish_objectives()

    def record_replica(self, dataset: str, name: str, lag: float | None, healthy: bool) -> None:
        """A replica check's reading (``lag`` None when the measurement failed)."""
        self._replicas[(dataset, name)] = _ReplicaState(lag, healthy)
        self.publish_objectives()

    # --- reconciliation -------------------------------------------------------------------------------------

    async def reconcile_once(self, base_url: str, sink: Sink) -> bool:
        """Compare the store with Alertmanager's active alerts; close what Alertmanager no longer has."""
        fetched_at = time.time()
        url = f"{base_url}/api/v2/alerts"
        try:
            async with (
                ClientSession(timeout=ClientTimeout(total=RECONCILE_TIMEOUT)) as session,
                session.get(url, headers={"Accept": "application/json"}) as resp,
            ):
                if resp.status != 200:
                    sink.fail("http", f"GET {url}: HTTP {resp.status}")
                    self.reconcile_state = f"failed: HTTP {resp.status}"
                    return False
                body = await resp.content.read(64 << 20)
        except (ClientError, OSError, TimeoutError) as exc:
            sink.fail("unreachable", f"GET {url}: {type(exc).__name__}: {exc}"[:300])
            self.reconcile_state = "failed: unreachable"
            return False
        try:
            active = parse_active_alerts(body)
        except WebhookError as exc:
            sink.fail("protocol", str(exc))
            self.reconcile_state = "failed: bad answer"
            return False
        keys = frozenset((a.fingerprint, a.starts_ms) for a in active)
        events = []
        for a in active:
            if a.state != "active":
                continue  # silenced or inhibited: Alertmanager does not notify them either
            labels = dict(a.labels)
            assignments = self.classifier.assign(labels, a.starts_at)
            if not assignments:
                continue
            events.append(
                AlertEvent(
                    a.fingerprint,
                    a.starts_ms,
                    a.starts_at,
                    None,
                    a.labels,
                    severity_of(labels.get("severity", "")),
                    "reconcile",
                    assignments,
                )
            )
        try:
            changes = await self.store.reconcile(keys, events, fetched_at, time.time())
        except StoreError as exc:
            sink.fail("store", str(exc))
            return False
        if changes.changed:
            self.mark_dirty()
            log.info(
                "reconciled with Alertmanager",
                extra={"kv": {"resolved": changes.resolved_alerts, "added": changes.new_alerts}},
            )
        sink.detail("active", str(len(active)))
        sink.detail("resolved", str(changes.resolved_alerts))
        sink.detail("added", str(changes.new_alerts))
        self.reconcile_state = f"ok at {format_time(fetched_at)}"
        return True

    # --- the exporter's own check outages ---------------------------------------------------------------------

    def _outage_services(self, check_name: str) -> list[cfgmod.ServiceConfig]:
        return [s for s in self.services if check_name in s.check_outages]

    def on_check_run(self, check: Check, record: RunRecord) -> None:
        """Scheduler listener: N consecutive failures of a listed check record an outage."""
        for svc in self._outage_services(check.name):
            key = (svc.name, check.kind, check.name)
            st = self._outages.setdefault(key, _Outage())
            if record.result == "success":
                st.streak = 0
                if st.open is not None:
                    fingerprint, starts_ms, starts_at = st.open
                    st.open = None
                    end = max(starts_at, record.started + record.duration)
                    self._spawn(self._outage_event(svc.name, check, fingerprint, starts_ms, starts_at, end))
                continue
            st.streak += 1
            if st.streak == 1:
                st.first_failure = record.started
            if st.streak >= max(1, svc.check_outage_threshold) and st.open is None:
                fingerprint = f"check|{svc.name}|{check.kind}|{check.name}"
                starts_ms = int(st.first_failure * 1000)
                st.open = (fingerprint, starts_ms, starts_ms / 1000)
                self._spawn(self._outage_event(svc.name, check, fingerprint, starts_ms, starts_ms / 1000, None))

    async def _outage_event(
        self, service: str, check: Check, fingerprint: str, starts_ms: int, starts_at: float, ends_at: float | None
    ) -> None:
        labels = (("alertname", "MailExporterCheckOutage"), ("check", check.kind), ("name", check.name))
        event = AlertEvent(
            fingerprint,
            starts_ms,
            starts_at,
            ends_at,
            labels,
            "critical",
            "check",
            self.classifier.assign_to([service], starts_at),
        )
        try:
            await self.ingest([event])
        except StoreError as exc:
            log.error("check outage not recorded", extra={"kv": {"check": check.key, "err": str(exc)}})

    def _close_orphan_outages(self) -> None:
        """Outages of checks no longer listed in check_outages end now."""
        now = time.time()
        listed = {(s.name, c) for s in self.services for c in s.check_outages}
        for key, st in list(self._outages.items()):
            service, kind, name = key
            if st.open is not None and (service, name) not in listed:
                fingerprint, starts_ms, starts_at = st.open
                stub = Check(kind, name, 0.0, 0.0, None, _never)
                self._spawn(self._outage_event(service, stub, fingerprint, starts_ms, starts_at, max(now, starts_at)))
                del self._outages[key]

    # --- status ------------------------------------------------------------------------------------------------

    def open_incidents(self) -> Sequence[OpenIncident]:
        """The open incidents of the last refresh, for the status page."""
        return self.summary.open if self.summary is not None else ()

    @property
    def store_description(self) -> str:
        return str(getattr(self.store, "description", "store"))


async def _never(sink: Sink, log: logging.Logger) -> bool:
    return False


def _outage_key(fingerprint: str) -> tuple[str, str, str] | None:
    """``check|SERVICE|KIND|NAME`` (names never contain "|") -> (service, kind, name)."""
    parts = fingerprint.split("|")
    if len(parts) != 4 or parts[0] != "check":
        return None
    return parts[1], parts[2], parts[3]
