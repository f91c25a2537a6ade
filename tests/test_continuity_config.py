"""Validation of the continuity and webhook sections: every mistake reported with its key path."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from exporter import config
from exporter.continuity.incidents import Classifier, parse_maintenance
from exporter.core.errors import ConfigError

BAD = """
continuity:
  services:
    - {name: inbound, check_outage_threshold: 0}
    - {name: inbound}
  datasets:
    - {name: mailstore}
    - {name: mailstore}
  maintenance:
    - {service: inbound, start: "2030-01-05 22:00", end: "2030-01-06T02:00:00Z"}
    - {service: inbound, start: "2030-01-06T02:00:00Z", end: "2030-01-05T22:00:00Z"}
  reconcile: {alertmanager_url: "alertmanager:9093"}
webhook: {max_body_bytes: 10}
"""


def test_every_mistake_is_reported() -> None:
    with pytest.raises(ConfigError) as info:
        config.load_text(BAD, "c.yml")
    text = str(info.value)
    for expected in (
        "continuity.services[0].check_outage_threshold: expected at least 1, got 0",
        'continuity.services[1]: duplicate name "inbound" (also services[0])',
        'continuity.datasets[1]: duplicate name "mailstore" (also datasets[0])',
        'continuity.maintenance[0].start: expected an RFC 3339 time like "2030-01-05T22:00:00Z", '
        'got "2030-01-05 22:00"',
        "continuity.maintenance[1].end: expected a time after start",
        'continuity.reconcile.alertmanager_url: expected a URL like "http://alertmanager:9093"',
        "webhook.max_body_bytes: expected 1024 to 67108864",
    ):
        assert expected in text, text


def test_maintenance_windows_classify_alerts() -> None:
    cfg = config.load_text(
        """
continuity:
  services:
    - {name: inbound, incident_match: {service: inbound}}
    - {name: everything}
  maintenance:
    - {service: inbound, start: "2030-01-05T22:00:00Z", end: "2030-01-06T00:00:00+01:00"}
"""
    )
    windows = parse_maintenance(cfg.continuity.maintenance)
    assert windows[0].end - windows[0].start == 3_600  # 22:00Z to 23:00Z
    c = Classifier(cfg.continuity.services, windows)
    inside = windows[0].start + 60
    kinds = {a.service: a.kind for a in c.assign({"service": "inbound"}, inside)}
    assert kinds == {"inbound": "maintenance", "everything": "incident"}
    assert {a.kind for a in c.assign({"service": "inbound"}, windows[0].end)} == {"incident"}  # the end is excluded
    assert {a.kind for a in c.assign({"service": "inbound", "drill": "True"}, inside)} == {"drill"}
    assert [a.service for a in c.assign({"service": "outbound"}, inside)] == ["everything"]


ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "alertmanager-webhook.yml"


def test_receiver_example_is_in_the_docs_and_valid_for_alertmanager() -> None:
    doc = (ROOT / "docs" / "continuity.md").read_text()
    example = EXAMPLE.read_text()
    body = "\n".join(line for line in example.splitlines() if not line.startswith("#"))
    indented = "\n".join(("   " + line) if line else "" for line in body.strip().splitlines())
    assert indented in doc, "docs/continuity.md must show examples/alertmanager-webhook.yml (without its header)"
    amtool = shutil.which("amtool")
    assert amtool, "amtool missing: run scripts/teststack.sh install"
    proc = subprocess.run([amtool, "check-config", str(EXAMPLE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = yaml.safe_load(example)
    (hook,) = next(r for r in data["receivers"] if r["name"] == "mail-continuity-exporter")["webhook_configs"]
    assert hook["url"].endswith("/alertmanager") and hook["send_resolved"] is True
