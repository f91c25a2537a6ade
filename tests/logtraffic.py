"""Real mail traffic against the loopback stack, and the ground truth it leaves in the logs.

:class:`Traffic` sends, through the stack's real Postfix and Dovecot, exactly

- ``sent`` messages to a local mailbox (``ops+<tag>@example.test``), delivered by LMTP to Dovecot;
- ``deferred`` messages to a non-local domain, relayed to the dead loopback relay (they stay
  deferred and are deleted again by :meth:`Traffic.cleanup`);
- ``rejected`` recipients unknown in the virtual mailbox table (550 5.1.1 at RCPT);
- ``sasl`` wrong-password ``AUTH PLAIN`` attempts on submission (STARTTLS, one attempt per session,
  so one ``SASL PLAIN authentication failed`` line each: ``smtplib.login`` would try PLAIN and then
  LOGIN and log two);
- ``imap`` wrong-password ``LOGIN`` attempts on IMAP (one per connection),

and waits, bounded in time, until Postfix and Dovecot have logged every outcome (the queue ids
come from the ``250 ... queued as`` replies, the rejected recipients and Message-IDs carry the
tag).  :class:`LogFollower` records the bytes the logs grow by meanwhile, across a rename or a
copytruncate rotation done by :func:`rotate_rename` and :func:`rotate_copytruncate`.

The ground truth (:class:`Truth`) is read from those recorded lines with a few simple regular
expressions of this module, independent of the parsers under test: how many lines of each
outcome, and the sum of the ``delay=`` fields of the delivered messages.  Counts are kept both
for this run's own messages (by queue id, recipient, Message-ID) and for the whole window, so a
test can tell its traffic from anything else that logged meanwhile.

Everything talks to 127.0.0.1 only; Postfix never delivers off the box (non-local mail goes to a
dead loopback relay).  Every wait is bounded.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import os
import re
import shutil
import smtplib
import ssl
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from stack import Stack, tool, tool_env

#: The local mailbox that receives the delivered messages (with a +tag extension), and whose
#: password is got wrong on purpose.
USER = "ops@example.test"
WRONG_PASSWORD = "not-the-password"

# --- ground-truth patterns (deliberately simple, and not the parsers under test) ------------------

_DELIVERY = re.compile(
    r" postfix[^ /]*(?:/[^ /\[]+)*/(?P<daemon>smtp|lmtp|local|virtual|pipe|error|retry|discard)\[\d+\]: "
    r"(?P<qid>[0-9A-F]{6,}|[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{10,}): to=<(?P<rcpt>[^>]*)>,"
    r".*? delay=(?P<delay>\d+(?:\.\d+)?),.* status=(?P<status>sent|deferred|bounced|expired) "
)
_NOQUEUE = re.compile(r"/smtpd\[\d+\]: NOQUEUE: reject: RCPT from \S+: (?P<code>\d{3}) .* to=<(?P<rcpt>[^>]*)>")
_SASL_FAIL = re.compile(r"/smtpd\[\d+\]: warning: \S+: SASL \S+ authentication failed: .*sasl_username=(?P<user>\S+)")
_CONNECT = re.compile(r"/smtpd\[\d+\]: connect from ")
_DISCONNECT = re.compile(r"/smtpd\[\d+\]: disconnect from ")
_REMOVED = re.compile(r"/qmgr\[\d+\]: (?P<qid>[0-9A-Za-z]+): removed$")
_CLEANUP_MSGID = re.compile(r"/cleanup\[\d+\]: [0-9A-Za-z]+: message-id=")
_QMGR_FROM = re.compile(r"/qmgr\[\d+\]: (?P<qid>[0-9A-Za-z]+): from=<")
_TLS_IN = re.compile(r"/smtpd\[\d+\]: \S+ TLS connection established from \S+: (?P<proto>\S+) with")
_IMAP_FAIL = re.compile(r" imap-login: Info: .*\(auth failed, (?P<n>\d+) attempts in .*user=<(?P<user>[^>]*)>")
_LMTP_SAVED = re.compile(
    r" lmtp\((?P<user>[^)]*)\).*: (?:sieve: )?msgid=(?P<msgid><[^>]*>): (?:saved mail to|stored mail into)"
)
_QUEUED = re.compile(r"queued as (?P<qid>[0-9A-Za-z]+)")


def _now() -> float:
    return time.monotonic()


# --- following a log file ------------------------------------------------------------------------------


class LogFollower:
    """The lines a log file grows by from :meth:`start` on, across rotations.

    Keeps every file it has seen open (by descriptor), so lines a daemon still writes to a
    renamed file are not missed; a file that shrank was truncated and is read again from 0
    (see :func:`rotate_copytruncate` for the lines between the last poll and the truncation).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lines: list[str] = []
        self.nbytes = 0
        self._files: list[tuple[int, int, int, bytearray]] = []  # (fd, inode, offset, partial line)

    def start(self) -> LogFollower:
        """Begin at the current end of the file (or at its start when it appears later)."""
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(self.path, os.O_RDONLY)
            st = os.fstat(fd)
            self._files.append((fd, st.st_ino, st.st_size, bytearray()))
        return self

    def close(self) -> None:
        for fd, *_ in self._files:
            os.close(fd)
        self._files.clear()

    def __enter__(self) -> LogFollower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _current_inode(self) -> int | None:
        try:
            return os.stat(self.path).st_ino
        except FileNotFoundError:
            return None

    def poll(self) -> list[str]:
        """Read what was appended since the last poll; returns the new complete lines."""
        inode = self._current_inode()
        if inode is not None and all(ino != inode for _, ino, _, _ in self._files):
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(self.path, os.O_RDONLY)
                self._files.append((fd, os.fstat(fd).st_ino, 0, bytearray()))
        new: list[str] = []
        for i, (fd, ino, offset, partial) in enumerate(self._files):
            size = os.fstat(fd).st_size
            if size < offset:  # truncated in place: what is there now was written after the truncation
                offset = 0
                partial.clear()
            while offset < size:
                chunk = os.pread(fd, min(size - offset, 1 << 20), offset)
                if not chunk:
                    break
                offset += len(chunk)
                self.nbytes += len(chunk)
                partial.extend(chunk)
            if b"\n" in partial:
                *complete, rest = bytes(partial).split(b"\n")
                partial[:] = rest
                new.extend(line.decode("utf-8", "replace") for line in complete)
            self._files[i] = (fd, ino, offset, partial)
        self.lines.extend(new)
        return new

    def read_rest_of(self, copy: Path) -> None:
        """For copytruncate: take from ``copy`` what the current file had past our offset."""
        fd, ino, offset, partial = self._files[-1]
        with open(copy, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
        self.nbytes += len(data)
        partial.extend(data)
        self._files[-1] = (fd, ino, 0, partial)  # the file itself now holds only what came after
        self.poll()

    def settle(self, quiet: float = 1.0, timeout: float = 20.0) -> None:
        """Poll until the file has not grown for ``quiet`` seconds (at most ``timeout``)."""
        deadline = _now() + timeout
        last_change = _now()
        while _now() < deadline:
            if self.poll():
                last_change = _now()
            elif _now() - last_change >= quiet:
                return
            time.sleep(0.1)


# --- the traffic ---------------------------------------------------------------------------------------


@dataclass
class Sent:
    """What one :meth:`Traffic.send` did: the identifiers its outcomes are logged under."""

    delivered: list[str] = field(default_factory=list)  # queue ids
    deferred: list[str] = field(default_factory=list)  # queue ids
    rejected: list[str] = field(default_factory=list)  # recipients
    msgids: list[str] = field(default_factory=list)  # Message-IDs of the delivered messages
    sasl: int = 0
    imap: int = 0
    smtp_sessions: int = 0  # port-25 sessions plus submission sessions
    tls_sessions: int = 0  # submission sessions (STARTTLS)

    def __iadd__(self, other: Sent) -> Sent:
        self.delivered += other.delivered
        self.deferred += other.deferred
        self.rejected += other.rejected
        self.msgids += other.msgids
        self.sasl += other.sasl
        self.imap += other.imap
        self.smtp_sessions += other.smtp_sessions
        self.tls_sessions += other.tls_sessions
        return self


@dataclass
class Truth:
    """Ground truth read from the recorded log lines with this module's own patterns."""

    sent: int  # this run's delivered messages (status=sent lines of its queue ids)
    deferred: int
    rejected: int  # NOQUEUE rejects of its recipients
    sasl_failures: int  # SASL failures of USER (the whole window)
    imap_failures: int  # imap-login auth failures of USER (the whole window)
    lmtp_saved: int  # Dovecot LMTP saves of its Message-IDs
    delays: list[float]  # delay= of its delivered messages
    window: Counter[str]  # counts over every recorded line, whoever wrote it
    postfix_lines: list[str]
    dovecot_lines: list[str]

    @property
    def delay_sum(self) -> float:
        return sum(self.delays)


def truth(sent: Sent, postfix_lines: list[str], dovecot_lines: list[str]) -> Truth:
    delivered, deferred = set(sent.delivered), set(sent.deferred)
    rejected, msgids = set(sent.rejected), set(sent.msgids)
    n_sent = n_deferred = n_rejected = n_sasl = n_imap = n_saved = 0
    delays: list[float] = []
    window: Counter[str] = Counter()
    for line in postfix_lines:
        if m := _DELIVERY.search(line):
            status, qid = m.group("status"), m.group("qid")
            window[f"status_{status}"] += 1
            if status == "sent":
                window["delay_count"] += 1
            if status == "sent" and qid in delivered:
                n_sent += 1
                delays.append(float(m.group("delay")))
            elif status == "deferred" and qid in deferred:
                n_deferred += 1
        elif m := _NOQUEUE.search(line):
            window[f"noqueue_{m.group('code')}"] += 1
            n_rejected += m.group("rcpt") in rejected
        elif m := _SASL_FAIL.search(line):
            window["sasl_failures"] += 1
            n_sasl += m.group("user").rstrip(",") == USER
        elif _CONNECT.search(line):
            window["connect"] += 1
        elif _DISCONNECT.search(line):
            window["disconnect"] += 1
        elif _REMOVED.search(line):
            window["qmgr_removed"] += 1
        elif _QMGR_FROM.search(line):
            window["qmgr_from"] += 1
        elif _CLEANUP_MSGID.search(line):
            window["cleanup_message_id"] += 1
        elif m := _TLS_IN.search(line):
            window[f"tls_in_{m.group('proto')}"] += 1
    for line in dovecot_lines:
        if m := _IMAP_FAIL.search(line):
            window["imap_failures"] += 1
            n_imap += m.group("user") == USER
        elif m := _LMTP_SAVED.search(line):
            window["lmtp_saved"] += 1
            n_saved += m.group("msgid") in msgids
    return Truth(n_sent, n_deferred, n_rejected, n_sasl, n_imap, n_saved, delays, window, postfix_lines, dovecot_lines)


class Traffic:
    """Sends tagged traffic through the stack and waits until it is logged."""

    def __init__(self, stack: Stack, tag: str | None = None) -> None:
        self.stack = stack
        self.tag = tag or uuid.uuid4().hex[:10]
        self.sender = f"mce-logs-{self.tag}@example.test"
        self.queued: list[str] = []  # every queue id this object created (for cleanup)
        self.msgids: list[str] = []
        self._i = 0
        self._ctx = ssl.create_default_context(cafile=stack.ca_file)

    # -- sending ------------------------------------------------------------------------------------------

    def _message(self, rcpt: str, msgid: str) -> str:
        return (
            f"From: {self.sender}\r\nTo: {rcpt}\r\nSubject: mce log traffic {self.tag}\r\n"
            f"Message-ID: {msgid}\r\nX-Mce-Logtraffic: {self.tag}\r\n\r\nlog traffic {self.tag}\r\n"
        )

    def _queue_one(self, smtp: smtplib.SMTP, rcpt: str, msgid: str) -> str:
        code, reply = smtp.mail(self.sender)
        assert code == 250, (code, reply)
        code, reply = smtp.rcpt(rcpt)
        assert code == 250, (rcpt, code, reply)
        code, reply = smtp.data(self._message(rcpt, msgid).encode())
        m = _QUEUED.search(reply.decode("ascii", "replace"))
        assert code == 250 and m is not None, (code, reply)
        self.queued.append(m.group("qid"))
        return m.group("qid")

    def send(self, sent: int = 0, deferred: int = 0, rejected: int = 0, sasl: int = 0, imap: int = 0) -> Sent:
        """Send the traffic (interleaved: one of each outcome in turn) and return its identifiers."""
        out = Sent()
        host = self.stack.host
        if sent or deferred or rejected:
            out.smtp_sessions += 1
            with smtplib.SMTP(host, self.stack.port("smtp"), timeout=30) as smtp:
                smtp.ehlo("logtraffic.example.test")
                for j in range(max(sent, deferred, rejected)):
                    i = self._i = self._i + 1
                    if j < sent:
                        msgid = f"<lt-{self.tag}-{i}@logtraffic.example.test>"
                        out.delivered.append(self._queue_one(smtp, f"ops+lt{self.tag}@example.test", msgid))
                        out.msgids.append(msgid)
                        self.msgids.append(msgid)
                    if j < deferred:
                        rcpt = f"u{i}@lt-{self.tag}.deferred.test"
                        out.deferred.append(
                            self._queue_one(smtp, rcpt, f"<ltd-{self.tag}-{i}@logtraffic.example.test>")
                        )
                    if j < rejected:
                        rcpt = f"nouser-{self.tag}-{i}@example.test"
                        code, reply = smtp.mail(self.sender)
                        assert code == 250, (code, reply)
                        code, reply = smtp.rcpt(rcpt)
                        assert code == 550 and b"5.1.1" in reply, (rcpt, code, reply)
                        smtp.rset()
                        out.rejected.append(rcpt)
        for _ in range(sasl):
            out.smtp_sessions += 1
            out.tls_sessions += 1
            with smtplib.SMTP(host, self.stack.port("submission"), timeout=30) as smtp:
                smtp.ehlo("logtraffic.example.test")
                smtp.starttls(context=self._ctx)
                smtp.ehlo("logtraffic.example.test")
                token = base64.b64encode(f"\0{USER}\0{WRONG_PASSWORD}".encode()).decode()
                code, reply = smtp.docmd("AUTH", f"PLAIN {token}")
                assert code == 535, (code, reply)
            out.sasl += 1
        for _ in range(imap):
            conn = imaplib.IMAP4(host, self.stack.port("imap"), timeout=30)
            try:
                try:
                    conn.login(USER, WRONG_PASSWORD)
                except imaplib.IMAP4.error:
                    pass
                else:
                    raise AssertionError("a wrong password was accepted by IMAP")
            finally:
                with contextlib.suppress(OSError, imaplib.IMAP4.error):
                    conn.logout()
            out.imap += 1
        return out

    # -- waiting for the logs -----------------------------------------------------------------------------

    def wait_logged(
        self, sent: Sent, postfix: LogFollower, dovecot: LogFollower, timeout: float = 60.0, quiet: float = 1.0
    ) -> Truth:
        """Poll both logs until every outcome of ``sent`` is there, then until they are quiet.

        Raises AssertionError (with what is missing) after ``timeout`` seconds.
        """
        deadline = _now() + timeout
        while True:
            postfix.poll()
            dovecot.poll()
            t = truth(sent, postfix.lines, dovecot.lines)
            removed = sum(
                1 for line in postfix.lines if (m := _REMOVED.search(line)) and m.group("qid") in sent.delivered
            )
            done = (
                t.sent >= len(sent.delivered)
                and t.deferred >= len(sent.deferred)
                and t.rejected >= len(sent.rejected)
                and t.sasl_failures >= sent.sasl
                and t.imap_failures >= sent.imap
                and t.lmtp_saved >= len(sent.msgids)
                and removed >= len(sent.delivered)
                and t.window["disconnect"] >= t.window["connect"]
            )
            if done:
                break
            if _now() > deadline:
                raise AssertionError(
                    f"not everything was logged within {timeout}s: sent {t.sent}/{len(sent.delivered)}, "
                    f"deferred {t.deferred}/{len(sent.deferred)}, rejected {t.rejected}/{len(sent.rejected)}, "
                    f"sasl {t.sasl_failures}/{sent.sasl}, imap {t.imap_failures}/{sent.imap}, "
                    f"lmtp {t.lmtp_saved}/{len(sent.msgids)}, removed {removed}/{len(sent.delivered)}, "
                    f"connect/disconnect {t.window['connect']}/{t.window['disconnect']}"
                )
            time.sleep(0.2)
        # let stragglers (lmtp disconnects, qmgr, anvil) land, so the window is complete
        settle_both(postfix, dovecot, quiet=quiet, timeout=max(5.0, deadline - _now()))
        return truth(sent, postfix.lines, dovecot.lines)

    # -- cleaning up --------------------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Delete what this object queued (deferred mail) and the delivered copies in the mailbox."""
        if self.queued:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(
                    [tool("postsuper"), "-c", str(self.stack.postfix_config_dir), "-d", "-"],
                    input="\n".join(self.queued) + "\n",
                    capture_output=True,
                    text=True,
                    env=tool_env(),
                    check=False,
                    timeout=60,
                )
        if self.msgids:
            with contextlib.suppress(subprocess.SubprocessError, OSError, FileNotFoundError):
                subprocess.run(
                    [tool("doveadm"), "-c", str(self.stack.dovecot_config), "expunge", "-u", USER,
                     "mailbox", "INBOX", "header", "X-Mce-Logtraffic", self.tag],
                    capture_output=True,
                    text=True,
                    env=tool_env(),
                    check=False,
                    timeout=60,
                )  # fmt: skip


def settle_both(a: LogFollower, b: LogFollower, quiet: float = 1.0, timeout: float = 20.0) -> None:
    """Poll both followers until neither file has grown for ``quiet`` seconds (bounded)."""
    deadline = _now() + timeout
    last_change = _now()
    while _now() < deadline:
        if a.poll() or b.poll():
            last_change = _now()
        elif _now() - last_change >= quiet:
            return
        time.sleep(0.1)


# --- rotations -----------------------------------------------------------------------------------------


def _writers_of(path: Path, inode: int) -> list[int]:
    """Pids of processes that have the file with ``inode`` open (by /proc/*/fd)."""
    pids = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    st = fd.stat()
                    if st.st_ino == inode and st.st_dev == os.stat(path.parent).st_dev:
                        pids.append(int(fd_dir.parent.name))
                        break
        except OSError:
            continue
    return pids


def postfix_reload(stack: Stack) -> None:
    subprocess.run(
        [tool("postfix"), "-c", str(stack.postfix_config_dir), "reload"],
        capture_output=True,
        env=tool_env(),
        check=True,
        timeout=60,
    )


def rotate_rename(stack: Stack, follower: LogFollower | None = None, timeout: float = 20.0) -> Path:
    """``mv maillog maillog.1`` and ``postfix reload``, as ``postfix logrotate`` does (without compressing).

    Like logrotate's ``create``, a new empty maillog with the old one's owner and mode is put in
    place before the reload.  Returns once no process has the old file open any more (postlogd
    has let go of it), so that the renamed file is final.
    """
    log = stack.postfix_log
    rotated = log.with_name(log.name + ".1")
    st = os.stat(log)
    inode = st.st_ino
    os.replace(log, rotated)
    # logrotate's "create": the new, empty file with the old one's owner and mode (postlogd would
    # create it 0600 with the next line), before Postfix is told to reopen its log
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchown(fd, st.st_uid, st.st_gid)
        os.fchmod(fd, st.st_mode & 0o7777)
    finally:
        os.close(fd)
    postfix_reload(stack)
    deadline = _now() + timeout
    me = os.getpid()
    while [p for p in _writers_of(rotated, inode) if p != me]:
        if _now() > deadline:
            raise AssertionError(f"{rotated} is still held open {timeout}s after postfix reload")
        time.sleep(0.1)
    if follower is not None:
        follower.poll()
    return rotated


def rotate_copytruncate(stack: Stack, follower: LogFollower | None = None) -> Path:
    """``cp maillog maillog.1`` then truncate maillog in place (logrotate's copytruncate).

    postlogd opens the file with O_APPEND, so it goes on writing at the new end.  Lines
    logged between the copy and the truncation would be lost to every reader (the known race
    of copytruncate); call this while the log is quiet.
    """
    log = stack.postfix_log
    rotated = log.with_name(log.name + ".1")
    if follower is not None:
        follower.poll()
    shutil.copyfile(log, rotated)
    os.truncate(log, 0)
    if follower is not None:
        follower.read_rest_of(rotated)
    return rotated
