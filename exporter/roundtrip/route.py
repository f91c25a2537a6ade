"""One route: send a probe, wait for it in the mailbox, and account for every outcome.

A **run** (one per interval, started by the scheduler) does this:

1. Resolve earlier probes that are now older than ``max_age``: they are ``lost``.
2. Make sure the mailbox is connected (else: ``receive_failed``, and nothing is sent,
   so that no probe is left behind unseen).
3. Make a token, start watching for it, and send the probe (else: ``send_failed``
   with the reply code; ``mail_roundtrip_success`` drops to 0 at once).
4. Wait until the probe is found or ``timeout`` has passed since the ``250`` reply to
   DATA.  At the deadline every folder is searched once more.  Found in a normal folder
   in time: ``delivered``.  Found in a junk folder: ``junk``.  Not found: the run fails
   with reason ``timeout``, success drops to 0, and the probe stays *pending*.  If the
   mailbox could not be searched at the deadline, the probe ends as ``receive_failed``.

A pending probe is still watched for by the mailbox's receiver loop, between runs too.
Found before ``max_age``, it is ``late`` (or ``junk``); not found by then, it is
``lost``.  Pending probes are kept in memory, at most :data:`MAX_PENDING` per route
(when more are pending, the oldest is counted lost early).

Every probe has exactly one outcome, counted in ``mail_roundtrip_probes_total``.  The
gauges follow the newest probe whose fate is known: ``mail_roundtrip_success`` is 1
after a ``delivered`` probe and 0 after anything else (a timeout included), so a late
arrival of an old probe does not undo a newer success.  Latency (the time from the
250 reply to DATA until the SEARCH answer that listed the message) is observed for
``delivered`` and ``late`` probes: both are real deliveries, and leaving the slow ones
out would flatter the percentiles exactly when mail is slow.  ``junk`` probes are not
observed: they did not reach the inbox, and junk folders are only polled, so their
time is coarse.  The ``Received`` headers of ``delivered`` and ``late`` probes give the
per-hop delays and the server-side delivery time.

The state lives in :class:`RouteState`, a :class:`~exporter.core.model.CheckState` that also
emits the route's gauges, so that they exist (success at 0) from start-up and every
run publishes them, including outcomes that the receiver loop resolved in between.
"""

from __future__ import annotations

__all__ = [
    "LATENCY_BUCKETS",
    "MAX_PENDING",
    "RESULTS",
    "Probe",
    "Route",
    "RouteState",
]

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from exporter.config import RouteConfig, SendConfig
from exporter.core.model import CheckState, Sample, Sink
from exporter.roundtrip.authresults import RESULTS as AUTH_RESULTS
from exporter.roundtrip.received import Hop, hop_delays, parse_chain, server_delivery_delay
from exporter.roundtrip.receiver import Found, Mailbox, MailboxSpec, Watcher, get_mailbox, new_token
from exporter.roundtrip.sender import SendResult, build_message, send_probe
from exporter.roundtrip.verdict import AUTH_METHODS, DMARC_POLICIES, SPAM_VERDICTS, Verdict, judge

#: Histogram buckets of ``mail_roundtrip_latency_seconds``: 250 ms to one hour.
LATENCY_BUCKETS: tuple[float, ...] = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: Every value of the ``result`` label, all created at 0.
RESULTS: tuple[str, ...] = ("delivered", "late", "lost", "junk", "send_failed", "receive_failed")
#: Probes a route keeps waiting for at most.
MAX_PENDING = 128

SendFn = Callable[[SendConfig, bytes], Awaitable[SendResult]]
Clock = Callable[[], float]


@dataclass(eq=False)
class Probe:
    seq: int
    token: str
    created: float
    sent_at: float | None = None
    outcome: str | None = None
    found: Found | None = None
    latency: float | None = None
    timed_out: bool = False
    verdict: Verdict | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class RouteState(CheckState):
    """Counters and histogram of a route (as any check), plus the gauges it owns."""

    route: str = ""
    success: float = 0.0
    last_success: float = 0.0
    server_delivery: float | None = None
    hops: tuple[Hop, ...] = ()
    verdict: Verdict | None = None  # the receiver's verdict on the newest probe found

    def samples(self) -> Iterable[Sample]:
        yield from super().samples()
        route = (("route", self.route),)
        yield Sample("mail_roundtrip_success", "", route, self.success)
        yield Sample("mail_roundtrip_last_success_timestamp_seconds", "", route, self.last_success)
        if self.server_delivery is not None:
            yield Sample("mail_roundtrip_server_delivery_seconds", "", route, self.server_delivery)
        for hop in self.hops:
            if hop.delay is not None:
                yield Sample("mail_roundtrip_hop_delay_seconds", "", (*route, ("hop", hop.label)), hop.delay)
        if self.verdict is not None:
            yield from _verdict_samples(route, self.verdict)


def _stateset(
    name: str, labels: tuple[tuple[str, str], ...], key: str, values: Iterable[str], current: str
) -> Iterable[Sample]:
    for value in values:
        yield Sample(name, "", (*labels, (key, value)), 1.0 if value == current else 0.0)


def _verdict_samples(route: tuple[tuple[str, str], ...], v: Verdict) -> Iterable[Sample]:
    """The gauges of the receiver's verdict on the newest probe found (see docs/metrics.md)."""
    yield from _stateset("mail_roundtrip_spam_verdict", route, "verdict", SPAM_VERDICTS, v.spam)
    if v.spam_score is not None:
        yield Sample("mail_roundtrip_spam_score", "", route, v.spam_score)
    if not v.auth_checked:
        return
    yield Sample("mail_roundtrip_auth_header_present", "", route, 1.0 if v.header_present else 0.0)
    for method, result in v.auth:
        yield from _stateset("mail_roundtrip_auth_result", (*route, ("method", method)), "result", AUTH_RESULTS, result)
    yield Sample("mail_roundtrip_dkim_aligned", "", route, 1.0 if v.dkim_aligned else 0.0)
    yield from _stateset("mail_roundtrip_dmarc_policy", route, "policy", DMARC_POLICIES, v.dmarc_policy)
    yield from _stateset("mail_roundtrip_dmarc_disposition", route, "disposition", DMARC_POLICIES, v.dmarc_disposition)


class Route:
    """The state machine of one route, and its run; see the module doc.

    ``clock`` is the wall clock (``time.time``); tests drive the outcome methods
    (:meth:`new_probe`, :meth:`sent`, :meth:`on_found`, :meth:`expire`...) with a fake one.
    """

    def __init__(
        self,
        cfg: RouteConfig,
        *,
        imap_timeout: float = 10.0,
        send_timeout: float = 10.0,
        clock: Clock = time.time,
        send: SendFn | None = None,
        mailbox_factory: Callable[[MailboxSpec], Mailbox] | None = None,
        log: logging.Logger | None = None,
        may_sweep: Callable[[], bool] | None = None,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.imap_timeout = imap_timeout
        self.send_timeout = send_timeout
        self.clock = clock
        self.log = log or logging.getLogger("exporter.route")
        self._send: SendFn = send or self._send_default
        self._mailbox_factory = mailbox_factory or self._shared_mailbox
        self.state = RouteState(route=cfg.name)
        for result in RESULTS:
            self.state.init_counter("mail_roundtrip_probes_total", route=cfg.name, result=result)
        self.state.init_histogram("mail_roundtrip_latency_seconds", LATENCY_BUCKETS, route=cfg.name)
        for spam in SPAM_VERDICTS:
            self.state.init_counter("mail_roundtrip_spam_verdicts_total", route=cfg.name, verdict=spam)
        if cfg.receive.authserv_id is not None:
            for method in AUTH_METHODS:
                for result in ("pass", "fail", "none"):
                    self.state.init_counter(
                        "mail_roundtrip_auth_results_total", route=cfg.name, method=method, result=result
                    )
        self.pending: OrderedDict[str, Probe] = OrderedDict()
        self.last: Probe | None = None
        self.notes: list[str] = []  # outcomes resolved since the last run, for the status page
        self._seq = 0
        self._gauge_seq = -1  # seq of the probe the gauges describe
        self._mailbox: Mailbox | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        rc = cfg.receive
        self.watcher = Watcher(
            folders=rc.folders,
            junk_folders=rc.junk_folders,
            on_found=self.on_found,
            keep_messages=rc.keep_messages,
            max_age=cfg.max_age,
            poll_interval=rc.poll_interval,
            idle=rc.idle,
            recheck=rc.idle_recheck,
            may_sweep=may_sweep or _always,
        )

    # --- outcome bookkeeping (no I/O) ------------------------------------------------------------------

    def new_probe(self) -> Probe:
        now = self.clock()
        self._seq += 1
        probe = Probe(self._seq, new_token(now), now)
        self.pending[probe.token] = probe
        self.last = probe
        while len(self.pending) > MAX_PENDING:
            _, oldest = next(iter(self.pending.items()))
            self._resolve(oldest, "lost", note=f"more than {MAX_PENDING} probes pending; the oldest counts as lost")
        return probe

    def sent(self, probe: Probe, at: float) -> None:
        """The 250 reply to DATA arrived at ``at`` (the probe may already have been found meanwhile)."""
        probe.sent_at = at
        if probe.found is not None and probe.outcome is None:
            self._judge(probe, probe.found)

    def send_failed(self, probe: Probe) -> None:
        self._resolve(probe, "send_failed")

    def receive_failed(self, probe: Probe | None) -> None:
        if probe is None:
            self._seq += 1
            self._count("receive_failed")
            self._set_success(self._seq, False)
        else:
            self._resolve(probe, "receive_failed")

    def timed_out(self, probe: Probe) -> None:
        """The deadline passed without the probe: not an outcome yet, but no longer a success."""
        probe.timed_out = True
        self._set_success(probe.seq, False)

    def on_found(self, found: Found) -> None:
        """Called by the mailbox (or a test) when a probe message was found."""
        probe = self.pending.get(found.token)
        if probe is None or probe.outcome is not None:
            return
        probe.found = found
        if probe.sent_at is None:
            # found before the sender returned (it was still saying QUIT): judged in sent()
            return
        self._judge(probe, found)

    def _judge(self, probe: Probe, found: Found) -> None:
        if found.folder in self.cfg.receive.junk_folders:
            self._resolve(probe, "junk")
            return
        sent_at = probe.sent_at if probe.sent_at is not None else probe.created
        latency = max(0.0, found.seen_at - sent_at)
        probe.latency = latency
        self._resolve(probe, "late" if latency > self.cfg.timeout else "delivered")

    def expire(self, now: float | None = None) -> list[Probe]:
        """Count probes older than ``max_age`` as lost; returns them."""
        now = self.clock() if now is None else now
        out = []
        for probe in list(self.pending.values()):
            start = probe.sent_at if probe.sent_at is not None else probe.created
            if now - start > self.cfg.max_age:
                self._resolve(probe, "lost")
                out.append(probe)
        return out

    def _count(self, result: str) -> None:
        self.state.inc("mail_roundtrip_probes_total", route=self.name, result=result)

    def _set_success(self, seq: int, ok: bool, at: float | None = None) -> None:
        if seq < self._gauge_seq:
            return  # an older probe: the gauges describe a newer one
        self._gauge_seq = seq
        self.state.success = 1.0 if ok else 0.0
        if ok and at is not None:
            self.state.last_success = at

    def _resolve(self, probe: Probe, outcome: str, note: str = "") -> None:
        if probe.outcome is not None:
            return
        probe.outcome = outcome
        self.pending.pop(probe.token, None)
        if self._mailbox is not None:
            self._mailbox.unwatch(self.watcher, probe.token)
        self.watcher.tokens.discard(probe.token)
        self._count(outcome)
        found = probe.found
        if outcome in ("delivered", "late") and found is not None and probe.latency is not None:
            self.state.observe("mail_roundtrip_latency_seconds", probe.latency, LATENCY_BUCKETS, route=self.name)
            sent_at = probe.sent_at if probe.sent_at is not None else probe.created
            chain = parse_chain(found.received)
            self.state.hops = tuple(hop_delays(chain, sent_at)) if probe.seq >= self._gauge_seq else self.state.hops
            delay = server_delivery_delay(chain, sent_at)
            if delay is not None and math.isfinite(delay) and probe.seq >= self._gauge_seq:
                self.state.server_delivery = delay
        if outcome in ("delivered", "late", "junk") and found is not None:
            self._judge_verdict(probe, found)
        self._set_success(probe.seq, outcome == "delivered", found.seen_at if found is not None else None)
        if probe is not self.last or probe.timed_out:
            self.notes.append(note or self._describe(probe))
            del self.notes[:-10]
        probe.done.set()

    def _judge_verdict(self, probe: Probe, found: Found) -> None:
        """Count the receiver's verdict on a found probe; the gauges follow the newest one."""
        v = judge(
            found.fields,
            authserv_id=self.cfg.receive.authserv_id,
            from_domain=self.cfg.send.mail_from,  # an address or a domain: judge() takes the domain
        )
        probe.verdict = v
        self.state.inc("mail_roundtrip_spam_verdicts_total", route=self.name, verdict=v.spam)
        for method, result in v.auth:
            self.state.inc("mail_roundtrip_auth_results_total", route=self.name, method=method, result=result)
        if probe.seq >= self._gauge_seq:
            self.state.verdict = v

    def _describe(self, probe: Probe) -> str:
        text = f"probe {probe.token[:16]}: {probe.outcome}"
        if probe.latency is not None:
            text += f" after {probe.latency:.3f}s"
        if probe.found is not None:
            text += f" in {probe.found.folder}"
        return text

    # --- the run ----------------------------------------------------------------------------------------

    async def _send_default(self, cfg: SendConfig, message: bytes) -> SendResult:
        return await send_probe(cfg, message, timeout=self.send_timeout)

    def _shared_mailbox(self, spec: MailboxSpec) -> Mailbox:
        return get_mailbox(spec, timeout=self.imap_timeout, log=self.log)

    def mailbox(self) -> Mailbox:
        """The shared mailbox of this route, attached (and the route re-watching its pending probes)."""
        box = self._mailbox
        if box is None or box.closed:
            box = self._mailbox_factory(MailboxSpec.from_receive(self.cfg.receive))
            box.attach(self.watcher)
            for token in self.pending:
                box.watch(self.watcher, token)
            self._mailbox = box
        return box

    def _bind_to_task(self) -> None:
        """Detach from the mailbox when the task running this route ends (reload, stop)."""
        task = asyncio.current_task()
        if task is None or task in self._tasks:
            return
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self.close()

    def close(self) -> None:
        """Stop using the mailbox (its loop ends when no other route uses it)."""
        box, self._mailbox = self._mailbox, None
        if box is not None:
            box.detach(self.watcher)

    def on_timeout(self, sink: Sink) -> None:
        """The scheduler cut the run short (it should not: the run bounds itself)."""
        probe = self.last
        if probe is not None and probe.outcome is None:
            self.timed_out(probe)
        sink.fail("timeout", "the run did not finish within its time limit")

    async def run(self, sink: Sink, log: logging.Logger) -> bool:
        self._bind_to_task()
        self.expire()
        box = self.mailbox()
        rc = self.cfg.receive
        sink.detail("mailbox", f"{rc.username} at {rc.address}")
        try:
            return await self._run(sink, box)
        finally:
            if self.notes:
                sink.detail("earlier probes", "; ".join(self.notes))
                self.notes.clear()
            sink.detail("pending probes", str(len(self.pending)))
            if box.missing_folders:
                sink.detail("missing folders", ", ".join(sorted(box.missing_folders)))

    async def _run(self, sink: Sink, box: Mailbox) -> bool:
        cfg = self.cfg
        error = await box.ready(self.imap_timeout)
        if error:
            self.receive_failed(None)
            sink.fail("receive_failed", f"IMAP {cfg.receive.address}: {error}")
            return False
        sink.detail("imap", "IDLE" if box.idle_supported and cfg.receive.idle else "polling")
        probe = self.new_probe()
        box.watch(self.watcher, probe.token)
        message = build_message(
            token=probe.token,
            route=cfg.name,
            mail_from=cfg.send.mail_from,
            rcpt_to=cfg.send.rcpt_to,
            headers=cfg.send.headers,
            now=self.clock(),
        )
        result = await self._send(cfg.send, message)
        if result.code is not None:
            sink.detail("smtp_reply_code", str(result.code))
        if not result.ok:
            self.send_failed(probe)
            sink.fail("send_failed", f"send to {cfg.send.address} failed ({result.reason}): {result.message}")
            return False
        assert result.accepted_at is not None
        self.sent(probe, result.accepted_at)
        if result.reply:
            sink.detail("smtp_reply", result.reply)
        deadline = result.accepted_at + cfg.timeout
        if probe.outcome is None:
            remaining = deadline - self.clock()
            if remaining > 0:
                try:
                    async with asyncio.timeout(remaining):
                        await probe.done.wait()
                except TimeoutError:
                    pass
        searched = True
        if probe.outcome is None:
            searched = await box.refresh(self.imap_timeout)  # one last look in every folder
        if probe.outcome is None:
            if not searched and not box.connected:
                self.receive_failed(probe)
                sink.fail("receive_failed", f"IMAP {cfg.receive.address}: {box.error or 'not connected'}")
                return False
            self.timed_out(probe)
            sink.fail("timeout", f"probe not found within {cfg.timeout:g}s; still watching for it")
            return False
        return self._report(probe, sink)

    def _report(self, probe: Probe, sink: Sink) -> bool:
        found = probe.found
        if probe.latency is not None:
            sink.detail("latency", f"{probe.latency:.3f}s")
        if found is not None:
            sink.detail("folder", found.folder)
        if probe.verdict is not None:
            sink.detail("verdict", probe.verdict.describe())
        if probe.outcome == "delivered":
            return True
        if probe.outcome == "junk":
            sink.fail("junk", f"probe found in junk folder {found.folder if found else '?'}")
        elif probe.outcome == "late":
            sink.fail("late", f"probe arrived after {probe.latency or 0:.1f}s, later than {self.cfg.timeout:g}s")
        elif probe.outcome == "lost":
            sink.fail("lost", f"probe not found within max_age {self.cfg.max_age:g}s")
        else:
            sink.fail(probe.outcome or "timeout", f"probe ended as {probe.outcome}")
        return False


def _always() -> bool:
    return True
