"""``GET /probe?module=&target=``: one live check, blackbox_exporter style, restricted.

Modules are the checks named in the config: an endpoint's ``name`` probes with that
endpoint's settings (``target`` defaults to its ``address``); a domain probes its MX
hosts (``target`` defaults to the domain).  Each request gets a fresh
:class:`~exporter.core.model.CheckState`, so nothing leaks between requests or into
``/metrics``.  The timeout is the smaller of the module's own and the scraper's
``X-Prometheus-Scrape-Timeout-Seconds`` minus :data:`TIMEOUT_OFFSET`.

With ``debug=true`` the answer is a transcript of the dialog followed by the metrics;
secrets are redacted from it.

**Restrictions** (``probe:`` in the config; the why is the SSRF section of
docs/probe.md).  An open ``/probe`` would let anyone who reaches the exporter make it
connect anywhere: internal hosts, any port, cloud metadata services.  So, in order,
and each step before any DNS lookup or connection:

1. a token bucket per client address (``rate_limit``): 429 with ``Retry-After``;
2. the target must be the module's configured one, or match ``allow_targets``
   (networks for IP addresses, host name patterns for names): else 403.  Numeric
   host names that the C resolver would read as an IPv4 address ("2130706433",
   "0177.0.0.1", "127.1") are refused as malformed (400), and IPv4-mapped IPv6
   addresses are judged as the IPv4 address they are;
3. every address the probe connects to must be global, or of a class listed in
   ``allow_address_classes`` (loopback, private, link_local; multicast, unspecified
   and other reserved addresses never).  Host names are resolved and vetted at
   connect time by :class:`AddressGuard`, through
   :data:`exporter.net.tls.CONNECT_GUARD`, and the probe connects to the
   vetted address, so DNS rebinding gains nothing; MX hosts are vetted the same way.

A module's configured target is trusted like the scheduled checks, which connect
there anyway.  Refusals are counted in ``mail_exporter_probe_refused_total{reason}``.
"""

from __future__ import annotations

__all__ = [
    "REFUSAL_REASONS",
    "AddressGuard",
    "Policy",
    "ProbeGate",
    "ProbeModule",
    "ProbeView",
    "RateLimiter",
    "Refusal",
    "address_class",
    "check_target",
    "compile_policy",
    "handle_probe",
    "probe_timeout",
]

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from aiohttp import web

from exporter.checks import ProbeModule, probe_modules
from exporter.config import Config
from exporter.core.model import CheckState, Sink
from exporter.core.secrets import redact
from exporter.core.snapshot import Snapshot, render_samples
from exporter.net.guard import (
    REFUSAL_REASONS,
    REFUSAL_STATUS,
    AddressGuard,
    Policy,
    Refusal,
    address_class,
    check_target,
    compile_policy,
)
from exporter.net.tls import CONNECT_GUARD

TIMEOUT_OFFSET = 0.5
log = logging.getLogger("exporter.probe")

#: Client addresses whose token buckets are kept; the least recently seen is dropped first.
MAX_TRACKED_CLIENTS = 4096


# --- rate limit and bookkeeping ----------------------------------------------------------------


class RateLimiter:
    """Token buckets keyed by client address, at most :data:`MAX_TRACKED_CLIENTS` of them.

    The least recently seen client is forgotten first; a forgotten client starts again
    with a full bucket, which is what an idle client would have by then anyway.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, when)

    def take(self, client: str, rate: float, burst: int) -> float:
        """Take a token: 0.0 when the request may go ahead, else the seconds until it could."""
        if rate <= 0:
            return 0.0
        now = self._clock()
        tokens, last = self._buckets.pop(client, (float(burst), now))
        tokens = min(float(burst), tokens + (now - last) * rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / rate
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > MAX_TRACKED_CLIENTS:
            self._buckets.popitem(last=False)
        return wait


class ProbeGate:
    """Per exporter (``Exporter.probe_gate``): the rate limiter and the refusal counters.

    The counters are published to the snapshot at construction, all zero, so that alerts
    on them are never silent, and again at each refusal.
    """

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.limiter = RateLimiter()
        self.refused = dict.fromkeys(REFUSAL_REASONS, 0)
        self.publish()

    def publish(self) -> None:
        state = CheckState()
        for reason, n in self.refused.items():
            state.inc("mail_exporter_probe_refused_total", float(n), reason=reason)
        self.snapshot.update("probe/refused", list(state.samples()))

    def refuse(self, refusal: Refusal, headers: dict[str, str] | None = None) -> web.Response:
        self.refused[refusal.reason] += 1
        self.publish()
        log.info("probe refused", extra={"kv": {"reason": refusal.reason, "err": refusal.message}})
        return web.Response(status=REFUSAL_STATUS[refusal.reason], text=refusal.message + "\n", headers=headers)


# --- the handler -----------------------------------------------------------------------------------


def probe_timeout(module_timeout: float, header: str | None) -> float:
    if header:
        try:
            scrape = float(header)
        except ValueError:
            scrape = 0.0
        if scrape > 0:
            return max(0.1, min(module_timeout, scrape - TIMEOUT_OFFSET))
    return module_timeout


class ProbeView(Protocol):
    """What ``/probe`` needs of the running exporter: the config in force and the gate."""

    @property
    def config(self) -> Config | None: ...

    @property
    def probe_gate(self) -> ProbeGate: ...


async def handle_probe(request: web.Request, view: ProbeView) -> web.Response:
    cfg = view.config
    if cfg is None:
        return web.Response(status=503, text="Not ready.\n")
    state = view.probe_gate
    limit = cfg.probe.rate_limit
    client = request.remote or ""
    wait = state.limiter.take(client, limit.requests_per_second, limit.burst)
    if wait > 0:
        retry = str(math.ceil(wait))
        message = f"Too many /probe requests from {client}: retry in {retry}s (probe.rate_limit)."
        return state.refuse(Refusal("rate_limited", message), {"Retry-After": retry})
    name = request.query.get("module", "")
    modules = probe_modules(cfg)
    module = modules.get(name)
    if module is None:
        known = ", ".join(sorted(modules)) or "none configured"
        return web.Response(status=400, text=f'Unknown module "{name[:100]}". Modules: {known}\n')
    target = request.query.get("target") or module.default_target
    guard = None
    if target != module.default_target:
        policy = compile_policy(cfg.probe)
        refusal = check_target(policy, module.kind, target)
        if refusal is not None:
            return state.refuse(refusal)
        guard = AddressGuard(target, policy.classes)
    response = await _run(request, module, target, guard)
    if guard is not None and guard.refusal is not None:
        return state.refuse(guard.refusal)
    return response


async def _run(request: web.Request, module: ProbeModule, target: str, guard: AddressGuard | None) -> web.Response:
    debug = request.query.get("debug", "").lower() in {"1", "true", "yes"}
    timeout = probe_timeout(module.timeout, request.headers.get("X-Prometheus-Scrape-Timeout-Seconds"))
    sink = Sink(CheckState(), debug=debug)
    t0 = time.perf_counter()
    token = CONNECT_GUARD.set(guard)
    try:
        ok = await module.run(target, sink, log, timeout)
    except Exception as exc:  # a bug must become a failed probe, not a 500 without metrics
        log.error("probe raised", exc_info=exc, extra={"kv": {"module": module.name}})
        sink.fail("error", f"internal error: {type(exc).__name__}")
        ok = False
    finally:
        CONNECT_GUARD.reset(token)
    duration = time.perf_counter() - t0
    body = (
        "# HELP probe_success Whether the probe succeeded.\n# TYPE probe_success gauge\n"
        f"probe_success {1 if ok else 0}\n"
        "# HELP probe_duration_seconds How long the probe took.\n# TYPE probe_duration_seconds gauge\n"
        f"probe_duration_seconds {duration:.6f}\n"
    ) + render_samples(sink.samples())
    if debug:
        lines = [f"Module {module.name} ({module.kind}), target {target}, timeout {timeout:g}s", ""]
        lines.extend(sink.transcript or [])
        for failure in sink.failures:
            lines.append(f"FAILED {failure.target or target}: {failure.reason}: {failure.message}")
        lines.extend(["", f"Result: {'success' if ok else 'failure'} in {duration:.3f}s", "", "Metrics:", body])
        return web.Response(text=redact("\n".join(lines)))
    return web.Response(body=body.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
