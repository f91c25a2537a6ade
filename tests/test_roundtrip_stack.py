"""Issue 5 acceptance: end-to-end round trips through the real Postfix and Dovecot of the test stack.

Most tests drive :class:`exporter.roundtrip.route.Route` directly (the same object the
scheduler runs), back to back, because they need its internal timings; the last ones
run the exporter as a user would and read /metrics and the status page.

Ground truth for latency comes from Dovecot itself: the LMTP log line
``msgid=<mce.TOKEN@...>: stored mail into mailbox 'INBOX'`` carries a microsecond
timestamp (log_timestamp with %{usecs} in the stack's dovecot.conf).

Mailboxes: the steady-state, send-failure and junk tests use probe@example.test, the
LMTP test ops@example.test (its delayed probes arrive late), the exporter tests
archive@archive.example.test.  Outages are kept short and always undone in ``finally``.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import re
import signal
import statistics
import struct
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import aioimaplib
import aiosmtplib
import pytest
from helpers import metric_values, one, run_exporter
from stack import Stack

from exporter import config
from exporter.checks.route import route_check
from exporter.core.model import Sink
from exporter.core.scheduler import Scheduler
from exporter.core.snapshot import Snapshot
from exporter.roundtrip.receiver import PROBE_HEADER, MailboxSpec, close_all, get_mailbox
from exporter.roundtrip.route import Route

pytestmark = pytest.mark.slow

LOG = logging.getLogger("test.roundtrip")
SAVED_RE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}) lmtp\([^)]*\)<[^>]*><[^>]*>: Info: "
    r"(?:sieve: )?msgid=<mce\.([0-9a-f]{32})@[^>]*>: (?:stored mail into mailbox|saved mail to) '([^']+)'"
)


def route_cfg(
    stack: Stack,
    name: str,
    *,
    user: str = "probe@example.test",
    to: str | None = None,
    timeout: str = "10s",
    max_age: str = "60s",
    interval: str = "60s",
    headers: str = "",
    idle: bool = True,
    recheck: bool = True,
    poll: str = "1s",
    keep: bool = False,
) -> config.RouteConfig:
    text = f"""
routes:
  - name: {name}
    interval: {interval}
    timeout: {timeout}
    max_age: {max_age}
    send:
      address: 127.0.0.1:{stack.port("smtp")}
      tls: starttls
      tls_config: {{ca_file: "{stack.ca_file}", server_name: mx1.example.test}}
      helo: monitor.example.test
      from: probe@example.test
      to: {to or user}
      headers: {{{headers}}}
    receive:
      address: 127.0.0.1:{stack.port("imaps")}
      tls: implicit
      tls_config: {{ca_file: "{stack.ca_file}", server_name: imap.example.test}}
      username: {user}
      password: "{stack.password(user)}"
      folders: [INBOX]
      junk_folders: [Junk]
      idle: {str(idle).lower()}
      idle_recheck: {str(recheck).lower()}
      poll_interval: {poll}
      keep_messages: {str(keep).lower()}
"""
    return config.load_text(text).routes[0]


def saved_times(stack: Stack) -> dict[str, tuple[float, str]]:
    """token -> (Dovecot's save time, folder), from the LMTP log lines."""
    out: dict[str, tuple[float, str]] = {}
    for line in stack.dovecot_log.read_text(errors="replace").splitlines():
        m = SAVED_RE.match(line)
        if m:
            out[m.group(2)] = (datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp(), m.group(3))
    return out


class MaildirWatch:
    """When Dovecot began to write each probe message: inotify on a Maildir's new/ and cur/.

    A Maildir file name is ``<seconds>.M<microseconds>P<pid>.<host>,S=...``, the time
    Dovecot started to write the message.  Each new file is read at once (before the
    receiver can expunge it) to learn its probe token; other senders' mail is ignored.
    """

    IN_CREATE = 0x100
    IN_MOVED_TO = 0x80

    def __init__(self, folder: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0
        self._dirs: dict[int, Path] = {}
        for sub in ("new", "cur"):
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(folder / sub), self.IN_CREATE | self.IN_MOVED_TO)
            assert wd >= 0
            self._dirs[wd] = folder / sub
        self.began: dict[str, float] = {}  # token -> M time
        asyncio.get_running_loop().add_reader(self.fd, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        off = 0
        while off + 16 <= len(data):
            wd, _mask, _cookie, length = struct.unpack_from("iIII", data, off)
            name = data[off + 16 : off + 16 + length].rstrip(b"\0").decode(errors="replace")
            off += 16 + length
            m = re.match(r"^(\d+)\.M(\d+)P", name)
            if not m or wd not in self._dirs:
                continue
            try:
                head = (self._dirs[wd] / name).read_bytes()[:8192]
            except OSError:
                continue
            t = re.search(rb"(?mi)^" + PROBE_HEADER.encode() + rb":\s*([0-9a-f]{32})\s*$", head)
            if t:
                self.began.setdefault(t.group(1).decode(), int(m.group(1)) + int(m.group(2)) / 1e6)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


def maildir(stack: Stack, user: str) -> Path:
    local, domain = user.split("@")
    return stack.mail_dir / domain / local


def message_files(stack: Stack, user: str) -> list[Path]:
    base = maildir(stack, user)
    out: list[Path] = []
    for folder in (base, base / ".Junk"):
        for sub in ("new", "cur"):
            d = folder / sub
            if d.is_dir():
                out.extend(p for p in d.iterdir() if p.is_file())
    return out


def probe_files(stack: Stack, user: str) -> list[Path]:
    """Files of probe messages: the probe header with one of our tokens (read tolerantly: Dovecot renames files)."""
    out = []
    for p in message_files(stack, user):
        try:
            head = p.read_bytes().split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
        except FileNotFoundError:
            continue
        if re.search(rb"(?mi)^" + PROBE_HEADER.encode() + rb":\s*[0-9a-f]{32}\s*$", head):
            out.append(p)
    return out


async def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return bool(predicate())


async def smtp_send(stack: Stack, sender: str, to: str, message: bytes) -> None:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=stack.port("smtp"), start_tls=False, timeout=10)
    await smtp.connect()
    try:
        await smtp.sendmail(sender, [to], message)
    finally:
        await smtp.quit()


async def imap_delete_by_message_id(stack: Stack, user: str, message_ids: list[str]) -> None:
    """Test cleanup: delete our own non-probe messages by Message-ID."""
    client = aioimaplib.IMAP4(port=stack.port("imap"), timeout=10)
    await client.wait_hello_from_server()
    await client.login(user, stack.password(user))
    await client.select("INBOX")
    for mid in message_ids:
        resp = await client.uid_search("HEADER", "Message-ID", mid, charset=None)
        uids = [u for line in resp.lines[:-1] for u in line.decode().split() if u.isdigit()]
        if uids:
            await client.uid("store", ",".join(uids), "+FLAGS.SILENT", "(\\Deleted)")
            await client.uid("expunge", ",".join(uids))
    await client.logout()


def start_postfix(stack: Stack) -> None:
    """``stack.start("postfix")``, once the old Postfix master is really gone.

    ``teststack.sh stop postfix`` returns when port 2525 is closed, but the master then
    lingers for a second or two as a zombie until PID 1 reaps it, and ``start`` takes
    a ``/proc/<pid>`` with ``comm`` "master" for a running Postfix: it would skip the
    start and wait 30 s for the ports in vain.  So wait (at most 15 s) for the old
    master to disappear first.
    """
    pid_file = stack.postfix_queue_dir / "pid" / "master.pid"
    try:
        pid = pid_file.read_text().strip()
    except OSError:
        pid = ""
    deadline = time.monotonic() + 15
    while pid.isdigit() and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    stack.start("postfix")


def counter(route: Route, result: str) -> float:
    for s in route.state.samples():
        if s.name == "mail_roundtrip_probes_total" and ("result", result) in s.labels:
            return s.value
    raise AssertionError(result)


def gauge(route: Route, name: str) -> float | None:
    for s in route.state.samples():
        if s.name == name:
            return s.value
    return None


@pytest.fixture
async def mailboxes() -> AsyncIterator[None]:
    """Close every shared mailbox at the end of a test, and check that no task is left."""
    yield
    await close_all()
    await asyncio.sleep(0)
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert left == [], left


# --- steady state ------------------------------------------------------------------------------------------


async def test_steady_state_50_probes_idle_latency_matches_dovecot(stack: Stack, mailboxes: None) -> None:
    user = "probe@example.test"
    stamp = f"{time.time_ns()}"
    other_ids = [f"<other.{stamp}@example.test>", f"<foreign.{stamp}@example.test>"]
    # A message from another sender that looks like a probe (same subject, the header name
    # in its body), and one with the probe header but a value that is not one of our tokens.
    await smtp_send(
        stack,
        "ops@example.test",
        user,
        (
            f"From: ops@example.test\r\nTo: {user}\r\nSubject: mail-continuity-exporter probe steady\r\n"
            f"Message-ID: {other_ids[0]}\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n\r\n"
            f"{PROBE_HEADER}: 0123456789abcdef0123456789abcdef\r\n"
        ).encode(),
    )
    await smtp_send(
        stack,
        "ops@example.test",
        user,
        (
            f"From: ops@example.test\r\nTo: {user}\r\nSubject: not a probe\r\nMessage-ID: {other_ids[1]}\r\n"
            f"{PROBE_HEADER}: someone-elses-value\r\n\r\nhello\r\n"
        ).encode(),
    )

    def others() -> dict[str, bytes]:
        found = {}
        for p in message_files(stack, user):
            try:
                data = p.read_bytes()
            except FileNotFoundError:
                continue
            for mid in other_ids:
                if mid.encode() in data:
                    found[mid] = data
        return found

    try:
        assert await wait_until(lambda: len(others()) == 2, 20)
        before = others()
        route = Route(route_cfg(stack, "steady"), imap_timeout=5, send_timeout=10)
        watch = MaildirWatch(maildir(stack, user))
        measured: list[tuple[str, float, float, float]] = []
        t0 = time.monotonic()
        try:
            for _ in range(50):
                sink = Sink(route.state)
                ok = await route.run(sink, LOG)
                probe = route.last
                assert probe is not None
                assert ok, (sink.failures, sink.details)
                assert sink.details["imap"] == "IDLE"
                assert probe.sent_at is not None and probe.latency is not None and probe.found is not None
                measured.append((probe.token, probe.sent_at, probe.latency, probe.found.seen_at))
            elapsed = time.monotonic() - t0
            box = route.mailbox()
            assert box.idle_supported
            assert await box.sweep_now(10)  # the sweep must not touch the other messages either
        finally:
            await asyncio.sleep(0.05)
            watch.close()
            route.close()

        # Dovecot's truth: the message became visible between the moment it started writing the
        # file (the Maildir name's M time) and the moment it logged the save (microseconds).
        saved = saved_times(stack)
        vs_log, vs_file, errors = [], [], []
        for token, sent_at, latency, seen_at in measured:
            saved_at, folder = saved[token]
            assert folder == "INBOX"
            began = watch.began.get(token, saved_at)  # (a file renamed away unread: the log alone)
            vs_log.append(latency - (saved_at - sent_at))
            vs_file.append(seen_at - began)
            # distance from the seen time to the interval [file created, save logged]
            errors.append(max(0.0, seen_at - saved_at, began - seen_at))
            assert abs(latency - (seen_at - sent_at)) < 1e-9
        print(
            f"\nsteady state: 50 probes in {elapsed:.1f}s; measured minus true latency: "
            f"vs the save log line: median {statistics.median(vs_log) * 1000:.1f} ms, "
            f"range {min(vs_log) * 1000:.1f}..{max(vs_log) * 1000:.1f} ms; "
            f"vs the Maildir M time: median {statistics.median(vs_file) * 1000:.1f} ms, "
            f"max {max(vs_file) * 1000:.1f} ms ({len(watch.began)} files seen); "
            f"outside [M, log]: max {max(errors) * 1000:.1f} ms"
        )
        assert len(watch.began) >= 45
        slow = [(round(m[2], 3), round(e, 3)) for m, e in zip(measured, errors, strict=True) if e >= 0.05]
        assert max(errors) < 0.1, slow

        assert counter(route, "delivered") == 50
        for result in ("late", "lost", "junk", "send_failed", "receive_failed"):
            assert counter(route, result) == 0
        assert gauge(route, "mail_roundtrip_success") == 1
        assert gauge(route, "mail_roundtrip_latency_seconds_count") == 50
        delivery = gauge(route, "mail_roundtrip_server_delivery_seconds")
        assert delivery is not None and 0 <= delivery <= 3
        hops = {s.labels[1][1]: s.value for s in route.state.samples() if s.family.endswith("hop_delay_seconds")}
        assert set(hops) == {"1:mx1.example.test", "2:mx1.example.test"}
        assert all(0 <= v <= 3 for v in hops.values())

        assert await wait_until(lambda: not probe_files(stack, user), 5), probe_files(stack, user)
        after = others()
        assert set(after) == set(other_ids)
        for mid in other_ids:
            assert after[mid].split(b"\n\n")[-1] == before[mid].split(b"\n\n")[-1]
        for p in message_files(stack, user):
            try:
                mine = any(mid.encode() in p.read_bytes() for mid in other_ids)
            except FileNotFoundError:
                continue
            if mine:
                assert "T" not in p.name.rpartition(":2,")[2]  # not flagged deleted either
    finally:
        await imap_delete_by_message_id(stack, user, other_ids)


# --- LMTP down: lost, then late ----------------------------------------------------------------------------------


async def test_lmtp_down_probes_become_lost_then_late_and_are_cleaned_up(stack: Stack, mailboxes: None) -> None:
    user = "ops@example.test"
    route = Route(route_cfg(stack, "lmtp", user=user, timeout="2s", max_age="12s"), imap_timeout=5, send_timeout=10)
    t_start = time.monotonic()
    try:
        assert await route.run(Sink(route.state), LOG)  # the mailbox is up and idling
        stack.stop("lmtp")
        try:
            t0 = time.monotonic()
            sink = Sink(route.state)
            assert not await route.run(sink, LOG)
            assert sink.failure is not None and sink.failure.reason == "timeout"
            p1 = route.last
            assert gauge(route, "mail_roundtrip_success") == 0
            await asyncio.sleep(max(0.0, t0 + 10 - time.monotonic()))
            assert not await route.run(Sink(route.state), LOG)
            p2 = route.last
            await asyncio.sleep(max(0.0, t0 + 12.8 - time.monotonic()))
            sink = Sink(route.state)
            assert not await route.run(sink, LOG)  # starts by resolving p1: older than max_age
            p3 = route.last
            assert p1 is not None and p1.outcome == "lost"
            assert "lost" in sink.details["earlier probes"]
            assert p2 is not None and p2.outcome is None and p3 is not None and p3.outcome is None
        finally:
            stack.start("lmtp")
        # the receiver loop finds the delayed probes by itself, between runs
        assert await wait_until(lambda: p2.outcome is not None and p3.outcome is not None, 15)
        assert (p2.outcome, p3.outcome) == ("late", "late")
        assert p2.latency is not None and 2 < p2.latency < 12
        # p1 arrives too, after it was counted lost: the sweep removes it (older than max_age)
        assert await wait_until(lambda: p1.token in saved_times(stack), 15)
        assert await route.mailbox().sweep_now(10)
        assert await wait_until(lambda: not probe_files(stack, user), 5), probe_files(stack, user)
        assert counter(route, "delivered") == 1
        assert counter(route, "lost") == 1
        assert counter(route, "late") == 2
        assert gauge(route, "mail_roundtrip_latency_seconds_count") == 3  # late latencies are observed
        assert gauge(route, "mail_roundtrip_success") == 0
        assert time.monotonic() - t_start < 60
    finally:
        route.close()


# --- send failures --------------------------------------------------------------------------------------------


async def test_postfix_down_is_send_failed_refused_and_drops_success_at_once(stack: Stack, mailboxes: None) -> None:
    route = Route(route_cfg(stack, "pfdown"), imap_timeout=5, send_timeout=5)
    try:
        assert await route.run(Sink(route.state), LOG)
        assert gauge(route, "mail_roundtrip_success") == 1
        stack.stop("postfix")
        try:
            sink = Sink(route.state)
            t0 = time.monotonic()
            assert not await route.run(sink, LOG)
            assert time.monotonic() - t0 < 2
        finally:
            start_postfix(stack)
        failure = sink.failure
        assert failure is not None and failure.reason == "send_failed"
        assert "refused" in failure.message
        assert gauge(route, "mail_roundtrip_success") == 0
        assert counter(route, "send_failed") == 1
        assert not route.pending
    finally:
        route.close()


async def test_rcpt_450_is_send_failed_with_the_code(stack: Stack, mailboxes: None) -> None:
    route = Route(route_cfg(stack, "tempfail", to="tempfail@example.test"), imap_timeout=5, send_timeout=5)
    try:
        sink = Sink(route.state)
        assert not await route.run(sink, LOG)
        failure = sink.failure
        assert failure is not None and failure.reason == "send_failed"
        assert "450" in failure.message and "reply_4xx" in failure.message
        assert sink.details["smtp_reply_code"] == "450"
        assert counter(route, "send_failed") == 1
        assert gauge(route, "mail_roundtrip_success") == 0
    finally:
        route.close()


# --- junk ---------------------------------------------------------------------------------------------------


async def test_probe_filed_into_junk_is_junk(stack: Stack, mailboxes: None) -> None:
    route = Route(route_cfg(stack, "junk", headers='X-Test-Junk: "yes"'), imap_timeout=5, send_timeout=10)
    try:
        sink = Sink(route.state)
        assert not await route.run(sink, LOG)
        failure = sink.failure
        assert failure is not None and failure.reason == "junk", (sink.failures, sink.details)
        assert sink.details["folder"] == "Junk"
        assert counter(route, "junk") == 1
        assert gauge(route, "mail_roundtrip_success") == 0
        assert gauge(route, "mail_roundtrip_latency_seconds_count") == 0
        assert await wait_until(lambda: not probe_files(stack, "probe@example.test"), 5)
    finally:
        route.close()


# --- polling --------------------------------------------------------------------------------------------------


async def test_polling_without_idle(stack: Stack, mailboxes: None) -> None:
    route = Route(route_cfg(stack, "poll", idle=False, poll="500ms"), imap_timeout=5, send_timeout=10)
    try:
        sink = Sink(route.state)
        assert await route.run(sink, LOG), sink.failures
        assert sink.details["imap"] == "polling"
        assert not route.mailbox().idling
    finally:
        route.close()


# --- lifecycle -------------------------------------------------------------------------------------------------


async def test_scheduler_stop_logs_out_and_leaves_no_task(stack: Stack, mailboxes: None) -> None:
    cfg = route_cfg(stack, "sched", interval="1h")
    check = route_check(cfg, config.GlobalConfig(timeout=5))
    scheduler = Scheduler(Snapshot(), first_run_spread=0.0)
    scheduler.apply([check])
    assert await wait_until(lambda: check.last is not None, 20)
    assert check.last is not None and check.last.result == "success", check.last
    box = get_mailbox(MailboxSpec.from_receive(cfg.receive), timeout=5, log=LOG)
    assert box.connected and box.idling  # the receiver loop idles between runs
    await scheduler.stop()
    assert await wait_until(lambda: box.closed and box._task is not None and box._task.done(), 5)
    assert not box.connected


# --- the exporter process ---------------------------------------------------------------------------------------


def exporter_config(stack: Stack, *, interval: str = "2s") -> str:
    user = "archive@archive.example.test"
    common = f"""
    send: {{address: "127.0.0.1:{stack.port("submission")}", tls: starttls,
            tls_config: {{ca_file: "{stack.ca_file}", server_name: mx1.example.test}},
            auth: {{username: {user}, password: "{stack.password(user)}"}},
            from: {user}, to: TO}}
    receive: {{address: "127.0.0.1:{stack.port("imap")}", tls: starttls,
               tls_config: {{ca_file: "{stack.ca_file}", server_name: imap.example.test}},
               username: {user}, password: "{stack.password(user)}", poll_interval: 1s}}
"""
    return f"""
global: {{interval: 30s, timeout: 5s}}
routes:
  - name: archive
    interval: {interval}
    timeout: 10s
    max_age: 1m
{common.replace("TO", user)}
  - name: tempfail
    interval: {interval}
    timeout: 10s
{common.replace("TO", "tempfail@example.test")}
"""


def test_exporter_process_end_to_end(stack: Stack, tmp_path: Path) -> None:
    user = "archive@archive.example.test"
    secret = stack.password(user)
    log_start = stack.dovecot_log.stat().st_size
    with run_exporter(tmp_path, config_text=exporter_config(stack)) as exp:
        exp.wait_ready()
        text = exp.metrics()
        success = metric_values(text, "mail_roundtrip_success")
        probes = metric_values(text, "mail_roundtrip_probes_total")
        for route in ("archive", "tempfail"):
            for result in ("delivered", "late", "lost", "junk", "send_failed", "receive_failed"):
                assert (("result", result), ("route", route)) in probes
        assert one(success, route="tempfail") == 0
        # 0 from start-up until a probe is delivered
        assert one(success, route="archive") == 0 or one(probes, route="archive", result="delivered") >= 1

        text = exp.wait_for(
            lambda t: (
                one(metric_values(t, "mail_roundtrip_success"), route="archive") == 1
                and one(metric_values(t, "mail_roundtrip_probes_total"), route="tempfail", result="send_failed") >= 1
            ),
            timeout=30,
        )
        assert one(metric_values(text, "mail_roundtrip_latency_seconds_count"), route="archive") >= 1
        assert one(metric_values(text, "mail_roundtrip_last_success_timestamp_seconds"), route="archive") > 1e9
        assert one(metric_values(text, "mail_roundtrip_success"), route="tempfail") == 0
        page = exp.get("/").text
        assert "smtp_reply_code: 450" in page
        assert "send_failed" in page

        # a reload that changes the route replaces its check; the old mailbox logs out
        (tmp_path / "config.yml").write_text(exporter_config(stack, interval="3s"))
        assert exp.post("/-/reload").status == 200
        exp.wait_for(lambda t: one(metric_values(t, "mail_roundtrip_success"), route="archive") == 1, timeout=30)
        for body in (exp.metrics(), exp.get("/").text):
            assert secret not in body
        exp.signal(signal.SIGTERM)
        assert exp.proc.wait(15) == 0
        logs = exp.logs()
    assert secret not in logs
    assert "Task was destroyed" not in logs and "Traceback" not in logs, logs[-3000:]
    with stack.dovecot_log.open("rb") as f:
        f.seek(log_start)
        dovecot = f.read().decode(errors="replace")
    ends = [line for line in dovecot.splitlines() if f"imap({user})" in line and "Disconnected" in line]
    assert ends, "no IMAP session of the exporter ended"
    assert all("Logged out" in line for line in ends), ends
