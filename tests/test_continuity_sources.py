"""Backup and replica sources (files, commands), and the RPO they give, through the real scheduler."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter import config
from exporter.checks import BuildContext
from exporter.checks import build as build_checks
from exporter.config import CommandBackup, CommandReplica, FileMtimeBackup, TimestampFileBackup
from exporter.continuity.service import Continuity
from exporter.continuity.sources import SourceError, parse_lag, parse_timestamp, read_backup, read_command_lag
from exporter.core.scheduler import Scheduler
from exporter.core.snapshot import Snapshot

PY = sys.executable


def touch(path: Path, mtime: float) -> Path:
    path.write_bytes(b"backup")
    os.utime(path, (mtime, mtime))
    return path


async def test_file_mtime_takes_the_newest_match(tmp_path: Path) -> None:
    now = time.time()
    touch(tmp_path / "a.tar.zst", now - 500)
    touch(tmp_path / "b.tar.zst", now - 100)
    touch(tmp_path / "c.log", now)  # does not match
    (tmp_path / "d.tar.zst").mkdir()  # a directory: not a backup
    assert await read_backup(FileMtimeBackup("file_mtime", str(tmp_path / "*.tar.zst"))) == pytest.approx(now - 100)
    with pytest.raises(SourceError) as info:
        await read_backup(FileMtimeBackup("file_mtime", str(tmp_path / "*.nothing")))
    assert info.value.reason == "missing"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1767225600\n", 1767225600.0), ("1767225600.5", 1767225600.5), ("2026-01-01T00:00:00Z\n", 1767225600.0)],
)
async def test_timestamp_file(tmp_path: Path, text: str, expected: float) -> None:
    p = tmp_path / "last-success"
    p.write_text(text)
    assert await read_backup(TimestampFileBackup("timestamp_file", str(p))) == expected


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("yesterday", "parse"),
        ("", "parse"),
        ("-5", "parse"),
        (str(time.time() + 3_600), "invalid"),
        ("9" * 5_000, "parse"),
    ],
)
async def test_timestamp_file_rejects(tmp_path: Path, content: str, reason: str) -> None:
    p = tmp_path / "last-success"
    p.write_text(content)
    with pytest.raises(SourceError) as info:
        await read_backup(TimestampFileBackup("timestamp_file", str(p)))
    assert info.value.reason == reason


async def test_timestamp_file_missing(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        await read_backup(TimestampFileBackup("timestamp_file", str(tmp_path / "nope")))
    assert info.value.reason == "missing"


async def test_command_backup() -> None:
    ok = CommandBackup("command", (PY, "-c", "print(1767225600)"))
    assert await read_backup(ok) == 1767225600.0
    failing = CommandBackup("command", (PY, "-c", "import sys; sys.stderr.write('no snapshots\\n'); sys.exit(3)"))
    with pytest.raises(SourceError, match="exited with status 3: no snapshots") as info:
        await read_backup(failing)
    assert info.value.reason == "command"
    with pytest.raises(SourceError) as info:
        await read_backup(CommandBackup("command", ("/nonexistent/last-backup",)))
    assert info.value.reason == "command"


async def test_command_is_killed_at_its_timeout(tmp_path: Path) -> None:
    marker = tmp_path / "still-running"
    script = f"import time, pathlib; time.sleep(3); pathlib.Path({str(marker)!r}).write_text('x')"
    t0 = time.monotonic()
    with pytest.raises(SourceError) as info:
        await read_backup(CommandBackup("command", (PY, "-c", script), timeout=0.5))
    assert info.value.reason == "timeout"
    assert time.monotonic() - t0 < 2.5
    time.sleep(3)
    assert not marker.exists()  # killed, not left running


async def test_command_replica_lag() -> None:
    assert await read_command_lag(CommandReplica("command", (PY, "-c", "print(' 2.5 ')"))) == 2.5
    with pytest.raises(SourceError):
        await read_command_lag(CommandReplica("command", (PY, "-c", "print('-1')")))


def test_parsers() -> None:
    assert parse_timestamp(" 1767225600 ", "x") == 1767225600
    assert parse_lag("0", "x") == 0
    with pytest.raises(SourceError):
        parse_lag("nan", "x")
    with pytest.raises(SourceError):
        parse_timestamp("2026-01-01", "x")


def samples(snapshot: Snapshot, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for fam in text_string_to_metric_families(snapshot.render().decode()):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def only(values: dict[tuple[tuple[str, str], ...], float], **labels: str) -> float:
    found = [v for k, v in values.items() if set(labels.items()) <= set(k)]
    assert len(found) == 1, values
    return found[0]


async def test_rpo_through_checks(tmp_path: Path) -> None:
    """Replica healthy -> its lag; replica broken -> newest good backup; stale backups -> +Inf."""
    now = time.time()
    backups = tmp_path / "backups"
    backups.mkdir()
    touch(backups / "old.tar", now - 7_200)  # stale: older than max_age 1h
    stamp = tmp_path / "offsite"
    stamp.write_text(str(int(now - 600)))
    lag_file = tmp_path / "lag"
    lag_file.write_text("4.5")
    text = f"""
continuity:
  datasets:
    - name: mailstore
      rpo_target: 15m
      backups:
        - {{type: file_mtime, name: nightly, path: "{backups}/*.tar", max_age: 1h}}
        - {{type: timestamp_file, path: "{stamp}", max_age: 1h}}
      replicas:
        - {{type: command, name: standby, command: ["{PY}", "-c", "print(open('{lag_file}').read())"]}}
"""
    cfg = config.load_text(text)
    snapshot = Snapshot()
    cont = Continuity(str(tmp_path / "data"), snapshot)
    await cont.open(cfg)
    scheduler = Scheduler(snapshot)
    try:
        checks = [c for c in build_checks(cfg, BuildContext(continuity=cont)) if c.kind in ("backup", "replica")]
        assert sorted(c.key for c in checks) == [
            "backup/mailstore/nightly",
            "backup/mailstore/timestamp_file",
            "replica/mailstore/standby",
        ]
        scheduler.apply(checks)
        records = {c.key: await scheduler.run_once(c) for c in checks}
        assert records["backup/mailstore/nightly"].reason == "stale"
        assert records["backup/mailstore/timestamp_file"].result == "success"
        assert records["replica/mailstore/standby"].result == "success"
        assert only(samples(snapshot, "mail_rpo_estimate_seconds"), dataset="mailstore") == 4.5
        ups = samples(snapshot, "mail_backup_up")
        assert only(ups, backup="nightly") == 0 and only(ups, backup="timestamp_file") == 1
        # a stale backup still shows its time: a number to alert on, not a gap
        ts = samples(snapshot, "mail_backup_last_success_timestamp_seconds")
        assert only(ts, backup="nightly") == pytest.approx(now - 7_200)
        assert only(samples(snapshot, "mail_rpo_target_seconds"), dataset="mailstore") == 900

        lag_file.write_text("broken")  # the replica measurement fails: fall back to the freshest good backup
        await scheduler.run_once(next(c for c in checks if c.kind == "replica"))
        rpo = only(samples(snapshot, "mail_rpo_estimate_seconds"), dataset="mailstore")
        assert rpo == pytest.approx(time.time() - int(now - 600), abs=2)
        assert only(samples(snapshot, "mail_replication_up"), replica="standby") == 0

        stamp.write_text(str(int(now - 7_200)))  # now every backup is stale too: nothing to recover from
        await scheduler.run_once(next(c for c in checks if c.name.endswith("timestamp_file")))
        assert only(samples(snapshot, "mail_rpo_estimate_seconds"), dataset="mailstore") == math.inf
    finally:
        await scheduler.stop()
        await cont.close()
