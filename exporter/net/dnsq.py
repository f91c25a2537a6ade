"""One DNS lookup that never raises for what the network does, optionally DNSSEC-aware.

Shared by the DNS checks (:mod:`exporter.probers.dns`) and the TLSA lookup of DANE
(:mod:`exporter.net.dane`).  A lookup's outcome is data, a :class:`Lookup`:

* ``status``: ``ok`` (records answered), ``nxdomain``, ``nodata``, ``servfail``,
  ``bogus``, ``refused``, ``timeout`` or ``error``;
* ``validated``: the AD bit of the answer (also for NXDOMAIN and no data, a validated
  denial of existence), only when asked with ``dnssec=True``;
* ``message``: a short text for a status page ("NXDOMAIN", "timeout after 5s").

With ``dnssec=True`` the query sets the EDNS DO bit and the AD bit (RFC 6840 §5.7,
§5.8) on a copy of the resolver, so that a validating resolver reports validation in
the AD bit of its answer.  The resolver must validate, and the path to it be trusted:
a non-validating resolver never sets AD, so nothing ever reads as validated.

``bogus`` tells a zone whose signatures do not validate from one whose servers are
down: a validating resolver answers SERVFAIL for both, so on SERVFAIL the same query is
asked again with the CD bit (checking disabled, RFC 4035 §3.2.2).  If that one is
answered (records, NXDOMAIN or no data), the data exists and only validation failed:
``bogus``.  If it fails too: ``servfail``.
"""

from __future__ import annotations

__all__ = ["LOOKUP_STATUSES", "Lookup", "LookupStatus", "resolve"]

import copy
from dataclasses import dataclass
from typing import Literal, get_args

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver
import dns.rrset

LookupStatus = Literal["ok", "nxdomain", "nodata", "servfail", "bogus", "refused", "timeout", "error"]
#: Every status of :class:`Lookup`.
LOOKUP_STATUSES: tuple[str, ...] = get_args(LookupStatus)


@dataclass(frozen=True, slots=True)
class Lookup:
    """The outcome of one lookup; see the module documentation."""

    status: LookupStatus
    message: str
    rrset: dns.rrset.RRset | None = None
    validated: bool = False

    @property
    def failed(self) -> bool:
        """The resolver could not tell whether the name exists (not NXDOMAIN, not no data)."""
        return self.status not in ("ok", "nxdomain", "nodata")


def _ad(response: object) -> bool:
    return isinstance(response, dns.message.Message) and bool(response.flags & dns.flags.AD)


def _nameserver_errors(exc: dns.resolver.NoNameservers) -> tuple[LookupStatus, str]:
    rcodes: list[str] = []
    others: list[str] = []
    for entry in exc.kwargs.get("errors") or []:
        err = entry[3] if isinstance(entry, tuple) and len(entry) > 3 else entry
        if isinstance(err, str):
            rcodes.append(err)
        elif isinstance(err, OSError) and err.strerror:
            others.append(err.strerror)
        else:
            others.append(type(err).__name__)
    if "SERVFAIL" in rcodes:
        return "servfail", "SERVFAIL"
    if "REFUSED" in rcodes:
        return "refused", "REFUSED"
    if rcodes:
        return "error", rcodes[0][:20]
    if others:
        return "error", f"no nameserver answered ({others[0][:40]})"
    return "error", "no nameserver answered"


def _with_flags(resolver: dns.asyncresolver.Resolver, flags: int) -> dns.asyncresolver.Resolver:
    out = copy.copy(resolver)
    out.use_edns(0, dns.flags.DO, 1232)
    out.flags = flags
    return out


async def _query(resolver: dns.asyncresolver.Resolver, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> Lookup:
    try:
        answer = await resolver.resolve(qname, rdtype, search=False)
    except dns.resolver.NXDOMAIN as exc:
        responses = exc.kwargs.get("responses") or {}
        return Lookup("nxdomain", "NXDOMAIN", validated=any(_ad(r) for r in responses.values()))
    except dns.resolver.NoAnswer as exc:
        return Lookup("nodata", "no data", validated=_ad(exc.kwargs.get("response")))
    except dns.resolver.NoNameservers as exc:
        return Lookup(*_nameserver_errors(exc))
    except dns.exception.Timeout:
        return Lookup("timeout", f"timeout after {resolver.lifetime:g}s")
    except dns.exception.DNSException as exc:
        return Lookup("error", type(exc).__name__)
    except OSError as exc:
        return Lookup("error", (exc.strerror or type(exc).__name__)[:40])
    return Lookup("ok", "ok", answer.rrset, _ad(answer.response))


async def resolve(
    resolver: dns.asyncresolver.Resolver, name: str, rdtype: dns.rdatatype.RdataType, *, dnssec: bool = False
) -> Lookup:
    """Look up ``name`` (taken as absolute).  Never raises for what the network does."""
    try:
        qname = dns.name.from_text(name, origin=dns.name.root)
    except (dns.exception.DNSException, ValueError) as exc:
        return Lookup("error", f"bad name: {type(exc).__name__}")
    if not dnssec:
        return await _query(resolver, qname, rdtype)
    look = await _query(_with_flags(resolver, dns.flags.RD | dns.flags.AD), qname, rdtype)
    if look.status != "servfail":
        return look
    unchecked = await _query(_with_flags(resolver, dns.flags.RD | dns.flags.CD), qname, rdtype)
    if unchecked.status in ("ok", "nxdomain", "nodata"):
        return Lookup("bogus", "SERVFAIL: DNSSEC validation failed (answered with checking disabled)")
    return look
