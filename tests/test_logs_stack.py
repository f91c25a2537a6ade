"""Issue 15 acceptance: exact counts from the logs of the real Postfix and Dovecot of the test stack.

Every test sends real traffic through the stack (:mod:`logtraffic`): exactly ``N_SENT``
messages delivered through LMTP to Dovecot, ``N_DEFERRED`` deferred to the dead loopback
relay, ``N_REJECTED`` rejected at RCPT for an unknown user, ``K_SASL`` wrong-password
``AUTH PLAIN`` on submission and ``K_IMAP`` wrong-password ``LOGIN`` on IMAP (different
numbers, so that a count landing under the wrong label shows).  It waits until Postfix and
Dovecot have logged every outcome, and runs the log checks as the exporter builds them
(``exporter.checks.build`` with a state directory, run by the :class:`Scheduler`), one per
log: ``postfix`` follows ``<stack>/postfix/maillog`` (postlogd, ``syslog_name postfix-mce``,
so programs are ``postfix-mce/smtpd``, ``postfix-mce/submission/smtpd``, ...), ``dovecot``
follows Dovecot's ``log_path`` file.  Both start at the end of their file, so every counter
is the traffic of the test alone (the stack is shared: the logs are quiet-checked before the
test starts, and every figure is also compared with a recount of the lines the logs grew by).

The ground truth is read from those lines by :mod:`logtraffic`'s own simple patterns, not by
the parsers under test: the counts, and the sum of the ``delay=`` fields of the delivered
messages, which the delay histogram's ``_sum`` must match within 1 s.

Then the same with, in the middle of the stream and with lines written but not yet read by
the check: a rename rotation (``mv maillog maillog.1`` + ``postfix reload``, as ``postfix
logrotate`` does without compressing), a copytruncate rotation, and an exporter restart (new
checks built on the same state directory): no line lost, none counted twice.  Finally the
lines recorded from one run are fed into a real journal file (``systemd-journal-remote``) and
into the syslog receiver (UDP as RFC 3164, TCP as RFC 5424 with octet counting), and those
sources must count exactly what the file sources counted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from logtraffic import LogFollower, Sent, Traffic, Truth, rotate_copytruncate, rotate_rename, settle_both
from logtraffic import truth as recount
from prometheus_client.parser import text_string_to_metric_families
from stack import Stack

# The parsers and sources register on import.  exporter.checks.logs imports only the file source
# so far; these imports make sure every parser and source this test uses is registered.
import exporter.logs.dovecot
import exporter.logs.postfix
import exporter.logs.sources.journal
import exporter.logs.sources.syslog  # noqa: F401
from exporter import config
from exporter.checks import BuildContext
from exporter.checks import build as build_checks
from exporter.core.scheduler import Check, RunRecord, Scheduler
from exporter.core.snapshot import Snapshot
from exporter.logs.parsers import PARSERS, ParseOptions
from exporter.logs.record import parse_line
from exporter.logs.tally import Tally

LOG = logging.getLogger("test.logs.stack")

N_SENT, N_DEFERRED, N_REJECTED, K_SASL, K_IMAP = 6, 5, 4, 3, 2
#: The traffic split in three phases (before, between and after the event in the middle).
PHASES = ((2, 2, 1, 1, 1), (2, 1, 2, 1, 0), (2, 2, 1, 1, 1))
assert tuple(map(sum, zip(*PHASES, strict=True))) == (N_SENT, N_DEFERRED, N_REJECTED, K_SASL, K_IMAP)

#: Families compared across sources (counters and histograms of the mail flow and line counts).
FLOW_PREFIXES = ("mail_log_lines", "mail_log_messages", "mail_log_deliver", "mail_postfix_", "mail_dovecot_")

Key = tuple[str, frozenset[tuple[str, str]]]


# --- reading what the checks exported ----------------------------------------------------------------


@dataclass
class Counts:
    """Samples of an exposition: (sample name, labels) -> value; several expositions add up."""

    values: dict[Key, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, *texts: str) -> Counts:
        out: dict[Key, float] = {}
        for text in texts:
            for fam in text_string_to_metric_families(text):
                for s in fam.samples:
                    if s.name.endswith("_created"):
                        continue
                    key = (s.name, frozenset(s.labels.items()))
                    out[key] = out.get(key, 0.0) + s.value
        return cls(out)

    def __add__(self, other: Counts) -> Counts:
        out = dict(self.values)
        for key, value in other.values.items():
            out[key] = out.get(key, 0.0) + value
        return Counts(out)

    def sum(self, name: str, **labels: str) -> float:
        want = set(labels.items())
        return sum(v for (n, ls), v in self.values.items() if n == name and want <= ls)

    def flow(self) -> dict[Key, float]:
        """The mail-flow samples without the ``source`` label, summed over sources; zeros dropped."""
        out: dict[Key, float] = {}
        for (name, labels), value in self.values.items():
            if name.startswith(FLOW_PREFIXES) and "_bucket" not in name and value:
                key = (name, frozenset((k, v) for k, v in labels if k != "source"))
                out[key] = out.get(key, 0.0) + value
        return {k: round(v, 6) for k, v in out.items()}


class Harness:
    """The log checks of one exporter "process": built from a config, run by a Scheduler."""

    def __init__(self, config_text: str, state_dir: Path) -> None:
        self.cfg = config.load_text(config_text)
        self.state_dir = state_dir
        self.snapshot = Snapshot()
        # Runs are driven by the test (run_once); the scheduler's own first run would come only
        # after a random delay of up to a day.
        self.scheduler = Scheduler(self.snapshot, first_run_spread=86_400.0)
        self.checks: list[Check] = []

    async def start(self) -> Harness:
        self.checks = [
            c for c in build_checks(self.cfg, BuildContext(state_dir=str(self.state_dir))) if c.kind == "log"
        ]
        assert self.checks, "no log check was built"
        self.scheduler.apply(self.checks)
        await self.run()
        return self

    async def run(self) -> dict[str, RunRecord]:
        return {c.name: await self.scheduler.run_once(c) for c in self.checks}

    async def drain(self, max_runs: int = 30) -> dict[str, RunRecord]:
        """Run every check until a run reads no line (bounded)."""
        records: dict[str, RunRecord] = {}
        for c in self.checks:
            for _ in range(max_runs):
                rec = records[c.name] = await self.scheduler.run_once(c)
                if dict(rec.details).get("lines") == "0":
                    break
            else:
                raise AssertionError(f"{c.key} still reads lines after {max_runs} runs")
        return records

    def counts(self) -> Counts:
        return Counts.parse(self.snapshot.render().decode())

    async def stop(self) -> None:
        self.scheduler.apply([])  # closes the sources (files, sockets)
        await self.scheduler.stop()


def stack_config(stack: Stack, interval: str = "24h") -> str:
    return f"""
logs:
  - name: postfix
    type: file
    path: "{stack.postfix_log}"
    parsers: [postfix]
    start_at: end
    interval: {interval}
  - name: dovecot
    type: file
    path: "{stack.dovecot_log}"
    parsers: [dovecot]
    start_at: end
    interval: {interval}
"""


# --- ground truth and the assertions -----------------------------------------------------------------


def unparsed_lines(lines: Iterable[str], parser: str) -> list[str]:
    """The lines the given parser does not understand (for the failure messages)."""
    out = []
    for line in lines:
        rec = parse_line(line)
        if rec is None or not PARSERS[parser](rec, Tally(), ParseOptions()):
            out.append(line)
    return out


def assert_exact(c: Counts, truth: Truth, sent: Sent) -> None:
    """Every counter of the traffic equals the number sent, and the ground truth agrees."""
    w = truth.window
    # the ground truth itself: the logs hold exactly what was sent, and nothing else of its kind
    assert (truth.sent, truth.deferred, truth.rejected) == (len(sent.delivered), len(sent.deferred), len(sent.rejected))
    assert (truth.sasl_failures, truth.imap_failures, truth.lmtp_saved) == (sent.sasl, sent.imap, len(sent.msgids))
    assert (w["status_sent"], w["status_deferred"], w["noqueue_550"]) == (truth.sent, truth.deferred, truth.rejected)
    assert (w["sasl_failures"], w["imap_failures"]) == (truth.sasl_failures, truth.imap_failures)

    pf, dc = {"source": "postfix"}, {"source": "dovecot"}
    unparsed_pf = c.sum("mail_log_lines_unparsed_total", **pf)
    unparsed_dc = c.sum("mail_log_lines_unparsed_total", **dc)
    figures = {
        "lines postfix": (c.sum("mail_log_lines_total", **pf), len(truth.postfix_lines)),
        "lines dovecot": (c.sum("mail_log_lines_total", **dc), len(truth.dovecot_lines)),
        "sent": (c.sum("mail_log_deliveries_total", status="sent", **pf), truth.sent),
        "sent via lmtp": (c.sum("mail_log_deliveries_total", transport="lmtp", status="sent", **pf), truth.sent),
        "deferred": (c.sum("mail_log_deliveries_total", status="deferred", **pf), truth.deferred),
        "bounced": (c.sum("mail_log_deliveries_total", status="bounced", **pf), 0),
        "dsn 2.0.0 sent": (c.sum("mail_log_delivery_dsn_total", status="sent", dsn="2.0.0", **pf), truth.sent),
        "dsn 4.4.1 deferred": (
            c.sum("mail_log_delivery_dsn_total", status="deferred", dsn="4.4.1", **pf),
            truth.deferred,
        ),
        "rejects 550 unknown_user": (
            c.sum("mail_postfix_smtpd_rejects_total", code="550", reason="unknown_user", **pf),
            truth.rejected,
        ),
        "rejects, all": (c.sum("mail_postfix_smtpd_rejects_total", **pf), truth.rejected),
        "sasl failures": (c.sum("mail_postfix_smtpd_sasl_failures_total", **pf), truth.sasl_failures),
        "imap login failures": (
            c.sum("mail_dovecot_logins_total", protocol="imap", result="failure", **dc),
            truth.imap_failures,
        ),
        "imap auth_failed": (
            c.sum("mail_dovecot_logins_total", protocol="imap", result="failure", reason="auth_failed", **dc),
            truth.imap_failures,
        ),
        "dovecot logins, all": (c.sum("mail_dovecot_logins_total", **dc), truth.imap_failures),
        "lmtp saved": (c.sum("mail_dovecot_lmtp_deliveries_total", result="saved", **dc), truth.lmtp_saved),
        "delay count": (
            c.sum("mail_log_delivery_delay_seconds_count", stage="total", **pf),
            truth.sent,
        ),
        "smtpd connections": (c.sum("mail_postfix_smtpd_connections_total", **pf), w["connect"]),
        "smtpd disconnections": (c.sum("mail_postfix_smtpd_disconnections_total", **pf), w["disconnect"]),
        "tls inbound TLSv1.3": (
            c.sum("mail_postfix_tls_connections_total", direction="inbound", protocol="TLSv1.3", **pf),
            w["tls_in_TLSv1.3"],
        ),
        "received": (c.sum("mail_log_messages_received_total", **pf), w["cleanup_message_id"]),
        "qmgr removed": (c.sum("mail_postfix_qmgr_removed_total", **pf), w["qmgr_removed"]),
        "unparsed postfix": (unparsed_pf, 0),
        "unparsed dovecot": (unparsed_dc, 0),
    }
    LOG.info("counted / truth: %s", {k: f"{a:g}/{b:g}" for k, (a, b) in figures.items()})
    wrong = {k: f"counted {a:g}, expected {b:g}" for k, (a, b) in figures.items() if a != b}
    detail = ""
    if unparsed_pf or unparsed_dc:
        detail = "\nnot understood:\n" + "\n".join(
            unparsed_lines(truth.postfix_lines, "postfix") + unparsed_lines(truth.dovecot_lines, "dovecot")
        )
    assert not wrong, f"{wrong}{detail}"
    # the traffic's own numbers, once more
    assert w["connect"] == sent.smtp_sessions and w["tls_in_TLSv1.3"] == sent.tls_sessions
    assert w["cleanup_message_id"] == len(sent.delivered) + len(sent.deferred)
    assert w["qmgr_removed"] == len(sent.delivered)
    # the delay histogram: its sum is that of the delay= fields (rounded to 10 ms in the log)
    delay_sum = c.sum("mail_log_delivery_delay_seconds_sum", stage="total", **pf)
    assert abs(delay_sum - truth.delay_sum) <= 1.0, (delay_sum, truth.delays)
    # every delivered message is in the histogram's buckets too (le="+Inf")
    assert c.sum("mail_log_delivery_delay_seconds_bucket", stage="total", le="+Inf", **pf) == truth.sent
    # nothing lost to a rotation or truncation, no read problem at all
    errors = {k: v for k, v in c.values.items() if k[0] == "mail_log_read_errors_total" and v}
    assert not errors, errors


# --- fixtures --------------------------------------------------------------------------------------


@dataclass
class Env:
    stack: Stack
    tmp: Path
    traffic: Traffic
    postfix: LogFollower
    dovecot: LogFollower
    state_dir: Path

    def sent_phase(self, sent: int, deferred: int, rejected: int, sasl: int, imap: int) -> Sent:
        return self.traffic.send(sent=sent, deferred=deferred, rejected=rejected, sasl=sasl, imap=imap)

    async def phase(self, counts: tuple[int, int, int, int, int]) -> tuple[Sent, Truth]:
        sent = await asyncio.to_thread(self.sent_phase, *counts)
        truth = await asyncio.to_thread(self.traffic.wait_logged, sent, self.postfix, self.dovecot)
        return sent, truth


@pytest.fixture
async def env(stack: Stack, tmp_path: Path) -> AsyncIterator[Env]:
    traffic = Traffic(stack)
    postfix = LogFollower(stack.postfix_log)
    dovecot = LogFollower(stack.dovecot_log)
    # Start from quiet logs (stragglers of earlier tests written), then follow them.
    await asyncio.to_thread(quiet, stack)
    postfix.start()
    dovecot.start()
    try:
        yield Env(stack, tmp_path, traffic, postfix, dovecot, tmp_path / "data" / "logs")
    finally:
        postfix.close()
        dovecot.close()
        await asyncio.to_thread(traffic.cleanup)


def quiet(stack: Stack) -> None:
    with LogFollower(stack.postfix_log).start() as a, LogFollower(stack.dovecot_log).start() as b:
        settle_both(a, b, quiet=1.0, timeout=20.0)


def all_sent(*parts: Sent) -> Sent:
    total = Sent()
    for p in parts:
        total += p
    return total


def final_truth(e: Env, sent: Sent) -> Truth:
    return recount(sent, e.postfix.lines, e.dovecot.lines)


# --- the tests -------------------------------------------------------------------------------------


async def test_exact_counts(env: Env) -> None:
    h = await Harness(stack_config(env.stack), env.state_dir).start()
    try:
        sent, _ = await env.phase((N_SENT, N_DEFERRED, N_REJECTED, K_SASL, K_IMAP))
        records = await h.drain()
        assert all(r.result == "success" for r in records.values()), records
        assert_exact(h.counts(), final_truth(env, sent), sent)
    finally:
        await h.stop()


async def test_rename_rotation_in_the_middle(env: Env) -> None:
    h = await Harness(stack_config(env.stack), env.state_dir).start()
    try:
        a, _ = await env.phase(PHASES[0])
        await h.drain()  # phase A read
        b, _ = await env.phase(PHASES[1])  # written to the file that is about to be renamed, not read yet
        rotated = await asyncio.to_thread(rotate_rename, env.stack, env.postfix)
        LOG.info("rotated to %s (%d bytes)", rotated, rotated.stat().st_size)
        # A run before Postfix has logged anything to the new maillog (it may not exist yet):
        # the rest of the renamed file must still be read, now or later.
        records = await h.run()
        LOG.info("run right after the rotation: %s", records["postfix"])
        c, _ = await env.phase(PHASES[2])  # to the new file
        assert env.stack.postfix_log.exists() and env.stack.postfix_log.stat().st_ino != rotated.stat().st_ino
        await h.drain()
        sent = all_sent(a, b, c)
        assert_exact(h.counts(), final_truth(env, sent), sent)
    finally:
        await h.stop()


async def test_copytruncate_rotation_in_the_middle(env: Env) -> None:
    h = await Harness(stack_config(env.stack), env.state_dir).start()
    try:
        a, _ = await env.phase(PHASES[0])
        await h.drain()
        b, _ = await env.phase(PHASES[1])  # in the file, not read yet: only the copy will hold them
        inode = env.stack.postfix_log.stat().st_ino
        copy = await asyncio.to_thread(rotate_copytruncate, env.stack, env.postfix)
        LOG.info("copied to %s (%d bytes), truncated in place", copy, copy.stat().st_size)
        c, _ = await env.phase(PHASES[2])
        assert env.stack.postfix_log.stat().st_ino == inode  # the same file, truncated and refilled
        await h.drain()
        sent = all_sent(a, b, c)
        assert_exact(h.counts(), final_truth(env, sent), sent)
    finally:
        await h.stop()


async def test_restart_in_the_middle(env: Env) -> None:
    config_text = stack_config(env.stack)
    first = await Harness(config_text, env.state_dir).start()
    try:
        a, _ = await env.phase(PHASES[0])
        await first.drain()
        b, _ = await env.phase(PHASES[1])  # written while the exporter is "down" (not read by it)
        before = first.counts()
    finally:
        await first.stop()
    positions = sorted(p.name for p in env.state_dir.iterdir())
    assert positions == ["dovecot.json", "postfix.json"], positions
    second = await Harness(config_text, env.state_dir).start()  # a new process: same state directory
    try:
        c, _ = await env.phase(PHASES[2])
        await second.drain()
        sent = all_sent(a, b, c)
        # counters restart from zero in a new process: the two processes together count everything once
        assert_exact(before + second.counts(), final_truth(env, sent), sent)
        assert second.counts().sum("mail_log_deliveries_total", status="sent") == PHASES[1][0] + PHASES[2][0]
    finally:
        await second.stop()


# --- the journal and syslog sources on the same lines ------------------------------------------------

_SYSLOG_LINE = re.compile(
    r"(?P<ts>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (?P<host>\S+) (?P<prog>[^\s\[]+)\[(?P<pid>\d+)\]: "
)
_DOVECOT_LINE = re.compile(r"(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}) (?P<msg>.*)$")


@dataclass(frozen=True)
class Entry:
    """One recorded log line as a syslog entry: what a journal or a syslog forwarder would carry."""

    ts: float
    host: str
    ident: str
    pid: int | None
    message: str

    def export(self, n: int) -> bytes:
        """The journal export format (systemd-journal-remote's input)."""
        fields = {
            "__REALTIME_TIMESTAMP": str(int(self.ts * 1e6)),
            "__MONOTONIC_TIMESTAMP": str(1_000_000 + n),
            "_BOOT_ID": "0123456789abcdef0123456789abcdef",
            "_HOSTNAME": self.host,
            "SYSLOG_IDENTIFIER": self.ident,
            "SYSLOG_FACILITY": "2",
            "PRIORITY": "6",
            "_SYSTEMD_UNIT": "postfix@-.service" if self.ident.startswith("postfix") else "dovecot.service",
        }
        if self.pid is not None:
            fields["_PID"] = fields["SYSLOG_PID"] = str(self.pid)
        out = b"".join(f"{k}={v}\n".encode() for k, v in fields.items())
        msg = self.message.encode()
        # binary-safe field form: the message is the traffic's, whatever bytes it holds
        out += b"MESSAGE\n" + struct.pack("<Q", len(msg)) + msg + b"\n"
        return out + b"\n"

    def rfc3164(self) -> bytes:
        """``<PRI>Mmm dd hh:mm:ss host tag[pid]: msg`` (mail.info), as rsyslog forwards it."""
        stamp = time.strftime("%b %e %H:%M:%S", time.localtime(self.ts))
        tag = self.ident + (f"[{self.pid}]" if self.pid is not None else "")
        return f"<22>{stamp} {self.host} {tag}: {self.message}".encode()

    def rfc5424(self) -> bytes:
        """``<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG`` with octet counting (RFC 6587)."""
        stamp = datetime.fromtimestamp(self.ts).astimezone().isoformat(timespec="microseconds")
        body = f"<22>1 {stamp} {self.host} {self.ident} {self.pid if self.pid is not None else '-'} - - {self.message}"
        raw = body.encode()
        return f"{len(raw)} ".encode() + raw


def entries(truth: Truth) -> list[Entry]:
    """The recorded lines as entries: Postfix's from the maillog, Dovecot's in its syslog form."""
    out = []
    year = time.localtime().tm_year
    for line in truth.postfix_lines:
        m = _SYSLOG_LINE.match(line)
        assert m is not None, line
        ts = time.mktime(time.strptime(f"{year} {m.group('ts')}", "%Y %b %d %H:%M:%S"))
        if ts > time.time() + 86_400:
            ts = time.mktime(time.strptime(f"{year - 1} {m.group('ts')}", "%Y %b %d %H:%M:%S"))
        out.append(Entry(ts, m.group("host"), m.group("prog"), int(m.group("pid")), line[m.end() :]))
    for line in truth.dovecot_lines:
        m = _DOVECOT_LINE.match(line)
        assert m is not None, line
        ts = datetime.strptime(m.group("ts"), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        # through syslog, Dovecot leaves out the level of Info lines ("imap-login: Disconnected: ...")
        msg = re.sub(r"^([^:]+): Info: ", r"\1: ", m.group("msg"), count=1)
        out.append(Entry(ts, "mx1", "dovecot", None, msg))
    return out


def _journal_remote() -> str | None:
    for path in ("/lib/systemd/systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote"):
        if os.access(path, os.X_OK):
            return path
    return shutil.which("systemd-journal-remote")


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def drain_until(h: Harness, lines: int, timeout: float = 30.0) -> None:
    """Run the checks until they have read ``lines`` lines (the receiver gets them asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        await h.run()
        got = h.counts().sum("mail_log_lines_total")
        if got >= lines:
            await h.run()  # and nothing more arrives
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"read {got:g} of {lines} lines within {timeout}s")
        await asyncio.sleep(0.2)


def diff(a: dict[Key, float], b: dict[Key, float]) -> dict[str, tuple[float, float]]:
    keys = set(a) | set(b)
    return {
        f"{n}{dict(sorted(ls))}": (a.get((n, ls), 0.0), b.get((n, ls), 0.0))
        for n, ls in sorted(keys, key=str)
        if a.get((n, ls), 0.0) != b.get((n, ls), 0.0)
    }


async def test_journal_and_syslog_count_what_the_file_counts(env: Env) -> None:
    remote = _journal_remote()
    if remote is None or shutil.which("journalctl") is None:
        pytest.fail("systemd-journal-remote and journalctl are needed (scripts/teststack.sh install)", pytrace=False)
    files = await Harness(stack_config(env.stack), env.state_dir).start()
    try:
        sent, _ = await env.phase((N_SENT, N_DEFERRED, N_REJECTED, K_SASL, K_IMAP))
        await files.drain()
        truth = final_truth(env, sent)
        by_file = files.counts()
        assert_exact(by_file, truth, sent)
    finally:
        await files.stop()
    recorded = entries(truth)
    n = len(recorded)
    assert n == len(truth.postfix_lines) + len(truth.dovecot_lines)
    want = by_file.flow()

    # the journal: a real journal file written by systemd-journal-remote
    journal = env.tmp / "mail.journal"
    proc = await asyncio.to_thread(
        subprocess.run,
        [remote, f"--output={journal}", "-"],
        input=b"".join(e.export(i) for i, e in enumerate(recorded)),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    jh = await Harness(
        f"""
logs:
  - {{name: journal, type: journal, files: ["{journal}"], start_at: beginning, parsers: [postfix, dovecot],
     interval: 24h}}
""",
        env.tmp / "journal-state",
    ).start()
    try:
        await drain_until(jh, n)
        got = jh.counts()
        assert got.sum("mail_log_lines_total") == n
        assert got.flow() == want, diff(got.flow(), want)
    finally:
        await jh.stop()

    # the syslog receiver: RFC 3164 over UDP, RFC 5424 with octet counting over TCP
    for protocol, kind in (("udp", socket.SOCK_DGRAM), ("tcp", socket.SOCK_STREAM)):
        port = free_port(kind)
        sh = Harness(
            f"""
logs:
  - {{name: syslog-{protocol}, type: syslog, listen: "127.0.0.1:{port}", protocol: {protocol},
     parsers: [postfix, dovecot], interval: 24h}}
""",
            env.tmp / f"syslog-{protocol}-state",
        )
        await sh.start()  # the first run binds the socket
        try:
            await asyncio.to_thread(send_syslog, protocol, port, recorded)
            await drain_until(sh, n)
            got = sh.counts()
            assert got.sum("mail_log_lines_total") == n, protocol
            assert got.flow() == want, (protocol, diff(got.flow(), want))
        finally:
            await sh.stop()


def send_syslog(protocol: str, port: int, recorded: list[Entry]) -> None:
    """Send the entries to 127.0.0.1:port, paced for UDP so that nothing is lost on loopback."""
    if protocol == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i, e in enumerate(recorded):
                s.sendto(e.rfc3164(), ("127.0.0.1", port))
                if i % 20 == 19:
                    time.sleep(0.005)
    else:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"".join(e.rfc5424() for e in recorded))
