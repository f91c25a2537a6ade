"""The one registry of check kinds, and the one registry of ``/probe`` modules.

A check kind is one module of :mod:`exporter.checks` that declares a builder::

    @check_kind("queue", order=40)
    def build(cfg: Config, ctx: BuildContext) -> Iterable[Check]:
        for q in cfg.queues:
            yield queue_check(q, cfg.global_)

:func:`exporter.checks.build` calls every registered builder in ``order`` and returns
their checks; it is the only place the app turns a config into checks, for a start, a
reload and ``--config.check`` alike.  A builder has no side effects beyond building
(a reload may discard what it built) and raises :class:`~exporter.core.errors.ConfigError`
(or another :class:`~exporter.core.errors.ExporterError`) for a config it cannot run.

Builders get a :class:`BuildContext`: narrow hooks into the running exporter (today:
the continuity service's :class:`ContinuityHooks`), never the app itself.  The hooks are
``None`` for ``--config.check``, where kinds that need them build with no-op hooks.

``/probe`` modules register the same way with :func:`probe_modules`; the web layer only
looks them up by name.
"""

from __future__ import annotations

__all__ = [
    "KINDS",
    "MODULE_KINDS",
    "BuildContext",
    "CheckBuilder",
    "ContinuityHooks",
    "ModuleBuilder",
    "ProbeModule",
    "builders",
    "check_kind",
    "probe_module_kind",
    "probe_modules",
]

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from exporter.config import Config
from exporter.core.model import Sink
from exporter.core.registry import Registry
from exporter.core.scheduler import Check


class ContinuityHooks(Protocol):
    """What the backup, replica and reconcile checks need of the continuity service."""

    def record_backup(self, dataset: str, name: str, timestamp: float | None, good: bool) -> None: ...

    def record_replica(self, dataset: str, name: str, lag: float | None, healthy: bool) -> None: ...

    async def reconcile_once(self, base_url: str, sink: Sink) -> bool: ...

    def is_leader(self) -> bool:
        """Whether this exporter runs the once-only jobs (the round-trip receivers' sweep among them)."""
        ...


class _NoHooks:
    """The hooks of ``--config.check``: checks are built to validate the config, never run."""

    def record_backup(self, dataset: str, name: str, timestamp: float | None, good: bool) -> None:
        pass

    def record_replica(self, dataset: str, name: str, lag: float | None, healthy: bool) -> None:
        pass

    async def reconcile_once(self, base_url: str, sink: Sink) -> bool:
        sink.fail("error", "not running: built by --config.check")
        return False

    def is_leader(self) -> bool:
        return False


@dataclass(frozen=True)
class BuildContext:
    """What a builder may use besides the config."""

    continuity: ContinuityHooks | None = None
    #: Where sources keep state across restarts (log read positions); None: in memory only.
    state_dir: str | None = None

    @property
    def hooks(self) -> ContinuityHooks:
        return self.continuity if self.continuity is not None else _NoHooks()


@dataclass(frozen=True)
class ProbeModule:
    """One ``/probe?module=`` entry: a check that can run live against a requested target."""

    name: str
    kind: str  # smtp | imap (an endpoint: host:port targets) or mx (a domain: domain-name targets)
    default_target: str
    timeout: float
    run: Callable[[str, Sink, logging.Logger, float], Awaitable[bool]]


CheckBuilder = Callable[[Config, BuildContext], Iterable[Check]]
ModuleBuilder = Callable[[Config], Iterable[ProbeModule]]

#: Check kinds by name; :func:`exporter.checks.build` runs them in ``order``.
KINDS: Registry[CheckBuilder] = Registry("check kind")
#: Sources of ``/probe`` modules by name; the first module of a name wins.
MODULE_KINDS: Registry[ModuleBuilder] = Registry("probe module kind")


def check_kind(name: str, *, order: int) -> Callable[[CheckBuilder], CheckBuilder]:
    """Register ``builder`` as the check kind ``name``; builders run in ``order``."""
    return KINDS.register(name, order=order)


def probe_module_kind(name: str, *, order: int) -> Callable[[ModuleBuilder], ModuleBuilder]:
    """Register ``builder`` as a source of ``/probe`` modules."""
    return MODULE_KINDS.register(name, order=order)


def builders() -> list[tuple[str, CheckBuilder]]:
    """The registered check kinds, in build order."""
    return KINDS.items()


def probe_modules(cfg: Config) -> dict[str, ProbeModule]:
    """Every ``/probe`` module the config offers, by name (the first of a name wins)."""
    out: dict[str, ProbeModule] = {}
    for build in MODULE_KINDS.values():
        for module in build(cfg):
            out.setdefault(module.name, module)
    return out
