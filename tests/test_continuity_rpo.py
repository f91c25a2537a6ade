"""RPO against real Dovecot: an IMAP canary on a replica fed at a known lag, and the backup fallback.

The "replica" is a second Dovecot mailbox (replica@example.test) that a copier thread in
this test fills from the primary mailbox (probe@example.test) exactly ``LAG`` seconds
after it sees each new message there.  Each run uses its own folder on both mailboxes
and deletes them at the end.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import metric_values, one, run_exporter
from stack import Stack

pytestmark = pytest.mark.slow

LAG = 3.0
PRIMARY = "probe@example.test"
REPLICA = "replica@example.test"


def imap(stack: Stack, user: str) -> imaplib.IMAP4_SSL:
    ctx = ssl.create_default_context(cafile=stack.ca_file)
    conn = imaplib.IMAP4_SSL(stack.host, stack.port("imaps"), ssl_context=ctx, timeout=10)
    conn.login(user, stack.password(user))
    return conn


class Copier(threading.Thread):
    """Copies every new message of the primary folder to the replica folder, ``lag`` seconds after seeing it."""

    def __init__(self, stack: Stack, folder: str, lag: float) -> None:
        super().__init__(daemon=True)
        self.stack, self.folder, self.lag = stack, folder, lag
        self.stop_event = threading.Event()
        self.copied = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _run(self) -> None:
        src = imap(self.stack, PRIMARY)
        dst = imap(self.stack, REPLICA)
        src.select(f'"{self.folder}"')
        seen: set[bytes] = set()
        pending: list[tuple[float, bytes]] = []
        deadline = time.monotonic() + 120  # bounded, whatever happens
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            src.noop()
            _, data = src.uid("SEARCH", None, "ALL")
            for uid in (data[0] or b"").split():
                if uid in seen:
                    continue
                seen.add(uid)
                _, msg = src.uid("FETCH", uid, "(BODY.PEEK[])")
                raw = next((part[1] for part in msg if isinstance(part, tuple)), None)
                if raw is not None:
                    pending.append((time.monotonic() + self.lag, raw))
            now = time.monotonic()
            for due, raw in [p for p in pending if p[0] <= now]:
                dst.append(f'"{self.folder}"', None, None, raw)
                pending.remove((due, raw))
                self.copied += 1
            time.sleep(0.02)
        for conn in (src, dst):
            with contextlib.suppress(Exception):
                conn.logout()


@contextlib.contextmanager
def canary_folders(stack: Stack, folder: str) -> Iterator[None]:
    for user in (PRIMARY, REPLICA):
        conn = imap(stack, user)
        typ, _ = conn.create(f'"{folder}"')
        assert typ == "OK"
        conn.logout()
    try:
        yield
    finally:
        for user in (PRIMARY, REPLICA):
            with contextlib.suppress(Exception):
                conn = imap(stack, user)
                conn.delete(f'"{folder}"')
                conn.logout()


def folder_count(stack: Stack, user: str, folder: str) -> int:
    conn = imap(stack, user)
    try:
        typ, data = conn.select(f'"{folder}"', readonly=True)
        assert typ == "OK"
        return int(data[0] or 0)
    finally:
        conn.logout()


def endpoint(stack: Stack, user: str, folder: str, password: str | None = None) -> str:
    pw = password if password is not None else stack.password(user)
    return (
        f'{{address: "{stack.host}:{stack.port("imaps")}", username: "{user}", password: "{pw}", '
        f'folder: "{folder}", tls: implicit, tls_config: {{ca_file: "{stack.ca_file}"}}}}'
    )


def test_rpo_follows_replica_lag_then_falls_back_to_backup_age(stack: Stack, tmp_path: Path) -> None:
    folder = f"Canary-{uuid.uuid4().hex[:8]}"
    backups = tmp_path / "backups"
    backups.mkdir()
    newest = time.time() - 1_000
    for i, age in enumerate((5_000, 1_000)):
        f = backups / f"mail-{i}.tar.zst"
        f.write_bytes(b"x")
        os.utime(f, (time.time() - age, time.time() - age))
    os.utime(backups / "mail-1.tar.zst", (newest, newest))
    cfg = f"""
global: {{interval: 1s, timeout: 5s}}
continuity:
  datasets:
    - name: mailstore
      rpo_target: 15m
      backups:
        - {{type: file_mtime, name: nightly, path: "{backups}/*.tar.zst", max_age: 1d}}
      replicas:
        - type: imap_canary
          name: dr
          interval: 2s
          timeout: 6s
          poll_interval: 50ms
          primary: {endpoint(stack, PRIMARY, folder)}
          replica: {endpoint(stack, REPLICA, folder)}
        - type: imap_canary
          name: wrong-password
          interval: 2s
          timeout: 6s
          primary: {endpoint(stack, PRIMARY, folder)}
          replica: {endpoint(stack, REPLICA, folder, "not-the-password")}
"""
    with canary_folders(stack, folder):
        copier = Copier(stack, folder, LAG)
        copier.start()
        try:
            with run_exporter(tmp_path, config_text=cfg) as exp:
                exp.wait_ready()

                # three canary rounds: the estimate is the lag, and reads 3 s within 10 %
                readings: list[float] = []
                seen_runs: set[float] = set()
                deadline = time.monotonic() + 60
                text = ""
                while len(readings) < 3 and time.monotonic() < deadline:
                    text = exp.metrics()
                    run = metric_values(text, "mail_exporter_check_last_run_timestamp_seconds").get(
                        (("check", "replica"), ("name", "mailstore/dr"))
                    )
                    lags = metric_values(text, "mail_replication_lag_seconds")
                    if run is not None and run not in seen_runs and lags:
                        seen_runs.add(run)
                        lag = one(lags, replica="dr")
                        assert one(metric_values(text, "mail_rpo_estimate_seconds"), dataset="mailstore") == lag
                        readings.append(lag)
                    time.sleep(0.2)
                print(f"replication lag measured {readings} for an injected {LAG}s")
                assert len(readings) == 3, readings
                assert LAG * 0.9 <= sorted(readings)[1] <= LAG * 1.1, readings  # the median
                assert all(LAG * 0.9 <= r <= LAG * 1.25 for r in readings), readings
                assert one(metric_values(text, "mail_rpo_target_seconds"), dataset="mailstore") == 900
                assert one(metric_values(text, "mail_replication_up"), replica="dr") == 1
                # the newest backup is exactly the file's mtime
                ts = one(metric_values(text, "mail_backup_last_success_timestamp_seconds"), backup="nightly")
                assert ts == pytest.approx(newest, abs=1e-3)
                assert one(metric_values(text, "mail_backup_up"), backup="nightly") == 1
                # the replica with a wrong password is broken and never counts
                text = exp.wait_for(lambda t: 'replica="wrong-password"} 0.0' in t, timeout=20)
                assert ("replica", "wrong-password") not in {
                    kv for k in metric_values(text, "mail_replication_lag_seconds") for kv in k
                }
                page = exp.get("/").text
                assert "LOGIN rejected" in page and "not-the-password" not in page

                # the copier stops: the next canary is never seen, the replica is broken, RPO = backup age
                copier.stop_event.set()
                text = exp.wait_for(
                    lambda t: one(metric_values(t, "mail_replication_up"), replica="dr") == 0, timeout=30
                )
                rpo = one(metric_values(text, "mail_rpo_estimate_seconds"), dataset="mailstore")
                assert rpo == pytest.approx(time.time() - newest, abs=3.0)
                assert not any(("replica", "dr") in k for k in metric_values(text, "mail_replication_lag_seconds"))
                assert "canary not seen on the replica" in exp.get("/").text
            assert copier.error is None, copier.error
            assert copier.copied >= 1
            # canaries seen on the replica were deleted from the primary
            assert folder_count(stack, PRIMARY, folder) <= 1  # at most the last, never-seen one
        finally:
            copier.stop_event.set()
            copier.join(10)
