"""Command line, in the style of Prometheus exporters (``--config.file``, ``--web.listen-address``...)."""

from __future__ import annotations

__all__ = ["main"]

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from exporter import __version__
from exporter.errors import ConfigError, ExporterError

DEFAULT_PORT = 10587
DEFAULT_LISTEN = f":{DEFAULT_PORT}"

log = logging.getLogger("exporter")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mail-continuity-exporter",
        description=(
            "Prometheus exporter for mail availability and continuity: MX/SMTP/IMAP/TLS/DNS checks, "
            "queues, end-to-end delivery probes, and RTO/RPO/MTTR from incidents."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "With no --config.file, an embedded default config checks this host: SMTP on 127.0.0.1:25 and "
            "the local Postfix queue (when Postfix is installed).\n"
            "Incident history: mail-continuity-exporter incidents {import FILE,list,export} "
            "(see: mail-continuity-exporter incidents --help).\n"
            "Docs: docs/configuration.md (every key), docs/metrics.md (every metric), "
            "docs/continuity.md (incidents, MTTR, RTO, RPO)."
        ),
    )
    p.add_argument("--version", action="version", version=f"mail-continuity-exporter {__version__}")
    p.add_argument(
        "--config.file",
        dest="config_file",
        metavar="PATH",
        default=None,
        help="YAML configuration file. Default: the embedded default config (checks this host).",
    )
    p.add_argument(
        "--config.check",
        dest="config_check",
        action="store_true",
        help="Validate the configuration, print every error with its key path, and exit 0 (valid) or 1.",
    )
    p.add_argument(
        "--web.listen-address",
        dest="listen_address",
        metavar="[HOST]:PORT",
        default=DEFAULT_LISTEN,
        help=f"Address to serve /metrics, /probe, /alertmanager and the status page on. Default: {DEFAULT_LISTEN} "
        "(all interfaces; port 10587 is not used by any well-known exporter).",
    )
    p.add_argument(
        "--storage.path",
        dest="storage_path",
        metavar="DIR",
        default="./data",
        help="Directory for persistent state (the SQLite incident store). Created if missing. Default: ./data",
    )
    p.add_argument(
        "--log.level",
        dest="log_level",
        choices=["debug", "info", "warn", "error"],
        default="info",
        help="Only log messages at this level or above. Default: info",
    )
    p.add_argument(
        "--log.format",
        dest="log_format",
        choices=["logfmt", "json"],
        default="logfmt",
        help="Log line format. Default: logfmt",
    )
    return p


def parse_listen(address: str) -> tuple[str | None, int]:
    """``:10587`` -> (None, 10587) meaning all interfaces; ``127.0.0.1:10587``; ``[::1]:10587``."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f'--web.listen-address: expected [HOST]:PORT like ":{DEFAULT_PORT}", got "{address}"')
    host = host.strip("[]")
    return (host or None), int(port)


def _config_check(args: argparse.Namespace) -> int:
    from exporter import app, checks, config

    try:
        cfg = config.load(args.config_file) if args.config_file else app.default_config()
        built = checks.build(cfg, None)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        print(f"configuration invalid: {len(exc.issues)} error(s)", file=sys.stderr)
        return 1
    name = args.config_file or "embedded default"
    print(f"{name}: configuration valid ({len(built)} checks)")
    return 0


async def _serve(args: argparse.Namespace) -> int:
    from exporter.app import Exporter, Options
    from exporter.http import make_app

    try:
        host, port = parse_listen(args.listen_address)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    exporter = Exporter(Options(args.config_file, args.listen_address, args.storage_path))
    try:
        await exporter.start()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        print(f"configuration invalid: {len(exc.issues)} error(s)", file=sys.stderr)
        return 1
    except ExporterError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 1

    # Garbage collection: what exists after start-up (modules, config) lives for the whole
    # process, so freeze it out of the collector's way, and collect the young generation
    # less often. With 1,000 checks, default thresholds caused 10-20 ms pauses in /metrics
    # (benchmarks/metrics_latency.py); these settings remove most of them.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)

    runner = web.AppRunner(make_app(exporter), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        print(f"cannot listen on {args.listen_address}: {exc.strerror or exc}", file=sys.stderr)
        await exporter.stop()
        await runner.cleanup()
        return 1
    log.info(
        "listening",
        extra={
            "kv": {
                "address": args.listen_address,
                "version": __version__,
                "config": args.config_file or "embedded default",
            }
        },
    )

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[tuple[bool, str]]] = set()

    def on_hup() -> None:
        task = loop.create_task(exporter.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    log.info("shutting down")
    await runner.shutdown()
    await exporter.stop()
    await runner.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "incidents":
        from exporter.continuity.cli import main as incidents_main

        return incidents_main(argv[1:])
    args = build_parser().parse_args(argv)
    from exporter import logs

    logs.setup(args.log_level, args.log_format)
    if args.config_check:
        return _config_check(args)
    try:
        Path(args.storage_path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"--storage.path: cannot create {args.storage_path!r}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_serve(args))
    return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
