"""scripts/audit.py: the dependency-audit policy, against a loopback stand-in for PyPI's JSON API.

A known advisory on a pinned version fails; a pin that is not the latest release (and so
cannot be audited through the project endpoint) is reported and passes, unless --strict.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROJECTS = {
    "goodpkg": {"info": {"version": "1.2.0"}, "vulnerabilities": []},
    "badpkg": {
        "info": {"version": "2.0.0"},
        "vulnerabilities": [
            {"id": "PYSEC-2026-1", "aliases": ["CVE-2026-0001"], "fixed_in": ["2.0.1"], "withdrawn": None},
            {"id": "PYSEC-2026-2", "aliases": [], "fixed_in": [], "withdrawn": "2026-01-01T00:00:00"},
        ],
    },
    "oldpkg": {"info": {"version": "9.0.0"}, "vulnerabilities": []},
}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        name = self.path.removeprefix("/pypi/").removesuffix("/json")
        doc = PROJECTS.get(name)
        if doc is None:
            self.send_error(404)
            return
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def pypi() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def audit(tmp_path: Path, pypi: str, lock: str, *extra: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "requirements.lock"
    path.write_text(lock)
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "audit.py"), str(path), "--no-pip-audit", "--pypi-url", pypi, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_latest_pins_without_advisories_pass(tmp_path: Path, pypi: str) -> None:
    out = audit(tmp_path, pypi, "goodpkg==1.2.0 \\\n    --hash=sha256:00\n")
    assert out.returncode == 0, out.stderr
    assert "1 audited, 0 not auditable here, 0 known advisories" in out.stdout


def test_a_known_advisory_fails_and_names_it(tmp_path: Path, pypi: str) -> None:
    out = audit(tmp_path, pypi, "goodpkg==1.2.0\nbadpkg==2.0.0\n")
    assert out.returncode == 1
    assert "badpkg==2.0.0: PYSEC-2026-1 CVE-2026-0001 (fixed in 2.0.1)" in out.stderr
    assert "PYSEC-2026-2" not in out.stderr  # withdrawn advisories do not count
    assert "2 audited, 0 not auditable here, 1 known advisories" in out.stdout


def test_a_pin_behind_the_latest_release_is_reported_not_failed(tmp_path: Path, pypi: str) -> None:
    # Time passing (a new upstream release) must not turn CI red.
    out = audit(tmp_path, pypi, "goodpkg==1.2.0\noldpkg==8.0.0\n")
    assert out.returncode == 0, out.stderr
    assert "NOT AUDITED here: oldpkg==8.0.0: only the latest release (9.0.0) is answered here" in out.stdout
    assert "1 audited, 1 not auditable here, 0 known advisories" in out.stdout


def test_strict_fails_on_a_pin_that_could_not_be_audited(tmp_path: Path, pypi: str) -> None:
    out = audit(tmp_path, pypi, "oldpkg==8.0.0\n", "--strict")
    assert out.returncode == 1
    assert "some pins could not be audited" in out.stderr


def test_an_unreachable_index_is_reported_not_failed(tmp_path: Path, pypi: str) -> None:
    out = audit(tmp_path, pypi, "missingpkg==1.0\n")
    assert out.returncode == 0, out.stderr
    assert "NOT AUDITED here: missingpkg==1.0" in out.stdout


def test_a_lock_without_pins_is_an_error(tmp_path: Path, pypi: str) -> None:
    out = audit(tmp_path, pypi, "# nothing\n")
    assert out.returncode != 0
    assert "no pins found" in out.stderr
