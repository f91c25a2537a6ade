"""The Dovecot log parser: exact tallies of Dovecot's own log file (log_path; the first lines are
the test stack's real Dovecot 2.3.19.1 output) and of the same kind of lines through syslog,
parse_line's reading of log_path lines, each counting decision, and a property test."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.core.model import CheckState
from exporter.logs import dovecot
from exporter.logs.dovecot import LMTP_RESULTS, PROTOCOLS, REASONS, RESULTS, login_reason, parse_dovecot
from exporter.logs.parsers import PARSERS, ParseOptions
from exporter.logs.record import LogRecord, parse_line, program_class
from exporter.logs.tally import Tally

DATA = Path(__file__).resolve().parent / "testdata" / "logs" / "dovecot"
LOGINS = "mail_dovecot_logins_total"
LMTP = "mail_dovecot_lmtp_deliveries_total"


def run(path: Path) -> tuple[Tally, list[str]]:
    tally, opts, unparsed = Tally(), ParseOptions(), []
    for line in path.read_text().splitlines():
        rec = parse_line(line)
        assert rec is not None and program_class(rec.program) == "dovecot", line
        if not parse_dovecot(rec, tally, opts):
            unparsed.append(line)
    return tally, unparsed


def syslog(message: str, program: str = "dovecot") -> tuple[Tally, bool]:
    tally = Tally()
    return tally, parse_dovecot(LogRecord(None, "mx1", program, None, message), tally, ParseOptions())


def test_registered() -> None:
    assert PARSERS["dovecot"] is parse_dovecot


def test_log_path_file_exact_tallies() -> None:
    tally, unparsed = run(DATA / "dovecot.log")
    assert dict(tally.counts) == {
        # 3 of the test stack (wrong password, one per connection), "3 attempts" (one), 2.4's "Login aborted"
        (LOGINS, ("imap", "failure", "auth_failed")): 5,
        (LOGINS, ("imap", "success", "ok")): 1,
        (LOGINS, ("imap", "failure", "tls")): 1,
        (LOGINS, ("imap", "failure", "plaintext_disallowed")): 1,
        (LOGINS, ("imap", "failure", "other")): 1,  # auth service reported temporary failure
        (LOGINS, ("pop3", "failure", "no_auth_attempts")): 1,
        (LOGINS, ("submission", "success", "ok")): 1,
        (LOGINS, ("submission", "failure", "auth_failed")): 1,
        (LOGINS, ("managesieve", "failure", "disconnected")): 1,
        (LMTP, ("saved",)): 5,  # 4 Sieve "stored mail into mailbox" of the test stack, 1 "saved mail to"
        (LMTP, ("failed",)): 2,  # "save failed to", "Failed to lookup user"
    }
    assert unparsed == ["Dec 07 09:00:20 imap-login: Info: Something the parser has never seen: user=<>, "
                        "rip=192.0.2.31, lip=192.0.2.1"]  # fmt: skip
    tally.flush(CheckState(), "dovecot")


def test_syslog_exact_tallies() -> None:
    tally, unparsed = run(DATA / "mail.log")
    assert dict(tally.counts) == {
        (LOGINS, ("imap", "success", "ok")): 3,  # one with a username that mimics a failure, one as imap-login[]
        (LOGINS, ("imap", "failure", "auth_failed")): 2,  # classic and RFC 3339 timestamps
        (LOGINS, ("imap", "failure", "no_auth_attempts")): 2,
        (LOGINS, ("imap", "failure", "disconnected")): 1,
        (LOGINS, ("pop3", "failure", "tls")): 1,
        (LMTP, ("saved",)): 2,  # "saved mail to", Sieve "stored mail into mailbox" (a Message-ID with ": ")
        (LMTP, ("failed",)): 3,  # "save failed to", Sieve "failed to store", "Failed to initialize user"
    }
    assert unparsed == ["Dec  7 09:00:26 mx1 dovecot: what is this"]
    tally.flush(CheckState(), "syslog")


def test_parse_line_reads_log_path_lines() -> None:
    """Dovecot's log_path lines have no host: program "dovecot", the message from the log prefix on."""
    rec = parse_line("Dec 07 09:00:00 imap-login: Info: Login: user=<u>, method=PLAIN, rip=192.0.2.1, session=<a>")
    assert rec is not None and rec.timestamp is not None
    assert (rec.host, rec.program, rec.pid) == ("", "dovecot", None)
    assert rec.message == "imap-login: Info: Login: user=<u>, method=PLAIN, rip=192.0.2.1, session=<a>"
    rec = parse_line(
        "2026-12-07 08:54:51.606459 lmtp(ops@example.test)<25045><sjfU>: Info: msgid=<a@b>: saved mail to X"
    )
    assert rec is not None and rec.program == "dovecot" and rec.message.startswith("lmtp(ops@example.test)<25045>")
    assert rec.timestamp is not None and rec.timestamp % 1 == pytest.approx(0.606459)
    # syslog lines keep their host and program
    rec = parse_line("Dec  7 09:00:00 mx1 dovecot: imap-login: Login: user=<u>")
    assert rec is not None and (rec.host, rec.program, rec.message) == ("mx1", "dovecot", "imap-login: Login: user=<u>")


@pytest.mark.parametrize(
    ("message", "key"),
    [
        ("imap-login: Login: user=<u>, method=PLAIN, rip=192.0.2.1, lip=192.0.2.2, mpid=7, TLS, session=<a>",
         ("imap", "success", "ok")),
        ("pop3-login: Disconnected: Connection closed (auth failed, 1 attempts in 2 secs): user=<u>, rip=192.0.2.1",
         ("pop3", "failure", "auth_failed")),
        ("submission-login: Disconnected: Connection closed (no auth attempts in 0 secs): user=<>, rip=192.0.2.1",
         ("submission", "failure", "no_auth_attempts")),
        ("managesieve-login: Disconnected: Inactivity (auth failed, 1 attempts in 2 secs): user=<u>",
         ("managesieve", "failure", "auth_failed")),
        ("imapx-login: Login: user=<u>", ("other", "success", "ok")),
    ],
)  # fmt: skip
def test_same_line_through_syslog_and_log_path(message: str, key: tuple[str, str, str]) -> None:
    prefix, _, rest = message.partition(": ")
    for line in (f"Dec  7 09:00:00 mx1 dovecot: {message}", f"Dec 07 09:00:00 {prefix}: Info: {rest}"):
        rec = parse_line(line)
        assert rec is not None
        tally = Tally()
        assert parse_dovecot(rec, tally, ParseOptions())
        assert dict(tally.counts) == {(LOGINS, key): 1}, line


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Disconnected: Aborted login by logging out (auth failed, 1 attempts in 1 secs): user=<u>", "auth_failed"),
        ("Disconnected (auth failed, 3 attempts in 12 secs): user=<u>, method=PLAIN", "auth_failed"),  # 2.2
        ("Aborted login (auth failed, 1 attempts in 2 secs): user=<u>", "auth_failed"),  # 2.2
        ("Disconnected: Connection closed (authorization failed, 1 attempts in 2 secs): user=<u>", "auth_failed"),
        ("Login aborted: Connection closed (auth failed, 1 attempts in 2 secs) (auth_failed): user=<u>", "auth_failed"),
        ("Disconnected (tried to use disallowed plaintext auth): user=<>, rip=192.0.2.1", "plaintext_disallowed"),
        ("Disconnected: TLS initialization failed. (no auth attempts in 0 secs): user=<>", "tls"),
        ("Disconnected: Connection closed (no auth attempts in 0 secs): user=<>, rip=192.0.2.1, "
         "TLS handshaking: SSL_accept() failed: error:0A00010B:SSL routines::wrong version number", "tls"),
        ("Disconnected: Connection closed: SSL_accept() failed: error:0A000102 (no auth attempts in 0 secs): "
         "user=<>", "tls"),
        ("Disconnected: Inactivity (no auth attempts in 180 secs): user=<>, rip=192.0.2.1", "no_auth_attempts"),
        ("Disconnected (no auth attempts in 2 secs): user=<>, rip=192.0.2.1", "no_auth_attempts"),
        ("Disconnected: Inactivity: user=<>, rip=192.0.2.1", "disconnected"),
        ("Disconnected: Connection closed (disconnected while authenticating, waited 3 secs): user=<>",
         "disconnected"),
        ("Disconnected: Too many invalid commands: user=<>", "disconnected"),
        ("Disconnected: Connection closed (user disabled): user=<u>", "other"),
        ("Disconnected: Connection closed (password expired): user=<u>", "other"),
        ("Disconnected: Connection closed (internal failure, 1 successful auths): user=<u>", "other"),
        ("Disconnected: Connection closed (auth process communication failure): user=<u>", "other"),
        # an auth failure over TLS that the client then cut short is still an auth failure
        ("Disconnected: Connection closed (auth failed, 1 attempts in 2 secs): user=<u>, method=PLAIN, "
         "TLS: SSL_read() failed: error:0A000126:SSL routines::unexpected eof while reading", "auth_failed"),
        # the user name is the client's: it never decides the reason
        ("Disconnected: Connection closed (auth failed, 1 attempts in 2 secs): user=<TLS handshaking "
         "(tried to use disallowed plaintext auth)>", "auth_failed"),
        ("Disconnected: Inactivity: user=<(auth failed, 9 attempts in 1 secs)>", "disconnected"),
    ],
)  # fmt: skip
def test_login_reason(text: str, reason: str) -> None:
    assert reason in REASONS
    assert login_reason(text) == reason
    tally, ok = syslog(f"imap-login: {text}")
    assert ok and dict(tally.counts) == {(LOGINS, ("imap", "failure", reason)): 1}


def test_n_attempts_count_one_failure_per_connection() -> None:
    tally, _ = syslog("imap-login: Disconnected: Connection closed (auth failed, 7 attempts in 30 secs): user=<u>")
    assert tally.get(LOGINS, ("imap", "failure", "auth_failed")) == 1


@pytest.mark.parametrize(
    "message",
    [
        "auth: passwd-file(u,192.0.2.1,<a>): unknown user",
        "auth: passwd-file(u,192.0.2.1,<a>): Password mismatch",
        "auth-worker(42): pam(u,192.0.2.1,<a>): pam_authenticate() failed: Authentication failure (Password mismatch?)",
        "auth: Error: passwd-file /etc/dovecot/users: open() failed: Permission denied",
        "imap-login: Login failed: Plaintext authentication disabled: user=<>, rip=192.0.2.1",
        "imap-login: Error: Failed to initialize SSL server context: Can't load SSL certificate",
        "imap-login: Warning: Auth process not responding, delayed sending initial response (greeting)",
        "imap(u)<7><a>: Disconnected: Logged out in=10 out=20",
        "master: Dovecot v2.3.19.1 (9b53102964) starting up for imap, lmtp (core dumps disabled)",
        "lmtp(7): Connect from local",
        "lmtp(7): Disconnect from local: Logged out (state=READY)",
        "lmtp(u)<7><a>: msgid=<x@y>: forwarded to <v@w>",
        "lmtp(u)<7><a>: Error: Mailbox INBOX: fsync(/var/mail/u/new) failed: No space left on device",
    ],
)
def test_understood_and_not_counted(message: str) -> None:
    tally, ok = syslog(message)
    assert ok and not tally, dict(tally.counts)


def test_service_as_syslog_program() -> None:
    """Setups that tag each Dovecot process itself: program imap-login, lmtp, auth."""
    tally, ok = syslog("Login: user=<u>, method=PLAIN, rip=192.0.2.1", program="imap-login")
    assert ok and dict(tally.counts) == {(LOGINS, ("imap", "success", "ok")): 1}
    tally, ok = syslog("msgid=<x@y>: saved mail to INBOX", program="lmtp")
    assert ok and dict(tally.counts) == {(LMTP, ("saved",)): 1}
    tally, ok = syslog("pam(u,192.0.2.1): unknown user", program="auth")
    assert ok and not tally


def test_stderr_lines_with_dovecots_own_timestamp() -> None:
    """Dovecot logging to stderr (a container's journal) puts its log_timestamp before the prefix."""
    for stamp in ("Dec 07 09:00:00", "2026-12-07 09:00:00.123456"):
        tally, ok = syslog(f"{stamp} imap-login: Info: Login: user=<u>, method=PLAIN, rip=192.0.2.1")
        assert ok and dict(tally.counts) == {(LOGINS, ("imap", "success", "ok")): 1}
    tally, ok = syslog("Dec 07 09:00:00 lmtp(u)<1><a>: Info: msgid=<x@y>: saved mail to INBOX")
    assert ok and dict(tally.counts) == {(LMTP, ("saved",)): 1}
    tally, ok = syslog("not a stamp imap-login: Login: user=<u>")
    assert not ok and not tally


@pytest.mark.parametrize("message", ["what is this", "", "imap-login: Something new: user=<>", ": ", "lmtp(u): odd"])
def test_not_understood(message: str) -> None:
    tally, ok = syslog(message)
    assert not ok and not tally


# --- property: any input, no exception, bounded labels ---------------------------------------------

_FRAGMENTS = [
    "imap-login", "pop3-login", "submission-login", "managesieve-login", "x-login", "lmtp", "lmtp(u)<1><a>", "auth",
    "auth-worker(3)", "master", "imap(u)", ": ", "Info: ", "Error: ", "Warning: ", "Panic: ", "Login: ",
    "Disconnected", "Disconnected: ", "Aborted login", "Login aborted: ", "(auth failed, 1 attempts in 2 secs)",
    "(no auth attempts in 0 secs)", "(tried to use disallowed plaintext auth)", "(user disabled)", "TLS handshaking",
    "SSL_accept() failed", "user=<", ">", "msgid=<", "saved mail to ", "save failed to ", "sieve: ",
    "stored mail into mailbox ", "failed to store into mailbox ", "Failed to lookup user", "(", ")", " ", "\x00",
    "\xff", "é",
]  # fmt: skip
_MESSAGES = st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=8), max_size=12).map("".join)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["dovecot", "imap-login", "lmtp", "auth", "pop3-login"]), _MESSAGES),
                min_size=1, max_size=6))  # fmt: skip
def test_property_never_raises_and_labels_are_bounded(records: list[tuple[str, str]]) -> None:
    tally = Tally()
    for program, text in records:
        assert dovecot._parse(program, text, tally) in (True, False)  # the unguarded parser: no exception
        rec = parse_line(f"Dec 07 09:00:00 {text}")
        if rec is not None and rec.program == "dovecot":
            assert dovecot._parse(rec.program, rec.message, tally) in (True, False)
    for (family, values), n in tally.counts.items():
        assert n > 0
        if family == LOGINS:
            protocol, result, reason = values
            assert protocol in PROTOCOLS and result in RESULTS and reason in REASONS
            assert (result == "success") == (reason == "ok")
        else:
            assert family == LMTP and len(values) == 1 and values[0] in LMTP_RESULTS
    assert not tally.observations
    tally.flush(CheckState(), "property")
