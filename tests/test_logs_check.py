"""The ``log`` check kind: a source, the parsers and the cumulative state, through the scheduler.

Ground truth is a small mail log written by the test; the counters must equal it, survive
from run to run, and continue (not restart from the top of the file) after a restart.
"""

from __future__ import annotations

from pathlib import Path

from exporter import config
from exporter.checks import BuildContext
from exporter.checks import build as build_checks
from exporter.core.scheduler import Check, Scheduler
from exporter.core.snapshot import Snapshot

LINES = [
    "Dec  7 08:00:01 mx1 postfix-out/smtpd[11]: connect from client.test[192.0.2.1]",
    "Dec  7 08:00:02 mx1 postfix-out/smtpd[11]: disconnect from client.test[192.0.2.1] ehlo=1 quit=1 commands=2",
    "2026-12-07T08:00:03.250000+00:00 mx1 postfix/smtpd[12]: connect from other.test[192.0.2.2]",
    "Dec  7 08:00:04 mx1 kernel: something unrelated",
    "complete garbage without any syslog shape",
]


def config_for(path: Path) -> config.Config:
    return config.load_text(
        f"""
logs:
  - {{name: mail, type: file, path: "{path}", parsers: [postfix], start_at: beginning}}
"""
    )


def log_checks(cfg: config.Config, state_dir: Path) -> list[Check]:
    return [c for c in build_checks(cfg, BuildContext(state_dir=str(state_dir))) if c.kind == "log"]


def values(snapshot: Snapshot, family: str) -> dict[str, float]:
    out = {}
    for text in snapshot.render().decode().splitlines():
        if text.startswith(family + "{") or text.startswith(family + " "):
            name, _, value = text.rpartition(" ")
            out[name] = float(value)
    return out


async def test_counts_health_and_restart(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("\n".join(LINES) + "\n")
    cfg = config_for(log)
    snapshot = Snapshot()
    scheduler = Scheduler(snapshot)
    [check] = log_checks(cfg, tmp_path / "state")
    scheduler.apply([check])
    try:
        record = await scheduler.run_once(check)
        assert record.result == "success", record.error
        connects = values(snapshot, "mail_postfix_smtpd_connections_total")
        assert connects == {'mail_postfix_smtpd_connections_total{source="mail"}': 2.0}
        lines = values(snapshot, "mail_log_lines_total")
        assert lines['mail_log_lines_total{source="mail",program="postfix"}'] == 3
        assert lines['mail_log_lines_total{source="mail",program="other"}'] == 1
        assert lines['mail_log_lines_total{source="mail",program="malformed"}'] == 1
        assert lines['mail_log_lines_total{source="mail",program="exim"}'] == 0
        newest = values(snapshot, "mail_log_last_line_timestamp_seconds")
        assert newest['mail_log_last_line_timestamp_seconds{source="mail"}'] == 1796630403.25
        assert values(snapshot, "mail_log_up") == {'mail_log_up{source="mail"}': 1.0}

        with log.open("a") as fh:  # a second run counts only what is new
            fh.write(LINES[0] + "\n")
        await scheduler.run_once(check)
        assert (
            values(snapshot, "mail_postfix_smtpd_connections_total")[
                'mail_postfix_smtpd_connections_total{source="mail"}'
            ]
            == 3.0
        )
    finally:
        await scheduler.stop()

    # A restart: a new check on the same storage continues after the last counted line.
    with log.open("a") as fh:
        fh.write(LINES[2] + "\n")
    snapshot2 = Snapshot()
    scheduler2 = Scheduler(snapshot2)
    [again] = log_checks(cfg, tmp_path / "state")
    scheduler2.apply([again])
    try:
        await scheduler2.run_once(again)
        assert values(snapshot2, "mail_postfix_smtpd_connections_total") == {
            'mail_postfix_smtpd_connections_total{source="mail"}': 1.0
        }
    finally:
        await scheduler2.stop()


async def test_a_missing_file_fails_with_its_reason_and_keeps_the_series(tmp_path: Path) -> None:
    cfg = config_for(tmp_path / "absent.log")
    snapshot = Snapshot()
    scheduler = Scheduler(snapshot)
    [check] = log_checks(cfg, tmp_path / "state")
    scheduler.apply([check])
    try:
        record = await scheduler.run_once(check)
        assert record.result == "failure" and record.reason == "missing"
        assert values(snapshot, "mail_log_up") == {'mail_log_up{source="mail"}': 0.0}
        assert values(snapshot, "mail_log_lines_total")['mail_log_lines_total{source="mail",program="postfix"}'] == 0
    finally:
        await scheduler.stop()


async def test_a_removed_check_closes_its_source(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text(LINES[0] + "\n")
    snapshot = Snapshot()
    scheduler = Scheduler(snapshot)
    [check] = log_checks(config_for(log), tmp_path / "state")
    scheduler.apply([check])
    await scheduler.run_once(check)
    closed = []
    assert check.on_close is not None
    original = check.on_close

    async def spy() -> None:
        closed.append(True)
        await original()

    check.on_close = spy
    scheduler.apply([])
    await scheduler.stop()
    assert closed == [True]
