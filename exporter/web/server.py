"""The HTTP server (aiohttp).

aiohttp is used because it is the most widely deployed, actively maintained asyncio
HTTP server with a client in the same package (needed for MTA-STS policy fetches and
Alertmanager reconciliation), so the exporter has one HTTP stack, one event loop and
no threads.

Endpoints: ``/metrics``, ``/probe``, ``/alertmanager`` (Alertmanager's webhook, see
:mod:`exporter.continuity.service`), ``/-/healthy``, ``/-/ready``, ``/-/reload`` and
``/``, a small HTML status page.  ``/metrics`` only joins pre-rendered text: it
never waits on the network or on a check.

Every request, on every route (and for unknown paths, so they cannot be probed),
passes :func:`_guard`: the web config's rate limit (429), then its basic auth (401
with ``WWW-Authenticate: Basic``); only ``/-/healthy`` may be exempted, by
``--web.healthy-without-auth``.  The web config's headers go on every response.

Slow clients: aiohttp has no timeout on reading request headers, so
:class:`HeaderDeadline` wraps each connection's protocol and closes it when a
request's headers are not complete within ``--web.read-header-timeout`` of its first
byte (or of the connection opening, or its TLS handshake).  Bodies are read by the
handlers, each within ``--web.read-timeout`` (:func:`body_timeout`); idle keep-alive
connections close after ``--web.idle-timeout``.  A slow client holds one connection
and one coroutine, never the event loop, so other requests and ``/metrics`` go on.
"""

from __future__ import annotations

__all__ = ["HeaderDeadline", "ServingSite", "Timeouts", "body_timeout", "make_app"]

import asyncio
import gzip
import html
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from aiohttp import web
from yarl import URL

from exporter import __version__
from exporter.core.secrets import redact
from exporter.web.webconfig import WebSettings

if TYPE_CHECKING:
    from exporter.app import Exporter

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
EXPORTER_KEY = web.AppKey("exporter", object)
WEB_KEY = web.AppKey("web", WebSettings)
TIMEOUTS_KEY = web.AppKey("timeouts", object)


@dataclass(frozen=True)
class Timeouts:
    """Limits on slow clients, in seconds (see the module docstring and docs/security.md)."""

    read_header: float = 10.0
    read: float = 30.0
    idle: float = 120.0
    #: How long a request body the handler did not read is drained before the connection closes.
    linger: float = 2.0


def body_timeout(request: web.Request) -> float:
    """Seconds a handler may spend reading the request body (``--web.read-timeout``)."""
    timeouts = request.app.get(TIMEOUTS_KEY)
    return timeouts.read if isinstance(timeouts, Timeouts) else Timeouts.read


def _exporter(request: web.Request) -> Exporter:
    return request.app[EXPORTER_KEY]  # type: ignore[return-value]


async def metrics(request: web.Request) -> web.Response:
    exp = _exporter(request)
    head = exp.render_self()
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        # gzip members may be concatenated: the cached snapshot member is reused as is.
        body = gzip.compress(head, compresslevel=1, mtime=0) + exp.snapshot.render_gzip()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE, "Content-Encoding": "gzip"})
    return web.Response(body=head + exp.snapshot.render(), headers={"Content-Type": CONTENT_TYPE})


async def probe(request: web.Request) -> web.Response:
    from exporter.web.probe import handle_probe

    return await handle_probe(request, _exporter(request))


async def alertmanager(request: web.Request) -> web.Response:
    exp = _exporter(request)
    if exp.continuity is None:
        return web.Response(status=503, text="Not ready: the incident store is not open yet.\n")
    return await exp.continuity.handle_webhook(request)


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="Healthy.\n")


async def ready(request: web.Request) -> web.Response:
    if _exporter(request).ready:
        return web.Response(text="Ready.\n")
    return web.Response(status=503, text="Not ready: configuration not loaded or checks not scheduled yet.\n")


async def reload(request: web.Request) -> web.Response:
    """Reload the configuration and the web config; each is swapped in only if valid."""
    ok, error = await _exporter(request).reload()
    web_ok, web_error = request.app[WEB_KEY].reload()
    if ok and web_ok:
        return web.Response(text="Configuration reloaded.\n")
    parts = []
    if not ok:
        parts.append(f"Reload failed; the previous configuration stays in force.\n{error}\n")
    if not web_ok:
        parts.append(f"Web config reload failed; the previous web config stays in force.\n{web_error}\n")
    return web.Response(status=500, text="".join(parts))


async def reload_wrong_method(request: web.Request) -> web.Response:
    return web.Response(status=405, text="Use POST to reload.\n", headers={"Allow": "POST"})


def _fmt_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


async def status_page(request: web.Request) -> web.Response:
    exp = _exporter(request)
    now = time.time()
    rows = []
    checks = exp.scheduler.checks if exp.scheduler is not None else []
    for c in sorted(checks, key=lambda c: (c.kind, c.name)):
        rec = c.last
        if rec is None:
            cells = ["never", "", "pending", "", ""]
        else:
            detail = "; ".join(f"{k}: {v}" for k, v in rec.details)
            cells = [
                _fmt_age(now - rec.started),
                f"{rec.duration * 1000:.0f} ms",
                rec.result,
                f"{rec.reason}: {rec.error}" if rec.error else "",
                detail,
            ]
        css = {"success": "ok", "failure": "bad", "error": "bad"}.get(cells[2], "")
        cols = "".join(f"<td>{html.escape(redact(x))}</td>" for x in [c.kind, c.name, *cells])
        rows.append(f'<tr class="{css}">{cols}</tr>')
    reload_line = "ok" if exp.reload_ok else f"FAILED: {html.escape(redact(exp.last_reload_error))}"
    extra = "".join(f"<section>{section(exp)}</section>" for section in STATUS_SECTIONS)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mail-continuity-exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}}
tr.ok td:nth-child(5){{color:#070}}tr.bad td:nth-child(5){{color:#b00;font-weight:bold}}</style></head>
<body><h1>mail-continuity-exporter {html.escape(__version__)}</h1>
<p><a href="metrics">Metrics</a> · <a href="-/healthy">Health</a> · <a href="-/ready">Readiness</a></p>
<p>Configuration: {html.escape(exp.options.config_file or "embedded default")} · last reload: {reload_line}</p>
<h2>Checks ({len(checks)})</h2>
<table><tr><th>Check</th><th>Name</th><th>Last run</th><th>Duration</th><th>Result</th>
<th>Last error</th><th>Details</th></tr>
{"".join(rows)}
</table>{extra}</body></html>
"""
    return web.Response(text=page, content_type="text/html")


#: Extra sections of the status page (for example open incidents), each a function
#: returning safe HTML.  Modules append to this list.
def _open_incidents(exp: Exporter) -> str:
    from exporter.continuity.service import status_section

    return status_section(exp)


STATUS_SECTIONS: list[Callable[[Exporter], str]] = [_open_incidents]


# --- every request: rate limit, basic auth, client certificate SANs, headers -------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    deadline = _deadline_of(request)
    if deadline is not None:
        deadline.request_started()
    try:
        refusal = await _refuse(request)
        return refusal if refusal is not None else await handler(request)
    finally:
        if deadline is not None:
            deadline.request_finished()


async def _refuse(request: web.Request) -> web.Response | None:
    """The response refusing this request, or None to let it through."""
    settings = request.app[WEB_KEY]
    if not settings.limiter.allow():
        return web.Response(status=429, text="Too many requests (web config rate_limit).\n")
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    if ssl_object is not None and not settings.san_allowed(ssl_object.getpeercert(binary_form=True)):
        return web.Response(status=403, text="Client certificate not allowed (client_allowed_sans).\n")
    if not settings.auth.enabled:
        return None
    if settings.healthy_without_auth and request.match_info.handler is healthy:
        return None
    if await settings.auth.check(request.headers.get("Authorization")):
        return None
    return web.Response(
        status=401, text="Unauthorized.\n", headers={"WWW-Authenticate": 'Basic realm="mail-continuity-exporter"'}
    )


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in request.app[WEB_KEY].headers:
        response.headers[name] = value


# --- slow clients ----------------------------------------------------------------------------------------


def _deadline_of(request: web.Request) -> HeaderDeadline | None:
    protocol = request.transport.get_protocol() if request.transport is not None else None
    return protocol if isinstance(protocol, HeaderDeadline) else None


class HeaderDeadline(asyncio.Protocol):
    """Wraps aiohttp's protocol: closes a connection whose request headers take too long.

    The clock starts when the connection opens and at the first byte after a response;
    :func:`_guard` stops it when the request reaches the application (its headers are
    complete).  While a handler runs, reading the body is the handler's business.
    """

    def __init__(self, inner: asyncio.Protocol, timeout: float) -> None:
        self._inner = inner
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._busy = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a stream server's transports are Transports
        self._arm()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._busy and self._timer is None:
            self._arm()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._transport = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def request_started(self) -> None:
        self._busy += 1
        self._disarm()

    def request_finished(self) -> None:
        self._busy -= 1

    def _arm(self) -> None:
        if self._timeout > 0:
            self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if not self._busy and self._transport is not None:
            self._transport.abort()


class ServingSite(web.BaseSite):
    """A TCP site whose connections get :class:`HeaderDeadline` and a bounded TLS handshake."""

    __slots__ = ("_header_timeout", "_host", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        header_timeout: float,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._header_timeout = header_timeout

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return str(URL.build(scheme=scheme, host=self._host or "0.0.0.0", port=self._port))

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        timeout = self._header_timeout

        def factory() -> HeaderDeadline:
            return HeaderDeadline(server(), timeout)

        self._server = await asyncio.get_running_loop().create_server(
            factory,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=True,
            ssl_handshake_timeout=timeout if self._ssl_context and timeout > 0 else None,
        )


# --- the application -------------------------------------------------------------------------------------


def make_app(
    exporter: Exporter, settings: WebSettings | None = None, timeouts: Timeouts | None = None
) -> web.Application:
    """The aiohttp application; ``settings`` is the web config (default: none, plain HTTP without auth)."""
    app = web.Application(client_max_size=2 << 20, middlewares=[_guard])
    app[EXPORTER_KEY] = exporter
    app[WEB_KEY] = settings if settings is not None else WebSettings()
    app[TIMEOUTS_KEY] = timeouts if timeouts is not None else Timeouts()
    app.on_response_prepare.append(_add_headers)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/probe", probe)
    app.router.add_post("/alertmanager", alertmanager)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    app.router.add_get("/-/reload", reload_wrong_method)
    app.router.add_put("/-/reload", reload)
    app.router.add_get("/", status_page)
    return app
