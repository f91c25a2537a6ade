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
- **The lease** (a store shared by several exporters, PostgreSQL): the once-only jobs
  (reconciliation, promoting maintenance overruns, recording check outages, and the
  round-trip receivers' sweep of old probe mail, through :meth:`Continuity.is_leader`) run
  only on the exporter holding the lease ``once-only-jobs`` in the store.  The holder
  renews it every third of ``continuity.store.lease_ttl``; a standby asks for it every
  second (at most every sixth of the ttl), and gets it once the holder has not renewed it
  for the ttl (by the store's clock), or at once when the holder gave it up at shutdown.
  The holder counts itself leader only until the ttl measured from the *sending* of its
  last successful renewal runs out, which is never later than the store's expiry: two
  exporters never both count themselves leader.  The jobs are also idempotent under the
  store's write lock, so a job that overlaps a failover cannot corrupt the figures.
  ``mail_exporter_leader`` says which exporter holds it.  A store of one exporter
  (SQLite) needs no lease: that exporter is always the leader.
"""

from __future__ import annotations

__all__ = ["LEASE_NAME", "RECONCILE_TIMEOUT", "REFRESH_INTERVAL", "WEBHOOK_RESULTS", "Continuity", "source_names"]

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
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
#: The lease the once-only jobs run under.
LEASE_NAME = "once-only-jobs"
#: Longest wait of a standby between two requests for the lease (seconds).
LEASE_POLL = 1.0


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
        #: This exporter's name in the lease: host (the pod's name in Kubernetes), pid, a random part.
        self.holder = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"
        self.lease_ttl = cfgmod.StoreConfig.lease_ttl
        #: Who held the lease at the last answer of the store (None: nobody, or not known yet).
        self.lease_holder: str | None = None
        #: Why the last lease request failed ("" when it did not).
        self.lease_error = ""
        #: Times this exporter took the lease.
        self.leader_changes = 0
        self._lease_until = 0.0  # monotonic time until which this exporter holds the lease
        self._was_leader = False
        self._lease_task: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    async def open(self, cfg: cfgmod.Config) -> None:
        """Open the store, take ``cfg`` and start the background refresh.  Raises StoreError."""
        await self.store.open()
        self.apply_config(cfg)
        self._dirty = asyncio.Event()
        await self._lease_step()  # a shared store: the first exporter up is the leader at once
        self._publish_webhook()
        await self.refresh()
        self._refresh_task = asyncio.create_task(self._refresh_loop(), name="continuity:refresh")
        if self.store.shared:
            self._lease_task = asyncio.create_task(self._lease_loop(), name="continuity:lease")

    async def close(self) -> None:
        for task in (self._refresh_task, self._lease_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._refresh_task = self._lease_task = None
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)
        if self._webhook_publish is not None:
            self._webhook_publish.cancel()
        if self.store.shared and self.is_leader():
            # Give the lease up, so that a standby takes over at once rather than after the ttl.
            self._lease_until = 0.0
            try:
                await asyncio.wait_for(self.store.release(LEASE_NAME, self.holder), self.lease_ttl / 3)
            except (StoreError, TimeoutError) as exc:
                log.warning("lease not released; a standby takes it when it expires", extra={"kv": {"err": str(exc)}})
            else:
                log.info("lease released")
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
        self.lease_ttl = c.store.lease_ttl
        if self._dirty is not None:
            if self.is_leader():
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
                if self.is_leader():
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
        """Compare the store with Alertmanager's active alerts; close what Alertmanager no longer has.

        Only the lease holder does it; a standby's run succeeds without asking Alertmanager.
        """
        if not self.is_leader():
            sink.detail("lease", f"standby; {self.lease_holder or 'the leader'} reconciles")
            self.reconcile_state = "standby: the lease holder reconciles"
            return True
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
        """Scheduler listener: N consecutive failures of a listed check record an outage.

        Every exporter counts its runs; only the lease holder records outages (a standby's
        ``open`` stays None; on taking the lease it adopts the outages its predecessor left open).
        """
        leader = self.is_leader()
        for svc in self._outage_services(check.name):
            key = (svc.name, check.kind, check.name)
            st = self._outages.setdefault(key, _Outage())
            if record.result == "success":
                st.streak = 0
                if st.open is not None and leader:
                    fingerprint, starts_ms, starts_at = st.open
                    st.open = None
                    end = max(starts_at, record.started + record.duration)
                    self._spawn(self._outage_event(svc.name, check, fingerprint, starts_ms, starts_at, end))
                continue
            st.streak += 1
            if st.streak == 1:
                st.first_failure = record.started
            if st.streak >= max(1, svc.check_outage_threshold) and st.open is None and leader:
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

    # --- the lease ----------------------------------------------------------------------------------------------

    def is_leader(self) -> bool:
        """Whether this exporter runs the once-only jobs now (always, on a store it owns alone)."""
        return not self.store.shared or time.monotonic() < self._lease_until

    async def _lease_loop(self) -> None:
        while True:
            delay = self.lease_ttl / 3 if self.is_leader() else min(LEASE_POLL, self.lease_ttl / 6)
            await asyncio.sleep(delay)
            try:
                await self._lease_step()
            except Exception:
                log.exception("lease step failed")

    async def _lease_step(self) -> None:
        """Ask the store for the lease (take or renew it), then act on a change of leadership."""
        if self.store.shared:
            sent = time.monotonic()
            try:
                holder = await asyncio.wait_for(
                    self.store.lease(LEASE_NAME, self.holder, self.lease_ttl), self.lease_ttl / 3
                )
            except (StoreError, TimeoutError) as exc:
                err = str(exc) or f"no answer within {self.lease_ttl / 3:g}s"
                if err != self.lease_error:
                    log.warning("lease request failed", extra={"kv": {"err": err, "leader": self.is_leader()}})
                self.lease_error = err
            else:
                self.lease_error = ""
                self.lease_holder = holder
                self._lease_until = sent + self.lease_ttl if holder == self.holder else 0.0
        await self._leadership_changed()

    async def _leadership_changed(self) -> None:
        leader = self.is_leader()
        if leader != self._was_leader:
            self._was_leader = leader
            if leader:
                self.leader_changes += 1
                if self.store.shared:
                    log.info("lease taken: this exporter runs the once-only jobs", extra={"kv": {"me": self.holder}})
                await self._adopt_outages()
                self.mark_dirty()  # promote overruns now
            else:
                log.warning(
                    "lease lost: another exporter runs the once-only jobs",
                    extra={"kv": {"holder": self.lease_holder or "", "err": self.lease_error}},
                )
                for st in self._outages.values():
                    st.open = None  # the new holder adopts them from the store
        sink = Sink(CheckState())
        sink.gauge("mail_exporter_leader", 1.0 if leader else 0.0)
        self.snapshot.update("continuity/lease", sink.samples())

    async def _adopt_outages(self) -> None:
        """Take over the check outages that are open in the store (after a restart or a failover)."""
        try:
            firing = await self.store.firing_check_outages()
        except StoreError as exc:
            log.error("open check outages not read", extra={"kv": {"err": str(exc)}})
            return
        for fingerprint, starts_ms, starts_at in firing:
            key = _outage_key(fingerprint)
            if key is not None:
                self._outages.setdefault(key, _Outage()).open = (fingerprint, starts_ms, starts_at)

    # --- status ------------------------------------------------------------------------------------------------

    def open_incidents(self) -> Sequence[OpenIncident]:
        """The open incidents of the last refresh, for the status page."""
        return self.summary.open if self.summary is not None else ()

    @property
    def lease_state(self) -> str:
        if not self.store.shared:
            return "not needed (this exporter owns the store)"
        error = f" (last request failed: {self.lease_error})" if self.lease_error else ""
        if self.is_leader():
            return f"held by this exporter, {self.holder}{error}"
        return f"standby; held by {self.lease_holder or 'nobody'}{error}"

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
