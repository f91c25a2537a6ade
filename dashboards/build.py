"""Build the Grafana dashboards of mail-continuity-exporter.

    python dashboards/build.py           # write dashboards/*.json
    python dashboards/build.py --check   # exit 1 if the committed JSON differs (CI)

A small builder of our own rather than grafana-foundation-sdk: see dashboards/README.md.
Every query filters on ``job=~"$job",instance=~"$instance"`` (the recording rules of rules/
keep both labels), every rate uses ``$__rate_interval``, every panel has a unit and a
description, and the uids are the ones the alerts of rules/ link to.  The figures that every
replica of an HA pair exports alike (incidents, objectives, maintenance, backups, replication)
are taken once with ``max without (instance, pod)``, so that a pair shows no doubled lines or
sums (docs/metrics.md, "Two or more replicas").
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TAG = "mail-continuity-exporter"
SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}
#: The matchers of every selector: the linter's job and instance rules.
J = 'job=~"$job",instance=~"$instance"'
#: ALERTS: the alerts over figures that every replica exports alike (and the lease alerts)
#: have no instance label; the empty alternative keeps them.
J_ALERTS = 'job=~"$job",instance=~"$instance|"'
#: The labels that tell the replicas of one exporter apart (rules/generate.py: replica_labels).
REPLICA_LABELS = "instance, pod"
UIDS = {
    "overview": "mce-overview",
    "delivery": "mce-delivery",
    "continuity": "mce-continuity",
    "domain": "mce-domain",
}

Json = dict[str, Any]


def sel(metric: str, extra: str = "") -> str:
    """``metric{job=~"$job",instance=~"$instance"[,extra]}``."""
    return f"{metric}{{{J}{',' + extra if extra else ''}}}"


def once(expr: str) -> str:
    """``expr`` once for all replicas of an HA pair: ``max without (instance, pod) (expr)``.

    Only for figures that every replica exports alike.  Over a counter, ``expr`` is the
    ``increase``/``rate`` of each replica's series: aggregate after the rate, never the rate of a max.
    """
    return f"max without ({REPLICA_LABELS}) ({expr})"


def one(metric: str, extra: str = "") -> str:
    """A gauge that every replica exports alike, once: ``max without (instance, pod) (metric{...})``."""
    return once(sel(metric, extra))


def alerts_firing() -> str:
    """``ALERTS{...,alertstate="firing"}``, with the alerts that have no instance label."""
    return f'ALERTS{{{J_ALERTS},alertstate="firing"}}'


def target(expr: str, legend: str = "", *, instant: bool = False, fmt: str = "time_series") -> Json:
    return {
        "datasource": DS,
        "expr": expr,
        "format": fmt,
        "instant": instant,
        "legendFormat": legend or "__auto",
        "range": not instant,
    }


def thresholds(*steps: tuple[float | None, str]) -> Json:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


GREEN = thresholds((None, "green"))


class Board:
    """Panels laid out left to right in rows of 24 grid units."""

    def __init__(self, key: str, title: str, description: str) -> None:
        self.key, self.title, self.description = key, title, description
        self.panels: list[Json] = []
        self.variables: list[Json] = []
        self._x = self._y = self._row_h = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self._y},
                "id": len(self.panels) + 1,
                "panels": [],
                "title": title,
                "type": "row",
            }
        )
        self._y += 1

    def _newline(self) -> None:
        if self._x:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0

    def panel(
        self,
        kind: str,
        title: str,
        description: str,
        unit: str,
        targets: list[Json],
        *,
        w: int = 8,
        h: int = 8,
        steps: Json = GREEN,
        options: Json | None = None,
        custom: Json | None = None,
        no_value: str | None = None,
        extra_defaults: Json | None = None,
    ) -> None:
        if self._x + w > 24:
            self._newline()
        defaults: Json = {"unit": unit, "thresholds": steps, "color": {"mode": "palette-classic"}}
        if kind in ("stat", "bargauge", "gauge"):
            defaults["color"] = {"mode": "thresholds"}
        if custom:
            defaults["custom"] = custom
        if no_value is not None:
            defaults["noValue"] = no_value
        defaults.update(extra_defaults or {})
        for i, t in enumerate(targets):
            t["refId"] = chr(ord("A") + i)
        self.panels.append(
            {
                "datasource": DS,
                "description": description,
                "fieldConfig": {"defaults": defaults, "overrides": []},
                "gridPos": {"h": h, "w": w, "x": self._x, "y": self._y},
                "id": len(self.panels) + 1,
                "options": options or {},
                "targets": targets,
                "title": title,
                "type": kind,
            }
        )
        self._x += w
        self._row_h = max(self._row_h, h)

    # -- panel kinds --------------------------------------------------------------------------

    def timeseries(self, title: str, description: str, unit: str, targets: list[Json], **kw: Any) -> None:
        kw.setdefault("options", {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull"]}})
        self.panel("timeseries", title, description, unit, targets, **kw)

    def bars(self, title: str, description: str, unit: str, targets: list[Json], **kw: Any) -> None:
        kw.setdefault("custom", {"drawStyle": "bars", "fillOpacity": 80, "stacking": {"mode": "normal"}})
        self.timeseries(title, description, unit, targets, **kw)

    def stat(self, title: str, description: str, unit: str, targets: list[Json], **kw: Any) -> None:
        kw.setdefault("w", 4)
        kw.setdefault("h", 5)
        kw.setdefault("options", {"colorMode": "background", "graphMode": "area", "reduceOptions": _last()})
        self.panel("stat", title, description, unit, targets, **kw)

    def bargauge(self, title: str, description: str, unit: str, targets: list[Json], **kw: Any) -> None:
        kw.setdefault("options", {"displayMode": "gradient", "orientation": "horizontal", "reduceOptions": _last()})
        self.panel("bargauge", title, description, unit, targets, **kw)

    def states(self, title: str, description: str, unit: str, targets: list[Json], **kw: Any) -> None:
        kw.setdefault("options", {"showValue": "auto", "mergeValues": True})
        self.panel("state-timeline", title, description, unit, targets, **kw)

    def table(
        self,
        title: str,
        description: str,
        targets: list[Json],
        columns: dict[str, str],
        *,
        overrides: list[Json] | None = None,
        **kw: Any,
    ) -> None:
        """Instant queries joined on their common labels into one row per label set.

        ``columns`` names the value column of each target by refId (``{"B": "policy ok"}``);
        a target whose refId is not in it only contributes its labels (its value is hidden).
        ``overrides`` refer to the columns by those names.
        """
        for t in targets:
            t.update(format="table", instant=True, range=False)
        refs = [chr(ord("A") + i) for i in range(len(targets))]
        hidden = {"Time": True, **{f"Value #{r}": True for r in refs if r not in columns}}
        kw.setdefault("options", {"cellHeight": "sm", "footer": {"show": False}, "showHeader": True})
        self.panel("table", title, description, "none", targets, **kw)
        panel = self.panels[-1]
        panel["transformations"] = [
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": hidden,
                    "renameByName": {f"Value #{r}": name for r, name in columns.items()},
                },
            },
        ]
        panel["fieldConfig"]["overrides"] = overrides or []

    def heatmap(self, title: str, description: str, unit: str, targets: list[Json], **kw: Any) -> None:
        kw.setdefault(
            "options",
            {
                "calculate": False,
                "cellGap": 1,
                "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
                "yAxis": {"unit": unit},
                "rowsFrame": {"layout": "auto"},
            },
        )
        self.panel("heatmap", title, description, unit, targets, **kw)

    # -- variables ----------------------------------------------------------------------------

    def query_variable(self, name: str, query: str, *, label: str | None = None) -> None:
        self.variables.append(
            {
                "allValue": ".+",
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                "datasource": DS,
                "definition": query,
                "includeAll": True,
                "label": label or name,
                "multi": True,
                "name": name,
                "options": [],
                "query": {"qryType": 1, "query": query, "refId": f"PrometheusVariableQueryEditor-{name}"},
                "refresh": 2,
                "regex": "",
                "sort": 1,
                "type": "query",
            }
        )

    def to_json(self) -> Json:
        variables = [
            {
                "current": {},
                "hide": 0,
                "includeAll": False,
                "label": "Data source",
                "multi": False,
                "name": "datasource",
                "options": [],
                "query": "prometheus",
                "refresh": 1,
                "regex": "",
                "type": "datasource",
            },
        ]
        job_query = "label_values(mail_exporter_build_info, job)"
        instance_query = 'label_values(mail_exporter_build_info{job=~"$job"}, instance)'
        own = self.variables
        self.variables = []
        self.query_variable("job", job_query)
        self.query_variable("instance", instance_query)
        variables += self.variables + own
        self.variables = own
        return {
            "annotations": {
                "list": [
                    {
                        "builtIn": 1,
                        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                        "enable": True,
                        "hide": True,
                        "iconColor": "rgba(0, 211, 255, 1)",
                        "name": "Annotations & Alerts",
                        "type": "dashboard",
                    },
                    {
                        "datasource": DS,
                        "enable": True,
                        "expr": alerts_firing(),
                        "iconColor": "red",
                        "name": "Firing alerts",
                        "step": "1m",
                        "tagKeys": "alertname,severity",
                        "titleFormat": "{{alertname}}",
                    },
                ]
            },
            "description": self.description,
            "editable": True,
            "fiscalYearStartMonth": 0,
            "graphTooltip": 1,
            "id": None,
            "links": [
                {
                    "asDropdown": False,
                    "icon": "external link",
                    "includeVars": True,
                    "keepTime": True,
                    "tags": [TAG],
                    "targetBlank": False,
                    "title": "Mail dashboards",
                    "tooltip": "",
                    "type": "dashboards",
                    "url": "",
                }
            ],
            "panels": self.panels,
            "refresh": "1m",
            "schemaVersion": SCHEMA_VERSION,
            "tags": [TAG],
            "templating": {"list": variables},
            "time": {"from": "now-6h", "to": "now"},
            "timepicker": {},
            "timezone": "browser",
            "title": self.title,
            "uid": UIDS[self.key],
            "version": 1,
            "weekStart": "",
        }


def _last() -> Json:
    return {"calcs": ["lastNotNull"], "fields": "", "values": False}


def _by(labels: str, expr: str, agg: str = "max") -> str:
    return f"{agg} by ({labels}) ({expr})"


def _rate_sum(labels: str, metric: str, extra: str = "", fn: str = "increase", *, replicated: bool = False) -> str:
    """``sum by (labels) (increase(metric{...}[$__rate_interval]))``; ``replicated``: a counter that every
    replica exports alike, rated per replica and then taken once (never the rate of a max)."""
    rated = f"{fn}({sel(metric, extra)}[$__rate_interval])"
    return f"sum by ({labels}) ({once(rated) if replicated else rated})"


def _column(name: str, *properties: Json) -> Json:
    """A field override of one table column, by its (renamed) name."""
    return {"matcher": {"id": "byName", "options": name}, "properties": list(properties)}


def _mapped(*values: tuple[str, str, str | None]) -> Json:
    """Value mappings (value, text, colour) shown as coloured cells."""
    options: Json = {}
    for i, (value, text, color) in enumerate(values):
        options[value] = {"index": i, "text": text, **({"color": color} if color else {})}
    return {"id": "mappings", "value": [{"type": "value", "options": options}]}


_CELL_COLOURED = {"id": "custom.cellOptions", "value": {"type": "color-background"}}
_CELL_SECONDS = {"id": "unit", "value": "s"}


def _quantile(q: float) -> str:
    return f"histogram_quantile({q}, {_rate_sum('route, le', 'mail_roundtrip_latency_seconds_bucket', fn='rate')})"


# --- the dashboards --------------------------------------------------------------------------------------


def overview() -> Board:
    b = Board(
        "overview", "Mail: overview", "On-call overview: SLO, MX health, round trips, queues, incidents, RPO/RTO."
    )
    b.row("Service level")
    b.stat(
        "Round-trip SLO (30d)",
        "Share of round-trip probes delivered in time over 30 days (mail:roundtrip_success:ratio_rate30d), "
        "per route. Red below the 99.9% objective.",
        "percentunit",
        [target(sel("mail:roundtrip_success:ratio_rate30d"), "{{route}}")],
        steps=thresholds((None, "red"), (0.999, "green")),
        extra_defaults={"decimals": 3},
    )
    b.stat(
        "Error budget remaining (30d)",
        "Share of the 30-day round-trip error budget still unspent (1 - burn rate over 30d). "
        "Below 0 the SLO is missed.",
        "percentunit",
        [target(sel("mail:roundtrip_error_budget:remaining_ratio30d"), "{{route}}")],
        steps=thresholds((None, "red"), (0, "orange"), (0.25, "green")),
    )
    b.stat(
        "Active alerts",
        "Mail alerts firing in Prometheus now (ALERTS with alertstate=firing). Details in Alertmanager. "
        "Alerts about what each exporter sees (probes, queues, logs) count once per exporter; those over the "
        "figures an HA pair shares (incidents, objectives, backups) once.",
        "short",
        [target("count(" + alerts_firing() + ")", "firing")],
        steps=thresholds((None, "green"), (1, "red")),
        no_value="0",
    )
    b.stat(
        "Open incidents",
        "Incidents open now, per service (from Alertmanager notifications received by the exporter).",
        "short",
        [target(_by("service", one("mail_incidents_open"), "sum"), "{{service}}")],
        steps=thresholds((None, "green"), (1, "red")),
        no_value="0",
    )
    b.bargauge(
        "MX hosts healthy per domain",
        "MX hosts of each domain that accept mail now, against the MX records published. "
        "Healthy below published means an MX host is down; below the wanted minimum, redundancy is lost.",
        "short",
        [
            target(_by("domain", sel("mail_mx_healthy")), "{{domain}} healthy", instant=True),
            target(_by("domain", sel("mail_mx_records")), "{{domain}} published", instant=True),
        ],
        w=8,
        h=5,
        steps=thresholds((None, "red"), (1, "green")),
    )
    b.row("Round trips and queues")
    b.timeseries(
        "Round-trip success (5m)",
        "Share of round-trip probes delivered in time over the last 5 minutes, per route "
        "(mail:roundtrip_success:ratio_rate5m).",
        "percentunit",
        [target(sel("mail:roundtrip_success:ratio_rate5m"), "{{route}}")],
        extra_defaults={"min": 0, "max": 1},
    )
    b.timeseries(
        "Round-trip latency p50 / p95",
        "Time from the end of SMTP DATA to the probe seen in the mailbox: median and 95th percentile per route, "
        "from the latency histogram.",
        "s",
        [target(_quantile(0.5), "p50 {{route}}"), target(_quantile(0.95), "p95 {{route}}")],
    )
    b.timeseries(
        "Queue depth and oldest message",
        "Messages in each mail queue (left axis) and the age of the oldest one (right axis, dashed). "
        "A growing oldest age with a flat depth is a stuck message.",
        "short",
        [
            target(_by("source, queue", sel("mail_queue_messages"), "sum"), "{{source}}/{{queue}}"),
            target(_by("source, queue", sel("mail_queue_oldest_message_age_seconds")), "oldest {{source}}/{{queue}}"),
        ],
    )
    # the oldest age in seconds on its own axis
    b.panels[-1]["fieldConfig"]["overrides"] = [
        {
            "matcher": {"id": "byFrameRefID", "options": "B"},
            "properties": [
                {"id": "unit", "value": "s"},
                {"id": "custom.axisPlacement", "value": "right"},
                {"id": "custom.lineStyle", "value": {"dash": [10, 10], "fill": "dash"}},
            ],
        }
    ]
    b.row("Continuity")
    b.bargauge(
        "RPO estimate vs target",
        "Estimated data loss window of each dataset (smallest healthy replica lag, else the age of the newest "
        "good backup) against its recovery point objective.",
        "s",
        [
            target(one("mail_rpo_estimate_seconds"), "{{dataset}} estimate", instant=True),
            target(one("mail_rpo_target_seconds"), "{{dataset}} target", instant=True),
        ],
        w=9,
        h=6,
    )
    b.bargauge(
        "RTO estimate vs target",
        "Estimated recovery time of each service (p90 of recent recoveries, or the last drill's failover time) "
        "against its recovery time objective.",
        "s",
        [
            target(one("mail_rto_estimate_seconds"), "{{service}} estimate", instant=True),
            target(one("mail_rto_target_seconds"), "{{service}} target", instant=True),
        ],
        w=9,
        h=6,
    )
    b.states(
        "Lease of the once-only jobs",
        "Which exporter holds the lease of the once-only jobs (reconciliation with Alertmanager, promotion of "
        "maintenance overruns, incidents from check outages, the sweep of old probe mail): leader or standby, "
        "per instance. Exactly one exporter of a job leads; a single exporter with the SQLite store always does. "
        "MailExporterNoLeader and MailExporterLeaderConflict fire on none and on more than one.",
        "none",
        [target(sel("mail_exporter_leader"), "{{instance}}")],
        w=6,
        h=6,
        steps=thresholds((None, "blue"), (1, "green")),
        extra_defaults={
            "mappings": [
                {
                    "type": "value",
                    "options": {
                        "0": {"index": 0, "text": "standby", "color": "blue"},
                        "1": {"index": 1, "text": "leader", "color": "green"},
                    },
                }
            ]
        },
    )
    return b


def delivery() -> Board:
    b = Board("delivery", "Mail: delivery and queues", "Round-trip delivery, per-hop delays and mail queues.")
    b.row("Round trips")
    b.heatmap(
        "Round-trip latency heatmap",
        "Distribution of round-trip latencies (end of SMTP DATA to the probe seen in the mailbox), from the "
        "buckets of mail_roundtrip_latency_seconds. A band moving up is delivery slowing down.",
        "s",
        [target(_rate_sum("le", "mail_roundtrip_latency_seconds_bucket"), "{{le}}", fmt="heatmap")],
        w=12,
    )
    b.bars(
        "Probe outcomes",
        "Round-trip probes per outcome and route: delivered, late, lost, junk, send_failed, receive_failed. "
        "Anything but delivered spends error budget.",
        "short",
        [target(_rate_sum("route, result", "mail_roundtrip_probes_total"), "{{route}} {{result}}")],
        w=12,
    )
    b.timeseries(
        "Per-hop delay",
        "Delay of each hop of the last delivered probe, from its Received headers. The slow hop is the one "
        "to look at when the round trip is slow.",
        "s",
        [target(sel("mail_roundtrip_hop_delay_seconds"), "{{route}} {{hop}}")],
    )
    b.timeseries(
        "Server delivery time",
        "Delivery time of the last probe according to the Received header of the last hop, per route.",
        "s",
        [target(sel("mail_roundtrip_server_delivery_seconds"), "{{route}}")],
    )
    b.timeseries(
        "Time since last delivered probe",
        "Seconds since a probe of each route was last delivered in time.",
        "s",
        [target(f"time() - {sel('mail_roundtrip_last_success_timestamp_seconds')}", "{{route}}")],
    )
    verdict_row(b)
    b.row("Queues")
    b.timeseries(
        "Queued messages per source",
        "Messages in all queues of each queue source (MTA or spool).",
        "short",
        [target(_by("source", sel("mail_queue_messages"), "sum"), "{{source}}")],
    )
    b.timeseries(
        "Queued messages per queue",
        "Messages in each queue of each source (incoming, active, deferred, hold ...).",
        "short",
        [target(_by("source, queue", sel("mail_queue_messages"), "sum"), "{{source}}/{{queue}}")],
    )
    b.timeseries(
        "Queue size",
        "Bytes in each queue of each source.",
        "bytes",
        [target(_by("source, queue", sel("mail_queue_size_bytes"), "sum"), "{{source}}/{{queue}}")],
    )
    b.bargauge(
        "Queue age distribution",
        "Messages queued now by age (cumulative buckets of the gauge histogram mail_queue_message_age_seconds). "
        "Mail in the high buckets has been waiting too long.",
        "short",
        [
            target(
                _by("le", sel("mail_queue_message_age_seconds_bucket"), "sum"),
                "{{le}}",
                instant=True,
                fmt="heatmap",
            )
        ],
        options={"displayMode": "gradient", "orientation": "vertical", "reduceOptions": _last()},
    )
    b.timeseries(
        "Oldest queued message",
        "Age of the oldest message in each queue.",
        "s",
        [target(_by("source, queue", sel("mail_queue_oldest_message_age_seconds")), "{{source}}/{{queue}}")],
    )
    b.states(
        "Queue sources readable",
        "Whether the last read of each queue source succeeded. A failed read leaves the queue figures stale.",
        "bool_yes_no",
        [target(sel("mail_queue_up"), "{{source}}")],
        steps=thresholds((None, "red"), (1, "green")),
    )
    b.bargauge(
        "Deferral reasons",
        "Deferred messages by classified reason (connection refused, timeout, 4xx reply ...).",
        "short",
        [target(_by("source, reason", sel("mail_queue_deferred_reason_messages"), "sum"), "{{source}} {{reason}}")],
        w=12,
    )
    b.bargauge(
        "Top deferred destinations",
        "Deferred messages by destination domain (the exporter keeps the top N, the rest as other).",
        "short",
        [
            target(
                f"topk(10, {_by('domain', sel('mail_queue_deferred_destination_messages'), 'sum')})",
                "{{domain}}",
                instant=True,
            )
        ],
        w=12,
    )
    logs_row(b)
    return b


def _series_colour(regex: str, colour: str) -> Json:
    """A field override: the series whose name matches ``regex`` in a fixed colour."""
    return {
        "matcher": {"id": "byRegexp", "options": regex},
        "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": colour}}],
    }


def verdict_row(b: Board) -> None:
    """The receiving side's verdict on the round-trip probes found (docs/metrics.md): its
    Authentication-Results (routes with receive.authserv_id) and its spam filter."""
    auth = "mail_roundtrip_auth_result"
    b.row("Receiver's verdict")
    b.bars(
        "Authentication results",
        "Probes found per route, by the receiver's result per method (spf, dkim, dmarc, and arc when stated), "
        "read from its own Authentication-Results header: only routes with receive.authserv_id. Anything but "
        "pass needs a look: the SPF, DKIM and DMARC alerts fire when more than a quarter of an hour's probes "
        "fail. All none at once: the receiver wrote no header (MailRoundTripNoAuthResults).",
        "short",
        [
            target(
                _rate_sum("route, method, result", "mail_roundtrip_auth_results_total"),
                "{{route}} {{method}}={{result}}",
            )
        ],
        w=12,
    )
    b.panels[-1]["fieldConfig"]["overrides"] = [
        _series_colour(".*=pass$", "green"),
        _series_colour(".*=(fail|permerror)$", "red"),
        _series_colour(".*=(softfail|temperror)$", "orange"),
    ]
    b.bars(
        "Spam verdicts",
        "Probes found per route, by the receiver's spam filter verdict: ham, spam, or none (no spam filter "
        "header: X-Spam-Flag, X-Spam-Status, X-Spam, X-Rspamd-Action, Microsoft 365 SCL). Spam here with the "
        "probe in the inbox is a tagged message; in a junk folder it is also a junk outcome. "
        "MailRoundTripMarkedSpam fires above 10% over an hour.",
        "short",
        [target(_rate_sum("route, verdict", "mail_roundtrip_spam_verdicts_total"), "{{route}} {{verdict}}")],
        w=12,
    )
    b.panels[-1]["fieldConfig"]["overrides"] = [
        _series_colour(".* ham$", "green"),
        _series_colour(".* spam$", "red"),
    ]
    b.table(
        "Newest authentication results",
        "The receiver's result per route and method for the newest probe found (mail_roundtrip_auth_result). "
        "DKIM none is an unsigned probe; SPF neutral or none and DMARC none are what the domain publishes "
        "(no record, ?all), and the alerts do not count them.",
        [target(_by("route, method, result", sel(auth)) + " == 1")],
        {},
        w=8,
    )
    b.table(
        "Newest verdict per route",
        "For the newest probe found per route: whether it carried the receiver's Authentication-Results "
        "(missing: the receiver did not verify, or receive.authserv_id is wrong), its DKIM signature (aligned "
        "with the From domain, passing but not aligned, or no passing signature), the From domain's DMARC "
        "policy and the disposition the receiver applied, as it reported them (columns policy and disposition: "
        "none, quarantine, reject, unknown), and the spam filter's verdict (column verdict: ham, spam, none).",
        [
            target(_by("route", sel("mail_roundtrip_auth_header_present"))),
            target(
                _by(
                    "route",
                    f"{sel('mail_roundtrip_dkim_aligned')} + on (job, instance, route) "
                    + sel(auth, 'method="dkim",result="pass"'),
                )
            ),
            target(_by("route, policy", sel("mail_roundtrip_dmarc_policy")) + " == 1"),
            target(_by("route, disposition", sel("mail_roundtrip_dmarc_disposition")) + " == 1"),
            target(_by("route, verdict", sel("mail_roundtrip_spam_verdict")) + " == 1"),
        ],
        {"A": "A-R header", "B": "DKIM"},
        overrides=[
            _column("A-R header", _mapped(("0", "missing", "red"), ("1", "present", "green")), _CELL_COLOURED),
            _column(
                "DKIM",
                _mapped(("0", "no pass", None), ("1", "not aligned", "orange"), ("2", "aligned", "green")),
                _CELL_COLOURED,
            ),
        ],
        w=10,
    )
    b.timeseries(
        "Spam score",
        "The spam filter's score of the newest probe found, per route, when the receiver gives one "
        "(X-Spam-Status score=, X-Rspamd-Score, or the Microsoft 365 SCL). Scales differ per filter: "
        "SpamAssassin marks spam from 5 by default, rspamd adds a header from 6, SCL 5 and above is spam. "
        "A score creeping up is a warning before the verdict flips.",
        "none",
        [target(_by("route", sel("mail_roundtrip_spam_score")), "{{route}}")],
        w=6,
    )


def _or_zero(expr: str, fallback: str) -> str:
    """``expr``, or 0 for every series of ``fallback`` that ``expr`` lacks (no event yet is 0, not no data)."""
    return f"({expr} or 0 * {fallback})"


def logs_row(b: Board) -> None:
    """Mail flow from the logs (log sources of the exporter config, docs/logs.md)."""
    deliveries = "mail_log_deliveries_total"
    every = _rate_sum("source", deliveries, fn="rate")
    lines = "mail_log_lines_total"
    b.row("Mail flow from logs")
    b.timeseries(
        "Deliveries by status",
        "Delivery attempts per second logged by each log source, per recipient, by status: sent, deferred "
        "(to be retried), bounced, expired. Every retry of a deferred recipient counts as an attempt.",
        "mps",
        [target(_rate_sum("source, status", deliveries, fn="rate"), "{{source}} {{status}}")],
    )
    b.timeseries(
        "Bounce and deferral ratio",
        "Bounced recipients among finished attempts (sent, bounced, expired), and deferred attempts among all "
        "attempts, per log source. MailBounceRateHigh and MailDeferralRateHigh alert on the 1-hour ratios.",
        "percentunit",
        [
            target(
                _or_zero(_rate_sum("source", deliveries, 'status="bounced"', fn="rate"), every)
                + " / "
                + _rate_sum("source", deliveries, 'status!="deferred"', fn="rate"),
                "bounced {{source}}",
            ),
            target(
                _or_zero(_rate_sum("source", deliveries, 'status="deferred"', fn="rate"), every) + " / " + every,
                "deferred {{source}}",
            ),
        ],
        extra_defaults={"min": 0, "max": 1},
    )
    b.timeseries(
        "Delivery delay p95 by stage",
        "95th percentile of the real delay of delivered mail, all transports, by stage: before_queue, in_queue, "
        "connection, transmission (Postfix delays=a/b/c/d) and total (delay=). The stage that grows is where the "
        "time goes.",
        "s",
        [
            target(
                "histogram_quantile(0.95, "
                + _rate_sum("source, stage, le", "mail_log_delivery_delay_seconds_bucket", fn="rate")
                + ")",
                "{{source}} {{stage}}",
            )
        ],
    )
    b.timeseries(
        "Rejects by reason",
        "SMTP rejects per second by log source and reason class (Postfix smtpd NOQUEUE rejects: unknown user, "
        "relay denied, blocklist, policy, greylist ...; Exim rejects). A sudden rise is MailSmtpRejectSpike.",
        "eps",
        [
            target(
                _rate_sum("source, reason", "mail_postfix_smtpd_rejects_total", fn="rate")
                + " or "
                + _rate_sum("source, reason", "mail_exim_rejects_total", fn="rate"),
                "{{source}} {{reason}}",
            )
        ],
    )
    logins = "mail_dovecot_logins_total"
    sasl = _rate_sum("source", "mail_postfix_smtpd_sasl_failures_total", fn="rate")
    b.timeseries(
        "Authentication failures by protocol",
        "Failed logins per second by log source and protocol: Postfix SASL failures as smtp, Dovecot logins "
        "that failed with a wrong password (reason auth_failed) by protocol (imap, pop3, submission ...); 0 for "
        "a protocol with logins but no failure. A spike is MailAuthFailureSpike (password guessing).",
        "eps",
        [
            target(
                f'label_replace({sasl}, "protocol", "smtp", "", "") or '
                + _or_zero(
                    _rate_sum("source, protocol", logins, 'result="failure",reason="auth_failed"', fn="rate"),
                    _rate_sum("source, protocol", logins, fn="rate"),
                ),
                "{{source}} {{protocol}}",
            )
        ],
    )
    tls = _rate_sum("source, direction", "mail_postfix_tls_connections_total", fn="rate")
    b.timeseries(
        "TLS connections by protocol version",
        "TLS connections per second established by Postfix, by log source, direction (inbound: smtpd; outbound: "
        "the smtp client) and protocol version, and failed TLS handshakes by direction (0 when none failed). "
        "Old versions still in use show here before they are switched off.",
        "eps",
        [
            target(
                _rate_sum("source, direction, protocol", "mail_postfix_tls_connections_total", fn="rate"),
                "{{source}} {{direction}} {{protocol}}",
            ),
            target(
                _or_zero(_rate_sum("source, direction", "mail_postfix_tls_failures_total", fn="rate"), tls),
                "{{source}} {{direction}} failed",
            ),
        ],
    )
    b.states(
        "Log sources readable",
        "Whether the last read of each log source succeeded (mail_log_up). The reason of a failure (missing, "
        "permission ...) is on the exporter's status page.",
        "bool_yes_no",
        [target(sel("mail_log_up"), "{{source}}")],
        w=6,
        steps=thresholds((None, "red"), (1, "green")),
    )
    b.timeseries(
        "Log lines read by program",
        "Log lines read per second by log source and program class (postfix, exim, dovecot, other, malformed).",
        "cps",
        [target(_rate_sum("source, program", lines, fn="rate"), "{{source}} {{program}}")],
        w=6,
    )
    per_source = _rate_sum("source", lines, fn="rate")
    b.timeseries(
        "Log lines not understood",
        "Share of the lines of each known program that its parser did not understand, and share of malformed "
        "lines (not log lines at all), per log source. A jump is a changed log format: "
        "MailLogLinesNotUnderstood.",
        "percentunit",
        [
            target(
                _or_zero(
                    _rate_sum("source, program", "mail_log_lines_unparsed_total", fn="rate"),
                    _rate_sum("source, program", lines, 'program=~"postfix|exim|dovecot"', fn="rate"),
                )
                + " / "
                + _rate_sum("source, program", lines, fn="rate"),
                "{{source}} {{program}}",
            ),
            target(
                _or_zero(_rate_sum("source", lines, 'program="malformed"', fn="rate"), per_source) + " / " + per_source,
                "{{source}} malformed",
            ),
        ],
        w=6,
        extra_defaults={"min": 0},
    )
    b.timeseries(
        "Age of the newest log line",
        "Time since the newest line of each log source was written (its own timestamp). It grows while nothing "
        "is logged; MailLogSourceStale fires above log_stale_after (1 hour by default).",
        "s",
        [target(f"time() - {sel('mail_log_last_line_timestamp_seconds')}", "{{source}}")],
        w=6,
        steps=thresholds((None, "green"), (3600, "orange")),
    )


def continuity() -> Board:
    b = Board("continuity", "Mail: continuity", "Incidents, MTTR, MTBF, availability, RPO, RTO, drills, maintenance.")
    b.row("Recovery and availability")
    b.timeseries(
        "MTTR vs target",
        "Mean time to recover of each service over each window, against its MTTR objective (dashed).",
        "s",
        [
            target(one("mail_mttr_seconds"), "{{service}} {{window}}"),
            target(one("mail_mttr_target_seconds"), "{{service}} target"),
        ],
    )
    b.timeseries(
        "MTBF",
        "Mean time between failures of each service over each window. Shorter is worse.",
        "s",
        [target(one("mail_mtbf_seconds"), "{{service}} {{window}}")],
    )
    b.timeseries(
        "Availability vs target",
        "Availability of each service over each window (maintenance excluded) against its objective.",
        "percentunit",
        [
            target(one("mail_availability_ratio"), "{{service}} {{window}}"),
            target(one("mail_availability_target_ratio"), "{{service}} target"),
        ],
        extra_defaults={"decimals": 4},
    )
    b.bars(
        "Incidents opened",
        "Incidents opened per service and severity (increase of mail_incidents_total).",
        "short",
        [target(_rate_sum("service, severity", "mail_incidents_total", replicated=True), "{{service}} {{severity}}")],
    )
    b.timeseries(
        "Open incidents and oldest",
        "Incidents open now per service (left) and the age of the oldest open incident (right).",
        "short",
        [
            target(_by("service", one("mail_incidents_open"), "sum"), "open {{service}}"),
            target(one("mail_incident_oldest_open_seconds"), "oldest {{service}}"),
        ],
    )
    b.panels[-1]["fieldConfig"]["overrides"] = [
        {
            "matcher": {"id": "byFrameRefID", "options": "B"},
            "properties": [{"id": "unit", "value": "s"}, {"id": "custom.axisPlacement", "value": "right"}],
        }
    ]
    b.timeseries(
        "Downtime per window",
        "Downtime of each service over each window, maintenance excluded.",
        "s",
        [target(one("mail_downtime_seconds"), "{{service}} {{window}}")],
    )
    b.row("Recovery point and time")
    b.timeseries(
        "RPO estimate vs target",
        "Estimated data loss window of each dataset against its recovery point objective.",
        "s",
        [
            target(one("mail_rpo_estimate_seconds"), "{{dataset}} estimate"),
            target(one("mail_rpo_target_seconds"), "{{dataset}} target"),
        ],
    )
    b.timeseries(
        "Backup age",
        "Time since the newest good backup of each dataset and source.",
        "s",
        [target(f"time() - {one('mail_backup_last_success_timestamp_seconds')}", "{{dataset}}/{{backup}}")],
    )
    b.timeseries(
        "Replication lag",
        "Replication lag of each replica: a canary written on the primary and seen on the replica.",
        "s",
        [target(one("mail_replication_lag_seconds"), "{{dataset}}/{{replica}}")],
    )
    b.timeseries(
        "RTO estimate vs target",
        "Estimated recovery time of each service against its recovery time objective.",
        "s",
        [
            target(one("mail_rto_estimate_seconds"), "{{service}} estimate"),
            target(one("mail_rto_target_seconds"), "{{service}} target"),
        ],
    )
    b.row("Drills, maintenance and notifications")
    b.bargauge(
        "Time since last drill",
        "Time since the last failover or restore drill of each service (alerts labelled drill=true). "
        "A service never drilled shows the time since 1970.",
        "s",
        [target(f"time() - {one('mail_drill_last_timestamp_seconds')}", "{{service}}", instant=True)],
        steps=thresholds((None, "green"), (90 * 86400, "red")),
    )
    b.states(
        "Maintenance windows",
        "1 while a planned maintenance window of the service is open: alerts then count as maintenance.",
        "bool_yes_no",
        [target(one("mail_maintenance_active"), "{{service}}")],
        steps=thresholds((None, "green"), (1, "blue")),
    )
    b.bars(
        "Alertmanager notifications",
        "Alertmanager notifications received by the exporter, by outcome. Anything but accepted means "
        "incidents are being missed.",
        "short",
        [target(_rate_sum("result", "mail_webhook_notifications_total"), "{{result}}")],
    )
    return b


def domain() -> Board:
    b = Board(
        "domain",
        "Mail: domain and endpoint detail",
        "Per domain, MX and endpoint: up, phases, TLS, transport policy, DNSSEC, DNS, DNSBL.",
    )
    b.query_variable("domain", f"label_values({sel('mail_mx_records')}, domain)")
    b.query_variable("check", f"label_values({sel('mail_probe_phase_duration_seconds')}, check)")
    dom = 'domain=~"$domain"'
    chk = 'check=~"$check"'
    b.row("MX and endpoints")
    b.timeseries(
        "MX hosts healthy vs published",
        "MX hosts of the domain accepting mail, against the MX records published and the wanted minimum.",
        "short",
        [
            target(sel("mail_mx_healthy", dom), "{{domain}} healthy"),
            target(sel("mail_mx_records", dom), "{{domain}} published"),
            target(sel("mail_mx_min_healthy", dom), "{{domain}} wanted"),
        ],
    )
    b.states(
        "SMTP up",
        "Whether banner, EHLO and (if configured) STARTTLS and AUTH succeeded, per MX host and SMTP endpoint "
        "(check is the domain for MX hosts, the endpoint name otherwise).",
        "bool_yes_no",
        [target(sel("mail_smtp_up", chk), "{{check}} {{target}}")],
        steps=thresholds((None, "red"), (1, "green")),
    )
    b.states(
        "IMAP up",
        "Whether greeting, TLS, LOGIN and SELECT succeeded, per IMAP endpoint.",
        "bool_yes_no",
        [target(sel("mail_imap_up", chk), "{{check}} {{target}}")],
        steps=thresholds((None, "red"), (1, "green")),
    )
    b.timeseries(
        "Probe phase durations",
        "Duration of each phase (connect, banner, ehlo, starttls, auth ...) of the last probe per target. "
        "The phase that grows is where the time goes.",
        "s",
        [target(sel("mail_probe_phase_duration_seconds", chk), "{{target}} {{phase}}")],
        w=12,
    )
    b.bars(
        "Probe failures by reason",
        "Failed probes per target and reason (refused, timeout, tls, auth ...).",
        "short",
        [target(_rate_sum("check, target, reason", "mail_probe_failures_total", chk), "{{target}} {{reason}}")],
        w=12,
    )
    b.timeseries(
        "SMTP reply code",
        "Last SMTP reply code seen in the dialog with each target.",
        "none",
        [target(sel("mail_smtp_reply_code", chk), "{{target}}")],
    )
    b.row("TLS")
    b.bargauge(
        "TLS certificate days left",
        "Days until the leaf certificate of each target expires (present even when the certificate is invalid).",
        "d",
        [
            target(
                f"({sel('mail_tls_cert_expiry_timestamp_seconds', chk)} - time()) / 86400",
                "{{target}}",
                instant=True,
            )
        ],
        w=12,
        steps=thresholds((None, "red"), (7, "orange"), (21, "green")),
    )
    b.states(
        "TLS certificate valid",
        "Whether the certificate chain and host name of each target verify.",
        "bool_yes_no",
        [target(sel("mail_tls_cert_valid", chk), "{{target}}")],
        w=12,
        steps=thresholds((None, "red"), (1, "green")),
    )
    b.row("Transport policy and DNSSEC")
    policy = sel("mail_mx_policy", dom)
    b.table(
        "MX transport policy",
        "Per MX host: the policy it is judged under (dane, mta_sts_enforce, mta_sts_testing, opportunistic, strict), "
        "whether it meets its domain's published policy (mail_mx_policy_ok; also in testing mode, and 1 when "
        "nothing is published), and whether its certificate chain matches its DNSSEC-validated TLSA records "
        "(no TLSA: the host has none). A failure under dane, mta_sts_enforce or strict makes the MX unhealthy.",
        [
            target(_by("domain, mx, policy", policy)),
            target(_by("domain, mx", sel("mail_mx_policy_ok", dom), "min")),
            target(f"{_by('domain, mx', sel('mail_mx_tlsa_match', dom), 'min')} or -1 * {_by('domain, mx', policy)}"),
        ],
        {"B": "policy ok", "C": "TLSA match"},
        overrides=[
            _column("policy ok", _mapped(("0", "fails", "red"), ("1", "ok", "green")), _CELL_COLOURED),
            _column(
                "TLSA match",
                _mapped(("-1", "no TLSA", None), ("0", "mismatch", "red"), ("1", "match", "green")),
                _CELL_COLOURED,
            ),
        ],
    )
    b.table(
        "MTA-STS policy",
        "Per domain with an MTA-STS policy in force: its mode (enforce, testing, none), whether the last fetch "
        "of https://mta-sts.<domain>/.well-known/mta-sts.txt succeeded (a failed fetch keeps the cached policy), "
        "the time since the policy in force was fetched, and its max_age (how long senders cache it).",
        [
            target(_by("domain, mode", sel("mail_mta_sts_policy_mode", dom)) + " == 1"),
            target(_by("domain", sel("mail_mta_sts_policy_fetch_ok", dom), "min")),
            target(_by("domain", sel("mail_mta_sts_policy_age_seconds", dom))),
            target(_by("domain", sel("mail_mta_sts_policy_max_age_seconds", dom))),
        ],
        {"B": "fetch ok", "C": "policy age", "D": "max_age"},
        overrides=[
            _column("fetch ok", _mapped(("0", "failing", "red"), ("1", "ok", "green")), _CELL_COLOURED),
            _column("policy age", _CELL_SECONDS),
            _column("max_age", _CELL_SECONDS),
        ],
    )
    b.table(
        "DNSSEC per record",
        "Per checked record (mx, mta_sts, tlsa:<mx host>): validated is the AD bit from the validating resolver "
        "(no for an unsigned zone, and always no behind a resolver that does not validate); bogus is SERVFAIL "
        "while the same query with checking disabled is answered: validating senders refuse the record.",
        [
            target(_by("domain, record", sel("mail_dns_dnssec_validated", dom), "min")),
            target(_by("domain, record", sel("mail_dns_dnssec_bogus", dom))),
        ],
        {"A": "validated", "B": "bogus"},
        overrides=[
            _column("validated", _mapped(("0", "no", None), ("1", "yes", "green")), _CELL_COLOURED),
            _column("bogus", _mapped(("0", "no", "green"), ("1", "BOGUS", "red")), _CELL_COLOURED),
        ],
    )
    b.row("DNS and DNSBL")
    b.states(
        "DNS records",
        "Whether each DNS record checked (MX, SPF, DMARC, MTA-STS, TLS-RPT, DKIM) is present and well formed.",
        "bool_yes_no",
        [target(sel("mail_dns_record_ok", dom), "{{domain}} {{record}}")],
        steps=thresholds((None, "red"), (1, "green")),
    )
    b.states(
        "DNSBL listings",
        "1 while an address of the domain (MX or sending IP) is listed on a DNS blocklist.",
        "bool_yes_no",
        [target(sel("mail_dnsbl_listed", dom), "{{address}} on {{zone}}")],
        steps=thresholds((None, "green"), (1, "red")),
    )
    b.bars(
        "DNSBL lookup errors",
        "DNSBL lookups that failed or returned a blocklist error code, per zone and reason. "
        "Listings are unknown while lookups fail.",
        "short",
        [target(_rate_sum("zone, reason", "mail_dnsbl_errors_total", dom), "{{zone}} {{reason}}")],
    )
    return b


BUILDERS: dict[str, Callable[[], Board]] = {
    "overview": overview,
    "delivery": delivery,
    "continuity": continuity,
    "domain": domain,
}


def render() -> dict[Path, str]:
    """Every dashboard file and its text."""
    out = {}
    for key, build in BUILDERS.items():
        board = build().to_json()
        out[HERE / f"{UIDS[key]}.json"] = json.dumps(board, indent=2, sort_keys=True) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed dashboard differs")
    args = parser.parse_args(argv)
    drift = []
    for path, text in render().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if args.check:
            drift.append(path.name)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(HERE.parent)}")
    if drift:
        print(f"dashboards out of date: {', '.join(drift)}; run: python dashboards/build.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
