"""The HTTP server (aiohttp).

aiohttp is used because it is the most widely deployed, actively maintained asyncio
HTTP server with a client in the same package (needed for MTA-STS policy fetches and
Alertmanager reconciliation), so the exporter has one HTTP stack, one event loop and
no threads.

Endpoints: ``/metrics``, ``/probe`` (:mod:`exporter.web.probe`), ``/alertmanager``
(Alertmanager's webhook, :mod:`exporter.web.webhook`), ``/-/healthy``, ``/-/ready``,
``/-/reload`` and ``/``, a small HTML status page (:mod:`exporter.web.status`).

The handlers never see the application object: :func:`make_app` takes a
:class:`Runtime`, and each handler reads only its own narrow protocol of it
(:class:`MetricsView`, :class:`Control`, :class:`~exporter.web.status.StatusView`,
:class:`~exporter.web.probe.ProbeView`, the continuity service's
:class:`~exporter.web.webhook.IncidentIntake`).  ``/metrics`` only joins pre-rendered text: it
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

__all__ = [
    "Control",
    "HeaderDeadline",
    "IncidentService",
    "MetricsView",
    "Runtime",
    "ServingSite",
    "Timeouts",
    "body_timeout",
    "make_app",
]

import asyncio
import gzip
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, cast

from aiohttp import web
from yarl import URL

from exporter.core.snapshot import OPENMETRICS_CONTENT_TYPE, Snapshot, wants_openmetrics
from exporter.web.probe import ProbeView, handle_probe
from exporter.web.status import IncidentView, StatusView, render_status
from exporter.web.webconfig import WebSettings
from exporter.web.webhook import IncidentIntake, handle_webhook

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # or OPENMETRICS_CONTENT_TYPE, by the Accept header
_VARY = "Accept, Accept-Encoding"
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


class MetricsView(Protocol):
    """``/metrics``: the snapshot of every check, and the few self-metrics rendered per scrape."""

    @property
    def snapshot(self) -> Snapshot: ...

    def render_self(self, openmetrics: bool = False) -> bytes: ...


class Control(Protocol):
    """``/-/ready`` and ``/-/reload``."""

    @property
    def ready(self) -> bool: ...

    async def reload(self) -> tuple[bool, str]: ...


class IncidentService(IncidentIntake, IncidentView, Protocol):
    """``/alertmanager`` and the status page's incidents: the continuity service."""


class Runtime(MetricsView, Control, StatusView, ProbeView, Protocol):
    """Everything the HTTP layer is given; each handler sees only its own narrow view."""

    @property
    def incidents(self) -> IncidentService | None: ...


RUNTIME_KEY: web.AppKey[Runtime] = web.AppKey("runtime")


def _exporter(request: web.Request) -> MetricsView:
    return request.app[RUNTIME_KEY]


async def metrics(request: web.Request) -> web.Response:
    """The text format 0.0.4, or OpenMetrics 1.0.0 when the ``Accept`` header prefers it."""
    exp = _exporter(request)
    openmetrics = wants_openmetrics(request.headers.get("Accept", ""))
    headers = {"Content-Type": OPENMETRICS_CONTENT_TYPE if openmetrics else CONTENT_TYPE, "Vary": _VARY}
    head = exp.render_self(openmetrics)  # the OpenMetrics snapshot body ends the exposition with # EOF
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        # gzip members may be concatenated: the cached snapshot member is reused as is.
        headers["Content-Encoding"] = "gzip"
        body = gzip.compress(head, compresslevel=1, mtime=0) + exp.snapshot.render_gzip(openmetrics)
        return web.Response(body=body, headers=headers)
    return web.Response(body=head + exp.snapshot.render(openmetrics), headers=headers)


async def probe(request: web.Request) -> web.Response:
    view: ProbeView = request.app[RUNTIME_KEY]
    return await handle_probe(request, view)


async def alertmanager(request: web.Request) -> web.Response:
    intake: IncidentIntake | None = request.app[RUNTIME_KEY].incidents
    if intake is None:
        return web.Response(status=503, text="Not ready: the incident store is not open yet.\n")
    return await handle_webhook(request, intake, body_timeout(request))


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="Healthy.\n")


async def ready(request: web.Request) -> web.Response:
    control: Control = request.app[RUNTIME_KEY]
    if control.ready:
        return web.Response(text="Ready.\n")
    return web.Response(status=503, text="Not ready: configuration not loaded or checks not scheduled yet.\n")


async def reload(request: web.Request) -> web.Response:
    """Reload the configuration and the web config; each is swapped in only if valid."""
    control: Control = request.app[RUNTIME_KEY]
    ok, error = await control.reload()
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


async def status_page(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    view: StatusView = runtime
    incidents: IncidentView | None = runtime.incidents
    return web.Response(text=render_status(view, incidents), content_type="text/html")


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
    runtime: Runtime, settings: WebSettings | None = None, timeouts: Timeouts | None = None
) -> web.Application:
    """The aiohttp application; ``settings`` is the web config (default: none, plain HTTP without auth)."""
    app = web.Application(client_max_size=2 << 20, middlewares=[_guard])
    app[RUNTIME_KEY] = runtime
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
