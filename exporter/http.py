"""The HTTP server (aiohttp).

aiohttp is used because it is the most widely deployed, actively maintained asyncio
HTTP server with a client in the same package (needed for MTA-STS policy fetches and
Alertmanager reconciliation), so the exporter has one HTTP stack, one event loop and
no threads.

Endpoints: ``/metrics``, ``/probe``, ``/alertmanager`` (Alertmanager's webhook, see
:mod:`exporter.continuity.service`), ``/-/healthy``, ``/-/ready``, ``/-/reload`` and
``/``, a small HTML status page.  ``/metrics`` only joins pre-rendered text: it
never waits on the network or on a check.
"""

from __future__ import annotations

__all__ = ["make_app"]

import gzip
import html
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from exporter import __version__
from exporter.secrets import redact

if TYPE_CHECKING:
    from exporter.app import Exporter

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
EXPORTER_KEY = web.AppKey("exporter", object)


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
    from exporter.probe import handle_probe

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
    ok, error = await _exporter(request).reload()
    if ok:
        return web.Response(text="Configuration reloaded.\n")
    return web.Response(status=500, text=f"Reload failed; the previous configuration stays in force.\n{error}\n")


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


def make_app(exporter: Exporter) -> web.Application:
    app = web.Application(client_max_size=2 << 20)
    app[EXPORTER_KEY] = exporter
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
