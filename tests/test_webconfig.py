"""``--web.config.file``: TLS, client certificates, basic auth, headers, reloads and rotation.

Every test runs the real exporter process and talks to it over real sockets on
127.0.0.1, with certificates made by trustme.
"""

from __future__ import annotations

import base64
import http.client
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
import trustme
from helpers import ExporterProcess, run_exporter

from exporter.core.secrets import Secret
from exporter.web.server import make_app
from exporter.web.webconfig import BasicAuth, RateLimiter

TESTDATA = Path(__file__).parent / "testdata" / "webconfig"
CONFIG = "global: {interval: 1h, timeout: 5s}\n"
PASSWORD = "correct horse battery staple"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


GOOD = basic("alice", PASSWORD)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    tls_version: str | None = None
    peer_serial: int | None = None


def request(
    exp: ExporterProcess,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
    body: bytes | None = None,
) -> Reply:
    """One request on a fresh connection (so every test sees a fresh TLS handshake)."""
    if context is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", exp.port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", exp.port, timeout=10, context=context)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        sock = conn.sock
        version = sock.version() if isinstance(sock, ssl.SSLSocket) else None
        serial = None
        if isinstance(sock, ssl.SSLSocket):
            from cryptography import x509

            der = sock.getpeercert(binary_form=True)
            serial = x509.load_der_x509_certificate(der).serial_number if der else None
        return Reply(resp.status, dict(resp.getheaders()), data, version, serial)
    finally:
        conn.close()


def wait_up(exp: ExporterProcess, context: ssl.SSLContext | None = None, headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if exp.proc.poll() is not None:
            raise AssertionError(f"exporter exited with {exp.proc.returncode}:\n{exp.logs()}")
        try:
            if request(exp, "GET", "/-/ready", headers, context).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"exporter not ready:\n{exp.logs()}")


@dataclass
class PKI:
    dir: Path
    ca: trustme.CA
    client_ca: trustme.CA

    def client_context(self, ca: trustme.CA | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        (ca or self.ca).configure_trust(ctx)
        return ctx

    def write_server(self, ca: trustme.CA, name: str = "server") -> int:
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert.cert_chain_pems[0].write_to_path(self.dir / f"{name}.crt")
        cert.private_key_pem.write_to_path(self.dir / f"{name}.key")
        from cryptography import x509

        return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).serial_number


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    p = PKI(tmp_path, trustme.CA(), trustme.CA())
    p.write_server(p.ca)
    p.client_ca.cert_pem.write_to_path(tmp_path / "client-ca.crt")
    return p


def web_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return f"--web.config.file={path}"


TLS = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"


# --- TLS ------------------------------------------------------------------------------------------------


def test_tls_handshake_with_the_ca(tmp_path: Path, pki: PKI) -> None:
    with run_exporter(tmp_path, web_config(tmp_path, TLS), config_text=CONFIG) as exp:
        wait_up(exp, pki.client_context())
        reply = request(exp, "GET", "/metrics", context=pki.client_context())
        assert reply.status == 200
        assert b"mail_exporter_build_info{" in reply.body
        assert reply.tls_version == "TLSv1.3"
        with pytest.raises(ssl.SSLCertVerificationError):
            request(exp, "GET", "/metrics", context=pki.client_context(trustme.CA()))
        # Plain HTTP to the TLS port gets no HTTP answer.
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError, http.client.BadStatusLine)):
            request(exp, "GET", "/metrics")


def test_min_version_tls13_refuses_a_tls12_client(tmp_path: Path, pki: PKI) -> None:
    with run_exporter(tmp_path, web_config(tmp_path, TLS + "  min_version: TLS13\n"), config_text=CONFIG) as exp:
        wait_up(exp, pki.client_context())
        old = pki.client_context()
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):  # the server ends the handshake (asyncio sends no alert)
            request(exp, "GET", "/metrics", context=old)
        assert request(exp, "GET", "/metrics", context=pki.client_context()).tls_version == "TLSv1.3"


def test_max_version_tls12_is_applied(tmp_path: Path, pki: PKI) -> None:
    with run_exporter(tmp_path, web_config(tmp_path, TLS + "  max_version: TLS12\n"), config_text=CONFIG) as exp:
        wait_up(exp, pki.client_context())
        assert request(exp, "GET", "/metrics", context=pki.client_context()).tls_version == "TLSv1.2"


def test_require_and_verify_client_cert(tmp_path: Path, pki: PKI) -> None:
    text = TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client-ca.crt\n"
    with run_exporter(tmp_path, web_config(tmp_path, text), config_text=CONFIG) as exp:
        signed = pki.client_context()
        pki.client_ca.issue_cert("scraper@example.test").configure_cert(signed)
        wait_up(exp, signed)
        assert request(exp, "GET", "/metrics", context=signed).status == 200
        # No certificate: TLS 1.3 reports the refusal on the first read.
        with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected)):
            request(exp, "GET", "/metrics", context=pki.client_context())
        stranger = pki.client_context()
        trustme.CA().issue_cert("stranger@example.test").configure_cert(stranger)
        with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected)):
            request(exp, "GET", "/metrics", context=stranger)


def test_client_allowed_sans(tmp_path: Path, pki: PKI) -> None:
    text = (
        TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client-ca.crt\n"
        "  client_allowed_sans: [prometheus.example.test]\n"
    )
    with run_exporter(tmp_path, web_config(tmp_path, text), config_text=CONFIG) as exp:
        allowed, other = pki.client_context(), pki.client_context()
        pki.client_ca.issue_cert("prometheus.example.test").configure_cert(allowed)
        pki.client_ca.issue_cert("other.example.test").configure_cert(other)
        wait_up(exp, allowed)
        assert request(exp, "GET", "/metrics", context=allowed).status == 200
        assert request(exp, "GET", "/metrics", context=other).status == 403


def test_certificate_rotation_without_reload(tmp_path: Path, pki: PKI) -> None:
    first = pki.write_server(pki.ca)
    with run_exporter(tmp_path, web_config(tmp_path, TLS), config_text=CONFIG) as exp:
        wait_up(exp, pki.client_context())
        assert request(exp, "GET", "/metrics", context=pki.client_context()).peer_serial == first
        renewed_ca = trustme.CA()
        second = pki.write_server(renewed_ca)
        reply = request(exp, "GET", "/metrics", context=pki.client_context(renewed_ca))
        assert (reply.status, reply.peer_serial) == (200, second)
        with pytest.raises(ssl.SSLCertVerificationError):
            request(exp, "GET", "/metrics", context=pki.client_context())
        # A half-written rotation (key of another certificate) keeps the last good pair.
        (tmp_path / "server.key").write_bytes(pki.ca.issue_cert("x.test").private_key_pem.bytes())
        assert request(exp, "GET", "/metrics", context=pki.client_context(renewed_ca)).peer_serial == second
        assert "TLS files changed but cannot be loaded" in exp.logs()


def test_tls_and_basic_auth_together(tmp_path: Path, pki: PKI) -> None:
    text = TLS + f"basic_auth_users:\n  alice: {HASH}\n"
    with run_exporter(tmp_path, web_config(tmp_path, text), config_text=CONFIG) as exp:
        wait_up(exp, pki.client_context(), GOOD)
        assert request(exp, "GET", "/metrics", context=pki.client_context()).status == 401
        assert request(exp, "GET", "/metrics", GOOD, context=pki.client_context()).status == 200


# --- basic auth ------------------------------------------------------------------------------------------


def app_routes() -> list[tuple[str, str]]:
    """Every (method, path) the application serves: a new endpoint is covered automatically."""
    app = make_app(object())  # type: ignore[arg-type]
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    return sorted(m_p for m_p in routes if m_p[0] != "HEAD")


def test_routes_are_enumerated() -> None:
    assert ("GET", "/metrics") in app_routes()
    assert ("POST", "/alertmanager") in app_routes()
    assert len(app_routes()) >= 9


@pytest.fixture(scope="module")
def auth_exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExporterProcess]:
    tmp = tmp_path_factory.mktemp("basic-auth")
    text = f"basic_auth_users:\n  alice: {HASH}\n  bob: {HASH}\nhttp_server_config:\n  headers:\n"
    text += "    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n"
    with run_exporter(tmp, web_config(tmp, text), config_text=CONFIG) as exp:
        wait_up(exp, None, GOOD)
        yield exp


@pytest.mark.parametrize(("method", "path"), [*app_routes(), ("GET", "/no-such-page")])
def test_basic_auth_on_every_endpoint(auth_exporter: ExporterProcess, method: str, path: str) -> None:
    exp = auth_exporter
    for headers in ({}, basic("alice", "wrong"), basic("mallory", PASSWORD), {"Authorization": "Bearer x"}):
        reply = request(exp, method, path, headers)
        assert reply.status == 401, (headers, reply)
        assert reply.headers["WWW-Authenticate"] == 'Basic realm="mail-continuity-exporter"'
        assert reply.headers["X-Frame-Options"] == "deny"
    reply = request(exp, method, path, GOOD)
    expected = {
        ("GET", "/no-such-page"): 404,
        ("GET", "/probe"): 400,  # no target given
        ("POST", "/alertmanager"): 415,  # no JSON content type
        ("GET", "/-/reload"): 405,
    }
    assert reply.status == expected.get((method, path), 200), reply
    assert reply.headers["X-Content-Type-Options"] == "nosniff"


def test_password_never_logged(auth_exporter: ExporterProcess) -> None:
    assert request(auth_exporter, "GET", "/metrics", basic("alice", "Wr0ng-Pa55word!")).status == 401
    assert request(auth_exporter, "GET", "/metrics", GOOD).status == 200
    logs = auth_exporter.logs()
    assert "Wr0ng-Pa55word!" not in logs
    assert PASSWORD not in logs
    assert HASH not in logs


def test_healthy_needs_auth_by_default(auth_exporter: ExporterProcess) -> None:
    assert request(auth_exporter, "GET", "/-/healthy").status == 401


def test_healthy_open_with_the_option(tmp_path: Path) -> None:
    text = f"basic_auth_users:\n  alice: {HASH}\n"
    with run_exporter(tmp_path, web_config(tmp_path, text), "--web.healthy-without-auth", config_text=CONFIG) as exp:
        wait_up(exp, None, GOOD)
        assert request(exp, "GET", "/-/healthy").status == 200
        assert request(exp, "GET", "/-/ready").status == 401
        assert request(exp, "GET", "/metrics").status == 401


def test_rate_limit_answers_429(tmp_path: Path) -> None:
    text = "rate_limit: {interval: 1h, burst: 3}\n"
    with run_exporter(tmp_path, web_config(tmp_path, text), config_text=CONFIG) as exp:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # spends tokens until ready; then the bucket is empty
            try:
                status = request(exp, "GET", "/-/ready").status
            except OSError:
                time.sleep(0.1)
                continue
            if status == 429:
                break
            time.sleep(0.1)
        assert request(exp, "GET", "/metrics").status == 429


# --- reloads -----------------------------------------------------------------------------------------------


def test_reload_with_a_broken_web_config_keeps_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  alice: {HASH}\n")
    with run_exporter(tmp_path, f"--web.config.file={path}", config_text=CONFIG) as exp:
        wait_up(exp, None, GOOD)
        path.write_text(f"basic_auth_users:\n  bob: {HASH}\nrate_limt: {{}}\n")
        reply = request(exp, "POST", "/-/reload", GOOD)
        assert reply.status == 500
        assert f"{path}: rate_limt: unknown key (did you mean rate_limit?) (line 3)" in reply.body.decode()
        assert request(exp, "GET", "/metrics", GOOD).status == 200
        assert request(exp, "GET", "/metrics", basic("bob", PASSWORD)).status == 401
        # A fixed file is applied on SIGHUP: bob in, alice out.
        path.write_text(f"basic_auth_users:\n  bob: {HASH}\n")
        exp.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while request(exp, "GET", "/metrics", basic("bob", PASSWORD)).status != 200:
            assert time.monotonic() < deadline, exp.logs()
            time.sleep(0.1)
        assert request(exp, "GET", "/metrics", GOOD).status == 401


def test_reload_refuses_a_listener_setting_change(tmp_path: Path, pki: PKI) -> None:
    path = tmp_path / "web.yml"
    path.write_text(TLS)
    with run_exporter(tmp_path, f"--web.config.file={path}", config_text=CONFIG) as exp:
        wait_up(exp, pki.client_context())
        path.write_text(TLS + "  min_version: TLS13\n")
        reply = request(exp, "POST", "/-/reload", context=pki.client_context())
        assert reply.status == 500
        assert (
            f"{path}: tls_server_config.min_version: changed; this setting is bound to the listening socket, "
            "restart the exporter to apply it"
        ) in reply.body.decode()


def test_reload_picks_up_a_new_certificate_path(tmp_path: Path, pki: PKI) -> None:
    path = tmp_path / "web.yml"
    path.write_text(TLS)
    with run_exporter(tmp_path, f"--web.config.file={path}", config_text=CONFIG) as exp:
        wait_up(exp, pki.client_context())
        other_ca = trustme.CA()
        serial = pki.write_server(other_ca, "renewed")
        path.write_text("tls_server_config:\n  cert_file: renewed.crt\n  key_file: renewed.key\n")
        assert request(exp, "POST", "/-/reload", context=pki.client_context()).status == 200
        assert request(exp, "GET", "/metrics", context=pki.client_context(other_ca)).peer_serial == serial


# --- bad files -----------------------------------------------------------------------------------------------


def expectations(path: Path) -> list[str]:
    lines = [ln.removeprefix("# expect: ") for ln in path.read_text().splitlines() if ln.startswith("# expect: ")]
    return [ln.replace("{file}", str(path)).replace("{dir}", str(path.parent)) for ln in lines]


@pytest.mark.parametrize("path", sorted(TESTDATA.glob("invalid-*.yml")), ids=lambda p: p.stem)
def test_invalid_web_config_is_reported_by_config_check(tmp_path: Path, path: Path) -> None:
    cfg = tmp_path / "config.yml"
    cfg.write_text(CONFIG)
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.check", f"--config.file={cfg}", f"--web.config.file={path}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    want = expectations(path)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [*want, f"web config invalid: {len(want)} error(s)"]
    assert "hunter2" not in proc.stderr + proc.stdout


def test_invalid_web_config_stops_start_up(tmp_path: Path) -> None:
    path = TESTDATA / "invalid-version.yml"
    with run_exporter(tmp_path, f"--web.config.file={path}", config_text=CONFIG) as exp:
        assert exp.proc.wait(30) == 1
        assert expectations(path)[0] in exp.logs()
        assert "web config invalid: 1 error(s)" in exp.logs()


def test_valid_web_config_check(tmp_path: Path, pki: PKI) -> None:
    cfg = tmp_path / "config.yml"
    cfg.write_text(CONFIG)
    web = tmp_path / "web.yml"
    web.write_text(TLS + "  curve_preferences: [X25519]\n" + f"basic_auth_users:\n  alice: {HASH}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.check", f"--config.file={cfg}", f"--web.config.file={web}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"{web}: web config valid (TLS, 1 basic auth user(s))" in proc.stdout
    assert f"{web}: warning: tls_server_config.curve_preferences is not applied" in proc.stderr


def test_example_web_config_is_valid(tmp_path: Path) -> None:
    """examples/web-config.yml decodes (its TLS files are examples, so TLS is dropped here)."""
    from exporter.config.decode import decode, load_yaml
    from exporter.web.webconfig import WebConfig

    example = Path(__file__).parent.parent / "examples" / "web-config.yml"
    data, lines = load_yaml(example.read_text(), str(example))
    cfg = decode(WebConfig, data, str(example), lines)
    assert cfg.tls_server_config.client_auth_type == "RequireAndVerifyClientCert"
    assert sorted(cfg.basic_auth_users) == ["prometheus"]


# --- units: the auth cache and the token bucket ------------------------------------------------------------


async def test_basic_auth_caches_only_verified_credentials() -> None:
    auth = BasicAuth({"alice": Secret(HASH)})
    header = GOOD["Authorization"]
    assert await auth.check(header) is True
    assert len(auth._verified) == 1
    assert await auth.check(header) is True
    assert len(auth._verified) == 1
    assert await auth.check(basic("alice", "nope")["Authorization"]) is False
    assert await auth.check(basic("mallory", PASSWORD)["Authorization"]) is False
    assert await auth.check("Basic !!notbase64") is False
    assert await auth.check("Basic " + base64.b64encode(b"no-colon").decode()) is False
    assert len(auth._verified) == 1


async def test_basic_auth_accepts_htpasswd_2y_hashes_and_long_passwords() -> None:
    long = "x" * 100
    hashed = bcrypt.hashpw(long.encode()[:72], bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$", 1)
    auth = BasicAuth({"carol": Secret(hashed)})
    assert await auth.check(basic("carol", long)["Authorization"]) is True


def test_rate_limiter_token_bucket() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 3, clock=lambda: now[0])
    assert [limiter.allow() for _ in range(4)] == [True, True, True, False]
    now[0] = 1.0  # half a token
    assert limiter.allow() is False
    now[0] = 2.0
    assert [limiter.allow(), limiter.allow()] == [True, False]
    assert RateLimiter(0.0, 0).allow() is True
