"""No OAuth2 secret and no access token appears in anything the exporter says.

The real exporter, at debug level, logs in to the stack's Dovecot and Postfix with OAuth2
tokens from tests/oauth_server.py's identity provider: a generic client secret (inline),
a Microsoft certificate key (``private_key_file``), a Google service account key
(``service_account_file``), a refresh token (``${ENV}``, revoked: the ``auth_token``
path), a round trip with OAuth2 both ways and an IMAP canary with OAuth2.  Every page,
``/probe?debug=true`` transcript, ``/metrics``, the status page, a reload and the whole
log are searched for every secret (plain, base64, URL-encoded, each line of a PEM key) and
for every access token the identity provider issued during the run (plain, and inside
each SASL initial response).  It also asserts that the logins happened, so that it cannot
pass by doing nothing.
"""

from __future__ import annotations

import base64
import json
import secrets
import urllib.parse
from pathlib import Path

from helpers import metric_values, run_exporter
from oauth_server import TokenService, make_client_certificate
from stack import Stack

from exporter.net.sasl import initial_response

TENANT = "leaktest"


def _forms(secret: str) -> list[str]:
    out = [secret, urllib.parse.quote(secret), base64.b64encode(secret.encode()).decode()]
    if "-----BEGIN" in secret or "PRIVATE KEY" in secret:  # every line of a key's body
        out += [line for line in secret.replace("\\n", "\n").splitlines() if len(line) >= 40]
    return out


def test_no_oauth_secret_or_token_leaks(stack: Stack, tmp_path: Path) -> None:
    user = stack.oauth2_user
    ca = stack.ca_file
    tls = f"{{ca_file: {ca}, server_name: {stack.hostname}}}"
    imap_tls = f"{{ca_file: {ca}, server_name: imap.example.test}}"
    sub, imaps = stack.port("submission"), stack.port("imaps")
    with TokenService(stack) as idp:
        generic_secret = f"gen-LEAK-{secrets.token_hex(8)}"
        idp.add_client("leak-generic", generic_secret, user=user)
        cert = make_client_certificate()
        idp.add_certificate_client("leak-ms", cert.cert_pem, user=user, tenant=TENANT)
        (tmp_path / "ms.key").write_text(cert.key_pem)
        (tmp_path / "ms.crt").write_text(cert.cert_pem)
        sa_file = idp.add_service_account(directory=tmp_path)
        refresh = f"refresh-LEAK-{secrets.token_hex(8)}"
        idp.add_refresh_token(refresh, "leak-public", user)
        idp.add_client("leak-public", None, user=user)
        idp.revoke(refresh)
        generic = (
            f'{{provider: generic, token_url: "{idp.token_url}", client_id: leak-generic, '
            f'client_secret: "{generic_secret}", ca_file: "{ca}"}}'
        )
        config = f"""
global: {{interval: 60s, timeout: 8s, jitter: 0}}
probe: {{allow_targets: ["127.0.0.1/32"], allow_address_classes: [loopback]}}
endpoints:
  - name: imap-generic
    protocol: imap
    address: "127.0.0.1:{imaps}"
    tls: implicit
    tls_config: {imap_tls}
    auth: {{username: {user}, oauth2: {generic}}}
  - name: smtp-microsoft
    protocol: smtp
    address: "127.0.0.1:{sub}"
    tls: starttls
    tls_config: {tls}
    auth:
      username: {user}
      oauth2:
        provider: microsoft
        authority: "{idp.url}"
        tenant_id: {TENANT}
        client_id: leak-ms
        certificate: {{private_key_file: "{tmp_path / "ms.key"}", certificate_file: "{tmp_path / "ms.crt"}"}}
        ca_file: "{ca}"
  - name: imap-google
    protocol: imap
    address: "127.0.0.1:{imaps}"
    tls: implicit
    tls_config: {imap_tls}
    auth: {{username: {user}, oauth2: {{provider: google, service_account_file: "{sa_file}", ca_file: "{ca}"}}}}
  - name: smtp-revoked
    protocol: smtp
    address: "127.0.0.1:{sub}"
    tls: starttls
    tls_config: {tls}
    auth:
      username: {user}
      oauth2: {{provider: generic, token_url: "{idp.token_url}", client_id: leak-public,
               refresh_token: "${{MCE_LEAK_REFRESH}}", client_auth: post, ca_file: "{ca}"}}
routes:
  - name: route-oauth
    timeout: 15s
    send: {{address: "127.0.0.1:{sub}", tls: starttls, tls_config: {tls}, from: {user}, to: {user},
            auth: {{username: {user}, oauth2: {generic}}}}}
    receive: {{address: "127.0.0.1:{imaps}", tls_config: {imap_tls}, username: {user}, oauth2: {generic}}}
continuity:
  datasets:
    - name: mailstore
      replicas:
        - type: imap_canary
          name: canary
          timeout: 8s
          primary: {{address: "127.0.0.1:{imaps}", tls_config: {imap_tls}, username: {user}, oauth2: {generic}}}
          replica: {{address: "127.0.0.1:{imaps}", tls_config: {imap_tls}, username: {user}, oauth2: {generic}}}
"""
        seen: list[tuple[str, str]] = []
        env = {"MCE_LEAK_REFRESH": refresh}
        with run_exporter(tmp_path, "--log.level=debug", config_text=config, env=env) as exp:
            exp.wait_ready()

            def all_ran(text: str) -> bool:
                runs = metric_values(text, "mail_exporter_check_runs_total")
                names = {dict(k)["name"] for k, v in runs.items() if v >= 1}
                return {"imap-generic", "smtp-microsoft", "imap-google", "smtp-revoked", "route-oauth"} <= names

            exp.wait_for(all_ran, timeout=90, interval=0.5)
            for module in ("imap-generic", "smtp-microsoft", "imap-google", "smtp-revoked"):
                resp = exp.get(f"/probe?module={module}&debug=true")
                seen.append((f"/probe {module}", resp.text))
            assert exp.post("/-/reload").status == 200
            for path in ("/", "/metrics", "/-/healthy", "/-/ready"):
                seen.append((path, exp.get(path).text))
            text = exp.metrics()
            exp.stop()
            seen.append(("log", exp.logs()))
        issued = idp.issued

    # the logins happened: three credentials worked, the revoked one failed at the token endpoint
    up = {**metric_values(text, "mail_smtp_up"), **metric_values(text, "mail_imap_up")}
    assert {dict(k)["check"]: v for k, v in up.items()} == {
        "imap-generic": 1.0,
        "smtp-microsoft": 1.0,
        "imap-google": 1.0,
        "smtp-revoked": 0.0,
    }
    failures = metric_values(text, "mail_probe_failures_total")
    assert any(
        dict(k)["check"] == "smtp-revoked" and dict(k)["reason"] == "auth_token" and v >= 1 for k, v in failures.items()
    )
    delivered = metric_values(text, "mail_roundtrip_probes_total")
    assert any(dict(k)["result"] == "delivered" and v >= 1 for k, v in delivered.items())
    debug_pages = [out for where, out in seen if where == "/probe imap-generic"]
    assert "AUTHENTICATE" in debug_pages[0] and "Result: success" in debug_pages[0]
    assert len(issued) >= 3

    forbidden: dict[str, str] = {}
    for name, secret in (
        ("generic client secret", generic_secret),
        ("refresh token", refresh),
        ("certificate private key", cert.key_pem),
        ("service account key", json.loads(sa_file.read_text())["private_key"]),
    ):
        for form in _forms(secret):
            forbidden[form] = name
    for i, token in enumerate(issued):
        for form in [
            token,
            base64.b64encode(token.encode()).decode(),
            *(
                initial_response(m, user, token, h, p)
                for m in ("XOAUTH2", "OAUTHBEARER")
                for h, p in (("imap.example.test", imaps), (stack.hostname, sub), ("", 0))
            ),
        ]:
            forbidden[form] = f"access token {i}"
    assert sum(form in config for form in forbidden) >= 1  # the search works: the config holds a secret
    leaks = [(where, name) for where, out in seen for form, name in forbidden.items() if form in out]
    assert not leaks, f"secrets leaked: {leaks[:20]}"
