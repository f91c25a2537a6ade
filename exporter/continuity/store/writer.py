"""The writer: the one thread or process that writes the SQLite file, with group commit.

(:class:`GroupCommitThread`, the batching and answering half of :class:`ThreadWriter`,
is store-independent: the PostgreSQL store's writer thread is one too.)

**Group commit.**  Every commit is fsynced (see :mod:`.schema`), so to keep that
affordable the writer takes every request that is waiting, applies each inside one
transaction, commits once (one fsync), and only then answers the requests.  A request
that fails is rolled back and fails alone (see :func:`commit_batch`); a failed commit
fails the whole batch, and nothing in it is acknowledged.

**Thread or process.**  The writer is one thread of this process (:class:`ThreadWriter`,
``SqliteStore(writer="thread")``: the CLI, tests) or a child process
(:class:`ProcessWriter`, ``writer="process"``: the exporter), which runs the same code
and keeps the incident rules' Python off the exporter's GIL.  The child is started as
``python -m exporter.continuity.store --writer-fd FD PATH`` (:func:`main`, run by the
package's ``__main__``).
"""

from __future__ import annotations

__all__ = [
    "MAX_BATCH",
    "STOP",
    "GroupCommitThread",
    "ProcessWriter",
    "Request",
    "ThreadWriter",
    "commit_batch",
    "main",
    "writer_process_main",
]

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import queue
import socket
import sqlite3
import struct
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.continuity.store.schema import SCHEMA_VERSION, Checkpointer, connect, migrate
from exporter.continuity.store.tx import Op, SqliteTx, apply_op, decode_op, decode_result, encode_op, encode_result
from exporter.core.errors import StoreError

log = logging.getLogger("exporter.continuity.store")

#: Requests committed together at most (one transaction, one fsync).
MAX_BATCH = 256


def commit_batch(conn: sqlite3.Connection, tx: SqliteTx, ops: Sequence[Op]) -> list[tuple[Any, BaseException | None]]:
    """Apply ``ops`` in one transaction (one fsync); returns each one's (result, error).

    The fast path has no savepoints (they cost two statements per operation).  An operation
    that raises is rare (a bug, a constraint): then the whole batch is rolled back and
    replayed one transaction per operation, so that only the failing one fails.  Each
    operation is a function of the database state, so replaying it is safe.  When the
    commit itself fails (disk full, I/O error), every operation of the batch fails.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            outcomes: list[tuple[Any, BaseException | None]] = [(apply_op(tx, op), None) for op in ops]
        except Exception:
            conn.execute("ROLLBACK")
            return [_apply_alone(conn, tx, op) for op in ops]
        conn.execute("COMMIT")
        return outcomes
    except sqlite3.Error as exc:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        log.error("store commit failed", extra={"kv": {"err": str(exc), "requests": len(ops)}})
        failure = StoreError(f"store commit failed: {exc}")
        return [(None, failure)] * len(ops)


def _apply_alone(conn: sqlite3.Connection, tx: SqliteTx, op: Op) -> tuple[Any, BaseException | None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = apply_op(tx, op)
    except Exception as exc:
        conn.execute("ROLLBACK")
        err = exc if isinstance(exc, StoreError) else StoreError(f"store write failed: {exc}")
        if err is not exc:
            err.__cause__ = exc
        log.error("store request failed", extra={"kv": {"err": str(exc)}})
        return None, err
    conn.execute("COMMIT")
    return result, None


# --- the writer thread ---------------------------------------------------------------------------------

STOP = object()


@dataclass
class Request:
    op: Any  # an operation of the writer's store (SQLite: a tx.Op)
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


def _deliver(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, result, exc in items:
        if fut.done():  # the caller went away; the write stands
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


class GroupCommitThread(threading.Thread):
    """A thread that commits every waiting request together (group commit), then answers them.

    The store-independent half of a writer thread: the queue, the batching (what the
    event loop handed over together, plus whatever else is waiting, up to
    :data:`MAX_BATCH`), the statistics and the answers to the waiting futures.  A store
    says how: :meth:`setup` (in the thread, before the first request; what it raises is
    :attr:`open_error`), :meth:`commit` (one batch of operations, each one's
    (result, error)) and :meth:`teardown`.  :class:`ThreadWriter` is SQLite's;
    :class:`~exporter.continuity.store.postgres.PostgresStore` has PostgreSQL's.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        # Items are lists of requests (what the event loop gathered in one iteration) or STOP.
        self.requests: queue.SimpleQueue[list[Request] | object] = queue.SimpleQueue()
        self.ready = threading.Event()
        self.open_error: BaseException | None = None
        self.batches = 0
        self.committed = 0

    def setup(self) -> None:
        """Open what :meth:`commit` needs (runs in the thread); an exception is the open error."""

    def commit(self, ops: Sequence[Any]) -> list[tuple[Any, BaseException | None]]:
        """Apply ``ops`` in one transaction and commit it; returns each one's (result, error)."""
        raise NotImplementedError

    def teardown(self) -> None:
        """Release what :meth:`setup` opened (runs in the thread, after the last commit)."""

    def run(self) -> None:
        try:
            self.setup()
        except BaseException as err:
            self.open_error = err
            self.ready.set()
            return
        self.ready.set()
        try:
            while True:
                first = self.requests.get()
                if first is STOP:
                    return
                batch = list(first) if isinstance(first, list) else []
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        item = self.requests.get_nowait()
                    except queue.Empty:
                        break
                    if item is STOP:
                        stop = True
                        break
                    if isinstance(item, list):
                        batch.extend(item)
                self._commit(batch)
                if stop:
                    return
        finally:
            self.teardown()

    def _commit(self, batch: list[Request]) -> None:
        try:
            outcomes = self.commit([r.op for r in batch])
        except Exception as exc:  # a bug in commit(): fail the batch, keep the thread (and later requests) alive
            log.exception("store commit crashed")
            outcomes = [(None, StoreError(f"store commit failed: {exc!r}"))] * len(batch)
        self.batches += 1
        self.committed += sum(1 for _, exc in outcomes if exc is None)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]] = {}
        for req, (result, error) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(req.loop, []).append((req.future, result, error))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_deliver, items)


class ThreadWriter(GroupCommitThread):
    """The one thread that writes the SQLite file: batches waiting requests into one transaction."""

    def __init__(self, path: Path) -> None:
        super().__init__("continuity-store-writer")
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._tx: SqliteTx | None = None
        self._checkpointer: Checkpointer | None = None

    def setup(self) -> None:
        conn = connect(self.path, readonly=False)
        try:
            migrate(conn, self.path)
        except BaseException:
            conn.close()
            raise
        self._conn, self._tx = conn, SqliteTx(conn)
        self._checkpointer = Checkpointer(self.path)
        self._checkpointer.start()

    def commit(self, ops: Sequence[Any]) -> list[tuple[Any, BaseException | None]]:
        assert self._conn is not None and self._tx is not None
        return commit_batch(self._conn, self._tx, ops)

    def teardown(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop_event.set()
            self._checkpointer.join(10.0)
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()


# --- the writer process ------------------------------------------------------------------------------------
#
# Why a process: the exporter's event loop (HTTP, JSON, validation) and the writer (the
# incident rules, sqlite3 calls) each need about 250-400 us of Python per notification.
# In one process they take turns on the GIL, which caps ingestion at roughly 1,500
# notifications/s on the benchmark machine; in two processes they run in parallel.
# Parent and child talk over a socket pair: frames of a 4-byte length and a pickle.
# A request frame is a list of requests (id, operation, arguments): every request the
# event loop produced in one iteration, sent with one write (one wake-up of the child)
# rather than one each.  Arguments cross as plain tuples (tx.encode_op), not as
# dataclasses, whose pickling runs Python per object on the exporter's event loop.
# After each commit the child answers with one frame listing (id, ok, result or error
# message) for the whole batch.  The child exits when the socket closes (the exporter
# stopped, or was killed).

_FRAME = struct.Struct(">I")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])  # the directory holding the exporter package


def _frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(len(data)) + data


def _take_frames(buf: bytearray) -> list[Any]:
    out = []
    while len(buf) >= _FRAME.size:
        (n,) = _FRAME.unpack_from(buf)
        if len(buf) < _FRAME.size + n:
            break
        out.append(pickle.loads(bytes(buf[_FRAME.size : _FRAME.size + n])))  # noqa: S301 - our own parent process
        del buf[: _FRAME.size + n]
    return out


def writer_process_main(fd: int, path: str) -> int:
    """The writer process: ``python -m exporter.continuity.store --writer-fd FD PATH``."""
    sock = socket.socket(fileno=fd)
    db = Path(path)
    try:
        conn = connect(db, readonly=False)
        migrate(conn, db)
    except BaseException as exc:
        sock.sendall(_frame(("error", str(exc))))
        return 1
    sock.sendall(_frame(("ready", SCHEMA_VERSION)))
    tx = SqliteTx(conn)
    checkpointer = Checkpointer(db)
    checkpointer.start()
    buf = bytearray()
    eof = False
    while True:
        requests = [req for frame in _take_frames(buf) for req in frame]
        if not requests:
            if eof:
                break
            data = sock.recv(1 << 20)  # wait for work
            if not data:
                break
            buf += data
            try:
                while True:  # and take whatever else is already there: one batch
                    more = sock.recv(1 << 20, socket.MSG_DONTWAIT)
                    if not more:
                        eof = True
                        break
                    buf += more
            except BlockingIOError:
                pass
            continue
        for i in range(0, len(requests), MAX_BATCH):
            chunk = requests[i : i + MAX_BATCH]
            outcomes = commit_batch(conn, tx, [(name, decode_op(name, args)) for _, name, args in chunk])
            answer = [
                (rid, exc is None, encode_result(result) if exc is None else str(exc))
                for (rid, _, _), (result, exc) in zip(chunk, outcomes, strict=True)
            ]
            try:
                sock.sendall(_frame(answer))
            except OSError:
                eof = True  # the exporter is gone; what was committed stays committed
    checkpointer.stop_event.set()
    checkpointer.join(10.0)
    with contextlib.suppress(sqlite3.Error):
        conn.close()
    return 0


class ProcessWriter:
    """The parent's side of the writer process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.outbox: list[tuple[int, str, tuple[Any, ...]]] = []  # requests of this loop iteration
        self.ids = itertools.count(1)
        self.task: asyncio.Task[None] | None = None
        self.alive = False
        self.stopping = False
        self.batches = 0
        self.committed = 0

    async def start(self) -> None:
        parent, child = socket.socketpair()
        env = dict(os.environ)
        root = _PACKAGE_ROOT
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "exporter.continuity.store",
                "--writer-fd",
                str(child.fileno()),
                str(self.path),
                pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C meant for the exporter must not cut a commit short
                env=env,
            )
        except OSError as exc:
            parent.close()
            raise StoreError(f"cannot start the store writer process: {exc}") from exc
        finally:
            child.close()
        self.reader, self.writer = await asyncio.open_unix_connection(sock=parent)
        try:
            kind, value = await asyncio.wait_for(self._read_frame(), 60.0)
        except (TimeoutError, asyncio.IncompleteReadError, OSError) as exc:
            await self.stop()
            raise StoreError(f"{self.path}: the store writer process did not start: {exc!r}") from None
        if kind != "ready":
            await self.stop()
            message = str(value)
            if str(self.path) not in message:
                message = f"{self.path}: cannot open the incident store: {message}"
            raise StoreError(message)
        self.alive = True
        self.task = asyncio.create_task(self._read_loop(), name="continuity:store-writer")

    async def _read_frame(self) -> Any:
        assert self.reader is not None
        head = await self.reader.readexactly(_FRAME.size)
        (n,) = _FRAME.unpack(head)
        return pickle.loads(await self.reader.readexactly(n))  # noqa: S301 - our own child process

    async def _read_loop(self) -> None:
        try:
            while True:
                answer = await self._read_frame()
                self.batches += 1
                for rid, ok, value in answer:
                    fut = self.pending.pop(rid, None)
                    if ok:
                        self.committed += 1
                    if fut is None or fut.done():
                        continue
                    if ok:
                        fut.set_result(decode_result(value))
                    else:
                        fut.set_exception(StoreError(value))
        except (asyncio.IncompleteReadError, OSError, pickle.UnpicklingError) as exc:
            if not self.stopping:
                log.error("the store writer process stopped", extra={"kv": {"err": repr(exc)}})
        finally:
            self.alive = False
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(StoreError("the store writer process stopped before committing"))
            self.pending.clear()

    async def submit(self, op: tuple[str, tuple[Any, ...]]) -> Any:
        if not self.alive or self.writer is None:
            raise StoreError("the store writer process is not running")
        rid = next(self.ids)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        name, args = op
        self.outbox.append((rid, name, encode_op(name, args)))
        self.pending[rid] = fut
        if len(self.outbox) == 1:
            # Everything this loop iteration submits goes in one frame, with one write.
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        batch, self.outbox = self.outbox, []
        if not batch:
            return
        try:
            if self.writer is None or self.writer.is_closing():
                raise ConnectionResetError("the socket to the writer process is closed")
            self.writer.write(_frame(batch))
        except (OSError, RuntimeError) as exc:
            err = StoreError(f"the store writer process is not reachable: {exc!r}")
            for rid, _, _ in batch:
                fut = self.pending.pop(rid, None)
                if fut is not None and not fut.done():
                    fut.set_exception(err)

    async def stop(self) -> None:
        self._flush()  # what was submitted is still sent: the child commits it before it exits
        self.alive = False
        self.stopping = True
        if self.writer is not None:
            self.writer.close()  # EOF: the child finishes its batch and exits
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        if self.proc is not None and self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), 10.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m exporter.continuity.store",
        description="The incident store's writer process (started by the exporter).",
    )
    parser.add_argument("--writer-fd", type=int, required=True)
    parser.add_argument("path")
    args = parser.parse_args(argv)
    return writer_process_main(args.writer_fd, args.path)
