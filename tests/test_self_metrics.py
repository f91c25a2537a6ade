"""``mail_exporter_asyncio_tasks``: the soak watches it for task leaks, so it must count exactly.

Two ground truths: tasks started in-process by the test show up one for one, and in the
real exporter process a reload that adds K checks adds exactly K tasks (the scheduler runs
one task per check; between runs nothing else of a check is alive).  aiohttp runs one
task per open connection, so the scrapes share one keep-alive connection.  The continuity
refresh loop's wait task is absent for up to MIN_REFRESH_GAP (1 s) after each refresh, so a
count is taken only once it has held for 1.6 s of scrapes (the exporter counts at most once a
second, so a count seen 8 times over 1.6 s is at least two counts).
"""

from __future__ import annotations

import asyncio
import http.client
import time
from pathlib import Path

from helpers import free_port, metric_values, one, run_exporter

from exporter.app import Exporter, Options
from exporter.core.model import Sample

TASKS = "mail_exporter_asyncio_tasks"


def _tasks(samples: list[Sample]) -> float:
    found = [s.value for s in samples if s.name == TASKS]
    assert len(found) == 1, samples
    return found[0]


def _endpoints(names: list[str], address: str) -> str:
    lines = [f"  - {{name: {n}, protocol: smtp, address: '{address}', tls: none}}" for n in names]
    return "global: {interval: 1h, timeout: 2s}\nendpoints:\n" + "\n".join(lines) + "\n"


async def test_tasks_started_in_process_are_counted_one_for_one(tmp_path: Path) -> None:
    exp = Exporter(Options(config_file=None, storage_path=str(tmp_path / "data")))
    exp.task_count_interval = 0.0  # count at every scrape (the exporter reuses a count for 1 s)
    release = asyncio.Event()
    before = _tasks(exp.self_samples())
    assert before == len(asyncio.all_tasks())  # the test's own task at least: never 0 on a running loop
    started = [asyncio.create_task(release.wait()) for _ in range(7)]
    assert _tasks(exp.self_samples()) == before + 7
    release.set()
    await asyncio.gather(*started)
    assert _tasks(exp.self_samples()) == before
    # with the default interval, a count is reused for a second
    exp.task_count_interval = 3600.0
    counted = _tasks(exp.self_samples())
    more = [asyncio.create_task(asyncio.sleep(0)) for _ in range(3)]
    assert _tasks(exp.self_samples()) == counted
    await asyncio.gather(*more)


def test_reload_adding_checks_adds_exactly_one_task_each(tmp_path: Path) -> None:
    refused = f"127.0.0.1:{free_port()}"  # bound and closed again: every run ends at once, refused
    cfg = tmp_path / "config.yml"
    cfg.write_text(_endpoints(["a", "b"], refused))
    with run_exporter(tmp_path, f"--config.file={cfg}") as exp:
        exp.wait_ready()
        conn = http.client.HTTPConnection("127.0.0.1", exp.port, timeout=10)
        first = _settled(conn, ["a", "b"])
        cfg.write_text(_endpoints(["a", "b", "c", "d", "e", "f", "g"], refused))
        assert exp.post("/-/reload").status == 200
        assert _settled(conn, ["a", "b", "c", "d", "e", "f", "g"]) == first + 5
        cfg.write_text(_endpoints(["a"], refused))
        assert exp.post("/-/reload").status == 200
        assert _settled(conn, ["a"]) == first - 1
        conn.close()


def _settled(conn: http.client.HTTPConnection, names: list[str]) -> float:
    """The task count once every named check has finished a run and 8 scrapes, 1.6 s, agree."""
    last: list[float] = []
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        runs = metric_values(text, "mail_exporter_check_runs_total")
        ran = all(one(runs, name=n, result="failure") >= 1 for n in names)
        if ran and len(metric_values(text, "mail_exporter_check_success")) == len(names):
            last.append(one(metric_values(text, TASKS)))
            if len(last) >= 8 and len(set(last[-8:])) == 1:
                return last[-1]
        time.sleep(0.2)
    raise AssertionError(f"checks {names} did not settle; task counts seen: {last}")
