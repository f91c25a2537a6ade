"""The IMAP prober against scripted fault servers on real sockets (no mocks in the client path)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from faults import (
    CertKit,
    ImapScript,
    Outcome,
    failures,
    garbage_flood,
    imap_server,
    make_cert_kit,
    metric,
    refused_address,
    run_probe,
    send_then_close,
    tarpit,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config import AuthConfig, EndpointConfig, TLSSettings
from exporter.core.model import REASONS
from exporter.core.secrets import Secret
from exporter.net.tls import LINE_LIMIT, ProbeFailure
from exporter.probers.imap import ImapProbeSettings, parse_response_line, probe_imap, read_response

TIMEOUT = 2.0
USER = "probe@example.test"
PASSWORD = 'imap-"quoted"\\pass'


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertKit:
    return make_cert_kit(Path(tmp_path_factory.mktemp("imap-certs")))


def imap(tls: str = "none", **kw: object) -> ImapProbeSettings:
    return ImapProbeSettings(tls=tls, **kw)  # type: ignore[arg-type]


def login(tls: str = "none", password: str = PASSWORD, **kw: object) -> ImapProbeSettings:
    return imap(tls, auth=AuthConfig(USER, Secret(password)), select="INBOX", **kw)


async def probe(target: str, settings: ImapProbeSettings, timeout: float = TIMEOUT) -> Outcome:
    return await run_probe(probe_imap, target, settings, protocol="imap", timeout=timeout)


def phases(o: Outcome) -> set[str]:
    return {dict(s.labels)["phase"] for s in o.sink.samples() if s.name == "mail_probe_phase_duration_seconds"}


def assert_failed(o: Outcome, reason: str, timeout: float = TIMEOUT) -> None:
    assert not o.ok
    assert o.elapsed < timeout + 1, o.elapsed
    assert [f.reason for f in o.sink.failures] == [reason], o.sink.failures
    assert failures(o.sink) == {r: (1.0 if r == reason else 0.0) for r in REASONS}
    assert metric(o.sink, "mail_imap_up") == 0


def assert_ok(o: Outcome) -> None:
    assert o.sink.failures == [], o.sink.failures
    assert o.ok
    assert metric(o.sink, "mail_imap_up") == 1
    assert failures(o.sink) == dict.fromkeys(REASONS, 0.0)


def assert_no_secret(o: Outcome, password: str = PASSWORD) -> None:
    assert o.sink.transcript is not None
    for text in [*o.sink.transcript, *(f.message for f in o.sink.failures)]:
        assert password not in text
        assert password.replace("\\", "\\\\").replace('"', '\\"') not in text


# --- the fault matrix ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_refused() -> None:
    async with refused_address() as address:
        o = await probe(address, imap())
    assert_failed(o, "refused")


@pytest.mark.asyncio
async def test_dns_failure_without_any_query() -> None:
    o = await probe("b" * 64 + ".example.test:143", imap())
    assert_failed(o, "dns")


@pytest.mark.asyncio
async def test_no_greeting_times_out() -> None:
    async with tarpit() as srv:
        o = await probe(srv.address, imap())
    assert_failed(o, "timeout")
    assert phases(o) == {"connect"}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "data",
    [b"220 mx.example.test ESMTP\r\n", b"\x00\x01\x02garbage\xff\r\n", b"HTTP/1.0 200 OK\r\n"],
    ids=["smtp-banner", "binary", "http"],
)
async def test_garbage_greeting(data: bytes) -> None:
    async with send_then_close(data, hold=True) as srv:
        o = await probe(srv.address, imap())
    assert_failed(o, "protocol")
    assert o.elapsed < 0.5
    assert "not an IMAP greeting" in o.sink.failures[0].message


@pytest.mark.asyncio
async def test_garbage_flood_is_bounded() -> None:
    async with garbage_flood() as srv:
        o = await probe(srv.address, imap())
    assert_failed(o, "protocol")
    assert f"longer than {LINE_LIMIT} bytes" in o.sink.failures[0].message


@pytest.mark.asyncio
async def test_bye_greeting() -> None:
    async with imap_server(ImapScript(greeting="* BYE too many connections from your IP")) as srv:
        o = await probe(srv.address, imap())
    assert_failed(o, "protocol")
    assert o.sink.failures[0].message == "greeting: server said BYE: too many connections from your IP"


@pytest.mark.asyncio
async def test_closed_after_greeting() -> None:
    async with send_then_close(b"* OK ready\r\n") as srv:
        o = await probe(srv.address, imap())
    assert_failed(o, "protocol")
    assert o.sink.failures[0].message == "capability: connection closed by the server"


@pytest.mark.asyncio
async def test_login_rejected() -> None:
    script = ImapScript(credentials=(USER, "something else"))
    async with imap_server(script) as srv:
        o = await probe(srv.address, login())
    assert_failed(o, "auth")
    assert o.sink.failures[0].message == "login: NO [AUTHENTICATIONFAILED] Authentication failed."
    assert script.logins == [(USER, PASSWORD)]  # quoting round-trips
    assert phases(o) == {"connect", "greeting", "capability"}
    assert_no_secret(o)


@pytest.mark.asyncio
async def test_hang_after_login_ends_at_the_callers_timeout() -> None:
    script = ImapScript(credentials=(USER, PASSWORD), after_login="hang")
    async with imap_server(script) as srv:
        o = await probe(srv.address, login())
        for _ in range(50):
            if srv.peer_closed:
                break
            await asyncio.sleep(0.01)
        assert srv.peer_closed == 1  # the cancelled prober closed its connection
    assert_failed(o, "timeout")
    assert o.timed_out
    assert phases(o) == {"connect", "greeting", "capability", "login"}  # partial metrics survive
    assert o.sink.transcript is not None and o.sink.transcript[-1] == 'C: A3 SELECT "INBOX"'


@pytest.mark.asyncio
async def test_select_refused() -> None:
    async with imap_server(ImapScript(credentials=(USER, PASSWORD), select="no")) as srv:
        o = await probe(srv.address, login())
    assert_failed(o, "protocol")
    assert o.sink.failures[0].message.startswith("select: NO [NONEXISTENT]")


@pytest.mark.asyncio
async def test_starttls_not_advertised() -> None:
    async with imap_server(ImapScript()) as srv:
        o = await probe(srv.address, imap("starttls"))
    assert_failed(o, "tls")


@pytest.mark.asyncio
async def test_logindisabled_in_clear_text() -> None:
    script = ImapScript(capabilities=("IMAP4rev1", "LOGINDISABLED"), credentials=(USER, PASSWORD))
    async with imap_server(script) as srv:
        o = await probe(srv.address, login())
    assert_failed(o, "tls")
    assert script.logins == []


# --- success paths ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_starttls_login_select(certs: CertKit, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    script = ImapScript(starttls=certs.valid.server_context(), credentials=(USER, PASSWORD))
    async with imap_server(script) as srv:
        o = await probe(srv.address, login("starttls", tls_settings=TLSSettings(ca_file=certs.ca_file)))
    assert_ok(o)
    assert phases(o) == {"connect", "greeting", "capability", "starttls", "login", "select", "logout"}
    assert metric(o.sink, "mail_tls_cert_valid") == 1
    assert metric(o.sink, "mail_tls_cert_expiry_timestamp_seconds") == certs.valid.not_after
    assert metric(o.sink, "mail_tls_version_info", version="TLSv1.3") == 1
    assert [c.split()[1] for c in script.commands] == ["CAPABILITY", "STARTTLS", "LOGIN", "SELECT", "LOGOUT"]
    assert o.sink.transcript is not None and "C: A3 LOGIN <redacted>" in o.sink.transcript
    assert_no_secret(o)
    assert PASSWORD not in caplog.text


@pytest.mark.asyncio
async def test_non_ascii_password_is_sent_as_a_literal() -> None:
    password = "pässwörd\u00e9-42"
    script = ImapScript(credentials=(USER, password))
    async with imap_server(script) as srv:
        o = await probe(srv.address, login(password=password))
    assert_ok(o)
    assert script.logins == [(USER, password)]
    assert_no_secret(o, password)


@pytest.mark.asyncio
async def test_capability_from_greeting_skips_the_command() -> None:
    script = ImapScript(greeting="* OK [CAPABILITY IMAP4rev1 ID] ready", credentials=(USER, PASSWORD))
    async with imap_server(script) as srv:
        o = await probe(srv.address, login())
    assert_ok(o)
    assert "capability" not in phases(o)
    assert [c.split()[1] for c in script.commands] == ["LOGIN", "SELECT", "LOGOUT"]


@pytest.mark.asyncio
async def test_preauth_skips_login() -> None:
    script = ImapScript(greeting="* PREAUTH [CAPABILITY IMAP4rev1] logged in as probe")
    async with imap_server(script) as srv:
        o = await probe(srv.address, imap(select=None))
    assert_ok(o)
    assert script.logins == []


@pytest.mark.asyncio
async def test_greeting_only() -> None:
    async with imap_server(ImapScript()) as srv:
        o = await probe(srv.address, imap())
    assert_ok(o)
    assert phases(o) == {"connect", "greeting", "capability", "logout"}


# --- certificates ------------------------------------------------------------------------------------

CERT_CASES = {"valid": (1, 1), "expired": (0, 1), "self_signed": (0, 1), "wrong_host": (1, 0)}


@pytest.mark.asyncio
@pytest.mark.parametrize("verify", [True, False], ids=["verify", "no-verify"])
@pytest.mark.parametrize("mode", ["implicit", "starttls"])
@pytest.mark.parametrize("name", list(CERT_CASES))
async def test_certificates(certs: CertKit, name: str, mode: str, verify: bool) -> None:
    served = getattr(certs, name)
    ctx = served.server_context()
    script = ImapScript(starttls=ctx) if mode == "starttls" else ImapScript(implicit_tls=ctx)
    async with imap_server(script) as srv:
        o = await probe(srv.address, imap(mode, tls_settings=TLSSettings(ca_file=certs.ca_file, verify=verify)))
    chain, host = CERT_CASES[name]
    assert metric(o.sink, "mail_tls_cert_expiry_timestamp_seconds") == served.not_after
    assert metric(o.sink, "mail_tls_cert_chain_valid") == chain
    assert metric(o.sink, "mail_tls_cert_hostname_valid") == host
    assert metric(o.sink, "mail_tls_cert_valid") == (chain and host)
    assert metric(o.sink, "mail_tls_version_info", version="TLSv1.3") == 1
    if (chain and host) or not verify:
        assert_ok(o)
    else:
        assert_failed(o, "tls")
    if mode == "implicit" and (chain or not verify):
        assert "tls" in phases(o)  # a rejected chain with verify on: the handshake phase never completed


@pytest.mark.asyncio
async def test_implicit_tls_handshake_failure() -> None:
    async with send_then_close(b"* OK this is not TLS\r\n", hold=True) as srv:
        o = await probe(srv.address, imap("implicit"))
    assert_failed(o, "tls")


# --- settings and parser ------------------------------------------------------------------------------


def test_settings_from_endpoint() -> None:
    cfg = EndpointConfig(
        name="imap",
        protocol="imap",
        address="127.0.0.1:993",
        tls="implicit",
        auth=AuthConfig(USER, Secret(PASSWORD)),
        select="INBOX",
    )
    s = ImapProbeSettings.from_endpoint(cfg)
    assert (s.tls, s.auth, s.select) == ("implicit", cfg.auth, "INBOX")
    with pytest.raises(ValueError, match="optional"):
        ImapProbeSettings.from_endpoint(EndpointConfig(name="x", protocol="imap", address="h:1", tls="optional"))


def test_parse_response_line_examples() -> None:
    line = parse_response_line(b"* OK [CAPABILITY IMAP4rev1] ready\r\n")
    assert line is not None
    assert (line.kind, line.status, line.text) == ("untagged", "OK", "[CAPABILITY IMAP4rev1] ready")
    line = parse_response_line(b"* 3 EXISTS")
    assert line is not None and (line.kind, line.status, line.text) == ("untagged", "", "3 EXISTS")
    line = parse_response_line(b"A7 no [AUTHENTICATIONFAILED] nope")
    assert line is not None and (line.kind, line.tag, line.status) == ("tagged", "A7", "NO")
    line = parse_response_line(b"+ go ahead")
    assert line is not None and line.kind == "continuation"
    for bad in (b"", b"*", b"220 mx ESMTP", b"A1 MAYBE", b"\xff\xfe OK", b"A1"):
        assert parse_response_line(bad) is None, bad


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_parse_response_line_never_raises(data: bytes) -> None:
    parse_response_line(data)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.sampled_from([b"* OK x\r\n", b"A1 OK done\r\n", b"* BYE\r\n", b"{5}\r\n", b"* x {3}\r\nabc", b"+\r\n"]),
        ),
        max_size=20,
    )
)
def test_read_response_only_raises_probe_failure(chunks: list[bytes]) -> None:
    async def read() -> None:
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        reader.feed_data(b"".join(chunks))
        reader.feed_eof()
        try:
            await read_response(reader, "A1", "test", lambda _line: None)
        except ProbeFailure as failure:
            assert failure.reason == "protocol"

    asyncio.run(read())


# --- against the real Dovecot of the loopback test stack (tests/conftest.py: ``stack``) -----------------


@pytest.mark.asyncio
@pytest.mark.parametrize(("port", "mode"), [("imap", "starttls"), ("imaps", "implicit")])
async def test_stack_dovecot_login_select(stack: Any, port: str, mode: str) -> None:
    password = stack.password(USER)
    settings = login(mode, password, tls_settings=TLSSettings(ca_file=stack.ca_file, server_name="imap.example.test"))
    o = await probe(f"{stack.host}:{stack.port(port)}", settings, timeout=10)
    assert_ok(o)
    assert {"login", "select", "logout"} <= phases(o)
    assert metric(o.sink, "mail_tls_cert_valid") == 1
    assert metric(o.sink, "mail_tls_cert_expiry_timestamp_seconds") == stack.certs["valid"]["not_after"]
    assert_no_secret(o, password)


@pytest.mark.asyncio
async def test_stack_dovecot_login_rejected(stack: Any) -> None:
    # One rejected login only: Dovecot delays repeated failures from the same address.
    settings = login("implicit", "not-the-password", tls_settings=TLSSettings(ca_file=stack.ca_file))
    o = await probe(f"{stack.host}:{stack.port('imaps')}", settings, timeout=10)
    assert_failed(o, "auth", timeout=10)
    assert "AUTHENTICATIONFAILED" in o.sink.failures[0].message
    assert_no_secret(o, "not-the-password")
