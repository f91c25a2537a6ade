"""Probers: one module per protocol, one signature, one map.

Every prober has the signature of :data:`ProbeFn`::

    async def probe_smtp(target: str, settings: SmtpProbeSettings, sink: Sink,
                         log: logging.Logger, *, check: str) -> bool

``target`` is ``host:port`` (or ``[v6]:port``); ``settings`` is the prober's own
frozen settings type; ``sink`` receives every metric and, on failure, exactly one
:class:`~exporter.core.model.Failure` with a reason from :data:`exporter.core.model.REASONS`.
The *caller* owns the overall timeout (``asyncio.timeout``); whatever the prober
wrote to the sink before the cut-off is still reported.  A prober never raises for
a misbehaving server: it records a failure and returns ``False``.  It raises only
for programming or configuration errors.
"""

from __future__ import annotations

__all__ = ["ProbeFn"]

import logging
from collections.abc import Awaitable
from typing import Any, Protocol

from exporter.core.model import Sink


class ProbeFn(Protocol):
    def __call__(
        self, target: str, settings: Any, sink: Sink, log: logging.Logger, *, check: str
    ) -> Awaitable[bool]: ...
