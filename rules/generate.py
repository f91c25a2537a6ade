#!/usr/bin/env python3
"""Generate the Prometheus rules of mail-continuity-exporter.

This file is the ONE place for thresholds, durations and selectors.  The rule files
next to it are generated from it and committed; CI fails when they drift.

    python rules/generate.py            # write rules/*.rules.yml and the alert table in docs/alerts.md
    python rules/generate.py --check    # exit 1 (with a diff) when a committed file differs
    python rules/generate.py --objective 0.9999 --out-dir /etc/prometheus/rules/mail
                                        # the same pack for another SLO objective, written elsewhere

To change a threshold, edit :class:`Settings` (or ``SETTINGS`` at the bottom of the
settings section), run ``python rules/generate.py`` and commit the result.  The
objective of the round-trip SLO defaults to 99.9%; docs/alerts.md explains how to
choose 99.99% or 99.999% and what that costs.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "rules"
ALERTS_DOC = ROOT / "docs" / "alerts.md"

RECORDING_FILE = "mail-recording.rules.yml"
ALERTS_FILE = "mail-alerts.rules.yml"
SLO_FILE = "mail-slo.rules.yml"

# ======================================================================================
# Settings: edit here.
# ======================================================================================

#: Where the runbooks live; each alert links to ``RUNBOOK_BASE#<alertname in lower case>``.
RUNBOOK_BASE = "https://github.com/mail-continuity-exporter/mail-continuity-exporter/blob/main/docs/runbooks.md"

#: Grafana dashboards by uid (built in dashboards/ with these stable uids).
DASHBOARDS = MappingProxyType(
    {
        "overview": "mce-overview",
        "delivery": "mce-delivery",
        "continuity": "mce-continuity",
        "domain": "mce-domain",
    }
)


@dataclass(frozen=True)
class BurnAlert:
    """One multi-window, multi-burn-rate alert (Google SRE workbook, chapter 5)."""

    name: str
    long_window: str
    short_window: str
    factor: float
    severity: str
    for_: str


@dataclass(frozen=True)
class Settings:
    # --- selectors ---------------------------------------------------------------------
    #: Matcher added to every selector: which Prometheus job scrapes the exporter.
    #: Use e.g. 'job=~"mail.*"' for several jobs, or "" for no job matcher at all.
    job_selector: str = 'job="mail"'
    #: Grafana base URL; dashboards are linked as ``<base>/<uid>?var-job=..&var-instance=..``.
    dashboard_base: str = "https://grafana.example.com/d"
    #: MX probe targets look like ``mx1.example.com[192.0.2.1]:25``; named endpoints do not.
    mx_target_regex: str = r".+\[.+\]:[0-9]+"
    #: Extra matchers for MailTlsCertificateInvalid, e.g. 'check!="lb-vip"' to leave out
    #: endpoints configured with ``verify: false`` on purpose.
    tls_invalid_matchers: str = ""
    #: Labels that tell the replicas of one exporter apart: an HA pair (or more) with the same
    #: config on one PostgreSQL store differs only by ``instance`` (and ``pod`` under the
    #: Prometheus Operator).  The replicas export the same continuity figures (incidents,
    #: objectives, maintenance) and measure the same datasets (backups, replication), so the
    #: alerts over those families take ``max without (<these labels>)`` before comparing: one
    #: alert per condition for the pair, and a failover (one replica's series going away)
    #: neither resolves an alert nor restarts its ``for``.  Alerts about vantage points (MX,
    #: SMTP, IMAP, TLS, DNS, round trips) and per-host sources (queues, logs) stay per instance.
    replica_labels: tuple[str, ...] = ("instance", "pod")

    # --- round-trip SLO ----------------------------------------------------------------
    #: The objective of the round-trip success SLI (delivered / all probes), 30-day window.
    slo_objective: float = 0.999
    #: Windows of the SLI recording rules (and of the MX availability averages).
    sli_windows: tuple[str, ...] = ("5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d")
    #: The four alerts of the SRE workbook: page on 14.4x (1h/5m) and 6x (6h/30m),
    #: ticket on 3x (1d/2h) and 1x (3d/6h).
    burn_alerts: tuple[BurnAlert, ...] = (
        BurnAlert("MailRoundTripBudgetBurnFast", "1h", "5m", 14.4, "critical", "2m"),
        BurnAlert("MailRoundTripBudgetBurnMedium", "6h", "30m", 6, "critical", "5m"),
        BurnAlert("MailRoundTripBudgetBurnSlow", "1d", "2h", 3, "warning", "30m"),
        BurnAlert("MailRoundTripBudgetBurnSteady", "3d", "6h", 1, "warning", "1h"),
    )
    #: A burn alert also needs this many failed probes in its long window.  Probes are
    #: sparse (one a minute): at 99.9% a single failed probe in an hour is already a
    #: 16x burn, which must not page on its own.
    slo_min_failed_probes: int = 3

    # --- exporter ----------------------------------------------------------------------
    #: Check kinds whose failure always shows in a more specific alert (an ``_up`` gauge,
    #: a record, a listing...).  MailExporterCheckFailing covers the other kinds (mx when
    #: MX discovery itself fails, reconcile, and any kind added later).
    check_kinds_with_own_alerts: tuple[str, ...] = (
        "smtp",
        "imap",
        "dns",
        "dnsbl",
        "queue",
        "route",
        "backup",
        "replica",
        "log",
    )
    check_errors_window: str = "15m"
    #: Checks start this late at the 99th percentile over ``start_lag_window``: the exporter is
    #: past its ceiling (docs/scaling.md).
    start_lag_p99_seconds: float = 1.0
    start_lag_window: str = "10m"
    webhook_errors_window: str = "15m"

    # --- TLS and DNS -------------------------------------------------------------------
    tls_warning_days: int = 21
    tls_critical_days: int = 7
    dnsbl_errors_window: str = "30m"
    #: More than this many failed DNSBL lookups per domain and zone in the window.
    dnsbl_errors_max: int = 2

    # --- queues ------------------------------------------------------------------------
    #: Queues whose depth is a backlog: Postfix "deferred"; "queue" is Exim's single
    #: queue and the default label of directory and command sources.
    backlog_queues: tuple[str, ...] = ("deferred", "queue")
    backlog_messages: int = 500
    #: Growth of a backlog queue, messages per second (deriv over 15 minutes).
    growth_per_second: float = 0.1
    #: Oldest message older than this: the queue is not moving.  Queues not listed use
    #: ``stalled_default``; the hold queue is left out (MailQueueHeld covers it).
    stalled_after: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({"incoming": "15m", "maildrop": "15m", "active": "1h"})
    )
    stalled_default: str = "1d"

    # --- round trips -------------------------------------------------------------------
    latency_p95_seconds: float = 120
    latency_window: str = "30m"
    junk_ratio: float = 0.1
    junk_window: str = "1h"

    # --- the receiver's verdict on the probes (routes with receive.authserv_id) ---------
    #: The results that count as failing, per method: a matcher on the ``result`` label of
    #: mail_roundtrip_auth_results_total.  SPF: fail, softfail and the errors; neutral
    #: (``?all``) and none (no SPF record) are what the domain publishes, not a failure.
    #: DKIM: anything but pass; none is a probe that arrived unsigned (the signing path is
    #: broken), neutral a signature that could not be read.  DMARC: fail and the errors;
    #: none is no DMARC record (or a receiver that does not evaluate DMARC), a choice of the
    #: domain and not a failure.
    auth_failing_results: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType(
            {
                "spf": 'result=~"fail|softfail|temperror|permerror"',
                "dkim": 'result!="pass"',
                "dmarc": 'result=~"fail|temperror|permerror"',
            }
        )
    )
    #: A method is failing when more than this share of the probes found over
    #: ``auth_window`` had a failing result (a quarter of the mail failing is a problem; a
    #: route that fails every other probe fires too, where "the newest probe failed" would
    #: keep resetting the ``for``) ...
    auth_failure_ratio: float = 0.25
    auth_window: str = "1h"
    #: ... and at least this many of them (here and for the spam ratio): one or two failing
    #: probes of a route that probes every 15 minutes are not a trend.
    verdict_min_probes: int = 3
    #: The receiver's spam filter said spam for more than this share of the probes found
    #: over ``spam_window`` (at least ``verdict_min_probes`` of them).
    spam_ratio: float = 0.1
    spam_window: str = "1h"

    # --- continuity --------------------------------------------------------------------
    replication_lag_seconds: float = 300
    #: Incidents of services without an RTO target count as open too long after this;
    #: with an RTO target, the target is the limit.
    incident_open_default: str = "4h"
    mttr_window: str = "30d"
    availability_window: str = "30d"
    drill_max_age: str = "30d"

    # --- mail flow from the logs (docs/logs.md) --------------------------------------------
    #: Windows of the log recording rules: delivered rate, bounce and deferral ratios,
    #: delay percentiles, reject and authentication-failure rates.
    log_windows: tuple[str, ...] = ("5m", "1h")
    #: The window (one of ``log_windows``) that the bounce, deferral and delay alerts read.
    log_alert_window: str = "1h"
    #: Bounced recipients among finished delivery attempts (sent, bounced, expired) ...
    bounce_ratio: float = 0.05
    #: ... and at least this many bounced recipients in the window (one bounce of a
    #: handful of messages at night is not a trend).
    bounce_min: int = 10
    #: Deferred attempts among all delivery attempts (every retry counts) ...
    deferral_ratio: float = 0.25
    #: ... and at least this many deferred attempts in the window.
    deferral_min: int = 20
    #: 95th percentile of the real delivery delay of delivered mail, per stage of Postfix's
    #: delays=a/b/c/d (before_queue, in_queue, connection, transmission) and in total, in
    #: seconds.  A stage left out here is not alerted on.
    delay_p95_seconds: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType(
            {"total": 900, "before_queue": 60, "in_queue": 900, "connection": 30, "transmission": 60}
        )
    )
    #: ... and at least this many deliveries in the window (a percentile of three is noise).
    delay_min_deliveries: int = 20
    #: Spikes: the rate over the last 5 minutes above ``spike_factor`` times the rate over
    #: ``spike_baseline`` (ending 5 minutes ago), and above a floor in events per second.
    spike_factor: float = 5
    spike_baseline: str = "1d"
    #: Floor of MailSmtpRejectSpike: 0.2/s is 60 rejects in 5 minutes.
    reject_spike_min_per_second: float = 0.2
    #: Floor of MailAuthFailureSpike: 0.05/s is 15 failed logins in 5 minutes.
    auth_spike_min_per_second: float = 0.05
    #: TLS handshake failures among TLS handshakes, per direction (inbound: clients and
    #: scanners talking to smtpd; outbound: this server's smtp client), over ``tls_window`` ...
    tls_failure_ratio: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType({"inbound": 0.25, "outbound": 0.1})
    )
    tls_window: str = "15m"
    #: ... with at least this many failures in the window.
    tls_failure_min: int = 10
    #: A log source whose newest line is older than this is stale.  The newest line's own
    #: timestamp is used, so this must be longer than the quietest hour of the server: a
    #: small server may write nothing at night.  The exporter's own SMTP probes of a
    #: server write connect/disconnect lines to its log every probe interval, which keeps
    #: a monitored Postfix's log moving; raise this for a log that can be silent longer.
    log_stale_after: str = "1h"
    #: Lines not understood: unparsed lines of a program (and malformed lines) among the
    #: lines read, over ``unparsed_window`` ...
    unparsed_ratio: float = 0.05
    unparsed_window: str = "15m"
    #: ... with at least this many such lines in the window.
    unparsed_min: int = 20

    # --- for: durations, per alert --------------------------------------------------------
    for_durations: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType(
            {
                "MailExporterDown": "3m",
                "MailExporterAbsent": "15m",
                "MailExporterConfigReloadFailed": "5m",
                "MailExporterCheckFailing": "15m",
                "MailExporterCheckErrors": "5m",
                "MailExporterChecksStartLate": "15m",
                "MailWebhookNotificationsFailing": "10m",
                "MailExporterNoLeader": "2m",
                "MailExporterLeaderConflict": "5m",
                "MailMxDown": "5m",
                "MailMxAllDown": "3m",
                "MailMxRedundancyLow": "10m",
                "MailSmtpEndpointDown": "5m",
                "MailImapEndpointDown": "5m",
                "MailTlsCertificateExpiring": "15m",
                "MailTlsCertificateExpiryCritical": "15m",
                "MailTlsCertificateInvalid": "15m",
                "MailDnsRecordBroken": "15m",
                "MailMxTlsPolicyFailing": "10m",
                "MailMtaStsTestingWouldFail": "30m",
                "MailDaneTlsaMismatch": "5m",
                "MailMtaStsPolicyUnreachable": "30m",
                "MailDnssecBogus": "5m",
                "MailDnsblListed": "10m",
                "MailDnsblLookupsFailing": "30m",
                "MailQueueBacklog": "15m",
                "MailQueueGrowing": "30m",
                "MailQueueStalled": "15m",
                "MailQueueHeld": "30m",
                "MailQueueSourceDown": "5m",
                "MailRoundTripFailing": "15m",
                "MailRoundTripLatencyHigh": "15m",
                "MailRoundTripProbesInJunk": "15m",
                "MailRoundTripDmarcFailing": "10m",
                "MailRoundTripDmarcFailingReject": "5m",
                "MailRoundTripDkimFailing": "10m",
                "MailRoundTripSpfFailing": "10m",
                "MailRoundTripDkimNotAligned": "30m",
                "MailRoundTripNoAuthResults": "15m",
                "MailRoundTripMarkedSpam": "15m",
                "MailRpoAboveTarget": "15m",
                "MailBackupStale": "15m",
                "MailBackupSourceDown": "30m",
                "MailReplicationLagHigh": "15m",
                "MailReplicaDown": "15m",
                "MailRtoAboveTarget": "1h",
                "MailIncidentOpenTooLong": "1m",
                "MailMttrAboveTarget": "15m",
                "MailAvailabilityBelowTarget": "15m",
                "MailDrillStale": "1h",
                "MailDrillMissing": "1h",
                "MailMaintenanceActive": "0s",
                "MailBounceRateHigh": "15m",
                "MailDeferralRateHigh": "30m",
                "MailDeliveryDelayHigh": "15m",
                "MailSmtpRejectSpike": "10m",
                "MailAuthFailureSpike": "10m",
                "MailTlsHandshakeFailures": "15m",
                "MailLogSourceStale": "10m",
                "MailLogSourceDown": "5m",
                "MailLogLinesNotUnderstood": "15m",
            }
        )
    )
    #: Tests only: every ``for:`` set to this (e.g. "10s" for the end-to-end test).
    for_override: str | None = None
    #: Alerts whose ``for:`` ``for_override`` leaves as it is (the demo: a finding of its stack).
    for_override_except: frozenset[str] = frozenset()


#: The settings the committed files are generated from.
SETTINGS = Settings()

# ======================================================================================
# Helpers
# ======================================================================================

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_UNIT_WORDS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week"}


def seconds(duration: str) -> int:
    """``"15m"`` -> 900.  Only single-unit durations: that is all the settings use."""
    m = re.fullmatch(r"(\d+)([smhdw])", duration)
    if not m:
        raise ValueError(f"unsupported duration {duration!r} (use e.g. 30s, 15m, 1h, 1d)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def words(duration: str) -> str:
    """``"15m"`` -> ``"15 minutes"``, ``"1h"`` -> ``"1 hour"``."""
    m = re.fullmatch(r"(\d+)([smhdw])", duration)
    if not m:
        raise ValueError(f"unsupported duration {duration!r}")
    n, unit = int(m.group(1)), _UNIT_WORDS[m.group(2)]
    return f"{n} {unit}{'' if n == 1 else 's'}"


def number(value: float) -> str:
    """A PromQL literal without float noise: 0.1 -> "0.1", 300.0 -> "300"."""
    text = format(Decimal(repr(float(value))).normalize(), "f")
    return text


def one_minus(objective: float) -> str:
    """1 - objective, exactly: 0.999 -> "0.001" (not 0.0010000000000000009)."""
    return format((Decimal(1) - Decimal(repr(objective))).normalize(), "f")


def percent(objective: float) -> str:
    """0.999 -> "99.9%"."""
    return format((Decimal(repr(objective)) * 100).normalize(), "f") + "%"


def eq(label: str, value: str) -> str:
    return f'{label}="{value}"'


def ne(label: str, value: str) -> str:
    return f'{label}!="{value}"'


def match(label: str, regex: str) -> str:
    return f'{label}=~"{regex}"'


def nomatch(label: str, regex: str) -> str:
    return f'{label}!~"{regex}"'


def runbook(alert: str) -> str:
    return f"{RUNBOOK_BASE}#{alert.lower()}"


def results_text(matcher: str) -> str:
    """A ``result`` matcher in words: ``result=~"fail|softfail"`` -> "fail or softfail"."""
    m = re.fullmatch(r'result(=~|=|!=)"([a-z|]+)"', matcher)
    if m is None:
        return matcher
    op, values = m.groups()
    if op == "!=":
        return f"anything but {values}"
    *head, last = values.split("|")
    return f"{', '.join(head)} or {last}" if head else last


# ======================================================================================
# Rules
# ======================================================================================


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    severity: str
    summary: str
    description: str
    dashboard: str  # key of DASHBOARDS
    group: str
    for_: str | None = None  # None: from Settings.for_durations
    #: False for alerts without an ``instance`` label: over figures that every replica exports
    #: alike (aggregated with ``max without (replica_labels)``) or per job.  Their dashboard link
    #: selects every instance.
    per_instance: bool = True


class Builder:
    """Builds every group from a :class:`Settings`."""

    def __init__(self, s: Settings) -> None:
        if "instance" not in s.replica_labels:
            raise ValueError(f"replica_labels must include instance, got {s.replica_labels!r}")
        self.s = s

    # --- selectors ---------------------------------------------------------------------

    def sel(self, metric: str, *matchers: str) -> str:
        parts = [m for m in (self.s.job_selector, *matchers) if m]
        return f"{metric}{{{','.join(parts)}}}" if parts else metric

    def dedup(self, expr: str) -> str:
        """``expr`` once for all replicas: ``max without (instance, pod) (expr)``.

        Only for figures that every replica exports alike.  Over a counter or histogram
        buckets, ``expr`` is the ``rate``/``increase`` of each replica's series: aggregate after
        the rate, never take the rate of a max.
        """
        return f"max without ({', '.join(self.s.replica_labels)}) ({expr})"

    def one(self, metric: str, *matchers: str) -> str:
        """A gauge that every replica exports alike, deduplicated: ``max without (...) (metric{...})``."""
        return self.dedup(self.sel(metric, *matchers))

    def for_(self, alert: str, own: str | None = None) -> str:
        if self.s.for_override is not None and alert not in self.s.for_override_except:
            return self.s.for_override
        return own if own is not None else self.s.for_durations[alert]

    def dashboard_url(self, key: str, per_instance: bool = True) -> str:
        """The dashboard of the alert's job and instance; every instance ($__all) for an alert without one."""
        uid = DASHBOARDS[key]
        instance = "{{ $labels.instance }}" if per_instance else "$__all"
        return f"{self.s.dashboard_base}/{uid}?var-job={{{{ $labels.job }}}}&var-instance={instance}"

    def alert_rule(self, a: Alert) -> dict[str, Any]:
        rule: dict[str, Any] = {"alert": a.name, "expr": a.expr}
        f = self.for_(a.name, a.for_)
        if seconds(f) > 0:
            rule["for"] = f
        rule["labels"] = {"severity": a.severity}
        rule["annotations"] = {
            "summary": a.summary,
            "description": a.description,
            "runbook_url": runbook(a.name),
            "dashboard_url": self.dashboard_url(a.dashboard, a.per_instance),
        }
        return rule

    # --- recording rules ---------------------------------------------------------------

    def recording_groups(self) -> list[dict[str, Any]]:
        s = self.s
        probes = "mail_roundtrip_probes_total"
        roundtrip: list[dict[str, Any]] = []
        for w in s.sli_windows:
            roundtrip.append(
                {
                    "record": f"mail:roundtrip_success:ratio_rate{w}",
                    "expr": (
                        f"sum without (result) (rate({self.sel(probes, eq('result', 'delivered'))}[{w}]))\n"
                        f"/\n"
                        f"(sum without (result) (rate({self.sel(probes)}[{w}])) > 0)"
                    ),
                }
            )
        lw = s.latency_window
        for q in ("0.5", "0.95"):
            name = "p50" if q == "0.5" else "p95"
            roundtrip.append(
                {
                    "record": f"mail:roundtrip_latency_seconds:{name}_rate{lw}",
                    "expr": (
                        f"histogram_quantile({q}, rate({self.sel('mail_roundtrip_latency_seconds_bucket')}[{lw}]))\n"
                        f"and\n"
                        f"rate({self.sel('mail_roundtrip_latency_seconds_count')}[{lw}]) > 0"
                    ),
                }
            )
        mx: list[dict[str, Any]] = [
            {"record": "mail:mx_available:ratio", "expr": f"{self.sel('mail_mx_healthy')} >= bool 1"},
        ]
        for w in s.sli_windows:
            avg = f"avg_over_time(mail:mx_available:ratio[{w}])"
            mx.append({"record": f"mail:mx_available:ratio_avg{w}", "expr": avg})
        mx.append(
            {
                "record": "mail:mx_healthy:ratio",
                "expr": (
                    f"clamp_max({self.sel('mail_mx_healthy')} / on (job, instance, domain) group_left () "
                    f"({self.sel('mail_mx_records')} > 0), 1)"
                ),
            }
        )
        queues = [
            {
                "record": "mail:queue_messages:deriv15m",
                "expr": f"deriv({self.sel('mail_queue_messages', self.backlog_matcher())}[15m])",
            }
        ]
        return [
            {"name": "mail-sli-roundtrip", "rules": roundtrip},
            {"name": "mail-sli-mx", "rules": mx},
            {"name": "mail-queue-growth", "rules": queues},
            {"name": "mail-log-flow", "rules": self.log_recording_rules()},
        ]

    # --- mail flow from the logs -----------------------------------------------------------

    def log_recording_rules(self) -> list[dict[str, Any]]:
        """Per log source: delivered rate, bounce and deferral ratios, delay p95, rejects, auth failures."""
        s = self.s
        sel = self.sel
        deliveries = "mail_log_deliveries_total"
        per_source = "sum without (transport, status)"
        delay = "mail_log_delivery_delay_seconds"
        out: list[dict[str, Any]] = []
        for w in s.log_windows:
            every = f"{per_source} (rate({sel(deliveries)}[{w}]))"
            out.append(
                {
                    "record": f"mail:log_deliveries_sent:rate{w}",
                    "expr": f"{per_source} (rate({sel(deliveries, eq('status', 'sent'))}[{w}]))",
                }
            )
            # "or 0 * ...": a source with deliveries but no bounce yet has a ratio of 0, not none
            out.append(
                {
                    "record": f"mail:log_deliveries_bounced:ratio_rate{w}",
                    "expr": (
                        f"(\n  {per_source} (rate({sel(deliveries, eq('status', 'bounced'))}[{w}]))\n"
                        f"or\n  0 * {every}\n)\n/\n"
                        f"({per_source} (rate({sel(deliveries, ne('status', 'deferred'))}[{w}])) > 0)"
                    ),
                }
            )
            out.append(
                {
                    "record": f"mail:log_deliveries_deferred:ratio_rate{w}",
                    "expr": (
                        f"(\n  {per_source} (rate({sel(deliveries, eq('status', 'deferred'))}[{w}]))\n"
                        f"or\n  0 * {every}\n)\n/\n({every} > 0)"
                    ),
                }
            )
            out.append(
                {
                    "record": f"mail:log_delivery_delay_seconds:p95_rate{w}",
                    "expr": (
                        f"histogram_quantile(0.95, rate({sel(delay + '_bucket')}[{w}]))\n"
                        f"and\n"
                        f"rate({sel(delay + '_count')}[{w}]) > 0"
                    ),
                }
            )
        for w in (*s.log_windows, s.spike_baseline):
            out.append({"record": f"mail:log_smtp_rejects:rate{w}", "expr": self.rejects_rate(w)})
        for w in (*s.log_windows, s.spike_baseline):
            out.append({"record": f"mail:log_auth_failures:rate{w}", "expr": self.auth_failures_rate(w)})
        tw = s.tls_window
        failures = f"rate({sel('mail_postfix_tls_failures_total')}[{tw}])"
        out.append(
            {
                "record": f"mail:log_tls_failures:ratio_rate{tw}",
                "expr": (
                    f"{failures}\n/\n(\n  {failures}\n  +\n"
                    f"  (sum without (protocol) (rate({sel('mail_postfix_tls_connections_total')}[{tw}])) "
                    f"or 0 * {failures})\n"
                    f"  > 0\n)"
                ),
            }
        )
        uw = s.unparsed_window
        lines = "mail_log_lines_total"
        out.append(
            {
                "record": f"mail:log_lines_unparsed:ratio_rate{uw}",
                "expr": (
                    f"rate({sel('mail_log_lines_unparsed_total')}[{uw}])\n/\n(rate({sel(lines)}[{uw}]) > 0)\n"
                    f"or\n"
                    f"rate({sel(lines, eq('program', 'malformed'))}[{uw}])\n"
                    f"/ on (job, instance, source) group_left ()\n"
                    f"(sum without (program) (rate({sel(lines)}[{uw}])) > 0)"
                ),
            }
        )
        return out

    def rejects_rate(self, w: str) -> str:
        """SMTP rejects per second per source: Postfix smtpd NOQUEUE rejects, or Exim's rejects."""
        sel = self.sel
        return (
            f"sum without (code, reason) (rate({sel('mail_postfix_smtpd_rejects_total')}[{w}]))\n"
            f"or\n"
            f"sum without (reason) (rate({sel('mail_exim_rejects_total')}[{w}]))"
        )

    def auth_failures_rate(self, w: str) -> str:
        """Failed logins per second per source and protocol: Postfix SASL (smtp) and Dovecot.

        Only Dovecot's ``auth_failed`` counts: its other failure reasons are clients that gave
        up without a wrong password (``disconnected``, ``no_auth_attempts``, ``tls`` ...).
        """
        sel = self.sel
        failed = (eq("result", "failure"), eq("reason", "auth_failed"))
        return (
            f"label_replace(rate({sel('mail_postfix_smtpd_sasl_failures_total')}[{w}]), "
            f'"protocol", "smtp", "", "")\n'
            f"or\n"
            f"sum without (result, reason) (rate({sel('mail_dovecot_logins_total', *failed)}[{w}]))"
        )

    def backlog_matcher(self) -> str:
        queues = self.s.backlog_queues
        if len(queues) == 1:
            return eq("queue", queues[0])
        return match("queue", "|".join(queues))

    # --- SLO ---------------------------------------------------------------------------

    def slo_groups(self) -> list[dict[str, Any]]:
        s = self.s
        budget = one_minus(s.slo_objective)
        rules: list[dict[str, Any]] = []
        for w in s.sli_windows:
            rules.append(
                {
                    "record": f"mail:roundtrip_error_budget:burnrate{w}",
                    "expr": f"(1 - mail:roundtrip_success:ratio_rate{w}) / {budget}",
                }
            )
        last = s.sli_windows[-1]
        rules.append(
            {
                "record": f"mail:roundtrip_error_budget:remaining_ratio{last}",
                "expr": f"1 - mail:roundtrip_error_budget:burnrate{last}",
            }
        )
        rules.extend(self.alert_rule(a) for a in self.burn_alerts())
        return [{"name": "mail-slo-roundtrip", "rules": rules}]

    def burn_alerts(self) -> list[Alert]:
        """The multi-window, multi-burn-rate alerts of the round-trip SLO."""
        s = self.s
        last = s.sli_windows[-1]
        failed = self.sel("mail_roundtrip_probes_total", ne("result", "delivered"))
        out = []
        for b in s.burn_alerts:
            factor = number(b.factor)
            lasts = seconds(last) / 86400 / b.factor
            share = b.factor * seconds(b.long_window) / seconds(last)
            expr = (
                f"mail:roundtrip_error_budget:burnrate{b.long_window} > {factor}\n"
                f"and\n"
                f"mail:roundtrip_error_budget:burnrate{b.short_window} > {factor}\n"
                f"and on (job, instance, route)\n"
                f"sum without (result) (increase({failed}[{b.long_window}])) >= {s.slo_min_failed_probes}"
            )
            summary = (
                f"Mail round trips burn the {percent(s.slo_objective)} error budget more than {factor}x "
                f"the sustainable rate: at that rate it lasts {number(round(lasts, 1))} days."
            )
            description = (
                "Route {{ $labels.route }} (seen from {{ $labels.instance }}): "
                '{{ $value | printf "%.1f" }}x burn rate over the last '
                f"{words(b.long_window)} and above {factor}x over the last {words(b.short_window)}, with at least "
                f"{s.slo_min_failed_probes} failed probes. {number(round(share * 100, 1))}% of the {last} error "
                f"budget is spent in {words(b.long_window)} at this rate."
            )
            out.append(Alert(b.name, expr, b.severity, summary, description, "delivery", "slo", b.for_))
        return out

    # --- alerts ------------------------------------------------------------------------

    def alerts(self) -> list[Alert]:
        s = self.s
        sel = self.sel
        out: list[Alert] = []

        def add(
            name: str,
            group: str,
            severity: str,
            dashboard: str,
            expr: str,
            summary: str,
            description: str,
            *,
            per_instance: bool = True,
        ) -> None:
            out.append(Alert(name, expr, severity, summary, description, dashboard, group, per_instance=per_instance))

        def held(name: str) -> str:
            return words(self.for_(name)) if seconds(self.for_(name)) else "now"

        # --- the exporter ------------------------------------------------------------------
        g = "exporter"
        add(
            "MailExporterDown",
            g,
            "critical",
            "overview",
            f"{sel('up')} == 0",
            "Prometheus cannot scrape the mail-continuity-exporter: mail monitoring is blind.",
            "Scrapes of {{ $labels.instance }} (job {{ $labels.job }}) have failed for "
            f"{held('MailExporterDown')}. No check of this exporter is evaluated until it is back.",
        )
        add(
            "MailExporterAbsent",
            g,
            "warning",
            "overview",
            f"absent({sel('up')})",
            "No mail-continuity-exporter target is known to Prometheus.",
            f"Prometheus has had no target matching up{{{s.job_selector}}} for {held('MailExporterAbsent')}"
            ' (job "{{ $labels.job }}"): service discovery lost the exporter, so no mail alert can fire.',
        )
        add(
            "MailExporterConfigReloadFailed",
            g,
            "warning",
            "overview",
            f"{sel('mail_exporter_config_last_reload_successful')} == 0",
            "The mail-continuity-exporter failed to load its new configuration.",
            "The last configuration reload of {{ $labels.instance }} failed; it keeps running the previous "
            "configuration. The error is in its log, on its status page and in the answer to POST /-/reload.",
        )
        covered = "|".join(s.check_kinds_with_own_alerts)
        add(
            "MailExporterCheckFailing",
            g,
            "warning",
            "overview",
            (
                f"{sel('mail_exporter_check_success', nomatch('check', covered))} == 0\n"
                f"unless on (job, instance, check, name)\n"
                f'label_replace(label_replace({sel("mail_mx_records")} > 0, "name", "$1", "domain", "(.+)"),'
                f' "check", "mx", "", "")'
            ),
            "A mail check has failed for a while and no more specific alert explains it.",
            "Check {{ $labels.check }}/{{ $labels.name }} on {{ $labels.instance }} has failed every run for "
            f"{held('MailExporterCheckFailing')}. The reason is on the exporter's status page (/).",
        )
        add(
            "MailExporterCheckErrors",
            g,
            "warning",
            "overview",
            (
                f"sum without (result) (increase("
                f"{sel('mail_exporter_check_runs_total', eq('result', 'error'))}[{s.check_errors_window}])) > 0"
            ),
            "A mail check crashed: this is a bug in the exporter.",
            "Check {{ $labels.check }}/{{ $labels.name }} on {{ $labels.instance }} raised an unexpected error "
            f'{{{{ $value | printf "%.0f" }}}} times in the last {words(s.check_errors_window)}. '
            "The traceback is in the exporter's log; please report it.",
        )
        lag = s.start_lag_window
        add(
            "MailExporterChecksStartLate",
            g,
            "warning",
            "overview",
            (
                f"histogram_quantile(0.99, rate({sel('mail_exporter_check_start_lag_seconds_bucket')}[{lag}]))\n"
                f"> {number(s.start_lag_p99_seconds)}"
            ),
            "Checks start late: the exporter is past its ceiling, so results are older than their intervals.",
            "The 99th percentile of how late check runs start on {{ $labels.instance }} is "
            "{{ $value | humanizeDuration }} over the last "
            f"{words(lag)}: the event loop is saturated or every max_concurrency slot is taken.",
        )
        add(
            "MailWebhookNotificationsFailing",
            g,
            "warning",
            "continuity",
            (
                f"rate({sel('mail_webhook_notifications_total', ne('result', 'accepted'))}"
                f"[{s.webhook_errors_window}]) > 0"
            ),
            "The exporter rejects Alertmanager notifications: incidents are not being recorded.",
            "{{ $labels.instance }} answered Alertmanager notifications with result {{ $labels.result }} "
            f"for {held('MailWebhookNotificationsFailing')}. Incidents, MTTR and availability miss those alerts.",
        )
        # the lease of the once-only jobs (one PostgreSQL store shared by several exporters):
        # per job, since the replicas of a job share one lease
        leader = sel("mail_exporter_leader")
        add(
            "MailExporterNoLeader",
            g,
            "warning",
            "overview",
            f"max by (job) ({leader}) == 0",
            "No mail-continuity-exporter holds the lease of the once-only jobs: they are not running.",
            "The exporters of job {{ $labels.job }} are up but none has held the lease of the once-only jobs "
            f"for {held('MailExporterNoLeader')}: reconciliation with Alertmanager, promotion of maintenance "
            "overruns, incidents from check outages and the sweep of old probe mail are not running. The "
            "exporters' logs say why (usually the PostgreSQL store is unreachable); their status pages show "
            "the lease.",
            per_instance=False,
        )
        add(
            "MailExporterLeaderConflict",
            g,
            "warning",
            "overview",
            f"sum by (job) ({leader}) > 1",
            "Several mail-continuity-exporters of one job hold a lease: they write to different incident stores.",
            '{{ $value | printf "%.0f" }} exporters of job {{ $labels.job }} have each held the lease of the '
            f"once-only jobs for {held('MailExporterLeaderConflict')}. One store never grants it twice, so they "
            "use different stores (continuity.store.url, or SQLite files of their own): the incident history "
            "of the job is split, and its figures are wrong.",
            per_instance=False,
        )

        # --- MX, SMTP and IMAP ---------------------------------------------------------------
        g = "availability"
        mx_re = s.mx_target_regex.replace("\\", "\\\\")
        add(
            "MailMxDown",
            g,
            "warning",
            "domain",
            f"label_replace({sel('mail_smtp_up', match('target', mx_re))} == 0, " + '"domain", "$1", "check", "(.*)")',
            "An MX host of a mail domain does not accept mail.",
            "MX {{ $labels.target }} of {{ $labels.domain }} has failed its SMTP check (banner, EHLO, STARTTLS) "
            f"for {held('MailMxDown')}, seen from {{{{ $labels.instance }}}}. Senders fall back to the other MX hosts.",
        )
        add(
            "MailMxAllDown",
            g,
            "critical",
            "domain",
            f"{sel('mail_mx_healthy')} == 0\nand on (job, instance, domain)\n{sel('mail_mx_records')} > 0",
            "No MX host of a mail domain accepts mail: inbound mail is not delivered.",
            "None of the MX hosts of {{ $labels.domain }} has been healthy (SMTP dialog and the domain's "
            f"transport policy) for {held('MailMxAllDown')}, seen from {{{{ $labels.instance }}}}. Senders queue "
            "and retry; after their queue lifetime mail bounces.",
        )
        add(
            "MailMxRedundancyLow",
            g,
            "warning",
            "domain",
            f"{sel('mail_mx_healthy')}\n< on (job, instance, domain) group_left ()\n{sel('mail_mx_min_healthy')}",
            "A mail domain has fewer healthy MX hosts than its redundancy objective.",
            "{{ $labels.domain }} has {{ $value }} healthy MX host(s), fewer than its objective "
            f"(min_healthy_mx), for {held('MailMxRedundancyLow')}. One more failure may stop inbound mail.",
        )
        add(
            "MailSmtpEndpointDown",
            g,
            "critical",
            "overview",
            f"{sel('mail_smtp_up', nomatch('target', mx_re))} == 0",
            "A named SMTP endpoint (submission, relay, load balancer) is down.",
            "SMTP endpoint {{ $labels.check }} ({{ $labels.target }}) has failed its check for "
            f"{held('MailSmtpEndpointDown')}, seen from {{{{ $labels.instance }}}}.",
        )
        add(
            "MailImapEndpointDown",
            g,
            "critical",
            "overview",
            f"{sel('mail_imap_up')} == 0",
            "An IMAP endpoint is down: users cannot read their mail.",
            "IMAP endpoint {{ $labels.check }} ({{ $labels.target }}) has failed its check (greeting, TLS, "
            f"LOGIN, SELECT) for {held('MailImapEndpointDown')}, seen from {{{{ $labels.instance }}}}.",
        )

        # --- TLS and DNS ---------------------------------------------------------------------
        g = "tls-dns"
        expiry = sel("mail_tls_cert_expiry_timestamp_seconds")
        add(
            "MailTlsCertificateExpiring",
            g,
            "warning",
            "overview",
            f"({expiry} - time()) < {s.tls_warning_days} * 86400",
            f"A mail server certificate expires in less than {s.tls_warning_days} days.",
            "The {{ $labels.protocol }} certificate of {{ $labels.check }} ({{ $labels.target }}) expires in "
            "{{ $value | humanizeDuration }}.",
        )
        add(
            "MailTlsCertificateExpiryCritical",
            g,
            "critical",
            "overview",
            f"({expiry} - time()) < {s.tls_critical_days} * 86400",
            f"A mail server certificate expires in less than {s.tls_critical_days} days, or has expired.",
            "The {{ $labels.protocol }} certificate of {{ $labels.check }} ({{ $labels.target }}) expires in "
            "{{ $value | humanizeDuration }} (negative: already expired).",
        )
        add(
            "MailTlsCertificateInvalid",
            g,
            "warning",
            "overview",
            f"{sel('mail_tls_cert_valid', s.tls_invalid_matchers)} == 0",
            "A mail server presents a certificate that does not verify.",
            "The {{ $labels.protocol }} certificate of {{ $labels.check }} ({{ $labels.target }}) has failed "
            f"chain or host name verification for {held('MailTlsCertificateInvalid')}. Clients that verify "
            "certificates refuse it; for an MX host, see the policy it is judged under (mail_mx_policy).",
        )
        add(
            "MailDnsRecordBroken",
            g,
            "warning",
            "domain",
            f"{sel('mail_dns_record_ok')} == 0",
            "A mail DNS record (MX, SPF, DMARC, MTA-STS, TLS-RPT or DKIM) is missing or malformed.",
            "The {{ $labels.record }} record of {{ $labels.domain }} has been missing or malformed for "
            f"{held('MailDnsRecordBroken')}.",
        )
        # --- MX transport policy (DANE, MTA-STS) and DNSSEC: docs/metrics.md#mx-transport-policy
        mx_key = "on (job, instance, domain, mx)"
        policy_ok = sel("mail_mx_policy_ok")
        add(
            "MailMxTlsPolicyFailing",
            g,
            "warning",
            "domain",
            (
                f"{policy_ok} == 0\nand {mx_key}\n"
                f"{sel('mail_mx_policy', match('policy', 'dane|mta_sts_enforce|strict'))} == 1"
            ),
            "An MX host fails the TLS policy its domain enforces: senders that honour the policy skip it.",
            "MX {{ $labels.mx }} of {{ $labels.domain }} has not met the TLS requirements of the policy it is "
            f"judged under (DANE, MTA-STS enforce, or strict in the config) for {held('MailMxTlsPolicyFailing')}, "
            "seen from {{ $labels.instance }}. It does not count as healthy; the reason (tls_policy, dane_mismatch, "
            "dnssec, tls) is in mail_probe_failures_total and on the exporter's status page (/).",
        )
        add(
            "MailMtaStsTestingWouldFail",
            g,
            "info",
            "domain",
            f"{policy_ok} == 0\nand {mx_key}\n{sel('mail_mx_policy', eq('policy', 'mta_sts_testing'))} == 1",
            "An MX host fails its domain's MTA-STS policy in testing mode: switching to enforce would stop its mail.",
            "MX {{ $labels.mx }} of {{ $labels.domain }} has not met the domain's MTA-STS policy (mode testing) for "
            f"{held('MailMtaStsTestingWouldFail')}: STARTTLS, the certificate or the policy's mx patterns. Senders "
            "only report it (TLS-RPT) and still deliver; with mode enforce they would not deliver to this MX.",
        )
        add(
            "MailDaneTlsaMismatch",
            g,
            "critical",
            "domain",
            f"{sel('mail_mx_tlsa_match')} == 0",
            "The certificate of an MX host does not match its TLSA records: DANE senders defer all mail to it.",
            "The certificate chain presented by MX {{ $labels.mx }} of {{ $labels.domain }} has matched none of its "
            f"DNSSEC-validated TLSA records for {held('MailDaneTlsaMismatch')}, seen from {{{{ $labels.instance }}}}. "
            "Usually the certificate was renewed with a new key before its TLSA record was published.",
        )
        add(
            "MailMtaStsPolicyUnreachable",
            g,
            "warning",
            "domain",
            f"{sel('mail_mta_sts_policy_fetch_ok')} == 0",
            "The MTA-STS policy of a mail domain cannot be fetched over HTTPS.",
            "https://mta-sts.{{ $labels.domain }}/.well-known/mta-sts.txt has not been fetched for "
            f"{held('MailMtaStsPolicyUnreachable')}, seen from {{{{ $labels.instance }}}}, while "
            "_mta-sts.{{ $labels.domain }} publishes a TXT record. Senders keep a cached policy until its max_age "
            "runs out; senders without one deliver without MTA-STS, and a new policy id reaches nobody.",
        )
        add(
            "MailDnssecBogus",
            g,
            "critical",
            "domain",
            f"{sel('mail_dns_dnssec_bogus')} == 1",
            "A mail DNS record fails DNSSEC validation: validating resolvers refuse to answer it.",
            "The {{ $labels.record }} record of {{ $labels.domain }} has failed DNSSEC validation for "
            f"{held('MailDnssecBogus')} (SERVFAIL, answered with checking disabled), seen from "
            "{{ $labels.instance }}. Senders behind validating resolvers do not get it: mx, they queue all mail "
            "for the domain; tlsa:<mx>, DANE senders defer mail to that MX; mta_sts, they do not see the policy.",
        )
        add(
            "MailDnsblListed",
            g,
            "warning",
            "domain",
            f"{sel('mail_dnsbl_listed')} == 1",
            "A mail server address is listed on a DNS blocklist.",
            "{{ $labels.address }} ({{ $labels.domain }}) is listed on {{ $labels.zone }}. Receivers using "
            "that list reject or junk its mail.",
        )
        add(
            "MailDnsblLookupsFailing",
            g,
            "warning",
            "domain",
            (
                f"sum without (reason) "
                f"(increase({sel('mail_dnsbl_errors_total')}[{s.dnsbl_errors_window}])) > {s.dnsbl_errors_max}"
            ),
            "DNS blocklist lookups keep failing: listings would go unnoticed.",
            '{{ $value | printf "%.0f" }} lookups of {{ $labels.domain }}\'s addresses on {{ $labels.zone }} '
            f"failed in the last {words(s.dnsbl_errors_window)} (timeouts, SERVFAIL or blocklist error codes).",
        )

        # --- queues --------------------------------------------------------------------------
        g = "queues"
        add(
            "MailQueueBacklog",
            g,
            "warning",
            "delivery",
            f"{sel('mail_queue_messages', self.backlog_matcher())} > {s.backlog_messages}",
            "Mail is piling up in a queue.",
            'The {{ $labels.queue }} queue of {{ $labels.source }} holds {{ $value | printf "%.0f" }} messages, '
            f"more than {s.backlog_messages}, for {held('MailQueueBacklog')}.",
        )
        add(
            "MailQueueGrowing",
            g,
            "warning",
            "delivery",
            f"mail:queue_messages:deriv15m > {number(s.growth_per_second)}",
            "A mail queue keeps growing.",
            "The {{ $labels.queue }} queue of {{ $labels.source }} has grown by "
            '{{ $value | printf "%.2f" }} messages per second for '
            f"{held('MailQueueGrowing')}.",
        )
        age = "mail_queue_oldest_message_age_seconds"
        listed = dict(s.stalled_after)
        parts = [f"{sel(age, eq('queue', q))} > {seconds(d)}" for q, d in listed.items()]
        others = "|".join([*listed, "hold"])
        parts.append(f"{sel(age, nomatch('queue', others))} > {seconds(s.stalled_default)}")
        add(
            "MailQueueStalled",
            g,
            "warning",
            "delivery",
            "\nor\n".join(parts),
            "The oldest message in a mail queue is older than expected: the queue is not moving.",
            "The oldest message in the {{ $labels.queue }} queue of {{ $labels.source }} is "
            "{{ $value | humanizeDuration }} old.",
        )
        add(
            "MailQueueHeld",
            g,
            "warning",
            "delivery",
            (
                f"{sel('mail_queue_messages', eq('queue', 'hold'))} > 0\n"
                f"or\n"
                f'label_replace({sel("mail_queue_frozen_messages")} > 0, "queue", "frozen", "", "")'
            ),
            "Messages sit in a hold queue (Postfix) or are frozen (Exim) and need a decision.",
            '{{ $value | printf "%.0f" }} message(s) in the {{ $labels.queue }} queue of {{ $labels.source }} '
            f"for {held('MailQueueHeld')}. They are not delivered until someone releases or deletes them.",
        )
        add(
            "MailQueueSourceDown",
            g,
            "warning",
            "delivery",
            f"{sel('mail_queue_up')} == 0",
            "A mail queue cannot be read: its backlog is unknown.",
            "Reading queue source {{ $labels.source }} on {{ $labels.instance }} has failed for "
            f"{held('MailQueueSourceDown')}. The reason is on the exporter's status page (/).",
        )

        # --- round trips ---------------------------------------------------------------------
        g = "roundtrip"
        add(
            "MailRoundTripFailing",
            g,
            "critical",
            "delivery",
            f"{sel('mail_roundtrip_success')} == 0",
            "End-to-end mail delivery is failing: probe messages do not arrive in time.",
            f"No probe of route {{{{ $labels.route }}}} has arrived in time for {held('MailRoundTripFailing')}, "
            "seen from {{ $labels.instance }}.",
        )
        lw = s.latency_window
        add(
            "MailRoundTripLatencyHigh",
            g,
            "warning",
            "delivery",
            f"mail:roundtrip_latency_seconds:p95_rate{lw} > {number(s.latency_p95_seconds)}",
            "Mail takes long to arrive end to end.",
            f"The 95th percentile delivery time of route {{{{ $labels.route }}}} over the last {words(lw)} is "
            "{{ $value | humanizeDuration }}, above "
            f"{number(s.latency_p95_seconds)}s.",
        )
        jw = s.junk_window
        probes = "mail_roundtrip_probes_total"
        add(
            "MailRoundTripProbesInJunk",
            g,
            "warning",
            "delivery",
            (
                f"sum without (result) (rate({sel(probes, eq('result', 'junk'))}[{jw}]))\n"
                f"/\n"
                f"(sum without (result) (rate({sel(probes)}[{jw}])) > 0)\n"
                f"> {number(s.junk_ratio)}"
            ),
            "Probe messages land in the junk folder: the spam filter misclassifies mail.",
            "{{ $value | humanizePercentage }} of the probes of route {{ $labels.route }} landed in a junk folder "
            f"over the last {words(jw)}.",
        )

        # The receiver's verdict on the probes found (routes with receive.authserv_id; docs/metrics.md).
        # Failing methods are shares of the probes found over a window (one failing probe never
        # fires, a route that fails half the time does), with a minimum count for sparse routes.
        # While the newest probe carries no Authentication-Results of the receiver every method
        # reads "none": MailRoundTripNoAuthResults fires instead of the method alerts.
        aw = s.auth_window
        auth = "mail_roundtrip_auth_results_total"
        no_header = f"unless on (job, instance, route)\n{sel('mail_roundtrip_auth_header_present')} == 0"
        reject = f"{sel('mail_roundtrip_dmarc_policy', eq('policy', 'reject'))} == 1"

        def auth_failing(method: str) -> str:
            failing = sel(auth, eq("method", method), s.auth_failing_results[method])
            return (
                f"sum without (method, result) (rate({failing}[{aw}]))\n"
                f"/\n"
                f"(sum without (method, result) (rate({sel(auth, eq('method', method))}[{aw}])) > 0)\n"
                f"> {number(s.auth_failure_ratio)}\n"
                f"and on (job, instance, route)\n"
                f"sum without (method, result) (increase({failing}[{aw}])) >= {s.verdict_min_probes}\n"
                f"{no_header}"
            )

        def auth_share(method: str, verb: str) -> str:
            return (
                f"{{{{ $value | humanizePercentage }}}} of the probes of route {{{{ $labels.route }}}} found over "
                f"the last {words(aw)} {verb} at the receiver ({results_text(s.auth_failing_results[method])}; "
                f"at least {s.verdict_min_probes} probes), seen from {{{{ $labels.instance }}}}."
            )

        add(
            "MailRoundTripDmarcFailing",
            g,
            "warning",
            "delivery",
            f"{auth_failing('dmarc')}\nunless on (job, instance, route)\n{reject}",
            "Probe messages fail DMARC at the receiver: receivers may junk or distrust the domain's mail.",
            auth_share("dmarc", "failed DMARC")
            + " The From domain does not publish p=reject (MailRoundTripDmarcFailingReject covers that).",
        )
        add(
            "MailRoundTripDmarcFailingReject",
            g,
            "critical",
            "delivery",
            f"{auth_failing('dmarc')}\nand on (job, instance, route)\n{reject}",
            "Probe messages fail DMARC and the domain publishes p=reject: "
            "receivers that enforce DMARC reject its mail.",
            auth_share("dmarc", "failed DMARC")
            + " The From domain publishes p=reject: receivers that enforce DMARC (Gmail, Microsoft 365, Yahoo ...) "
            "reject this mail.",
        )
        add(
            "MailRoundTripDkimFailing",
            g,
            "warning",
            "delivery",
            auth_failing("dkim"),
            "Probe messages arrive without a valid DKIM signature: the outbound signing path is broken.",
            auth_share("dkim", "did not pass DKIM"),
        )
        add(
            "MailRoundTripSpfFailing",
            g,
            "warning",
            "delivery",
            auth_failing("spf"),
            "Probe messages fail SPF at the receiver: the sending host is not allowed by the domain's SPF record.",
            auth_share("spf", "failed SPF"),
        )
        add(
            "MailRoundTripDkimNotAligned",
            g,
            "warning",
            "delivery",
            (
                f"{sel('mail_roundtrip_dkim_aligned')} == 0\n"
                f"and on (job, instance, route)\n"
                f"{sel('mail_roundtrip_auth_result', eq('method', 'dkim'), eq('result', 'pass'))} == 1"
            ),
            "Probe messages pass DKIM with a signature of another domain than the From domain: DMARC ignores it.",
            f"The probes of route {{{{ $labels.route }}}} found over the last {held('MailRoundTripDkimNotAligned')} "
            "pass DKIM at the receiver, but no passing signature's domain (d=) is aligned with the From domain, seen "
            "from {{ $labels.instance }}. DMARC then rests on SPF alone, which forwarding breaks.",
        )
        add(
            "MailRoundTripNoAuthResults",
            g,
            "warning",
            "delivery",
            f"{sel('mail_roundtrip_auth_header_present')} == 0",
            "The receiver states no authentication results for probe messages: it stopped checking them, or "
            "receive.authserv_id is wrong.",
            f"The probes of route {{{{ $labels.route }}}} found over the last {held('MailRoundTripNoAuthResults')} "
            "carry no Authentication-Results header with the receiver's authserv-id, seen from {{ $labels.instance }}: "
            "the receiver did not check SPF, DKIM and DMARC, or the route's receive.authserv_id is not the one it "
            "writes.",
        )
        sw = s.spam_window
        spam = "mail_roundtrip_spam_verdicts_total"
        add(
            "MailRoundTripMarkedSpam",
            g,
            "warning",
            "delivery",
            (
                f"sum without (verdict) (rate({sel(spam, eq('verdict', 'spam'))}[{sw}]))\n"
                f"/\n"
                f"(sum without (verdict) (rate({sel(spam)}[{sw}])) > 0)\n"
                f"> {number(s.spam_ratio)}\n"
                f"and on (job, instance, route)\n"
                f"sum without (verdict) (increase({sel(spam, eq('verdict', 'spam'))}[{sw}])) >= {s.verdict_min_probes}"
            ),
            "The receiver's spam filter marks probe messages as spam.",
            "{{ $value | humanizePercentage }} of the probes of route {{ $labels.route }} found over the last "
            f"{words(sw)} were marked as spam by the receiver's spam filter (at least {s.verdict_min_probes}), "
            "seen from {{ $labels.instance }}.",
        )

        # --- continuity ----------------------------------------------------------------------
        # Every replica of an HA pair exports these figures alike (incidents and objectives from
        # the shared store, backups and replication of the same datasets): each alert takes them
        # once for all replicas (one = max without (replica_labels)) and joins on job and the
        # figure's own labels, never on instance.
        g = "continuity"
        one = self.one
        add(
            "MailRpoAboveTarget",
            g,
            "warning",
            "continuity",
            (
                f"{one('mail_rpo_estimate_seconds')}\n> on (job, dataset) group_left ()\n"
                f"{one('mail_rpo_target_seconds')}"
            ),
            "A mail dataset could lose more data than its recovery point objective allows.",
            "The freshest recoverable copy of dataset {{ $labels.dataset }} is {{ $value | humanizeDuration }} "
            "old, more than its rpo_target.",
            per_instance=False,
        )
        ts = one("mail_backup_last_success_timestamp_seconds")
        backup_up = one("mail_backup_up")
        add(
            "MailBackupStale",
            g,
            "warning",
            "continuity",
            f"(time() - {ts})\nand on (job, dataset, backup)\n{backup_up} == 0",
            "The newest backup of a mail dataset is older than its max_age.",
            "The newest backup {{ $labels.backup }} of dataset {{ $labels.dataset }} is "
            "{{ $value | humanizeDuration }} old, older than its max_age.",
            per_instance=False,
        )
        add(
            "MailBackupSourceDown",
            g,
            "warning",
            "continuity",
            f"{backup_up} == 0\nunless on (job, dataset, backup)\n{ts}",
            "A backup source of a mail dataset cannot be read: backup age is unknown.",
            "Backup source {{ $labels.backup }} of dataset {{ $labels.dataset }} has not been readable for "
            f"{held('MailBackupSourceDown')}. The reason is on the exporter's status page (/).",
            per_instance=False,
        )
        add(
            "MailReplicationLagHigh",
            g,
            "warning",
            "continuity",
            f"{one('mail_replication_lag_seconds')} > {number(s.replication_lag_seconds)}",
            "A mail replica lags behind its primary.",
            "Replica {{ $labels.replica }} of dataset {{ $labels.dataset }} lags {{ $value | humanizeDuration }} "
            f"behind, more than {number(s.replication_lag_seconds)}s.",
            per_instance=False,
        )
        add(
            "MailReplicaDown",
            g,
            "warning",
            "continuity",
            f"{one('mail_replication_up')} == 0",
            "Replication lag of a mail replica cannot be measured: the replica may be broken.",
            "Measuring replica {{ $labels.replica }} of dataset {{ $labels.dataset }} has failed for "
            f"{held('MailReplicaDown')}.",
            per_instance=False,
        )
        add(
            "MailRtoAboveTarget",
            g,
            "warning",
            "continuity",
            (
                f"{one('mail_rto_estimate_seconds')}\n> on (job, service) group_left ()\n"
                f"{one('mail_rto_target_seconds')}"
            ),
            "A mail service would take longer to recover than its recovery time objective.",
            "The RTO estimate of service {{ $labels.service }} is {{ $value | humanizeDuration }}, longer than "
            "its rto_target (90th percentile of recoveries and the last drill).",
            per_instance=False,
        )
        oldest = one("mail_incident_oldest_open_seconds")
        rto = one("mail_rto_target_seconds")
        add(
            "MailIncidentOpenTooLong",
            g,
            "warning",
            "continuity",
            (
                f"{oldest}\n> on (job, service) group_left ()\n{rto}\n"
                f"or\n"
                f"({oldest} > {seconds(s.incident_open_default)}\nunless on (job, service)\n{rto})"
            ),
            "A mail incident has been open longer than the service's recovery time objective.",
            "The oldest open incident of service {{ $labels.service }} has been open for "
            "{{ $value | humanizeDuration }}, longer than its rto_target "
            f"(or {words(s.incident_open_default)} without one). Escalate.",
            per_instance=False,
        )
        add(
            "MailMttrAboveTarget",
            g,
            "warning",
            "continuity",
            (
                f"{one('mail_mttr_seconds', eq('window', s.mttr_window))}\n"
                f"> on (job, service) group_left ()\n{one('mail_mttr_target_seconds')}"
            ),
            "A mail service recovers more slowly on average than its MTTR objective.",
            f"The mean time to recover of service {{{{ $labels.service }}}} over {s.mttr_window} is "
            "{{ $value | humanizeDuration }}, above its mttr_target.",
            per_instance=False,
        )
        add(
            "MailAvailabilityBelowTarget",
            g,
            "warning",
            "continuity",
            (
                f"{one('mail_availability_ratio', eq('window', s.availability_window))}\n"
                f"< on (job, service) group_left ()\n{one('mail_availability_target_ratio')}"
            ),
            "A mail service is below its availability objective.",
            f"Service {{{{ $labels.service }}}} was available {{{{ $value | humanizePercentage }}}} of the last "
            f"{s.availability_window} (maintenance excluded), below its availability_target.",
            per_instance=False,
        )
        drill = one("mail_drill_last_timestamp_seconds")
        add(
            "MailDrillStale",
            g,
            "warning",
            "continuity",
            (
                f"(time() - {drill}) > {seconds(s.drill_max_age) // 86400} * 86400\n"
                f"unless on (job, service)\n{drill} == 0"
            ),
            f"No failover or restore drill of a mail service in {words(s.drill_max_age)}.",
            "The last drill of service {{ $labels.service }} was {{ $value | humanizeDuration }} ago. "
            "Untested recovery is the RTO estimate's blind spot.",
            per_instance=False,
        )
        add(
            "MailDrillMissing",
            g,
            "warning",
            "continuity",
            f"{rto}\nunless on (job, service)\n{drill} != 0",
            "A mail service has a recovery time objective but no recorded drill.",
            "Service {{ $labels.service }} has an rto_target of {{ $value | humanizeDuration }} but no failover "
            "or restore drill has ever been recorded, so the RTO is not proven.",
            per_instance=False,
        )
        add(
            "MailMaintenanceActive",
            g,
            "info",
            "continuity",
            f"{one('mail_maintenance_active')} == 1",
            "A mail service is in a planned maintenance window; its warning and critical alerts are inhibited.",
            "Service {{ $labels.service }} is inside a maintenance window of the exporter's config "
            "(continuity.maintenance). Alertmanager inhibits warning and critical alerts labelled "
            "service={{ $labels.service }}.",
            per_instance=False,
        )

        # --- mail flow from the logs ---------------------------------------------------------
        g = "logs"
        aw = s.log_alert_window
        deliveries = "mail_log_deliveries_total"
        add(
            "MailBounceRateHigh",
            g,
            "warning",
            "delivery",
            (
                f"mail:log_deliveries_bounced:ratio_rate{aw} > {number(s.bounce_ratio)}\n"
                f"and on (job, instance, source)\n"
                f"sum without (transport, status) (increase({sel(deliveries, eq('status', 'bounced'))}[{aw}]))"
                f" >= {s.bounce_min}"
            ),
            "Many delivery attempts end in a bounce: mail is returned to its senders.",
            f"{{{{ $value | humanizePercentage }}}} of the finished delivery attempts logged by "
            f"{{{{ $labels.source }}}} over the last {words(aw)} bounced (at least {s.bounce_min} recipients), "
            f"more than {percent(s.bounce_ratio)}.",
        )
        add(
            "MailDeferralRateHigh",
            g,
            "warning",
            "delivery",
            (
                f"mail:log_deliveries_deferred:ratio_rate{aw} > {number(s.deferral_ratio)}\n"
                f"and on (job, instance, source)\n"
                f"sum without (transport, status) (increase({sel(deliveries, eq('status', 'deferred'))}[{aw}]))"
                f" >= {s.deferral_min}"
            ),
            "Many delivery attempts are deferred: mail waits in the queue for a retry.",
            f"{{{{ $value | humanizePercentage }}}} of the delivery attempts logged by {{{{ $labels.source }}}} "
            f"over the last {words(aw)} were deferred (at least {s.deferral_min}), more than "
            f"{percent(s.deferral_ratio)}.",
        )
        p95 = f"mail:log_delivery_delay_seconds:p95_rate{aw}"
        count = sel("mail_log_delivery_delay_seconds_count")
        parts = [f"{p95}{{{eq('stage', stage)}}} > {number(v)}" for stage, v in s.delay_p95_seconds.items()]
        limits = ", ".join(f"{stage} {number(v)}s" for stage, v in s.delay_p95_seconds.items())
        add(
            "MailDeliveryDelayHigh",
            g,
            "warning",
            "delivery",
            (
                "(\n  " + "\nor\n  ".join(parts) + "\n)\n"
                f"and on (job, instance, source, transport, stage)\n"
                f"increase({count}[{aw}]) >= {s.delay_min_deliveries}"
            ),
            "Real mail takes long to be delivered, according to the mail log.",
            f"The 95th percentile {{{{ $labels.stage }}}} delay of mail delivered over {{{{ $labels.transport }}}} "
            f"(log source {{{{ $labels.source }}}}) in the last {words(aw)} is {{{{ $value | humanizeDuration }}}} "
            f"(limits: {limits}).",
        )
        bw = s.spike_baseline
        factor = number(s.spike_factor)
        add(
            "MailSmtpRejectSpike",
            g,
            "warning",
            "delivery",
            (
                f"mail:log_smtp_rejects:rate5m > {number(s.reject_spike_min_per_second)}\n"
                f"and\n"
                f"mail:log_smtp_rejects:rate5m > {factor} * (mail:log_smtp_rejects:rate{bw} offset 5m)"
            ),
            "The SMTP server rejects far more connections and recipients than usual.",
            f'{{{{ $labels.source }}}} logged {{{{ $value | printf "%.2f" }}}} SMTP rejects per second over the '
            f"last 5 minutes, more than {factor}x its rate over the previous {words(bw)}. Either an attack or "
            "spam run is being refused, or a restriction now refuses legitimate mail: look at the reasons.",
        )
        add(
            "MailAuthFailureSpike",
            g,
            "warning",
            "delivery",
            (
                f"mail:log_auth_failures:rate5m > {number(s.auth_spike_min_per_second)}\n"
                f"and\n"
                f"mail:log_auth_failures:rate5m > {factor} * (mail:log_auth_failures:rate{bw} offset 5m)"
            ),
            "Failed logins spike: someone may be guessing passwords.",
            f'{{{{ $labels.source }}}} logged {{{{ $value | printf "%.2f" }}}} failed {{{{ $labels.protocol }}}} '
            f"logins per second over the last 5 minutes, more than {factor}x the rate of the previous {words(bw)}.",
        )
        tw = s.tls_window
        ratio = f"mail:log_tls_failures:ratio_rate{tw}"
        parts = [f"{ratio}{{{eq('direction', d)}}} > {number(v)}" for d, v in s.tls_failure_ratio.items()]
        tls_limits = ", ".join(f"{d} {percent(v)}" for d, v in s.tls_failure_ratio.items())
        add(
            "MailTlsHandshakeFailures",
            g,
            "warning",
            "delivery",
            (
                "(\n  " + "\nor\n  ".join(parts) + "\n)\n"
                f"and on (job, instance, source, direction)\n"
                f"increase({sel('mail_postfix_tls_failures_total')}[{tw}]) >= {s.tls_failure_min}"
            ),
            "Many TLS handshakes of the mail server fail.",
            f"{{{{ $value | humanizePercentage }}}} of the {{{{ $labels.direction }}}} TLS handshakes logged by "
            f"{{{{ $labels.source }}}} over the last {words(tw)} failed (at least {s.tls_failure_min}; "
            f"limits: {tls_limits}).",
        )
        newest = sel("mail_log_last_line_timestamp_seconds")
        add(
            "MailLogSourceStale",
            g,
            "warning",
            "delivery",
            (
                f"(time() - {newest}) > {seconds(s.log_stale_after)}\n"
                f"and on (job, instance, source)\n"
                f"{newest} > 0\n"
                f"and on (job, instance, source)\n"
                f"{sel('mail_log_up')} == 1"
            ),
            "A mail log source has had no new line for long: its mail flow figures are stale.",
            "The newest line read from log source {{ $labels.source }} on {{ $labels.instance }} is "
            f"{{{{ $value | humanizeDuration }}}} old, older than {words(s.log_stale_after)} "
            "(log_stale_after), although the source can be read.",
        )
        add(
            "MailLogSourceDown",
            g,
            "warning",
            "delivery",
            f"{sel('mail_log_up')} == 0",
            "A mail log source cannot be read: real mail flow is not counted.",
            "Reading log source {{ $labels.source }} on {{ $labels.instance }} has failed for "
            f"{held('MailLogSourceDown')}. The reason (missing, permission, ...) is on the exporter's "
            "status page (/).",
        )
        uw = s.unparsed_window
        lines = "mail_log_lines_total"
        add(
            "MailLogLinesNotUnderstood",
            g,
            "warning",
            "delivery",
            (
                f"mail:log_lines_unparsed:ratio_rate{uw} > {number(s.unparsed_ratio)}\n"
                f"and on (job, instance, source, program)\n"
                f"(\n  increase({sel('mail_log_lines_unparsed_total')}[{uw}]) >= {s.unparsed_min}\n"
                f"  or\n"
                f"  increase({sel(lines, eq('program', 'malformed'))}[{uw}]) >= {s.unparsed_min}\n)"
            ),
            "The exporter does not understand many lines of a mail log: counts are incomplete.",
            f"{{{{ $value | humanizePercentage }}}} of the {{{{ $labels.program }}}} lines read from log source "
            f"{{{{ $labels.source }}}} over the last {words(uw)} were not understood (more than "
            f"{percent(s.unparsed_ratio)}). A changed log format, a new daemon or a new Postfix or Dovecot "
            "version writes lines the parser does not know.",
        )
        return out

    def alert_groups(self) -> list[dict[str, Any]]:
        titles = {
            "exporter": "mail-exporter",
            "availability": "mail-availability",
            "tls-dns": "mail-tls-dns",
            "queues": "mail-queues",
            "roundtrip": "mail-roundtrip",
            "continuity": "mail-continuity",
            "logs": "mail-logs",
        }
        groups: dict[str, list[dict[str, Any]]] = {key: [] for key in titles}
        for a in self.alerts():
            groups[a.group].append(self.alert_rule(a))
        return [{"name": titles[key], "rules": rules} for key, rules in groups.items()]

    def files(self) -> dict[str, list[dict[str, Any]]]:
        return {
            RECORDING_FILE: self.recording_groups(),
            ALERTS_FILE: self.alert_groups(),
            SLO_FILE: self.slo_groups(),
        }


# ======================================================================================
# Output
# ======================================================================================


class _Dumper(yaml.SafeDumper):
    """Block style, indented lists, multi-line strings as ``|`` literals."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


HEADERS = {
    RECORDING_FILE: (
        "Recording rules: round-trip and MX availability SLIs, latency percentiles, queue growth, "
        "mail flow from the logs."
    ),
    ALERTS_FILE: "Alerting rules: every metric family of the exporter.",
    SLO_FILE: "Round-trip SLO: burn rates and multi-window, multi-burn-rate alerts.",
}


def render(name: str, groups: list[dict[str, Any]], s: Settings) -> str:
    head = [
        "# Generated by rules/generate.py: do not edit. Change the settings there, then run",
        "#   python rules/generate.py",
        f"# {HEADERS[name]}",
    ]
    if name == SLO_FILE:
        head.append(f"# SLO objective: {percent(s.slo_objective)} (error budget {one_minus(s.slo_objective)}).")
        head.append("# Another objective: python rules/generate.py --objective 0.9999 --out-dir DIR")
    body = yaml.dump({"groups": groups}, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)
    return "\n".join(head) + "\n" + body


def rule_texts(s: Settings) -> dict[str, str]:
    """File name -> generated text, for these settings."""
    return {name: render(name, groups, s) for name, groups in Builder(s).files().items()}


TABLE_BEGIN = "<!-- BEGIN GENERATED ALERT TABLE (rules/generate.py) -->"
TABLE_END = "<!-- END GENERATED ALERT TABLE -->"


def alert_table(s: Settings) -> str:
    b = Builder(s)
    rows = ["| alert | severity | for | what it means | runbook |", "|---|---|---|---|---|"]
    for a in [*b.alerts(), *b.burn_alerts()]:
        rows.append(
            f"| `{a.name}` | {a.severity} | {b.for_(a.name, a.for_)} | {a.summary} "
            f"| [runbook](runbooks.md#{a.name.lower()}) |"
        )
    return "\n".join(rows)


def doc_text(current: str, s: Settings) -> str:
    """``current`` (docs/alerts.md) with its generated table replaced."""
    start, end = current.find(TABLE_BEGIN), current.find(TABLE_END)
    if start < 0 or end < start:
        raise SystemExit(f"{ALERTS_DOC}: markers {TABLE_BEGIN!r} ... {TABLE_END!r} not found")
    return current[: start + len(TABLE_BEGIN)] + "\n" + alert_table(s) + "\n" + current[end:]


def expected_files(s: Settings, out_dir: Path, with_doc: bool) -> dict[Path, str]:
    files = {out_dir / name: text for name, text in rule_texts(s).items()}
    if with_doc:
        files[ALERTS_DOC] = doc_text(ALERTS_DOC.read_text(encoding="utf-8"), s)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a generated file is out of date")
    parser.add_argument("--objective", type=float, help="SLO objective, e.g. 0.9999 (default: from the settings)")
    parser.add_argument("--out-dir", type=Path, help="write the rule files here instead of rules/")
    args = parser.parse_args(argv)

    s = SETTINGS
    if args.objective is not None:
        if not 0 < args.objective < 1:
            parser.error("--objective must be between 0 and 1, e.g. 0.999")
        s = replace(s, slo_objective=args.objective)
    out_dir = args.out_dir or RULES_DIR
    committed = args.out_dir is None and args.objective is None
    files = expected_files(s, out_dir, with_doc=committed)

    if args.check:
        drift = 0
        for path, text in files.items():
            old = path.read_text(encoding="utf-8") if path.exists() else ""
            if old != text:
                drift += 1
                sys.stdout.writelines(
                    difflib.unified_diff(
                        old.splitlines(keepends=True), text.splitlines(keepends=True), str(path), f"{path} (generated)"
                    )
                )
        if drift:
            print(f"{drift} generated file(s) out of date: run python rules/generate.py", file=sys.stderr)
            return 1
        return 0

    out_dir.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
