"""Exact counts from the real Postfix of the test stack, for every reader.

Each test puts exactly N messages into the deferred queue through SMTP on
127.0.0.1:2525 (relayed to the dead relay, so they stay deferred), waits until
``postqueue -j`` shows all N deferred, and checks each reader against that ground
truth: per queue the count and the bytes (``message_size`` summed), the oldest age
(within 2 s), the reason classes and destinations.

The stack's queue is shared with other tests, so the ground truth is the whole
``postqueue -j`` listing taken right before and right after a read (the read is
retried if the two differ), and the test's own messages, recognised by a unique
sender, must number exactly N.  At the end only this test's messages are deleted.
"""

from __future__ import annotations

import json
import logging
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from helpers import readable_source
from stack import Stack, tool, tool_env

from exporter.config import PostfixQueue
from exporter.core.model import Sink
from exporter.queues import POSTFIX_QUEUES, first_reason, make_cache, read_queue, top_domains

LOG = logging.getLogger("test.queues.postfix")
READERS = ("spool", "showq", "postqueue")
TOP = 3


class Injector:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.tag = uuid.uuid4().hex[:10]
        self.sender = f"mce-queue-{self.tag}@example.test"
        self.ids: set[str] = set()

    def domain(self, i: int) -> str:
        # a few destinations with different weights, so the top-N ranking is exercised
        return f"d{(0, 0, 0, 1, 1, 2, 3)[i % 7]}-{self.tag}.queue.test"

    def send(self, n: int, connections: int = 4) -> float:
        """Send ``n`` messages over parallel SMTP sessions; returns the time the first was sent."""
        if n == 0:
            return time.time()
        started = time.time()
        shares = [range(k, n, connections) for k in range(connections)]

        def one_session(idx: range) -> None:
            with smtplib.SMTP(self.stack.host, self.stack.port("smtp"), timeout=30) as smtp:
                smtp.ehlo("queue-test.example")
                for i in idx:
                    body = f"Subject: queue test {self.tag} {i}\r\n\r\nmessage {i}\r\n"
                    smtp.sendmail(self.sender, [f"u{i}@{self.domain(i)}"], body)

        if n < 8:
            one_session(range(n))
        else:
            with ThreadPoolExecutor(connections) as pool:
                list(pool.map(one_session, shares))
        return started

    def mine(self, listing: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [m for m in listing if m["sender"] == self.sender]

    def wait_deferred(self, n: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            listing = self.stack.postqueue_json()
            mine = self.mine(listing)
            self.ids.update(m["queue_id"] for m in mine)
            if len(mine) == n and all(m["queue_name"] == "deferred" for m in mine):
                return listing
            if time.monotonic() > deadline:
                queues = {q: sum(m["queue_name"] == q for m in mine) for q in POSTFIX_QUEUES}
                raise AssertionError(f"expected {n} deferred messages, have {queues}")
            time.sleep(0.5)

    def postsuper(self, flag: str, ids: list[str]) -> None:
        if not ids:
            return
        subprocess.run(
            [tool("postsuper"), "-c", str(self.stack.postfix_config_dir), flag, "-"],
            input="\n".join(ids) + "\n",
            capture_output=True,
            text=True,
            env=tool_env(),
            check=True,
            timeout=120,
        )

    def cleanup(self) -> None:
        listing = self.stack.postqueue_json()
        self.ids.update(m["queue_id"] for m in self.mine(listing))
        self.postsuper("-d", sorted(self.ids))


STALE_AFTER = 900.0  # no test here runs this long: older messages of ours are leftovers


@pytest.fixture
def injector(stack: Stack) -> Iterator[Injector]:
    inj = Injector(stack)
    # A run that was killed half-way cannot clean up after itself: remove what such runs left
    # (only this file's messages, and only old ones, so a concurrent run is not disturbed).
    now = time.time()
    stale = [
        m["queue_id"]
        for m in stack.postqueue_json()
        if m["sender"].startswith("mce-queue-")
        and m["sender"].endswith("@example.test")
        and now - m["arrival_time"] > STALE_AFTER
    ]
    inj.postsuper("-d", stale)
    try:
        yield inj
    finally:
        inj.cleanup()


def _key(listing: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted((m["queue_name"], m["queue_id"], m["message_size"], m["arrival_time"]) for m in listing)


def expected(listing: list[dict[str, Any]], now: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for q in POSTFIX_QUEUES:
        msgs = [m for m in listing if m["queue_name"] == q]
        out[q] = {
            "messages": len(msgs),
            "bytes": sum(m["message_size"] for m in msgs),
            "oldest": (now - min(m["arrival_time"] for m in msgs)) if msgs else 0.0,
        }
    reasons: dict[str, int] = {}
    domains: dict[str, int] = {}
    for m in listing:
        if m["queue_name"] != "deferred":
            continue
        found = first_reason((r["address"], r.get("delay_reason", "")) for r in m["recipients"])
        reason, domain = found if found is not None else ("other", "other")
        reasons[reason] = reasons.get(reason, 0) + 1
        domains[domain] = domains.get(domain, 0) + 1
    out["reasons"] = reasons
    out["destinations"] = dict(top_domains(domains, TOP))
    return out


def observed(sink: Sink) -> dict[str, Any]:
    vals: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for s in sink.samples():
        vals.setdefault(s.name, {})[s.labels] = s.value

    def get(name: str, **labels: str) -> float:
        return vals[name][tuple(labels.items())]

    out: dict[str, Any] = {}
    for q in POSTFIX_QUEUES:
        src = {"source": "stack", "queue": q}
        out[q] = {
            "messages": get("mail_queue_messages", **src),
            "bytes": get("mail_queue_size_bytes", **src),
            "oldest": get("mail_queue_oldest_message_age_seconds", **src),
            "gcount": get("mail_queue_message_age_seconds_gcount", **src),
            "inf": get("mail_queue_message_age_seconds_bucket", **src, le="+Inf"),
        }
    out["reasons"] = {dict(k)["reason"]: v for k, v in vals["mail_queue_deferred_reason_messages"].items() if v}
    out["destinations"] = {dict(k)["domain"]: v for k, v in vals["mail_queue_deferred_destination_messages"].items()}
    out["reader"] = [dict(k)["reader"] for k in vals["mail_queue_reader_info"]]
    return out


def cfg(stack: Stack, reader: str) -> PostfixQueue:
    return PostfixQueue(
        name="stack",
        type="postfix",
        config_directory=str(stack.postfix_config_dir),
        reader=reader,  # type: ignore[arg-type]
        top_destinations=TOP,
        timeout=60.0,
    )


async def read_exactly(stack: Stack, reader: str, cache: object) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """A read bracketed by two identical ground truths (retried while the queue moves)."""
    for _ in range(10):
        before = stack.postqueue_json()
        sink = Sink()
        started = time.time()
        ok = await read_queue(cfg(stack, reader), sink, LOG, cache=cache)
        assert ok, sink.failures
        after = stack.postqueue_json()
        if _key(before) == _key(after):
            return observed(sink), after, started
        time.sleep(0.5)
    raise AssertionError("the stack's queue kept changing during the reads")


def check(got: dict[str, Any], listing: list[dict[str, Any]], now: float, reader: str) -> None:
    want = expected(listing, now)
    assert got["reader"] == [reader]
    for q in POSTFIX_QUEUES:
        g, w = got[q], want[q]
        assert g["messages"] == w["messages"], (reader, q)
        assert g["bytes"] == w["bytes"], (reader, q)
        assert g["gcount"] == g["inf"] == w["messages"], (reader, q)
        assert abs(g["oldest"] - w["oldest"]) <= 2.0, (reader, q, g["oldest"], w["oldest"])
    assert got["reasons"] == want["reasons"], reader
    assert got["destinations"] == want["destinations"], reader


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.parametrize("n", [0, 1, 137, 5000])
async def test_exact_deferred_counts(stack: Stack, injector: Injector, n: int) -> None:
    first_sent = injector.send(n)
    listing = injector.wait_deferred(n, timeout=120.0 if n > 1000 else 60.0)
    mine = injector.mine(listing)
    assert len(mine) == n
    if n:
        first = min(m["arrival_time"] for m in mine)
        assert abs(first - first_sent) <= 2.0
    for reader in READERS:
        cache = make_cache()
        got, truth, started = await read_exactly(stack, reader, cache)
        assert len([m for m in injector.mine(truth) if m["queue_name"] == "deferred"]) == n
        check(got, truth, started, reader)
        # a second read from the same cache (the spool scanner's steady state) agrees too
        got2, truth2, started2 = await read_exactly(stack, reader, cache)
        check(got2, truth2, started2, reader)
    if n == 0:
        return
    # the deferred messages of this test are all "Connection refused" at the dead relay
    assert all("refused" in (m["recipients"][0].get("delay_reason") or "") for m in mine), {
        m["recipients"][0].get("delay_reason") for m in mine
    }


@pytest.mark.slow
@pytest.mark.asyncio
async def test_hold_queue(stack: Stack, injector: Injector) -> None:
    injector.send(12)
    listing = injector.wait_deferred(12)
    caches = {reader: make_cache() for reader in READERS}
    for reader in READERS:  # warm the caches before the move
        got, truth, started = await read_exactly(stack, reader, caches[reader])
        check(got, truth, started, reader)
    held = sorted(m["queue_id"] for m in injector.mine(listing))[:5]
    injector.postsuper("-h", held)
    listing = stack.postqueue_json()
    mine = injector.mine(listing)
    assert sorted(m["queue_id"] for m in mine if m["queue_name"] == "hold") == held
    assert sum(m["queue_name"] == "deferred" for m in mine) == 7
    for reader in READERS:
        got, truth, started = await read_exactly(stack, reader, caches[reader])
        check(got, truth, started, reader)
        assert got["hold"]["messages"] >= 5
    # and back: postsuper -H releases them to the deferred queue
    injector.postsuper("-H", held)
    for reader in READERS:
        got, truth, started = await read_exactly(stack, reader, caches[reader])
        check(got, truth, started, reader)


@pytest.mark.asyncio
async def test_auto_reader_as_root_is_the_spool(stack: Stack) -> None:
    sink = Sink()
    assert await read_queue(cfg(stack, "auto"), sink, LOG, cache=None)
    assert observed(sink)["reader"] == ["spool"]


@pytest.mark.asyncio
async def test_spool_cache_reads_each_header_once(stack: Stack, injector: Injector) -> None:
    injector.send(20)
    injector.wait_deferred(20)
    cache = make_cache()
    _, first, _ = await read_exactly(stack, "spool", cache)
    spool = cache.spool
    read_before = spool.headers_read
    assert read_before >= 20
    time.sleep(1.1)  # let the directories age past the trust margin
    await read_exactly(stack, "spool", cache)
    _, last, _ = await read_exactly(stack, "spool", cache)
    # steady state: no header is read again (only those of messages that arrived meanwhile)
    arrived = {m["queue_id"] for m in last} - {m["queue_id"] for m in first}
    assert spool.headers_read - read_before <= len(arrived)
    assert spool.nbytes() <= 100 * max(1, spool.messages())


UNPRIVILEGED = """
import asyncio, json, logging, sys
from exporter.config import PostfixQueue
from exporter.core.model import Sink
from exporter.queues import read_queue

async def main():
    sink = Sink()
    cfg = PostfixQueue(name="stack", type="postfix", config_directory=sys.argv[1], reader="auto", timeout=30.0)
    ok = await read_queue(cfg, sink, logging.getLogger("q"), cache=None)
    out = {"ok": ok, "failures": [f.reason for f in sink.failures], "samples": {}}
    for s in sink.samples():
        out["samples"][s.name + repr(sorted(dict(s.labels).items()))] = s.value
    print(json.dumps(out))

asyncio.run(main())
"""


@pytest.fixture
def readable_src() -> Iterator[Path]:
    top = Path(tempfile.mkdtemp(prefix="mce-showq-"))
    try:
        top.chmod(0o755)
        yield readable_source(top)
    finally:
        shutil.rmtree(top)


@pytest.mark.asyncio
async def test_auto_reader_unprivileged_is_showq(stack: Stack, readable_src: Path) -> None:
    """As nobody in the postdrop group (which owns public/), auto picks the showq socket."""
    setpriv = tool("setpriv")
    repo = str(readable_src)  # a copy: the checkout may be in a directory nobody cannot enter
    for _ in range(10):
        before = stack.postqueue_json()
        proc = subprocess.run(
            [
                setpriv,
                "--reuid=nobody",
                "--regid=nogroup",
                "--groups=postdrop",
                sys.executable,
                "-c",
                UNPRIVILEGED,
                str(stack.postfix_config_dir),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=repo,
            env={**tool_env(), "PYTHONPATH": repo},
            check=False,
        )
        after = stack.postqueue_json()
        if _key(before) == _key(after):
            break
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"], out["failures"]
    samples = out["samples"]
    assert samples["mail_queue_reader_info[('reader', 'showq'), ('source', 'stack')]"] == 1
    deferred = sum(m["queue_name"] == "deferred" for m in after)
    assert samples["mail_queue_messages[('queue', 'deferred'), ('source', 'stack')]"] == deferred
