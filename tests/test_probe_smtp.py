"""The SMTP prober against scripted fault servers on real sockets (no mocks in the client path)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from faults import (
    CertKit,
    Outcome,
    SmtpScript,
    failures,
    garbage_flood,
    make_cert_kit,
    metric,
    refused_address,
    run_probe,
    send_then_close,
    slow_drip,
    smtp_server,
    tarpit,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config import AuthConfig, EndpointConfig, SmtpSettings, TLSSettings
from exporter.core.model import REASONS, Sink
from exporter.core.secrets import Secret
from exporter.net.tls import LINE_LIMIT, ProbeFailure
from exporter.probers.smtp import (
    MAX_REPLY_LINES,
    SmtpProbeSettings,
    parse_ehlo,
    parse_reply_line,
    probe_smtp,
    read_reply,
)

TIMEOUT = 2.0
PASSWORD = "pr0be-S3cret-pässwörd"
USER = "probe@example.test"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertKit:
    return make_cert_kit(Path(tmp_path_factory.mktemp("smtp-certs")))


def plain(tls: str = "none", **kw: object) -> SmtpProbeSettings:
    return SmtpProbeSettings(tls=tls, **kw)  # type: ignore[arg-type]


async def probe(target: str, settings: SmtpProbeSettings, timeout: float = TIMEOUT) -> Outcome:
    return await run_probe(probe_smtp, target, settings, protocol="smtp", timeout=timeout)


def phases(o: Outcome) -> set[str]:
    return {dict(s.labels)["phase"] for s in o.sink.samples() if s.name == "mail_probe_phase_duration_seconds"}


def assert_failed(o: Outcome, reason: str, timeout: float = TIMEOUT) -> None:
    assert not o.ok
    assert o.elapsed < timeout + 1, o.elapsed
    assert [f.reason for f in o.sink.failures] == [reason], o.sink.failures
    assert failures(o.sink) == {r: (1.0 if r == reason else 0.0) for r in REASONS}
    assert metric(o.sink, "mail_smtp_up") == 0


def with_auth(certs: CertKit) -> SmtpProbeSettings:
    return plain("starttls", tls_settings=TLSSettings(ca_file=certs.ca_file), auth=AuthConfig(USER, Secret(PASSWORD)))


def assert_ok(o: Outcome) -> None:
    assert o.sink.failures == [], o.sink.failures
    assert o.ok
    assert metric(o.sink, "mail_smtp_up") == 1
    assert failures(o.sink) == dict.fromkeys(REASONS, 0.0)


def assert_no_tasks_left() -> None:
    current = asyncio.current_task()
    assert [t for t in asyncio.all_tasks() if t is not current] == []


# --- the fault matrix ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_refused() -> None:
    async with refused_address() as address:
        o = await probe(address, plain())
    assert_failed(o, "refused")
    assert o.elapsed < 0.5
    assert phases(o) == set()
    assert "connection refused" in o.sink.failures[0].message


@pytest.mark.asyncio
async def test_dns_failure_without_any_query() -> None:
    # A 64-character label is rejected by the IDNA codec before any DNS packet is sent.
    o = await probe("a" * 64 + ".example.test:25", plain())
    assert_failed(o, "dns")


@pytest.mark.asyncio
async def test_tarpit_ends_at_the_callers_timeout_and_closes_the_socket() -> None:
    async with tarpit() as srv:
        o = await probe(srv.address, plain())
        for _ in range(50):
            if srv.peer_closed:
                break
            await asyncio.sleep(0.01)
        assert srv.peer_closed == 1  # the cancelled prober closed its connection
    assert_failed(o, "timeout")
    assert o.timed_out
    assert o.elapsed >= TIMEOUT
    assert phases(o) == {"connect"}  # partial metrics: how far it got
    assert metric(o.sink, "mail_smtp_reply_code") is None
    assert_no_tasks_left()


@pytest.mark.asyncio
async def test_slow_drip_banner_times_out() -> None:
    async with slow_drip(b"220 drip.test ESMTP\r\n", interval=1.0) as srv:
        o = await probe(srv.address, plain())
    assert_failed(o, "timeout")
    assert phases(o) == {"connect"}


@pytest.mark.asyncio
async def test_banner_421() -> None:
    async with send_then_close(b"421 4.3.2 service not available\r\n", hold=True) as srv:
        o = await probe(srv.address, plain())
    assert_failed(o, "reply_4xx")
    assert o.elapsed < 0.5
    assert metric(o.sink, "mail_smtp_reply_code") == 421
    assert o.sink.failures[0].message == "banner: 421 4.3.2 service not available"
    assert phases(o) == {"connect"}


@pytest.mark.asyncio
async def test_banner_554_multiline() -> None:
    data = b"554-mx.example.test no SMTP service here\r\n554 5.7.1 go away\r\n"
    async with send_then_close(data) as srv:
        o = await probe(srv.address, plain())
    assert_failed(o, "reply_5xx")
    assert metric(o.sink, "mail_smtp_reply_code") == 554
    assert o.sink.failures[0].message == "banner: 554 mx.example.test no SMTP service here"


@pytest.mark.asyncio
async def test_postscreen_multiline_pregreeting_passes() -> None:
    script = SmtpScript(banner=("220-mx.example.test ESMTP postscreen", "220 mx.example.test ESMTP"), banner_pause=0.5)
    async with smtp_server(script) as srv:
        o = await probe(srv.address, plain("optional"))
    assert_ok(o)
    assert not script.pregreeted  # the prober waited for the end of the multi-line banner
    assert metric(o.sink, "mail_smtp_reply_code") == 250
    banner = metric(o.sink, "mail_probe_phase_duration_seconds", phase="banner")
    assert banner is not None and banner >= 0.45
    assert phases(o) == {"connect", "banner", "ehlo", "quit"}


@pytest.mark.asyncio
async def test_starttls_handshake_fails(certs: CertKit) -> None:
    async with smtp_server(SmtpScript(starttls="garbage")) as srv:
        o = await probe(srv.address, plain("starttls", tls_settings=TLSSettings(ca_file=certs.ca_file)))
    assert_failed(o, "tls")
    assert o.elapsed < 1
    assert o.sink.failures[0].message.startswith("starttls: TLS handshake failed")
    assert metric(o.sink, "mail_tls_cert_expiry_timestamp_seconds") is None  # no handshake happened
    assert phases(o) == {"connect", "banner", "ehlo"}


@pytest.mark.asyncio
async def test_starttls_required_but_not_advertised() -> None:
    async with smtp_server(SmtpScript()) as srv:
        o = await probe(srv.address, plain("starttls"))
    assert_failed(o, "tls")
    assert "not advertised" in o.sink.failures[0].message


@pytest.mark.asyncio
async def test_starttls_optional_not_advertised_passes_in_clear_text() -> None:
    async with smtp_server(SmtpScript()) as srv:
        o = await probe(srv.address, plain("optional"))
    assert_ok(o)
    assert metric(o.sink, "mail_tls_cert_valid") is None


@pytest.mark.asyncio
async def test_closed_after_ehlo(certs: CertKit) -> None:
    script = SmtpScript(starttls=certs.valid.server_context(), close_after_ehlo=True)
    async with smtp_server(script) as srv:
        o = await probe(srv.address, plain("starttls", tls_settings=TLSSettings(ca_file=certs.ca_file)))
    assert_failed(o, "protocol")
    assert o.elapsed < 1
    assert metric(o.sink, "mail_smtp_reply_code") == 250
    assert phases(o) == {"connect", "banner", "ehlo"}


@pytest.mark.asyncio
async def test_closed_after_ehlo_before_auth_in_clear_text() -> None:
    script = SmtpScript(auth=("PLAIN",), auth_clear=True, close_after_ehlo=True)
    async with smtp_server(script) as srv:
        o = await probe(srv.address, plain("none", auth=AuthConfig(USER, Secret(PASSWORD))))
    assert_failed(o, "protocol")


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n",
        b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n",
        b"220\xff\xfe\r\n",  # a digit-prefixed line that is still not a reply
    ],
    ids=["http", "binary", "ssh", "bad-separator"],
)
@pytest.mark.asyncio
async def test_garbage(data: bytes) -> None:
    async with send_then_close(data, hold=True) as srv:
        o = await probe(srv.address, plain())
    assert_failed(o, "protocol")
    assert o.elapsed < 0.5
    assert "not an SMTP reply" in o.sink.failures[0].message


@pytest.mark.asyncio
async def test_garbage_flood_is_bounded() -> None:
    async with garbage_flood(total=4 << 20) as srv:
        o = await probe(srv.address, plain())
    assert_failed(o, "protocol")
    assert o.elapsed < 1
    assert f"longer than {LINE_LIMIT} bytes" in o.sink.failures[0].message


@pytest.mark.asyncio
async def test_endless_multiline_reply_is_bounded() -> None:
    async with send_then_close(b"220-still going\r\n" * (MAX_REPLY_LINES + 10), hold=True) as srv:
        o = await probe(srv.address, plain())
    assert_failed(o, "protocol")
    assert "lines" in o.sink.failures[0].message


@pytest.mark.asyncio
async def test_4xx_on_ehlo() -> None:
    async with smtp_server(SmtpScript(ehlo_reply=("421 4.7.0 mx.example.test try again later",))) as srv:
        o = await probe(srv.address, plain("optional"))
    assert_failed(o, "reply_4xx")
    assert metric(o.sink, "mail_smtp_reply_code") == 421
    assert o.sink.failures[0].message == "ehlo: 421 4.7.0 mx.example.test try again later"
    assert phases(o) == {"connect", "banner"}


@pytest.mark.asyncio
async def test_5xx_on_ehlo() -> None:
    async with smtp_server(SmtpScript(ehlo_reply=("550 5.7.1 no",))) as srv:
        o = await probe(srv.address, plain())
    assert_failed(o, "reply_5xx")
    assert metric(o.sink, "mail_smtp_reply_code") == 550


@pytest.mark.asyncio
async def test_auth_rejected(certs: CertKit) -> None:
    script = SmtpScript(starttls=certs.valid.server_context(), auth=("PLAIN", "LOGIN"), credentials=(USER, "other"))
    settings = with_auth(certs)
    async with smtp_server(script) as srv:
        o = await probe(srv.address, settings)
    assert_failed(o, "auth")
    assert metric(o.sink, "mail_smtp_reply_code") == 535
    assert o.sink.failures[0].message.startswith("auth: 535 5.7.8")
    assert script.auth_attempts == [(USER, PASSWORD)]
    assert_no_secret(o, PASSWORD)


@pytest.mark.asyncio
async def test_auth_not_sent_without_tls() -> None:
    script = SmtpScript(auth=("PLAIN",), auth_clear=True, credentials=(USER, PASSWORD))
    async with smtp_server(script) as srv:
        o = await probe(srv.address, plain("optional", auth=AuthConfig(USER, Secret(PASSWORD))))
    assert_failed(o, "tls")
    assert script.auth_attempts == []
    assert not any(c.upper().startswith("AUTH") for c in script.commands)


@pytest.mark.asyncio
async def test_auth_not_advertised(certs: CertKit) -> None:
    script = SmtpScript(starttls=certs.valid.server_context())
    settings = with_auth(certs)
    async with smtp_server(script) as srv:
        o = await probe(srv.address, settings)
    assert_failed(o, "auth")


# --- success paths and the transcript -----------------------------------------------------------------


def assert_no_secret(o: Outcome, password: str, user: str = USER) -> None:
    forms = {
        password,
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(f"\0{user}\0{password}".encode()).decode(),
        base64.b64encode(f"{user}\0{user}\0{password}".encode()).decode(),
    }
    assert o.sink.transcript is not None
    texts = [*o.sink.transcript, *(f.message for f in o.sink.failures)]
    for text in texts:
        for form in forms:
            assert form not in text, (form, text)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.asyncio
async def test_auth_success_and_redacted_transcript(
    certs: CertKit, mechanism: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    script = SmtpScript(starttls=certs.valid.server_context(), auth=(mechanism,), credentials=(USER, PASSWORD))
    settings = with_auth(certs)
    async with smtp_server(script) as srv:
        o = await probe(srv.address, settings)
    assert_ok(o)
    assert script.auth_attempts == [(USER, PASSWORD)]
    assert phases(o) == {"connect", "banner", "ehlo", "starttls", "ehlo_tls", "auth", "quit"}
    assert metric(o.sink, "mail_smtp_reply_code") == 235
    assert_no_secret(o, PASSWORD)
    assert o.sink.transcript is not None
    if mechanism == "PLAIN":
        assert "C: AUTH PLAIN <redacted>" in o.sink.transcript
    else:
        assert o.sink.transcript.count("C: <redacted>") == 2
    assert PASSWORD not in caplog.text
    assert base64.b64encode(PASSWORD.encode()).decode() not in caplog.text


@pytest.mark.asyncio
async def test_starttls_full_dialog_metrics(certs: CertKit) -> None:
    script = SmtpScript(starttls=certs.valid.server_context())
    async with smtp_server(script) as srv:
        o = await probe(srv.address, plain("starttls", tls_settings=TLSSettings(ca_file=certs.ca_file)))
        assert_ok(o)
        assert metric(o.sink, "mail_smtp_reply_code") == 250
        assert phases(o) == {"connect", "banner", "ehlo", "starttls", "ehlo_tls", "quit"}
        assert metric(o.sink, "mail_tls_version_info", version="TLSv1.3") == 1
        labels = {"protocol": "smtp", "check": "test", "target": srv.address}
        assert metric(o.sink, "mail_tls_cert_valid", **labels) == 1
        assert [c.split()[0] for c in script.commands] == ["EHLO", "STARTTLS", "EHLO", "QUIT"]


@pytest.mark.asyncio
async def test_implicit_tls(certs: CertKit) -> None:
    script = SmtpScript(implicit_tls=certs.valid.server_context())
    async with smtp_server(script) as srv:
        o = await probe(srv.address, plain("implicit", tls_settings=TLSSettings(ca_file=certs.ca_file)))
    assert_ok(o)
    assert phases(o) == {"connect", "tls", "banner", "ehlo", "quit"}
    assert metric(o.sink, "mail_tls_cert_expiry_timestamp_seconds") == certs.valid.not_after


@pytest.mark.asyncio
async def test_tls_version_reported(certs: CertKit) -> None:
    ctx = certs.valid.server_context(max_version=ssl.TLSVersion.TLSv1_2)
    async with smtp_server(SmtpScript(starttls=ctx)) as srv:
        o = await probe(srv.address, plain("starttls", tls_settings=TLSSettings(ca_file=certs.ca_file)))
    assert_ok(o)
    assert metric(o.sink, "mail_tls_version_info", version="TLSv1.2") == 1


@pytest.mark.asyncio
async def test_min_version_not_met_is_a_tls_failure(certs: CertKit) -> None:
    ctx = certs.valid.server_context(max_version=ssl.TLSVersion.TLSv1_2)
    settings = plain("starttls", tls_settings=TLSSettings(ca_file=certs.ca_file, min_version="TLS1.3"))
    async with smtp_server(SmtpScript(starttls=ctx)) as srv:
        o = await probe(srv.address, settings)
    assert_failed(o, "tls")


# --- certificates ------------------------------------------------------------------------------------

CERT_CASES = {
    # name: (chain_valid, hostname_valid)
    "valid": (1, 1),
    "expired": (0, 1),
    "self_signed": (0, 1),
    "wrong_host": (1, 0),
}


@pytest.mark.parametrize("verify", [True, False], ids=["verify", "no-verify"])
@pytest.mark.parametrize("mode", ["starttls", "implicit"])
@pytest.mark.parametrize("name", list(CERT_CASES))
@pytest.mark.asyncio
async def test_certificates(certs: CertKit, name: str, mode: str, verify: bool) -> None:
    served = getattr(certs, name)
    ctx = served.server_context()
    script = SmtpScript(starttls=ctx) if mode == "starttls" else SmtpScript(implicit_tls=ctx)
    settings = plain(mode, tls_settings=TLSSettings(ca_file=certs.ca_file, verify=verify))
    async with smtp_server(script) as srv:
        o = await probe(srv.address, settings)
    chain, host = CERT_CASES[name]
    # present and exact even when the certificate is expired, self-signed or for another host
    assert metric(o.sink, "mail_tls_cert_expiry_timestamp_seconds") == served.not_after
    assert metric(o.sink, "mail_tls_cert_chain_valid") == chain
    assert metric(o.sink, "mail_tls_cert_hostname_valid") == host
    assert metric(o.sink, "mail_tls_cert_valid") == (chain and host)
    assert metric(o.sink, "mail_tls_version_info", version="TLSv1.3") == 1
    if (chain and host) or not verify:
        assert_ok(o)
    else:
        assert_failed(o, "tls")
        assert "certificate" in o.sink.failures[0].message


@pytest.mark.asyncio
async def test_server_name_override(certs: CertKit) -> None:
    async with smtp_server(SmtpScript(starttls=certs.wrong_host.server_context())) as srv:
        base = plain("starttls", tls_settings=TLSSettings(ca_file=certs.ca_file))
        o = await probe(srv.address, dataclasses.replace(base, server_name="other.example"))
        assert_ok(o)
        assert metric(o.sink, "mail_tls_cert_hostname_valid") == 1
        # settings.server_name wins over tls_settings.server_name
        tls = TLSSettings(ca_file=certs.ca_file, server_name="localhost")
        o = await probe(srv.address, plain("starttls", tls_settings=tls, server_name="other.example"))
        assert_ok(o)


@pytest.mark.asyncio
async def test_hostname_checked_against_dns_san(certs: CertKit) -> None:
    async with smtp_server(SmtpScript(starttls=certs.valid.server_context())) as srv:
        tls = TLSSettings(ca_file=certs.ca_file, server_name="localhost")
        o = await probe(srv.address, plain("starttls", tls_settings=tls))
        assert_ok(o)
        tls = TLSSettings(ca_file=certs.ca_file, server_name="mx.example.test")
        o = await probe(srv.address, plain("starttls", tls_settings=tls))
        assert_failed(o, "tls")
        assert "does not match host name 'mx.example.test'" in o.sink.failures[0].message


@pytest.mark.asyncio
async def test_missing_ca_file_is_a_tls_failure(tmp_path: Path) -> None:
    async with smtp_server(SmtpScript(starttls=None)) as srv:
        o = await probe(srv.address, plain("starttls", tls_settings=TLSSettings(ca_file=str(tmp_path / "nope.pem"))))
    assert_failed(o, "tls")
    assert "ca_file" in o.sink.failures[0].message


# --- the prober's own backstop -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_backstop_without_a_caller_timeout() -> None:
    async with tarpit() as srv:
        sink = Sink()
        started = time.monotonic()
        ok = await probe_smtp(srv.address, plain(max_duration=0.3), sink, logging.getLogger("t"), check="t")
    assert not ok
    assert time.monotonic() - started < 1.3
    assert [f.reason for f in sink.failures] == ["timeout"]


# --- settings --------------------------------------------------------------------------------------


def test_settings_from_config() -> None:
    cfg = EndpointConfig(
        name="sub",
        protocol="smtp",
        address="127.0.0.1:587",
        tls="implicit",
        helo="probe.test",
        auth=AuthConfig(USER, Secret(PASSWORD)),
    )
    s = SmtpProbeSettings.from_endpoint(cfg)
    assert (s.tls, s.helo, s.auth) == ("implicit", "probe.test", cfg.auth)
    assert SmtpProbeSettings.from_domain(SmtpSettings(tls="starttls")).tls == "starttls"
    assert SmtpProbeSettings.from_domain(SmtpSettings(tls="optional")).tls == "optional"
    assert SmtpProbeSettings.from_domain(SmtpSettings(tls="none", helo="h.test")).helo == "h.test"
    no_verify = SmtpSettings(tls_config=TLSSettings(verify=False))
    assert SmtpProbeSettings.from_domain(no_verify).tls_settings == TLSSettings(verify=False)


@pytest.mark.asyncio
async def test_bad_target_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        await probe_smtp("no-port", plain(), Sink(), logging.getLogger("t"), check="t")


# --- the reply parser (pure) ---------------------------------------------------------------------------


def test_parse_reply_line_examples() -> None:
    assert parse_reply_line(b"250-mx.example.test\r\n") is not None
    line = parse_reply_line(b"250-mx.example.test\r\n")
    assert line is not None and (line.code, line.final, line.text) == (250, False, "mx.example.test")
    line = parse_reply_line(b"221 2.0.0 Bye\r\n")
    assert line is not None and (line.code, line.final, line.text) == (221, True, "2.0.0 Bye")
    line = parse_reply_line(b"250")
    assert line is not None and (line.code, line.final, line.text) == (250, True, "")
    for bad in (b"", b"25", b"2500", b"abc def", b"150 nope", b"650 nope", b"250_x", b" 250 x", b"\xff\xfe\xfd"):
        assert parse_reply_line(bad) is None, bad


def test_parse_ehlo() -> None:
    from exporter.probers.smtp import Reply

    reply = Reply(250, ("mx.test", "PIPELINING", "auth=LOGIN", "AUTH PLAIN LOGIN CRAM-MD5", "starttls", "SIZE 100"))
    ext = parse_ehlo(reply)
    assert ext["STARTTLS"] == "" and ext["SIZE"] == "100"
    assert set(ext["AUTH"].split()) == {"PLAIN", "LOGIN", "CRAM-MD5"}


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_parse_reply_line_never_raises(data: bytes) -> None:
    line = parse_reply_line(data)
    if line is not None:
        assert 200 <= line.code <= 599
        assert data[:3] == str(line.code).encode()


@given(
    code=st.integers(200, 599),
    texts=st.lists(st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=40), min_size=1, max_size=5),
)
def test_reply_round_trip(code: int, texts: list[str]) -> None:
    lines = [f"{code}{'-' if i < len(texts) - 1 else ' '}{t}\r\n".encode() for i, t in enumerate(texts)]

    async def read() -> tuple[int, tuple[str, ...]]:
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        reader.feed_data(b"".join(lines))
        reader.feed_eof()
        reply = await read_reply(reader, "test")
        return reply.code, reply.lines

    assert asyncio.run(read()) == (code, tuple(texts))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(st.binary(max_size=200), st.sampled_from([b"250-x\r\n", b"250 y\r\n", b"\r\n", b"451 z"])),
        max_size=20,
    )
)
def test_read_reply_only_raises_probe_failure(chunks: list[bytes]) -> None:
    async def read() -> None:
        reader = asyncio.StreamReader(limit=LINE_LIMIT)
        reader.feed_data(b"".join(chunks))
        reader.feed_eof()
        for _ in range(5):
            try:
                await read_reply(reader, "test", lambda _line: None)
            except ProbeFailure as failure:
                assert failure.reason == "protocol"
                return

    asyncio.run(read())


# --- against the real Postfix of the loopback test stack (tests/conftest.py: ``stack``) -----------------

STACK_CERTS = {
    "smtp": "valid",
    "smtp_expired": "expired",
    "smtp_selfsigned": "selfsigned",
    "smtp_wronghost": "wronghost",
}


@pytest.mark.asyncio
@pytest.mark.parametrize("port", list(STACK_CERTS))
async def test_stack_postfix_certificates(stack: Any, port: str) -> None:
    cert = stack.certs[STACK_CERTS[port]]
    settings = plain("starttls", tls_settings=TLSSettings(ca_file=stack.ca_file, server_name=stack.hostname))
    o = await probe(f"{stack.host}:{stack.port(port)}", settings, timeout=10)
    assert metric(o.sink, "mail_tls_cert_expiry_timestamp_seconds") == cert["not_after"]
    if port == "smtp":
        assert_ok(o)
        assert metric(o.sink, "mail_tls_cert_valid") == 1
        assert phases(o) == {"connect", "banner", "ehlo", "starttls", "ehlo_tls", "quit"}
    else:
        assert_failed(o, "tls", timeout=10)
        assert metric(o.sink, "mail_tls_cert_valid") == 0
        assert metric(o.sink, "mail_tls_cert_chain_valid") == (1 if port == "smtp_wronghost" else 0)


@pytest.mark.asyncio
@pytest.mark.parametrize(("port", "mode"), [("submission", "starttls"), ("smtps", "implicit")])
async def test_stack_postfix_auth(stack: Any, port: str, mode: str) -> None:
    password = stack.password(USER)
    settings = plain(
        mode,
        tls_settings=TLSSettings(ca_file=stack.ca_file, server_name=stack.hostname),
        auth=AuthConfig(USER, Secret(password)),
    )
    o = await probe(f"{stack.host}:{stack.port(port)}", settings, timeout=10)
    assert_ok(o)
    assert metric(o.sink, "mail_smtp_reply_code") == 235
    assert_no_secret(o, password)


@pytest.mark.parametrize("tls", ["none", "starttls"])
@pytest.mark.asyncio
async def test_a_finished_probe_leaves_no_transport_for_the_cyclic_collector(
    certs: CertKit, tls: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CPython 3.11 keeps a closed transport in a cycle with its own bound method; the probe
    cuts it, so reference counting frees the connection as soon as it is closed (no pile of
    garbage for a young collection to free at once, under /metrics)."""
    import gc
    import weakref

    from exporter.net import tls as tlsmod

    made: list[weakref.ref[object]] = []
    post_init = tlsmod.Conn.__post_init__

    def record(self: tlsmod.Conn) -> None:
        post_init(self)
        made.append(weakref.ref(self._socket_transport))

    monkeypatch.setattr(tlsmod.Conn, "__post_init__", record)
    script = SmtpScript(starttls=certs.valid.server_context())
    settings = plain(tls, tls_settings=TLSSettings(ca_file=certs.ca_file))
    async with smtp_server(script) as srv:
        gc.collect()
        gc.disable()
        try:
            o = await probe(srv.address, settings)
            for _ in range(5):  # connection_lost runs from the loop's next iterations
                await asyncio.sleep(0)
            assert_ok(o)
            assert len(made) == 1
            assert made[0]() is None, gc.get_referrers(made[0]())
        finally:
            gc.enable()
