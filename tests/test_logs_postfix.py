"""The Postfix log parser (exporter/logs/postfix.py) against recorded-style Postfix 3.7 logs.

The fixtures under ``tests/testdata/logs/postfix/`` are Postfix 3.7 (Debian 12) logs of two
hosts: ``mx1-classic.log`` (classic rsyslog timestamps, two instances ``postfix`` and
``postfix-out``, ``submission/smtpd``, postscreen with the pre-3.6 WHITELISTED/BLACKLISTED
names, short queue ids) and ``mx2-rfc3339.log`` (RFC 3339 timestamps, long queue ids,
milters, header/body checks, tlsproxy with connection reuse, ``smtps/smtpd``).  The expected
tallies below were counted by hand from the fixtures, line by line; ``unparsed.log`` holds
Postfix lines in shapes the parser must not claim to understand.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.core import metrics
from exporter.core.model import CheckState
from exporter.logs import postfix
from exporter.logs.parsers import PARSERS, ParseOptions
from exporter.logs.record import LogRecord, parse_line, program_class
from exporter.logs.tally import DELAY_BUCKETS, Tally

DATA = Path(__file__).resolve().parent / "testdata" / "logs" / "postfix"
NOW = 1_796_644_800.0  # 2026-12-07T12:00:00Z, the fixtures' day: classic timestamps get its year

# --- expected tallies, counted by hand ---------------------------------------------------------------

Counts = dict[tuple[str, tuple[str, ...]], float]

DEL = "mail_log_deliveries_total"
DSN = "mail_log_delivery_dsn_total"
PS = "mail_postfix_postscreen_actions_total"
LOST = "mail_postfix_smtpd_lost_connections_total"
REJ = "mail_postfix_smtpd_rejects_total"
TLS = "mail_postfix_tls_connections_total"
TLSF = "mail_postfix_tls_failures_total"
MILTER = "mail_postfix_cleanup_milter_actions_total"

EXPECTED_MX1: Counts = {
    # cleanup message-id= of 3F2A.., 5B3C.., 7D5E.., 8E6F.., 9F7A.. (a bounce), A1B2.., B2C3.. (a
    # bounce), C3D4.., D4E5.., 0B1C.. (a bounce), F6A7.. (the expiry bounce)
    ("mail_log_messages_received_total", ()): 11,
    # 20 delivery lines; the two address-verification probes (deliverable, undeliverable) do not count
    (DEL, ("lmtp", "sent")): 2,
    (DEL, ("virtual", "sent")): 1,
    (DEL, ("local", "sent")): 1,
    (DEL, ("pipe", "sent")): 1,
    (DEL, ("pipe", "bounced")): 1,
    (DEL, ("pipe", "deferred")): 1,
    (DEL, ("smtp", "sent")): 5,
    (DEL, ("smtp", "deferred")): 3,
    (DEL, ("smtp", "bounced")): 3,
    (DEL, ("other", "deferred")): 1,  # postfix-out/error
    (DEL, ("other", "sent")): 1,  # postfix-out/discard
    (DSN, ("sent", "2.0.0")): 11,
    (DSN, ("bounced", "5.2.2")): 1,
    (DSN, ("bounced", "5.1.1")): 1,
    (DSN, ("bounced", "5.7.26")): 1,
    (DSN, ("bounced", "5.other")): 1,  # Outlook's 5.7.708
    (DSN, ("deferred", "4.3.0")): 1,
    (DSN, ("deferred", "4.4.1")): 2,
    (DSN, ("deferred", "4.7.1")): 1,
    (DSN, ("deferred", "4.other")): 1,  # Outlook's 4.7.650
    # smtpd: 20 sessions of postfix (smtpd and submission/smtpd) and 1 of postfix-out
    ("mail_postfix_smtpd_connections_total", ()): 21,
    ("mail_postfix_smtpd_disconnections_total", ()): 21,
    (LOST, ("rcpt",)): 2,
    (LOST, ("starttls",)): 1,
    (LOST, ("connect",)): 1,
    (LOST, ("auth",)): 1,
    (LOST, ("data",)): 1,
    (LOST, ("unknown",)): 1,
    (LOST, ("ehlo",)): 1,
    (REJ, ("550", "unknown_user")): 2,  # one NOQUEUE, one after the queue id was assigned
    (REJ, ("554", "relay_denied")): 1,
    (REJ, ("450", "client_hostname")): 1,
    (REJ, ("554", "blocklist")): 1,
    (REJ, ("450", "greylist")): 1,
    (REJ, ("504", "helo")): 1,
    (REJ, ("450", "sender_domain")): 1,
    (REJ, ("450", "rate_limit")): 1,
    (REJ, ("554", "policy")): 1,  # access table, at CONNECT
    (REJ, ("550", "policy")): 1,  # SPF policy service
    (REJ, ("452", "other")): 1,  # insufficient system storage
    (REJ, ("451", "policy")): 1,  # smtpd milter-reject at RCPT
    (MILTER, ("reject",)): 1,  # the same line
    ("mail_postfix_smtpd_sasl_failures_total", ()): 3,
    (TLS, ("inbound", "TLSv1.3")): 2,
    (TLS, ("inbound", "TLSv1.2")): 2,
    (TLS, ("outbound", "TLSv1.3")): 1,  # "reused" is not a new connection
    (TLS, ("outbound", "TLSv1.2")): 2,
    (TLS, ("outbound", "TLSv1")): 1,
    (TLSF, ("inbound",)): 1,
    (TLSF, ("outbound",)): 1,
    ("mail_postfix_qmgr_removed_total", ()): 9,  # postsuper's "removed" is not qmgr's
    ("mail_postfix_qmgr_expired_total", ()): 1,
    ("mail_postfix_bounce_notices_total", ()): 4,
    (PS, ("connect", "none")): 10,
    (PS, ("pass_old", "none")): 2,
    (PS, ("pass_new", "none")): 1,
    (PS, ("allowlisted", "none")): 1,
    (PS, ("denylisted", "none")): 1,
    (PS, ("fail", "pregreet")): 1,
    (PS, ("fail", "dnsbl")): 1,
    (PS, ("fail", "non_smtp_command")): 1,
    (PS, ("fail", "pipelining")): 1,
    (PS, ("fail", "bare_newline")): 1,
    (PS, ("reject", "dnsbl")): 1,
    (PS, ("reject", "none")): 3,
    (PS, ("drop", "none")): 7,
    (PS, ("other", "hangup")): 1,
    (PS, ("other", "none")): 1,  # COMMAND TIME LIMIT
}

EXPECTED_MX2: Counts = {
    # 4R8mWq1, Wq2, Wr0, Ws1, Ws5, Wt2 (message-id=<>), Xb1, Xb9 (success DSN), Xc4, Xf2, Xf3, Xh6;
    # 4R8mWr3 was rejected by header_checks before its Message-ID header
    ("mail_log_messages_received_total", ()): 12,
    (DEL, ("virtual", "sent")): 1,
    (DEL, ("lmtp", "sent")): 1,
    (DEL, ("lmtp", "deferred")): 1,
    (DEL, ("lmtp", "bounced")): 1,
    (DEL, ("smtp", "sent")): 1,
    (DEL, ("smtp", "deferred")): 3,
    (DSN, ("sent", "2.0.0")): 3,
    (DSN, ("deferred", "4.2.2")): 1,
    (DSN, ("deferred", "4.7.5")): 1,
    (DSN, ("deferred", "4.4.1")): 1,
    (DSN, ("deferred", "4.4.2")): 1,
    (DSN, ("bounced", "5.1.1")): 1,
    ("mail_postfix_smtpd_connections_total", ()): 8,
    ("mail_postfix_smtpd_disconnections_total", ()): 8,
    (LOST, ("starttls",)): 1,
    (LOST, ("auth",)): 1,
    ("mail_postfix_smtpd_sasl_failures_total", ()): 1,
    (TLS, ("inbound", "TLSv1.3")): 3,
    (TLS, ("inbound", "TLSv1.2")): 2,  # one of them by tlsproxy for postscreen
    (TLS, ("inbound", "TLSv1")): 1,
    (TLS, ("outbound", "TLSv1.3")): 1,  # logged by tlsproxy and smtp: counted once, at smtp
    (TLSF, ("inbound",)): 1,
    (TLSF, ("outbound",)): 1,  # tlsproxy's SSL_connect error; its "handshake failed" is a companion
    ("mail_postfix_cleanup_rejects_total", ()): 3,  # milter-reject, header, body
    (MILTER, ("reject",)): 1,
    (MILTER, ("discard",)): 1,
    (MILTER, ("hold",)): 2,  # cleanup at END-OF-MESSAGE, smtpd at RCPT
    ("mail_postfix_qmgr_removed_total", ()): 2,
    ("mail_postfix_qmgr_expired_total", ()): 1,  # force-expired
    ("mail_postfix_bounce_notices_total", ()): 5,
    (PS, ("connect", "none")): 5,
    (PS, ("pass_old", "none")): 1,
    (PS, ("pass_new", "none")): 1,
    (PS, ("allowlisted", "none")): 1,
    (PS, ("denylisted", "none")): 1,
    (PS, ("reject", "none")): 2,
    (PS, ("drop", "none")): 3,
    (PS, ("other", "hangup")): 1,
    (PS, ("other", "none")): 1,  # ALLOWLIST VETO
}

#: delay= of the delivered (status=sent) lines, by transport: the histogram's sums.
SENT_DELAYS = {
    "mx1-classic.log": {
        "lmtp": [0.45, 0.47],
        "virtual": [0.12],
        "local": [0.03],
        "pipe": [1.2],
        "smtp": [0.9, 1.6, 0.2, 1.9, 0.61],
        "other": [0.08],
    },
    "mx2-rfc3339.log": {"virtual": [0.35], "smtp": [0.9], "lmtp": [0.2]},
}

# --- helpers ------------------------------------------------------------------------------------------


def records(name: str) -> list[LogRecord]:
    out = []
    for line in (DATA / name).read_text().splitlines():
        rec = parse_line(line, now=NOW)
        assert rec is not None, line
        assert program_class(rec.program) == "postfix", rec.program
        out.append(rec)
    return out


def run(recs: list[LogRecord], opts: ParseOptions | None = None) -> tuple[Tally, list[bool]]:
    tally = Tally()
    opts = opts or ParseOptions()
    return tally, [postfix.parse(rec, tally, opts) for rec in recs]


def rec(message: str, program: str = "postfix/smtpd") -> LogRecord:
    return LogRecord(None, "mx", program, 123, message)


def delivery(
    relay: str = "r[192.0.2.2]:25",
    delay: str = "1",
    delays: str = "0/0/0.5/0.5",
    dsn: str = "2.0.0",
    status: str = "sent (250 ok)",
) -> str:
    return f"4F1A2B3C4D: to=<a@b.example>, relay={relay}, delay={delay}, delays={delays}, dsn={dsn}, status={status}"


def one(message: str, program: str = "postfix/smtpd", opts: ParseOptions | None = None) -> tuple[bool, Counts]:
    tally = Tally()
    ok = postfix.parse(rec(message, program), tally, opts or ParseOptions())
    return ok, dict(tally.counts)


def assert_bounded(tally: Tally, opts: ParseOptions) -> None:
    """Every label value the parser produced is in the bounded set of its family and label."""
    domains = opts.domains | opts.seen_domains | {"other"}
    keys = list(tally.counts) + list(tally.observations)
    for family, labels in keys:
        sets = postfix.LABEL_SETS[family]
        assert len(labels) == len(sets), (family, labels)
        for value, allowed in zip(labels, sets, strict=True):
            assert value in (domains if allowed is None else allowed), (family, labels)
    assert len(opts.seen_domains) <= opts.top_domains
    for (family, _), values in tally.observations.items():
        assert family == "mail_log_delivery_delay_seconds"
        assert all(math.isfinite(v) and v >= 0 for v in values)


# --- the fixtures ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [("mx1-classic.log", EXPECTED_MX1), ("mx2-rfc3339.log", EXPECTED_MX2)])
def test_fixture_counts_are_exact(name: str, expected: Counts) -> None:
    recs = records(name)
    tally, understood = run(recs)
    not_understood = [r.message for r, ok in zip(recs, understood, strict=True) if not ok]
    assert not_understood == []
    assert dict(tally.counts) == expected
    assert_bounded(tally, ParseOptions())


def test_both_timestamp_formats_and_instances() -> None:
    mx1, mx2 = records("mx1-classic.log"), records("mx2-rfc3339.log")
    assert {r.program.split("/")[0] for r in mx1} == {"postfix", "postfix-out"}
    assert {r.program for r in mx1} >= {"postfix/submission/smtpd", "postfix-out/smtp", "postfix/smtpd"}
    assert {r.program for r in mx2} >= {"postfix/smtps/smtpd", "postfix/tlsproxy"}
    assert all(r.timestamp is not None for r in mx1 + mx2)
    # 2026-12-07T09:00:00.101234+01:00
    assert mx2[0].timestamp == pytest.approx(1_796_630_400.101234, abs=1e-6)


@pytest.mark.parametrize("name", sorted(SENT_DELAYS))
def test_delay_histogram_matches_the_delivered_mail(name: str) -> None:
    recs = records(name)
    tally, _ = run(recs)
    text = (DATA / name).read_text()
    # An independent reading of the sent lines: delay= and delays=a/b/c/d.
    sent = re.findall(
        r"postfix[^/\s]*/(\w+)\[\d+\]: \w+: to=<.*?delay=([\d.]+), delays=([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+),"
        r" dsn=[\d.]+, status=sent ",
        text,
    )
    delivered = sum(n for (family, labels), n in tally.counts.items() if family == DEL and labels[1] == "sent")
    assert len(sent) == delivered
    stages = postfix.DELAY_STAGES
    for transport, want in SENT_DELAYS[name].items():
        total = tally.observations[("mail_log_delivery_delay_seconds", (transport, "total"))]
        assert sorted(total) == sorted(want)
    for i, stage in enumerate(stages):
        got = [v for (_, (_, s)), vs in tally.observations.items() if s == stage for v in vs]
        assert len(got) == delivered
        assert sum(got) == pytest.approx(sum(float(m[1 + i]) for m in sent))
    # Through the check state: count == delivered, sum == sum of delay= (within 1 s, exactly here).
    state = CheckState()
    tally.flush(state, "maillog")
    hists = [h for (f, _), h in state.histograms.items() if f == "mail_log_delivery_delay_seconds"]
    totals = [h for (_, labels), h in state.histograms.items() if dict(labels)["stage"] == "total"]
    assert sum(h.count for h in totals) == delivered
    assert sum(h.total for h in totals) == pytest.approx(sum(float(m[1]) for m in sent))
    assert all(h.buckets[:-1] == DELAY_BUCKETS for h in hists)


def test_every_counted_key_fits_the_metrics_contract() -> None:
    tally, _ = run(records("mx1-classic.log") + records("mx2-rfc3339.log"), ParseOptions(top_domains=3))
    state = CheckState()
    tally.flush(state, "maillog")  # raises when a label tuple does not fit the contract
    assert state.counters and state.histograms
    for family, sets in postfix.LABEL_SETS.items():
        assert metrics.FAMILIES[family].labels == ("source", *metrics.FAMILIES[family].labels[1:])
        assert len(metrics.FAMILIES[family].labels) == len(sets) + 1, family


def test_domain_labels_are_bounded() -> None:
    opts = ParseOptions(domains=frozenset({"example.com"}), top_domains=2)
    tally, _ = run(records("mx1-classic.log"), opts)
    by_domain = {labels: n for (f, labels), n in tally.counts.items() if f == "mail_log_deliveries_by_domain_total"}
    # Admitted in order: example.com (configured), then mx1.example.com and example.net (first seen).
    assert by_domain == {
        ("sent", "example.com"): 6,
        ("bounced", "example.com"): 1,
        ("deferred", "example.com"): 1,
        ("sent", "mx1.example.com"): 1,
        ("sent", "example.net"): 1,
        ("bounced", "example.net"): 1,
        ("sent", "other"): 3,
        ("deferred", "other"): 4,
        ("bounced", "other"): 2,
    }
    assert sum(by_domain.values()) == 20
    assert opts.seen_domains == {"mx1.example.com", "example.net"}
    assert_bounded(tally, opts)
    # Without domains configured, no domain label at all.
    plain, _ = run(records("mx1-classic.log"))
    assert not [k for k in plain.counts if k[0] == "mail_log_deliveries_by_domain_total"]


def test_unparsed_lines_return_false_and_count_nothing() -> None:
    recs = records("unparsed.log")
    assert len(recs) >= 15
    tally, understood = run(recs)
    assert [r.message for r, ok in zip(recs, understood, strict=True) if ok] == []
    assert not tally


def test_the_parser_is_registered() -> None:
    assert PARSERS["postfix"] is postfix.parse_postfix


# --- single lines ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            "550 5.1.1 <a@example.com>: Recipient address rejected: User unknown in local recipient table",
            "unknown_user",
        ),
        (
            "450 4.1.1 <a@example.com>: Recipient address rejected: undeliverable address: host x said: 550",
            "unknown_user",
        ),
        ("554 5.7.1 <a@example.org>: Relay access denied", "relay_denied"),
        ("554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org", "blocklist"),
        ("554 5.7.1 Service unavailable; Sender address [a@x] blocked using dbl.example", "blocklist"),
        ("450 4.7.1 <a@example.com>: Recipient address rejected: Greylisted, see http://postgrey/", "greylist"),
        (
            "451 4.7.1 <a@example.com>: Recipient address rejected: greylisting in action, please come back later",
            "greylist",
        ),
        ("504 5.5.2 <localhost>: Helo command rejected: need fully-qualified hostname", "helo"),
        ("450 4.7.1 <x.invalid>: Helo command rejected: Host not found", "helo"),
        ("450 4.1.8 <a@x.invalid>: Sender address rejected: Domain not found", "sender_domain"),
        (
            "550 5.7.27 <a@x.example>: Sender address rejected: Domain x.example does not accept mail (nullMX)",
            "sender_domain",
        ),
        ("450 4.7.25 Client host rejected: cannot find your hostname, [192.0.2.1]", "client_hostname"),
        ("550 5.7.25 Client host rejected: cannot find your reverse hostname, [192.0.2.1]", "client_hostname"),
        ("450 4.7.1 <a@example.com>: Recipient address rejected: Rate limit reach, retry later", "rate_limit"),
        ("421 4.7.0 mx.example.com Error: too many connections from 192.0.2.1", "rate_limit"),
        ("554 5.7.1 <x[192.0.2.1]>: Client host rejected: Access denied", "policy"),
        ("553 5.7.1 <a@example.com>: Sender address rejected: not owned by user bob", "policy"),
        ("550 5.7.1 <a@example.com>: Recipient address rejected: Message rejected due to: SPF fail", "policy"),
        ("452 4.3.1 Insufficient system storage", "other"),
        ("421 4.3.0 mx.example.com Server local data error", "other"),
        ("", "other"),
    ],
)
def test_reject_reasons(text: str, reason: str) -> None:
    assert postfix.classify_reject(text) == reason
    assert reason in postfix.REJECT_REASONS


def test_reject_reason_ignores_the_client_fields() -> None:
    line = (
        "NOQUEUE: reject: RCPT from x[192.0.2.1]: 452 4.3.1 Insufficient system storage;"
        " from=<relay-access-denied@x> to=<blocked-using@y> proto=ESMTP helo=<user-unknown.example>"
    )
    assert one(line)[1] == {(REJ, ("452", "other")): 1}


@pytest.mark.parametrize(
    ("message", "counts"),
    [
        # Postfix 3.10 writes the queue id (or NOQUEUE) in front of lost connection and timeouts.
        ("NOQUEUE: lost connection after DATA (0 bytes) from unknown[192.0.2.1]", {(LOST, ("data",)): 1}),
        ("4F1A2B3C4D: lost connection after BDAT (12 bytes) from x[192.0.2.1]", {(LOST, ("bdat",)): 1}),
        ("lost connection after END-OF-MESSAGE from x[192.0.2.1]", {(LOST, ("end-of-data",)): 1}),
        ("lost connection after RSET from x[192.0.2.1]", {(LOST, ("rset",)): 1}),
        ("lost connection after ETRN from x[192.0.2.1]", {(LOST, ("other",)): 1}),
        ("NOQUEUE: timeout after DATA (1 bytes) from x[192.0.2.1]", {}),
        ("too many errors after AUTH from x[192.0.2.1]", {}),
        (
            "proxy-reject: END-OF-MESSAGE: 554 5.7.1 Message rejected by content filter; from=<a@b> to=<c@d>",
            {(REJ, ("554", "policy")): 1},
        ),
        ("proxy-accept: END-OF-MESSAGE: 250 2.0.0 Ok: queued as 4F1A; from=<a@b> to=<c@d> proto=ESMTP", {}),
        (
            "NOQUEUE: reject: RCPT from x[192.0.2.1]: weird reply without a code; from=<a@b>",
            {(REJ, ("other", "other")): 1},
        ),
        (
            "NOQUEUE: reject: RCPT from x[192.0.2.1]:2525: 550 5.1.1 <a@b>: Recipient address rejected: User unknown;"
            " from=<>",
            {(REJ, ("550", "unknown_user")): 1},
        ),
        (
            "NOQUEUE: reject: RCPT from x[2001:db8::1]: 554 5.7.1 <a@b>: Relay access denied; from=<>",
            {(REJ, ("554", "relay_denied")): 1},
        ),
        (
            "NOQUEUE: milter-reject: CONNECT from x[192.0.2.1]: 421 4.7.0 Server closing connection; proto=SMTP",
            {(REJ, ("421", "policy")): 1, (MILTER, ("reject",)): 1},
        ),
        (
            "4F1A2B3C4D: milter-discard: END-OF-MESSAGE from x[192.0.2.1]: milter triggers DISCARD action;",
            {(MILTER, ("discard",)): 1},
        ),
        (
            "NOQUEUE: filter: RCPT from x[192.0.2.1]: <a@b>: Recipient address triggers FILTER smtp:[127.0.0.1]:10025;",
            {},
        ),
        (
            "Verified TLS connection established from x[192.0.2.1]: TLSv1.4 with cipher FOO (256/256 bits)",
            {(TLS, ("inbound", "other")): 1},
        ),
        (
            "Anonymous TLS connection established from x[192.0.2.1] to mx.example.com: TLSv1.3 with cipher"
            " TLS_AES_256_GCM_SHA384 (256/256 bits)",
            {(TLS, ("inbound", "TLSv1.3")): 1},
        ),
        (
            "Anonymous TLS connection established from x[192.0.2.1]: SSLv3 with cipher RC4-SHA (128/128 bits)",
            {(TLS, ("inbound", "other")): 1},
        ),
        (
            "warning: x[192.0.2.1]: SASL CRAM-MD5 authentication failed: authentication failure",
            {("mail_postfix_smtpd_sasl_failures_total", ()): 1},
        ),
        (
            "warning: x[192.0.2.1]:587: SASL LOGIN authentication failed: Connection lost to authentication server",
            {("mail_postfix_smtpd_sasl_failures_total", ()): 1},
        ),
    ],
)
def test_smtpd_lines(message: str, counts: Counts) -> None:
    assert one(message) == (True, counts)


@pytest.mark.parametrize(
    ("program", "message", "counts"),
    [
        # The daemon is the last component: any syslog_name, any instance.
        ("mta-in/smtpd", "connect from x[192.0.2.1]", {("mail_postfix_smtpd_connections_total", ()): 1}),
        ("postfix/submission", "connect from x[192.0.2.1]", {("mail_postfix_smtpd_connections_total", ()): 1}),
        (
            "postfix-out/relay/smtp",
            delivery(),
            None,
        ),
        (
            "postfix/relay",
            delivery(),
            None,
        ),
        (
            "postfix/dovecot/pipe",
            delivery(relay="dovecot", delays="0/0/0/1", dsn="4.3.0", status="deferred (x)"),
            {(DEL, ("pipe", "deferred")): 1, (DSN, ("deferred", "4.3.0")): 1},
        ),
        (
            "postfix/custom-agent",
            delivery(relay="none", delays="0/0/0/1", dsn="5.9.9", status="bounced (x)"),
            {(DEL, ("other", "bounced")): 1, (DSN, ("bounced", "5.other")): 1},
        ),
        (
            "postfix/qmgr",
            delivery(relay="none", delays="1/0/0/0", dsn="4.3.0", status="deferred (mail transport unavailable)"),
            {(DEL, ("other", "deferred")): 1, (DSN, ("deferred", "4.3.0")): 1},
        ),
        (
            "postfix/smtp",
            delivery(delay="9", delays="0/0/9/0", dsn="4.4.7", status="expired (x)"),
            {(DEL, ("smtp", "expired")): 1, (DSN, ("expired", "4.4.7")): 1},
        ),
        (
            "postfix/smtp",
            delivery(dsn="x", status="bounced (x)"),
            {(DEL, ("smtp", "bounced")): 1, (DSN, ("bounced", "other")): 1},
        ),
        (
            "postfix/smtp",
            delivery(dsn="2.1.5", status="deliverable (250 2.1.5 Ok)"),
            {},
        ),
        ("postfix/smtp", "SSL_connect error to r[192.0.2.2]:25: Connection reset by peer", {(TLSF, ("outbound",)): 1}),
        (
            "postfix/smtp",
            "4F1A2B3C4D: host r[192.0.2.2] said: 421 4.7.0 Try again later (in reply to end of DATA command)",
            {},
        ),
        (
            "postfix/smtp",
            "4F1A2B3C4D: lost connection with r[192.0.2.2] while receiving the initial server greeting",
            {},
        ),
        ("postfix/smtp", "r[192.0.2.2]:25: Matched subjectAltName: r.example", {}),
        (
            "postfix/lmtp",
            "Untrusted TLS connection established to r[192.0.2.2]:24: TLSv1.3 with cipher X (256/256 bits)",
            {(TLS, ("outbound", "TLSv1.3")): 1},
        ),
        (
            "postfix/tlsproxy",
            "Verified TLS connection established to r[192.0.2.2]:25: TLSv1.3 with cipher X (256/256 bits)",
            {},
        ),
        ("postfix/tlsproxy", "SSL_accept error from x[192.0.2.1]: -1", {(TLSF, ("inbound",)): 1}),
        (
            "postfix/cleanup",
            "4F1A2B3C4D: milter-quarantine: END-OF-MESSAGE from x[192.0.2.1]: quarantined;",
            {(MILTER, ("quarantine",)): 1},
        ),
        (
            "postfix/cleanup",
            "4F1A2B3C4D: milter-redirect: END-OF-MESSAGE from x[192.0.2.1]: redirected;",
            {(MILTER, ("other",)): 1},
        ),
        (
            "postfix/cleanup",
            "4F1A2B3C4D: milter-header-reject: header X-Spam: yes from x[192.0.2.1]; from=<a@b>: 5.7.1 no",
            {("mail_postfix_cleanup_rejects_total", ()): 1},
        ),
        (
            "postfix/cleanup",
            "4F1A2B3C4D: reject: mime-error invalid message/* or multipart/* encoding domain: 8bit"
            " from x[192.0.2.1]; from=<a@b>",
            {("mail_postfix_cleanup_rejects_total", ()): 1},
        ),
        ("postfix/cleanup", "4F1A2B3C4D: resent-message-id=<a@b>", {}),
        ("postfix/cleanup", "warning: 4F1A2B3C4D: message rejected: hopcount exceeded", {}),
        (
            "postfix/bounce",
            "4F1A2B3C4D: postmaster delay notification: 5A1B2C3D4E",
            {("mail_postfix_bounce_notices_total", ()): 1},
        ),
        ("postfix/qmgr", "4F1A2B3C4D: skipped, still being delivered", {}),
        (
            "postfix/postscreen",
            "NOQUEUE: reject: RCPT from [192.0.2.1]:5: 521 5.7.1 Service unavailable; client [192.0.2.1] blocked using"
            " zen.spamhaus.org; from=<a@b>, to=<c@d>, proto=ESMTP, helo=<x>",
            {(PS, ("reject", "dnsbl")): 1},
        ),
        (
            "postfix/postscreen",
            "reject: connect from [192.0.2.1]:5: all screening ports busy",
            {(PS, ("reject", "none")): 1},
        ),
        ("postfix/postscreen", "COMMAND COUNT LIMIT from [192.0.2.1]:5 after RCPT", {(PS, ("other", "none")): 1}),
        ("postfix/postscreen", "COMMAND LENGTH LIMIT from [192.0.2.1]:5 after DATA", {(PS, ("other", "none")): 1}),
        ("postfix/postscreen", "WHITELIST VETO [192.0.2.1]:5", {(PS, ("other", "none")): 1}),
        ("postfix/postscreen", "DATA without valid RCPT from [192.0.2.1]:5", {}),
        ("postfix/postsuper", "Requeued: 3 messages", {}),
        ("postfix/postsuper", "4F1A2B3C4D: placed on hold", {}),
        ("postfix/verify", "warning: verify cache btree:/var/lib/postfix/verify_cache: cache cleanup failed", {}),
    ],
)
def test_other_daemons(program: str, message: str, counts: Counts | None) -> None:
    ok, got = one(message, program)
    assert ok
    if counts is None:  # a delivery through the smtp client, whatever the service name
        assert got[(DEL, ("smtp", "sent"))] == 1
    else:
        assert got == counts


def test_delay_observations_of_one_delivery() -> None:
    tally = Tally()
    line = (
        "4F1A2B3C4D: to=<a@b>, relay=r[192.0.2.2]:25, delay=432000, delays=431990/1.5/8/0.5, dsn=2.0.0, status=sent (x)"
    )
    assert postfix.parse(rec(line, "postfix/smtp"), tally, ParseOptions())
    assert dict(tally.observations) == {
        ("mail_log_delivery_delay_seconds", ("smtp", "total")): [432000.0],
        ("mail_log_delivery_delay_seconds", ("smtp", "before_queue")): [431990.0],
        ("mail_log_delivery_delay_seconds", ("smtp", "in_queue")): [1.5],
        ("mail_log_delivery_delay_seconds", ("smtp", "connection")): [8.0],
        ("mail_log_delivery_delay_seconds", ("smtp", "transmission")): [0.5],
    }
    # Deferred and bounced attempts are no delivery delay.
    other = Tally()
    assert postfix.parse(rec(line.replace("status=sent", "status=deferred"), "postfix/smtp"), other, ParseOptions())
    assert not other.observations


def test_a_malformed_number_counts_nothing() -> None:
    tally = Tally()
    line = "4F1A2B3C4D: to=<a@b>, relay=r, delay=1.2.3, delays=0/0/0/0, dsn=2.0.0, status=sent (x)"
    assert not postfix.parse(rec(line, "postfix/smtp"), tally, ParseOptions())
    assert not tally


@pytest.mark.parametrize(
    ("dsn", "label"),
    [("2.0.0", "2.0.0"), ("5.7.26", "5.7.26"), ("5.1.10", "5.1.10"), ("4.7.650", "4.other"), ("5.9.9", "5.other"),
     ("2.6.1", "2.other"), ("9.9.9", "other"), ("", "other"), ("5", "other")],
)  # fmt: skip
def test_dsn_labels(dsn: str, label: str) -> None:
    assert postfix.dsn_label(dsn) == label
    assert label in postfix.DSN_LABELS


def test_label_sets() -> None:
    assert len(postfix.DSN_CODES) >= 30
    assert all(re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", code) for code in postfix.DSN_CODES)
    assert len(postfix.REJECT_CODES) == 201
    assert set(postfix.LABEL_SETS) <= set(metrics.FAMILIES)
    assert {"smtp", "lmtp", "local", "virtual", "pipe", "other"} == postfix.TRANSPORTS
    assert {"TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3", "other"} == postfix.TLS_PROTOCOLS


def test_parse_postfix_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(msg: str, tally: Tally, opts: ParseOptions) -> bool:
        raise RuntimeError("parser bug")

    monkeypatch.setitem(postfix._HANDLERS, "smtpd", broken)
    assert postfix.parse_postfix(rec("connect from x[192.0.2.1]"), Tally(), ParseOptions()) is False


# --- hostile input ------------------------------------------------------------------------------------

DAEMONS = [
    "smtpd", "submission/smtpd", "smtp", "lmtp", "local", "virtual", "pipe", "error", "discard", "qmgr", "cleanup",
    "bounce", "postscreen", "tlsproxy", "pickup", "postsuper", "master", "anvil", "postfix-script", "new-daemon",
]  # fmt: skip
_FIXTURE_MESSAGES = [r.message for name in SENT_DELAYS for r in records(name)]


def _huge(n: int = 1 << 20) -> list[str]:
    return [
        "\ufffd" * n,
        "4F1A2B3C4D: to=<" + "a" * n,
        "4F1A2B3C4D: to=<a@b>, relay=" + "r" * n,
        "4F1A2B3C4D: to=<a@b>, relay=r, delay=" + "1" * n,
        "4F1A2B3C4D: to=<a@b>, relay=r, delay=1, delays=0/0/0/0, dsn=" + "2" * n,
        "NOQUEUE: reject: RCPT from " + "x" * n,
        "NOQUEUE: reject: RCPT from x: 550 " + "Blocked using " * (n // 14),
        "NOQUEUE: reject: RCPT from " + ": " * (n // 2),
        "Anonymous TLS connection established from " + "a:" * (n // 2),
        "Anonymous TLS connection established from x: " + "TLSv1.3 " * (n // 8),
        "lost connection after " + "A" * n,
        "warning: " + "x: SASL " * (n // 8),
        "4F1A2B3C4D: message-id=<" + "m" * n,
        "4F1A2B3C4D: from=<" + "f" * n,
        "PASS NEW " + "[" * n,
        "A" * 32 + ": " + "milter-" * (n // 7),
    ]


def test_huge_messages_are_fast_and_harmless() -> None:
    opts = ParseOptions(top_domains=1)
    start = time.process_time()
    for message in _huge():
        for daemon in DAEMONS:
            tally = Tally()
            assert isinstance(postfix.parse(rec(message, "postfix/" + daemon), tally, opts), bool)
            assert_bounded(tally, opts)
    assert time.process_time() - start < 20  # 320 one-MiB lines: linear-time regular expressions only


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)
_words = st.sampled_from([
    "NOQUEUE: ", "4F1A2B3C4D: ", "4R8mWq1Ntkz3Jf: ", "reject: ", "milter-", "to=<", ">, ", "relay=", "delay=",
    "delays=", ", dsn=", ", status=", "sent", "deferred", "bounced", "expired", "from ", " to ", "x[192.0.2.1]",
    ": ", "550 ", "5.7.1 ", "lost connection after ", "TLS connection established ", " with cipher ", "warning: ",
    "SASL ", " authentication failed", "PASS ", "NEW ", "CONNECT ", "DNSBL ", "blocked using ", "; from=<",
    "message-id=", "removed", " (queue active)", ", status=expired, returned to sender", " notification: ", "0.5",
    "/", "\ufffd", "\x00", " ",
])  # fmt: skip


@st.composite
def postfix_like(draw: st.DrawFn) -> str:
    """Fixture lines with pieces replaced, and word salads of the tokens Postfix lines are made of."""
    if draw(st.booleans()):
        base = draw(st.sampled_from(_FIXTURE_MESSAGES))
        i = draw(st.integers(0, len(base)))
        j = draw(st.integers(i, len(base)))
        return base[:i] + draw(st.one_of(_text, _words)) + base[j:]
    return "".join(draw(st.lists(st.one_of(_words, _text), max_size=12)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(DAEMONS), st.sampled_from(["postfix", "postfix-out", "mta"]), st.one_of(_text, postfix_like()))
def test_never_raises_and_labels_stay_bounded(daemon: str, instance: str, message: str) -> None:
    opts = ParseOptions(domains=frozenset({"example.com"}), top_domains=2)
    tally = Tally()
    assert isinstance(postfix.parse(rec(message, f"{instance}/{daemon}"), tally, opts), bool)
    assert_bounded(tally, opts)
    tally.flush(CheckState(), "fuzz")
