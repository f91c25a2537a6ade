"""Where ``/probe`` may connect: target policy, address classes, and the connect guard.

The pure half of ``/probe``'s restrictions (the HTTP half, rate limit and status codes,
is :mod:`exporter.web.probe`): whether a requested target is allowed
(:func:`check_target`), the class of an address (:func:`address_class`), and
:class:`AddressGuard`, which resolves and vets every address a probe connects to.  It is
installed per request through :data:`exporter.net.tls.CONNECT_GUARD`, so the probe
connects to the vetted address and DNS rebinding gains nothing.
"""

from __future__ import annotations

__all__ = [
    "REFUSAL_REASONS",
    "REFUSAL_STATUS",
    "AddressGuard",
    "Policy",
    "Refusal",
    "address_class",
    "check_target",
    "compile_policy",
]

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from functools import lru_cache

from exporter.config import ProbeConfig, parse_allow_target, split_target
from exporter.net.tls import ProbeFailure

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
