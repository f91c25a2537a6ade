"""The metrics contract, as code.

Every metric family the exporter can emit is declared here once, with its type,
help text and exact label names.  :class:`exporter.core.model.Sink` refuses samples of
undeclared families or labels, the snapshot renders HELP/TYPE lines from here, and
``tests/test_metrics_contract.py`` checks that ``docs/metrics.md`` documents every
family.  Names are a public API: the rules and dashboards depend on them.
"""

from __future__ import annotations

__all__ = ["FAMILIES", "MetricDef"]

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MetricDef:
    name: str
    type: str  # gauge | counter | histogram | gaugehistogram
    help: str
    labels: tuple[str, ...]


def _defs(*items: tuple[str, str, str, tuple[str, ...]]) -> dict[str, MetricDef]:
    return {name: MetricDef(name, typ, help_, labels) for name, typ, help_, labels in items}


_PROBE = ("protocol", "check", "target")

FAMILIES: dict[str, MetricDef] = _defs(
    # --- self ---------------------------------------------------------------------------
    ("mail_exporter_build_info", "gauge", "Build information; always 1.", ("version", "python")),
    (
        "mail_exporter_config_last_reload_successful",
        "gauge",
        "Whether the last configuration reload succeeded (1) or failed (0).",
        (),
    ),
    (
        "mail_exporter_config_last_reload_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful configuration load.",
        (),
    ),
    ("mail_exporter_checks", "gauge", "Checks configured, by kind.", ("check",)),
    (
        "mail_exporter_asyncio_tasks",
        "gauge",
        "asyncio tasks alive in the exporter (counted at most once a second): one per scheduled check, "
        "plus those in flight.",
        (),
    ),
    (
        "mail_exporter_check_start_lag_seconds",
        "histogram",
        "How late check runs start: from when a run was due to when it started (a busy event loop, or every "
        "max_concurrency slot taken). Growing lag means the exporter is past its ceiling.",
        (),
    ),
    ("mail_exporter_check_duration_seconds", "gauge", "Duration of the last run of a check.", ("check", "name")),
    ("mail_exporter_check_success", "gauge", "Whether the last run of a check succeeded.", ("check", "name")),
    (
        "mail_exporter_check_last_run_timestamp_seconds",
        "gauge",
        "Unix time at which the last run of a check finished.",
        ("check", "name"),
    ),
    (
        "mail_exporter_check_runs_total",
        "counter",
        "Runs of a check, by result (success, failure, error).",
        ("check", "name", "result"),
    ),
    (
        "mail_exporter_probe_refused_total",
        "counter",
        "/probe requests refused, by reason (rate_limited, malformed_target, not_allowed, "
        "loopback_address, private_address, link_local_address, reserved_address).",
        ("reason",),
    ),
    # --- MX and redundancy ----------------------------------------------------------------
    ("mail_mx_records", "gauge", "MX records published for a domain.", ("domain",)),
    ("mail_mx_healthy", "gauge", "MX hosts of a domain accepting mail now.", ("domain",)),
    ("mail_mx_min_healthy", "gauge", "Configured redundancy objective: healthy MX hosts wanted.", ("domain",)),
    (
        "mail_mx_policy",
        "gauge",
        "Transport policy an MX host was judged under (opportunistic, mta_sts_testing, mta_sts_enforce, dane, "
        "strict); always 1.",
        ("domain", "mx", "policy"),
    ),
    (
        "mail_mx_policy_ok",
        "gauge",
        "Whether an MX host meets the TLS requirements of its domain's published policy (DANE, else MTA-STS, "
        "also in testing mode); 1 when no policy is published.",
        ("domain", "mx"),
    ),
    (
        "mail_mx_tlsa_match",
        "gauge",
        "Whether the certificate chain an MX host presents matches its DNSSEC-validated TLSA records "
        "(only for MX hosts with usable TLSA records).",
        ("domain", "mx"),
    ),
    (
        "mail_mta_sts_policy_mode",
        "gauge",
        "MTA-STS mode in force for a domain (enforce, testing, none); 1 for the current mode, 0 for the others.",
        ("domain", "mode"),
    ),
    (
        "mail_mta_sts_policy_fetch_ok",
        "gauge",
        "Whether the last fetch of a domain's MTA-STS policy succeeded (only while its TXT record exists).",
        ("domain",),
    ),
    (
        "mail_mta_sts_policy_age_seconds",
        "gauge",
        "Time since the MTA-STS policy in use was fetched.",
        ("domain",),
    ),
    (
        "mail_mta_sts_policy_max_age_seconds",
        "gauge",
        "max_age of the MTA-STS policy in use: how long senders cache it.",
        ("domain",),
    ),
    # --- SMTP / IMAP ----------------------------------------------------------------------
    (
        "mail_smtp_up",
        "gauge",
        "Whether banner, EHLO and (if configured) STARTTLS and AUTH succeeded.",
        ("check", "target"),
    ),
    ("mail_smtp_reply_code", "gauge", "Last SMTP reply code seen in the dialog.", ("check", "target")),
    ("mail_imap_up", "gauge", "Whether greeting, TLS, LOGIN and SELECT succeeded.", ("check", "target")),
    ("mail_probe_phase_duration_seconds", "gauge", "Duration of each phase of the last probe.", (*_PROBE, "phase")),
    ("mail_probe_failures_total", "counter", "Probe failures by reason.", (*_PROBE, "reason")),
    # --- TLS ------------------------------------------------------------------------------
    (
        "mail_tls_cert_expiry_timestamp_seconds",
        "gauge",
        "notAfter of the leaf certificate, as a Unix time; present even when the certificate is invalid.",
        _PROBE,
    ),
    ("mail_tls_cert_valid", "gauge", "Whether the certificate chain and host name verify (1) or not (0).", _PROBE),
    ("mail_tls_cert_chain_valid", "gauge", "Whether the certificate chain verifies against the trust store.", _PROBE),
    ("mail_tls_cert_hostname_valid", "gauge", "Whether the certificate matches the host name checked.", _PROBE),
    ("mail_tls_version_info", "gauge", "TLS version negotiated; always 1.", (*_PROBE, "version")),
    # --- DNS ------------------------------------------------------------------------------
    ("mail_dns_record_ok", "gauge", "Whether a DNS record is present and well formed.", ("domain", "record")),
    (
        "mail_dns_dnssec_validated",
        "gauge",
        "Whether the validating resolver marked a checked record (mx, mta_sts, tlsa:<mx>) as DNSSEC-validated "
        "(AD bit).",
        ("domain", "record"),
    ),
    (
        "mail_dns_dnssec_bogus",
        "gauge",
        "1 when a checked record fails DNSSEC validation: SERVFAIL, while the same query with checking "
        "disabled (CD) is answered.",
        ("domain", "record"),
    ),
    (
        "mail_dnsbl_listed",
        "gauge",
        "1 when an address is listed on a DNS blocklist (real listing codes only).",
        ("domain", "address", "zone"),
    ),
    (
        "mail_dnsbl_errors_total",
        "counter",
        "DNSBL lookups that failed or returned a blocklist error code.",
        ("domain", "zone", "reason"),
    ),
    # --- queues ---------------------------------------------------------------------------
    ("mail_queue_up", "gauge", "Whether the last read of a queue source succeeded.", ("source",)),
    (
        "mail_queue_reader_info",
        "gauge",
        "Which reader a queue source used for its last read; always 1.",
        ("source", "reader"),
    ),
    ("mail_queue_messages", "gauge", "Messages in a queue now.", ("source", "queue")),
    ("mail_queue_size_bytes", "gauge", "Bytes in a queue now.", ("source", "queue")),
    ("mail_queue_oldest_message_age_seconds", "gauge", "Age of the oldest message in a queue.", ("source", "queue")),
    (
        "mail_queue_message_age_seconds",
        "gaugehistogram",
        "Age distribution of the messages in a queue now.",
        ("source", "queue"),
    ),
    ("mail_queue_deferred_reason_messages", "gauge", "Deferred messages by classified reason.", ("source", "reason")),
    (
        "mail_queue_deferred_destination_messages",
        "gauge",
        "Deferred messages by destination domain (top N, the rest as other).",
        ("source", "domain"),
    ),
    ("mail_queue_frozen_messages", "gauge", "Frozen messages (Exim).", ("source",)),
    ("mail_queue_read_duration_seconds", "gauge", "Duration of the last read of a queue source.", ("source",)),
    # --- round trips ----------------------------------------------------------------------
    (
        "mail_roundtrip_latency_seconds",
        "histogram",
        "Time from the end of SMTP DATA to the probe seen in the mailbox.",
        ("route",),
    ),
    ("mail_roundtrip_success", "gauge", "Whether the last probe of a route was delivered in time.", ("route",)),
    ("mail_roundtrip_last_success_timestamp_seconds", "gauge", "Unix time of the last delivered probe.", ("route",)),
    ("mail_roundtrip_probes_total", "counter", "Probes by outcome.", ("route", "result")),
    ("mail_roundtrip_hop_delay_seconds", "gauge", "Per-hop delay of the last delivered probe.", ("route", "hop")),
    (
        "mail_roundtrip_server_delivery_seconds",
        "gauge",
        "Delivery time of the last probe according to the Received header of the last hop.",
        ("route",),
    ),
    (
        "mail_roundtrip_auth_results_total",
        "counter",
        "Probes found, by the receiver's authentication result per method (spf, dkim, dmarc, arc), "
        "from its own Authentication-Results header.",
        ("route", "method", "result"),
    ),
    (
        "mail_roundtrip_auth_result",
        "gauge",
        "The receiver's authentication result for the newest probe found (1 for its result, 0 for the others).",
        ("route", "method", "result"),
    ),
    (
        "mail_roundtrip_auth_header_present",
        "gauge",
        "Whether the newest probe found carried an Authentication-Results header with the receiver's authserv-id.",
        ("route",),
    ),
    (
        "mail_roundtrip_dkim_aligned",
        "gauge",
        "Whether a passing DKIM signature of the newest probe found is aligned with its From domain.",
        ("route",),
    ),
    (
        "mail_roundtrip_dmarc_policy",
        "gauge",
        "The From domain's published DMARC policy as the receiver reported it for the newest probe found.",
        ("route", "policy"),
    ),
    (
        "mail_roundtrip_dmarc_disposition",
        "gauge",
        "The DMARC disposition the receiver applied to the newest probe found.",
        ("route", "disposition"),
    ),
    (
        "mail_roundtrip_spam_verdicts_total",
        "counter",
        "Probes found, by the receiver's spam filter verdict (ham, spam, none: no filter header).",
        ("route", "verdict"),
    ),
    (
        "mail_roundtrip_spam_verdict",
        "gauge",
        "The receiver's spam filter verdict on the newest probe found (1 for its verdict, 0 for the others).",
        ("route", "verdict"),
    ),
    ("mail_roundtrip_spam_score", "gauge", "The spam filter's score of the newest probe found.", ("route",)),
    # --- logs: source health -----------------------------------------------------------------
    ("mail_log_up", "gauge", "Whether the last read of a log source succeeded.", ("source",)),
    (
        "mail_log_lines_total",
        "counter",
        "Log lines read, by the program class that wrote them (postfix, exim, dovecot, other, malformed).",
        ("source", "program"),
    ),
    (
        "mail_log_lines_unparsed_total",
        "counter",
        "Log lines of a known program that its parser did not understand, by program class.",
        ("source", "program"),
    ),
    (
        "mail_log_last_line_timestamp_seconds",
        "gauge",
        "Unix time of the newest log line seen (its own timestamp; the read time when it has none).",
        ("source",),
    ),
    (
        "mail_log_read_errors_total",
        "counter",
        "Problems met while reading a log source, by reason (too_long, truncated, rotated, decode, dropped, ...).",
        ("source", "reason"),
    ),
    # --- logs: mail flow (Postfix and Exim) -----------------------------------------------------
    ("mail_log_messages_received_total", "counter", "Messages accepted into the queue.", ("source",)),
    (
        "mail_log_deliveries_total",
        "counter",
        "Delivery attempts per recipient, by transport class and status (sent, deferred, bounced, expired).",
        ("source", "transport", "status"),
    ),
    (
        "mail_log_delivery_dsn_total",
        "counter",
        "Delivery attempts by status and enhanced status code (a bounded set; others as 4.other, 5.other).",
        ("source", "status", "dsn"),
    ),
    (
        "mail_log_delivery_delay_seconds",
        "histogram",
        "Real delivery delay of delivered mail from the log's delay= and delays=a/b/c/d, by stage.",
        ("source", "transport", "stage"),
    ),
    (
        "mail_log_deliveries_by_domain_total",
        "counter",
        "Delivery attempts by status and recipient domain (configured or first N seen; the rest as other).",
        ("source", "status", "domain"),
    ),
    # --- logs: Postfix ---------------------------------------------------------------------------
    ("mail_postfix_smtpd_connections_total", "counter", "Connections accepted by smtpd.", ("source",)),
    ("mail_postfix_smtpd_disconnections_total", "counter", "Clients that disconnected from smtpd.", ("source",)),
    (
        "mail_postfix_smtpd_lost_connections_total",
        "counter",
        "Connections lost by smtpd, by the SMTP stage in progress.",
        ("source", "stage"),
    ),
    (
        "mail_postfix_smtpd_rejects_total",
        "counter",
        "Rejects by smtpd (NOQUEUE and after the queue id, milter and proxy), by reply code and a reason class.",
        ("source", "code", "reason"),
    ),
    ("mail_postfix_smtpd_sasl_failures_total", "counter", "SASL authentication failures at smtpd.", ("source",)),
    (
        "mail_postfix_tls_connections_total",
        "counter",
        "TLS connections established, by direction (inbound, outbound) and protocol version.",
        ("source", "direction", "protocol"),
    ),
    (
        "mail_postfix_tls_failures_total",
        "counter",
        "TLS handshake failures, by direction (inbound, outbound).",
        ("source", "direction"),
    ),
    ("mail_postfix_qmgr_removed_total", "counter", "Messages removed from the queue by qmgr.", ("source",)),
    ("mail_postfix_qmgr_expired_total", "counter", "Messages expired by qmgr (maximal_queue_lifetime).", ("source",)),
    ("mail_postfix_cleanup_rejects_total", "counter", "Messages rejected by cleanup.", ("source",)),
    (
        "mail_postfix_cleanup_milter_actions_total",
        "counter",
        "Milter actions (in smtpd and cleanup), by action (reject, discard, hold, quarantine, other).",
        ("source", "action"),
    ),
    ("mail_postfix_bounce_notices_total", "counter", "Delivery status notices sent by bounce.", ("source",)),
    (
        "mail_postfix_postscreen_actions_total",
        "counter",
        "postscreen decisions, by action (connect, pass_new, pass_old, fail, reject, drop, ...) and test.",
        ("source", "action", "test"),
    ),
    # --- logs: Exim ------------------------------------------------------------------------------
    ("mail_exim_rejects_total", "counter", "SMTP rejects logged by Exim, by reason class.", ("source", "reason")),
    ("mail_exim_frozen_total", "counter", "Messages frozen by Exim.", ("source",)),
    ("mail_exim_panics_total", "counter", "Panic log entries of Exim.", ("source",)),
    # --- logs: Dovecot ---------------------------------------------------------------------------
    (
        "mail_dovecot_logins_total",
        "counter",
        "Logins to Dovecot, by protocol, result (success, failure) and a bounded reason.",
        ("source", "protocol", "result", "reason"),
    ),
    (
        "mail_dovecot_lmtp_deliveries_total",
        "counter",
        "LMTP deliveries by Dovecot, by result (saved, failed).",
        ("source", "result"),
    ),
    # --- incidents ------------------------------------------------------------------------
    ("mail_incidents_total", "counter", "Incidents opened, persisted across restarts.", ("service", "severity")),
    ("mail_incidents_open", "gauge", "Incidents open now.", ("service", "severity")),
    ("mail_incident_oldest_open_seconds", "gauge", "Age of the oldest open incident.", ("service",)),
    (
        "mail_incident_recovery_seconds",
        "histogram",
        "Time to recover from incidents, persisted.",
        ("service", "severity"),
    ),
    ("mail_mttr_seconds", "gauge", "Mean time to recover over a window.", ("service", "window")),
    ("mail_mtbf_seconds", "gauge", "Mean time between failures over a window.", ("service", "window")),
    ("mail_availability_ratio", "gauge", "Availability over a window, maintenance excluded.", ("service", "window")),
    ("mail_downtime_seconds", "gauge", "Downtime over a window, maintenance excluded.", ("service", "window")),
    ("mail_webhook_notifications_total", "counter", "Alertmanager notifications received, by outcome.", ("result",)),
    (
        "mail_exporter_leader",
        "gauge",
        "Whether this exporter holds the lease that runs the once-only jobs (1) or is a standby (0); "
        "always 1 on a SQLite store.",
        (),
    ),
    # --- objectives -----------------------------------------------------------------------
    ("mail_rto_estimate_seconds", "gauge", "Estimated recovery time of a service.", ("service",)),
    ("mail_rto_target_seconds", "gauge", "Recovery time objective of a service.", ("service",)),
    ("mail_mttr_target_seconds", "gauge", "MTTR objective of a service.", ("service",)),
    ("mail_availability_target_ratio", "gauge", "Availability objective of a service.", ("service",)),
    ("mail_rpo_estimate_seconds", "gauge", "Estimated data loss window of a dataset.", ("dataset",)),
    ("mail_rpo_target_seconds", "gauge", "Recovery point objective of a dataset.", ("dataset",)),
    (
        "mail_backup_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the newest good backup.",
        ("dataset", "backup"),
    ),
    ("mail_backup_up", "gauge", "Whether the last read of a backup source succeeded.", ("dataset", "backup")),
    (
        "mail_replication_lag_seconds",
        "gauge",
        "Replication lag: canary written on primary, seen on replica.",
        ("dataset", "replica"),
    ),
    ("mail_replication_up", "gauge", "Whether the last replica measurement succeeded.", ("dataset", "replica")),
    ("mail_drill_last_timestamp_seconds", "gauge", "Unix time of the last failover or restore drill.", ("service",)),
    ("mail_maintenance_active", "gauge", "1 inside a maintenance window of a service.", ("service",)),
)
