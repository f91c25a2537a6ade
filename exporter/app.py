"""The running exporter: config, scheduler, snapshot and reloads, tied together.

:class:`Exporter` owns the current :class:`~exporter.config.Config`.  A reload
(SIGHUP or ``POST /-/reload``) loads the file again into a *new* config and builds
new checks from it; only if both succeed are they swapped in.  Otherwise the old
checks keep running and the error is reported.  Either way
``mail_exporter_config_last_reload_successful`` records the outcome.
"""

from __future__ import annotations

__all__ = ["Exporter", "Options"]

import asyncio
import logging
import math
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.openmetrics import exposition as openmetrics_exposition
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from exporter import __version__, checks, config
from exporter.continuity.service import Continuity
from exporter.continuity.store import open_store
from exporter.core import memory
from exporter.core.errors import ConfigError, ExporterError
from exporter.core.model import Sample
from exporter.core.scheduler import Check, Scheduler
from exporter.core.snapshot import Snapshot, render_samples
from exporter.net.oauth import clear_sources
from exporter.web.probe import ProbeGate

log = logging.getLogger("exporter")


T = TypeVar("T")


def _openmetrics_text(registry: CollectorRegistry) -> bytes:
    """A registry in OpenMetrics, without the ``# EOF`` (the exposition goes on after it)."""
    text: bytes = openmetrics_exposition.generate_latest(registry)  # type: ignore[no-untyped-call]
    return text.removesuffix(b"# EOF\n")


class Reused(Generic[T]):
    """A value made by ``make`` at most once every ``seconds`` (monotonic clock), else the last one."""

    def __init__(self, make: Callable[[], T], seconds: float) -> None:
        self.make = make
        self.seconds = seconds
        self._at = -math.inf
        self._value: T | None = None

    def get(self) -> T:
        now = time.monotonic()
        value = self._value
        if value is None or now - self._at >= self.seconds:
            value = self._value = self.make()
            self._at = now
        return value


@dataclass(frozen=True)
class Options:
    config_file: str | None = None
    listen_address: str = "127.0.0.1:10587"
    storage_path: str = "./data"
    #: ``--storage.url``: PostgreSQL instead of SQLite; overrides ``continuity.store.url``.
    storage_url: str | None = None


def default_config() -> config.Config:
    """The embedded default: local SMTP, plus the local Postfix queue when Postfix is installed
    and the mail log when there is one (/var/log/mail.log, as rsyslog writes it on Debian)."""
    text = config.DEFAULT_CONFIG_YAML
    if shutil.which("postqueue") is None and not Path("/usr/sbin/postqueue").exists():
        text = text.replace("queues:\n  - name: local\n    type: postfix\n", "")
    if not Path("/var/log/mail.log").exists():
        text = text.replace("logs:\n  - name: mail\n    type: file\n    path: /var/log/mail.log\n", "")
    return config.load_text(text, "<embedded default>")


class Exporter:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.snapshot = Snapshot()
        self.probe_gate = ProbeGate(self.snapshot)  # /probe: rate limiter and refusal counters
        self.config: config.Config | None = None
        self.scheduler: Scheduler | None = None
        self.continuity: Continuity | None = None
        self.store_url: str | None = None
        self.reload_ok = False
        self.reload_success_time = 0.0
        self.last_reload_error = ""
        self.started = time.time()
        self._reload_lock = asyncio.Lock()
        self.collector = memory.PeriodicCollector(settled=self._checks_ran)
        # Counting walks every task (a millisecond with 1,000 checks), and reading /proc and
        # listing the open fds for the process metrics about half a millisecond: a scrape every
        # 200 ms should not pay that each time, so both are reused for a second.
        self._task_count = Reused(lambda: len(asyncio.all_tasks()), 1.0)
        self._process_registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self._process_registry)
        PlatformCollector(registry=self._process_registry)
        GCCollector(registry=self._process_registry)
        self._process_text = (  # by format: text 0.0.4, OpenMetrics (without its # EOF)
            Reused(lambda: generate_latest(self._process_registry), 1.0),
            Reused(lambda: _openmetrics_text(self._process_registry), 1.0),
        )

    # --- config -------------------------------------------------------------------------------

    def load_config(self) -> config.Config:
        if self.options.config_file is None:
            return default_config()
        return config.load(self.options.config_file)

    def build_checks(self, cfg: config.Config) -> list[Check]:
        state_dir = str(Path(self.options.storage_path) / "logs")
        return checks.build(cfg, checks.BuildContext(continuity=self.continuity, state_dir=state_dir))

    async def start(self) -> None:
        """Load the config and start the checks.  Raises ConfigError if the first load fails."""
        cfg = self.load_config()
        self.store_url = self._store_url(cfg)
        store = open_store(self.store_url, self.options.storage_path)
        self.continuity = Continuity(self.options.storage_path, self.snapshot, store=store)
        await self.continuity.open(cfg)  # raises StoreError (an ExporterError) when the store cannot open
        built = self.build_checks(cfg)
        self.scheduler = Scheduler(
            self.snapshot, max_concurrency=cfg.global_.max_concurrency, jitter=cfg.global_.jitter
        )
        self.scheduler.listeners.append(self.continuity.on_check_run)
        self._swap(cfg, built)
        self.collector.start()
        if self.options.config_file is None:
            described = ", ".join(c.key for c in built) or "nothing"
            log.info("no --config.file given; using the embedded default config", extra={"kv": {"checks": described}})

    def _checks_ran(self) -> bool:
        return self.scheduler is not None and self.scheduler.all_ran()

    def _store_url(self, cfg: config.Config) -> str | None:
        if self.options.storage_url:
            return self.options.storage_url
        return cfg.continuity.store.url.reveal() if cfg.continuity.store.url is not None else None

    def _swap(self, cfg: config.Config, built: list[Check]) -> None:
        assert self.scheduler is not None
        self.scheduler.set_concurrency(cfg.global_.max_concurrency, cfg.global_.jitter)
        self.scheduler.apply(built)
        if self.continuity is not None:
            self.continuity.apply_config(cfg)
        credentials = config.oauth2_credentials(cfg)
        clear_sources(keep=lambda c: c in credentials)  # cached tokens of credentials no longer configured
        self.config = cfg
        self.reload_ok = True
        self.reload_success_time = time.time()
        self.last_reload_error = ""

    async def reload(self) -> tuple[bool, str]:
        """Load the config again; swap it in only if it is valid.  Returns (ok, error text)."""
        async with self._reload_lock:
            try:
                cfg = self.load_config()
                built = self.build_checks(cfg)
            except ConfigError as exc:
                return self._reload_failed(str(exc))
            except ExporterError as exc:
                return self._reload_failed(str(exc))
            if self._store_url(cfg) != self.store_url:
                log.warning("continuity.store changed: the new store is used after a restart")
            self._swap(cfg, built)
            self.collector.reload()
            log.info("configuration reloaded", extra={"kv": {"checks": len(built)}})
            return True, ""

    def _reload_failed(self, message: str) -> tuple[bool, str]:
        self.reload_ok = False
        self.last_reload_error = message
        log.error("configuration reload failed; keeping the previous configuration", extra={"kv": {"err": message}})
        return False, message

    async def stop(self) -> None:
        self.collector.stop()
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.continuity is not None:
            await self.continuity.close()

    # --- the narrow views the web layer sees (exporter.web.server.Runtime) -------------------

    @property
    def incidents(self) -> Continuity | None:
        return self.continuity

    @property
    def status_checks(self) -> Sequence[Check]:
        return self.scheduler.checks if self.scheduler is not None else []

    @property
    def config_source(self) -> str:
        return self.options.config_file or "embedded default"

    @property
    def ready(self) -> bool:
        return self.config is not None and self.scheduler is not None and self.scheduler.scheduled.is_set()

    # --- self-metrics, rendered per scrape (a handful of lines) ------------------------------

    def self_samples(self) -> list[Sample]:
        out = [
            Sample(
                "mail_exporter_build_info", "", (("version", __version__), ("python", platform.python_version())), 1.0
            ),
            Sample("mail_exporter_config_last_reload_successful", "", (), 1.0 if self.reload_ok else 0.0),
            Sample("mail_exporter_config_last_reload_success_timestamp_seconds", "", (), self.reload_success_time),
            Sample("mail_exporter_asyncio_tasks", "", (), float(self._task_count.get())),
        ]
        if self.scheduler is not None:
            kinds: dict[str, int] = {}
            for c in self.scheduler.checks:
                kinds[c.kind] = kinds.get(c.kind, 0) + 1
            out.extend(Sample("mail_exporter_checks", "", (("check", k),), float(n)) for k, n in sorted(kinds.items()))
            out.extend(self.scheduler.lag.samples())
        return out

    @property
    def task_count_interval(self) -> float:
        """Seconds a count of the asyncio tasks is reused for."""
        return self._task_count.seconds

    @task_count_interval.setter
    def task_count_interval(self, seconds: float) -> None:
        self._task_count.seconds = seconds

    def render_self(self, openmetrics: bool = False) -> bytes:
        """The self-metrics and prometheus-client's process registry; OpenMetrics without its ``# EOF``."""
        return (
            render_samples(self.self_samples(), openmetrics=openmetrics).encode()
            + self._process_text[openmetrics].get()
        )
