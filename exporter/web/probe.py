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
    "RateLimiter",
    "Refusal",
    "address_class",
    "check_target",
    "compile_policy",
    "handle_probe",
]

import asyncio
import ipaddress
import logging
import math
import re
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from aiohttp import web

from exporter.config import ProbeConfig, parse_allow_target, split_target
from exporter.core.model import CheckState, Sink
from exporter.core.secrets import redact
from exporter.core.snapshot import render_samples
from exporter.net.tls import CONNECT_GUARD, ProbeFailure

if TYPE_CHECKING:
    from exporter.app import Exporter

TIMEOUT_OFFSET = 0.5
log = logging.getLogger("exporter.probe")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: ``reason`` values of mail_exporter_probe_refused_total, with the HTTP status of each.
REFUSAL_STATUS: dict[str, int] = {
    "rate_limited": 429,
    "malformed_target": 400,
    "not_allowed": 403,
    "loopback_address": 403,
    "private_address": 403,
    "link_local_address": 403,
    "reserved_address": 403,
}
REFUSAL_REASONS = tuple(REFUSAL_STATUS)

#: Client addresses whose token buckets are kept; the least recently seen is dropped first.
MAX_TRACKED_CLIENTS = 4096


@dataclass(frozen=True)
class ProbeModule:
    name: str
    kind: str  # smtp | imap (an endpoint: host:port targets) or mx (a domain: domain-name targets)
    default_target: str
    timeout: float
    run: Callable[[str, Sink, logging.Logger, float], Awaitable[bool]]


@dataclass(frozen=True)
class Refusal:
    reason: str  # one of REFUSAL_REASONS
    message: str


# --- addresses ---------------------------------------------------------------------------------

_PRIVATE_NETS = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAME_RE = re.compile(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9])?")
#: Longest target accepted (a DNS name has at most 253 characters).
MAX_TARGET_LENGTH = 300
#: A last label that the C resolver (inet_aton) reads as part of an IPv4 address.
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)


def _unscoped(ip: IPAddress) -> IPAddress:
    """``ip`` without an IPv6 zone (``fe80::1%eth0``), and an IPv4-mapped address as IPv4."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.scope_id:
            return ipaddress.IPv6Address(int(ip))
    return ip


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a NAT64 or 6to4 address leads to."""
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def address_class(ip: IPAddress) -> str | None:
    """None for a global unicast address, else its class: loopback, private, link_local or reserved.

    Pure.  IPv4-mapped, NAT64 and 6to4 addresses are judged by the IPv4 address they
    carry; 0.0.0.0/8 and ``::`` (which reach this host), multicast and every other
    special-purpose block are "reserved".
    """
    ip = _unscoped(ip)
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None and (found := address_class(inner)) is not None:
            return found
        if ip in _IPV4_COMPATIBLE and not ip.is_loopback:
            return "reserved"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if any(ip.version == n.version and ip in n for n in _PRIVATE_NETS):
        return "private"
    if ip.is_global and not ip.is_multicast:
        return None
    return "reserved"


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


# --- the allowlist -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """``probe:`` compiled: networks, host name patterns, allowed address classes."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    patterns: tuple[re.Pattern[str], ...]
    classes: frozenset[str]

    def allows(self, host: IPAddress | str) -> bool:
        """Whether ``host`` (an address, or a lower-case name without trailing dot) is listed."""
        if isinstance(host, str):
            return any(p.fullmatch(host) for p in self.patterns)
        ip = _unscoped(host)
        return any(ip.version == n.version and ip in n for n in self.networks)


@lru_cache(maxsize=8)
def compile_policy(cfg: ProbeConfig) -> Policy:
    """Compile ``cfg`` (already validated, so every entry parses)."""
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    patterns: list[re.Pattern[str]] = []
    for entry in cfg.allow_targets:
        parsed = parse_allow_target(entry)
        if isinstance(parsed, re.Pattern):
            patterns.append(parsed)
        else:
            networks.append(parsed)
    return Policy(tuple(networks), tuple(patterns), frozenset(cfg.allow_address_classes))


def _class_refusal(target: str, ip: IPAddress, cls: str) -> Refusal:
    name = cls.replace("_", "-")
    hint = "never probed" if cls == "reserved" else f'probed only when probe.allow_address_classes lists "{cls}"'
    return Refusal(f"{cls}_address", f'Target "{target}" refused: it leads to {ip}, a {name} address ({hint}).')


def _host_of(kind: str, target: str) -> IPAddress | str | Refusal:
    """The host a target names (an address, or a lower-case name), or why it is malformed."""
    shape = "a domain name like example.com" if kind == "mx" else "host:port, [v6]:port or name[address]:port"
    malformed = Refusal("malformed_target", f'Malformed target "{target[:300]}": expected {shape}.')
    if len(target) > MAX_TARGET_LENGTH:
        return malformed
    if kind == "mx":
        host = target
    else:
        try:
            host = split_target(target)[0]
        except ValueError:
            return malformed
        if (ip := _literal(host)) is not None:
            return _unscoped(ip)
    name = host.rstrip(".").lower()
    if not _NAME_RE.fullmatch(name) or (kind == "mx" and "." not in name):
        return malformed
    if _NUMERIC_LABEL.match(name.rpartition(".")[2]):
        return Refusal(
            "malformed_target",
            f'Malformed target "{target}": "{host}" reads as a numeric IPv4 address; '
            "write an IPv4 address as four decimal numbers (192.0.2.1).",
        )
    return name


def check_target(policy: Policy, kind: str, target: str) -> Refusal | None:
    """Whether ``/probe`` may probe ``target`` with a module of ``kind`` (smtp, imap or mx).

    Pure: no DNS.  Host names that pass still have their addresses vetted when the
    probe connects (:class:`AddressGuard`).
    """
    host = _host_of(kind, target)
    if isinstance(host, Refusal):
        return host
    if not policy.allows(host):
        return Refusal(
            "not_allowed",
            f'Target "{target}" is not allowed: it is not the module\'s configured target '
            "and matches no entry of probe.allow_targets.",
        )
    if not isinstance(host, str) and (cls := address_class(host)) is not None and cls not in policy.classes:
        return _class_refusal(target, host, cls)
    return None


class AddressGuard:
    """Resolves and vets every host one ``/probe`` request connects to (a ``ConnectGuard``).

    Records the first refusal, so that the request answers 403 rather than a failed
    probe.  Each (host, port) is resolved once per request, so a probe that reconnects
    (to read a rejected certificate) reaches the same vetted address.
    """

    def __init__(self, target: str, classes: frozenset[str]) -> None:
        self.target = target  # what the request asked for, for the refusal message
        self.classes = classes
        self.refusal: Refusal | None = None
        self._vetted: dict[tuple[str, int], list[str]] = {}

    async def __call__(self, host: str, port: int) -> list[str]:
        key = (host, port)
        if key not in self._vetted:
            self._vetted[key] = await self._vet(host, port)
        return self._vetted[key]

    async def _vet(self, host: str, port: int) -> list[str]:
        literal = _literal(host)
        if literal is not None:
            found = [host]
        else:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found = list(dict.fromkeys(str(info[4][0]) for info in infos))
        for address in found:
            ip = ipaddress.ip_address(address)
            cls = address_class(ip)
            if cls is not None and cls not in self.classes:
                refusal = _class_refusal(self.target, _unscoped(ip), cls)
                self.refusal = self.refusal or refusal
                raise ProbeFailure("refused", f"connect: {refusal.message}")
        return found


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

    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter
        self.limiter = RateLimiter()
        self.refused = dict.fromkeys(REFUSAL_REASONS, 0)
        self.publish()

    def publish(self) -> None:
        state = CheckState()
        for reason, n in self.refused.items():
            state.inc("mail_exporter_probe_refused_total", float(n), reason=reason)
        self.exporter.snapshot.update("probe/refused", list(state.samples()))

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


async def handle_probe(request: web.Request, exporter: Exporter) -> web.Response:
    from exporter.checks import probe_modules

    cfg = exporter.config
    if cfg is None:
        return web.Response(status=503, text="Not ready.\n")
    state = exporter.probe_gate
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
