"""The exporter's one exception tree.

Every error the exporter raises on purpose derives from :class:`ExporterError` and
also from the closest built-in, so callers may catch either.  A failing *target*
is never an exception: probers turn network faults into a reason from
:data:`exporter.core.model.REASONS` and return normally.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "ExporterError",
    "Failure",
    "StoreError",
    "WebhookError",
]

from dataclasses import dataclass


class ExporterError(Exception):
    """Base class of every error the exporter raises deliberately."""


class Failure(ExporterError):
    """A failure of something measured, with a ``reason`` from a fixed, bounded set.

    The base of every error that becomes a ``reason`` label: a prober's
    :class:`~exporter.net.tls.ProbeFailure`, a queue reader's ``QueueReadError``, a
    round trip's ``ReceiverError``, a continuity source's ``SourceError``.  ``message``
    is the human text (it may name a host, never a secret); ``str(exc)`` is the same.
    Subclasses may check ``reason`` against their own set.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ConfigIssue:
    """One problem found in a configuration file."""

    file: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        return f"{where}: {self.message}"


class ConfigError(ExporterError, ValueError):
    """A configuration could not be loaded.  Carries every issue found, not just the first."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class StoreError(ExporterError, RuntimeError):
    """The persistent store failed (I/O, corruption, migration)."""


class WebhookError(ExporterError, ValueError):
    """A webhook payload was rejected.  ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        self.status = status
        super().__init__(message)
