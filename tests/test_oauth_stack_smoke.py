"""OAuth2 logins against the stack's real Dovecot and Postfix, without exporter code.

Tokens come from tests/oauth_server.py's TokenService (signed with the stack's key, see
scripts/teststack.sh gen_oauth2): IMAP ``AUTHENTICATE XOAUTH2`` and ``OAUTHBEARER`` (IMAPS and
STARTTLS), SMTP ``AUTH XOAUTH2`` and ``OAUTHBEARER`` (submission with STARTTLS, smtps), what
Dovecot refuses (bad signature, expired, another user, another kid or issuer, a password as
token), that password logins are as before, and that MSAL and google-auth get tokens from the
TokenService that Dovecot accepts.  Plus the TokenService's own contract (grants, errors,
controls), which exporter tests rely on.
"""

from __future__ import annotations

import base64
import imaplib
import json
import smtplib
import ssl
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from oauth_server import (
    CLIENT_ASSERTION_TYPE,
    JWT_BEARER_GRANT,
    ClientCertificate,
    TokenService,
    b64url,
    make_client_certificate,
    post_form,
    sign_jwt,
)
from stack import Stack

TENANT = "contoso"
MS_SCOPE = "https://outlook.office365.com/.default"
GOOGLE_SCOPE = "https://mail.google.com/"
OTHER_USER = "probe@example.test"
MECHS = ("XOAUTH2", "OAUTHBEARER")
DELIVERY_TIMEOUT = 20.0


# -- fixtures and helpers -------------------------------------------------------------


@pytest.fixture(scope="module")
def token_service(stack: Stack) -> Iterator[TokenService]:
    with TokenService(stack) as service:
        yield service


@pytest.fixture
def idp(token_service: TokenService) -> Iterator[TokenService]:
    """The module's TokenService with its controls reset before and after each test."""

    def reset() -> None:
        token_service.reset()

    reset()
    yield token_service
    reset()


def tls(stack: Stack) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=stack.ca_file)


def rsa_key(pem: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def new_client(idp: TokenService, user: str, **kwargs: str) -> tuple[str, str]:
    client_id, secret = f"app-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    idp.add_client(client_id, secret, user=user, **kwargs)
    return client_id, secret


def ms_token(idp: TokenService, stack: Stack, user: str) -> str:
    """An access token for USER from the Microsoft endpoint (client credentials, secret)."""
    client_id, secret = new_client(idp, user)
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret, "scope": MS_SCOPE}
    status, body = post_form(idp.microsoft_token_url(TENANT), form, ca_file=stack.ca_file)
    assert status == 200, body
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == idp.lifetime
    return str(body["access_token"])


def sasl(mech: str, user: str, token: str, host: str = "127.0.0.1", port: int = 0) -> bytes:
    if mech == "XOAUTH2":
        return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
    return f"n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01".encode()


def imap_connect(stack: Stack, transport: str) -> imaplib.IMAP4:
    if transport == "imaps":
        return imaplib.IMAP4_SSL(stack.host, stack.port("imaps"), ssl_context=tls(stack), timeout=10)
    conn = imaplib.IMAP4(stack.host, stack.port("imap"), timeout=10)
    conn.starttls(ssl_context=tls(stack))
    return conn


def imap_auth(conn: imaplib.IMAP4, mech: str, payload: bytes) -> tuple[bool, list[bytes]]:
    """AUTHENTICATE MECH; (logged in?, the server's error challenges, RFC 7628 3.2.2)."""
    challenges: list[bytes] = []

    def answer(challenge: bytes) -> bytes:
        challenges.append(challenge)
        if len(challenges) == 1:
            return payload
        return b"" if mech == "XOAUTH2" else b"\x01"  # acknowledge the error, as the RFCs ask

    try:
        typ, _ = conn.authenticate(mech, answer)
    except imaplib.IMAP4.error:
        return False, challenges[1:]
    return typ == "OK", challenges[1:]


def imap_login_with_token(stack: Stack, mech: str, user: str, token: str, transport: str = "imaps") -> bool:
    conn = imap_connect(stack, transport)
    try:
        port = stack.port("imaps" if transport == "imaps" else "imap")
        ok, _ = imap_auth(conn, mech, sasl(mech, user, token, stack.host, port))
        if ok:
            assert conn.select("INBOX")[0] == "OK"
        return ok
    finally:
        try:
            conn.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def smtp_connect(stack: Stack, service: str) -> smtplib.SMTP:
    if service == "smtps":
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(stack.host, stack.port("smtps"), context=tls(stack), timeout=10)
    else:
        smtp = smtplib.SMTP(stack.host, stack.port("submission"), timeout=10)
        smtp.starttls(context=tls(stack))
    smtp.ehlo("client.example.test")
    return smtp


def smtp_auth(smtp: smtplib.SMTP, mech: str, payload: bytes) -> tuple[int, bytes, bytes | None]:
    """AUTH MECH with an initial response; (final code, text, the error challenge if any)."""
    code, text = smtp.docmd("AUTH", f"{mech} {base64.b64encode(payload).decode()}")
    challenge = None
    if code == 334:
        challenge = base64.b64decode(text)
        code, text = smtp.docmd("" if mech == "XOAUTH2" else base64.b64encode(b"\x01").decode())
    return code, text, challenge


def smtp_login_with_token(stack: Stack, mech: str, user: str, token: str, service: str = "submission") -> int:
    with smtp_connect(stack, service) as smtp:
        code, _, _ = smtp_auth(smtp, mech, sasl(mech, user, token, stack.host, stack.port(service)))
        return code


# -- the stack's side ---------------------------------------------------------------------


def test_stack_json_describes_the_oauth2_setup(stack: Stack) -> None:
    o = stack.oauth2
    assert o["alg"] == "RS256"
    assert o["username_attribute"] == "email"
    assert o["issuer"] == "https://idp.example.test"
    assert o["audience"] is None
    assert o["mechanisms"] == ["XOAUTH2", "OAUTHBEARER"]
    assert o["user"] in stack.users
    prefix = o["key_dict"].removeprefix("fs:posix:prefix=")
    assert Path(o["key_file"]) == Path(prefix) / "default" / o["alg"] / o["kid"]
    assert Path(o["key_file"]).read_bytes() == Path(o["public_key"]).read_bytes()
    assert Path(o["private_key"]).is_file()
    conf = Path(o["dovecot_config"]).read_text()
    assert f"local_validation_key_dict = {o['key_dict']}" in conf
    assert f"issuers = {o['issuer']}" in conf
    cert = stack.cert(o["cert"])
    assert set(cert["sans"]) == {"localhost", "127.0.0.1"}
    assert cert["not_before"] < time.time() < cert["not_after"]


@pytest.mark.parametrize("transport", ["imaps", "starttls"])
def test_imap_offers_the_oauth_mechanisms(stack: Stack, transport: str) -> None:
    conn = imap_connect(stack, transport)
    try:
        caps = set(conn.capabilities)
    finally:
        conn.logout()
    assert {"AUTH=XOAUTH2", "AUTH=OAUTHBEARER", "AUTH=PLAIN", "AUTH=LOGIN"} <= caps


@pytest.mark.parametrize("service", ["submission", "smtps"])
def test_smtp_offers_the_oauth_mechanisms(stack: Stack, service: str) -> None:
    with smtp_connect(stack, service) as smtp:
        assert set(smtp.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"}


@pytest.mark.parametrize("transport", ["imaps", "starttls"])
@pytest.mark.parametrize("mech", MECHS)
def test_imap_login_with_a_token(stack: Stack, idp: TokenService, mech: str, transport: str) -> None:
    user = stack.oauth2_user
    assert imap_login_with_token(stack, mech, user, ms_token(idp, stack, user), transport)


@pytest.mark.parametrize("service", ["submission", "smtps"])
@pytest.mark.parametrize("mech", MECHS)
def test_smtp_auth_with_a_token(stack: Stack, idp: TokenService, mech: str, service: str) -> None:
    user = stack.oauth2_user
    assert smtp_login_with_token(stack, mech, user, ms_token(idp, stack, user), service) == 235


def test_tokens_work_for_every_mailbox_user(stack: Stack, idp: TokenService) -> None:
    for user in stack.users:
        token = ms_token(idp, stack, user)
        assert imap_login_with_token(stack, "XOAUTH2", user, token), user
        assert smtp_login_with_token(stack, "OAUTHBEARER", user, token) == 235, user


def refused_token(kind: str, stack: Stack, idp: TokenService) -> str:
    user = stack.oauth2_user
    if kind == "bad_signature":  # from the token endpoint, signed with another key (same kid)
        idp.bad_signature = True
        try:
            return ms_token(idp, stack, user)
        finally:
            idp.bad_signature = False
    if kind == "expired":
        return idp.mint(user, issued_at=int(time.time()) - 7200, lifetime=3600)
    if kind == "another_user":
        return ms_token(idp, stack, OTHER_USER)
    if kind == "another_kid":
        return idp.mint(user, kid="another-kid")
    if kind == "another_issuer":
        return idp.mint(user, issuer="https://attacker.example.test")
    if kind == "not_yet_valid":
        return idp.mint(user, claims={"nbf": int(time.time()) + 600})
    if kind == "no_sub":
        return idp.mint(user, claims={"sub": None})
    assert kind == "password"  # a password is no bearer token
    return stack.password(user)


@pytest.mark.parametrize(
    "kind",
    [
        "bad_signature",
        "expired",
        "another_user",
        "another_kid",
        "another_issuer",
        "not_yet_valid",
        "no_sub",
        "password",
    ],
)
def test_dovecot_refuses(stack: Stack, idp: TokenService, kind: str) -> None:
    user = stack.oauth2_user
    token = refused_token(kind, stack, idp)
    for mech in MECHS:
        conn = imap_connect(stack, "imaps")
        try:
            ok, challenges = imap_auth(conn, mech, sasl(mech, user, token, stack.host, stack.port("imaps")))
        finally:
            conn.shutdown()
        assert not ok, (kind, mech)
        assert challenges and "status" in json.loads(challenges[0]), challenges
        with smtp_connect(stack, "submission") as smtp:
            code, text, challenge = smtp_auth(smtp, mech, sasl(mech, user, token))
        assert code == 535, (kind, mech, code, text)
        assert challenge is not None and "status" in json.loads(challenge)


def test_password_logins_are_unchanged(stack: Stack) -> None:
    for user, password in stack.users.items():
        conn = imaplib.IMAP4_SSL(stack.host, stack.port("imaps"), ssl_context=tls(stack), timeout=10)
        assert conn.login(user, password)[0] == "OK"
        conn.logout()
        conn = imap_connect(stack, "starttls")
        plain = f"\0{user}\0{password}".encode()
        assert conn.authenticate("PLAIN", lambda _, plain=plain: plain)[0] == "OK"
        conn.logout()
        for mech in ("PLAIN", "LOGIN"):
            with smtp_connect(stack, "submission") as smtp:
                smtp.user, smtp.password = user, password
                code, _ = smtp.auth(mech, getattr(smtp, f"auth_{mech.lower()}"))
                assert code == 235, (user, mech)
    user = stack.oauth2_user
    conn = imaplib.IMAP4_SSL(stack.host, stack.port("imaps"), ssl_context=tls(stack), timeout=10)
    with pytest.raises(imaplib.IMAP4.error):
        conn.login(user, "wrong-password")
    conn.shutdown()
    with smtp_connect(stack, "submission") as smtp, pytest.raises(smtplib.SMTPAuthenticationError):
        smtp.login(user, "wrong-password")


def test_a_token_is_no_password(stack: Stack, idp: TokenService) -> None:
    user = stack.oauth2_user
    token = ms_token(idp, stack, user)
    conn = imaplib.IMAP4_SSL(stack.host, stack.port("imaps"), ssl_context=tls(stack), timeout=10)
    with pytest.raises(imaplib.IMAP4.error):
        conn.login(user, token)
    conn.shutdown()


def test_mail_round_trip_with_oauth_on_both_ends(stack: Stack, idp: TokenService) -> None:
    """Submission with XOAUTH2, delivery by LMTP to the OAuth2 user (Dovecot's user check
    without a mechanism still finds the user), IMAP with OAUTHBEARER."""
    user = stack.oauth2_user
    token = ms_token(idp, stack, user)
    tag = uuid.uuid4().hex
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = user, user, f"oauth round trip {tag}"
    msg["X-MCE-Test-Id"] = tag
    msg.set_content("sent and fetched with bearer tokens\n")
    with smtp_connect(stack, "submission") as smtp:
        assert smtp_auth(smtp, "XOAUTH2", sasl("XOAUTH2", user, token))[0] == 235
        smtp.send_message(msg)
    conn = imap_connect(stack, "imaps")
    try:
        ok, _ = imap_auth(conn, "OAUTHBEARER", sasl("OAUTHBEARER", user, token, stack.host, stack.port("imaps")))
        assert ok
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        while True:
            conn.select("INBOX")
            found = conn.search(None, "HEADER", "X-MCE-Test-Id", tag)[1][0].split()
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert found, f"message {tag} not delivered to {user} within {DELIVERY_TIMEOUT}s"
    finally:
        conn.logout()


def test_long_tokens_need_auth_without_initial_response_on_postfix(stack: Stack, idp: TokenService) -> None:
    """Postfix reads the AUTH command line with line_length_limit (2048): a longer initial
    response is cut ("Invalid base64 data in initial response").  Sent after the 334 it may be
    up to smtpd_sasl_response_limit (12288).  Microsoft's tokens are often that long."""
    user = stack.oauth2_user
    token = idp.mint(user, claims={"padding": "x" * 2000})
    payload = base64.b64encode(sasl("XOAUTH2", user, token)).decode()
    assert 2048 < len(payload) < 12288
    with smtp_connect(stack, "submission") as smtp:
        code, text = smtp.docmd("AUTH", f"XOAUTH2 {payload}")
        assert (code, b"initial response" in text) == (535, True)
    with smtp_connect(stack, "submission") as smtp:
        assert smtp.docmd("AUTH", "XOAUTH2")[0] == 334
        assert smtp.docmd(payload)[0] == 235


# -- client libraries ----------------------------------------------------------------------


@pytest.fixture
def http_session(stack: Stack) -> Iterator[object]:
    """A requests session that trusts the stack's CA and ignores the environment (proxies,
    and REQUESTS_CA_BUNDLE, which would override ``verify`` of requests and thus of MSAL)."""
    requests = pytest.importorskip("requests", reason="requests is not installed")
    session = requests.Session()
    session.verify = stack.ca_file
    session.trust_env = False
    yield session
    session.close()


@pytest.mark.parametrize("credential", ["secret", "certificate"])
def test_msal_gets_tokens_dovecot_accepts(
    stack: Stack, idp: TokenService, http_session: object, credential: str
) -> None:
    msal = pytest.importorskip("msal", reason="msal is not installed (pip install msal)")
    user = stack.oauth2_user
    client_id = f"msal-{uuid.uuid4().hex[:8]}"
    cred: object
    if credential == "secret":
        cred = uuid.uuid4().hex
        idp.add_client(client_id, str(cred), user=user, tenant=TENANT)
    else:
        cert = make_client_certificate()
        idp.add_certificate_client(client_id, cert.cert_pem, user=user, tenant=TENANT)
        cred = cert.msal_credential()
    before = idp.requests
    app = msal.ConfidentialClientApplication(
        client_id,
        client_credential=cred,
        authority=idp.authority(TENANT),
        instance_discovery=False,
        validate_authority=False,
        http_client=http_session,
    )
    result = app.acquire_token_for_client(scopes=[MS_SCOPE])
    assert "access_token" in result, result
    assert result["token_type"] == "Bearer"
    token = result["access_token"]
    assert token in idp.issued
    assert idp.requests - before == {
        f"/{TENANT}/v2.0/.well-known/openid-configuration": 1,
        f"/{TENANT}/oauth2/v2.0/token": 1,
    }
    assert imap_login_with_token(stack, "XOAUTH2", user, token)
    assert smtp_login_with_token(stack, "XOAUTH2", user, token) == 235


def test_google_auth_gets_tokens_dovecot_accepts(stack: Stack, idp: TokenService, http_session: object) -> None:
    pytest.importorskip("google.auth", reason="google-auth is not installed (pip install google-auth)")
    from google.auth.transport.requests import Request
    from google.oauth2 import service_account

    user = stack.oauth2_user
    key_file = idp.add_service_account(user)
    info = json.loads(key_file.read_text())
    assert info["type"] == "service_account"
    assert info["token_uri"] == idp.google_token_url
    creds = service_account.Credentials.from_service_account_file(str(key_file), scopes=[GOOGLE_SCOPE])
    delegated = creds.with_subject(user)
    delegated.refresh(Request(http_session))
    assert delegated.token in idp.issued
    assert imap_login_with_token(stack, "OAUTHBEARER", user, delegated.token)
    assert smtp_login_with_token(stack, "XOAUTH2", user, delegated.token) == 235
    # without a subject the token is the service account's own: no mailbox
    creds.refresh(Request(http_session))
    assert TokenService.claims(creds.token)["email"] == info["client_email"]
    assert not imap_login_with_token(stack, "XOAUTH2", user, creds.token)
    # another mailbox than the one delegated: refused by the token endpoint
    google_auth_exceptions = pytest.importorskip("google.auth.exceptions")
    with pytest.raises(google_auth_exceptions.RefreshError, match="unauthorized_client"):
        creds.with_subject(OTHER_USER).refresh(Request(http_session))


# -- the TokenService's contract ----------------------------------------------------------------


def test_generic_client_credentials_basic_and_post(stack: Stack, idp: TokenService) -> None:
    user = stack.oauth2_user
    client_id, secret = new_client(idp, user)
    grant = {"grant_type": "client_credentials", "scope": "mail"}
    status, body = post_form(idp.token_url, grant, ca_file=stack.ca_file, basic=(client_id, secret))
    assert status == 200, body
    assert set(body) >= {"access_token", "token_type", "expires_in"}
    assert TokenService.claims(body["access_token"])["email"] == user
    status, body = post_form(
        idp.token_url, {**grant, "client_id": client_id, "client_secret": secret}, ca_file=stack.ca_file
    )
    assert status == 200, body
    # two authentication methods at once: refused (RFC 6749 2.3)
    both = {**grant, "client_id": client_id, "client_secret": secret}
    status, body = post_form(idp.token_url, both, ca_file=stack.ca_file, basic=(client_id, secret))
    assert (status, body["error"]) == (400, "invalid_request")
    status, body = post_form(idp.token_url, grant, ca_file=stack.ca_file, basic=(client_id, "wrong"))
    assert (status, body["error"]) == (401, "invalid_client")
    status, body = post_form(
        idp.token_url, {**grant, "client_id": client_id, "client_secret": "x"}, ca_file=stack.ca_file
    )
    assert (status, body["error"]) == (400, "invalid_client")


def test_generic_refresh_tokens_and_revocation(stack: Stack, idp: TokenService) -> None:
    user = stack.oauth2_user
    client_id, secret = new_client(idp, user)
    idp.add_refresh_token("rt-confidential", client_id, user)
    idp.add_refresh_token("rt-public", "public-app", OTHER_USER)
    refresh = {"grant_type": "refresh_token", "refresh_token": "rt-confidential"}
    status, body = post_form(idp.token_url, refresh, ca_file=stack.ca_file, basic=(client_id, secret))
    assert status == 200, body
    assert TokenService.claims(body["access_token"])["email"] == user
    status, body = post_form(idp.token_url, {**refresh, "client_id": client_id}, ca_file=stack.ca_file)
    assert (status, body["error"]) == (400, "invalid_client")  # a confidential client must authenticate
    public = {"grant_type": "refresh_token", "refresh_token": "rt-public", "client_id": "public-app"}
    status, body = post_form(idp.token_url, public, ca_file=stack.ca_file)
    assert status == 200, body
    assert TokenService.claims(body["access_token"])["email"] == OTHER_USER
    status, body = post_form(idp.token_url, {**public, "client_id": "another-app"}, ca_file=stack.ca_file)
    assert (status, body["error"]) == (400, "invalid_grant")
    idp.revoke("rt-public")
    status, body = post_form(idp.token_url, public, ca_file=stack.ca_file)
    assert (status, body["error"]) == (400, "invalid_grant")
    idp.revoke(client_id)
    status, body = post_form(
        idp.token_url, {**refresh, "client_id": client_id, "client_secret": secret}, ca_file=stack.ca_file
    )
    assert (status, body["error"]) == (400, "invalid_client")
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret, "scope": MS_SCOPE}
    status, body = post_form(idp.microsoft_token_url(TENANT), form, ca_file=stack.ca_file)
    assert (status, body["error"]) == (400, "invalid_client")


def test_microsoft_endpoint_checks(stack: Stack, idp: TokenService) -> None:
    user = stack.oauth2_user
    client_id, secret = new_client(idp, user, tenant=TENANT)
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
    url = idp.microsoft_token_url(TENANT)
    status, body = post_form(
        url, {**form, "scope": "https://outlook.office365.com/IMAP.AccessAsUser.All"}, ca_file=stack.ca_file
    )
    assert (status, body["error"]) == (400, "invalid_scope")
    status, body = post_form(idp.microsoft_token_url("fabrikam"), {**form, "scope": MS_SCOPE}, ca_file=stack.ca_file)
    assert (status, body["error"]) == (400, "unauthorized_client")
    # a client assertion signed by a certificate that is not registered
    cert, stranger = make_client_certificate(), make_client_certificate("stranger")
    idp.add_certificate_client(client_id, cert.cert_pem, user=user)
    now = int(time.time())

    def assertion(signer: ClientCertificate, **claims: object) -> tuple[int, dict[str, object]]:
        body = {"aud": url, "iss": client_id, "sub": client_id, "exp": now + 600, "iat": now, **claims}
        header = {"alg": "RS256", "typ": "JWT", "x5t": b64url(bytes.fromhex(signer.thumbprint))}
        form = {
            "grant_type": "client_credentials",
            "client_id": client_id,
            "scope": MS_SCOPE,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": sign_jwt(rsa_key(signer.key_pem), header, body),
        }
        return post_form(url, form, ca_file=stack.ca_file)

    assert assertion(cert)[0] == 200
    assert assertion(stranger)[1]["error"] == "invalid_client"  # x5t of a certificate not registered
    assert assertion(cert, aud=idp.token_url)[1]["error"] == "invalid_client"
    assert assertion(cert, exp=now - 1)[1]["error"] == "invalid_client"


def test_controls_lifetime_fail_with_hang_and_records(stack: Stack, idp: TokenService) -> None:
    user = stack.oauth2_user
    idp.lifetime = 120
    token = ms_token(idp, stack, user)
    claims = TokenService.claims(token)
    assert claims["exp"] - claims["iat"] == 120
    assert idp.issued[-1] == token
    client_id, secret = new_client(idp, user)
    grant = {"grant_type": "client_credentials"}
    idp.fail_with(503, times=1)
    before = idp.requests["/oauth2/token"]
    status, body = post_form(idp.token_url, grant, ca_file=stack.ca_file, basic=(client_id, secret))
    assert (status, body["error"]) == (503, "server_error")
    status, _ = post_form(idp.token_url, grant, ca_file=stack.ca_file, basic=(client_id, secret))
    assert status == 200
    assert idp.requests["/oauth2/token"] == before + 2
    idp.hang = True
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        post_form(idp.token_url, grant, ca_file=stack.ca_file, basic=(client_id, secret), timeout=0.5)
    assert time.monotonic() - started < 5
    idp.hang = False
    status, _ = post_form(idp.token_url, grant, ca_file=stack.ca_file, basic=(client_id, secret))
    assert status == 200


def test_google_endpoint_checks(stack: Stack, idp: TokenService) -> None:
    user = stack.oauth2_user
    info = json.loads(idp.add_service_account(user).read_text())
    key = rsa_key(info["private_key"])
    now = int(time.time())

    def grant(**claims: object) -> tuple[int, dict[str, object]]:
        body = {"iss": info["client_email"], "sub": user, "scope": GOOGLE_SCOPE, "aud": info["token_uri"]}
        body.update({"iat": now, "exp": now + 3600, **claims})
        assertion = sign_jwt(key, {"alg": "RS256", "typ": "JWT", "kid": info["private_key_id"]}, body)
        form = {"grant_type": JWT_BEARER_GRANT, "assertion": assertion}
        return post_form(idp.google_token_url, form, ca_file=stack.ca_file)

    status, body = grant()
    assert status == 200, body
    assert TokenService.claims(str(body["access_token"]))["email"] == user
    assert grant(aud="https://oauth2.googleapis.com/token")[0] == 200  # what google-auth sends
    assert grant(aud="https://elsewhere.example.test/token")[1]["error"] == "invalid_grant"
    assert grant(exp=now + 7200)[1]["error"] == "invalid_grant"
    assert grant(iat=now - 7200, exp=now - 3600)[1]["error"] == "invalid_grant"
    assert grant(scope="")[1]["error"] == "invalid_scope"
    assert grant(sub=OTHER_USER)[:1] == (401,)
    idp.revoke(info["client_email"])
    assert grant()[1]["error"] == "invalid_grant"
