"""Round trips without the mail stack: the outcome state machine (with a fake clock), the run
with a fake sender and mailbox, the message, and the SMTP/IMAP clients against fault servers."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import pytest
from faults import ImapScript, SmtpScript, imap_server, refused_address, send_then_close, smtp_server, tarpit

from exporter import config
from exporter.checks import build
from exporter.checks.route import route_check, route_grace
from exporter.core import metrics
from exporter.core.errors import ConfigError
from exporter.core.model import Sample, Sink
from exporter.roundtrip.receiver import (
    PROBE_HEADER,
    Found,
    Mailbox,
    MailboxSpec,
    Watcher,
    _search_uids,
    close_all,
    get_mailbox,
    imap_mailbox_name,
    new_token,
    parse_fetch,
    token_time,
)
from exporter.roundtrip.route import LATENCY_BUCKETS, MAX_PENDING, RESULTS, Route
from exporter.roundtrip.sender import SendResult, build_message, send_probe

LOG = logging.getLogger("test")
PASSWORD = "route-secret-pw-3f9a"


def route_config(
    name: str = "r1",
    *,
    timeout: str = "10s",
    max_age: str = "60s",
    to: str = "probe@example.test",
    send_address: str = "127.0.0.1:2525",
    imap_address: str = "127.0.0.1:2993",
    extra_send: str = "",
    extra_receive: str = "",
) -> config.RouteConfig:
    text = f"""
routes:
  - name: {name}
    timeout: {timeout}
    max_age: {max_age}
    send: {{address: "{send_address}", tls: none, from: probe@example.test, to: {to} {extra_send}}}
    receive: {{address: "{imap_address}", tls: none, username: probe@example.test, password: "{PASSWORD}",
               folders: [INBOX], junk_folders: [Junk], poll_interval: 1s {extra_receive}}}
"""
    return config.load_text(text).routes[0]


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def samples(route: Route) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, s.labels): s.value for s in route.state.samples()}


def value(r: Route, name: str, **labels: str) -> float | None:
    want = set(labels.items())
    found = [v for (n, labs), v in samples(r).items() if n == name and want <= set(labs)]
    assert len(found) <= 1
    return found[0] if found else None


def found(token: str, seen_at: float, folder: str = "INBOX", received: tuple[str, ...] = ()) -> Found:
    return Found(token, folder, 7, seen_at, received, None)


RECEIVED = (
    "from mx1.example.test ([127.0.0.1])\r\n\tby mx1.example.test with LMTP\r\n\tid kGnrJ3rmAmtgYgAAg+zDdQ\r\n"
    "\tfor <probe@example.test>; Fri, 15 Jan 2027 08:00:01 +0000",
    "from monitor.example.test (unknown [127.0.0.1])\r\n\tby mx1.example.test (Postfix) with ESMTP id 9AA95\r\n"
    "\tfor <probe@example.test>; Fri, 15 Jan 2027 08:00:00 +0000 (UTC)",
)
T0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC


# --- the series ------------------------------------------------------------------------------------------


def test_every_series_exists_from_start_up() -> None:
    route = Route(route_config())
    for result in RESULTS:
        assert value(route, "mail_roundtrip_probes_total", route="r1", result=result) == 0
    assert value(route, "mail_roundtrip_success", route="r1") == 0
    assert value(route, "mail_roundtrip_last_success_timestamp_seconds", route="r1") == 0
    buckets = [dict(labs)["le"] for (n, labs) in samples(route) if n == "mail_roundtrip_latency_seconds_bucket"]
    assert buckets == [*(repr(float(b)) for b in LATENCY_BUCKETS), "+Inf"]
    assert value(route, "mail_roundtrip_latency_seconds_count", route="r1") == 0


def test_label_names_follow_the_contract() -> None:
    route = Route(route_config(extra_receive=", authserv_id: mx1.example.test"), clock=Clock(T0))
    p = route.new_probe()
    route.sent(p, T0)
    verdict = (
        ("Authentication-Results", "mx1.example.test; spf=pass smtp.mailfrom=example.test; arc=none"),
        ("X-Spam-Status", "No, score=0.3"),
    )
    route.on_found(dataclasses.replace(found(p.token, T0 + 1.5, received=RECEIVED), fields=verdict))
    names = set()
    for s in route.state.samples():
        assert isinstance(s, Sample)
        spec = metrics.FAMILIES[s.family]
        assert tuple(k for k, _ in s.labels if k != "le") == spec.labels, s
        names.add(s.family)
    assert names == {f for f in metrics.FAMILIES if f.startswith("mail_roundtrip_")}


# --- the state machine, with a fake clock ------------------------------------------------------------------


def test_delivered() -> None:
    clock = Clock(T0 - 0.4)
    route = Route(route_config(), clock=clock)
    p = route.new_probe()
    assert token_time(p.token) == math.floor(T0 - 0.4)
    route.sent(p, T0 + 0.25)
    route.on_found(found(p.token, T0 + 1.75, received=RECEIVED))
    assert p.outcome == "delivered"
    assert p.latency == pytest.approx(1.5)
    assert value(route, "mail_roundtrip_probes_total", result="delivered") == 1
    assert value(route, "mail_roundtrip_success") == 1
    assert value(route, "mail_roundtrip_last_success_timestamp_seconds") == T0 + 1.75
    assert value(route, "mail_roundtrip_latency_seconds_bucket", le="1.0") == 0
    assert value(route, "mail_roundtrip_latency_seconds_bucket", le="2.0") == 1
    assert value(route, "mail_roundtrip_latency_seconds_sum") == pytest.approx(1.5)
    # hops from the Received headers (oldest first); whole-second dates vs. the send time truncated
    assert value(route, "mail_roundtrip_hop_delay_seconds", hop="1:mx1.example.test") == 0.0
    assert value(route, "mail_roundtrip_hop_delay_seconds", hop="2:mx1.example.test") == 1.0
    assert value(route, "mail_roundtrip_server_delivery_seconds") == 1.0
    assert not route.pending


def test_late_is_counted_and_observed_but_not_a_success() -> None:
    route = Route(route_config(timeout="10s"), clock=Clock(T0))
    p = route.new_probe()
    route.sent(p, T0)
    route.timed_out(p)
    assert value(route, "mail_roundtrip_success") == 0
    route.on_found(found(p.token, T0 + 42))
    assert p.outcome == "late"
    assert value(route, "mail_roundtrip_probes_total", result="late") == 1
    assert value(route, "mail_roundtrip_probes_total", result="delivered") == 0
    assert value(route, "mail_roundtrip_success") == 0
    assert value(route, "mail_roundtrip_latency_seconds_count") == 1
    assert value(route, "mail_roundtrip_latency_seconds_bucket", le="60.0") == 1
    assert route.notes  # reported on the next run's status line


def test_junk_is_not_a_success_and_not_observed() -> None:
    route = Route(route_config(), clock=Clock(T0))
    p = route.new_probe()
    route.sent(p, T0)
    route.on_found(found(p.token, T0 + 1, folder="Junk"))
    assert p.outcome == "junk"
    assert value(route, "mail_roundtrip_probes_total", result="junk") == 1
    assert value(route, "mail_roundtrip_success") == 0
    assert value(route, "mail_roundtrip_latency_seconds_count") == 0


def test_lost_after_max_age() -> None:
    clock = Clock(T0)
    route = Route(route_config(timeout="10s", max_age="60s"), clock=clock)
    p = route.new_probe()
    route.sent(p, T0)
    assert route.expire(T0 + 60) == []
    clock.now = T0 + 60.5
    assert route.expire() == [p]
    assert p.outcome == "lost"
    assert value(route, "mail_roundtrip_probes_total", result="lost") == 1
    assert not route.pending
    route.on_found(found(p.token, T0 + 61))  # arriving after all: no second outcome
    assert value(route, "mail_roundtrip_probes_total", result="late") == 0


def test_send_failed_drops_success_at_once() -> None:
    route = Route(route_config(), clock=Clock(T0))
    p1 = route.new_probe()
    route.sent(p1, T0)
    route.on_found(found(p1.token, T0 + 1))
    assert value(route, "mail_roundtrip_success") == 1
    p2 = route.new_probe()
    route.send_failed(p2)
    assert value(route, "mail_roundtrip_success") == 0
    assert value(route, "mail_roundtrip_probes_total", result="send_failed") == 1
    assert value(route, "mail_roundtrip_last_success_timestamp_seconds") == T0 + 1


def test_receive_failed_without_a_probe() -> None:
    route = Route(route_config(), clock=Clock(T0))
    p1 = route.new_probe()
    route.sent(p1, T0)
    route.on_found(found(p1.token, T0 + 1))
    route.receive_failed(None)
    assert value(route, "mail_roundtrip_success") == 0
    assert value(route, "mail_roundtrip_probes_total", result="receive_failed") == 1


def test_an_old_late_probe_does_not_undo_a_newer_success() -> None:
    route = Route(route_config(timeout="10s"), clock=Clock(T0))
    p1 = route.new_probe()
    route.sent(p1, T0)
    route.timed_out(p1)
    p2 = route.new_probe()
    route.sent(p2, T0 + 60)
    route.on_found(found(p2.token, T0 + 61))
    assert value(route, "mail_roundtrip_success") == 1
    route.on_found(found(p1.token, T0 + 62, received=RECEIVED))
    assert p1.outcome == "late"
    assert value(route, "mail_roundtrip_success") == 1
    assert value(route, "mail_roundtrip_last_success_timestamp_seconds") == T0 + 61
    assert value(route, "mail_roundtrip_hop_delay_seconds", hop="1:mx1.example.test") is None  # p2 had no headers


def test_found_before_the_sender_returned() -> None:
    route = Route(route_config(), clock=Clock(T0))
    p = route.new_probe()
    route.on_found(found(p.token, T0 + 0.5))  # the receiver was faster than QUIT
    assert p.outcome is None
    route.sent(p, T0 + 0.2)
    assert p.outcome == "delivered"
    assert p.latency == pytest.approx(0.3)


def test_each_probe_has_exactly_one_outcome() -> None:
    route = Route(route_config(), clock=Clock(T0))
    p = route.new_probe()
    route.sent(p, T0)
    route.on_found(found(p.token, T0 + 1))
    route.on_found(found(p.token, T0 + 2))
    route.send_failed(p)
    route.expire(T0 + 10_000)
    totals = {r: value(route, "mail_roundtrip_probes_total", result=r) for r in RESULTS}
    assert totals == {r: (1 if r == "delivered" else 0) for r in RESULTS}


def test_pending_probes_are_bounded() -> None:
    route = Route(route_config(max_age="100h"), clock=Clock(T0))
    probes = []
    for _ in range(MAX_PENDING + 5):
        p = route.new_probe()
        route.sent(p, T0)
        route.timed_out(p)
        probes.append(p)
    assert len(route.pending) == MAX_PENDING
    assert [p.outcome for p in probes[:5]] == ["lost"] * 5
    assert value(route, "mail_roundtrip_probes_total", result="lost") == 5


# --- the run, with a fake sender and a fake mailbox -------------------------------------------------------


class FakeMailbox:
    def __init__(self, *, error: str = "", refresh_ok: bool = True) -> None:
        self.closed = False
        self.connected = not error
        self.error = error
        self.idle_supported = True
        self.missing_folders: set[str] = set()
        self.watchers: list[Watcher] = []
        self.refresh_ok = refresh_ok
        self.refreshes = 0
        self.on_refresh: Callable[[], None] | None = None

    def attach(self, w: Watcher) -> None:
        self.watchers.append(w)

    def detach(self, w: Watcher) -> None:
        self.watchers.remove(w)
        self.closed = not self.watchers

    def watch(self, w: Watcher, token: str) -> None:
        w.tokens.add(token)

    def unwatch(self, w: Watcher, token: str) -> None:
        w.tokens.discard(token)

    async def ready(self, timeout: float) -> str:
        return self.error

    async def refresh(self, timeout: float) -> bool:
        self.refreshes += 1
        if self.on_refresh is not None:
            self.on_refresh()
        return self.refresh_ok

    def deliver(self, token: str, folder: str = "INBOX") -> None:
        for w in list(self.watchers):
            if token in w.tokens:
                w.tokens.discard(token)
                w.on_found(Found(token, folder, 1, time.time(), RECEIVED, None))


def token_of(message: bytes) -> str:
    return str(email.message_from_bytes(message)[PROBE_HEADER])


def make_route(box: FakeMailbox, send: Callable[..., Any], **kw: Any) -> Route:
    return Route(route_config(**kw), send=send, mailbox_factory=lambda spec: box, imap_timeout=1, send_timeout=1)  # type: ignore[arg-type,return-value]


async def test_run_delivered() -> None:
    box = FakeMailbox()
    sent: list[bytes] = []

    async def send(cfg: config.SendConfig, message: bytes) -> SendResult:
        sent.append(message)
        asyncio.get_running_loop().call_later(0.05, box.deliver, token_of(message))
        return SendResult(time.time(), 250, "", "", "2.0.0 Ok: queued as ABC")

    route = make_route(box, send)
    sink = Sink(route.state)
    t0 = time.monotonic()
    assert await route.run(sink, LOG) is True
    assert time.monotonic() - t0 < 1
    assert sink.failures == []
    assert sink.details["smtp_reply_code"] == "250"
    assert float(sink.details["latency"].rstrip("s")) == pytest.approx(0.05, abs=0.04)
    assert value(route, "mail_roundtrip_success") == 1
    assert len(sent) == 1


async def test_run_send_failed_with_the_reply_code() -> None:
    box = FakeMailbox()

    async def send(cfg: config.SendConfig, message: bytes) -> SendResult:
        return SendResult(None, 450, "reply_4xx", "rcpt to: 450 4.2.0 <tempfail@example.test>: try later")

    route = make_route(box, send)
    sink = Sink(route.state)
    assert await route.run(sink, LOG) is False
    failure = sink.failure
    assert failure is not None and failure.reason == "send_failed"
    assert "450" in failure.message and "reply_4xx" in failure.message
    assert sink.details["smtp_reply_code"] == "450"
    assert value(route, "mail_roundtrip_probes_total", result="send_failed") == 1
    assert value(route, "mail_roundtrip_success") == 0
    assert not route.pending
    assert box.watchers[0].tokens == set()


async def test_run_receive_failed_sends_nothing() -> None:
    box = FakeMailbox(error="auth: LOGIN rejected: NO [AUTHENTICATIONFAILED]")
    calls = []

    async def send(cfg: config.SendConfig, message: bytes) -> SendResult:
        calls.append(message)
        return SendResult(time.time(), 250, "", "")

    route = make_route(box, send)
    sink = Sink(route.state)
    assert await route.run(sink, LOG) is False
    assert sink.failure is not None and sink.failure.reason == "receive_failed"
    assert "AUTHENTICATIONFAILED" in sink.failure.message
    assert calls == []
    assert value(route, "mail_roundtrip_probes_total", result="receive_failed") == 1


async def test_run_timeout_then_late_from_the_receiver_loop() -> None:
    box = FakeMailbox()
    tokens: list[str] = []

    async def send(cfg: config.SendConfig, message: bytes) -> SendResult:
        tokens.append(token_of(message))
        return SendResult(time.time(), 250, "", "")

    route = make_route(box, send, timeout="300ms", max_age="60s")
    sink = Sink(route.state)
    t0 = time.monotonic()
    assert await route.run(sink, LOG) is False
    assert 0.3 <= time.monotonic() - t0 < 1.0
    assert sink.failure is not None and sink.failure.reason == "timeout"
    assert box.refreshes == 1  # one last look at the deadline
    assert list(route.pending) == tokens
    box.deliver(tokens[0])  # the receiver loop finds it between runs
    assert value(route, "mail_roundtrip_probes_total", result="late") == 1
    assert value(route, "mail_roundtrip_success") == 0


async def test_run_found_by_the_last_search() -> None:
    box = FakeMailbox()
    tokens: list[str] = []

    async def send(cfg: config.SendConfig, message: bytes) -> SendResult:
        tokens.append(token_of(message))
        return SendResult(time.time(), 250, "", "")

    box.on_refresh = lambda: box.deliver(tokens[-1], folder="Junk")
    route = make_route(box, send, timeout="200ms")
    sink = Sink(route.state)
    assert await route.run(sink, LOG) is False
    assert sink.failure is not None and sink.failure.reason == "junk"
    assert value(route, "mail_roundtrip_probes_total", result="junk") == 1


async def test_run_receive_failed_at_the_deadline() -> None:
    box = FakeMailbox(refresh_ok=False)

    async def send(cfg: config.SendConfig, message: bytes) -> SendResult:
        box.connected = False
        box.error = "protocol: connection closed by the server"
        return SendResult(time.time(), 250, "", "")

    route = make_route(box, send, timeout="100ms")
    sink = Sink(route.state)
    assert await route.run(sink, LOG) is False
    assert sink.failure is not None and sink.failure.reason == "receive_failed"
    assert not route.pending


async def test_run_lost_probes_are_resolved_by_later_runs() -> None:
    box = FakeMailbox()
    clock = Clock(time.time())

    async def send(cfg: config.SendConfig, message: bytes) -> SendResult:
        return SendResult(clock.now, 250, "", "")

    route = Route(
        route_config(timeout="100ms", max_age="1s"),
        send=send,
        mailbox_factory=lambda spec: box,  # type: ignore[arg-type,return-value]
        clock=clock,
    )
    assert await route.run(Sink(route.state), LOG) is False
    clock.now += 5
    sink = Sink(route.state)
    await route.run(sink, LOG)
    assert value(route, "mail_roundtrip_probes_total", result="lost") >= 1
    assert "lost" in sink.details["earlier probes"]


async def test_route_detaches_when_its_task_ends() -> None:
    box = FakeMailbox(error="refused: connect: connection refused")

    async def send(cfg: config.SendConfig, message: bytes) -> SendResult:
        raise AssertionError("not sent")

    route = make_route(box, send)
    await asyncio.create_task(route.run(Sink(route.state), LOG))
    await asyncio.sleep(0)
    assert box.closed and not box.watchers


def test_route_check() -> None:
    g = config.GlobalConfig(timeout=4.0)
    cfg = route_config(timeout="30s")
    check = route_check(cfg, g)
    assert (check.kind, check.name, check.interval) == ("route", "r1", 60.0)
    assert check.timeout == 30.0 + route_grace(g) == 30.0 + 3 * 4.0 + 1.0
    assert check.spec is cfg
    # the scheduler publishes the state at start-up: success 0, every result at 0
    names = {s.name for s in check.state.samples()}
    assert {"mail_roundtrip_success", "mail_roundtrip_probes_total"} <= names
    full = config.load_text(f"routes:\n  - {cfg_yaml('a')}\n  - {cfg_yaml('b')}\n")
    kinds = [(c.kind, c.name) for c in build(full, None)]
    assert kinds == [("route", "a"), ("route", "b")]


def cfg_yaml(name: str) -> str:
    return (
        f"{{name: {name}, send: {{address: '127.0.0.1:25', from: a@b.test, to: c@d.test}}, "
        f"receive: {{address: '127.0.0.1:993', username: u, password: p}}}}"
    )


# --- the message ----------------------------------------------------------------------------------------------


def test_message() -> None:
    token = new_token(T0)
    raw = build_message(
        token=token,
        route="inbound-mx1",
        mail_from="probe@monitor.example.net",
        rcpt_to="probe@example.com",
        headers={"X-Test-Junk": "yes", "Subject": "override attempt", "X-Evil": "a\r\nBcc: victim@example.com"},
        now=T0,
    )
    msg = email.message_from_bytes(raw)
    assert msg[PROBE_HEADER] == token
    assert msg["Message-ID"] == f"<mce.{token}@monitor.example.net>"
    assert msg["Subject"] == "mail-continuity-exporter probe inbound-mx1"
    assert msg.get_all("Subject") == ["mail-continuity-exporter probe inbound-mx1"]
    assert msg["X-Test-Junk"] == "yes"
    assert msg["Bcc"] is None and msg["X-Evil"] == "a Bcc: victim@example.com"
    assert msg["Date"] == "Fri, 15 Jan 2027 08:00:00 GMT"
    # automatic mail: no vacation or out-of-office answers (RFC 3834; Exchange's own header)
    assert msg["Auto-Submitted"] == "auto-generated" and msg["X-Auto-Response-Suppress"] == "All"
    assert b"\r\n\r\n" in raw and len(raw) < 2048
    assert all(line.endswith(b"\r") or line == b"" for line in raw.split(b"\n")[:-1])


def test_tokens() -> None:
    token = new_token(T0)
    assert len(token) == 32 and token_time(token) == T0
    assert new_token(T0) != token
    assert token_time("not-a-token") is None
    assert token_time("X" * 32) is None


def test_mailbox_names() -> None:
    assert imap_mailbox_name("INBOX") == '"INBOX"'
    assert imap_mailbox_name("[Gmail]/Spam") == '"[Gmail]/Spam"'
    assert imap_mailbox_name('a"b\\c') == '"a\\"b\\\\c"'
    assert imap_mailbox_name("Entwürfe") == '"Entw&APw-rfe"'
    assert imap_mailbox_name("A&B") == '"A&-B"'


# --- parsing what aioimaplib hands over (recorded from Dovecot 2.3) ---------------------------------------------


def test_parse_search_answer() -> None:
    assert _search_uids([b"3 4 5", b"Search completed (0.001 + 0.000 secs)."]) == [3, 4, 5]
    assert _search_uids([b"SEARCH 9", b"Search completed."]) == [9]
    assert _search_uids([b"", b"Search completed (0.001 + 0.000 secs)."]) == []


def test_parse_fetch_answer() -> None:
    lines = [
        b'3 FETCH (UID 5 INTERNALDATE "22-Nov-2026 13:04:24 +0000" '
        b"BODY[HEADER.FIELDS (X-MAIL-CONTINUITY-PROBE RECEIVED)] {231}",
        bytearray(
            b"Received: from mx1.example.test ([127.0.0.1])\r\n\tby mx1.example.test with LMTP\r\n"
            b"\tfor <probe@example.test>; Sun, 22 Nov 2026 13:04:24 +0000\r\n"
            b"X-Mail-Continuity-Probe: 006b02e858a4f4a130a47cba828cdf2d\r\n\r\n"
        ),
        b")",
        b'4 FETCH (INTERNALDATE "22-Nov-2026 13:04:25 +0100" BODY[HEADER.FIELDS (X-MAIL-CONTINUITY-PROBE)] {4}',
        bytearray(b"\r\n\r\n"),
        b" UID 6)",
        b"7 FETCH (FLAGS (\\Seen))",
        b"Fetch completed (0.002 + 0.000 + 0.001 secs).",
    ]
    records = parse_fetch(lines)
    assert [(r.uid, r.token) for r in records] == [(5, "006b02e858a4f4a130a47cba828cdf2d"), (6, "")]
    assert records[0].internal_date == 1795352664.0
    assert records[1].internal_date == 1795352665.0 - 3600
    assert len(records[0].received) == 1 and "LMTP" in records[0].received[0]


# --- the SMTP client against fault servers ------------------------------------------------------------------------


def send_cfg(address: str, tls: str = "none", to: str = "probe@example.test") -> config.SendConfig:
    text = f"""
routes:
  - name: s
    send: {{address: "{address}", tls: {tls}, from: probe@example.test, to: {to}}}
    receive: {{address: "127.0.0.1:993", username: u, password: p}}
"""
    return config.load_text(text).routes[0].send


async def test_send_refused() -> None:
    async with refused_address() as address:
        result = await send_probe(send_cfg(address), b"x", timeout=2)
    assert not result.ok and result.reason == "refused"
    assert "connection refused" in result.message and result.code is None


async def test_send_banner_4xx() -> None:
    async with send_then_close(b"421 4.3.2 not now\r\n") as srv:
        result = await send_probe(send_cfg(f"{srv.host}:{srv.port}"), b"x", timeout=2)
    assert (result.reason, result.code) == ("reply_4xx", 421)
    assert "421 4.3.2 not now" in result.message


async def test_send_tarpit_times_out_within_the_bound() -> None:
    async with tarpit() as srv:
        t0 = time.monotonic()
        result = await send_probe(send_cfg(f"{srv.host}:{srv.port}"), b"x", timeout=0.3)
    assert result.reason == "timeout"
    assert time.monotonic() - t0 < 1.5


async def test_send_mail_from_refused_carries_the_code() -> None:
    async with smtp_server(SmtpScript()) as srv:  # answers 502 to MAIL
        result = await send_probe(send_cfg(f"{srv.host}:{srv.port}"), b"x", timeout=2)
    assert (result.reason, result.code) == ("reply_5xx", 502)
    assert result.message.startswith("mail from: 502")


@pytest.mark.parametrize(
    ("envelope", "mail_from"),
    [
        ("", "MAIL FROM:<probe@example.test>"),
        ("bounces@monitor.example.net", "MAIL FROM:<bounces@monitor.example.net>"),
        ("<>", "MAIL FROM:<>"),
    ],
)
async def test_send_envelope_sender(envelope: str, mail_from: str) -> None:
    cfg = send_cfg("127.0.0.1:25")
    if envelope:
        cfg = dataclasses.replace(cfg, envelope_from=envelope)
    script = SmtpScript()
    async with smtp_server(script) as srv:
        await send_probe(dataclasses.replace(cfg, address=f"{srv.host}:{srv.port}"), b"x", timeout=2)
    assert any(c.upper().startswith(mail_from.upper()) for c in script.commands), script.commands


def test_envelope_from_is_an_address_or_the_null_sender() -> None:
    text = """
routes:
  - name: s
    send: {address: "127.0.0.1:25", from: probe@example.test, to: probe@example.test, envelope_from: nobody}
    receive: {address: "127.0.0.1:993", username: u, password: p}
"""
    with pytest.raises(ConfigError, match='envelope_from: expected an address, or "<>" for no bounces'):
        config.load_text(text)


async def test_send_starttls_required_but_not_offered() -> None:
    async with smtp_server(SmtpScript()) as srv:
        result = await send_probe(send_cfg(f"{srv.host}:{srv.port}", tls="starttls"), b"x", timeout=2)
    assert result.reason == "tls" and "STARTTLS" in result.message


# --- the IMAP client against fault servers --------------------------------------------------------------------------


def spec_for(address: str, password: str = PASSWORD) -> MailboxSpec:
    text = f"""
routes:
  - name: s
    send: {{address: "127.0.0.1:25", from: a@b.test, to: c@d.test}}
    receive: {{address: "{address}", tls: none, username: probe@example.test, password: "{password}"}}
"""
    return MailboxSpec.from_receive(config.load_text(text).routes[0].receive)


def watcher() -> Watcher:
    return Watcher(folders=("INBOX",), junk_folders=(), on_found=lambda f: None)


async def test_imap_login_rejected() -> None:
    async with imap_server(ImapScript(credentials=("probe@example.test", "other"))) as srv:
        box = Mailbox(spec_for(f"{srv.host}:{srv.port}"), timeout=1, log=LOG)
        w = watcher()
        box.attach(w)
        error = await box.ready(2)
        await box.aclose()
    assert error.startswith("auth: LOGIN rejected")
    assert PASSWORD not in error
    assert box.closed


async def test_imap_hang_after_login_is_bounded() -> None:
    async with imap_server(ImapScript(credentials=("probe@example.test", PASSWORD), after_login="hang")) as srv:
        box = Mailbox(spec_for(f"{srv.host}:{srv.port}"), timeout=0.3, log=LOG)
        box.attach(watcher())
        t0 = time.monotonic()
        error = await box.ready(3)
        assert time.monotonic() - t0 < 1.5
        await box.aclose()
    assert error.startswith("timeout:")


async def test_imap_refused_and_reconnect_backoff_is_cut_short_by_ready() -> None:
    async with refused_address() as address:
        box = Mailbox(spec_for(address), timeout=1, log=LOG)
        box.attach(watcher())
        assert (await box.ready(2)).startswith("refused:")
        t0 = time.monotonic()
        assert (await box.ready(2)).startswith("refused:")  # a fresh attempt, not the backoff
        assert time.monotonic() - t0 < 0.5
        assert box.connects == 0
        await box.aclose()


async def test_imap_select_refused_is_a_receive_failure() -> None:
    script = ImapScript(credentials=("probe@example.test", PASSWORD), select="no")
    async with imap_server(script) as srv:
        box = Mailbox(spec_for(f"{srv.host}:{srv.port}"), timeout=1, log=LOG)
        box.attach(watcher())
        assert await box.ready(2) == ""  # logged in
        assert await box.refresh(2) is False  # SELECT INBOX: NO
        assert box.error.startswith("protocol: SELECT INBOX: NO")
        await box.aclose()
    assert any(c.split()[1] == "LOGOUT" for c in script.commands) or not box.connected


async def test_shared_mailbox_per_spec_and_close_all_leaves_no_task() -> None:
    async with imap_server(ImapScript(credentials=("probe@example.test", PASSWORD))) as srv:
        spec = spec_for(f"{srv.host}:{srv.port}")
        a = get_mailbox(spec, timeout=1, log=LOG)
        assert get_mailbox(spec_for(f"{srv.host}:{srv.port}"), timeout=1, log=LOG) is a
        w1, w2 = watcher(), watcher()
        a.attach(w1)
        a.attach(w2)
        assert await a.ready(2) == ""
        a.detach(w1)
        assert not a.closed
        a.detach(w2)
        assert a.closed
        assert get_mailbox(spec, timeout=1, log=LOG) is not a
        await a.aclose()  # waits for DONE/LOGOUT
        await close_all()
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert others == []
