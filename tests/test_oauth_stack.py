"""OAuth2 logins of the exporter against the test stack's real Dovecot and Postfix.

Dovecot validates the tokens itself (its ``oauth2`` passdb, with the stack's public key);
they come from tests/oauth_server.py's TokenService on loopback, through the exporter's own
token code: MSAL (``microsoft``, client secret and certificate), google-auth (``google``,
a service account key file) and the generic RFC 6749 grants, each for real, none mocked.
Covered: IMAP and SMTP submission probes with XOAUTH2 and OAUTHBEARER; a full round trip
(send with OAuth2, find over IMAP IDLE with OAuth2); a token renewed before it expires
without a failed probe; a revoked credential (``auth_token``); a token Dovecot refuses
(``auth``); no secret and no access token in any output.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from oauth_server import TokenService, make_client_certificate
from stack import Stack

from exporter import config
from exporter.core.model import Sink
from exporter.core.secrets import redact
from exporter.net.oauth import clear_sources
from exporter.probers.imap import ImapProbeSettings, probe_imap
from exporter.probers.smtp import SmtpProbeSettings, probe_smtp
from exporter.roundtrip.receiver import close_all
from exporter.roundtrip.route import Route

LOG = logging.getLogger("test.oauth")
TENANT = "contoso"


@pytest.fixture(scope="module")
def token_service(stack: Stack) -> Iterator[TokenService]:
    with TokenService(stack) as service:
        yield service


@pytest.fixture
def idp(token_service: TokenService) -> Iterator[TokenService]:
    def reset() -> None:
        token_service.reset()
        clear_sources()  # every test starts without cached tokens

    reset()
    yield token_service
    reset()


def ca(stack: Stack) -> str:
    return str(stack.ca_file)


def generic_client(stack: Stack, idp: TokenService) -> tuple[str, str]:
    client_id, secret = f"generic-{secrets.token_hex(4)}", secrets.token_hex(16)
    idp.add_client(client_id, secret, user=stack.oauth2_user)
    block = f"""{{provider: generic, token_url: "{idp.token_url}", client_id: {client_id},
              client_secret: "{secret}", ca_file: "{ca(stack)}", timeout: 5s}}"""
    return block, secret


def microsoft_client(stack: Stack, idp: TokenService, tmp_path: Path, *, certificate: bool) -> tuple[str, str]:
    client_id = f"ms-{secrets.token_hex(4)}"
    if certificate:
        cert = make_client_certificate()
        idp.add_certificate_client(client_id, cert.cert_pem, user=stack.oauth2_user, tenant=TENANT)
        (tmp_path / "ms.crt").write_text(cert.cert_pem)
        (tmp_path / "ms.key").write_text(cert.key_pem)
        credential = (
            f'certificate: {{private_key_file: "{tmp_path / "ms.key"}", certificate_file: "{tmp_path / "ms.crt"}"}}'
        )
        secret = cert.key_pem.rstrip("\n")  # as read from private_key_file
    else:
        secret = secrets.token_hex(16)
        idp.add_client(client_id, secret, user=stack.oauth2_user, tenant=TENANT)
        credential = f'client_secret: "{secret}"'
    block = f"""{{provider: microsoft, authority: "{idp.url}", tenant_id: {TENANT}, client_id: {client_id},
              {credential}, ca_file: "{ca(stack)}", timeout: 5s}}"""
    return block, secret


def google_client(stack: Stack, idp: TokenService) -> tuple[str, str]:
    key_file = idp.add_service_account()
    secret = key_file.read_text()  # the key file, private key inside
    block = f"""{{provider: google, service_account_file: "{key_file}", ca_file: "{ca(stack)}", timeout: 5s}}"""
    return block, secret


def endpoint(stack: Stack, protocol: str, oauth2: str, mechanism: str = "auto") -> config.EndpointConfig:
    user = stack.oauth2_user
    if protocol == "smtp":
        where = f'address: "127.0.0.1:{stack.port("submission")}"\n    tls: starttls'
    else:
        where = f'address: "127.0.0.1:{stack.port("imaps")}"\n    tls: implicit'
    server = "mx1.example.test" if protocol == "smtp" else "imap.example.test"
    text = f"""
endpoints:
  - name: hosted
    protocol: {protocol}
    {where}
    tls_config: {{ca_file: "{ca(stack)}", server_name: {server}}}
    auth:
      username: {user}
      mechanism: {mechanism}
      oauth2: {oauth2}
"""
    return config.load_text(text).endpoints[0]


async def run_probe(ep: config.EndpointConfig) -> Sink:
    sink = Sink(debug=True)
    if ep.protocol == "smtp":
        await probe_smtp(ep.address, SmtpProbeSettings.from_endpoint(ep), sink, LOG, check=ep.name)
    else:
        await probe_imap(ep.address, ImapProbeSettings.from_endpoint(ep), sink, LOG, check=ep.name)
    return sink


def assert_ok(sink: Sink) -> None:
    assert sink.failure is None, f"{sink.failure}\n" + "\n".join(sink.transcript or [])


def assert_no_leak(sink: Sink, idp: TokenService, *secrets_: str, issued: bool = True) -> None:
    """No secret and no token in the probe's transcript, failure or details; the secrets and
    the token in use are registered, so that any log line would have them scrubbed."""
    text = "\n".join(sink.transcript or []) + str(sink.failure or "") + repr(sink.details)
    for value in (*secrets_, *idp.issued):
        assert value not in text
    for value in (*secrets_, *(idp.issued[-1:] if issued else [])):
        assert redact(value) == "<redacted>"


@pytest.mark.parametrize("protocol", ["imap", "smtp"])
@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
async def test_generic_client_credentials_log_in(
    stack: Stack, idp: TokenService, protocol: str, mechanism: str
) -> None:
    block, secret = generic_client(stack, idp)
    sink = await run_probe(endpoint(stack, protocol, block, mechanism))
    assert_ok(sink)
    transcript = "\n".join(sink.transcript or [])
    assert f"AUTHENTICATE {mechanism}" in transcript or f"AUTH {mechanism}" in transcript
    assert_no_leak(sink, idp, secret)


async def test_auto_prefers_oauthbearer(stack: Stack, idp: TokenService) -> None:
    block, _ = generic_client(stack, idp)
    sink = await run_probe(endpoint(stack, "imap", block))
    assert_ok(sink)
    assert "AUTHENTICATE OAUTHBEARER" in "\n".join(sink.transcript or [])


@pytest.mark.parametrize("certificate", [False, True], ids=["client-secret", "certificate"])
async def test_microsoft_through_msal(stack: Stack, idp: TokenService, tmp_path: Path, certificate: bool) -> None:
    block, secret = microsoft_client(stack, idp, tmp_path, certificate=certificate)
    before = idp.requests.get(f"/{TENANT}/oauth2/v2.0/token", 0)
    for protocol in ("imap", "smtp"):
        sink = await run_probe(endpoint(stack, protocol, block, "XOAUTH2"))  # what Microsoft 365 offers
        assert_ok(sink)
        assert_no_leak(sink, idp, secret)
    assert idp.requests.get(f"/{TENANT}/oauth2/v2.0/token", 0) == before + 1  # one token for both probes


async def test_google_service_account_through_google_auth(stack: Stack, idp: TokenService) -> None:
    block, secret = google_client(stack, idp)
    for protocol in ("imap", "smtp"):
        sink = await run_probe(endpoint(stack, protocol, block))
        assert_ok(sink)
        assert_no_leak(sink, idp, secret)
    assert idp.requests.get("/google/token", 0) >= 1


async def test_a_token_is_renewed_before_it_expires_without_a_failed_probe(stack: Stack, idp: TokenService) -> None:
    idp.lifetime = 8  # renewed a quarter of its life before expiry: 6 s after it was issued
    block, _ = generic_client(stack, idp)
    ep = endpoint(stack, "imap", block)
    assert_ok(await run_probe(ep))
    first = len(idp.issued)
    assert_ok(await run_probe(ep))
    assert len(idp.issued) == first  # cached
    time.sleep(6.5)
    assert_ok(await run_probe(ep))  # due: renewed first, then used
    assert len(idp.issued) == first + 1


async def test_a_revoked_credential_is_auth_token(stack: Stack, idp: TokenService) -> None:
    block, secret = generic_client(stack, idp)
    client_id = block.split("client_id: ")[1].split(",")[0]
    idp.revoke(client_id)
    sink = await run_probe(endpoint(stack, "smtp", block))
    assert sink.failure is not None and sink.failure.reason == "auth_token", sink.failure
    assert "invalid_client" in sink.failure.message
    assert_no_leak(sink, idp, secret, issued=False)


async def test_an_unreachable_token_endpoint_is_auth_token_within_the_timeout(stack: Stack, idp: TokenService) -> None:
    idp.hang = True
    block, _ = generic_client(stack, idp)
    started = time.monotonic()
    sink = await run_probe(endpoint(stack, "imap", block.replace("timeout: 5s", "timeout: 1s")))
    assert sink.failure is not None and sink.failure.reason == "auth_token", sink.failure
    assert time.monotonic() - started < 15  # bounded by the token timeout, not the server's


@pytest.mark.parametrize("protocol", ["imap", "smtp"])
async def test_a_token_the_server_refuses_is_auth(stack: Stack, idp: TokenService, protocol: str) -> None:
    idp.bad_signature = True  # Dovecot cannot verify it
    block, _ = generic_client(stack, idp)
    sink = await run_probe(endpoint(stack, protocol, block))
    assert sink.failure is not None and sink.failure.reason == "auth", sink.failure
    assert_no_leak(sink, idp)


async def test_round_trip_with_oauth2_both_ways(stack: Stack, idp: TokenService) -> None:
    block, secret = generic_client(stack, idp)
    user = stack.oauth2_user
    text = f"""
routes:
  - name: hosted
    interval: 60s
    timeout: 20s
    max_age: 60s
    send:
      address: 127.0.0.1:{stack.port("submission")}
      tls: starttls
      tls_config: {{ca_file: "{ca(stack)}", server_name: mx1.example.test}}
      auth: {{username: {user}, oauth2: {block}}}
      from: {user}
      to: {user}
    receive:
      address: 127.0.0.1:{stack.port("imaps")}
      tls: implicit
      tls_config: {{ca_file: "{ca(stack)}", server_name: imap.example.test}}
      username: {user}
      oauth2: {block}
"""
    route = Route(config.load_text(text).routes[0], imap_timeout=10, send_timeout=10)
    try:
        sink = Sink(route.state)
        ok = await route.run(sink, LOG)
        assert ok, sink.failure
        probe = route.last
        assert probe is not None and probe.outcome == "delivered" and probe.latency is not None
        assert 0 < probe.latency < 20
        assert_no_leak(sink, idp, secret)
    finally:
        route.close()
        await close_all()
