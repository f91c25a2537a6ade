"""Issue 9 acceptance: ``make demo`` (scripts/demo.sh) really works, beside the test stack.

The end-to-end test runs the real script in a private demo directory: the demo stack
(scripts/teststack.sh with MCE_STACK_PORT_OFFSET=1000), the real exporter with
examples/demo.yml, Prometheus with the rules of rules/, and Alertmanager wired to the
exporter.  It breaks Postfix with the helper, waits for the alert and the incident on the
status page, fixes Postfix, waits for the incident to close, and takes the demo down:
every demo process is gone, and the test stack (if it was up) still answers.

The fast test checks that examples/demo.yml is a valid configuration that covers every
section the demo promises and reads every secret from a file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import get_json, http, metric_values, wait
from stack import run_script, tool_env

from exporter.config import load

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "scripts" / "demo.sh"
DEMO_YML = ROOT / "examples" / "demo.yml"
OFFSET = 1000
#: The test stack's ports (scripts/teststack.sh, offset 0); the demo's are these + OFFSET.
BASE_PORTS = {
    "smtp": 2525,
    "smtp_expired": 2526,
    "smtp_selfsigned": 2527,
    "smtp_wronghost": 2528,
    "submission": 2587,
    "submission_signed": 2588,
    "inbound_verified": 2529,
    "smtps": 2465,
    "imap": 2143,
    "imaps": 2993,
    "lmtp": 2424,
    "dovecot_auth": 2499,
    "dns": 2053,
    "prometheus": 29090,
    "alertmanager": 29093,
    "dead_relay": 2999,
    "postgresql": 2432,
}
DEMO_PORTS = {name: port + OFFSET for name, port in BASE_PORTS.items()}
EXPORTER_PORT = 11587
EXPORTER = f"http://127.0.0.1:{EXPORTER_PORT}"
PROMETHEUS = f"http://127.0.0.1:{DEMO_PORTS['prometheus']}"
ALERTMANAGER = f"http://127.0.0.1:{DEMO_PORTS['alertmanager']}"
MX1 = f"mx1.example.test[127.0.0.1]:{DEMO_PORTS['smtp']}"
RULE_FILES = ("mail-recording.rules.yml", "mail-alerts.rules.yml", "mail-slo.rules.yml")


# --- the configuration ---------------------------------------------------------------------------


def demo_env(demo_dir: Path) -> dict[str, str]:
    """What demo.sh gives the exporter: MCE_DEMO_DIR with the secret files in it."""
    secrets = demo_dir / "secrets"
    secrets.mkdir(parents=True)
    for name in ("probe.password", "ops.password", "replica.password", "webhook.token"):
        (secrets / name).write_text(f"secret-{name}\n")
    return {**os.environ, "MCE_DEMO_DIR": str(demo_dir)}


def keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from keys(item)


def test_demo_yml_passes_config_check(tmp_path: Path) -> None:
    env = demo_env(tmp_path / "demo")
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.check", f"--config.file={DEMO_YML}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "configuration valid" in proc.stdout + proc.stderr
    # without the demo directory, every path that needs it is named
    env.pop("MCE_DEMO_DIR")
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.check", f"--config.file={DEMO_YML}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "demo.yml: webhook.bearer_token_file: environment variable MCE_DEMO_DIR is not set" in proc.stdout + (
        proc.stderr
    )


def test_demo_yml_covers_every_section_with_secrets_in_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    demo_dir = tmp_path / "demo"
    monkeypatch.setenv("MCE_DEMO_DIR", demo_env(demo_dir)["MCE_DEMO_DIR"])
    cfg = load(DEMO_YML)
    assert [d.domain for d in cfg.domains] == ["good.test"]
    assert cfg.global_.resolver.port == DEMO_PORTS["dns"]
    assert {e.name: (e.protocol, e.address, e.tls) for e in cfg.endpoints} == {
        "submission": ("smtp", f"127.0.0.1:{DEMO_PORTS['submission']}", "starttls"),
        "smtps": ("smtp", f"127.0.0.1:{DEMO_PORTS['smtps']}", "implicit"),
        "imap": ("imap", f"127.0.0.1:{DEMO_PORTS['imap']}", "starttls"),
        "imaps": ("imap", f"127.0.0.1:{DEMO_PORTS['imaps']}", "implicit"),
    }
    assert [(q.name, q.type, getattr(q, "config_directory", None)) for q in cfg.queues] == [
        ("demo-postfix", "postfix", f"{demo_dir}/stack/postfix/etc")
    ]
    assert [(r.name, r.send.address, r.send.rcpt_to) for r in cfg.routes] == [
        ("inbound", f"127.0.0.1:{DEMO_PORTS['smtp']}", "probe@example.test"),
        ("submission", f"127.0.0.1:{DEMO_PORTS['submission']}", "ops@example.test"),
    ]
    assert {s.name: s.incident_match for s in cfg.continuity.services} == {
        "inbound": {"domain": "good.test"},
        "submission": {"check": "submission"},
        "outbound": {"source": "demo-postfix"},
    }
    (dataset,) = cfg.continuity.datasets
    assert [b.type for b in dataset.backups] == ["file_mtime"]
    assert [r.type for r in dataset.replicas] == ["imap_canary"]
    assert cfg.continuity.reconcile.alertmanager_url == ALERTMANAGER
    assert cfg.webhook.bearer_token is not None
    assert cfg.webhook.bearer_token.reveal() == "secret-webhook.token"
    # no secret is written in the example: only *_file keys
    used = set(keys(yaml.safe_load(DEMO_YML.read_text())))
    assert used & {"password", "bearer_token"} == set()
    assert {"password_file", "bearer_token_file"} <= used


def test_demo_ports_match_demo_yml() -> None:
    """demo.sh and examples/demo.yml agree on the offset and the exporter's port."""
    script = DEMO.read_text()
    assert re.search(r"^PORT_OFFSET=(\d+)$", script, re.M).group(1) == str(OFFSET)  # type: ignore[union-attr]
    assert re.search(r"^EXPORTER_PORT=(\d+)$", script, re.M).group(1) == str(EXPORTER_PORT)  # type: ignore[union-attr]


# --- end to end ----------------------------------------------------------------------------------


def demo(demo_dir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(DEMO), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**tool_env(), "MCE_DEMO_DIR": str(demo_dir), "PYTHON": sys.executable},
        check=False,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def listening(port: int) -> bool:
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as fh:
        return any(line.split()[1] == want and line.split()[3] == "0A" for line in fh.readlines()[1:])


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def demo_pids(demo_dir: Path) -> dict[str, int]:
    stack = demo_dir / "stack"
    files = {
        "exporter": demo_dir / "exporter.pid",
        "postfix": stack / "postfix" / "spool" / "pid" / "master.pid",
        "dovecot": stack / "dovecot" / "run" / "master.pid",
        "unbound": stack / "unbound" / "unbound.pid",
        "prometheus": stack / "prometheus" / "prometheus.pid",
        "alertmanager": stack / "alertmanager" / "alertmanager.pid",
    }
    return {name: int(path.read_text().split()[0]) for name, path in files.items()}


def open_incidents(page: str) -> dict[str, list[str]]:
    """Service -> alert names of the status page's open incidents."""
    section = page.split("<h2>Open incidents", 1)[1]
    rows = re.findall(r"<tr>((?:<td>[^<]*</td>)+)</tr>", section)
    out = {}
    for row in rows:
        cells = re.findall(r"<td>([^<]*)</td>", row)
        out[cells[0]] = cells[5].split(", ")
    return out


def am_alerts(alertname: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"filter": f'alertname="{alertname}"', "active": "true"})
    return list(get_json(f"{ALERTMANAGER}/api/v2/alerts?{query}"))


def summed(name: str, **labels: str) -> float:
    text = http("GET", EXPORTER + "/metrics").text
    want = set(labels.items())
    return sum(v for k, v in metric_values(text, name).items() if want <= set(k))


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    """A fresh demo directory under /tmp (Postfix and Dovecot must reach it: not tmp_path, mode 0700)."""
    if os.geteuid() != 0:
        pytest.fail("the demo needs root (it starts Postfix and Dovecot)", pytrace=False)
    busy = [p for p in (EXPORTER_PORT, DEMO_PORTS["prometheus"], DEMO_PORTS["smtp"]) if listening(p)]
    if busy:
        pytest.fail(f"ports {busy} are in use: is a demo running? (scripts/demo.sh down)", pytrace=False)
    # One fixed path: the stack registers its Postfix config dir in /etc/postfix/main.cf.
    path = Path("/tmp/mce-demo-test")
    shutil.rmtree(path, ignore_errors=True)
    try:
        yield path
    finally:
        demo(path, "down", timeout=180)
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_demo_up_break_fix_down(demo_dir: Path) -> None:
    test_stack_was_up = run_script("status", timeout=60).returncode == 0

    # 1. up: URLs printed, the stack on shifted ports, the exporter, Prometheus with the rules
    out = ok(demo(demo_dir, "up"))
    for url in (f"{EXPORTER}/", f"{EXPORTER}/metrics", f"{PROMETHEUS}/targets", f"{PROMETHEUS}/alerts", ALERTMANAGER):
        assert url in out, out
    assert "shortened" in out
    stack_json = json.loads((demo_dir / "stack" / "stack.json").read_text())
    assert stack_json["ports"] == DEMO_PORTS
    assert stack_json["dead_mx"]["port"] == DEMO_PORTS["smtp"]
    assert stack_json["alertmanager"]["webhook_url"] == f"{EXPORTER}/alertmanager"

    targets = get_json(f"{PROMETHEUS}/api/v1/targets?state=active")["data"]["activeTargets"]
    assert [(t["labels"]["job"], t["labels"]["instance"], t["health"]) for t in targets] == [
        ("mail", f"127.0.0.1:{EXPORTER_PORT}", "up")
    ]
    groups = get_json(f"{PROMETHEUS}/api/v1/rules")["data"]["groups"]
    shipped = {
        (name, g["name"], len(g["rules"]))
        for name in RULE_FILES
        for g in yaml.safe_load((ROOT / "rules" / name).read_text())["groups"]
    }
    loaded = {(Path(g["file"]).name, g["name"], len(g["rules"])) for g in groups}
    assert loaded == shipped
    assert len(groups) == len(shipped)
    assert http("GET", f"{EXPORTER}/-/ready").status == 200
    assert summed("mail_exporter_build_info") == 1
    assert ok(demo(demo_dir, "up", timeout=120)).count("The demo is up") == 1  # idempotent

    # 2. break postfix: MailMxDown fires in Alertmanager, an incident opens on the status page
    ok(demo(demo_dir, "break", "postfix", timeout=120))
    alert = wait(
        lambda: [a for a in am_alerts("MailMxDown") if a["labels"].get("target") == MX1],
        120,
        "MailMxDown for the demo's mx1 in the demo Alertmanager",
    )[0]
    assert alert["labels"]["domain"] == "good.test"
    assert alert["status"]["state"] == "active"
    # MailMxAllDown fires at the same evaluation and may open the incident first
    wait(
        lambda: "MailMxDown" in open_incidents(http("GET", f"{EXPORTER}/").text).get("inbound", []),
        60,
        "an open incident of service inbound with MailMxDown on the status page",
    )
    # the incident metrics follow within a render of the continuity figures
    wait(lambda: summed("mail_incidents_open", service="inbound") == 1, 30, "mail_incidents_open to say 1")
    assert summed("mail_incidents_total", service="inbound") == 1

    # 3. fix postfix: the alert resolves, the incident closes with a recovery time
    ok(demo(demo_dir, "fix", "postfix", timeout=120))
    wait(lambda: not am_alerts("MailMxDown"), 90, "MailMxDown to resolve")
    wait(
        lambda: "<h2>Open incidents (0)</h2>" in http("GET", f"{EXPORTER}/").text,
        60,
        "every incident to close",
    )
    wait(lambda: summed("mail_incidents_open", service="inbound") == 0, 30, "mail_incidents_open to say 0")
    assert summed("mail_incident_recovery_seconds_count", service="inbound") == 1
    assert summed("mail_incidents_total", service="inbound") == 1

    # 4. down: every demo process is gone, the test stack is untouched
    pids = demo_pids(demo_dir)
    ok(demo(demo_dir, "down", timeout=180))
    assert {name for name, pid in pids.items() if alive(pid)} == set()
    assert [p for p in [*DEMO_PORTS.values(), EXPORTER_PORT] if listening(p)] == []
    if test_stack_was_up:
        assert run_script("status", timeout=60).returncode == 0
