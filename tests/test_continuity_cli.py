"""``mail-continuity-exporter incidents import|list|export``, and exact figures from imported history."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

from helpers import metric_values, one, run_exporter
from test_continuity_support import db_bytes_digest, db_dump, ts

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


YAML = """
# past incidents, from the old spreadsheet
- {service: inbound, severity: critical, start: "2026-03-01T10:00:00Z", end: "2026-03-01T10:45:00Z",
   labels: {alertname: MXDown, ticket: "INC-1"}}
- service: inbound
  severity: Warning
  start: 2026-04-02T08:00:00+02:00
  end: 1775111400
- {service: imap, start: 1775000000, end: 1775000300, labels: {drill: "true"}}
"""

CSV = """service,severity,start,end,labels
inbound,critical,2026-05-01T00:00:00Z,2026-05-01T00:10:00Z,"{""alertname"": ""SmtpDown""}"
imap,info,2026-05-02T00:00:00Z,2026-05-02T00:01:00Z,alertname=ImapSlow;team=mail
"""


def test_yaml_import_is_idempotent(tmp_path: Path) -> None:
    f = tmp_path / "history.yml"
    f.write_text(YAML)
    first = cli("incidents", "import", str(f), "--storage.path=data", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "imported 3, already present 0" in first.stdout
    dump, digest = db_dump(tmp_path / "data"), db_bytes_digest(tmp_path / "data")
    second = cli("incidents", "import", str(f), "--storage.path=data", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "imported 0, already present 3" in second.stdout
    assert db_dump(tmp_path / "data") == dump  # a second import changes nothing: not a row
    assert db_bytes_digest(tmp_path / "data") == digest  # not a byte
    listing = cli("incidents", "list", "--storage.path=data", cwd=tmp_path)
    assert listing.returncode == 0
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["ID", "SERVICE", "KIND", "SEVERITY", "START", "END", "DURATION", "SOURCE", "ALERTS"]
    assert "2026-03-01T10:00:00.000Z" in lines[1] and "45m00s" in lines[1] and "critical" in lines[1]
    # +02:00 is honoured: 08:00+02:00 is 06:00Z; Warning -> warning; the end was Unix seconds
    assert "2026-04-02T06:00:00.000Z" in listing.stdout and "warning" in listing.stdout
    assert "drill" in listing.stdout and "3 record(s)" in listing.stdout
    assert db_bytes_digest(tmp_path / "data") == digest  # listing reads only


def test_csv_import_and_export_round_trip(tmp_path: Path) -> None:
    f = tmp_path / "history.csv"
    f.write_text(CSV)
    assert "imported 2" in cli("incidents", "import", str(f), "--storage.path=a", cwd=tmp_path).stdout
    assert (
        "imported 0, already present 2" in cli("incidents", "import", str(f), "--storage.path=a", cwd=tmp_path).stdout
    )
    exported = cli("incidents", "export", "--format=csv", "--storage.path=a", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert [(r["service"], r["severity"], r["duration_seconds"]) for r in rows] == [
        ("inbound", "critical", "600.000"),
        ("imap", "info", "60.000"),
    ]
    assert json.loads(rows[1]["labels"]) == {"alertname": "ImapSlow", "team": "mail"}
    out = tmp_path / "export.csv"
    out.write_text(exported.stdout)
    # the export imports elsewhere, and then exports the same
    assert "imported 2" in cli("incidents", "import", str(out), "--storage.path=b", cwd=tmp_path).stdout
    again = cli("incidents", "export", "--format=csv", "--storage.path=b", cwd=tmp_path).stdout
    assert again == exported.stdout
    as_json = json.loads(cli("incidents", "export", "--format=json", "--storage.path=b", cwd=tmp_path).stdout)
    assert as_json[0]["start"] == "2026-05-01T00:00:00.000Z" and as_json[0]["duration_seconds"] == 600
    assert (
        cli("incidents", "export", "--storage.path=b", "--output=x.json", "--format=json", cwd=tmp_path).returncode == 0
    )
    assert json.loads((tmp_path / "x.json").read_text()) == as_json


def test_import_errors_write_nothing(tmp_path: Path) -> None:
    f = tmp_path / "bad.yml"
    f.write_text(
        """
- {service: inbound, start: "2026-03-01T10:00:00Z", end: "2026-03-01T09:00:00Z"}
- {service: inbound, start: "yesterday", end: "2026-03-01T09:00:00Z"}
- {service: "not a name", start: 1, end: 2, colour: red}
- {service: inbound, start: 2026-03-01 10:00:00, end: 1775000300}
- {service: inbound, start: "2026-03-01T10:00:00Z", end: "2026-03-01T11:00:00Z"}
"""
    )
    proc = cli("incidents", "import", str(f), "--storage.path=data", cwd=tmp_path)
    assert proc.returncode == 1
    err = proc.stderr
    assert "bad.yml line 2: end is before start" in err
    assert "bad.yml line 3: start: expected an RFC 3339 time" in err
    assert "bad.yml line 4: unknown key(s) colour" in err and "service: expected a service name" in err
    assert "bad.yml line 5: start: a time needs a zone" in err
    assert "nothing was written" in err
    assert not (tmp_path / "data").exists()
    cfg = tmp_path / "config.yml"
    cfg.write_text("continuity:\n  services:\n    - {name: outbound}\n")
    good = tmp_path / "good.yml"
    good.write_text(YAML)
    proc = cli("incidents", "import", str(good), "--storage.path=data", f"--config.file={cfg}", cwd=tmp_path)
    assert proc.returncode == 1 and "'inbound' is not in the configuration" in proc.stderr
    proc = cli("incidents", "import", str(good), "--storage.path=data", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0 and "all valid" in proc.stdout and not (tmp_path / "data").exists()
    assert cli("incidents", "list", "--storage.path=nowhere", cwd=tmp_path).returncode == 1


def test_help_and_existing_flags(tmp_path: Path) -> None:
    main_help = cli("--help", cwd=tmp_path)
    assert main_help.returncode == 0 and "incidents" in main_help.stdout and "--storage.path" in main_help.stdout
    assert "import" in cli("incidents", "--help", cwd=tmp_path).stdout
    assert cli("--version", cwd=tmp_path).returncode == 0


def test_exact_figures_from_imported_history(tmp_path: Path) -> None:
    """Known incidents in, exactly the hand-computed MTTR, MTBF, downtime and availability out."""
    now = float(int(time.time()))
    day = 86_400
    # all three well inside the 7-day window (so every window sees the same ones), all closed:
    #   I1: 2 d ago, 600 s
    #   I2: 1 d ago, 1,800 s           } overlap: I2 = [-86,400, -84,600], I3 = [-85,500, -84,300]
    #   I3: 1 d ago + 900 s, 1,200 s   }          union 2,100 s
    # downtime = 600 + 2,100 = 2,700 in every window
    # MTTR = (600 + 1,800 + 1,200) / 3 = 1,200 in every window
    # MTBF 7 d  = (604,800 - 2,700) / 3 = 200,700
    # MTBF 30 d = (2,592,000 - 2,700) / 3 = 863,100
    # MTBF 90 d = (7,776,000 - 2,700) / 3 = 2,591,100
    # availability = 1 - 2,700 / W
    spans = [(now - 2 * day, 600), (now - day, 1_800), (now - day + 900, 1_200)]
    f = tmp_path / "fixture.yml"
    f.write_text(
        "\n".join(f'- {{service: inbound, severity: critical, start: "{ts(s)}", end: "{ts(s + d)}"}}' for s, d in spans)
    )
    assert cli("incidents", "import", str(f), f"--storage.path={tmp_path / 'data'}", cwd=tmp_path).returncode == 0
    cfg = "continuity:\n  services:\n    - {name: inbound, incident_match: {service: inbound}}\n"
    with run_exporter(tmp_path, config_text=cfg) as exp:
        exp.wait_ready()
        text = exp.wait_for(lambda t: "mail_mttr_seconds" in t, timeout=15)
    expected = {
        "7d": (604_800, 200_700),
        "30d": (2_592_000, 863_100),
        "90d": (7_776_000, 2_591_100),
    }
    for window, (length, mtbf) in expected.items():
        assert one(metric_values(text, "mail_downtime_seconds"), service="inbound", window=window) == 2_700
        assert one(metric_values(text, "mail_mttr_seconds"), service="inbound", window=window) == 1_200
        assert one(metric_values(text, "mail_mtbf_seconds"), service="inbound", window=window) == mtbf
        assert (
            one(metric_values(text, "mail_availability_ratio"), service="inbound", window=window) == 1 - 2_700 / length
        )
    assert one(metric_values(text, "mail_incidents_total"), service="inbound", severity="critical") == 3
    assert (
        one(metric_values(text, "mail_incident_recovery_seconds_sum"), service="inbound", severity="critical") == 3_600
    )
