#!/usr/bin/env python3
"""Sustained Alertmanager webhook ingestion: notifications per second and latency, durable commits.

Starts the real exporter (``python -m exporter``) with a fresh incident store, then posts
realistic Alertmanager version 4 notifications from C concurrent clients (keep-alive
connections, like Alertmanager's) for D seconds and reports the sustained rate of 200
answers and the latency percentiles.  Two stores, side by side in one run:

- ``sqlite``: the default store, a fresh SQLite file (WAL, ``synchronous=FULL``: every
  acknowledged notification is fsynced; group commit in a writer process);
- ``postgresql``: ``--storage.url=postgresql://...``, a fresh scratch database on a
  loopback PostgreSQL server (created for the run, dropped afterwards), with the
  server's durable settings (``fsync``, ``synchronous_commit``: the exporter refuses
  anything less).  The server is ``--pg-dsn`` (a role that may ``CREATE DATABASE``),
  else ``$MCE_BENCH_PG_DSN`` or ``$MCE_TEST_PG_DSN``, else the test stack's
  (``/tmp/mce-teststack/stack.json``, key ``postgresql``).  Its CPU is read from
  ``/proc`` (the postmaster, its background processes and the backends of the scratch
  database), so run the benchmark on the server's machine.

Two workloads:

- ``lifecycle``: each alert group goes through firing (3 new alerts), a repeat of
  the same notification (Alertmanager's repeat_interval), then resolved: one third
  new alerts, one third duplicates, one third resolutions.  Alerts are spread over
  3 services, so incidents open and close all the time.
- ``new``: every notification carries 3 alerts never seen before (the worst case
  for the store: every alert is an insert plus incident bookkeeping).

    python benchmarks/webhook_bench.py                      # both stores and workloads, 8 clients, 3 x 10 s
    python benchmarks/webhook_bench.py --store sqlite --workload new --repeat 1
    python benchmarks/webhook_bench.py --store postgresql --pg-dsn postgresql://me@127.0.0.1:5432/postgres
    python benchmarks/webhook_bench.py --quick              # lifecycle, 2 s, 1 round, SQLite unless --pg-dsn

By default both stores run when the PostgreSQL server answers, else SQLite alone (with a
note).  Rounds interleave the stores (round 1: lifecycle on each store, new on each store;
round 2: ...), so both see the same conditions; the summary shows the median of the rounds
of each (store, workload) and the ratio PostgreSQL / SQLite.

Loopback only (the exporter listens on 127.0.0.1; a PostgreSQL server elsewhere is
refused); bounded in time (each run stops after --duration seconds) and count
(--max-requests).  Prints markdown tables and writes them to webhook.md in --results-dir
(default benchmarks/results).  ``--summary FILE`` appends the headline figures (the medians
of the rounds) as JSON lines, for benchmarks/run_all.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from run_all import append_summary, summary_line  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "webhook.md"
TARGET_RATE = 2000.0  # the design's target: 2,000 notifications a second, durable
STACK_JSON = Path(os.environ.get("MCE_STACK_DIR") or "/tmp/mce-teststack") / "stack.json"
STORES = ("sqlite", "postgresql")
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
SERVICES = ("inbound", "outbound", "imap")
CONFIG = """
global: {interval: 1h, timeout: 10s}
continuity:
  services:
    - {name: inbound, incident_match: {service: inbound}}
    - {name: outbound, incident_match: {service: outbound}}
    - {name: imap, incident_match: {service: imap}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ts(t: float) -> str:
    dt = datetime.fromtimestamp(t, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond:06d}000Z"


def alert(fp: str, service: str, starts: float, ends: float | None, n: int) -> dict[str, object]:
    return {
        "status": "resolved" if ends is not None else "firing",
        "labels": {
            "alertname": "MailQueueBackingUp",
            "service": service,
            "severity": ("critical", "warning", "info")[n % 3],
            "instance": f"mta{n % 7}.example.com:10587",
            "job": "mail",
            "queue": "deferred",
        },
        "annotations": {
            "summary": "The deferred queue is growing.",
            "description": f"mta{n % 7}.example.com has {100 + n % 900} deferred messages.",
            "runbook_url": "https://example.com/runbooks#mailqueuebackingup",
        },
        "startsAt": ts(starts),
        "endsAt": ts(ends) if ends is not None else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example.com:9090/graph?g0.expr=mail_queue_messages",
        "fingerprint": fp,
    }


def notification(alerts: list[dict[str, object]], status: str, group: int) -> bytes:
    return json.dumps(
        {
            "version": "4",
            "groupKey": f'{{}}:{{alertname="MailQueueBackingUp", group="{group}"}}',
            "truncatedAlerts": 0,
            "status": status,
            "receiver": "mail-continuity-exporter",
            "groupLabels": {"alertname": "MailQueueBackingUp"},
            "commonLabels": {"alertname": "MailQueueBackingUp", "job": "mail"},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager.example.com:9093",
            "alerts": alerts,
        }
    ).encode()


class BodyTemplate:
    """A notification body of 3 alerts with its variable parts cut out: rendering one is a join of bytes.

    The load generator shares the machine with the exporter, so it does not run
    ``json.dumps`` per request; :meth:`render` gives the same bytes as :func:`notification`
    (checked once at start, :func:`check_templates`).
    """

    FIELDS = (
        "GROUPKEY",
        "SERVICE",
        "STARTS",
        "ENDS",
        *(f"{f}{k}" for k in range(3) for f in ("FP", "N", "SEV", "INST")),
    )

    def __init__(self, status: str) -> None:
        resolved = status == "resolved"
        alerts = [alert(f"@FP{k}@", "@SERVICE@", 0.0, 30.0 if resolved else None, 0) for k in range(3)]
        for k, a in enumerate(alerts):
            a["startsAt"] = "@STARTS@"
            if resolved:
                a["endsAt"] = "@ENDS@"
            labels = a["labels"]
            assert isinstance(labels, dict)
            labels["severity"], labels["instance"] = f"@SEV{k}@", f"@INST{k}@:10587"
            annotations = a["annotations"]
            assert isinstance(annotations, dict)
            annotations["description"] = f"@INST{k}@ has @N{k}@ deferred messages."
        text = notification(alerts, status, 0).decode().replace('group=\\"0\\"', 'group=\\"@GROUPKEY@\\"')
        self.parts: list[bytes | int] = []
        for i, piece in enumerate(text.split("@")):
            if i % 2 == 0:
                self.parts.append(piece.encode())
            else:
                self.parts.append(self.FIELDS.index(piece))

    def render(self, gid: int, service: str, starts: float, fps: list[str]) -> bytes:
        start = ts(starts).encode()
        values = [str(gid).encode(), service.encode(), start, ts(starts + 30).encode()]
        for k in range(3):
            n = gid + k
            values += [
                fps[k].encode(),
                str(100 + n % 900).encode(),
                SEVERITIES[n % 3],
                f"mta{n % 7}.example.com".encode(),
            ]
        return b"".join(p if isinstance(p, bytes) else values[p] for p in self.parts)


SEVERITIES = (b"critical", b"warning", b"info")
TEMPLATES = {status: BodyTemplate(status) for status in ("firing", "resolved")}


def check_templates() -> None:
    """The rendered bodies are exactly what json.dumps of the payload gives."""
    gid, starts = 123_456_789, 1_700_000_000.123456
    fps = [f"{gid:012x}{k:04x}" for k in range(3)]
    for status, end in (("firing", None), ("resolved", starts + 30)):
        want = notification([alert(fp, "imap", starts, end, gid + k) for k, fp in enumerate(fps)], status, gid)
        if TEMPLATES[status].render(gid, "imap", starts, fps) != want:
            raise AssertionError(f"the {status} body template does not render what json.dumps gives")


def bodies(workload: str, client: int, base: float) -> Iterator[tuple[bytes, int]]:
    """An endless stream of notification bodies for one client."""
    group = 0
    firing, resolved = TEMPLATES["firing"], TEMPLATES["resolved"]
    while True:
        group += 1
        gid = client * 10_000_000 + group
        starts = base + group * 0.001
        service = SERVICES[gid % len(SERVICES)]
        fps = [f"{gid:012x}{k:04x}" for k in range(3)]
        body = firing.render(gid, service, starts, fps)
        yield body, 3
        if workload == "lifecycle":
            yield body, 0  # Alertmanager's repeat: same alerts, nothing new
            yield resolved.render(gid, service, starts, fps), 0


class RawClient(asyncio.Protocol):
    """A minimal HTTP/1.1 keep-alive client, so that the load generator costs little CPU
    (it shares the machine with the exporter); like wrk or hey, it only sends and times.

    An asyncio protocol rather than streams: one ``data_received`` per answer, no
    ``readuntil``/``readexactly`` coroutines.  It reads answers with a Content-Length
    (what the exporter sends) and closes the connection on anything else.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.buf = b""
        self.waiter: asyncio.Future[int] | None = None

    async def post(self, path: str, body: bytes) -> int:
        loop = asyncio.get_running_loop()
        if self.transport is None:
            await loop.create_connection(lambda: self, "127.0.0.1", self.port)
            self.head = (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: application/json\r\n"
                "Content-Length: "
            ).encode()
        assert self.transport is not None
        self.waiter = loop.create_future()
        self.transport.write(b"%s%d\r\n\r\n%s" % (self.head, len(body), body))
        return await self.waiter

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        header = self.buf[: end + 2].lower()
        at = header.find(b"\r\ncontent-length:")
        if at < 0:
            self._fail(ConnectionError("an answer without Content-Length"))
            return
        size = end + 4 + int(header[at + 17 : header.index(b"\r\n", at + 2)])
        if len(self.buf) < size:
            return
        status, self.buf = int(self.buf[9:12]), self.buf[size:]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("the exporter closed the connection"))
        self.transport = None

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def client_loop(
    port: int,
    workload: str,
    client: int,
    stop_at: float,
    budget: list[int],
    latencies: list[float],
    errors: list[str],
    base: float,
) -> int:
    alerts = 0
    http = RawClient(port)
    try:
        for body, new in bodies(workload, client, base):
            if time.monotonic() >= stop_at or budget[0] <= 0:
                break
            budget[0] -= 1
            t0 = time.perf_counter()
            status = await http.post("/alertmanager", body)
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors.append(str(status))
            else:
                alerts += new
    finally:
        http.close()
    return alerts


async def run_load(
    port: int, workload: str, clients: int, duration: float, max_requests: int, cpu: CpuMeter
) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[str] = []
    budget = [max_requests]
    base = time.time() - 3600
    # warm-up: one second, not measured
    await asyncio.gather(
        *(
            client_loop(port, "new", 90 + c, time.monotonic() + 1.0, [10_000], [], [], base - 7200)
            for c in range(clients)
        )
    )
    cpu.start()
    c0 = time.process_time()  # this process is the load generator: its CPU is the client's
    t0 = time.perf_counter()
    stop_at = time.monotonic() + duration
    new_alerts = await asyncio.gather(
        *(client_loop(port, workload, c, stop_at, budget, latencies, errors, base) for c in range(clients))
    )
    elapsed = time.perf_counter() - t0
    client_cpu = time.process_time() - c0
    exporter_cpu, server_cpu = cpu.stop()
    lat = sorted(latencies)

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000

    return {
        "requests": len(lat),
        "errors": len(errors),
        "seconds": elapsed,
        "rate": (len(lat) - len(errors)) / elapsed,
        "alerts_new": sum(new_alerts),
        "p50": pct(0.50),
        "p90": pct(0.90),
        "p99": pct(0.99),
        "max": lat[-1] * 1000,
        "mean": statistics.fmean(lat) * 1000,
        "server_cpu": exporter_cpu / elapsed,
        "client_cpu": client_cpu / elapsed,
        "db_cpu": server_cpu / elapsed if server_cpu is not None else float("nan"),
    }


# --- CPU from /proc ------------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (fields[1]: parent pid, [11], [12]: utime, stime)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _pids() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its children (the store writer)."""
    total = 0.0
    for p in _pids():
        fields = _stat(p)
        if fields is not None and (p == pid or int(fields[1]) == pid):
            total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


class PgServerCpu:
    """CPU seconds of a local PostgreSQL server's work for one database: the postmaster, its background
    processes (WAL writer, checkpointer, ...) and the backends connected to ``dbname``; never the
    backends of other databases (other users of a shared server)."""

    AUX = ("checkpointer", "background", "walwriter", "autovacuum", "logical", "archiver", "stats", "startup")

    def __init__(self, postmaster: int, cluster_name: str, dbname: str) -> None:
        self.postmaster = postmaster
        self.prefix = "postgres: " + (f"{cluster_name}: " if cluster_name else "")
        self.dbname = dbname

    def _counts(self, pid: int) -> bool:
        if pid == self.postmaster:
            return True
        try:
            title = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        if not title.startswith(self.prefix):
            return False
        words = title[len(self.prefix) :].split()
        if not words:
            return False
        if words[0] in self.AUX:
            return words[0] != "autovacuum" or words[1:2] == ["launcher"] or self.dbname in words
        return len(words) >= 2 and words[1] == self.dbname  # a backend: "user dbname host(port) state"

    def __call__(self) -> float:
        total = 0.0
        for p in _pids():
            fields = _stat(p)
            if fields is not None and (p == self.postmaster or int(fields[1]) == self.postmaster) and self._counts(p):
                total += (int(fields[11]) + int(fields[12])) / _TICK
        return total


class CpuMeter:
    def __init__(self, pid: int, server: PgServerCpu | None) -> None:
        self.pid = pid
        self.server = server
        self._t0 = (0.0, 0.0)

    def start(self) -> None:
        self._t0 = (_cpu(self.pid), self.server() if self.server else 0.0)

    def stop(self) -> tuple[float, float | None]:
        exporter = _cpu(self.pid) - self._t0[0]
        return exporter, (self.server() - self._t0[1]) if self.server else None


# --- PostgreSQL --------------------------------------------------------------------------------------------


def pg_admin_dsn(explicit: str | None) -> tuple[str | None, str]:
    """(admin DSN or None, where it came from)."""
    if explicit:
        return explicit, "--pg-dsn"
    for env in ("MCE_BENCH_PG_DSN", "MCE_TEST_PG_DSN"):
        if os.environ.get(env):
            return os.environ[env], f"${env}"
    try:
        pg = json.loads(STACK_JSON.read_text())["postgresql"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"no --pg-dsn, $MCE_BENCH_PG_DSN or $MCE_TEST_PG_DSN, and no test stack ({STACK_JSON})"
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    dsn = str(pg["dsn"])
    if pg.get("password") and not conninfo_to_dict(dsn).get("password"):
        dsn = make_conninfo(dsn, password=str(pg["password"]))
    return dsn, f"the test stack's, {STACK_JSON}"


def pg_check(admin: str) -> str | None:
    """None when the server is loopback and answers, else why not."""
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return "psycopg is not installed"
    try:
        params = conninfo_to_dict(admin)
    except psycopg.Error:
        return "invalid PostgreSQL connection string"
    hosts = str(params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or "").split(",")
    if not all(h in LOOPBACK or h.startswith("/") for h in hosts) or not hosts[0]:
        return f"the PostgreSQL server must be on this machine, on loopback (host {','.join(hosts) or 'unset'})"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL does not answer: {type(exc).__name__}"
    return None


class PgDatabase:
    """A scratch database for one run: created here, dropped (with its sessions) afterwards."""

    def __init__(self, admin: str) -> None:
        import psycopg
        from psycopg import sql
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        self.admin = admin
        self.name = f"mce_bench_{uuid.uuid4().hex[:12]}"
        params = conninfo_to_dict(admin)
        self.password = str(params.pop("password", "") or os.environ.get("PGPASSWORD") or "")
        # the exporter gets the password through PGPASSWORD, not on its command line
        self.url = make_conninfo(make_conninfo("", **params), dbname=self.name)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
            row = conn.execute("SELECT pg_backend_pid(), current_setting('cluster_name'), version()").fetchone()
        assert row is not None
        fields = _stat(int(row[0]))
        self.cpu = PgServerCpu(int(fields[1]), str(row[1]), self.name) if fields is not None else None
        self.version = str(row[2]).split(" on ")[0].split(",")[0]

    def counts(self) -> tuple[int, int]:
        import psycopg
        from psycopg.conninfo import make_conninfo

        with psycopg.connect(make_conninfo(self.admin, dbname=self.name), autocommit=True) as conn:
            a = conn.execute("SELECT count(*) FROM alerts").fetchone()
            i = conn.execute("SELECT count(*) FROM incidents").fetchone()
        assert a is not None and i is not None
        return int(a[0]), int(i[0])

    def drop(self) -> None:
        import psycopg
        from psycopg import sql

        for attempt in range(5):
            try:
                with psycopg.connect(self.admin, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name)))
                return
            except psycopg.Error as exc:
                if attempt == 4:
                    print(f"warning: could not drop the scratch database {self.name}: {exc}", file=sys.stderr)
                else:
                    time.sleep(2)


def pg_settings(admin: str) -> str:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('fsync'), current_setting('synchronous_commit'),"
            " current_setting('wal_sync_method'), current_setting('shared_buffers')"
        ).fetchone()
    assert row is not None
    return f"fsync={row[0]}, synchronous_commit={row[1]}, wal_sync_method={row[2]}, shared_buffers={row[3]}"


# --- one run -----------------------------------------------------------------------------------------------


def sqlite_counts(path: Path) -> tuple[int, int]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        alerts = conn.execute("SELECT count(*) FROM alerts").fetchone()[0]
        incidents = conn.execute("SELECT count(*) FROM incidents").fetchone()[0]
    return int(alerts), int(incidents)


def run_one(
    store: str, workload: str, clients: int, duration: float, max_requests: int, pg_admin: str | None
) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="mce-webhook-bench-") as tmp:
        cfg = Path(tmp) / "config.yml"
        cfg.write_text(CONFIG)
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "exporter",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.path={tmp}/data",
            f"--config.file={cfg}",
            "--log.level=warn",
        ]
        env = dict(os.environ)
        db: PgDatabase | None = None
        if store == "postgresql":
            assert pg_admin is not None
            db = PgDatabase(pg_admin)
            argv.append(f"--storage.url={db.url}")
            if db.password:
                env["PGPASSWORD"] = db.password
        log_path = Path(tmp) / "exporter.log"
        try:
            with log_path.open("wb") as log:
                proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
            try:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2)
                        break
                    except OSError:
                        if time.monotonic() > deadline or proc.poll() is not None:
                            tail = log_path.read_text(errors="replace")[-2000:]
                            raise RuntimeError(f"exporter did not start ({store}):\n{tail}") from None
                        time.sleep(0.1)
                cpu = CpuMeter(proc.pid, db.cpu if db is not None else None)
                result = asyncio.run(run_load(port, workload, clients, duration, max_requests, cpu))
            finally:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            alerts, incidents = db.counts() if db is not None else sqlite_counts(Path(tmp) / "data" / DB_FILE)
            result["stored_alerts"] = alerts
            result["incidents"] = incidents
        finally:
            if db is not None:
                db.drop()
    return result


DB_FILE = "mail-continuity.sqlite"


# --- the report --------------------------------------------------------------------------------------------

ROW_HEAD = (
    "| workload | notifications/s | alerts/s | p50 ms | p90 ms | p99 ms | max ms | non-200 | exporter CPU | "
    "client CPU | stored alerts | incidents | load average |"
)


def run_row(wl: str, r: dict[str, float], with_db: bool) -> str:
    db = f" {r['db_cpu'] * 100:.0f}% |" if with_db else ""
    return (
        f"| {wl} | {r['rate']:.0f} | {r['rate'] * 3:.0f} | {r['p50']:.2f} | {r['p90']:.2f} | {r['p99']:.2f} | "
        f"{r['max']:.1f} | {r['errors']:.0f} | {r['server_cpu'] * 100:.0f}% |{db} {r['client_cpu'] * 100:.0f}% | "
        f"{r['stored_alerts']:.0f} | "
        f"{r['incidents']:.0f} | {r['load']:.2f} |"
    )


def med(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


MEDIAN_KEYS = ("rate", "p50", "p90", "p99", "max", "server_cpu", "client_cpu", "db_cpu")


@dataclass(frozen=True)
class Medians:
    """One (store, workload): the medians of its rounds (``m[key]``, keys :data:`MEDIAN_KEYS`)."""

    store: str
    workload: str
    rounds: int
    errors: float  # non-200 answers, all rounds together
    base: float | None  # SQLite's median rate for the same workload (None when SQLite did not run)
    m: dict[str, float]


def medians(rows: list[tuple[str, str, dict[str, float]]], stores: list[str], workloads: list[str]) -> list[Medians]:
    """The medians of the rounds per (workload, store), in report order: for the table and the summary."""
    out: list[Medians] = []
    for wl in workloads:
        base: float | None = None
        for st in stores:
            rs = [r for s, w, r in rows if s == st and w == wl]
            if not rs:
                continue
            m = {key: med(rs, key) for key in MEDIAN_KEYS}
            if st == "sqlite":
                base = m["rate"]
            out.append(Medians(st, wl, len(rs), sum(r["errors"] for r in rs), base, m))
    return out


def report(
    rows: list[tuple[str, str, dict[str, float]]],
    stores: list[str],
    workloads: list[str],
    clients: int,
    duration: float,
    pg_info: str,
    note: str,
) -> str:
    common = (
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs (client, exporter"
        " and database server share them; 100% = one core); "
        f"{duration:g} s per run after 1 s of warm-up; each notification is a realistic Alertmanager v4 payload "
        "with 3 alerts (about 2 KiB); keep-alive connections; a 200 is sent only after the commit (fsync) that "
        "holds the notification. The load average is the machine's (1 minute) just before the run: other work on "
        "the machine shows there, and in the tail latencies."
    )
    counts = [sum(1 for s, w, _ in rows if s == st and w == wl) for st in stores for wl in workloads]
    rounds = f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)} to {max(counts)}"
    lines = [f"## Webhook ingestion, durable: {' and '.join(STORE_NAMES[s] for s in stores)}, {clients} clients", ""]
    lines += [common, ""]
    if note:
        lines += [f"Note: {note}", ""]
    # side by side
    lines += [
        f"### Side by side (median of {rounds} round{'s' if rounds != '1' else ''} per store and workload)",
        "",
        "| workload | store | notifications/s | alerts/s | p50 ms | p90 ms | p99 ms | max ms | non-200 | "
        "exporter CPU | server CPU | client CPU | PostgreSQL / SQLite |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in medians(rows, stores, workloads):
        m, rate = x.m, x.m["rate"]
        ratio = f"{rate / x.base:.2f}×" if x.store == "postgresql" and x.base else ""
        server = f"{m['db_cpu'] * 100:.0f}%" if x.store == "postgresql" else "(in exporter)"
        lines.append(
            f"| {x.workload} | {STORE_NAMES[x.store]} | {rate:.0f} | {rate * 3:.0f} | {m['p50']:.2f} | "
            f"{m['p90']:.2f} | {m['p99']:.2f} | {m['max']:.1f} | {x.errors:.0f} | "
            f"{m['server_cpu'] * 100:.0f}% | {server} | {m['client_cpu'] * 100:.0f}% | {ratio} |"
        )
    lines.append("")
    # every run, per store
    for st in stores:
        if st == "sqlite":
            lines += [
                f"### Webhook ingestion, durable (SQLite WAL, synchronous=FULL, group commit in a writer process), "
                f"{clients} clients",
                "",
                f"SQLite {sqlite3.sqlite_version}; exporter CPU includes its store writer process.",
                "",
                ROW_HEAD,
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
        else:
            lines += [
                f"### Webhook ingestion, durable (PostgreSQL, group commit in a writer thread), {clients} clients",
                "",
                f"{pg_info}. Server CPU: the postmaster, its background processes and the scratch database's "
                "backends, from /proc.",
                "",
                ROW_HEAD.replace("exporter CPU |", "exporter CPU | server CPU |"),
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
        lines += [run_row(wl, r, st == "postgresql") for s, wl, r in rows if s == st]
        lines.append("")
    return "\n".join(lines)


STORE_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=None, help="seconds per run (at most 60; default 10, quick 2)")
    ap.add_argument(
        "--repeat",
        "--rounds",
        dest="repeat",
        type=int,
        default=None,
        help="rounds (at most 5); the summary shows their median (default 3, quick 1)",
    )
    ap.add_argument("--max-requests", type=int, default=200_000, help="requests per run at most")
    ap.add_argument(
        "--workload", choices=["lifecycle", "new", "both"], default=None, help="(default both; quick lifecycle)"
    )
    ap.add_argument(
        "--store",
        default=None,
        help="comma-separated: sqlite, postgresql (default: both when PostgreSQL answers, else sqlite)",
    )
    ap.add_argument("--pg-dsn", default=None, help="a loopback PostgreSQL role that may CREATE DATABASE")
    ap.add_argument("--no-write", action="store_true", help="do not write webhook.md")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="lifecycle only, 2 s, 1 round, SQLite only unless --pg-dsn: a check that it runs",
    )
    ap.add_argument("--results-dir", type=Path, default=RESULTS.parent, help="where webhook.md goes")
    ap.add_argument("--summary", default=None, help="append the headline figures to this file as JSON lines")
    args = ap.parse_args()
    check_templates()
    if args.duration is None:
        args.duration = 2.0 if args.quick else 10.0
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.workload is None:
        args.workload = "lifecycle" if args.quick else "both"
    if args.quick and args.store is None and args.pg_dsn is None:
        args.store = "sqlite"
    duration = min(args.duration, 60.0)
    workloads = ["lifecycle", "new"] if args.workload == "both" else [args.workload]
    note = ""
    admin, origin = pg_admin_dsn(args.pg_dsn)
    why_not = pg_check(admin) if admin is not None else origin
    if args.store is None:
        stores = ["sqlite"] + (["postgresql"] if why_not is None else [])
        if why_not is not None:
            note = f"PostgreSQL not measured: {why_not}."
            print(note, file=sys.stderr)
    else:
        stores = [s.strip() for s in args.store.split(",") if s.strip()]
        unknown = [s for s in stores if s not in STORES]
        if unknown or not stores:
            ap.error(f"--store: unknown store {', '.join(unknown) or '(none)'}; choose from {', '.join(STORES)}")
        if "postgresql" in stores and why_not is not None:
            ap.error(f"--store postgresql: {why_not}")
    pg_info = ""
    if "postgresql" in stores:
        assert admin is not None
        probe = PgDatabase(admin)
        probe.drop()
        pg_info = f"{probe.version} on loopback (server: {origin}), {pg_settings(admin)}"
    rows: list[tuple[str, str, dict[str, float]]] = []
    failed: list[str] = []
    for _ in range(max(1, min(args.repeat, 5))):
        for wl in workloads:
            for st in stores:
                load = os.getloadavg()[0]
                try:
                    r = run_one(st, wl, args.clients, duration, args.max_requests, admin)
                except Exception as exc:  # e.g. the PostgreSQL server restarted under the run: report, go on
                    print(f"{st} {wl}: run failed ({type(exc).__name__}: {exc}); left out", file=sys.stderr)
                    failed.append(f"{st} {wl}")
                    continue
                r["load"] = load
                rows.append((st, wl, r))
                db = f" server CPU {r['db_cpu'] * 100:.0f}%" if st == "postgresql" else ""
                print(
                    f"{st} {wl}: {r['rate']:.0f}/s p50 {r['p50']:.1f} ms p99 {r['p99']:.1f} ms errors "
                    f"{r['errors']:.0f} exporter CPU {r['server_cpu'] * 100:.0f}%{db}"
                    f" client CPU {r['client_cpu'] * 100:.0f}%"
                    f" (load average before: {load:.2f})",
                    flush=True,
                )
    if failed:
        note = (note + " " if note else "") + f"Runs that failed and are left out: {', '.join(failed)}."
    text = report(rows, stores, workloads, args.clients, duration, pg_info, note)
    print(text)
    if not args.no_write:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        (args.results_dir / RESULTS.name).write_text(text)
    append_summary(args.summary, summary(rows, stores, workloads, args.quick))
    return 0


def summary(
    rows: list[tuple[str, str, dict[str, float]]], stores: list[str], workloads: list[str], quick: bool
) -> list[dict[str, object]]:
    """The headline figures, medians of the rounds: notifications/s (PostgreSQL against SQLite) and p99."""
    out = []
    for x in medians(rows, stores, workloads):
        vs_sqlite = x.base if x.store == "postgresql" else None
        out.append(
            summary_line(
                "webhook",
                f"notifications per second, {x.workload}, {STORE_NAMES[x.store]}",
                x.m["rate"],
                peer=vs_sqlite,
                peer_name="this exporter on SQLite" if vs_sqlite is not None else None,
                unit="notifications/s",
                better="higher",
                rounds=x.rounds,
                quick=quick,
                target=TARGET_RATE,
            )
        )
        out.append(
            summary_line(
                "webhook",
                f"p99 latency, {x.workload}, {STORE_NAMES[x.store]}",
                x.m["p99"],
                unit="ms",
                better="lower",
                rounds=x.rounds,
                quick=quick,
            )
        )
    return out


if __name__ == "__main__":
    sys.exit(main())
