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
    runner = web.AppRunner(app)
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
