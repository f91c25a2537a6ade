"""``GET /probe?module=&target=``: one live check, blackbox_exporter style.

Modules are the checks named in the config: an endpoint's ``name`` probes with that
endpoint's settings (``target`` defaults to its ``address``); a domain probes its MX
hosts (``target`` defaults to the domain).  Each request gets a fresh
:class:`~exporter.model.CheckState`, so nothing leaks between requests or into
``/metrics``.  The timeout is the smaller of the module's own and the scraper's
``X-Prometheus-Scrape-Timeout-Seconds`` minus :data:`TIMEOUT_OFFSET`.

With ``debug=true`` the answer is a transcript of the dialog followed by the metrics;
secrets are redacted from it.
"""

from __future__ import annotations

__all__ = ["ProbeModule", "handle_probe"]

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from exporter.model import CheckState, Sink
from exporter.secrets import redact
from exporter.snapshot import render_samples

if TYPE_CHECKING:
    from exporter.app import Exporter

TIMEOUT_OFFSET = 0.5
log = logging.getLogger("exporter.probe")


@dataclass(frozen=True)
class ProbeModule:
    name: str
    kind: str
    default_target: str
    timeout: float
    run: Callable[[str, Sink, logging.Logger, float], Awaitable[bool]]


def probe_timeout(module_timeout: float, header: str | None) -> float:
    if header:
        try:
            scrape = float(header)
        except ValueError:
            scrape = 0.0
        if scrape > 0:
            return max(0.1, min(module_timeout, scrape - TIMEOUT_OFFSET))
    return module_timeout


async def handle_probe(request: web.Request, exporter: Exporter) -> web.Response:
    from exporter.checks import probe_modules

    if exporter.config is None:
        return web.Response(status=503, text="Not ready.\n")
    name = request.query.get("module", "")
    modules = probe_modules(exporter.config)
    module = modules.get(name)
    if module is None:
        known = ", ".join(sorted(modules)) or "none configured"
        return web.Response(status=400, text=f'Unknown module "{name[:100]}". Modules: {known}\n')
    target = request.query.get("target") or module.default_target
    debug = request.query.get("debug", "").lower() in {"1", "true", "yes"}
    timeout = probe_timeout(module.timeout, request.headers.get("X-Prometheus-Scrape-Timeout-Seconds"))
    sink = Sink(CheckState(), debug=debug)
    t0 = time.perf_counter()
    try:
        ok = await module.run(target, sink, log, timeout)
    except Exception as exc:  # a bug must become a failed probe, not a 500 without metrics
        log.error("probe raised", exc_info=exc, extra={"kv": {"module": name}})
        sink.fail("error", f"internal error: {type(exc).__name__}")
        ok = False
    duration = time.perf_counter() - t0
    body = (
        "# HELP probe_success Whether the probe succeeded.\n# TYPE probe_success gauge\n"
        f"probe_success {1 if ok else 0}\n"
        "# HELP probe_duration_seconds How long the probe took.\n# TYPE probe_duration_seconds gauge\n"
        f"probe_duration_seconds {duration:.6f}\n"
    ) + render_samples(sink.samples())
    if debug:
        lines = [f"Module {name} ({module.kind}), target {target}, timeout {timeout:g}s", ""]
        lines.extend(sink.transcript or [])
        for failure in sink.failures:
            lines.append(f"FAILED {failure.target or target}: {failure.reason}: {failure.message}")
        lines.extend(["", f"Result: {'success' if ok else 'failure'} in {duration:.3f}s", "", "Metrics:", body])
        return web.Response(text=redact("\n".join(lines)))
    return web.Response(body=body.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
