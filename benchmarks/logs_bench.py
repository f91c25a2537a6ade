#!/usr/bin/env python3
"""Log parsing benchmark (issue 15): this exporter against Debian's prometheus-postfix-exporter.

What it does:

1. Generates a realistic Postfix log of ``--lines`` lines (default 1,000,000) once, from a
   deterministic template mix (``--seed``): postscreen (CONNECT, PASS OLD/NEW, DNSBL,
   PREGREET, rejects, DISCONNECT), smtpd (connect, TLS, client=, NOQUEUE rejects of five
   kinds, SASL failures, lost connections, disconnect with command counts), cleanup
   (message-id, milter-reject), qmgr (queue active, removed, expired), smtp and lmtp
   deliveries (sent, deferred, bounced, with ``delay=`` and ``delays=a/b/c/d``), outbound TLS,
   bounce notices, pickup, anvil, and a few non-Postfix mail lines.  Classic syslog
   timestamps, ``syslog_name`` postfix (the peer only understands ``postfix/<daemon>``).  It is
   kept in ``--workdir`` and reused while its parameters are unchanged.
2. For ``--rounds`` rounds, alternating which goes first, runs each exporter as a real
   process on loopback, each following its own (initially empty) copy of the log:

   - **this exporter**: ``python -m exporter`` with one ``logs:`` file source (``parsers:
     [postfix]``, ``start_at: end``, ``interval: 1s``, ``max_lines_per_run`` from
     ``--batch``): the real check path (file source, record splitting, parser, tally,
     check state);
   - **prometheus-postfix-exporter** (``--postfix.logfile_path``; ``--postfix.showq_path``
     at a path that does not exist, so no queue is read).  It starts at the end of its
     file (hpcloud/tail, SeekEnd), which is why both follow an empty file.

   Each process first gets one warm-up line and is polled until it has counted it (so both
   are positioned and idle); then its CPU time (utime + stime of the whole process from
   ``/proc/PID/stat``) is taken, the whole log is appended to its file in 1 MiB writes,
   and ``/metrics`` is polled once a second until all lines are consumed: for this
   exporter ``mail_log_lines_total`` reaches the line count; for the peer, whose counters
   only count what it recognises, the log's last line is an opendkim "DKIM-Signature field
   added" line (the peer reads in order, so once ``opendkim_signatures_added_total`` shows
   it, every line before it was processed).  Lines per CPU-second = lines / CPU seconds
   used between the two points.  Peak memory is the process's ``VmHWM``, read before it is
   stopped; the RSS after the warm-up line is reported as the baseline.
3. With ``--flat`` (default), one more run of each on a log of twice the size, to show
   whether peak memory grows with the amount of log read; and with ``--small-batch N``
   (default 20,000; 0 for none) one more run of this exporter with ``max_lines_per_run: N``,
   since its peak memory follows the batch it holds, not the log.
4. Prints a table, and writes it as Markdown to ``logs.md`` in ``--results-dir`` (default
   ``benchmarks/results``); with ``--summary FILE``, appends the headline figures (medians of
   the rounds: lines per CPU-second and peak RSS, each against the peer) as JSON lines, for
   ``benchmarks/run_all.py``.

A few counters of both exporters are compared at the end of each run (connections, SASL
failures, rejects, qmgr removals, deliveries) to show that both read the same lines.

Loopback only: both exporters listen on 127.0.0.1 and read local files.  Bounded: every
run has a deadline (``--run-timeout``), the whole benchmark one too (``--budget``).

    python3 benchmarks/logs_bench.py                       # 1,000,000 lines, 3 rounds
    python3 benchmarks/logs_bench.py --lines 200000 --rounds 1 --no-flat --no-write
    python3 benchmarks/logs_bench.py --quick               # 20,000 lines, 1 round, no extra runs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from run_all import append_summary, summary_line  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "logs.md"
PEER = "prometheus-postfix-exporter"
GENERATOR_VERSION = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
SENTINEL_SUBJECT = "mcebench"
START = 1_764_460_800  # Sun 30 Nov 2025 00:00:00 UTC: the log's first timestamp (as local time)


# --- the log ---------------------------------------------------------------------------------------------

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
TLS13 = (
    "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 "
    "server-signature RSA-PSS (2048 bits) server-digest SHA256"
)
TLS12 = "TLSv1.2 with cipher ECDHE-RSA-AES256-GCM-SHA384 (256/256 bits)"
REMOTE_DOMAINS = ("gmail.com", "outlook.com", "yahoo.com", "gmx.de", "web.de", "orange.fr", "example.org")
LOCAL_DOMAINS = ("example.com", "example.net")
REJECTS = (
    (0.40, "550 5.1.1 <{r}>: Recipient address rejected: User unknown in virtual mailbox table"),
    (0.20, "554 5.7.1 <{r}>: Relay access denied"),
    (0.20, "554 5.7.1 Service unavailable; Client host [{ip}] blocked using zen.spamhaus.org; "
           "https://www.spamhaus.org/query/ip/{ip}"),
    (0.15, "450 4.2.0 <{r}>: Recipient address rejected: Greylisted, see "
           "http://postgrey.schweikert.ch/help/{d}.html"),
    (0.05, "504 5.5.2 <{helo}>: Helo command rejected: need fully-qualified hostname"),
)  # fmt: skip


def pick(w: float, table: tuple[tuple[float, str], ...]) -> str:
    """The entry of a (share, value) table that ``w`` in [0, 1) falls on."""
    acc = 0.0
    for share, value in table:
        acc += share
        if w < acc:
            return value
    return table[-1][1]


def pretty(seconds: float) -> str:
    """A delay as Postfix logs it: 0 below 10 ms, then two significant digits (0.08, 1.3, 299)."""
    if seconds < 0.01:
        return "0"
    if seconds < 1:
        return f"{seconds:.2f}".rstrip("0").rstrip(".")
    if seconds < 10:
        return f"{seconds:.1f}".rstrip("0").rstrip(".")
    return f"{seconds:.0f}"


class LogWriter:
    """Deterministic realistic Postfix traffic, one session at a time."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.t = float(START)
        self.lines: list[tuple[str, str]] = []  # (line, kind)
        self.pids = {d: self.rng.randint(1000, 30000) for d in ("qmgr", "pickup", "anvil")}

    # -- small pieces --------------------------------------------------------------------------------
    def stamp(self) -> str:
        self.t += self.rng.expovariate(1 / 0.08)
        tm = time.gmtime(self.t)
        return f"{MONTHS[tm.tm_mon - 1]} {tm.tm_mday:2d} {tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"

    def emit(self, daemon: str, pid: int, msg: str, kind: str) -> None:
        self.lines.append((f"{self.stamp()} mx1 postfix/{daemon}[{pid}]: {msg}", kind))

    def other(self, prog: str, msg: str) -> None:
        self.lines.append((f"{self.stamp()} mx1 {prog}: {msg}", "other"))

    def qid(self) -> str:
        return f"{self.rng.getrandbits(40):010X}"

    def ip(self) -> str:
        r = self.rng
        return f"{r.choice((198, 203, 192, 185, 45, 89))}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"

    def host(self, ip: str) -> str:
        return "unknown" if self.rng.random() < 0.3 else f"mail{ip.split('.')[-1]}.client{ip.split('.')[1]}.example"

    def addr(self, local: bool) -> tuple[str, str]:
        d = self.rng.choice(LOCAL_DOMAINS if local else REMOTE_DOMAINS)
        return f"user{self.rng.randint(1, 5000)}@{d}", d

    def delays(self, slow: bool = False) -> tuple[str, str]:
        r = self.rng
        a, b = r.lognormvariate(-3, 1), r.lognormvariate(-4, 1)
        c, x = r.lognormvariate(-2 if slow else -3, 1), r.lognormvariate(-1.5, 1)
        if slow:
            a += r.uniform(60, 7200)
        return pretty(a + b + c + x), "/".join(pretty(v) for v in (a, b, c, x))

    # -- flows ---------------------------------------------------------------------------------------
    def deliver(self, qid: str, rcpt: str, local: bool) -> str:
        """One delivery attempt; returns its status."""
        r = self.rng
        if local:
            pid = r.randint(2000, 40000)
            delay, delays = self.delays()
            self.emit(
                "lmtp",
                pid,
                f"{qid}: to=<{rcpt}>, relay=mail.example.com[private/dovecot-lmtp], delay={delay}, "
                f"delays={delays}, dsn=2.0.0, status=sent (250 2.0.0 <{rcpt}> {r.getrandbits(64):016x} Saved)",
                "lmtp_sent",
            )
            return "sent"
        pid = r.randint(2000, 40000)
        mx_ip = self.ip()
        mx = f"mx{r.randint(1, 4)}.{rcpt.split('@')[1]}"
        x = r.random()
        if x < 0.05:
            self.emit("smtp", pid, f"connect to {mx}[{mx_ip}]:25: Connection timed out", "smtp_conn_timeout")
            delay, delays = self.delays(slow=True)
            self.emit(
                "smtp",
                pid,
                f"{qid}: to=<{rcpt}>, relay=none, delay={delay}, delays={delays}, dsn=4.4.1, "
                f"status=deferred (connect to {mx}[{mx_ip}]:25: Connection timed out)",
                "smtp_deferred",
            )
            return "deferred"
        if r.random() < 0.85:
            self.emit("smtp", pid, f"Trusted TLS connection established to {mx}[{mx_ip}]:25: {TLS13}", "smtp_tls")
        elif r.random() < 0.05:
            self.emit("smtp", pid, f"SSL_connect error to {mx}[{mx_ip}]:25: -1", "smtp_tls_fail")
        delay, delays = self.delays(slow=x < 0.1)
        if x < 0.12:
            self.emit(
                "smtp",
                pid,
                f"{qid}: to=<{rcpt}>, relay={mx}[{mx_ip}]:25, delay={delay}, delays={delays}, dsn=4.7.1, "
                f"status=deferred (host {mx}[{mx_ip}] said: 450 4.7.1 Try again later (in reply to RCPT TO command))",
                "smtp_deferred",
            )
            return "deferred"
        if x < 0.16:
            self.emit(
                "smtp",
                pid,
                f"{qid}: to=<{rcpt}>, relay={mx}[{mx_ip}]:25, delay={delay}, delays={delays}, dsn=5.1.1, "
                f"status=bounced (host {mx}[{mx_ip}] said: 550 5.1.1 The email account that you tried to reach "
                "does not exist. (in reply to RCPT TO command))",
                "smtp_bounced",
            )
            return "bounced"
        self.emit(
            "smtp",
            pid,
            f"{qid}: to=<{rcpt}>, relay={mx}[{mx_ip}]:25, delay={delay}, delays={delays}, dsn=2.0.0, "
            f"status=sent (250 2.0.0 OK  {int(self.t)} {r.getrandbits(48):012x} - gsmtp)",
            "smtp_sent",
        )
        return "sent"

    def queued(self, qid: str, sender: str, rcpts: list[tuple[str, bool]]) -> None:
        """cleanup, qmgr, the deliveries, a bounce notice if one failed, removal."""
        r = self.rng
        qmgr = self.pids["qmgr"]
        mid = f"{r.getrandbits(64):x}@{sender.split('@')[1]}"
        self.emit("cleanup", r.randint(2000, 40000), f"{qid}: message-id=<{mid}>", "cleanup")
        size = int(r.lognormvariate(9, 1.2)) + 300
        self.emit(
            "qmgr", qmgr, f"{qid}: from=<{sender}>, size={size}, nrcpt={len(rcpts)} (queue active)", "qmgr_active"
        )
        statuses = [self.deliver(qid, rcpt, local) for rcpt, local in rcpts]
        if "bounced" in statuses:
            notice = self.qid()
            self.emit("cleanup", r.randint(2000, 40000), f"{notice}: message-id=<{notice}@mx1.example.com>", "cleanup")
            self.emit("bounce", r.randint(2000, 40000), f"{qid}: sender non-delivery notification: {notice}", "bounce")
            self.emit("qmgr", qmgr, f"{notice}: from=<>, size={size + 2000}, nrcpt=1 (queue active)", "qmgr_active")
            self.deliver(notice, sender, sender.split("@")[1] in LOCAL_DOMAINS)
            self.emit("qmgr", qmgr, f"{notice}: removed", "qmgr_removed")
        if "deferred" not in statuses:
            self.emit("qmgr", qmgr, f"{qid}: removed", "qmgr_removed")
        elif r.random() < 0.1:
            self.emit("qmgr", qmgr, f"{qid}: from=<{sender}>, status=expired, returned to sender", "qmgr_expired")

    def postscreen(self, ip: str, port: int) -> bool:
        """A postscreen front; returns whether the client is passed on to smtpd."""
        r = self.rng
        pid = r.randint(2000, 40000)
        self.emit("postscreen", pid, f"CONNECT from [{ip}]:{port} to [192.0.2.1]:25", "postscreen")
        x = r.random()
        if x < 0.75:
            self.emit("postscreen", pid, f"PASS {'OLD' if x < 0.6 else 'NEW'} [{ip}]:{port}", "postscreen")
            return True
        if x < 0.9:
            self.emit("dnsblog", r.randint(2000, 40000), f"addr {ip} listed by domain zen.spamhaus.org as 127.0.0.2",
                      "dnsblog")  # fmt: skip
            self.emit("postscreen", pid, f"DNSBL rank 3 for [{ip}]:{port}", "postscreen")
        else:
            self.emit("postscreen", pid, f"PREGREET 11 after 0.09 from [{ip}]:{port}: EHLO User\\r\\n", "postscreen")
        rcpt, _ = self.addr(local=True)
        sender, _ = self.addr(local=False)
        self.emit(
            "postscreen",
            pid,
            f"NOQUEUE: reject: RCPT from [{ip}]:{port}: 550 5.7.1 Service unavailable; client [{ip}] blocked using "
            f"zen.spamhaus.org; from=<{sender}>, to=<{rcpt}>, proto=ESMTP, helo=<{self.host(ip)}>",
            "postscreen",
        )
        self.emit("postscreen", pid, f"DISCONNECT [{ip}]:{port}", "postscreen")
        return False

    def session(self) -> None:
        r = self.rng
        ip = self.ip()
        host = self.host(ip)
        helo = host if host != "unknown" else r.choice(("localhost", "User", f"[{ip}]"))
        if r.random() < 0.4 and not self.postscreen(ip, r.randint(1024, 65535)):
            return
        pid = r.randint(2000, 40000)
        self.emit("smtpd", pid, f"connect from {host}[{ip}]", "smtpd_connect")
        if host != "unknown" and r.random() < 0.05:
            self.emit("smtpd", pid, f"warning: hostname {host} does not resolve to address {ip}: Name or service not "
                      "known", "smtpd_warning")  # fmt: skip
        tls = r.random() < 0.6
        if tls:
            if r.random() < 0.03:
                self.emit("smtpd", pid, f"SSL_accept error from {host}[{ip}]: lost connection", "smtpd_tls_fail")
                self.emit("smtpd", pid, f"lost connection after STARTTLS from {host}[{ip}]", "smtpd_lost")
                self.emit("smtpd", pid, f"disconnect from {host}[{ip}] ehlo=1 starttls=0/1 commands=1/2", "disconnect")
                return
            self.emit("smtpd", pid, f"Anonymous TLS connection established from {host}[{ip}]: "
                      f"{TLS13 if r.random() < 0.7 else TLS12}", "smtpd_tls")  # fmt: skip
        x = r.random()
        counts = f"ehlo=1{' starttls=1' if tls else ''}"
        if x < 0.58:
            qid = self.qid()
            self.emit("smtpd", pid, f"{qid}: client={host}[{ip}]", "smtpd_client")
            nr = 1 if r.random() < 0.85 else r.randint(2, 4)
            rcpts = []
            for _ in range(nr):
                local = r.random() < 0.5
                rcpts.append((self.addr(local)[0], local))
            sender = self.addr(local=False)[0]
            if r.random() < 0.03:
                self.emit(
                    "cleanup",
                    r.randint(2000, 40000),
                    f"{qid}: milter-reject: END-OF-MESSAGE from {host}[{ip}]: 5.7.1 Rejected by spam filter; "
                    f"from=<{sender}> to=<{rcpts[0][0]}> proto=ESMTP helo=<{helo}>",
                    "cleanup_milter",
                )
                self.emit("smtpd", pid, f"disconnect from {host}[{ip}] {counts} mail=1 rcpt={nr} data=0/1 quit=1 "
                          f"commands={4 + nr}/{5 + nr}", "disconnect")  # fmt: skip
                return
            self.queued(qid, sender, rcpts)
            self.emit("smtpd", pid, f"disconnect from {host}[{ip}] {counts} mail=1 rcpt={nr} data=1 quit=1 "
                      f"commands={5 + nr}", "disconnect")  # fmt: skip
        elif x < 0.80:
            template = pick(r.random(), REJECTS)
            rcpt, d = self.addr(local=True)
            sender = self.addr(local=False)[0]
            reply = template.format(r=rcpt, ip=ip, d=d, helo=helo)
            self.emit("smtpd", pid, f"NOQUEUE: reject: RCPT from {host}[{ip}]: {reply}; from=<{sender}> to=<{rcpt}> "
                      f"proto=ESMTP helo=<{helo}>", "smtpd_reject")  # fmt: skip
            self.emit("smtpd", pid, f"disconnect from {host}[{ip}] {counts} mail=1 rcpt=0/1 quit=1 commands=3/4",
                      "disconnect")  # fmt: skip
        elif x < 0.88:
            n = r.randint(1, 3)
            for _ in range(n):
                self.emit("smtpd", pid, f"warning: {host}[{ip}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6",
                          "smtpd_sasl_fail")  # fmt: skip
            self.emit("smtpd", pid, f"disconnect from {host}[{ip}] {counts} auth=0/{n} quit=1 commands=2/{2 + n}",
                      "disconnect")  # fmt: skip
        else:
            stage = r.choice(("CONNECT", "EHLO", "AUTH", "RCPT", "DATA", "END-OF-MESSAGE", "UNKNOWN"))
            self.emit("smtpd", pid, f"lost connection after {stage} from {host}[{ip}]", "smtpd_lost")
            self.emit("smtpd", pid, f"disconnect from {host}[{ip}] {counts} commands=1", "disconnect")

    def background(self) -> None:
        r = self.rng
        x = r.random()
        if x < 0.4:
            qid = self.qid()
            self.emit("pickup", self.pids["pickup"], f"{qid}: uid=33 from=<www-data>", "pickup")
            self.queued(qid, "www-data@example.com", [(self.addr(local=r.random() < 0.3)[0], False)])
        elif x < 0.5:
            tm = time.gmtime(self.t)
            self.emit("anvil", self.pids["anvil"], f"statistics: max connection rate 3/60s for (smtp:{self.ip()}) at "
                      f"{MONTHS[tm.tm_mon - 1]} {tm.tm_mday:2d} {tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}",
                      "anvil")  # fmt: skip
        else:
            user, _ = self.addr(local=True)
            self.other(f"dovecot[{r.randint(1000, 9000)}]", f"imap-login: Login: user=<{user}>, method=PLAIN, "
                       f"rip={self.ip()}, lip=192.0.2.1, mpid={r.randint(1000, 99999)}, TLS")  # fmt: skip


def generate(path: Path, lines: int, seed: int) -> dict[str, int]:
    """Write the log (``lines`` lines, the last one the sentinel); return the count of lines by kind."""
    w = LogWriter(seed)
    written = 0
    kinds: Counter[str] = Counter()
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        while written < lines - 1:
            for _ in range(200):
                if w.rng.random() < 0.08:
                    w.background()
                else:
                    w.session()
            take = w.lines[: lines - 1 - written]
            kinds.update(kind for _, kind in take)
            out.write("\n".join(line for line, _ in take) + "\n")
            written += len(take)
            w.lines = []
        out.write(f"{w.stamp()} mx1 opendkim[4242]: ENDMARK: DKIM-Signature field added (s={SENTINEL_SUBJECT}, "
                  "d=end.invalid)\n")  # fmt: skip
        kinds["sentinel"] += 1
    tmp.replace(path)
    return dict(kinds)


def ensure_log(workdir: Path, lines: int, seed: int) -> tuple[Path, dict[str, int]]:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"postfix-{lines}-seed{seed}-v{GENERATOR_VERSION}.log"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        kinds = json.loads(meta.read_text())
        if sum(kinds.values()) == lines:
            return path, kinds
    t = time.perf_counter()
    kinds = generate(path, lines, seed)
    meta.write_text(json.dumps(kinds, indent=1, sort_keys=True))
    print(f"generated {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    return path, kinds


# --- measuring a process ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def scrape(port: int) -> dict[str, float] | None:
    """``/metrics`` as {sample line without value: value}; None if it does not answer."""
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[key] = float(value)
    return out


def total(samples: dict[str, float], name: str, *parts: str) -> float:
    """Sum of the samples of ``name`` whose label text contains every one of ``parts``."""
    return sum(v for k, v in samples.items() if (k == name or k.startswith(name + "{")) and all(p in k for p in parts))


@dataclass
class Result:
    who: str
    lines: int
    cpu: float
    wall: float
    peak_kb: int
    base_kb: int
    counters: dict[str, float] = field(default_factory=dict)

    @property
    def per_cpu_s(self) -> float:
        return self.lines / self.cpu if self.cpu > 0 else float("inf")


def append(src: Path, dst: Path, times: int = 1) -> None:
    with dst.open("ab") as out:
        for _ in range(times):
            with src.open("rb") as fh:
                while chunk := fh.read(1 << 20):
                    out.write(chunk)
                    out.flush()


@contextlib.contextmanager
def process(argv: list[str], log: Path, cwd: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_until(what: str, cond: Callable[[], bool], deadline: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    while not cond():
        if proc.poll() is not None:
            raise SystemExit(
                f"{what}: process exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}"
            )
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


WARMUP = "Nov 29 23:59:59 mx1 postfix/smtpd[999]: connect from warmup.example[192.0.2.99]\n"


def measure(
    who: str,
    argv: list[str],
    port: int,
    logfile: Path,
    src: Path,
    times: int,
    lines: int,
    done: Callable[[dict[str, float]], bool],
    warmed: Callable[[dict[str, float]], bool],
    positioned: Callable[[dict[str, float]], bool],
    run_dir: Path,
    timeout: float,
    env: dict[str, str],
) -> Result:
    """Start ``argv``, warm it up with one line, append ``src`` ``times`` times, wait for ``done``."""
    out = run_dir / f"{who}.out"
    deadline = time.monotonic() + timeout
    with process(argv, out, run_dir, env) as proc:
        last: dict[str, float] = {}

        def ready(pred: Callable[[dict[str, float]], bool]) -> bool:
            nonlocal last
            s = scrape(port)
            if s is None:
                return False
            last = s
            return pred(s)

        wait_until(f"{who} to follow its log", lambda: ready(positioned), deadline, proc, out)
        time.sleep(0.5)  # the peer's tailer seeks to the end in its own goroutine
        with logfile.open("a") as fh:
            fh.write(WARMUP)
        wait_until(f"{who} to count the warm-up line", lambda: ready(warmed), deadline, proc, out)
        base_kb = status_kb(proc.pid, "VmRSS")
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        append(src, logfile, times)
        while True:
            if ready(done):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                shown = {k: v for k, v in last.items() if "log_" in k or "postfix" in k}
                raise SystemExit(
                    f"{who} did not consume {lines:,} lines within {timeout:.0f}s; "
                    f"last counters: {json.dumps(shown)[:2000]}"
                    f"\n{out.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(1.0)
        cpu, wall = cpu_seconds(proc.pid) - cpu0, time.monotonic() - t0
        peak = status_kb(proc.pid, "VmHWM")
    return Result(who, lines, cpu, wall, peak, base_kb, last)


def run_ours(src: Path, times: int, lines: int, batch: int, run_dir: Path, timeout: float) -> Result:
    logfile = run_dir / "ours.log"
    logfile.write_text("")
    port = free_port()
    cfg = run_dir / "config.yml"
    cfg.write_text(
        "logs:\n"
        f"  - {{name: bench, type: file, path: {json.dumps(str(logfile))}, parsers: [postfix], start_at: end,\n"
        f"     interval: 1s, max_lines_per_run: {batch}}}\n"
    )
    argv = [
        sys.executable,
        "-m",
        "exporter",
        f"--config.file={cfg}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.path={run_dir / 'data'}",
        "--log.level=warn",
    ]
    want = lines * times + 1

    def counted(s: dict[str, float]) -> float:
        return total(s, "mail_log_lines_total", 'source="bench"')

    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    r = measure(
        "ours", argv, port, logfile, src, times, lines * times,
        done=lambda s: counted(s) >= want, warmed=lambda s: counted(s) >= 1,
        # start_at: end is fixed at the first run: only then may the warm-up line be written
        positioned=lambda s: total(s, "mail_exporter_check_runs_total", 'check="log"', 'name="bench"') >= 1,
        run_dir=run_dir, timeout=timeout, env={**os.environ, "PYTHONPATH": pythonpath},
    )  # fmt: skip
    s = r.counters
    r.counters = {
        "lines": counted(s) - 1,
        "smtpd connections": total(s, "mail_postfix_smtpd_connections_total", 'source="bench"') - 1,
        "smtpd disconnections": total(s, "mail_postfix_smtpd_disconnections_total", 'source="bench"'),
        "SASL failures": total(s, "mail_postfix_smtpd_sasl_failures_total", 'source="bench"'),
        "smtpd NOQUEUE rejects": total(s, "mail_postfix_smtpd_rejects_total", 'source="bench"'),
        "qmgr removed": total(s, "mail_postfix_qmgr_removed_total", 'source="bench"'),
        "smtp/lmtp deliveries": total(s, "mail_log_deliveries_total", 'source="bench"'),
        "unparsed postfix lines": total(s, "mail_log_lines_unparsed_total", 'source="bench"', 'program="postfix"'),
    }
    return r


def run_peer(src: Path, times: int, lines: int, run_dir: Path, timeout: float) -> Result:
    peer = shutil.which(PEER)
    if peer is None:
        raise SystemExit(f"{PEER} not found: apt-get install -y {PEER}")
    logfile = run_dir / "peer.log"
    logfile.write_text("")
    port = free_port()
    argv = [
        peer,
        f"--web.listen-address=127.0.0.1:{port}",
        f"--postfix.logfile_path={logfile}",
        f"--postfix.showq_path={run_dir / 'no-showq'}",
    ]
    sentinel = f'subject="{SENTINEL_SUBJECT}"'
    r = measure(
        "peer", argv, port, logfile, src, times, lines * times,
        done=lambda s: total(s, "opendkim_signatures_added_total", sentinel) >= times,
        warmed=lambda s: total(s, "postfix_smtpd_connects_total") >= 1,
        positioned=lambda s: True,
        run_dir=run_dir, timeout=timeout, env=dict(os.environ),
    )  # fmt: skip
    s = r.counters
    r.counters = {
        "smtpd connections": total(s, "postfix_smtpd_connects_total") - 1,
        "smtpd disconnections": total(s, "postfix_smtpd_disconnects_total"),
        "SASL failures": total(s, "postfix_smtpd_sasl_authentication_failures_total"),
        "smtpd NOQUEUE rejects": total(s, "postfix_smtpd_messages_rejected_total"),
        "qmgr removed": total(s, "postfix_qmgr_messages_removed_total"),
        # four observations per delivery line; 0.3.0 labels its smtp ones stage="" (a bug of the peer)
        "smtp/lmtp deliveries": total(s, "postfix_smtp_delivery_delay_seconds_count") / 4
        + total(s, "postfix_lmtp_delivery_delay_seconds_count") / 4,
        "unsupported lines": total(s, "postfix_unsupported_log_entries_total"),
    }
    return r


# --- report ----------------------------------------------------------------------------------------------


def fmt_mb(kb: float) -> str:
    return f"{kb / 1024:.1f} MB"


def report(args: argparse.Namespace, kinds: dict[str, int], rounds: list[dict[str, Result]],
           flat: dict[str, Result] | None, small: Result | None, peer_version: str) -> str:  # fmt: skip
    med = {
        who: {
            "per_cpu_s": statistics.median(r[who].per_cpu_s for r in rounds),
            "cpu": statistics.median(r[who].cpu for r in rounds),
            "wall": statistics.median(r[who].wall for r in rounds),
            "peak_kb": statistics.median(r[who].peak_kb for r in rounds),
            "base_kb": statistics.median(r[who].base_kb for r in rounds),
        }
        for who in ("ours", "peer")
    }
    ratio = med["ours"]["per_cpu_s"] / med["peer"]["per_cpu_s"]
    cmd = " ".join(["python3 benchmarks/logs_bench.py", *sys.argv[1:]])
    out = [
        "# Log parsing benchmark",
        "",
        f"`{cmd}` on {platform.node()}: {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}; peer: {peer_version}.",
        "",
        f"The same generated Postfix log of **{args.lines:,} lines** (seed {args.seed}, "
        f"{sum(v for k, v in kinds.items() if k != 'other'):,} Postfix lines, {kinds.get('other', 0):,} other mail "
        "lines) appended to an empty file that each exporter follows as a real process. "
        "CPU is utime + stime of the process from `/proc/PID/stat` between the moment the log is appended and the "
        "moment its counters show every line consumed; peak memory is `VmHWM`, the baseline the RSS after one "
        f"warm-up line. Medians of {len(rounds)} round(s), alternating which exporter goes first; this exporter ran "
        f"with `max_lines_per_run: {args.batch}`.",
        "",
        "| exporter | lines per CPU-second | CPU seconds | wall seconds | peak RSS | baseline RSS |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for who, name in (("ours", "mail-continuity-exporter (file source, real check)"), ("peer", PEER)):
        m = med[who]
        out.append(
            f"| {name} | {m['per_cpu_s']:,.0f} | {m['cpu']:.2f} | {m['wall']:.1f} | {fmt_mb(m['peak_kb'])} | "
            f"{fmt_mb(m['base_kb'])} |"
        )
    out += [
        "",
        f"**Ratio (this / peer), lines per CPU-second: {ratio:.2f}x** (goal: at least 1.0x).",
        "",
    ]
    if flat is not None:
        out += [
            f"Memory against the amount read (one run each on the log appended twice, {2 * args.lines:,} lines):",
            "",
            "| exporter | peak RSS, 1x | peak RSS, 2x | lines per CPU-second, 2x |",
            "|---|---:|---:|---:|",
        ]
        for who in ("ours", "peer"):
            out.append(
                f"| {who} | {fmt_mb(med[who]['peak_kb'])} | {fmt_mb(flat[who].peak_kb)} | {flat[who].per_cpu_s:,.0f} |"
            )
        out.append("")
    if small is not None:
        out += [
            f"This exporter with `max_lines_per_run: {args.small_batch}` (one run, {args.lines:,} lines): "
            f"{small.per_cpu_s:,.0f} lines per CPU-second, peak RSS {fmt_mb(small.peak_kb)} "
            f"(baseline {fmt_mb(small.base_kb)}).",
            "",
        ]
    out += [
        "Both read the same lines (counters after the last round; the warm-up line not counted):",
        "",
        "| counter | this exporter | peer |",
        "|---|---:|---:|",
    ]
    last = rounds[-1]
    for key in last["peer"].counters:
        if key in last["ours"].counters:
            out.append(f"| {key} | {last['ours'].counters[key]:,.0f} | {last['peer'].counters[key]:,.0f} |")
    unparsed = last["ours"].counters.get("unparsed postfix lines", 0)
    unsupported = last["peer"].counters.get("unsupported lines", 0)
    out.append(f"| lines not understood | {unparsed:,.0f} (postfix) | {unsupported:,.0f} (unsupported_log_entries) |")
    out += [
        "",
        "Generated line kinds:",
        "",
        "```json",
        json.dumps(kinds, indent=1, sort_keys=True),
        "```",
        "",
        "Raw runs:",
        "",
        "```json",
        json.dumps(
            {
                "rounds": [{who: {**asdict(r), "per_cpu_s": r.per_cpu_s} for who, r in rd.items()} for rd in rounds],
                "flat": {who: {**asdict(r), "per_cpu_s": r.per_cpu_s} for who, r in (flat or {}).items()},
                "small_batch": {**asdict(small), "per_cpu_s": small.per_cpu_s} if small else None,
            },
            indent=1,
        ),
        "```",
        "",
    ]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=None, help="lines of the log (default 1,000,000; quick 20,000)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 3; quick 1)")
    p.add_argument("--batch", type=int, default=500_000, help="max_lines_per_run of this exporter's source")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mce-logs-bench")
    p.add_argument("--run-timeout", type=float, default=900.0, help="seconds one run may take")
    p.add_argument("--budget", type=float, default=3600.0, help="seconds the whole benchmark may take")
    p.add_argument(
        "--flat", action=argparse.BooleanOptionalAction, default=None, help="the run at twice the log (not in quick)"
    )
    p.add_argument(
        "--small-batch",
        type=int,
        default=None,
        help="one more run of this exporter at this batch (default 20,000; 0 for none; quick 0)",
    )
    p.add_argument("--write", action=argparse.BooleanOptionalAction, default=True, help="write logs.md")
    p.add_argument("--quick", action="store_true", help="20,000 lines, 1 round, no extra runs: a check that it runs")
    p.add_argument("--results-dir", type=Path, default=RESULTS.parent, help="where logs.md goes")
    p.add_argument("--summary", default=None, help="append the headline figures to this file as JSON lines")
    args = p.parse_args()
    for name, full, quick in (("lines", 1_000_000, 20_000), ("rounds", 3, 1), ("flat", True, False)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.small_batch is None:
        args.small_batch = 0 if args.quick else 20_000
    if args.rounds < 1:
        p.error("--rounds: at least 1")
    if args.lines < 1000:
        p.error("--lines: at least 1000")
    started = time.monotonic()
    peer_version = "prometheus-postfix-exporter"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        dpkg = subprocess.run(["dpkg-query", "-W", "-f=${Version}", PEER], capture_output=True, text=True, timeout=10)
        if dpkg.returncode == 0:
            peer_version = f"Debian {PEER} {dpkg.stdout.strip()}"
    src, kinds = ensure_log(args.workdir, args.lines, args.seed)

    def left() -> float:
        remaining = float(args.budget) - (time.monotonic() - started)
        if remaining < 10:
            raise SystemExit(f"--budget of {args.budget:.0f}s used up")
        return min(float(args.run_timeout), remaining)

    def one(who: str, times: int, batch: int = args.batch) -> Result:
        with tempfile.TemporaryDirectory(prefix=f"mce-logs-bench-{who}-", dir=args.workdir) as d:
            if who == "ours":
                r = run_ours(src, times, args.lines, batch, Path(d), left())
            else:
                r = run_peer(src, times, args.lines, Path(d), left())
        print(
            f"  {who}: {r.lines:,} lines, {r.cpu:.2f} CPU-s ({r.per_cpu_s:,.0f}/CPU-s), wall {r.wall:.1f}s, "
            f"peak {fmt_mb(r.peak_kb)} (baseline {fmt_mb(r.base_kb)})",
            file=sys.stderr,
        )
        return r

    rounds: list[dict[str, Result]] = []
    for i in range(args.rounds):
        print(f"round {i + 1}/{args.rounds}", file=sys.stderr)
        order = ("ours", "peer") if i % 2 == 0 else ("peer", "ours")
        rounds.append({who: one(who, 1) for who in order})
    flat = None
    if args.flat:
        print("memory at twice the log", file=sys.stderr)
        flat = {who: one(who, 2) for who in ("ours", "peer")}
    small = None
    if args.small_batch:
        print(f"this exporter with max_lines_per_run: {args.small_batch}", file=sys.stderr)
        small = one("ours", 1, args.small_batch)
    text = report(args, kinds, rounds, flat, small, peer_version)
    print(text)
    if args.write:
        out = args.results_dir / RESULTS.name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}", file=sys.stderr)

    def median(who: str, key: str) -> float:
        return statistics.median(getattr(r[who], key) for r in rounds)

    append_summary(
        args.summary,
        [
            summary_line(
                "logs",
                f"Postfix log lines per CPU-second ({args.lines:,}-line log)",
                median("ours", "per_cpu_s"),
                peer=median("peer", "per_cpu_s"),
                peer_name=peer_version,
                unit="lines/CPU-s",
                better="higher",
                rounds=len(rounds),
                quick=args.quick,
            ),
            summary_line(
                "logs",
                f"peak RSS (max_lines_per_run {args.batch:,})",
                median("ours", "peak_kb") / 1024,
                peer=median("peer", "peak_kb") / 1024,
                peer_name=peer_version,
                unit="MB",
                better="lower",
                rounds=len(rounds),
                quick=args.quick,
            ),
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
