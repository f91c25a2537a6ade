#!/usr/bin/env python3
"""The soak's mail servers, in their own process so that serving them does not skew the sampler.

Started by ``soak.py``; prints one JSON line with the addresses it listens on, then serves
until its stdin closes (the soak ended or died) or ``--max-seconds`` pass.  Everything is on
127.0.0.1, port 0:

- healthy: working scripted SMTP and IMAP servers (tests/faults.py), answering at once;
- tarpit: accepts and never says a word;
- flapping: a working SMTP or IMAP server that, every ``--flap-period`` seconds, switches
  between answering normally and closing each new connection without a word.  Several
  flapping servers run with staggered phases, so the exporter never sees every flapping
  check change at the same instant.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from faults import FaultServer, ImapScript, SmtpScript, imap_server, smtp_server, tarpit  # noqa: E402


def flapping(inner: FaultServer, period: float, phase: float) -> FaultServer:
    """``inner``'s dialog while up; while down, close each connection before the greeting."""

    async def handler(srv: FaultServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up = int((time.monotonic() + phase) / period) % 2 == 0
        if up:
            await inner._handler(srv, reader, writer)

    return FaultServer(handler)


async def serve(args: argparse.Namespace) -> None:
    groups: dict[str, list[FaultServer]] = {
        "healthy_smtp": [smtp_server(SmtpScript()) for _ in range(args.healthy_servers)],
        "healthy_imap": [imap_server(ImapScript()) for _ in range(args.healthy_servers)],
        "tarpit": [tarpit() for _ in range(args.tarpit_servers)],
        "flapping_smtp": [],
        "flapping_imap": [],
    }
    for i in range(args.flapping_servers):
        phase = args.flap_period * i / args.flapping_servers
        groups["flapping_smtp"].append(flapping(smtp_server(SmtpScript()), args.flap_period, phase))
        groups["flapping_imap"].append(flapping(imap_server(ImapScript()), args.flap_period, phase))
    servers = [srv for group in groups.values() for srv in group]
    for srv in servers:
        await srv.start()
    print(json.dumps({name: [s.address for s in group] for name, group in groups.items()}), flush=True)
    try:
        await _until_stdin_closes(args.max_seconds)
    finally:
        for srv in servers:
            await srv.close()
        errors = [repr(e) for srv in servers for e in srv.errors]
        print(json.dumps({"connections": sum(s.connections for s in servers), "errors": errors[:10]}), flush=True)


async def _until_stdin_closes(max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with asyncio.timeout(max_seconds):
        while await reader.read(4096):
            pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--healthy-servers", type=int, default=4, help="per protocol")
    parser.add_argument("--tarpit-servers", type=int, default=2)
    parser.add_argument("--flapping-servers", type=int, default=4, help="per protocol, staggered phases")
    parser.add_argument("--flap-period", type=float, default=25.0, help="seconds up, then as many down")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="hard stop")
    args = parser.parse_args()
    with contextlib.suppress(TimeoutError):  # --max-seconds passed
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
