"""Running a prober as a check: the prober map, the caller-owned timeout, the grace."""

from __future__ import annotations

__all__ = ["GRACE", "PROBERS", "run_probe"]

import asyncio
import logging
from typing import Any

from exporter.core.model import Sink
from exporter.probers import ProbeFn
from exporter.probers.imap import probe_imap
from exporter.probers.smtp import probe_smtp

#: protocol name -> prober; scheduled checks and /probe both call through this map.
PROBERS: dict[str, ProbeFn] = {"smtp": probe_smtp, "imap": probe_imap}

#: Extra time the scheduler allows a check beyond the timeout it hands its probes,
#: so that the probe's own timeout (with its precise reason and target) fires first.
GRACE = 1.0


async def run_probe(
    protocol: str,
    target: str,
    settings: Any,
    sink: Sink,
    log: logging.Logger,
    *,
    check: str,
    timeout: float,
) -> bool:
    """Run one prober under a timeout; a timeout becomes a failure with reason ``timeout``."""
    sink.init_failures(protocol, check, target)
    try:
        async with asyncio.timeout(timeout):
            return await PROBERS[protocol](target, settings, sink, log, check=check)
    except TimeoutError:
        sink.fail("timeout", f"no complete answer within {timeout:g}s", protocol=protocol, check=check, target=target)
        return False
