"""The ``file`` log source against real files: rotation, copytruncate, restart, bad input.

Ground truth: every test writes numbered lines and checks that each number is read
exactly once, in order, whatever happens to the file in between.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import readable_source

from exporter.config import FileLog
from exporter.logs.position import PositionStore
from exporter.logs.record import LogRecord
from exporter.logs.sources import LogSourceError
from exporter.logs.sources.file import MAX_LINE, FileSource


def line(n: int) -> str:
    return f"Dec  7 08:00:{n % 60:02d} mx1 postfix/smtpd[{1000 + n}]: connect from client{n}.test[192.0.2.{n % 250}]\n"


def write(path: Path, first: int, count: int) -> None:
    with path.open("a") as fh:
        fh.writelines(line(n) for n in range(first, first + count))


def numbers(records: list[LogRecord]) -> list[int]:
    return [r.pid - 1000 for r in records if r.pid is not None]


def source(path: Path, state: Path, **kw: object) -> FileSource:
    kw.setdefault("start_at", "beginning")
    cfg = FileLog(name="mail", type="file", path=str(path), **kw)  # type: ignore[arg-type]
    return FileSource(cfg, PositionStore(state))


async def drain(src: FileSource, max_lines: int = 1000) -> list[int]:
    out: list[int] = []
    while True:
        batch = await src.read(max_lines)
        await src.commit()
        if not batch:
            return out
        out += numbers(batch)


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    d = tmp_path / "log"
    d.mkdir()
    return d


async def test_reads_each_line_once_in_batches(logdir: Path, tmp_path: Path) -> None:
    log = logdir / "mail.log"
    write(log, 0, 2500)
    src = source(log, tmp_path / "state")
    assert await drain(src, max_lines=1000) == list(range(2500))
    write(log, 2500, 10)
    assert await drain(src) == list(range(2500, 2510))
    await src.close()


async def test_a_partial_last_line_waits_for_its_newline(logdir: Path, tmp_path: Path) -> None:
    log = logdir / "mail.log"
    text = line(1) + line(2)
    log.write_text(text[:-10])
    src = source(log, tmp_path / "state")
    assert await drain(src) == [1]
    with log.open("a") as fh:
        fh.write(text[-10:])
    assert await drain(src) == [2]


async def test_rename_rotation_loses_and_repeats_nothing(logdir: Path, tmp_path: Path) -> None:
    log = logdir / "mail.log"
    write(log, 0, 100)
    src = source(log, tmp_path / "state")
    assert await drain(src) == list(range(100))
    write(log, 100, 50)  # written before the rotation, not read yet
    log.rename(logdir / "mail.log.1")
    write(logdir / "mail.log.1", 150, 5)  # the writer has not reopened yet
    write(log, 155, 20)  # the new file
    assert await drain(src) == list(range(175))[100:]
    write(logdir / "mail.log.1", 175, 3)  # a straggler into the old file
    write(log, 178, 2)
    got = await drain(src)
    assert sorted(got) == [175, 176, 177, 178, 179]
    assert src.errors["rotated"] == 0


async def test_restart_continues_after_the_last_committed_line(logdir: Path, tmp_path: Path) -> None:
    log = logdir / "mail.log"
    write(log, 0, 300)
    first = source(log, tmp_path / "state")
    batch = await first.read(120)
    await first.commit()
    assert numbers(batch) == list(range(120))
    await first.read(50)  # read but never committed: a crash here re-reads these
    await first.close()
    second = source(log, tmp_path / "state")
    assert await drain(second) == list(range(120, 300))
    saved = json.loads((tmp_path / "state" / "mail.json").read_text())
    assert saved["ino"] == log.stat().st_ino and saved["offset"] == log.stat().st_size


async def test_rotation_while_stopped_reads_the_rest_of_the_rotated_file(logdir: Path, tmp_path: Path) -> None:
    log = logdir / "mail.log"
    write(log, 0, 100)
    first = source(log, tmp_path / "state")
    assert (await drain(first))[-1] == 99
    await first.close()
    write(log, 100, 40)
    log.rename(logdir / "mail.log.1")
    write(log, 140, 10)
    second = source(log, tmp_path / "state")
    assert await drain(second) == list(range(100, 150))


async def test_copytruncate_reads_the_rest_from_the_copy(logdir: Path, tmp_path: Path) -> None:
    log = logdir / "mail.log"
    write(log, 0, 100)
    src = source(log, tmp_path / "state")
    assert len(await drain(src)) == 100
    write(log, 100, 30)
    shutil.copyfile(log, logdir / "mail.log.1")  # logrotate copytruncate
    with log.open("r+") as fh:
        fh.truncate(0)
    write(log, 130, 60)  # grew past the old offset again before the next read
    assert await drain(src) == list(range(100, 190))
    assert src.errors["truncated"] == 0


async def test_truncation_without_a_copy_is_counted(logdir: Path, tmp_path: Path) -> None:
    log = logdir / "mail.log"
    write(log, 0, 100)
    src = source(log, tmp_path / "state")
    await drain(src)
    with log.open("r+") as fh:
        fh.truncate(0)
    write(log, 500, 3)
    assert await drain(src) == [500, 501, 502]
    assert src.errors["truncated"] == 1


async def test_a_missing_file_is_a_failure_until_it_appears(logdir: Path, tmp_path: Path) -> None:
    log = logdir / "mail.log"
    src = source(log, tmp_path / "state")
    with pytest.raises(LogSourceError) as info:
        await src.read(10)
    assert info.value.reason == "missing"
    write(log, 0, 3)
    assert await drain(src) == [0, 1, 2]


async def test_a_deleted_file_is_finished_from_its_descriptor(logdir: Path, tmp_path: Path) -> None:
    log = logdir / "mail.log"
    write(log, 0, 5)
    src = source(log, tmp_path / "state")
    assert len(await src.read(2)) == 2
    await src.commit()
    log.unlink()
    assert numbers(await src.read(100)) == [2, 3, 4]
    with pytest.raises(LogSourceError) as info:
        await src.read(100)
    assert info.value.reason == "missing"


async def test_start_at_end_skips_history(logdir: Path, tmp_path: Path) -> None:
    log = logdir / "mail.log"
    write(log, 0, 50)
    src = source(log, tmp_path / "state", start_at="end")
    assert await drain(src) == []
    write(log, 50, 2)
    assert await drain(src) == [50, 51]


async def test_bad_input_is_counted_not_fatal(logdir: Path, tmp_path: Path) -> None:
    log = logdir / "mail.log"
    with log.open("wb") as fh:
        fh.write(line(1).encode())
        fh.write(b"\x00\xff\xfe garbage \x80\n")
        fh.write(b"x" * (MAX_LINE + 5000) + b"\n")  # a line over the limit
        fh.write(os.urandom(3000).replace(b"\n", b"") + b"\n")
        fh.write(line(2).encode())
    src = source(log, tmp_path / "state")
    got: list[LogRecord] = []
    while batch := await src.read(100):
        got += batch
        await src.commit()
    assert numbers(got) == [1, 2]
    assert src.errors["too_long"] == 1
    assert src.errors["decode"] >= 1
    assert sum(1 for r in got if r.program == "") == 2  # garbage and binary: malformed, still lines


UNPRIVILEGED = """
import asyncio, sys
from exporter.config import FileLog
from exporter.logs.position import PositionStore
from exporter.logs.sources import LogSourceError
from exporter.logs.sources.file import FileSource

async def main():
    src = FileSource(FileLog(name="m", type="file", path=sys.argv[1]), PositionStore(None))
    try:
        await src.read(10)
    except LogSourceError as exc:
        print(exc.reason)

asyncio.run(main())
"""


def test_permission_denied_is_a_failure_with_its_reason() -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop root privileges")
    top = Path(tempfile.mkdtemp(prefix="mce-logperm-"))
    try:
        top.chmod(0o755)
        src = readable_source(top)
        log = top / "mail.log"
        log.write_text(line(1))
        log.chmod(0o600)  # root's only
        out = subprocess.run(
            [
                setpriv,
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                sys.executable,
                "-c",
                UNPRIVILEGED,
                str(log),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PYTHONPATH": str(src), "PATH": os.environ["PATH"]},
            cwd=top,
            check=False,
        )
        assert out.stdout.strip() == "permission", out.stderr
    finally:
        shutil.rmtree(top)
