"""A scripted OAuth2 identity provider on 127.0.0.1 whose access tokens the stack's Dovecot accepts.

``scripts/teststack.sh`` makes an RSA key pair at ``up`` and configures Dovecot's oauth2 passdb
(XOAUTH2, OAUTHBEARER) to validate JWT access tokens locally with its public key (stack.json
"oauth2", :attr:`stack.Stack.oauth2`).  :class:`TokenService` signs its tokens with the private
key, so a token it issues for a mailbox user logs that user in to IMAP and SMTP submission::

    with TokenService(stack) as idp:
        idp.add_client("app", secret="s3cret", user="oauth@example.test")
        app = msal.ConfidentialClientApplication(
            "app", client_credential="s3cret", authority=idp.authority("contoso"),
            instance_discovery=False, validate_authority=False, verify=stack.ca_file)

It serves HTTPS on 127.0.0.1, port 0, with the stack's "idp" certificate (issued by the stack's
CA for DNS localhost and IP 127.0.0.1), from a thread with its own event loop, so sync tests
(an exporter in a subprocess) and async tests (any loop) can use it alike.

Endpoints (every successful token response is JSON ``{"access_token", "token_type": "Bearer",
"expires_in"}``; errors are JSON ``{"error", "error_description"}``):

- Microsoft identity platform, for MSAL with ``authority=idp.authority(tenant)``,
  ``instance_discovery=False, validate_authority=False``:
  ``GET /{tenant}/v2.0/.well-known/openid-configuration``, ``GET /{tenant}/discovery/v2.0/keys``
  and ``POST /{tenant}/oauth2/v2.0/token`` (``grant_type=client_credentials``, a scope ending in
  ``/.default``, and ``client_secret`` -- in the body or HTTP Basic -- or a ``client_assertion``
  JWT signed RS256 or PS256 by a registered certificate's key, found by its ``x5t`` or
  ``x5t#S256`` header, ``aud`` = that token endpoint, ``iss`` = ``sub`` = the client id).
- Google, for google-auth service accounts (:meth:`TokenService.add_service_account` writes the
  JSON key file): ``POST /google/token`` with ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``
  and an ``assertion`` signed RS256 by the account's key (``kid`` = ``private_key_id``), ``iss`` =
  ``client_email``, ``aud`` = ``token_uri`` or ``https://oauth2.googleapis.com/token`` (google-auth
  always sends the latter), ``scope``, ``iat`` and ``exp`` (at most 1 h apart, not expired), and
  ``sub`` = the mailbox to act as (without ``sub`` the token is for the service account itself,
  which has no mailbox).
- Generic RFC 6749: ``POST /oauth2/token`` with ``client_credentials`` (``client_secret_basic``
  or ``client_secret_post``) or ``refresh_token`` (the client authenticates as it is registered;
  a refresh token of an unregistered client id is a public client's: ``client_id`` alone).

Access tokens: header ``{"alg": "RS256", "typ": "JWT", "kid": <the stack's kid>}``; claims
``iss`` (the stack's issuer), ``sub`` and the username claim (``email``) = the mailbox user,
``iat``, ``nbf``, ``exp`` = now + :attr:`TokenService.lifetime`, ``jti``, ``client_id``, and
``scope``/``aud`` from the requested scope.  No ``azp``: Dovecot would look the key up under
``<azp>/`` instead of ``default/``.

A client that fails to authenticate (unknown, wrong secret, bad assertion, revoked) gets 400
``invalid_client``, or 401 with ``WWW-Authenticate: Basic`` when it used HTTP Basic (RFC 6749
section 5.2); a refresh token or service account that is unknown or revoked gets 400
``invalid_grant``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
import os
import secrets
import shutil
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from stack import Stack

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: The audience google-auth puts in every service-account assertion, whatever the token_uri.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
#: Clock skew accepted for the iat/nbf of client assertions (as Microsoft's 5 minutes).
ASSERTION_SKEW = 300


# -- JWT ----------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json_b64(value: Mapping[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def sign_jwt(key: rsa.RSAPrivateKey, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
    """A compact JWS, signed RS256 (the header's ``alg`` is written as given)."""
    signing_input = f"{_json_b64(header)}.{_json_b64(claims)}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


def decode_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a compact JWS, not verified; ValueError if it is not one."""
    header, claims, _, _ = _split_jwt(token)
    return header, claims


def _split_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT: expected three dot-separated parts")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        signature = b64url_decode(parts[2])
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"not a JWT: {exc}") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("not a JWT: header and claims must be JSON objects")
    return header, claims, f"{parts[0]}.{parts[1]}".encode(), signature


def _verify(public_key: Any, alg: Any, signing_input: bytes, signature: bytes) -> bool:
    """RS256/384/512 and PS256/384/512 with an RSA public key."""
    if not isinstance(public_key, rsa.RSAPublicKey) or not isinstance(alg, str):
        return False
    digest = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}.get(alg[2:])
    if digest is None:
        return False
    if alg.startswith("RS"):
        pad: padding.AsymmetricPadding = padding.PKCS1v15()
    elif alg.startswith("PS"):
        pad = padding.PSS(mgf=padding.MGF1(digest()), salt_length=padding.PSS.AUTO)
    else:
        return False
    try:
        public_key.verify(signature, signing_input, pad, digest())
    except InvalidSignature:
        return False
    return True


# -- client certificates ------------------------------------------------------


@dataclass(frozen=True)
class ClientCertificate:
    """A self-signed certificate for :meth:`TokenService.add_certificate_client` (as uploaded to
    an Entra app registration) and its key.  ``thumbprint`` is the SHA-1 hex digest MSAL takes."""

    cert_pem: str
    key_pem: str
    thumbprint: str
    thumbprint_sha256: str

    def msal_credential(self) -> dict[str, str]:
        """``client_credential`` for ``msal.ConfidentialClientApplication``."""
        return {"private_key": self.key_pem, "thumbprint": self.thumbprint}


def make_client_certificate(common_name: str = "mce-test-client", *, days: int = 365) -> ClientCertificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = int(time.time())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now - 3600))
        .not_valid_after(_utc(now + days * 86400))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return ClientCertificate(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        key_pem=key_pem,
        thumbprint=cert.fingerprint(hashes.SHA1()).hex().upper(),
        thumbprint_sha256=cert.fingerprint(hashes.SHA256()).hex().upper(),
    )


def _utc(ts: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)


# -- plain HTTPS helper for tests ------------------------------------------------


def post_form(
    url: str,
    form: Mapping[str, str],
    *,
    ca_file: str,
    basic: tuple[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, Any]]:
    """POST an x-www-form-urlencoded body (urllib, no proxies); (status, JSON body).

    ``basic`` = (client_id, secret): HTTP Basic as RFC 6749 section 2.3.1 has it (both
    form-urlencoded first)."""
    from urllib.parse import quote_plus, urlencode

    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    if basic is not None:
        pair = f"{quote_plus(basic[0])}:{quote_plus(basic[1])}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    req = urllib.request.Request(url, data=urlencode(form).encode(), headers=headers, method="POST")
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=ca_file)),
    )
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, {"raw": body.decode(errors="replace")}


# -- the service ----------------------------------------------------------------


class OAuth2Error(Exception):
    def __init__(self, status: int, error: str, description: str, *, basic: bool = False) -> None:
        super().__init__(f"{status} {error}: {description}")
        self.status, self.error, self.description, self.basic = status, error, description, basic

    def response(self) -> web.Response:
        headers = {"WWW-Authenticate": 'Basic realm="mce-test-idp"'} if self.status == 401 and self.basic else None
        return web.json_response(
            {"error": self.error, "error_description": self.description}, status=self.status, headers=headers
        )


@dataclass
class _Client:
    client_id: str
    user: str | None
    secret: str | None = None
    tenant: str | None = None
    #: thumbprint (sha1 and sha256, upper-case hex) -> public key
    certificates: dict[str, Any] = field(default_factory=dict)


@dataclass
class _ServiceAccount:
    client_email: str
    private_key_id: str
    public_key: Any
    user: str | None
    path: Path


@dataclass
class _RefreshToken:
    client_id: str
    user: str


@dataclass
class _Failure:
    status: int
    error: str
    remaining: int | None
    discovery: bool


_FAILURE_ERRORS = {400: "invalid_request", 401: "invalid_client", 403: "access_denied", 429: "slow_down"}


class TokenService:
    """The scripted identity provider (see the module docstring); ``with TokenService(stack) as idp``.

    Registration: :meth:`add_client`, :meth:`add_certificate_client`, :meth:`add_service_account`,
    :meth:`add_refresh_token`.  Controls: :attr:`lifetime`, :meth:`revoke`, :meth:`fail_with`,
    :attr:`hang`, :attr:`bad_signature`.  Records: :attr:`requests` (per path), :attr:`issued`
    (every access token it made, :meth:`mint` included)."""

    def __init__(self, stack: Stack, *, lifetime: int = 3600) -> None:
        oauth2 = stack.oauth2
        self.stack = stack
        self.kid: str = oauth2["kid"]
        self.alg: str = oauth2["alg"]
        self.issuer: str = oauth2["issuer"]
        self.username_attribute: str = oauth2["username_attribute"]
        cert = stack.cert(oauth2["cert"])
        self._tls_chain, self._tls_key = str(cert["chain"]), str(cert["key"])
        self.ca_file = stack.ca_file
        key = serialization.load_pem_private_key(Path(oauth2["private_key"]).read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise TypeError(f"{oauth2['private_key']}: expected an RSA private key")
        self._key = key
        self._other_key: rsa.RSAPrivateKey | None = None

        #: expires_in of the tokens issued from now on (seconds; exp = iat + lifetime)
        self.lifetime = lifetime
        #: True: every request is accepted, then never answered (until hang is False again)
        self.hang = False
        #: True: tokens are signed with another key (same kid): Dovecot refuses them
        self.bad_signature = False
        self._requests: Counter[str] = Counter()
        self._issued: list[str] = []

        self._lock = threading.Lock()
        self._clients: dict[str, _Client] = {}
        self._service_accounts: dict[str, _ServiceAccount] = {}
        self._refresh_tokens: dict[str, _RefreshToken] = {}
        self._revoked: set[str] = set()
        self._failure: _Failure | None = None
        self._tmp: Path | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._closing = False
        self.port = 0

    # -- lifecycle --------------------------------------------------------------

    def __enter__(self) -> TokenService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("TokenService already started")
        self._tmp = Path(tempfile.mkdtemp(prefix="mce-idp-"))
        started = threading.Event()
        errors: list[BaseException] = []
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._serve())
            except BaseException as exc:
                errors.append(exc)
                self._loop.close()
                started.set()
                return
            started.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="mce-token-service", daemon=True)
        self._thread.start()
        if not started.wait(30) or errors:
            self.close()
            raise RuntimeError(f"TokenService did not start: {errors[0] if errors else 'timeout'}")

    def close(self) -> None:
        self._closing = True
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            if self._runner is not None:
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(30)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)
        self._thread = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    async def _serve(self) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self._tls_chain, self._tls_key)
        app = web.Application(middlewares=[self._middleware])
        app.add_routes(
            [
                web.get("/{tenant}/v2.0/.well-known/openid-configuration", self._ms_openid_configuration),
                web.get("/{tenant}/discovery/v2.0/keys", self._jwks),
                web.post("/{tenant}/oauth2/v2.0/token", self._ms_token),
                web.post("/google/token", self._google_token),
                web.post("/oauth2/token", self._generic_token),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    # -- records ----------------------------------------------------------------------

    @property
    def requests(self) -> Counter[str]:
        """Requests received so far, per URL path (counted before hang and fail_with apply); a copy."""
        with self._lock:
            return self._requests.copy()

    @property
    def issued(self) -> list[str]:
        """Every access token made so far (:meth:`mint` included), in order; a copy."""
        with self._lock:
            return list(self._issued)

    # -- URLs -------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``https://127.0.0.1:PORT``"""
        if not self.port:
            raise RuntimeError("TokenService not started")
        return f"https://127.0.0.1:{self.port}"

    def authority(self, tenant: str) -> str:
        """MSAL's ``authority`` for TENANT."""
        return f"{self.url}/{tenant}"

    def microsoft_token_url(self, tenant: str) -> str:
        return f"{self.url}/{tenant}/oauth2/v2.0/token"

    @property
    def google_token_url(self) -> str:
        return f"{self.url}/google/token"

    @property
    def token_url(self) -> str:
        """The generic RFC 6749 token endpoint."""
        return f"{self.url}/oauth2/token"

    # -- registration -------------------------------------------------------------

    def add_client(self, client_id: str, secret: str | None = None, *, user: str, tenant: str | None = None) -> None:
        """A client (Microsoft or generic endpoint) whose tokens are for the mailbox USER.  Without
        a secret it is a public client (refresh tokens only).  TENANT: only in that tenant."""
        with self._lock:
            self._clients[client_id] = _Client(client_id, user, secret=secret, tenant=tenant)
            self._revoked.discard(client_id)

    def add_certificate_client(
        self, client_id: str, cert_pem: str | bytes, *, user: str, tenant: str | None = None
    ) -> None:
        """A client that authenticates with a ``client_assertion`` signed by CERT_PEM's key
        (several certificates: call again; a secret added with add_client stays valid)."""
        cert = x509.load_pem_x509_certificate(cert_pem.encode() if isinstance(cert_pem, str) else cert_pem)
        public_key = cert.public_key()
        with self._lock:
            client = self._clients.setdefault(client_id, _Client(client_id, user))
            client.user = user
            if tenant is not None:
                client.tenant = tenant
            for digest in (hashes.SHA1(), hashes.SHA256()):
                client.certificates[cert.fingerprint(digest).hex().upper()] = public_key
            self._revoked.discard(client_id)

    def add_service_account(
        self, user: str | None = None, *, name: str | None = None, directory: str | os.PathLike[str] | None = None
    ) -> Path:
        """A Google service account; returns the path of its JSON key file (mode 0600, removed at
        close unless DIRECTORY is given), with token_uri pointing here.  USER: the only mailbox it
        may act as (``sub``); None: any (domain-wide delegation)."""
        name = name or f"sa-{secrets.token_hex(4)}"
        client_email = f"{name}@mce-test.iam.gserviceaccount.com"
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_key_id = secrets.token_hex(20)
        info = {
            "type": "service_account",
            "project_id": "mce-test",
            "private_key_id": private_key_id,
            "private_key": key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode(),
            "client_email": client_email,
            "client_id": str(10**20 + secrets.randbelow(10**20)),
            "auth_uri": f"{self.url}/google/auth",
            "token_uri": self.google_token_url,
            "auth_provider_x509_cert_url": f"{self.url}/google/certs",
            "client_x509_cert_url": f"{self.url}/google/certs/{client_email}",
            "universe_domain": "googleapis.com",
        }
        base = Path(directory) if directory is not None else self._tmp
        if base is None:
            raise RuntimeError("TokenService not started")
        path = base / f"{name}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(info, fh, indent=2)
        with self._lock:
            self._service_accounts[client_email] = _ServiceAccount(
                client_email, private_key_id, key.public_key(), user, path
            )
            self._revoked.discard(client_email)
        return path

    def add_refresh_token(self, token: str, client_id: str, user: str) -> None:
        """A refresh token for the generic endpoint: CLIENT_ID gets tokens for USER with it."""
        with self._lock:
            self._refresh_tokens[token] = _RefreshToken(client_id, user)
            self._revoked.discard(token)

    # -- controls -----------------------------------------------------------------

    def reset(self) -> None:
        """Back to normal answers: no hang, good signatures, the default lifetime, no failure."""
        self.hang = False
        self.bad_signature = False
        self.lifetime = 3600
        self.fail_with(None)

    def revoke(self, client_id: str) -> None:
        """From now on CLIENT_ID (a client, a service account's client_email, or a refresh token)
        gets 400 invalid_client (clients) or invalid_grant (refresh tokens, service accounts)."""
        with self._lock:
            self._revoked.add(client_id)

    def fail_with(
        self,
        status: int | None,
        *,
        times: int | None = None,
        error: str | None = None,
        discovery: bool = False,
    ) -> None:
        """Answer token requests with STATUS and ``{"error": ERROR}`` (default by status:
        invalid_request, invalid_client, access_denied, slow_down, server_error ...); TIMES:
        only that many, then normal again; DISCOVERY: the openid-configuration and keys too.
        ``fail_with(None)``: normal again."""
        with self._lock:
            if status is None:
                self._failure = None
                return
            err = error or _FAILURE_ERRORS.get(status, "server_error" if status >= 500 else "invalid_request")
            self._failure = _Failure(status, err, times, discovery)

    def mint(
        self,
        user: str,
        *,
        lifetime: int | None = None,
        issued_at: int | None = None,
        kid: str | None = None,
        issuer: str | None = None,
        bad_signature: bool = False,
        claims: Mapping[str, Any] | None = None,
    ) -> str:
        """An access token for USER made directly (recorded in :attr:`issued`), e.g. expired
        (``issued_at=time.time() - 7200, lifetime=3600``), of another kid or issuer, or signed
        with another key.  CLAIMS are added last (a value of None removes that claim)."""
        return self._issue(
            user,
            client_id="mint",
            scopes=(),
            lifetime=lifetime,
            issued_at=issued_at,
            kid=kid,
            issuer=issuer,
            bad_signature=bad_signature,
            claims=claims,
        )

    @staticmethod
    def claims(token: str) -> dict[str, Any]:
        """The claims of a token, not verified."""
        return decode_jwt(token)[1]

    # -- tokens ---------------------------------------------------------------------

    def _signing_key(self, bad: bool) -> rsa.RSAPrivateKey:
        if not bad:
            return self._key
        if self._other_key is None:
            self._other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self._other_key

    def _issue(
        self,
        user: str,
        *,
        client_id: str,
        scopes: tuple[str, ...],
        lifetime: int | None = None,
        issued_at: int | None = None,
        kid: str | None = None,
        issuer: str | None = None,
        bad_signature: bool = False,
        claims: Mapping[str, Any] | None = None,
    ) -> str:
        now = int(time.time()) if issued_at is None else int(issued_at)
        life = self.lifetime if lifetime is None else int(lifetime)
        body: dict[str, Any] = {
            "iss": self.issuer if issuer is None else issuer,
            "sub": user,
            self.username_attribute: user,
            "iat": now,
            "nbf": now,
            "exp": now + life,
            "jti": str(uuid.uuid4()),
            "client_id": client_id,
        }
        if scopes:
            body["scope"] = " ".join(scopes)
            body["aud"] = scopes[0].removesuffix("/.default")
        for name, value in (claims or {}).items():
            if value is None:
                body.pop(name, None)
            else:
                body[name] = value
        header = {"alg": self.alg, "typ": "JWT", "kid": self.kid if kid is None else kid}
        token = sign_jwt(self._signing_key(bad_signature or self.bad_signature), header, body)
        with self._lock:
            self._issued.append(token)
        return token

    def _token_response(self, user: str, client_id: str, scopes: tuple[str, ...], **extra: Any) -> web.Response:
        lifetime = self.lifetime
        token = self._issue(user, client_id=client_id, scopes=scopes, lifetime=lifetime)
        body: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "expires_in": lifetime}
        body.update(extra)
        return web.json_response(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    # -- HTTP -----------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        with self._lock:
            self._requests[request.path] += 1
        while self.hang and not self._closing:
            await asyncio.sleep(0.02)
        if self._closing:
            raise web.HTTPServiceUnavailable()
        with self._lock:
            failure = self._failure
            if failure is not None and (request.method == "POST" or failure.discovery):
                if failure.remaining is not None:
                    failure.remaining -= 1
                    if failure.remaining <= 0:
                        self._failure = None
            else:
                failure = None
        if failure is not None:
            return web.json_response(
                {"error": failure.error, "error_description": f"scripted failure (HTTP {failure.status})"},
                status=failure.status,
            )
        try:
            return await handler(request)
        except OAuth2Error as exc:
            return exc.response()

    def _jwk(self) -> dict[str, Any]:
        numbers = self._key.public_key().public_numbers()

        def uint(n: int) -> str:
            return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))

        return {
            "kty": "RSA",
            "use": "sig",
            "alg": self.alg,
            "kid": self.kid,
            "n": uint(numbers.n),
            "e": uint(numbers.e),
        }

    async def _jwks(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": [self._jwk()]})

    async def _ms_openid_configuration(self, request: web.Request) -> web.Response:
        base = f"{self.url}/{request.match_info['tenant']}"
        return web.json_response(
            {
                "issuer": f"{base}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "request_uri_parameter_supported": False,
                "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "email", "tid"],
            }
        )

    async def _form(self, request: web.Request) -> dict[str, str]:
        if request.content_type != "application/x-www-form-urlencoded":
            raise OAuth2Error(400, "invalid_request", "expected an application/x-www-form-urlencoded body")
        data = await request.post()
        form: dict[str, str] = {}
        for name in data:
            values = data.getall(name)
            if len(values) != 1:
                raise OAuth2Error(400, "invalid_request", f"parameter {name!r} given more than once")
            form[name] = str(values[0])
        return form

    def _client_authentication(
        self, request: web.Request, form: Mapping[str, str], token_url: str, *, public_ok: bool = False
    ) -> _Client | None:
        """The authenticated client; None: a public client (only if PUBLIC_OK)."""
        basic: tuple[str, str] | None = None
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "basic":
                raise OAuth2Error(400, "invalid_request", "unsupported Authorization scheme")
            try:
                user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (ValueError, binascii.Error, UnicodeDecodeError):
                raise OAuth2Error(401, "invalid_client", "malformed HTTP Basic credentials", basic=True) from None
            if not sep:
                raise OAuth2Error(401, "invalid_client", "malformed HTTP Basic credentials", basic=True)
            basic = (unquote_plus(user), unquote_plus(password))
        methods = [m for m, given in (("basic", basic), ("post", "client_secret" in form)) if given]
        if "client_assertion" in form or "client_assertion_type" in form:
            methods.append("assertion")
        if len(methods) > 1:
            raise OAuth2Error(400, "invalid_request", f"more than one client authentication method: {methods}")
        if not methods:
            if public_ok and form.get("client_id"):
                return None
            raise OAuth2Error(400, "invalid_client", "client authentication required")
        if methods == ["assertion"]:
            return self._assertion_client(form, token_url)
        if basic is not None:
            client_id, secret = basic
            if form.get("client_id", client_id) != client_id:
                raise OAuth2Error(400, "invalid_request", "client_id does not match the HTTP Basic user")
        else:
            client_id, secret = form.get("client_id", ""), form["client_secret"]
        with self._lock:
            client = self._clients.get(client_id)
            revoked = client_id in self._revoked
        if (
            client is None
            or client.secret is None
            or revoked
            or not secrets.compare_digest(client.secret.encode(), secret.encode())
        ):
            why = "revoked" if revoked else "unknown client or wrong secret"
            raise OAuth2Error(401 if basic else 400, "invalid_client", why, basic=basic is not None)
        return client

    def _assertion_client(self, form: Mapping[str, str], token_url: str) -> _Client:
        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            raise OAuth2Error(400, "invalid_request", f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}")
        try:
            header, claims, signing_input, signature = _split_jwt(form.get("client_assertion", ""))
        except ValueError as exc:
            raise OAuth2Error(400, "invalid_client", f"client_assertion: {exc}") from None
        client_id = form.get("client_id") or claims.get("iss")
        with self._lock:
            client = self._clients.get(str(client_id))
            revoked = client_id in self._revoked
        if client is None or not client.certificates:
            raise OAuth2Error(400, "invalid_client", "unknown client or no certificate registered")
        if revoked:
            raise OAuth2Error(400, "invalid_client", "revoked")
        if header.get("alg") not in ("RS256", "PS256"):
            raise OAuth2Error(400, "invalid_client", f"client_assertion: unsupported alg {header.get('alg')!r}")
        public_key = None
        for name in ("x5t#S256", "x5t"):
            if isinstance(header.get(name), str):
                try:
                    thumbprint = b64url_decode(header[name]).hex().upper()
                except (ValueError, binascii.Error):
                    continue
                public_key = client.certificates.get(thumbprint)
                if public_key is not None:
                    break
        if public_key is None:
            raise OAuth2Error(400, "invalid_client", "client_assertion: no registered certificate matches x5t")
        if not _verify(public_key, header["alg"], signing_input, signature):
            raise OAuth2Error(400, "invalid_client", "client_assertion: bad signature")
        now = time.time()
        problems = []
        if claims.get("iss") != client.client_id or claims.get("sub") != client.client_id:
            problems.append("iss and sub must be the client id")
        aud = claims.get("aud")
        if aud != token_url and not (isinstance(aud, list) and token_url in aud):
            problems.append(f"aud must be {token_url}")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= now:
            problems.append("expired or no exp")
        for name in ("nbf", "iat"):
            value = claims.get(name)
            if value is not None and (not isinstance(value, int | float) or value > now + ASSERTION_SKEW):
                problems.append(f"{name} in the future")
        if problems:
            raise OAuth2Error(400, "invalid_client", "client_assertion: " + "; ".join(problems))
        return client

    async def _ms_token(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        form = await self._form(request)
        if form.get("grant_type") != "client_credentials":
            raise OAuth2Error(400, "unsupported_grant_type", "only client_credentials is served here")
        client = self._client_authentication(request, form, self.microsoft_token_url(tenant))
        assert client is not None
        if client.tenant is not None and client.tenant != tenant:
            raise OAuth2Error(400, "unauthorized_client", f"application {client.client_id} not found in {tenant}")
        scopes = tuple(form.get("scope", "").split())
        if not scopes:
            raise OAuth2Error(400, "invalid_request", "the request body must contain the parameter 'scope'")
        if not all(s.endswith("/.default") for s in scopes):
            raise OAuth2Error(
                400, "invalid_scope", "client credential flows need scopes of the form <resource>/.default"
            )
        if client.user is None:
            raise OAuth2Error(400, "unauthorized_client", "no mailbox user for this client")
        return self._token_response(client.user, client.client_id, scopes, ext_expires_in=self.lifetime)

    async def _google_token(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        if form.get("grant_type") != JWT_BEARER_GRANT:
            raise OAuth2Error(400, "unsupported_grant_type", f"grant_type must be {JWT_BEARER_GRANT}")
        try:
            header, claims, signing_input, signature = _split_jwt(form.get("assertion", ""))
        except ValueError as exc:
            raise OAuth2Error(400, "invalid_grant", f"assertion: {exc}") from None
        with self._lock:
            account = self._service_accounts.get(str(claims.get("iss")))
            revoked = account is not None and account.client_email in self._revoked
        if account is None:
            raise OAuth2Error(400, "invalid_grant", "Invalid grant: account not found")
        if revoked:
            raise OAuth2Error(400, "invalid_grant", "Invalid JWT Signature.")
        if header.get("alg") != "RS256" or header.get("kid", account.private_key_id) != account.private_key_id:
            raise OAuth2Error(400, "invalid_grant", "Invalid JWT Signature.")
        if not _verify(account.public_key, "RS256", signing_input, signature):
            raise OAuth2Error(400, "invalid_grant", "Invalid JWT Signature.")
        if claims.get("aud") not in (self.google_token_url, GOOGLE_TOKEN_AUDIENCE):
            raise OAuth2Error(400, "invalid_grant", "Invalid JWT: aud must be the token endpoint")
        iat, exp, now = claims.get("iat"), claims.get("exp"), time.time()
        if (
            not isinstance(iat, int | float)
            or not isinstance(exp, int | float)
            or exp <= now
            or iat > now + ASSERTION_SKEW
            or exp - iat > 3600
        ):
            raise OAuth2Error(
                400,
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
                "Check your iat and exp values in the JWT claim.",
            )
        scopes = tuple(str(claims.get("scope") or "").split())
        if not scopes:
            raise OAuth2Error(400, "invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        subject = claims.get("sub")
        if subject is not None and account.user is not None and str(subject).lower() != account.user.lower():
            raise OAuth2Error(
                401,
                "unauthorized_client",
                "Client is unauthorized to retrieve access tokens using this method, "
                "or client not authorized for any of the scopes requested.",
            )
        user = str(subject) if subject is not None else account.client_email
        return self._token_response(user, account.client_email, scopes)

    async def _generic_token(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        grant = form.get("grant_type")
        scopes = tuple(form.get("scope", "").split())
        if grant == "client_credentials":
            client = self._client_authentication(request, form, self.token_url)
            assert client is not None
            if client.user is None:
                raise OAuth2Error(400, "unauthorized_client", "no mailbox user for this client")
            return self._token_response(client.user, client.client_id, scopes)
        if grant == "refresh_token":
            client = self._client_authentication(request, form, self.token_url, public_ok=True)
            client_id = client.client_id if client is not None else form["client_id"]
            with self._lock:
                registered = self._clients.get(client_id)
                refresh = self._refresh_tokens.get(form.get("refresh_token", ""))
                revoked = {client_id, form.get("refresh_token", "")} & self._revoked
            if client is None and registered is not None and registered.secret is not None:
                raise OAuth2Error(400, "invalid_client", "this client must authenticate")
            if refresh is None or refresh.client_id != client_id or revoked:
                raise OAuth2Error(400, "invalid_grant", "unknown, revoked or another client's refresh token")
            return self._token_response(refresh.user, client_id, scopes)
        raise OAuth2Error(400, "unsupported_grant_type", "client_credentials or refresh_token")
