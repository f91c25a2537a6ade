"""``GET /``: the status page, a small HTML table of the checks and the open incidents.

Rendered from narrow views of the running exporter (:class:`StatusView`) and of the
continuity service (:class:`IncidentView`); every value that may carry text from a
server or a config is escaped and passed through :func:`~exporter.core.secrets.redact`.
"""

from __future__ import annotations

__all__ = ["IncidentView", "StatusView", "render_status"]

import html
import time
from collections.abc import Sequence
from typing import Protocol

from exporter import __version__
from exporter.continuity.store import OpenIncident
from exporter.core.scheduler import Check
from exporter.core.secrets import redact
from exporter.core.timefmt import format_time


class StatusView(Protocol):
    """What the status page shows of the running exporter."""

    @property
    def status_checks(self) -> Sequence[Check]: ...

    @property
    def config_source(self) -> str: ...

    @property
    def reload_ok(self) -> bool: ...

    @property
    def last_reload_error(self) -> str: ...


class IncidentView(Protocol):
    """What the status page shows of the continuity service."""

    def open_incidents(self) -> Sequence[OpenIncident]: ...

    @property
    def store_description(self) -> str: ...

    @property
    def reconcile_state(self) -> str: ...

    @property
    def lease_state(self) -> str: ...


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def incidents_section(view: IncidentView, now: float) -> str:
    """The open incidents, as safe HTML."""
    rows = []
    opened = view.open_incidents()
    for inc in opened:
        cells = [
            inc.service,
            inc.severity,
            format_time(inc.started_at),
            _age(now - inc.started_at),
            str(inc.open_alerts),
            ", ".join(inc.alertnames),
        ]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    table = (
        "<table><tr><th>Service</th><th>Severity</th><th>Opened</th><th>Open for</th>"
        "<th>Firing alerts</th><th>Alert names</th></tr>" + "".join(rows) + "</table>"
        if rows
        else "<p>No open incidents.</p>"
    )
    store = html.escape(view.store_description)
    return (
        f"<h2>Open incidents ({len(opened)})</h2>{table}"
        f"<p>Incident store: {store} · reconciliation with Alertmanager: {html.escape(view.reconcile_state)}"
        f" · lease of the once-only jobs: {html.escape(view.lease_state)}</p>"
    )


def render_status(view: StatusView, incidents: IncidentView | None) -> str:
    now = time.time()
    rows = []
    checks = view.status_checks
    for c in sorted(checks, key=lambda c: (c.kind, c.name)):
        rec = c.last
        if rec is None:
            cells = ["never", "", "pending", "", ""]
        else:
            detail = "; ".join(f"{k}: {v}" for k, v in rec.details)
            cells = [
                _ago(now - rec.started),
                f"{rec.duration * 1000:.0f} ms",
                rec.result,
                f"{rec.reason}: {rec.error}" if rec.error else "",
                detail,
            ]
        css = {"success": "ok", "failure": "bad", "error": "bad"}.get(cells[2], "")
        cols = "".join(f"<td>{html.escape(redact(x))}</td>" for x in [c.kind, c.name, *cells])
        rows.append(f'<tr class="{css}">{cols}</tr>')
    reload_line = "ok" if view.reload_ok else f"FAILED: {html.escape(redact(view.last_reload_error))}"
    extra = f"<section>{incidents_section(incidents, now)}</section>" if incidents is not None else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mail-continuity-exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}}
tr.ok td:nth-child(5){{color:#070}}tr.bad td:nth-child(5){{color:#b00;font-weight:bold}}</style></head>
<body><h1>mail-continuity-exporter {html.escape(__version__)}</h1>
<p><a href="metrics">Metrics</a> · <a href="-/healthy">Health</a> · <a href="-/ready">Readiness</a></p>
<p>Configuration: {html.escape(view.config_source)} · last reload: {reload_line}</p>
<h2>Checks ({len(checks)})</h2>
<table><tr><th>Check</th><th>Name</th><th>Last run</th><th>Duration</th><th>Result</th>
<th>Last error</th><th>Details</th></tr>
{"".join(rows)}
</table>{extra}</body></html>
"""
