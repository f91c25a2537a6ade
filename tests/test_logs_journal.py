"""The journal log source on real journal files.

The files are written by ``systemd-journal-remote --output=FILE.journal -`` from the
journal export format on its stdin (Debian's ``systemd-journal-remote``, installed by
``scripts/teststack.sh install``), and read back by the source through the real
``journalctl``.  A second run of systemd-journal-remote on the same file appends to it,
which is how new entries "arrive" between reads.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
from pathlib import Path

import pytest

from exporter.config import JournalLog
from exporter.logs.position import PositionStore
from exporter.logs.record import LogRecord
from exporter.logs.sources import SOURCES, LogSourceError
from exporter.logs.sources.journal import MAX_MESSAGE, JournalSource, Skipped, split_entries


def _journal_remote() -> str | None:
    for path in ("/lib/systemd/systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote"):
        if os.access(path, os.X_OK):
            return path
    return shutil.which("systemd-journal-remote")


REMOTE = _journal_remote()
JOURNALCTL = shutil.which("journalctl")

needs_journal = pytest.mark.skipif(
    REMOTE is None or JOURNALCTL is None,
    reason="systemd-journal-remote (Debian package systemd-journal-remote) and journalctl are needed to "
    "write and read real journal files; scripts/teststack.sh install installs them",
)

BOOT = "0123456789abcdef0123456789abcdef"
T0 = 1_765_094_400_000_000  # 2025-12-07T08:00:00Z in microseconds


def export_entry(fields: dict[str, str | bytes]) -> bytes:
    """One entry in the journal export format (binary-safe fields for bytes with control characters)."""
    out = b""
    for key, value in fields.items():
        raw = value.encode() if isinstance(value, str) else value
        if any(b < 0x20 for b in raw) or isinstance(value, bytes):
            out += key.encode() + b"\n" + struct.pack("<Q", len(raw)) + raw + b"\n"
        else:
            out += key.encode() + b"=" + raw + b"\n"
    return out + b"\n"


def entry(
    n: int,
    message: str | bytes,
    ident: str = "postfix/smtpd",
    unit: str = "postfix@-.service",
    pid: int | None = 1000,
    host: str = "mx1",
) -> dict[str, str | bytes]:
    fields: dict[str, str | bytes] = {
        "__REALTIME_TIMESTAMP": str(T0 + n * 1_000_000),
        "__MONOTONIC_TIMESTAMP": str(1_000_000 + n),
        "_BOOT_ID": BOOT,
        "_HOSTNAME": host,
        "SYSLOG_IDENTIFIER": ident,
        "_SYSTEMD_UNIT": unit,
        "_COMM": ident.rsplit("/", 1)[-1],
        "PRIORITY": "6",
        "MESSAGE": message,
    }
    if pid is not None:
        fields["_PID"] = str(pid)
    return fields


def write_journal(path: Path, entries: list[dict[str, str | bytes]]) -> None:
    """Write (or append) ``entries`` to the journal file ``path`` with systemd-journal-remote."""
    import subprocess

    assert REMOTE is not None
    data = b"".join(export_entry(e) for e in entries)
    proc = subprocess.run([REMOTE, f"--output={path}", "-"], input=data, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert f"writing {len(entries)} entries".encode() in proc.stderr, proc.stderr.decode()


def record(n: int, message: str, ident: str = "postfix/smtpd", pid: int | None = 1000) -> LogRecord:
    return LogRecord((T0 + n * 1_000_000) / 1e6, "mx1", ident, pid, message)


def source(tmp_path: Path, positions: PositionStore | None = None, **kw: object) -> JournalSource:
    kw.setdefault("files", (str(tmp_path / "a.journal"),))
    kw.setdefault("start_at", "beginning")
    cfg = JournalLog(name="journal", type="journal", **kw)  # type: ignore[arg-type]
    src = SOURCES["journal"](cfg, positions if positions is not None else PositionStore(tmp_path / "pos"))
    assert isinstance(src, JournalSource)
    return src


MIXED = [
    entry(1, "connect from a.example[192.0.2.1]", pid=101),
    entry(2, "Started Session 7 of user root.", ident="systemd", unit="init.scope", pid=1),
    entry(3, "4F2A1B: removed", ident="postfix/qmgr", pid=102),
    entry(4, "Login: user=<u1>", ident="dovecot", unit="dovecot.service", pid=103),
    entry(5, "disconnect from a.example[192.0.2.1] ehlo=1 quit=1 commands=2", pid=101),
]


# --- pure splitting ----------------------------------------------------------------------------------


def test_split_entries_skips_long_lines_with_their_cursor() -> None:
    long = b'{"MESSAGE":"' + b"x" * 300 + b'","__CURSOR":"s=1;i=2"}'
    data = b'{"__CURSOR":"s=1;i=1"}\n' + long + b"\n" + b'{"__CURSOR":"s=1;i=3"}\npartial'
    assert split_entries(data, limit=100) == [b'{"__CURSOR":"s=1;i=1"}', Skipped("s=1;i=2"), b'{"__CURSOR":"s=1;i=3"}']
    # A cursor spelled inside a message is escaped, so it is not taken for the entry's own.
    fake = b'{"MESSAGE":"' + b"y" * 300 + b' ,\\"__CURSOR\\":\\"evil\\""}\n'
    assert split_entries(fake, limit=100) == [Skipped(None)]


def test_split_entries_across_chunks() -> None:
    from exporter.logs.sources.journal import _Splitter

    long = b'{"A":"' + b"z" * 5000 + b'","__CURSOR":"s=9;i=9"}\n{"__CURSOR":"s=9;i=10"}\n'
    splitter = _Splitter(1000)
    out = []
    for i in range(0, len(long), 7):
        out += splitter.feed(long[i : i + 7])
    assert out == [Skipped("s=9;i=9"), b'{"__CURSOR":"s=9;i=10"}']


# --- real journal files ------------------------------------------------------------------------------


@needs_journal
async def test_reads_exact_records_and_filters(tmp_path: Path) -> None:
    write_journal(tmp_path / "a.journal", MIXED)
    everything = source(tmp_path)
    assert await everything.read(100) == [
        record(1, "connect from a.example[192.0.2.1]", pid=101),
        LogRecord((T0 + 2_000_000) / 1e6, "mx1", "systemd", 1, "Started Session 7 of user root."),
        record(3, "4F2A1B: removed", ident="postfix/qmgr", pid=102),
        record(4, "Login: user=<u1>", ident="dovecot", pid=103),
        record(5, "disconnect from a.example[192.0.2.1] ehlo=1 quit=1 commands=2", pid=101),
    ]
    assert not everything.errors

    by_ident = source(tmp_path, identifiers=("postfix/smtpd", "postfix/qmgr"))
    assert [r.message for r in await by_ident.read(100)] == [
        "connect from a.example[192.0.2.1]",
        "4F2A1B: removed",
        "disconnect from a.example[192.0.2.1] ehlo=1 quit=1 commands=2",
    ]
    by_unit = source(tmp_path, units=("postfix@-.service", "dovecot.service"))
    assert [r.program for r in await by_unit.read(100)] == ["postfix/smtpd", "postfix/qmgr", "dovecot", "postfix/smtpd"]
    both = source(tmp_path, units=("postfix@-.service",), identifiers=("postfix/qmgr",))
    assert [r.message for r in await both.read(100)] == ["4F2A1B: removed"]
    # Nothing new: an empty batch (entries have matched already).
    assert await both.read(100) == []


@needs_journal
async def test_cursor_survives_a_restart_without_loss_or_repeat(tmp_path: Path) -> None:
    journal = tmp_path / "a.journal"
    positions = PositionStore(tmp_path / "positions")
    write_journal(journal, [entry(i, f"line {i}") for i in range(1, 8)])
    first = source(tmp_path, positions, identifiers=("postfix/smtpd",))
    assert [r.message for r in await first.read(3)] == ["line 1", "line 2", "line 3"]
    await first.commit()
    assert [r.message for r in await first.read(2)] == ["line 4", "line 5"]  # read, never committed
    await first.close()
    saved = json.loads((tmp_path / "positions" / "journal.json").read_text())
    assert set(saved) == {"cursor"} and ";i=3;" in saved["cursor"]

    # Restart: a new source object, the same position store; more entries arrive meanwhile.
    write_journal(journal, [entry(i, f"line {i}") for i in range(8, 11)])
    second = source(tmp_path, PositionStore(tmp_path / "positions"), identifiers=("postfix/smtpd",))
    got = []
    while batch := await second.read(4):
        got += [r.message for r in batch]
        await second.commit()
    assert got == [f"line {i}" for i in range(4, 11)]
    third = source(tmp_path, PositionStore(tmp_path / "positions"), identifiers=("postfix/smtpd",))
    assert await third.read(100) == []


@needs_journal
async def test_max_lines_batches(tmp_path: Path) -> None:
    write_journal(tmp_path / "a.journal", [entry(i, f"m{i}") for i in range(25)])
    src = source(tmp_path)
    sizes = []
    seen: list[str] = []
    while batch := await src.read(10):
        sizes.append(len(batch))
        seen += [r.message for r in batch]
        await src.commit()
    assert sizes == [10, 10, 5]
    assert seen == [f"m{i}" for i in range(25)]


@needs_journal
async def test_start_at_end_and_beginning(tmp_path: Path) -> None:
    journal = tmp_path / "a.journal"
    write_journal(journal, [entry(i, f"old {i}") for i in range(3)])
    end = source(tmp_path, PositionStore(None), start_at="end")
    beginning = source(tmp_path, PositionStore(None), start_at="beginning")
    assert await end.read(100) == []
    await end.commit()
    assert [r.message for r in await beginning.read(100)] == ["old 0", "old 1", "old 2"]
    write_journal(journal, [entry(10, "new 10"), entry(11, "new 11")])
    assert [r.message for r in await end.read(100)] == ["new 10", "new 11"]
    assert [r.message for r in await beginning.read(100)] == ["new 10", "new 11"]


@needs_journal
async def test_start_at_end_with_a_saved_position_continues_from_it(tmp_path: Path) -> None:
    journal = tmp_path / "a.journal"
    positions = PositionStore(tmp_path / "pos")
    write_journal(journal, [entry(i, f"e{i}") for i in range(4)])
    first = source(tmp_path, positions, start_at="end")
    assert await first.read(100) == []
    await first.commit()
    write_journal(journal, [entry(5, "after the first start")])
    second = source(tmp_path, positions, start_at="end")  # restart: the saved cursor wins over start_at
    assert [r.message for r in await second.read(100)] == ["after the first start"]


@needs_journal
async def test_second_journal_file(tmp_path: Path) -> None:
    a, b = tmp_path / "a.journal", tmp_path / "b.journal"
    write_journal(a, [entry(1, "in a 1"), entry(2, "in a 2")])
    write_journal(b, [entry(3, "in b 3")])
    positions = PositionStore(None)
    src = source(tmp_path, positions, files=(str(a), str(b)))
    assert [r.message for r in await src.read(2)] == ["in a 1", "in a 2"]
    await src.commit()
    write_journal(b, [entry(4, "in b 4"), entry(5, "in b 5")])
    again = source(tmp_path, positions, files=(str(a), str(b)))  # the cursor points into a.journal
    assert [r.message for r in await again.read(100)] == ["in b 3", "in b 4", "in b 5"]
    await again.commit()
    write_journal(a, [entry(6, "in a 6")])
    assert [r.message for r in await again.read(100)] == ["in a 6"]


@needs_journal
async def test_binary_and_long_messages(tmp_path: Path) -> None:
    long = "x" * (MAX_MESSAGE + 10)
    write_journal(
        tmp_path / "a.journal",
        [
            entry(1, b"bad \xff\xfe bytes"),
            entry(2, "two\nlines"),
            entry(3, long),
            entry(4, "after", pid=None),
        ],
    )
    src = source(tmp_path)
    got = await src.read(100)
    assert [r.message for r in got] == ["bad \ufffd\ufffd bytes", "two\nlines", "x" * MAX_MESSAGE, "after"]
    assert got[3].pid is None and got[3].program == "postfix/smtpd"
    assert src.errors == {"decode": 1, "too_long": 1}


@needs_journal
async def test_entry_over_the_json_bound_is_skipped_and_passed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from exporter.logs.sources import journal

    monkeypatch.setattr(journal, "MAX_ENTRY", 2000)
    write_journal(tmp_path / "a.journal", [entry(1, "short"), entry(2, "y" * 5000), entry(3, "next")])
    src = source(tmp_path)
    assert [r.message for r in await src.read(100)] == ["short", "next"]
    assert src.errors == {"too_long": 1}
    await src.commit()
    assert await src.read(100) == []


@needs_journal
async def test_program_and_pid_fallbacks(tmp_path: Path) -> None:
    e = entry(1, "no identifier")
    del e["SYSLOG_IDENTIFIER"]
    e["_COMM"] = "smtpd"
    e["SYSLOG_PID"] = "4242"
    write_journal(tmp_path / "a.journal", [e])
    (got,) = await source(tmp_path).read(10)
    assert (got.program, got.pid) == ("smtpd", 4242)


# --- misconfiguration is loud ------------------------------------------------------------------------


@needs_journal
async def test_filters_that_match_nothing_fail_with_the_reason(tmp_path: Path) -> None:
    write_journal(tmp_path / "a.journal", MIXED)
    for kw in ({"identifiers": ("postfix",)}, {"units": ("postfix.service",)}):
        src = source(tmp_path, **kw)
        with pytest.raises(LogSourceError) as exc:
            await src.read(100)
        assert exc.value.reason == "unavailable"
        assert "none from" in exc.value.message and "journalctl -F" in exc.value.message
    # A quiet period after a first match is not an error.
    ok = source(tmp_path, identifiers=("postfix/qmgr",), start_at="end")
    assert await ok.read(100) == []
    assert await ok.read(100) == []


@needs_journal
async def test_an_empty_journal_directory_fails(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    src = source(tmp_path, files=(), directory=str(tmp_path / "empty"))
    with pytest.raises(LogSourceError) as exc:
        await src.read(100)
    assert exc.value.reason == "unavailable" and "no entries" in exc.value.message


@needs_journal
async def test_missing_file_and_directory(tmp_path: Path) -> None:
    for kw in ({"files": (str(tmp_path / "nope.journal"),)}, {"files": (), "directory": str(tmp_path / "nodir")}):
        with pytest.raises(LogSourceError) as exc:
            await source(tmp_path, **kw).read(100)
        assert exc.value.reason == "missing", exc.value.message


@needs_journal
async def test_a_rejected_cursor_restarts_per_start_at(tmp_path: Path) -> None:
    write_journal(tmp_path / "a.journal", [entry(1, "one"), entry(2, "two")])
    positions = PositionStore(None)
    positions.save("journal", {"cursor": "not-a-cursor"})
    src = source(tmp_path, positions)
    assert [r.message for r in await src.read(100)] == ["one", "two"]
    assert src.errors == {"cursor": 1}


# --- journalctl itself missing, failing or slow --------------------------------------------------------


async def test_missing_journalctl(tmp_path: Path) -> None:
    src = source(tmp_path, journalctl=str(tmp_path / "no-such-journalctl"))
    with pytest.raises(LogSourceError) as exc:
        await src.read(10)
    assert exc.value.reason == "command" and "not found" in exc.value.message


def _fake_journalctl(tmp_path: Path, body: str) -> str:
    path = tmp_path / "journalctl"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


async def test_permission_hint_is_a_permission_failure(tmp_path: Path) -> None:
    fake = _fake_journalctl(
        tmp_path,
        "echo 'Hint: You are currently not seeing messages from other users and the system.' >&2\n"
        "echo '      Users in groups adm, systemd-journal can see all messages.' >&2",
    )
    with pytest.raises(LogSourceError) as exc:
        await source(tmp_path, journalctl=fake, files=()).read(10)
    assert exc.value.reason == "permission" and "systemd-journal" in exc.value.message


async def test_journalctl_error_is_unavailable(tmp_path: Path) -> None:
    fake = _fake_journalctl(tmp_path, "echo 'Failed to add match: Invalid argument' >&2; exit 1")
    with pytest.raises(LogSourceError) as exc:
        await source(tmp_path, journalctl=fake).read(10)
    assert exc.value.reason == "unavailable" and "Failed to add match" in exc.value.message


async def test_timeout_kills_journalctl(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    fake = _fake_journalctl(tmp_path, f"echo $$ > {pidfile}; exec sleep 30")
    src = source(tmp_path, journalctl=fake, timeout=0.5)
    with pytest.raises(LogSourceError) as exc:
        await src.read(10)
    assert exc.value.reason == "timeout"
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_failure_after_progress_returns_what_was_read(tmp_path: Path) -> None:
    line = json.dumps({"__CURSOR": "s=1;i=7", "__REALTIME_TIMESTAMP": str(T0), "MESSAGE": "kept"})
    fake = _fake_journalctl(tmp_path, f"echo '{line}'; echo 'Failed to read: Bad message' >&2; exit 1")
    src = source(tmp_path, journalctl=fake)
    assert [r.message for r in await src.read(10)] == ["kept"]
    await src.commit()
    assert src.positions.load("journal") == {"cursor": "s=1;i=7"}


async def test_timeout_after_progress_returns_what_was_read(tmp_path: Path) -> None:
    line = json.dumps({"__CURSOR": "s=1;i=1", "__REALTIME_TIMESTAMP": str(T0), "MESSAGE": "first"})
    fake = _fake_journalctl(tmp_path, f"echo '{line}'; exec sleep 30")
    src = source(tmp_path, journalctl=fake, timeout=0.5)
    assert [r.message for r in await src.read(10)] == ["first"]
    await src.commit()
    assert src.positions.load("journal") == {"cursor": "s=1;i=1"}
