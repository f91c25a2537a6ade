"""The Exim main log parser: exact tallies of a recorded Debian exim4 main log and panic log,
the same traffic through syslog, each counting decision, and a property test (never raises,
only bounded label values)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.core.model import CheckState
from exporter.logs import exim
from exporter.logs.exim import REJECT_REASONS, dsn_label, exim_duration, parse_exim, transport_class
from exporter.logs.parsers import PARSERS, ParseOptions
from exporter.logs.record import LogRecord, parse_line, program_class
from exporter.logs.tally import Tally

DATA = Path(__file__).resolve().parent / "testdata" / "logs" / "exim"
ID = "1tJq2B-000ABC-1x"


def opts() -> ParseOptions:
    return ParseOptions(domains=frozenset({"example.test"}), top_domains=1)


def run(lines: list[str], options: ParseOptions | None = None) -> tuple[Tally, list[str]]:
    """Parse ``lines`` as a source would; return the tally and the lines not understood."""
    tally, options = Tally(), options or opts()
    unparsed = []
    for line in lines:
        rec = parse_line(line)
        assert rec is not None and program_class(rec.program) == "exim", line
        if not parse_exim(rec, tally, options):
            unparsed.append(line)
    return tally, unparsed


def message(text: str, options: ParseOptions | None = None) -> tuple[Tally, bool]:
    """One Exim message (what follows the timestamp)."""
    tally = Tally()
    return tally, parse_exim(LogRecord(None, "", "exim", None, text), tally, options or opts())


def mainlog() -> list[str]:
    return (DATA / "mainlog").read_text().splitlines()


# Worked out by hand, message by message, from tests/testdata/logs/exim/mainlog.
EXPECTED_COUNTS = {
    ("mail_log_messages_received_total", ()): 15,
    ("mail_log_deliveries_total", ("local", "sent")): 5,  # 2 x mail_spool, bounce to bob, address_file, maildir
    ("mail_log_deliveries_total", ("smtp", "sent")): 5,  # => and ->, smarthost, grey after deferral, cutthrough >>
    ("mail_log_deliveries_total", ("lmtp", "sent")): 1,
    ("mail_log_deliveries_total", ("pipe", "sent")): 1,
    ("mail_log_deliveries_total", ("smtp", "deferred")): 3,  # greylisted, connection refused, mailbox full
    ("mail_log_deliveries_total", ("other", "deferred")): 1,  # router defer, no transport
    ("mail_log_deliveries_total", ("smtp", "bounced")): 1,
    ("mail_log_deliveries_total", ("other", "bounced")): 2,  # unrouteable, retry timeout
    ("mail_log_deliveries_total", ("local", "bounced")): 1,
    ("mail_log_delivery_dsn_total", ("sent", "2.0.0")): 5,
    ("mail_log_delivery_dsn_total", ("sent", "2.other")): 7,  # local deliveries, "250 OK id=..."
    ("mail_log_delivery_dsn_total", ("deferred", "4.7.1")): 1,
    ("mail_log_delivery_dsn_total", ("deferred", "4.2.2")): 1,
    ("mail_log_delivery_dsn_total", ("deferred", "4.other")): 2,
    ("mail_log_delivery_dsn_total", ("bounced", "5.1.1")): 1,
    ("mail_log_delivery_dsn_total", ("bounced", "5.other")): 3,
    ("mail_log_deliveries_by_domain_total", ("sent", "example.test")): 7,  # configured
    ("mail_log_deliveries_by_domain_total", ("sent", "remote.test")): 3,  # the one top domain
    ("mail_log_deliveries_by_domain_total", ("sent", "other")): 2,
    ("mail_log_deliveries_by_domain_total", ("deferred", "other")): 4,
    ("mail_log_deliveries_by_domain_total", ("bounced", "remote.test")): 1,
    ("mail_log_deliveries_by_domain_total", ("bounced", "example.test")): 1,
    ("mail_log_deliveries_by_domain_total", ("bounced", "other")): 2,
    ("mail_exim_rejects_total", ("unknown_user",)): 3,
    ("mail_exim_rejects_total", ("relay_denied",)): 1,
    ("mail_exim_rejects_total", ("blocklist",)): 1,
    ("mail_exim_rejects_total", ("sender_verify",)): 1,
    ("mail_exim_rejects_total", ("helo",)): 2,
    ("mail_exim_rejects_total", ("policy",)): 4,  # greylisted, virus after DATA, prohibition, local policy
    ("mail_exim_rejects_total", ("rate_limit",)): 2,
    ("mail_exim_rejects_total", ("protocol",)): 4,  # synchronization, protocol error, syntax error, nonmail
    ("mail_exim_rejects_total", ("other",)): 1,  # connect ACL without a message
    ("mail_exim_frozen_total", ()): 2,  # "Frozen (delivery error message)", "frozen by root"
    ("mail_exim_panics_total", ()): 3,
}
EXPECTED_DELAYS = {
    ("mail_log_delivery_delay_seconds", ("local", "total")): [1.0, 2.0, 0.0, 0.753],
    # 62 s twice (not the "QT=9d" inside the remote's C="..." reply), 0.517 s (+millisec), 30m2s
    ("mail_log_delivery_delay_seconds", ("smtp", "total")): [62.0, 62.0, 0.517, 1802.0],
    ("mail_log_delivery_delay_seconds", ("lmtp", "total")): [0.0],
}
EXPECTED_UNPARSED = [
    "2026-12-07 08:17:00 1tJqIT-000CDE-9q a brand new kind of message line",
    "2026-12-07 08:17:01 something nobody has seen before",
]


def test_registered() -> None:
    assert PARSERS["exim"] is parse_exim


def test_mainlog_exact_tallies() -> None:
    tally, unparsed = run(mainlog())
    assert dict(tally.counts) == EXPECTED_COUNTS
    assert dict(tally.observations) == pytest.approx(EXPECTED_DELAYS)
    assert unparsed == EXPECTED_UNPARSED
    # Every counted delivery has exactly one DSN count and one domain count.
    for status in exim.STATUSES:
        deliveries = sum(n for (f, v), n in tally.counts.items() if f == "mail_log_deliveries_total" and v[1] == status)
        for family in ("mail_log_delivery_dsn_total", "mail_log_deliveries_by_domain_total"):
            assert sum(n for (f, v), n in tally.counts.items() if f == family and v[0] == status) == deliveries
    tally.flush(CheckState(), "mainlog")  # the labels fit the metrics contract


def test_mainlog_without_domains_counts_no_domain() -> None:
    tally, _ = run(mainlog(), ParseOptions())
    assert not any(f == "mail_log_deliveries_by_domain_total" for f, _ in tally.counts)
    assert tally.get("mail_log_deliveries_total", ("smtp", "sent")) == 5


@pytest.mark.parametrize("with_timestamp", [False, True], ids=["plain", "syslog_timestamp"])
def test_same_traffic_through_syslog(with_timestamp: bool) -> None:
    """Exim logging to syslog (log_file_path = syslog): the same messages, the same tallies."""
    lines = []
    for line in mainlog():
        rec = parse_line(line)
        assert rec is not None
        stamp = line[: len(line) - len(rec.message)] if with_timestamp else ""  # Exim's own stamp (and [pid])
        lines.append(f"Dec  7 {line[11:19]} mx1 exim[4242]: {stamp}{rec.message}")
    tally, unparsed = run(lines)
    assert dict(tally.counts) == EXPECTED_COUNTS
    assert dict(tally.observations) == pytest.approx(EXPECTED_DELAYS)
    assert len(unparsed) == 2


def test_syslog_split_lines() -> None:
    """Exim splits a long syslog line into "[1/2] ..." and "[2/2] ...": the first counts, the rest is understood."""
    tally, ok1 = message(f"[1/2] {ID} <= alice@sender.test H=mail.sender.test [192.0.2.10] P=esmtp S=1")
    assert ok1 and tally.get("mail_log_messages_received_total") == 1
    tally, ok2 = message("[2/2] id=part-of-a-long-line@sender.test")
    assert ok2 and not tally


def test_paniclog() -> None:
    """Panic log lines are recognised by their wording; a multi-line entry's continuation is malformed."""
    lines = (DATA / "paniclog").read_text().splitlines()
    assert parse_line(lines[1]) is None  # '  option "tls_advertise_hosts" unknown'
    tally, unparsed = run([line for line in lines if not line.startswith(" ")])
    assert dict(tally.counts) == {("mail_exim_panics_total", ()): 7}
    assert unparsed == []


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0s", 0), ("3s", 3), ("1m2s", 62), ("30m2s", 1802), ("1d2h", 93600), ("2h3m", 7380), ("1w", 604800),
     ("1w1d1h1m1s", 694861), ("1.234s", 1.234), ("0.5s", 0.5)],
)  # fmt: skip
def test_exim_duration(text: str, seconds: float) -> None:
    assert exim_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1x", "-1s", "1.5", "1s2m", "1m 2s", "QT=1s"])
def test_exim_duration_invalid(text: str) -> None:
    assert exim_duration(text) is None


@pytest.mark.parametrize(
    ("name", "cls"),
    [("remote_smtp", "smtp"), ("remote_smtp_smarthost", "smtp"), ("dkim_remote_smtp", "smtp"),
     ("dovecot_lmtp", "lmtp"), ("lmtp_delivery", "lmtp"), ("local_delivery", "local"), ("mail_spool", "local"),
     ("maildir_home", "local"), ("address_file", "local"), ("address_directory", "local"), ("address_pipe", "pipe"),
     ("procmail_pipe", "pipe"), ("address_reply", "other"), ("**bypassed**", "other"), ("", "other")],
)  # fmt: skip
def test_transport_class(name: str, cls: str) -> None:
    assert transport_class(name) == cls


@pytest.mark.parametrize(
    ("reply", "status", "dsn"),
    [("250 2.0.0 Ok: queued as 4XyZ", "sent", "2.0.0"), ("250 OK id=1tJq4E-0001aB-Cd", "sent", "2.other"),
     ("", "sent", "2.other"), ("", "deferred", "4.other"), ("", "bounced", "5.other"),
     ("SMTP error from remote mail server after RCPT TO:<a@b>: 451 4.7.1 Greylisted", "deferred", "4.7.1"),
     ("SMTP error from remote mail server after RCPT TO:<a@b>: 550-5.1.1 no", "bounced", "5.1.1"),
     ("SMTP error from remote mail server after end of data: 554 5.7.99 odd", "bounced", "5.other"),
     ("SMTP error from remote mail server after DATA: 452 temporary error", "deferred", "4.other"),
     ("Connection refused", "deferred", "4.other"), ("retry timeout exceeded", "bounced", "5.other"),
     ("host [192.0.2.1]:587 said 550 5.1.1", "bounced", "5.other")],
)  # fmt: skip
def test_dsn_label(reply: str, status: str, dsn: str) -> None:
    assert dsn_label(reply, status) == dsn


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("H=(a) [192.0.2.1] F=<a@b.test> rejected RCPT <c@example.test>: Unrouteable address", "unknown_user"),
        ("H=(a) [192.0.2.1] F=<a@b.test> rejected RCPT <c@example.test>: No Such User Here", "unknown_user"),
        ("H=(a) [192.0.2.1] F=<a@b.test> rejected RCPT <c@other.test>: relay not permitted", "relay_denied"),
        ("H=(a) [192.0.2.1] F=<a@b.test> rejected RCPT <c@d>: Rejected because 192.0.2.1 is in a black list "
         "at zen.spamhaus.org", "blocklist"),
        ("H=(a) [192.0.2.1] rejected connection in \"connect\" ACL: 192.0.2.1 is listed at bl.example", "blocklist"),
        ("H=(a) [192.0.2.1] F=<a@b.test> rejected RCPT <c@d>: Sender verify failed", "sender_verify"),
        ("H=(a) [192.0.2.1] F=<a@b.test> temporarily rejected RCPT <c@d>: Could not complete sender verify",
         "sender_verify"),
        ("H=(a) [192.0.2.1] rejected EHLO or HELO a: HELO must be a fully qualified name", "helo"),
        ("rejected HELO from [192.0.2.1]: syntactically invalid argument(s): (no argument given)", "helo"),
        ("H=(a) [192.0.2.1] F=<a@b.test> rejected MAIL <a@b.test>: too many messages in one connection",
         "rate_limit"),
        ("rejected MAIL from [192.0.2.1]: no HELO/EHLO given", "protocol"),
        ("H=(a) [192.0.2.1] F=<a@b.test> rejected after DATA: Your message looks like SPAM", "policy"),
        ("H=(a) [192.0.2.1] F=<a@b.test> rejected RCPT <c@d>: SPF check failed", "policy"),
        ("unqualified sender rejected: <root> H=(a) [192.0.2.1]", "policy"),
        ("too many recipients: message rejected: sender=<a@b.test> H=(a) [192.0.2.1]", "rate_limit"),
        ("refused connection from [192.0.2.1] (host_reject_connection)", "policy"),
        ("Connection from [192.0.2.1] refused: load average = 12.30", "other"),
        ("U=CALLER F=<a@b.test> rejected RCPT <c@d>: 599 5.12.3 Main and extended code", "other"),
        # the reason comes from the ACL's message, not from the host, the sender or the recipient
        ("H=relay.blacklist.test (helo.relay) [192.0.2.1] F=<relay@spam.test> rejected RCPT <relay@x.test>: "
         "unknown user", "unknown_user"),
        ("H=(a) [192.0.2.1] F=<a@b.test> rejected RCPT <\"relay: not permitted\"@x.test>", "other"),
    ],
)  # fmt: skip
def test_reject_reason(line: str, reason: str) -> None:
    assert reason in REJECT_REASONS
    tally, ok = message(line)
    assert ok and dict(tally.counts) == {("mail_exim_rejects_total", (reason,)): 1}


@pytest.mark.parametrize(
    "text",
    [
        f"{ID} == a@b.test R=dnslookup T=remote_smtp defer (-54): retry time not reached for any host for 'b.test'",
        f"{ID} == a@b.test routing defer (-52): retry time not reached",
        f'{ID} *> a@b.test R=dnslookup T=remote_smtp H=mx [192.0.2.1] C="delivery bypassed by -N option"',
        f"{ID} => :blackhole: <a@example.test> R=blackhole_router",
        f"{ID} => discarded (system filter)",
        f"{ID} Completed QT=5s",
        f"{ID} Message is frozen",
        f"{ID} Unfrozen by auto-thaw",
        f"{ID} H=mx.down.test [198.51.100.66] Connection refused",
        f"{ID} r1 router: skipped error: domain missing or malformed",
        'SMTP call from (a) [192.0.2.1] dropped: too many syntax or protocol errors (last command was "x", C=x)',
        'SMTP call from (a) [192.0.2.1] dropped: too many unrecognized commands (last was "x")',
        "H=(a) [192.0.2.1] sender verify fail for <a@b.test>: Unrouteable address",
        "plain authenticator failed for (a) [192.0.2.1]: 535 Incorrect authentication data (set_id=u)",
        "TLS error on connection from (a) [192.0.2.1] (SSL_accept): error:0A000126:SSL routines::unexpected eof",
        "H=(a) [192.0.2.1] F=<a@b.test> RCPT <c@d>: discarded by RCPT ACL: spam trap",
        "socket bind() to port 25 for address 127.0.0.1 failed: Address already in use: waiting 30s before trying",
        "exim 4.97 daemon started: pid=1, -q30m, listening for SMTP on port 25 (IPv6 and IPv4)",
    ],
)
def test_understood_and_not_counted(text: str) -> None:
    tally, ok = message(text)
    assert ok and not tally, dict(tally.counts)


def test_four_point_nine_seven_message_ids() -> None:
    tally, ok = message("1tJqCN-00000000KLM-3j4k => a@example.test R=local_user T=local_delivery QT=2s")
    assert ok and tally.get("mail_log_deliveries_total", ("local", "sent")) == 1


def test_domain_of_each_address_form() -> None:
    options = ParseOptions(top_domains=10)
    for text in (
        f"{ID} => a@One.test R=r T=remote_smtp",
        f"{ID} => a <a@two.test> R=r T=local_delivery",
        f"{ID} => |/usr/bin/procmail <a@three.test> R=r T=address_pipe",
        f"{ID} ** a@four.test: Unrouteable address",
        f"{ID} ** a@[192.0.2.1]: Unrouteable address",  # an address literal: no domain label of its own
        f'{ID} => "odd local"@five.test R=r T=remote_smtp',
    ):
        assert message(text, options)[1]
    assert options.seen_domains == {"one.test", "two.test", "three.test", "four.test"}


def test_never_more_domains_than_configured() -> None:
    options = ParseOptions(top_domains=2)
    tally = Tally()
    for i in range(10):
        parse_exim(LogRecord(None, "", "exim", None, f"{ID} => a@d{i}.test R=r T=remote_smtp"), tally, options)
    labels = {v[1] for (f, v) in tally.counts if f == "mail_log_deliveries_by_domain_total"}
    assert labels == {"d0.test", "d1.test", "other"}


@pytest.mark.parametrize(
    "line",
    [
        "2026-12-07 08:00:01 [1234] daemon: fork of queue-runner process failed: Resource temporarily unavailable",
        f"2026-12-07 08:00:01 {ID} DKIM: d=example.test s=sel c=relaxed/relaxed a=rsa-sha256 [verification succeeded]",
        "2026-12-07 08:00:01 U=CALLER Warning: something the ACL said",
        "2026-12-07 08:00:01 (SSL_CTX_use_PrivateKey_file file=/etc/exim4/exim.key): error:05800074:x509 mismatch",
    ],
)
def test_exim_lines_are_not_read_as_syslog(line: str) -> None:
    """parse_line: "[pid]", a message id, "X=..." or "(..." where a syslog host would be is Exim's."""
    rec = parse_line(line)
    assert rec is not None and rec.program == "exim" and rec.host == ""


def test_syslog_lines_unchanged() -> None:
    rec = parse_line("Dec  7 08:00:01 mx1 postfix/smtpd[12]: connect from unknown[192.0.2.1]")
    assert rec is not None and (rec.host, rec.program, rec.pid) == ("mx1", "postfix/smtpd", 12)
    rec = parse_line(f"2026-12-07T08:00:01.5+01:00 mx1 exim[7]: {ID} <= a@b.test U=a P=local S=1")
    assert rec is not None and (rec.host, rec.program, rec.pid) == ("mx1", "exim", 7)
    assert rec.message.startswith(ID)


# --- property: any input, no exception, bounded labels ---------------------------------------------

_FRAGMENTS = [
    ID, "1tJqCN-00000000KLM-3j4k", "<=", "=>", "->", ">>", "*>", "==", "**", "(=", " ", ": ", "<", ">", '"', "\\",
    "R=dnslookup", " T=remote_smtp", " T=dovecot_lmtp", " T=address_pipe", " T=", ' C="250 2.0.0 Ok"', ' C="',
    " QT=1m2s", " QT=", " QT=0.5s", "1d", "9w", "defer (-44)", "retry time not reached", "rejected ",
    "rejected RCPT <", "rejected EHLO", "temporarily ", "H=(a) [192.0.2.1] ", "F=<a@b.test> ", "a@example.test",
    "a@D.test", "b@e.test", "@", "Frozen", "frozen by ", "Completed", "SMTP protocol error in ", "SMTP call from ",
    "dropped: too many nonmail commands", "Connection from ", " refused", "too many", "failed to expand",
    "Tainted", "[1/2] ", "[2/2] ", "2026-12-07 08:00:01 ", "[42] ", "451 4.7.1", "550 5.1.1", "250", "\x00", "\xff",
    "é",
]  # fmt: skip
_LINES = st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=8), max_size=14).map("".join)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_LINES, min_size=1, max_size=6), st.integers(0, 3), st.booleans())
def test_property_never_raises_and_labels_are_bounded(lines: list[str], top: int, configured: bool) -> None:
    options = ParseOptions(domains=frozenset({"example.test"} if configured else ()), top_domains=top)
    tally = Tally()
    for text in lines:
        for msg in (text, f"2026-12-07 08:00:01 {text}"):
            rec = parse_line(msg)
            messages = [text] if rec is None else [text, rec.message]
            for m in messages:
                assert exim._parse(m, tally, options) in (True, False)  # the unguarded parser: no exception
    dsn = exim.DSN_CODES | {"2.other", "4.other", "5.other"}
    domains = options.domains | options.seen_domains | {"other"}
    assert len(options.seen_domains) <= top
    allowed: dict[str, tuple[frozenset[str] | set[str] | tuple[str, ...], ...]] = {
        "mail_log_messages_received_total": (),
        "mail_log_deliveries_total": (exim.TRANSPORTS, exim.STATUSES),
        "mail_log_delivery_dsn_total": (exim.STATUSES, dsn),
        "mail_log_deliveries_by_domain_total": (exim.STATUSES, domains),
        "mail_exim_rejects_total": (REJECT_REASONS,),
        "mail_exim_frozen_total": (),
        "mail_exim_panics_total": (),
    }
    for (family, values), n in tally.counts.items():
        assert n > 0 and len(values) == len(allowed[family])
        assert all(v in legal for v, legal in zip(values, allowed[family], strict=True)), (family, values)
    for (family, values), seen in tally.observations.items():
        assert family == "mail_log_delivery_delay_seconds" and values[0] in exim.TRANSPORTS and values[1] == "total"
        assert all(v >= 0 for v in seen)
    assert all(re.fullmatch(r"[245]\.(\d{1,3}\.\d{1,3}|other)", v[1]) for (f, v) in tally.counts if "dsn" in f)
    tally.flush(CheckState(), "property")
