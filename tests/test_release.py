"""Release hygiene: one version source, a changelog section for it, a whole-project sdist.

The build itself (``python -m build`` plus an install of the wheel into a fresh
virtualenv) runs in CI through ``scripts/package.sh``; these tests keep the inputs of
that build honest on every test run.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import exporter

ROOT = Path(__file__).resolve().parent.parent
VERSION = exporter.__version__
#: Files that may spell out the version: its source and the changelog ...
VERSION_HOMES = {"exporter/__init__.py", "CHANGELOG.md"}
#: ... and the deployments that pin the image of this release, held to it below.
IMAGE_PINS = {
    "deploy/docker-compose.yml": re.compile(r"^\s*image: mail-continuity-exporter:(\S+)$", re.MULTILINE),
    "deploy/docker-compose.ha.yml": re.compile(r"^\s*image: mail-continuity-exporter:(\S+)$", re.MULTILINE),
    "deploy/kubernetes/kustomization.yaml": re.compile(r"^\s*newTag: (\S+)$", re.MULTILINE),
}


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30)
    return [line for line in out.stdout.splitlines() if line]


def test_version_is_semver() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:(?:a|b|rc)\d+)?", VERSION), VERSION


def test_changelog_opens_with_the_current_version() -> None:
    headings = re.findall(r"^## \[([^\]]+)\]", (ROOT / "CHANGELOG.md").read_text(), flags=re.MULTILINE)
    assert headings, "CHANGELOG.md has no version sections"
    assert headings[0] == VERSION, f"CHANGELOG.md's newest section is {headings[0]}, the code says {VERSION}"
    assert len(headings) == len(set(headings)), "a version appears twice in CHANGELOG.md"


def test_the_version_is_written_in_one_place() -> None:
    # Anything else that needs the version (package metadata, --version, the status page)
    # reads exporter.__version__; a second literal copy would drift at the next release.
    pattern = re.compile(rf"(?<![\w.]){re.escape(VERSION)}(?![\w.])")
    strays = []
    for name in tracked_files():
        if name in VERSION_HOMES or name in IMAGE_PINS or name.startswith("benchmarks/results/"):
            continue
        path = ROOT / name
        try:
            text = path.read_text()
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        strays.extend(f"{name}:{n}" for n, line in enumerate(text.splitlines(), 1) if pattern.search(line))
    assert not strays, f"version {VERSION} hard-coded outside {sorted(VERSION_HOMES)}: {strays}"


def test_package_metadata_reads_the_version_from_the_code() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text
    assert 'version = { attr = "exporter.__version__" }' in text


def test_sdist_manifest_ships_the_whole_project() -> None:
    manifest = (ROOT / "MANIFEST.in").read_text()
    for top in ("rules", "dashboards", "deploy", "docs", "examples", "tests", "scripts"):
        assert re.search(rf"^graft {top}$", manifest, flags=re.MULTILINE), f"MANIFEST.in does not graft {top}/"
    assert "LICENSE" in manifest and (ROOT / "LICENSE").is_file()


def test_deployments_pin_the_image_of_this_release() -> None:
    for name, pattern in IMAGE_PINS.items():
        tags = pattern.findall((ROOT / name).read_text())
        assert tags == [VERSION], f"{name}: image tag(s) {tags}, expected exactly [{VERSION!r}]"
