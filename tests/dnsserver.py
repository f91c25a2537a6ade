"""A tiny scripted DNS server for tests: UDP and TCP on 127.0.0.1, on one free port.

Built on dnspython's message API.  Script it with records and per-name fault modes::

    async with DnsServer() as server:
        server.add("example.test", "MX", "10 mx1.example.test.", "20 mx2.example.test.")
        server.add("mx1.example.test", "A", "127.0.0.1")
        server.add_txt("example.test", "v=spf1 mx -all", ["v=DKIM1; p=", "MIIB..."])
        server.set_mode("broken.test", "servfail")
        resolver_cfg = ResolverConfig(nameservers=(server.host,), port=server.port, timeout=1.0)

Answers: the records added for (name, type); NOERROR with no data when the name (or a
name below it) exists with other types; NXDOMAIN otherwise.  Modes, per name and
optionally per type, or for every query with ``default_mode``:

* ``answer``   - as above (the default);
* ``nxdomain`` - NXDOMAIN even if records exist;
* ``servfail`` / ``refused`` - that rcode;
* ``drop``     - never answer (the query is read and ignored);
* ``truncate`` - over UDP, an empty answer with TC set, so the client retries over TCP.

``delay`` (seconds) holds back every answer.  ``queries`` lists what was asked, as
``(name, type, transport)``.  Answers too big for the client's UDP payload are
truncated, as a real server does.
"""

from __future__ import annotations

__all__ = ["DnsServer", "Mode"]

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Literal, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

Mode = Literal["answer", "nxdomain", "servfail", "refused", "drop", "truncate"]


def _name(name: str | dns.name.Name) -> dns.name.Name:
    if isinstance(name, dns.name.Name):
        return name
    return dns.name.from_text(name, origin=dns.name.root)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # In Python 3.11 the selector loop's UDP transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        out = self.server.respond(data, tcp=False)
        if out is None or self.transport is None:
            return
        if self.server.delay > 0:
            asyncio.get_running_loop().call_later(self.server.delay, self._send, out, addr)
        else:
            self._send(out, addr)

    def _send(self, data: bytes, addr: tuple[str | int, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, addr)


class DnsServer:
    """A scripted authoritative-looking DNS server on 127.0.0.1 (UDP and TCP, same port)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.ttl = 60
        self.delay = 0.0
        self.default_mode: Mode = "answer"
        self.queries: list[tuple[str, str, str]] = []
        self._records: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], list[str]] = {}
        self._modes: dict[tuple[dns.name.Name, dns.rdatatype.RdataType | None], Mode] = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # --- scripting ------------------------------------------------------------------------------

    def add(self, name: str, rdtype: str, *rdatas: str) -> DnsServer:
        """Add records in zone-file text form, e.g. ``add("x.test", "MX", "10 mx.x.test.")``."""
        key = (_name(name), dns.rdatatype.from_text(rdtype))
        self._records.setdefault(key, []).extend(rdatas)
        return self

    def add_txt(self, name: str, *records: str | Sequence[str]) -> DnsServer:
        """Add TXT records: a ``str`` is one single-string record, a list one multi-string record."""
        for record in records:
            strings = [record] if isinstance(record, str) else list(record)
            self.add(name, "TXT", " ".join(_quote(s) for s in strings))
        return self

    def remove(self, name: str, rdtype: str | None = None) -> DnsServer:
        """Remove the records of ``name`` (of one type, or all)."""
        target = _name(name)
        for key in list(self._records):
            if key[0] == target and (rdtype is None or key[1] == dns.rdatatype.from_text(rdtype)):
                del self._records[key]
        return self

    def set_mode(self, name: str, mode: Mode, rdtype: str | None = None) -> DnsServer:
        """Answer queries for ``name`` (of one type, or any) in ``mode``."""
        key = (_name(name), dns.rdatatype.from_text(rdtype) if rdtype else None)
        self._modes[key] = mode
        return self

    # --- answering -------------------------------------------------------------------------------

    def _exists(self, name: dns.name.Name) -> bool:
        return any(key[0].is_subdomain(name) for key in self._records)

    def respond(self, wire: bytes, *, tcp: bool) -> bytes | None:
        """The wire answer to a query, or ``None`` to stay silent."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if not query.question or query.flags & dns.flags.QR:
            return None
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        self.queries.append(
            (qname.to_text(omit_final_dot=True).lower(), dns.rdatatype.to_text(qtype), "tcp" if tcp else "udp")
        )
        mode = self._modes.get((qname, qtype)) or self._modes.get((qname, None)) or self.default_mode
        if mode == "drop":
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA | dns.flags.RA
        if mode == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif mode == "refused":
            response.set_rcode(dns.rcode.REFUSED)
        elif mode == "truncate" and not tcp:
            response.flags |= dns.flags.TC
        elif mode == "nxdomain" or not self._exists(qname):
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            rdatas = self._records.get((qname, qtype))
            if rdatas:
                rrset = dns.rrset.from_text_list(
                    qname, self.ttl, dns.rdataclass.IN, qtype, rdatas, origin=dns.name.root, relativize=False
                )
                response.answer.append(rrset)
        limit = 65535 if tcp else max(512, query.payload if query.edns >= 0 else 512)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            response.answer.clear()
            response.flags |= dns.flags.TC
            return response.to_wire()

    # --- life cycle -------------------------------------------------------------------------------

    async def start(self) -> DnsServer:
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        for _ in range(50):
            udp, _proto = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(self.host, 0))
            port = udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, self.host, port)
            except OSError as exc:  # the TCP port is taken: try another pair
                udp.close()
                last = exc
                continue
            self._udp, self.port = udp, port
            return self
        raise RuntimeError(f"no free UDP+TCP port pair on {self.host}") from last

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                out = self.respond(await reader.readexactly(size), tcp=True)
                if out is None:
                    continue
                if self.delay > 0:
                    await asyncio.sleep(self.delay)
                writer.write(len(out).to_bytes(2, "big") + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 2)
            self._tcp = None

    async def __aenter__(self) -> DnsServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
