"""OAuth2 access tokens for the probes' SASL XOAUTH2 and OAUTHBEARER logins.

One :class:`TokenSource` per credential (an ``oauth2:`` block and, for Google, the mailbox
it acts as), shared by every check that uses the same credential
(:func:`token_source`).  It caches the token and fetches a new one when less than
:func:`refresh_margin` of its life is left, so a probe never presents a token that is
about to expire.  Providers:

- ``microsoft``: the client-credentials flow of Microsoft Entra ID through **MSAL**
  (``msal.ConfidentialClientApplication.acquire_token_for_client``), with a client secret
  or a certificate.  MSAL keeps its own cache and refreshes what has less than five
  minutes left; the margin here matches it.
- ``google``: a service account with domain-wide delegation through **google-auth**
  (``google.oauth2.service_account.Credentials`` with ``subject``: a signed JWT assertion
  exchanged at ``token_uri``).
- ``generic``: RFC 6749 client credentials (§4.4) or a refresh-token grant (§6) against any
  token URL, over aiohttp.  A rotated refresh token in an answer replaces the configured
  one (in memory).

MSAL and google-auth are synchronous (``requests``): their calls run in a worker thread
(:func:`asyncio.to_thread`) with the credential's ``timeout`` given to the library too, so
a token request never blocks the event loop, ``/metrics`` or another check.  One request
at a time per credential; concurrent callers wait for it.  When a refresh fails while the
cached token is still valid, the cached token is used (and the failure logged).

Errors are :class:`TokenError` (failure reason ``auth_token``: the token endpoint failed,
as distinct from ``auth``: the mail server refused the token).  Client secrets, private
keys and refresh tokens are :class:`~exporter.core.secrets.Secret` values; every access
token obtained is registered with :mod:`exporter.core.secrets` (the previous one is
dropped once replaced), so none can appear in a log, an error or a transcript.
"""

from __future__ import annotations

__all__ = ["TokenError", "TokenSource", "clear_sources", "oauth_token", "refresh_margin", "token_source"]

import asyncio
import base64
import json
import logging
import ssl
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from exporter.config import MICROSOFT_AUTHORITY, AuthConfig, OAuth2Config
from exporter.core.secrets import redact, register, unregister
from exporter.net.tls import ProbeFailure

log = logging.getLogger("exporter.oauth")

#: Seconds after a failed request during which callers get the same error without a new request.
FAILURE_HOLD = 5.0
#: Largest response body read from a token endpoint.
MAX_BODY = 1 << 20


class TokenError(Exception):
    """The token endpoint did not give a token (failure reason ``auth_token``); the text is safe to show."""


@dataclass(frozen=True)
class Token:
    value: str
    obtained: float  # time.time()
    expires: float  # time.time()

    def due(self, now: float) -> bool:
        return now >= self.expires - refresh_margin(self.expires - self.obtained)

    def valid(self, now: float) -> bool:
        return now < self.expires - 5.0


def refresh_margin(lifetime: float) -> float:
    """How long before its expiry a token is replaced: 5 minutes (as MSAL does), a quarter
    of the lifetime for short-lived tokens."""
    return min(300.0, max(0.0, lifetime) / 4)


class TokenSource:
    """Cached access tokens of one credential; see the module doc."""

    def __init__(self, cfg: OAuth2Config, subject: str) -> None:
        self.cfg = cfg
        self.subject = cfg.subject or subject
        self.requests = 0  # token requests sent, for tests and the status page
        self._token: Token | None = None
        self._lock: asyncio.Lock | None = None
        self._failure: tuple[float, str] | None = None
        self._client: Any = None  # the MSAL application, built on first use
        self._refresh_token = cfg.refresh_token.reveal() if cfg.refresh_token is not None else None
        self.where = _where(cfg)

    async def token(self) -> str:
        """A valid access token; raises TokenError."""
        now = time.time()
        cached = self._token
        if cached is not None and not cached.due(now):
            return cached.value
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            now = time.time()
            cached = self._token
            if cached is not None and not cached.due(now):
                return cached.value
            if self._failure is not None and now - self._failure[0] < FAILURE_HOLD:
                if cached is not None and cached.valid(now):
                    return cached.value
                raise TokenError(self._failure[1])
            try:
                token = await self._fetch()
            except TokenError as exc:
                self._failure = (time.time(), str(exc))
                if cached is not None and cached.valid(time.time()):
                    log.warning(
                        "token refresh failed; the current token is still valid",
                        extra={"kv": {"provider": self.cfg.provider, "err": str(exc)}},
                    )
                    return cached.value
                raise
            self._failure = None
            register(token.value)
            if cached is not None and cached.value != token.value:
                unregister(cached.value)
            self._token = token
            return token.value

    def invalidate(self) -> None:
        """Forget the cached token (the server refused it): the next call fetches a new one."""
        self._token = None

    async def _fetch(self) -> Token:
        self.requests += 1
        timeout = self.cfg.timeout
        started = time.time()
        try:
            async with asyncio.timeout(timeout + 1.0):  # the libraries get ``timeout`` themselves
                if self.cfg.provider == "generic":
                    value, expires_in = await self._generic()
                else:
                    fetch = self._microsoft if self.cfg.provider == "microsoft" else self._google
                    value, expires_in = await asyncio.to_thread(fetch)
        except TimeoutError:
            raise TokenError(f"{self.where}: no token within {timeout:g}s") from None
        except TokenError as exc:
            raise TokenError(redact(str(exc))) from None
        except Exception as exc:  # a library's own error type, or a bug in its answer handling
            raise TokenError(redact(f"{self.where}: {type(exc).__name__}: {exc}")[:300]) from None
        if not value:
            raise TokenError(f"{self.where}: the answer has no access_token")
        return Token(value, started, started + max(1.0, expires_in))

    # --- providers ----------------------------------------------------------------------------------

    def _microsoft(self) -> tuple[str, float]:
        import msal  # type: ignore[import-untyped]  # imported when first needed: most configs never use it

        cfg = self.cfg
        if self._client is None:
            if cfg.certificate is not None:
                credential: Any = _certificate_credential(cfg)
            else:
                assert cfg.client_secret is not None
                credential = cfg.client_secret.reveal()
            custom = cfg.authority.rstrip("/") != MICROSOFT_AUTHORITY
            self._client = msal.ConfidentialClientApplication(
                cfg.client_id,
                client_credential=credential,
                authority=f"{cfg.authority.rstrip('/')}/{cfg.tenant_id}",
                http_client=_http_session(cfg),
                timeout=cfg.timeout,
                # another authority (a sovereign cloud, a test server) is taken as given
                validate_authority=not custom,
                instance_discovery=not custom,
                token_cache=msal.TokenCache(),
            )
        result = self._client.acquire_token_for_client(scopes=list(cfg.scopes))
        if not isinstance(result, dict) or "access_token" not in result:
            error = result.get("error", "no token") if isinstance(result, dict) else "no token"
            text = result.get("error_description", "") if isinstance(result, dict) else ""
            raise TokenError(f"{self.where}: {error}: {_first_line(str(text))}")
        return str(result["access_token"]), float(result.get("expires_in", 3600))

    def _google(self) -> tuple[str, float]:
        import google.auth.transport.requests
        from google.oauth2 import service_account

        cfg = self.cfg
        assert cfg.service_account is not None
        try:
            info = json.loads(cfg.service_account.reveal())
        except ValueError:
            raise TokenError(f"{self.where}: service_account is not a JSON key file") from None
        if not isinstance(info, dict):
            raise TokenError(f"{self.where}: service_account is not a JSON key file")
        if cfg.token_url:
            info["token_uri"] = cfg.token_url
        creds = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=list(cfg.scopes), subject=self.subject
        )
        session = _http_session(cfg)
        try:
            creds.refresh(google.auth.transport.requests.Request(session))
        finally:
            session.close()
        expires_in = 3600.0
        if creds.expiry is not None:  # a naive UTC datetime
            expires_in = (creds.expiry - _utcnow_naive()).total_seconds()
        return str(creds.token), expires_in

    async def _generic(self) -> tuple[str, float]:
        cfg = self.cfg
        assert cfg.token_url is not None and cfg.client_id is not None
        form: dict[str, str] = {}
        if self._refresh_token is not None:
            form["grant_type"] = "refresh_token"
            form["refresh_token"] = self._refresh_token
        else:
            form["grant_type"] = "client_credentials"
        if cfg.scopes:
            form["scope"] = " ".join(cfg.scopes)
        headers = {"Accept": "application/json"}
        secret = cfg.client_secret.reveal() if cfg.client_secret is not None else None
        if cfg.client_auth == "basic" and secret is not None:
            pair = f"{urllib.parse.quote(cfg.client_id, safe='')}:{urllib.parse.quote(secret, safe='')}"
            register(base64.b64encode(pair.encode()).decode())
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = cfg.client_id
            if secret is not None:
                form["client_secret"] = secret
        ctx = ssl.create_default_context(cafile=cfg.ca_file) if cfg.ca_file else ssl.create_default_context()
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=cfg.timeout)) as session,
                session.post(cfg.token_url, data=form, headers=headers, ssl=ctx, allow_redirects=False) as resp,
            ):
                body = await resp.content.read(MAX_BODY)
                status = resp.status
        except (aiohttp.ClientError, OSError) as exc:
            raise TokenError(f"{self.where}: {type(exc).__name__}: {_first_line(str(exc))}") from None
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise TokenError(f"{self.where}: HTTP {status}, not a JSON answer")
        if status != 200 or "access_token" not in data:
            error = _first_line(str(data.get("error", f"HTTP {status}")))
            text = _first_line(str(data.get("error_description", "")))
            raise TokenError(f"{self.where}: HTTP {status}: {error}" + (f": {text}" if text else ""))
        rotated = data.get("refresh_token")
        if isinstance(rotated, str) and rotated and self._refresh_token is not None:
            register(rotated)
            self._refresh_token = rotated
        try:
            expires_in = float(data.get("expires_in", 3600))
        except (TypeError, ValueError):
            expires_in = 3600.0
        return str(data["access_token"]), expires_in


def _http_session(cfg: OAuth2Config) -> Any:
    """A ``requests`` session for MSAL and google-auth that verifies with ``ca_file`` and
    gives up after ``timeout``, whatever the callers pass.

    (``requests`` lets ``REQUESTS_CA_BUNDLE`` override a session's ``verify``, so the CA
    file is set on every request; proxies from the environment still apply.)
    """
    import requests

    class Session(requests.Session):
        def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
            if cfg.ca_file:
                kwargs["verify"] = cfg.ca_file
            kwargs["timeout"] = cfg.timeout
            return super().request(method, url, *args, **kwargs)

    return Session()


def _utcnow_naive() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC).replace(tzinfo=None)


def _certificate_credential(cfg: OAuth2Config) -> dict[str, str]:
    """MSAL's certificate credential: the private key and the certificate's SHA-1 thumbprint."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    assert cfg.certificate is not None
    try:
        with open(cfg.certificate.certificate_file, "rb") as f:
            pem = f.read()
        cert = x509.load_pem_x509_certificate(pem)
    except (OSError, ValueError) as exc:
        raise TokenError(f"certificate_file {cfg.certificate.certificate_file}: {exc}") from None
    return {
        "private_key": cfg.certificate.private_key.reveal(),
        "thumbprint": cert.fingerprint(hashes.SHA1()).hex().upper(),  # noqa: S303 (the x5t MSAL sends)
        "public_certificate": pem.decode("ascii", "replace"),
    }


def _where(cfg: OAuth2Config) -> str:
    if cfg.provider == "microsoft":
        return f"microsoft token endpoint ({cfg.authority.rstrip('/')}/{cfg.tenant_id})"
    if cfg.provider == "google":
        return f"google token endpoint ({cfg.token_url or 'the key file token_uri'})"
    return f"token endpoint {cfg.token_url}"


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return "".join(c if c.isprintable() else "?" for c in line)[:200]


# --- the registry ---------------------------------------------------------------------------------------

_SOURCES: dict[tuple[OAuth2Config, str], TokenSource] = {}


def token_source(cfg: OAuth2Config, username: str) -> TokenSource:
    """The shared :class:`TokenSource` of a credential (and, for Google, the mailbox it acts as)."""
    key = (cfg, (cfg.subject or username) if cfg.provider == "google" else "")
    source = _SOURCES.get(key)
    if source is None:
        source = _SOURCES[key] = TokenSource(cfg, username)
    return source


async def oauth_token(auth: AuthConfig) -> str:
    """The access token for ``auth`` (which has ``oauth2``); a failure is ProbeFailure ``auth_token``."""
    assert auth.oauth2 is not None
    try:
        return await token_source(auth.oauth2, auth.username).token()
    except TokenError as exc:
        raise ProbeFailure("auth_token", f"auth: {exc}") from None


def clear_sources(keep: Callable[[OAuth2Config], bool] = lambda cfg: False) -> None:
    """Drop the cached sources (after a reload: those of credentials no longer configured)."""
    for key in list(_SOURCES):
        if not keep(key[0]):
            source = _SOURCES.pop(key)
            if source._token is not None:
                unregister(source._token.value)
