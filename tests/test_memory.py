"""The periodic full collection (exporter/core/memory.py): it frees cyclic garbage, repeats, and stops.

The soak (benchmarks/soak) showed why it exists. Under the tuned collector thresholds,
cyclic garbage from checks in flight waited up to hours in the older generations, and RSS
rose. These tests pin the mechanism: one tick frees an unreachable cycle that the
automatic collector has not touched, ticks repeat without adding an asyncio task, and the
exporter starts the collector with its checks and stops it with them.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path

from helpers import free_port

from exporter.app import Exporter, Options
from exporter.core.memory import COLLECT_EVERY, PeriodicCollector


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


class Counter:
    """A stand-in for gc.collect that counts its calls and signals the n-th."""

    def __init__(self, n: int) -> None:
        self.calls = 0
        self.n = n
        self.reached = asyncio.Event()

    def __call__(self) -> int:
        self.calls += 1
        if self.calls == self.n:
            self.reached.set()
        return 0


async def test_one_tick_frees_an_unreachable_cycle() -> None:
    gc.disable()  # so that no automatic collection frees it first
    try:
        node = Node()
        ref = weakref.ref(node)
        del node
        assert ref() is not None
        collector = PeriodicCollector()
        collector._tick()
        collector.stop()
        assert ref() is None
        assert collector.runs == 1
    finally:
        gc.enable()


async def test_collects_repeatedly_without_a_task_and_not_after_stop() -> None:
    counter = Counter(3)
    collector = PeriodicCollector(every=0.001, collect=counter)
    tasks = len(asyncio.all_tasks())
    collector.start()
    assert len(asyncio.all_tasks()) == tasks
    await asyncio.wait_for(counter.reached.wait(), 30)
    collector.stop()
    stopped_at = counter.calls
    assert stopped_at >= 3
    assert collector.runs == stopped_at
    await asyncio.sleep(0.05)  # fifty intervals: any timer left would have fired
    assert counter.calls == stopped_at


def test_default_interval_is_a_minute() -> None:
    assert PeriodicCollector().every == COLLECT_EVERY == 60.0


async def test_exporter_runs_the_collector_between_start_and_stop(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yml"
    refused = f"127.0.0.1:{free_port()}"
    cfg.write_text(f"global: {{interval: 1h}}\nendpoints:\n  - {{name: a, protocol: smtp, address: '{refused}'}}\n")
    exp = Exporter(Options(config_file=str(cfg), storage_path=str(tmp_path / "data")))
    counter = Counter(2)
    exp.collector = PeriodicCollector(every=0.001, collect=counter)
    assert counter.calls == 0
    await exp.start()
    try:
        await asyncio.wait_for(counter.reached.wait(), 30)
    finally:
        await exp.stop()
    stopped_at = counter.calls
    await asyncio.sleep(0.05)
    assert counter.calls == stopped_at >= 2


class Flags:
    def __init__(self) -> None:
        self.settled = False
        self.freezes = 0
        self.unfreezes = 0

    def freeze(self) -> None:
        self.freezes += 1

    def unfreeze(self) -> None:
        self.unfreezes += 1


async def test_freezes_once_after_the_first_collection_once_settled_and_again_after_a_reload() -> None:
    flags = Flags()
    counter = Counter(1000)
    collector = PeriodicCollector(
        every=3600, collect=counter, settled=lambda: flags.settled, freeze=flags.freeze, unfreeze=flags.unfreeze
    )
    collector.start()
    try:
        collector._tick()  # not settled: collect only
        assert (counter.calls, flags.freezes, collector.frozen) == (1, 0, False)
        flags.settled = True
        collector._tick()  # collect, then freeze what survived
        assert (counter.calls, flags.freezes, collector.frozen) == (2, 1, True)
        collector._tick()  # frozen already: never twice
        assert (counter.calls, flags.freezes) == (3, 1)
        flags.settled = False
        collector.reload()  # new checks: unfreeze so the old ones' garbage is collected
        assert (flags.unfreezes, collector.frozen) == (1, False)
        collector._tick()
        assert flags.freezes == 1
        flags.settled = True
        collector._tick()
        assert (flags.freezes, collector.frozen) == (2, True)
        collector.reload()
        collector.reload()  # not frozen: nothing to undo
        assert flags.unfreezes == 2
    finally:
        collector.stop()


async def test_freezes_after_the_settle_limit_even_if_a_check_never_finishes() -> None:
    flags = Flags()
    collector = PeriodicCollector(
        every=3600, collect=Counter(1000), settle_limit=0.0, freeze=flags.freeze, unfreeze=flags.unfreeze
    )
    collector.start()
    try:
        collector._tick()
        assert flags.freezes == 1
    finally:
        collector.stop()


async def test_the_exporter_counts_as_settled_once_every_check_has_run(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yml"
    refused = f"127.0.0.1:{free_port()}"
    cfg.write_text(
        "global: {interval: 1h, timeout: 2s}\nendpoints:\n"
        f"  - {{name: a, protocol: smtp, address: '{refused}'}}\n"
        f"  - {{name: b, protocol: smtp, address: '{refused}'}}\n"
    )
    exp = Exporter(Options(config_file=str(cfg), storage_path=str(tmp_path / "data")))
    exp.collector = PeriodicCollector(every=3600, collect=Counter(1000))
    await exp.start()
    try:
        assert exp.scheduler is not None
        checks = exp.scheduler.checks
        assert len(checks) == 2
        assert exp._checks_ran() is False
        for check in checks:
            await exp.scheduler.run_once(check)
            assert exp._checks_ran() is (check is checks[-1])
    finally:
        await exp.stop()
