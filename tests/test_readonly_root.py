"""The exporter on a read-only root filesystem, as ``docker run --read-only`` runs the image.

There is no Docker daemon here, so the test builds the same conditions by hand: a private
mount namespace (``unshare --mount``) in which every mount is remounted read-only, except
a bind mount of the storage directory, and the exporter runs as the image's unprivileged
uid 10587 with the storage directory as its working directory (the image's WORKDIR).
It must then serve /metrics, accept an Alertmanager notification and store the incident
durably, and log no write error.  The namespace setup proves itself first: as uid 10587,
a world-writable directory outside the storage (and /tmp) must refuse a write, and the
storage must accept one.

Root is needed for the namespace; the test skips, saying why, only where unshare is not
permitted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_port, http, metric_values, one, readable_source
from test_continuity_support import alert_keys, am_alert, body, payload, post

UID = 10587
TOKEN = "readonly-root-token-5e7a"
CONFIG = f"""
global: {{interval: 1h, timeout: 5s}}
continuity:
  services:
    - {{name: inbound, incident_match: {{service: inbound}}}}
webhook:
  bearer_token: "{TOKEN}"
"""

# Runs as root inside the new mount namespace, then execs the exporter as uid 10587.
SETUP = r"""
set -eu
storage=$1 outside=$2 hide=$3 prefix=$4 keep=$5
shift 5
if [ -n "$hide" ]; then
  # the interpreter lives under a directory uid 10587 cannot enter (pyenv in /root, 0700):
  # cover that directory with an empty traversable tmpfs and bind the interpreter back
  mount --bind "$prefix" "$keep"
  mount -t tmpfs -o mode=0755,size=1m tmpfs "$hide"
  mkdir -p "$prefix"
  mount --bind "$keep" "$prefix"
fi
mount --bind "$storage" "$storage"
awk '{print $2}' /proc/self/mounts | sort -u | while read -r m; do
  [ "$m" = "$storage" ] || mount -o remount,bind,ro "$m" 2>/dev/null || true
done
as_user() { setpriv --reuid="$UID_" --regid="$UID_" --clear-groups --no-new-privs "$@"; }
for place in "$outside" /tmp /dev/shm; do
  if as_user touch "$place/ro-probe" 2>/dev/null; then echo "setup: $place is writable" >&2; exit 97; fi
done
as_user touch "$storage/rw-probe" || { echo "setup: $storage is not writable" >&2; exit 98; }
rm "$storage/rw-probe"
cd "$storage"
exec setpriv --reuid="$UID_" --regid="$UID_" --clear-groups --no-new-privs "$@"
"""


def _unshare_refusal() -> str | None:
    """Why a mount namespace cannot be made here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root to create a mount namespace (unshare --mount)"
    if not (shutil.which("unshare") and shutil.which("setpriv")):
        return "unshare or setpriv (util-linux) missing"
    proc = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True, timeout=30, check=False)
    return f"unshare --mount not permitted: {proc.stderr.strip()}" if proc.returncode else None


def _closed_ancestor(path: Path) -> Path | None:
    """The outermost directory on the way to ``path`` that others may not enter."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not os.stat(parent).st_mode & 0o001:
            return parent
    return None


@pytest.fixture
def workdir() -> Iterator[Path]:
    # not pytest's tmp_path: its parents are 0700 root, and uid 10587 must reach the storage
    top = Path(tempfile.mkdtemp(prefix="mce-readonly-"))
    try:
        top.chmod(0o755)
        yield top
    finally:
        shutil.rmtree(top)


@contextlib.contextmanager
def readonly_exporter(top: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    storage, outside, keep = top / "storage", top / "outside", top / "python-view"
    for d in (storage, outside, keep):
        d.mkdir()
    os.chown(storage, UID, UID)
    outside.chmod(0o777)  # writable by anyone: only the read-only mount may stop the exporter
    (top / "config.yml").write_text(CONFIG)
    prefix = Path(sys.base_prefix)
    hide = _closed_ancestor(prefix)
    argv = [
        "unshare",
        "--mount",
        "--propagation=private",
        "sh",
        "-c",
        SETUP,
        "setup",
        str(storage),
        str(outside),
        str(hide or ""),
        str(prefix),
        str(keep),
        sys.executable,
        "-m",
        "exporter",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.path={storage}",
        f"--config.file={top / 'config.yml'}",
    ]
    src = readable_source(top)  # the checkout may be in a directory uid 10587 cannot enter
    env = {
        **os.environ,
        "UID_": str(UID),
        "HOME": str(storage),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": str(src),
    }
    with (top / "exporter.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=top)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(OSError):
            if http("GET", f"http://127.0.0.1:{port}/-/ready", timeout=2).status == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"not ready after 30 s:\n{log.read_text(errors='replace')}")


def test_exporter_runs_and_stores_incidents_on_a_readonly_root(workdir: Path) -> None:
    refusal = _unshare_refusal()
    if refusal is not None:
        pytest.skip(refusal)
    port, log = free_port(), workdir / "exporter.log"
    base = f"http://127.0.0.1:{port}"
    starts = int(time.time()) - 300
    with readonly_exporter(workdir, port) as proc:
        _wait_ready(proc, port, log)
        metrics = http("GET", base + "/metrics")
        assert metrics.status == 200
        assert one(metric_values(metrics.text, "mail_exporter_config_last_reload_successful")) == 1.0
        alert = am_alert("ro-1", {"service": "inbound", "severity": "critical"}, starts)
        status, _ = post(base + "/alertmanager", body(payload([alert])), {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200  # acknowledged only after the commit to the store
        open_series = 'mail_incidents_open{service="inbound",severity="critical"} 1.0'
        deadline = time.monotonic() + 20
        while open_series not in http("GET", base + "/metrics").text:
            assert time.monotonic() < deadline, http("GET", base + "/metrics").text[-2000:]
            time.sleep(0.2)
        proc.terminate()
        assert proc.wait(15) == 0, log.read_text(errors="replace")
    storage = workdir / "storage"
    assert alert_keys(storage) == [("ro-1", starts * 1000)]
    assert {p.stat().st_uid for p in storage.iterdir()} == {UID}
    assert list((workdir / "outside").iterdir()) == []
    text = log.read_text(errors="replace")
    for sign in ("Read-only file system", "Permission denied", "Traceback"):
        assert sign not in text, text
