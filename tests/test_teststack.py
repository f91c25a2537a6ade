"""The loopback mail stack of scripts/teststack.sh really works (no mocks)."""

from __future__ import annotations

import imaplib
import os
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import dns.exception
import dns.resolver
import pytest
from cryptography import x509

T = TypeVar("T")

# Every wait in this module is bounded by one of these.
DELIVERY_TIMEOUT = 20.0
QUEUE_TIMEOUT = 20.0


def poll(what: str, fn: Callable[[], T | None], timeout: float, interval: float = 0.2) -> T:
    """Call fn until it returns something truthy; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def tls_context(stack) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=stack.ca_file)


def insecure_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def make_message(sender: str, rcpt: str, tag: str, **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = rcpt
    msg["Subject"] = f"teststack {tag}"
    msg["X-MCE-Test-Id"] = tag
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(f"test message {tag}\n")
    return msg


def send(stack, msg: EmailMessage, port: str = "smtp") -> None:
    with smtplib.SMTP(stack.host, stack.port(port), timeout=10) as smtp:
        smtp.ehlo("client.example.test")
        smtp.send_message(msg)


def imaps(stack, user: str) -> imaplib.IMAP4_SSL:
    conn = imaplib.IMAP4_SSL(stack.host, stack.port("imaps"), ssl_context=tls_context(stack), timeout=10)
    conn.login(user, stack.password(user))
    return conn


def find_by_tag(conn: imaplib.IMAP4, mailbox: str, tag: str) -> list[bytes]:
    typ, _ = conn.select(mailbox)
    assert typ == "OK", mailbox
    typ, data = conn.search(None, "HEADER", "X-MCE-Test-Id", tag)
    assert typ == "OK"
    return data[0].split()


def queued_for(stack, address: str) -> list[dict[str, Any]]:
    return [
        entry for entry in stack.postqueue_json() if any(r["address"] == address for r in entry.get("recipients", []))
    ]


def resolver(stack) -> dns.resolver.Resolver:
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [stack.host]
    res.port = stack.port("dns")
    res.timeout = 2.0
    res.lifetime = 5.0
    return res


def http_status(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as resp:
        return resp.status


# -- SMTP ---------------------------------------------------------------------


def test_smtp_banner_and_starttls(stack) -> None:
    with socket.create_connection((stack.host, stack.port("smtp")), timeout=10) as sock:
        banner = sock.makefile("rb").readline()
    assert banner.startswith(b"220 "), banner
    assert stack.hostname.encode() in banner

    with smtplib.SMTP(stack.host, stack.port("smtp"), timeout=10) as smtp:
        code, _ = smtp.ehlo("client.example.test")
        assert code == 250
        assert smtp.has_extn("starttls")
        assert not smtp.has_extn("auth")  # port-25 role: no AUTH
        smtp.starttls(context=tls_context(stack))  # valid cert, verifies against ca.pem
        code, _ = smtp.ehlo("client.example.test")
        assert code == 250


def test_recipient_access_rules(stack) -> None:
    with smtplib.SMTP(stack.host, stack.port("smtp"), timeout=10) as smtp:
        smtp.ehlo("client.example.test")
        expected = {
            "tempfail@example.test": 450,
            "reject@example.test": 554,
            "nobody@example.test": 550,  # unknown user of a local domain
            "probe@example.test": 250,
        }
        for rcpt, code in expected.items():
            smtp.mail("ops@example.test")
            got, text = smtp.rcpt(rcpt)
            assert got == code, (rcpt, got, text)
            smtp.rset()


@pytest.mark.parametrize("port", ["submission", "smtps"])
def test_authenticated_submission(stack, port: str) -> None:
    user = "ops@example.test"
    if port == "smtps":
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(stack.host, stack.port(port), timeout=10, context=tls_context(stack))
    else:
        smtp = smtplib.SMTP(stack.host, stack.port(port), timeout=10)
    with smtp:
        smtp.ehlo("client.example.test")
        if port == "submission":
            assert not smtp.has_extn("auth"), "AUTH must only be offered after STARTTLS"
            code, text = smtp.mail(user)
            assert code == 530, text  # STARTTLS required
            smtp.rset()
            smtp.starttls(context=tls_context(stack))
            smtp.ehlo("client.example.test")
        assert smtp.has_extn("auth")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login(user, "wrong-password")
        code, _ = smtp.login(user, stack.password(user))
        assert code == 235


# -- delivery -----------------------------------------------------------------


def test_mail_is_delivered_to_imap_and_can_be_deleted(stack) -> None:
    tag = uuid.uuid4().hex
    user = "probe@example.test"
    send(stack, make_message("ops@example.test", user, tag))

    conn = imaps(stack, user)
    try:
        nums = poll("delivery to INBOX", lambda: find_by_tag(conn, "INBOX", tag), DELIVERY_TIMEOUT)
        assert len(nums) == 1
        typ, data = conn.fetch(nums[0], "(BODY.PEEK[HEADER.FIELDS (X-MCE-TEST-ID)])")
        assert typ == "OK" and tag.encode() in data[0][1]
        conn.store(nums[0], "+FLAGS", r"(\Deleted)")
        conn.expunge()
        assert find_by_tag(conn, "INBOX", tag) == []
    finally:
        conn.logout()


def test_sieve_files_junk(stack) -> None:
    tag = uuid.uuid4().hex
    user = "probe@example.test"
    send(stack, make_message("ops@example.test", user, tag, X_Test_Junk="yes"))

    conn = imaps(stack, user)
    try:
        nums = poll("delivery to Junk", lambda: find_by_tag(conn, "Junk", tag), DELIVERY_TIMEOUT)
        assert find_by_tag(conn, "INBOX", tag) == []
        conn.select("Junk")
        conn.store(nums[0], "+FLAGS", r"(\Deleted)")
        conn.expunge()
    finally:
        conn.logout()


def test_imap_idle_sees_new_mail_promptly(stack) -> None:
    user = "replica@example.test"
    conn = imaplib.IMAP4(stack.host, stack.port("imap"), timeout=10)
    try:
        conn.starttls(ssl_context=tls_context(stack))
        conn.login(user, stack.password(user))
        conn.select("INBOX")
        conn.send(b"i1 IDLE\r\n")
        assert conn.readline().startswith(b"+"), "IDLE not accepted"
        tag = uuid.uuid4().hex
        sent = time.monotonic()
        send(stack, make_message("ops@example.test", user, tag))
        deadline = sent + 10.0
        while True:
            assert time.monotonic() < deadline, "no EXISTS during IDLE within 10s"
            line = conn.readline()
            if line.startswith(b"*") and b"EXISTS" in line:
                break
        assert time.monotonic() - sent < 10.0
        conn.send(b"DONE\r\n")
        while not conn.readline().startswith(b"i1 "):
            pass
        nums = find_by_tag(conn, "INBOX", tag)
        assert len(nums) == 1
        conn.store(nums[0], "+FLAGS", r"(\Deleted)")
        conn.expunge()
    finally:
        conn.logout()


def test_mail_to_remote_domain_is_deferred_at_dead_relay(stack) -> None:
    rcpt = f"someone-{uuid.uuid4().hex[:12]}@elsewhere.test"
    send(stack, make_message("ops@example.test", rcpt, "deferred"))

    def deferred() -> list[dict[str, Any]]:
        return [e for e in queued_for(stack, rcpt) if e["queue_name"] == "deferred"]

    entries = poll("deferred queue entry", deferred, QUEUE_TIMEOUT)
    reasons = [r.get("delay_reason", "") for r in entries[0]["recipients"]]
    assert any("connection refused" in r.lower() for r in reasons), reasons
    assert any(f":{stack.dead_relay_port}" in r for r in reasons), reasons

    # Only remove our own message: the stack may be shared with other tests.
    for entry in queued_for(stack, rcpt):
        stack.delete_queued(entry["queue_id"])
    assert queued_for(stack, rcpt) == []


def test_lmtp_outage_piles_up_then_drains(stack) -> None:
    user = "archive@archive.example.test"
    tag = uuid.uuid4().hex
    stack.stop("lmtp")
    try:
        send(stack, make_message("ops@example.test", user, tag))
        entries = poll(
            "deferred LMTP delivery",
            lambda: [e for e in queued_for(stack, user) if e["queue_name"] == "deferred"],
            QUEUE_TIMEOUT,
        )
        reason = entries[0]["recipients"][0].get("delay_reason", "")
        assert f":{stack.port('lmtp')}" in reason and "refused" in reason.lower(), reason
    finally:
        stack.start("lmtp")  # also runs "postqueue -f"
    poll("queue to drain", lambda: not queued_for(stack, user), QUEUE_TIMEOUT)
    conn = imaps(stack, user)
    try:
        nums = poll("delivery after LMTP restart", lambda: find_by_tag(conn, "INBOX", tag), DELIVERY_TIMEOUT)
        conn.store(nums[0], "+FLAGS", r"(\Deleted)")
        conn.expunge()
    finally:
        conn.logout()


# -- DNS ----------------------------------------------------------------------


def test_dns_mx_records(stack) -> None:
    res = resolver(stack)
    mx = sorted((r.preference, r.exchange.to_text()) for r in res.resolve("example.test", "MX"))
    assert mx == [(10, "mx1.example.test."), (20, "mx2.example.test.")]
    assert [r.address for r in res.resolve("mx1.example.test", "A")] == ["127.0.0.1"]
    assert [r.address for r in res.resolve("mx2.example.test", "A")] == ["127.0.0.2"]
    with pytest.raises(dns.resolver.NoAnswer):
        res.resolve("nomx.test", "MX")
    assert [r.address for r in res.resolve("nomx.test", "A")] == ["127.0.0.1"]


def _txt(res: dns.resolver.Resolver, name: str) -> list[str]:
    return [b"".join(r.strings).decode() for r in res.resolve(name, "TXT")]


def test_dns_policy_records(stack) -> None:
    res = resolver(stack)
    assert [t for t in _txt(res, "good.test") if t.startswith("v=spf1")] == ["v=spf1 ip4:127.0.0.1 -all"]
    assert len([t for t in _txt(res, "badspf.test") if t.startswith("v=spf1")]) == 2
    assert "p=reject" in _txt(res, "_dmarc.good.test")[0]
    assert "p=" not in _txt(res, "_dmarc.baddmarc.test")[0]
    assert _txt(res, "_smtp._tls.good.test")[0].startswith("v=TLSRPTv1")
    with pytest.raises(dns.resolver.NXDOMAIN):
        res.resolve("_smtp._tls.notlsrpt.test", "TXT")
    assert _txt(res, "_mta-sts.good.test")[0].startswith("v=STSv1")
    assert _txt(res, "mail._domainkey.good.test")[0].startswith("v=DKIM1")


def test_dns_dnsbl(stack) -> None:
    res = resolver(stack)
    assert [r.address for r in res.resolve("2.0.0.127.dnsbl.test", "A")] == ["127.0.0.2"]
    assert _txt(res, "2.0.0.127.dnsbl.test") == ["listed for test"]
    assert [r.address for r in res.resolve("3.0.0.127.dnsbl.test", "A")] == ["127.255.255.254"]
    with pytest.raises(dns.resolver.NXDOMAIN):
        res.resolve("1.0.0.127.dnsbl.test", "A")


def test_dns_does_not_recurse(stack) -> None:
    res = resolver(stack)
    with pytest.raises(dns.resolver.NXDOMAIN):
        res.resolve("unknown.test", "A")
    with pytest.raises((dns.resolver.NoNameservers, dns.exception.Timeout)):
        res.resolve("example.com", "A")  # outside the local zones: REFUSED


# -- TLS certificates ---------------------------------------------------------


def served_cert(stack, port: str) -> x509.Certificate:
    with smtplib.SMTP(stack.host, stack.port(port), timeout=10) as smtp:
        smtp.ehlo("client.example.test")
        smtp.starttls(context=insecure_context())
        der = smtp.sock.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der)


def _not_after(cert: x509.Certificate) -> int:
    value = getattr(cert, "not_valid_after_utc", None)
    if value is None:  # cryptography < 42
        import datetime as dt

        value = cert.not_valid_after.replace(tzinfo=dt.UTC)
    return int(value.timestamp())


def test_expired_cert_served_on_2526(stack) -> None:
    cert = served_cert(stack, "smtp_expired")
    assert _not_after(cert) == stack.certs["expired"]["not_after"]
    assert stack.certs["expired"]["not_after"] < time.time()


@pytest.mark.parametrize(
    ("port", "name"),
    [
        ("smtp", "valid"),
        ("smtp_expired", "expired"),
        ("smtp_selfsigned", "selfsigned"),
        ("smtp_wronghost", "wronghost"),
    ],
)
def test_each_listener_serves_its_cert(stack, port: str, name: str) -> None:
    cert = served_cert(stack, port)
    with open(stack.certs[name]["cert"], "rb") as fh:
        expected = x509.load_pem_x509_certificate(fh.read())
    assert cert == expected
    assert _not_after(cert) == stack.certs[name]["not_after"]


def test_valid_cert_verifies_and_bad_ones_do_not(stack) -> None:
    ctx = tls_context(stack)
    for port, ok in [("smtp", True), ("smtp_expired", False), ("smtp_selfsigned", False), ("smtp_wronghost", False)]:
        with smtplib.SMTP(stack.host, stack.port(port), timeout=10) as smtp:
            smtp.ehlo("client.example.test")
            if ok:
                smtp.starttls(context=ctx)
            else:
                with pytest.raises(ssl.SSLCertVerificationError):
                    smtp.starttls(context=ctx)


# -- Prometheus / Alertmanager ------------------------------------------------


def test_prometheus_and_alertmanager_ready(stack) -> None:
    assert http_status(f"{stack.prometheus_url}/-/ready") == 200
    assert http_status(f"{stack.alertmanager_url}/-/ready") == 200
    assert stack.prometheus_rules_dir.is_dir()
    assert stack.prometheus_targets_dir.is_dir()


# -- PostgreSQL ---------------------------------------------------------------

try:
    import psycopg
except ImportError:  # then the cluster's own psql (stack.json "postgresql.bin_dir")
    psycopg = None  # type: ignore[assignment]


class PgError(Exception):
    """A connection or statement failed (psycopg's error, or psql's stderr)."""


def pg_url(stack, *, password: str | None = None, dbname: str | None = None) -> str:
    """A libpq URL for the stack's role over TCP (default: its own password and database)."""
    pg = stack.postgresql
    user = urllib.parse.quote(pg["user"], safe="")
    secret = urllib.parse.quote(pg["password"] if password is None else password, safe="")
    db = urllib.parse.quote(pg["database"] if dbname is None else dbname, safe="")
    return f"postgresql://{user}:{secret}@{pg['host']}:{pg['port']}/{db}?connect_timeout=5&sslmode=disable"


def pg_query(stack, url: str, sql: str) -> list[tuple[str, ...]]:
    """Run one statement (autocommit) and return its rows as tuples of str."""
    if psycopg is not None:
        try:
            with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
                cur.execute(sql.encode())  # bytes: a plain statement, not a template
                rows = cur.fetchall() if cur.description is not None else []
        except psycopg.Error as exc:
            raise PgError(str(exc)) from exc
        return [tuple(str(v) for v in row) for row in rows]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    proc = subprocess.run(
        [f"{stack.postgresql['bin_dir']}/psql", "-X", "-q", "-A", "-t", "-F", "\t",
         "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=30, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise PgError(proc.stderr.strip())
    return [tuple(line.split("\t")) for line in proc.stdout.splitlines() if line]


def test_postgresql_stack_json(stack) -> None:
    pg = stack.postgresql
    assert pg["host"] == stack.host == "127.0.0.1"
    assert pg["port"] == stack.port("postgresql")
    assert (pg["user"], pg["database"]) == ("mce", "mce")
    assert len(pg["password"]) >= 16
    assert pg["dsn"] == f"postgresql://mce:{pg['password']}@127.0.0.1:{pg['port']}/mce"
    assert pg["data_dir"] == f"{stack.stack_dir}/postgresql/data"
    assert pg["socket_dir"] == f"{stack.stack_dir}/postgresql/run"
    assert stack.raw["logs"]["postgresql"] == pg["log"]
    bin_dir = Path(pg["bin_dir"])
    assert bin_dir.parent.parent == Path("/usr/lib/postgresql") and (bin_dir / "pg_ctl").is_file()
    # the Unix socket is in the stack dir, not in /var/run/postgresql
    assert stat.S_ISSOCK(os.stat(f"{pg['socket_dir']}/.s.PGSQL.{pg['port']}").st_mode)


def test_postgresql_answers_with_the_password_only(stack) -> None:
    pg = stack.postgresql
    assert pg_query(stack, pg["dsn"], "SELECT current_user, current_database()") == [("mce", "mce")]
    assert pg_query(stack, pg_url(stack), "SHOW server_encoding") == [("UTF8",)]
    with pytest.raises(PgError, match='password authentication failed for user "mce"'):
        pg_query(stack, pg_url(stack, password="wrong-" + pg["password"]), "SELECT 1")
    # the superuser has no password: peer authentication on the Unix socket only
    with pytest.raises(PgError, match='password authentication failed for user "postgres"'):
        pg_query(stack, pg_url(stack).replace("//mce:", "//postgres:", 1), "SELECT 1")


def test_postgresql_is_durable(stack) -> None:
    url = pg_url(stack)
    assert pg_query(stack, url, "SHOW fsync") == [("on",)]
    assert pg_query(stack, url, "SHOW synchronous_commit") == [("on",)]
    assert pg_query(stack, url, "SHOW full_page_writes") == [("on",)]


def test_postgresql_listens_on_loopback_only(stack) -> None:
    port = stack.port("postgresql")
    listening = set()
    with open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                listening.add(addr)
    assert listening == {"0100007F"}  # 127.0.0.1
    with open("/proc/net/tcp6") as fh:
        assert not [ln for ln in fh.readlines()[1:] if int(ln.split()[1].split(":")[1], 16) == port]


def test_postgresql_role_can_create_a_database(stack) -> None:
    name = f"mce_t_{uuid.uuid4().hex[:12]}"
    pg_query(stack, pg_url(stack), f"CREATE DATABASE {name}")
    try:
        assert pg_query(stack, pg_url(stack, dbname=name), "SELECT current_database()") == [(name,)]
    finally:
        pg_query(stack, pg_url(stack), f"DROP DATABASE IF EXISTS {name}")
    assert pg_query(stack, pg_url(stack), f"SELECT 1 FROM pg_database WHERE datname = '{name}'") == []


def test_postgresql_stop_and_start_keep_the_data(stack) -> None:
    url = pg_url(stack)
    table = f"t_{uuid.uuid4().hex[:12]}"
    pg_query(stack, url, f"CREATE TABLE {table} (id int PRIMARY KEY, note text NOT NULL)")
    try:
        pg_query(stack, url, f"INSERT INTO {table} VALUES (1, 'before the restart')")
        stack.stop("postgresql")
        try:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((stack.host, stack.port("postgresql")), timeout=5).close()
            with pytest.raises(PgError):
                pg_query(stack, url, "SELECT 1")
        finally:
            stack.start("postgresql")
        assert pg_query(stack, url, f"SELECT id, note FROM {table}") == [("1", "before the restart")]
    finally:
        pg_query(stack, url, f"DROP TABLE IF EXISTS {table}")


def test_postgresql_recovers_committed_data_after_sigkill(stack) -> None:
    """A committed row survives SIGKILL of the postmaster (fsync on); start postgresql
    waits for the killed server's processes to go, then crash recovery runs."""
    if os.geteuid() != 0:
        pytest.skip("killing the postgres-owned postmaster needs root")
    url = pg_url(stack)
    table = f"t_{uuid.uuid4().hex[:12]}"
    pg_query(stack, url, f"CREATE TABLE {table} (id int PRIMARY KEY)")
    try:
        pg_query(stack, url, f"INSERT INTO {table} VALUES (42)")
        pid_file = Path(stack.postgresql["data_dir"]) / "postmaster.pid"
        log_size = os.path.getsize(stack.postgresql["log"])
        os.kill(int(pid_file.read_text().splitlines()[0]), signal.SIGKILL)
        try:
            poll("the killed postmaster's port to close", lambda: not _accepts(stack), 10.0)
        finally:
            stack.start("postgresql")
        assert pg_query(stack, url, f"SELECT id FROM {table}") == [("42",)]
        with open(stack.postgresql["log"], errors="replace") as fh:
            fh.seek(log_size)
            assert "database system was not properly shut down" in fh.read()
    finally:
        pg_query(stack, url, f"DROP TABLE IF EXISTS {table}")


def _accepts(stack) -> bool:
    try:
        socket.create_connection((stack.host, stack.port("postgresql")), timeout=2).close()
    except OSError:
        return False
    return True
