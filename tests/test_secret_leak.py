"""No secret appears in anything the exporter says: HTTP bodies and headers, logs, errors.

One config puts a distinct known value in every secret-bearing field (endpoint AUTH
passwords, route send and receive passwords, IMAP canary passwords, the webhook bearer
token and basic-auth password), in all three forms the decoder takes: inline, ``*_file``
and ``${ENV}``.  Two of them are the real stack's passwords (success paths, where a
debug transcript shows the whole dialog); the rest are wrong, so every failure path runs
too.  The real exporter runs at debug level, in each log format; the test calls every
route the aiohttp app has (enumerated from the router, so a new endpoint cannot be
missed), ``/probe?debug=true`` on every module, reloads with a good and a broken config,
feeds the webhook bad credentials and bad bodies, waits until every check has run, and
runs ``--config.check`` on a good and a broken file.  Every byte collected is searched
for each secret, its base64 (alone, ``user:password`` and SASL PLAIN), and its
URL-encoded forms.  It also asserts that all of this happened (auth failures recorded
with reason ``auth``, every check run), so that it cannot pass by doing nothing.
"""

from __future__ import annotations

import base64
import gzip
import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
from helpers import ExporterProcess, metric_values, run_exporter
from stack import Stack

from exporter.web.server import make_app

PROBE_USER = "probe@example.test"
ARCHIVE_USER = "archive@archive.example.test"
CANARY = [f"s3cret-LEAK-CANARY-{n}" for n in range(12)]
CANARY[2] = "s3cret LEAK/CANARY+2&=?"  # characters that URL encoding and base64 padding change
DEAD = "127.0.0.1:2999"  # the stack's dead relay: nothing listens


def _env(stack: Stack) -> dict[str, str]:
    return {
        "MCE_LEAK_IMAP_GOOD": stack.password(PROBE_USER),
        "MCE_LEAK_IMAPS_BAD": CANARY[3],
        "MCE_LEAK_REPLICA": CANARY[7],
        "MCE_LEAK_BEARER": CANARY[8],
    }


def _config(stack: Stack, secrets: Path, *, broken: bool = False) -> str:
    ca = stack.ca_file
    tls = f"{{ca_file: {ca}, server_name: {stack.hostname}}}"
    sub, imap, imaps, smtp = (stack.port(p) for p in ("submission", "imap", "imaps", "smtp"))
    good_smtp = stack.password(PROBE_USER)
    broken_part = (
        f"""
  - name: broken-endpoint
    protocol: imap
    address: 127.0.0.1:{imap}
    auth: {{username: {PROBE_USER}, password: [{CANARY[10]}], pasword: {CANARY[11]}}}
"""
        if broken
        else ""
    )
    return f"""
global: {{interval: 60s, timeout: 8s, jitter: 0}}
probe: {{allow_targets: ["127.0.0.1/32"], allow_address_classes: [loopback]}}
endpoints:
  - {{name: smtp-good, protocol: smtp, address: "127.0.0.1:{sub}", tls: starttls, tls_config: {tls},
     auth: {{username: {PROBE_USER}, password: "{good_smtp}"}}}}
  - {{name: smtp-bad, protocol: smtp, address: "127.0.0.1:{sub}", tls: starttls, tls_config: {tls},
     auth: {{username: {PROBE_USER}, password_file: {secrets / "smtp-bad"}}}}}
  - {{name: imap-good, protocol: imap, address: "127.0.0.1:{imap}", tls: starttls, tls_config: {tls}, select: INBOX,
     auth: {{username: {PROBE_USER}, password: "${{MCE_LEAK_IMAP_GOOD}}"}}}}
  - {{name: imap-bad, protocol: imap, address: "127.0.0.1:{imap}", tls: starttls, tls_config: {tls},
     auth: {{username: {PROBE_USER}, password: "{CANARY[2]}"}}}}
  - {{name: imaps-bad, protocol: imap, address: "127.0.0.1:{imaps}", tls: implicit, tls_config: {tls},
     auth: {{username: {PROBE_USER}, password: "${{MCE_LEAK_IMAPS_BAD}}"}}}}{broken_part}
routes:
  - name: route-send-bad
    timeout: 8s
    send: {{address: "127.0.0.1:{sub}", tls: starttls, tls_config: {tls}, from: {PROBE_USER}, to: {ARCHIVE_USER},
            auth: {{username: {PROBE_USER}, password_file: {secrets / "route-send"}}}}}
    receive: {{address: "127.0.0.1:{imaps}", tls_config: {tls}, username: {ARCHIVE_USER},
               password: "{stack.password(ARCHIVE_USER)}"}}
  - name: route-receive-bad
    timeout: 8s
    send: {{address: "127.0.0.1:{smtp}", tls: starttls, tls_config: {tls}, from: {PROBE_USER}, to: {ARCHIVE_USER}}}
    receive: {{address: "127.0.0.1:{imaps}", tls_config: {tls}, username: {ARCHIVE_USER}, password: "{CANARY[5]}"}}
continuity:
  datasets:
    - name: mailstore
      replicas:
        - type: imap_canary
          name: canary
          timeout: 8s
          primary: {{address: "127.0.0.1:{imaps}", tls_config: {tls}, username: {PROBE_USER},
                     password_file: {secrets / "canary-primary"}}}
          replica: {{address: "127.0.0.1:{imaps}", tls_config: {tls}, username: replica@example.test,
                     password: "${{MCE_LEAK_REPLICA}}"}}
webhook:
  bearer_token: "${{MCE_LEAK_BEARER}}"
  basic_auth: {{username: alertmanager, password_file: {secrets / "webhook-basic"}}}
"""


def _secret_files(tmp_path: Path) -> Path:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name, value in (("smtp-bad", CANARY[1]), ("route-send", CANARY[4]), ("canary-primary", CANARY[6])):
        (secrets / name).write_text(value + "\n")
    (secrets / "webhook-basic").write_text(CANARY[9] + "\n")
    return secrets


def _forbidden(stack: Stack) -> dict[str, str]:
    """Every form of every secret that must not appear, with a name for the failure message."""
    users = {CANARY[1]: PROBE_USER, CANARY[2]: PROBE_USER, CANARY[3]: PROBE_USER, CANARY[4]: PROBE_USER}
    users |= {CANARY[5]: ARCHIVE_USER, CANARY[6]: PROBE_USER, CANARY[7]: "replica@example.test"}
    users |= {CANARY[9]: "alertmanager", stack.password(PROBE_USER): PROBE_USER}
    users |= {stack.password(ARCHIVE_USER): ARCHIVE_USER}
    out = {}
    for secret in [*CANARY, stack.password(PROBE_USER), stack.password(ARCHIVE_USER)]:
        user = users.get(secret, "")
        forms = {
            "plain": secret,
            "url": urllib.parse.quote(secret),
            "url+": urllib.parse.quote_plus(secret),
            "b64": base64.b64encode(secret.encode()).decode(),
            "b64 user:pass": base64.b64encode(f"{user}:{secret}".encode()).decode(),
            "b64 SASL PLAIN": base64.b64encode(f"\0{user}\0{secret}".encode()).decode(),
        }
        for kind, text in forms.items():
            out[text] = f"{kind} of {secret[:10]}..."
    return out


def _record(seen: list[tuple[str, str]], where: str, status: int, headers: dict[str, str], body: bytes) -> None:
    if headers.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    head = "\n".join(f"{k}: {v}" for k, v in headers.items())
    seen.append((where, f"{status}\n{head}\n\n{body.decode(errors='replace')}"))


def _call(exp: ExporterProcess, seen: list[tuple[str, str]], method: str, path: str, **kw: object) -> int:
    from helpers import http

    resp = http(method, exp.url + path, timeout=30, **kw)  # type: ignore[arg-type]
    _record(seen, f"{method} {path}", resp.status, resp.headers, resp.body)
    return resp.status


def _routes() -> set[tuple[str, str]]:
    """Every (method, path) the aiohttp app serves."""
    app = make_app(object())  # type: ignore[arg-type]
    return {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}


_NOTE = (
    b'{"version":"4","status":"firing","receiver":"mail","alerts":[{"status":"firing","labels":{"alertname":"X"},'
    b'"startsAt":"2030-01-05T22:00:00Z","endsAt":"0001-01-01T00:00:00Z","fingerprint":"leak1"}]}'
)


def _webhook_calls() -> list[tuple[dict[str, str], bytes, int]]:
    """(headers, body, expected status) for POST /alertmanager."""
    js = {"Content-Type": "application/json"}
    good_basic = base64.b64encode(f"alertmanager:{CANARY[9]}".encode()).decode()
    wrong_basic = base64.b64encode(f"alertmanager:{CANARY[8]}".encode()).decode()
    return [
        (js, _NOTE, 401),
        ({**js, "Authorization": f"Bearer {CANARY[9]}"}, _NOTE, 401),
        ({**js, "Authorization": f"Basic {wrong_basic}"}, _NOTE, 401),
        ({**js, "Authorization": "Basic !!!"}, _NOTE, 401),
        ({**js, "Authorization": f"Bearer {CANARY[8]}"}, b'{"version": "4", "status": "firing", "alerts": [', 400),
        ({**js, "Authorization": f"Basic {good_basic}"}, b'{"version": "3"}', 400),
        ({"Authorization": f"Bearer {CANARY[8]}"}, _NOTE, 415),
        ({**js, "Authorization": f"Basic {good_basic}"}, _NOTE, 200),
    ]


def _all_checks_ran(text: str) -> bool:
    runs = metric_values(text, "mail_exporter_check_runs_total")
    per_check: dict[tuple[str, str], float] = {}
    for labels, value in runs.items():
        d = dict(labels)
        key = (d["check"], d["name"])
        per_check[key] = per_check.get(key, 0.0) + value
    return len(per_check) >= 8 and all(v >= 1 for v in per_check.values())


def _exercise(exp: ExporterProcess, stack: Stack, cfg_path: Path, good: str, broken: str) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    routes = _routes()
    done: set[tuple[str, str]] = set()
    modules = ["smtp-good", "smtp-bad", "imap-good", "imap-bad", "imaps-bad"]
    for module in modules:
        for query in (f"module={module}&debug=true", f"module={module}", f"module={module}&debug=true&target={DEAD}"):
            assert _call(exp, seen, "GET", f"/probe?{query}") == 200
    assert _call(exp, seen, "GET", "/probe?module=nope&debug=true") == 400
    done |= {("GET", "/probe"), ("HEAD", "/probe")}
    for headers, body, status in _webhook_calls():
        assert _call(exp, seen, "POST", "/alertmanager", data=body, headers=headers) == status, headers
    done.add(("POST", "/alertmanager"))
    assert _call(exp, seen, "POST", "/-/reload") == 200
    cfg_path.write_text(broken)
    assert _call(exp, seen, "POST", "/-/reload") == 500
    assert _call(exp, seen, "PUT", "/-/reload") == 500
    assert _call(exp, seen, "GET", "/") == 200
    assert "FAILED" in seen[-1][1]
    cfg_path.write_text(good)
    done |= {("POST", "/-/reload"), ("PUT", "/-/reload")}
    assert _call(exp, seen, "GET", "/metrics", headers={"Accept-Encoding": "gzip"}) == 200
    for method, path in sorted(routes - done):
        _call(exp, seen, method, path)
    assert _call(exp, seen, "POST", "/-/reload") == 200
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["logfmt", "json"])
def test_no_secret_leaks_anywhere(stack: Stack, tmp_path: Path, log_format: str) -> None:
    secrets = _secret_files(tmp_path)
    good, broken = _config(stack, secrets), _config(stack, secrets, broken=True)
    env = _env(stack)
    with run_exporter(tmp_path, "--log.level=debug", f"--log.format={log_format}", config_text=good, env=env) as exp:
        exp.wait_ready()
        text = exp.wait_for(_all_checks_ran, timeout=90, interval=0.5)
        seen = _exercise(exp, stack, tmp_path / "config.yml", good, broken)
        text = exp.wait_for(_all_checks_ran, timeout=30, interval=0.5)
        _record(seen, "GET /metrics (final)", 200, {}, text.encode())
        exp.stop()
        seen.append(("exporter log", exp.logs()))
    seen += _config_check(tmp_path, good, broken, env)
    _assert_happened(text, seen, exp)
    forbidden = _forbidden(stack)
    # The search works: the config itself (which may hold secrets) is caught by it.
    assert sum(form in good for form in forbidden) >= 3
    leaks = [(where, name) for where, out in seen for form, name in forbidden.items() if form in out]
    assert not leaks, f"secrets leaked: {leaks[:20]}"


def _config_check(tmp_path: Path, good: str, broken: str, env: dict[str, str]) -> list[tuple[str, str]]:
    out = []
    for name, text, rc in (("good", good, 0), ("broken", broken, 1)):
        path = tmp_path / f"check-{name}.yml"
        path.write_text(text)
        proc = subprocess.run(
            [sys.executable, "-m", "exporter", "--config.check", f"--config.file={path}", "--log.level=debug"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
            check=False,
        )
        assert proc.returncode == rc, proc.stdout + proc.stderr
        out.append((f"--config.check {name}", proc.stdout + proc.stderr))
    assert "expected a string, got a list" in out[1][1] and "unknown key (did you mean password?)" in out[1][1]
    return out


def _assert_happened(text: str, seen: list[tuple[str, str]], exp: ExporterProcess) -> None:
    """The things the test claims to exercise did happen: the search above is not vacuous."""
    failures = metric_values(text, "mail_probe_failures_total")
    for check in ("smtp-bad", "imap-bad", "imaps-bad"):
        auth = [v for k, v in failures.items() if dict(k)["check"] == check and dict(k)["reason"] == "auth"]
        assert auth and auth[0] >= 1, f"{check}: no auth failure recorded"
    up = {**metric_values(text, "mail_smtp_up"), **metric_values(text, "mail_imap_up")}
    assert {dict(k)["check"]: v for k, v in up.items()} == {
        "smtp-good": 1.0,
        "smtp-bad": 0.0,
        "imap-good": 1.0,
        "imap-bad": 0.0,
        "imaps-bad": 0.0,
    }
    probes = metric_values(text, "mail_roundtrip_probes_total")
    results = {(dict(k)["route"], dict(k)["result"]): v for k, v in probes.items()}
    assert results[("route-send-bad", "send_failed")] >= 1
    assert results[("route-receive-bad", "receive_failed")] >= 1
    runs = metric_values(text, "mail_exporter_check_runs_total")
    assert any(dict(k)["check"] == "replica" and dict(k)["result"] != "success" and v >= 1 for k, v in runs.items())
    probe_pages = [out for where, out in seen if where.startswith("GET /probe?module=smtp-good&debug=true")]
    assert "AUTH" in probe_pages[0] and "Result: success" in probe_pages[0]
    log = next(out for where, out in seen if where == "exporter log")
    assert "level=debug" in log or '"level": "debug"' in log
    assert "reason=auth" in log or '"reason": "auth"' in log
    assert exp.proc.returncode == 0


# --- the web config: basic-auth users on every endpoint -------------------------------------------------

WEB_USER = "prometheus"
WEB_PASSWORD = "w3b-LEAK-CANARY-pass"
WEB_WRONG = "w3b-LEAK-CANARY-wrong"


def _web_config(path: Path, *, broken: bool = False) -> None:
    import bcrypt

    hashed = bcrypt.hashpw(WEB_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    # broken: a typo next to the hash, so the error is reported right beside it
    users = f"basic_auth_users:\n  {WEB_USER}: {hashed}\n" + ("  other: [not, a, hash]\n" if broken else "")
    path.write_text(users)


@pytest.mark.slow
def test_web_config_passwords_and_hashes_do_not_leak(stack: Stack, tmp_path: Path) -> None:
    """With ``--web.config.file`` basic auth, neither the password a client sends (right or
    wrong) nor the bcrypt hash appears in any answer, log or error, on any route."""
    secrets = _secret_files(tmp_path)
    web = tmp_path / "web-config.yml"
    _web_config(web)
    hashed = web.read_text().split(": ", 1)[1].strip()
    right = {"Authorization": "Basic " + base64.b64encode(f"{WEB_USER}:{WEB_PASSWORD}".encode()).decode()}
    wrong = {"Authorization": "Basic " + base64.b64encode(f"{WEB_USER}:{WEB_WRONG}".encode()).decode()}
    seen: list[tuple[str, str]] = []
    args = ("--log.level=debug", f"--web.config.file={web}")
    # Without the webhook's own auth: Alertmanager sends one Authorization header, the web config's.
    config_text = _config(stack, secrets).split("webhook:")[0]
    with run_exporter(tmp_path, *args, config_text=config_text, env=_env(stack)) as exp:
        _wait_ready_with(exp, right)
        statuses: dict[tuple[str, str, str], int] = {}
        for method, path in sorted(_routes()):
            concrete = path.replace("{tail:.*}", "x")
            for name, headers in (("none", {}), ("wrong", wrong), ("right", right)):
                statuses[(method, concrete, name)] = _call(exp, seen, method, concrete, headers=headers)
        assert _call(exp, seen, "GET", "/probe?module=smtp-good&debug=true", headers=right) == 200
        _web_config(web, broken=True)
        assert _call(exp, seen, "POST", "/-/reload", headers=right) == 500
        assert "Web config reload failed" in seen[-1][1]
        exp.stop()
        seen.append(("exporter log", exp.logs()))
    config = tmp_path / "config.yml"
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.check", f"--web.config.file={web}", f"--config.file={config}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **_env(stack)},
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    seen.append(("--config.check with a broken web config", proc.stdout + proc.stderr))
    # Auth really guarded every route: no credentials and wrong ones are refused, right ones are not.
    for (method, path, name), status in statuses.items():
        if name != "right":
            assert status == 401, (method, path, name, status)
        else:
            assert status != 401, (method, path, status)
    forbidden = {
        WEB_PASSWORD: "web password",
        WEB_WRONG: "wrong web password",
        hashed: "bcrypt hash",
        right["Authorization"].split()[1]: "base64 of the right credentials",
        wrong["Authorization"].split()[1]: "base64 of the wrong credentials",
    }
    leaks = [(where, name) for where, out in seen for form, name in forbidden.items() if form in out]
    assert not leaks, f"web secrets leaked: {leaks[:20]}"


def _wait_ready_with(exp: ExporterProcess, headers: dict[str, str], timeout: float = 20) -> None:
    from helpers import http

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if exp.proc.poll() is not None:
            raise AssertionError(f"exporter exited with {exp.proc.returncode}:\n{exp.logs()}")
        try:
            if http("GET", exp.url + "/-/ready", headers=headers, timeout=2).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"exporter not ready within {timeout}s:\n{exp.logs()}")
