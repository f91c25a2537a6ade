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
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from exporter import __version__
from exporter.config.decode import parse_duration
from exporter.core.errors import ConfigError, ExporterError
from exporter.web.server import Timeouts

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
        "--web.config.file",
        dest="web_config_file",
        metavar="PATH",
        default=None,
        help="Web config (exporter-toolkit format): TLS, client certificates, basic auth, headers, rate limit. "
        "Applies to every endpoint. Re-read on SIGHUP and POST /-/reload. See docs/security.md.",
    )
    p.add_argument(
        "--web.healthy-without-auth",
        dest="healthy_without_auth",
        action="store_true",
        help="Serve /-/healthy without basic auth (for container and load-balancer health checks). "
        "TLS still applies. Default: every endpoint needs auth when the web config sets basic_auth_users.",
    )
    p.add_argument(
        "--web.read-header-timeout",
        dest="read_header_timeout",
        metavar="DURATION",
        type=_duration,
        default=Timeouts.read_header,
        help="Close a connection whose request headers (or TLS handshake) are not complete within this time "
        "(slowloris). 0 disables. Default: 10s",
    )
    p.add_argument(
        "--web.read-timeout",
        dest="read_timeout",
        metavar="DURATION",
        type=_duration,
        default=Timeouts.read,
        help="Answer 408 when a request body (the /alertmanager webhook) takes longer than this to arrive. "
        "Default: 30s",
    )
    p.add_argument(
        "--web.idle-timeout",
        dest="idle_timeout",
        metavar="DURATION",
        type=_duration,
        default=Timeouts.idle,
        help="Close a keep-alive connection idle for this long. Default: 2m",
    )
    p.add_argument(
        "--storage.path",
        dest="storage_path",
        metavar="DIR",
        default="./data",
        help="Directory for persistent state (the SQLite incident store). Created if missing. Default: ./data",
    )
    p.add_argument(
        "--storage.url",
        dest="storage_url",
        metavar="URL",
        default=None,
        help="Keep incidents in PostgreSQL (postgresql://USER@HOST:PORT/DBNAME) instead of the SQLite file "
        "under --storage.path; overrides continuity.store.url. Keep the password out of it (command lines "
        "are visible to other users): use PGPASSWORD, a PGPASSFILE, or continuity.store.url_file. "
        "Default: continuity.store.url, else SQLite",
    )
    p.add_argument(
        "--runtime.event-loop",
        dest="event_loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="The event loop: Python's own, or uvloop (pip install 'mail-continuity-exporter[uvloop]'), which "
        "takes about 25%% more webhook notifications a second but spends about 5%% more CPU per STARTTLS probe "
        "(docs/performance.md). Default: asyncio",
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


def _duration(text: str) -> float:
    try:
        return parse_duration(text) if text != "0" else 0.0
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a duration like "10s", got "{text}"') from None


def parse_listen(address: str) -> tuple[str | None, int]:
    """``:10587`` -> (None, 10587) meaning all interfaces; ``127.0.0.1:10587``; ``[::1]:10587``."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f'--web.listen-address: expected [HOST]:PORT like ":{DEFAULT_PORT}", got "{address}"')
    host = host.strip("[]")
    return (host or None), int(port)


def _config_check(args: argparse.Namespace) -> int:
    """``--config.check``: validate the configuration and, when given, the web config."""
    from exporter import app, checks, config

    status = 0
    try:
        cfg = config.load(args.config_file) if args.config_file else app.default_config()
        built = checks.build(cfg, None)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        print(f"configuration invalid: {len(exc.issues)} error(s)", file=sys.stderr)
        status = 1
    else:
        name = args.config_file or "embedded default"
        print(f"{name}: configuration valid ({len(built)} checks)")
    if args.web_config_file:
        status = max(status, _web_config_check(args.web_config_file))
    return status


def _web_config_check(path: str) -> int:
    from exporter.web.webconfig import load_file

    try:
        loaded = load_file(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        print(f"web config invalid: {len(exc.issues)} error(s)", file=sys.stderr)
        return 1
    for warning in loaded.warnings:
        print(f"{path}: warning: {warning}", file=sys.stderr)
    tls = "TLS" if loaded.context is not None else "no TLS"
    users = len(loaded.config.basic_auth_users)
    print(f"{path}: web config valid ({tls}, {users} basic auth user(s))")
    return 0


async def _serve(args: argparse.Namespace) -> int:
    from exporter.app import Exporter, Options
    from exporter.web.server import ServingSite, make_app
    from exporter.web.webconfig import WebSettings

    try:
        host, port = parse_listen(args.listen_address)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    try:
        settings = WebSettings(args.web_config_file, args.healthy_without_auth)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        print(f"web config invalid: {len(exc.issues)} error(s)", file=sys.stderr)
        return 1
    exporter = Exporter(Options(args.config_file, args.listen_address, args.storage_path, args.storage_url))
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

    timeouts = Timeouts(args.read_header_timeout, args.read_timeout, args.idle_timeout)
    runner = web.AppRunner(
        make_app(exporter, settings, timeouts),
        access_log=None,
        handle_signals=False,
        keepalive_timeout=timeouts.idle,
        lingering_time=timeouts.linger,
    )
    await runner.setup()
    site = ServingSite(runner, host, port, ssl_context=settings.listener_context(), header_timeout=timeouts.read_header)
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
                "tls": settings.listener_context() is not None,
                "basic_auth": settings.auth.enabled,
                "event_loop": args.event_loop,
            }
        },
    )

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[tuple[bool, str]]] = set()

    def on_hup() -> None:
        settings.reload()
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
    from exporter.core import logsetup as logs

    logs.setup(args.log_level, args.log_format)
    if args.config_check:
        return _config_check(args)
    try:
        Path(args.storage_path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"--storage.path: cannot create {args.storage_path!r}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    factory = loop_factory(args.event_loop)
    if factory is None and args.event_loop != "asyncio":
        print(
            "--runtime.event-loop=uvloop: uvloop is not installed (pip install 'mail-continuity-exporter[uvloop]')",
            file=sys.stderr,
        )
        return 1
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_serve(args))
    return 130


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory for ``--runtime.event-loop``: None for Python's own loop, and
    also when uvloop is asked for but not installed."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
