"""The exporter as a user runs it: a real process, real sockets, real signals."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import free_port, metric_values, one, run_exporter

REFUSED_A = f"127.0.0.1:{free_port()}"
REFUSED_B = f"127.0.0.1:{free_port()}"

GOOD = f"""
global: {{interval: 1s, timeout: 2s}}
endpoints:
  - {{name: a, protocol: smtp, address: "{REFUSED_A}", tls: none}}
"""
GOOD_TWO = GOOD + f'  - {{name: b, protocol: smtp, address: "{REFUSED_B}", tls: none}}\n'
BROKEN = """
global: {interval: soon}
endpoints:
  - {name: a, protocol: smtp, adress: x}
"""


def every_check_ran(text: str) -> bool:
    runs: dict[str, float] = {}
    for labels, value in metric_values(text, "mail_exporter_check_runs_total").items():
        name = dict(labels)["name"]
        runs[name] = runs.get(name, 0) + value
    return bool(runs) and min(runs.values()) >= 1


def test_default_config_serves_metrics_that_promtool_accepts(tmp_path: Path) -> None:
    with run_exporter(tmp_path) as exp:
        exp.wait_ready()
        assert exp.get("/-/healthy").status == 200
        text = exp.wait_for(every_check_ran, timeout=40)
        assert one(metric_values(text, "mail_exporter_build_info"), version=__import__("exporter").__version__) == 1
        assert one(metric_values(text, "mail_exporter_config_last_reload_successful")) == 1
        assert "mail_smtp_up" in text
        promtool = shutil.which("promtool")
        assert promtool, "promtool missing: run scripts/teststack.sh install"
        check = subprocess.run(
            [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30, check=False
        )
        assert check.returncode == 0, check.stdout + check.stderr
        assert exp.metrics_gzip().decode().count("# TYPE mail_smtp_up gauge") == 1
        status = exp.get("/").text
        assert "local-smtp" in status
    assert "using the embedded default config" in exp.logs()


def test_missing_component_is_a_failing_check_with_reason(tmp_path: Path) -> None:
    with run_exporter(tmp_path, config_text=GOOD) as exp:
        exp.wait_ready()
        text = exp.wait_for(lambda t: 'reason="refused"} 1' in t or 'reason="refused"} 2' in t)
        assert one(metric_values(text, "mail_smtp_up"), check="a") == 0
        assert one(metric_values(text, "mail_probe_failures_total"), check="a", reason="timeout") == 0
        page = exp.get("/").text
        assert "refused" in page and "failure" in page


def test_bad_reload_keeps_old_checks_and_good_reload_recovers(tmp_path: Path) -> None:
    with run_exporter(tmp_path, config_text=GOOD) as exp:
        exp.wait_ready()
        exp.wait_for(lambda t: 'name="a",result="failure"} 2' in t)
        cfg = tmp_path / "config.yml"
        cfg.write_text(BROKEN)
        resp = exp.post("/-/reload")
        assert resp.status == 500
        assert 'global.interval: expected a duration like "30s", got "soon"' in resp.text
        assert "endpoints[0].adress: unknown key" in resp.text
        text = exp.metrics()
        assert one(metric_values(text, "mail_exporter_config_last_reload_successful")) == 0
        runs_before = one(metric_values(text, "mail_exporter_check_runs_total"), name="a", result="failure")
        time.sleep(2.5)
        text = exp.metrics()
        assert one(metric_values(text, "mail_exporter_check_runs_total"), name="a", result="failure") > runs_before
        assert "FAILED" in exp.get("/").text
        # A good config via SIGHUP swaps in, and the reload metric goes back to 1.
        cfg.write_text(GOOD_TWO)
        exp.signal(signal.SIGHUP)
        text = exp.wait_for(lambda t: "mail_exporter_config_last_reload_successful 1.0" in t and 'name="b"' in t)
        assert one(metric_values(text, "mail_exporter_checks"), check="smtp") == 2
        ts = one(metric_values(text, "mail_exporter_config_last_reload_success_timestamp_seconds"))
        assert abs(ts - time.time()) < 10


def test_reload_requires_post(tmp_path: Path) -> None:
    with run_exporter(tmp_path, config_text=GOOD) as exp:
        exp.wait_ready()
        assert exp.get("/-/reload").status == 405


def test_sigterm_shuts_down_gracefully(tmp_path: Path) -> None:
    with run_exporter(tmp_path, config_text=GOOD) as exp:
        exp.wait_ready()
        t0 = time.monotonic()
        exp.signal(signal.SIGTERM)
        assert exp.proc.wait(10) == 0
        assert time.monotonic() - t0 < 5
        assert "shutting down" in exp.logs()
        assert "Traceback" not in exp.logs()


def test_invalid_config_at_startup_exits_1_with_every_error(tmp_path: Path) -> None:
    with run_exporter(tmp_path, config_text=BROKEN) as exp:
        assert exp.proc.wait(20) == 1
        logs = exp.logs()
        assert "config.yml: global.interval" in logs and "config.yml: endpoints[0].adress" in logs
        assert "Traceback" not in logs


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_log_formats(tmp_path: Path, fmt: str) -> None:
    with run_exporter(tmp_path, f"--log.format={fmt}", config_text=GOOD) as exp:
        exp.wait_ready()
    line = next(x for x in exp.logs().splitlines() if "listening" in x)
    if fmt == "json":
        import json

        assert json.loads(line)["msg"] == "listening"
    else:
        assert "msg=listening" in line and "level=info" in line


def test_bad_listen_address(tmp_path: Path) -> None:
    with run_exporter(tmp_path, "--web.listen-address=nonsense", config_text=GOOD) as exp:
        assert exp.proc.wait(20) == 2
        assert "expected [HOST]:PORT" in exp.logs()
