"""OAuth2 token sources (exporter.net.oauth) against a scripted token endpoint on 127.0.0.1.

The generic provider (RFC 6749 client credentials and refresh-token grants) is exercised
here against an HTTPS endpoint with a test CA; MSAL and google-auth are exercised against
the test stack's identity provider in tests/test_oauth_stack.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from exporter.config import OAuth2Config
from exporter.core.secrets import Secret, redact
from exporter.net.oauth import TokenError, TokenSource, refresh_margin

CLIENT_ID = "mce-client"
SECRET = "client-secret-9f3e1c"
REFRESH = "refresh-token-77ab"


@dataclass
class Idp:
    url: str
    ca_file: str
    requests: list[dict[str, str]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lifetime: float = 3600.0
    status: int = 200
    hang: bool = False
    rotate: bool = False
    issued: list[str] = field(default_factory=list)


@pytest.fixture
async def idp(tmp_path: Path) -> AsyncIterator[Idp]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    state = Idp("", str(ca_file))

    async def token(request: web.Request) -> web.Response:
        form = dict((await request.post()).items())
        state.requests.append({k: str(v) for k, v in form.items()})
        state.headers.append(dict(request.headers))
        if state.hang:
            await asyncio.sleep(3600)
        if state.status != 200:
            return web.json_response(
                {"error": "invalid_client", "error_description": "revoked\nsecond line"}, status=state.status
            )
        value = f"access-{len(state.issued)}-{time.monotonic_ns()}"
        state.issued.append(value)
        body: dict[str, object] = {"access_token": value, "token_type": "Bearer", "expires_in": state.lifetime}
        if state.rotate:
            body["refresh_token"] = f"{REFRESH}-rotated-{len(state.issued)}"
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/token", token)
    runner = web.AppRunner(app, shutdown_timeout=1.0)  # a hanging handler must not hold teardown for 60 s
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"https://127.0.0.1:{port}/token"
    yield state
    await runner.cleanup()


def generic(idp: Idp, **kw: object) -> OAuth2Config:
    args: dict[str, object] = {
        "provider": "generic",
        "token_url": idp.url,
        "client_id": CLIENT_ID,
        "client_secret": Secret(SECRET),
        "ca_file": idp.ca_file,
        "timeout": 2.0,
    }
    args.update(kw)
    return OAuth2Config(**args)  # type: ignore[arg-type]


async def test_client_credentials_with_basic_auth_is_cached(idp: Idp) -> None:
    src = TokenSource(generic(idp, scope="imap smtp"), "probe@example.com")
    first = await src.token()
    assert await src.token() == first  # cached: one request
    assert len(idp.requests) == 1 and src.requests == 1
    assert idp.requests[0] == {"grant_type": "client_credentials", "scope": "imap smtp"}
    scheme, _, value = idp.headers[0]["Authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(value).decode() == f"{CLIENT_ID}:{SECRET}"
    assert redact(f"token {first}") == "token <redacted>"  # every token is registered


async def test_client_secret_post(idp: Idp) -> None:
    src = TokenSource(generic(idp, client_auth="post"), "probe@example.com")
    await src.token()
    assert idp.requests[0] == {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET}
    assert "Authorization" not in idp.headers[0]


async def test_basic_auth_form_encodes_the_credentials(idp: Idp) -> None:
    src = TokenSource(generic(idp, client_id="id:with/odd", client_secret=Secret("s3cr:t")), "u")
    await src.token()
    value = idp.headers[0]["Authorization"].split()[1]
    assert (
        base64.b64decode(value).decode() == f"{urllib.parse.quote('id:with/odd', safe='')}:s3cr%3At"
    )  # RFC 6749 §2.3.1


async def test_refresh_token_grant_keeps_a_rotated_refresh_token(idp: Idp) -> None:
    idp.rotate = True
    idp.lifetime = 8.0  # refreshed a quarter of its life before expiry: after 6 s
    src = TokenSource(generic(idp, refresh_token=Secret(REFRESH), client_secret=None, client_auth="post"), "u")
    first = await src.token()
    assert idp.requests[0]["grant_type"] == "refresh_token" and idp.requests[0]["refresh_token"] == REFRESH
    assert src._token is not None
    src._token = type(src._token)(src._token.value, src._token.obtained - 7, src._token.expires - 7)  # 7 s later
    second = await src.token()
    assert second != first
    assert idp.requests[1]["refresh_token"] == f"{REFRESH}-rotated-1"  # the rotated one
    assert redact(idp.requests[1]["refresh_token"]) == "<redacted>"
    assert redact(first) == first  # a replaced token is forgotten: the set of secrets stays bounded


def test_refresh_margin() -> None:
    assert refresh_margin(3600) == 300  # as MSAL: five minutes
    assert refresh_margin(60) == 15  # short-lived tokens: a quarter of their life
    assert refresh_margin(-5) == 0


async def test_a_due_token_is_refreshed_before_it_expires(idp: Idp) -> None:
    idp.lifetime = 3600
    src = TokenSource(generic(idp), "u")
    first = await src.token()
    assert src._token is not None
    # 56 minutes later: less than 5 minutes left
    src._token = type(src._token)(first, time.time() - 3360, time.time() + 240)
    assert await src.token() != first
    assert len(idp.requests) == 2


async def test_concurrent_callers_share_one_request(idp: Idp) -> None:
    src = TokenSource(generic(idp), "u")
    tokens = await asyncio.gather(*(src.token() for _ in range(20)))
    assert len(set(tokens)) == 1 and len(idp.requests) == 1


async def test_a_refused_credential_is_a_token_error_without_secrets(idp: Idp) -> None:
    idp.status = 401
    src = TokenSource(generic(idp), "u")
    with pytest.raises(TokenError) as err:
        await src.token()
    text = str(err.value)
    assert "HTTP 401: invalid_client: revoked" in text and "second line" not in text
    assert SECRET not in text and idp.url in text
    with pytest.raises(TokenError):  # held for a few seconds: no second request
        await src.token()
    assert len(idp.requests) == 1


async def test_a_failed_refresh_keeps_a_token_that_is_still_valid(idp: Idp) -> None:
    src = TokenSource(generic(idp), "u")
    first = await src.token()
    assert src._token is not None
    src._token = type(src._token)(first, time.time() - 3400, time.time() + 200)  # due, still valid
    idp.status = 500
    assert await src.token() == first
    assert len(idp.requests) == 2


async def test_a_hanging_endpoint_fails_within_the_timeout(idp: Idp) -> None:
    idp.hang = True
    src = TokenSource(generic(idp, timeout=0.5), "u")
    with pytest.raises(TokenError, match=r"no token within 0\.5s|TimeoutError|timeout"):
        await asyncio.wait_for(src.token(), 10)


async def test_an_untrusted_endpoint_is_a_token_error(idp: Idp) -> None:
    src = TokenSource(generic(idp, ca_file=None), "u")  # the system store does not trust the test CA
    with pytest.raises(TokenError, match=r"SSL|certificate|Cert"):
        await src.token()


async def test_an_answer_without_a_token(idp: Idp, tmp_path: Path) -> None:
    app_cfg = generic(idp)
    src = TokenSource(app_cfg, "u")

    async def empty() -> tuple[str, float]:
        return "", 3600.0

    src._generic = empty  # type: ignore[method-assign]
    with pytest.raises(TokenError, match="no access_token"):
        await src.token()
    assert json.dumps(idp.requests) == "[]"


async def test_a_reload_forgets_the_tokens_of_removed_credentials(idp: Idp) -> None:
    from exporter.net.oauth import _SOURCES, clear_sources, token_source

    kept_cfg, dropped_cfg = generic(idp, scope="a"), generic(idp, scope="b")
    kept, dropped = token_source(kept_cfg, "u"), token_source(dropped_cfg, "u")
    assert token_source(kept_cfg, "other") is kept  # shared by every check with the credential
    kept_token, dropped_token = await kept.token(), await dropped.token()
    clear_sources(keep=lambda cfg: cfg == kept_cfg)
    assert token_source(kept_cfg, "u") is kept and dropped_cfg not in {k[0] for k in _SOURCES}
    assert redact(kept_token) == "<redacted>" and redact(dropped_token) == dropped_token
    clear_sources()


def test_oauth2_credentials_of_a_config(tmp_path: Path) -> None:
    from exporter import config

    text = """
endpoints:
  - name: a
    protocol: imap
    address: imap.example.com:993
    auth: {username: u@example.com, oauth2: {provider: google, service_account: "{}"}}
  - name: b
    protocol: smtp
    address: smtp.example.com:587
    auth: {username: u@example.com, password: pw}
routes:
  - name: r
    send: {address: smtp.example.com:587, from: u@example.com, to: u@example.com,
           auth: {username: u@example.com, oauth2: {provider: google, service_account: "{}", subject: x@example.com}}}
    receive: {address: imap.example.com:993, username: u@example.com,
              oauth2: {provider: generic, token_url: "https://sso.example.com/t", client_id: c, client_secret: s}}
"""
    cfg = config.load_text(text)
    assert {(c.provider, c.subject) for c in config.oauth2_credentials(cfg)} == {
        ("google", None),
        ("google", "x@example.com"),
        ("generic", None),
    }


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ("{username: u@example.com}", "auth.password: expected exactly one of password and oauth2"),
        (
            '{username: u@example.com, password: pw, oauth2: {provider: google, service_account: "{}"}}',
            "auth.password: expected exactly one of password and oauth2",
        ),
        (
            '{username: u@example.com, mechanism: PLAIN, oauth2: {provider: google, service_account: "{}"}}',
            "auth.mechanism: PLAIN sends a password",
        ),
        ("{username: u@example.com, password: pw, mechanism: XOAUTH2}", "auth.mechanism: XOAUTH2 needs oauth2"),
        (
            "{username: u@example.com, oauth2: {provider: microsoft, client_id: c, client_secret: s}}",
            "auth.oauth2.tenant_id: expected the directory (tenant) id",
        ),
        (
            "{username: u@example.com, oauth2: {provider: microsoft, tenant_id: t, client_id: c}}",
            "auth.oauth2.client_secret: expected exactly one of client_secret and certificate",
        ),
        ("{username: u@example.com, oauth2: {provider: google}}", "auth.oauth2.service_account: expected"),
        (
            '{username: u@example.com, oauth2: {provider: generic, token_url: "http://sso.example.com/t",'
            " client_id: c, client_secret: s}}",
            'auth.oauth2.token_url: expected an https:// URL, got "http://sso.example.com/t"',
        ),
        (
            '{username: u@example.com, oauth2: {provider: google, service_account: "{}", client_secret: s}}',
            "auth.oauth2.client_secret: not used by provider google",
        ),
        ("{username: u@example.com, oauth2: {provider: okta}}", "auth.oauth2.provider"),
    ],
)
def test_bad_oauth2_config_names_the_key(auth: str, message: str) -> None:
    from exporter import config
    from exporter.core.errors import ConfigError

    text = f"endpoints:\n  - {{name: a, protocol: imap, address: imap.example.com:993, auth: {auth}}}\n"
    with pytest.raises(ConfigError) as err:
        config.load_text(text, "hosted.yml")
    assert "hosted.yml" in str(err.value) and message in str(err.value), str(err.value)
    assert "pw" not in str(err.value).replace("password", "")
