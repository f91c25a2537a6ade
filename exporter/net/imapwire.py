"""The IMAP wire format, read defensively: response lines, literals, tagged completions.

Shared by the IMAP prober and the IMAP canary of the continuity sources.  Everything a
server may send becomes a :class:`~exporter.net.tls.ProbeFailure` with reason
``protocol`` (or the I/O reasons of :func:`~exporter.net.tls.read_line`), never another
exception; sizes and line counts are bounded.
"""

from __future__ import annotations

__all__ = [
    "MAX_LITERAL",
    "MAX_RESPONSE_LINES",
    "ImapLine",
    "ImapResponse",
    "capabilities",
    "parse_response_line",
    "quoted",
    "read_logical_line",
    "read_response",
    "sasl_authenticate",
]

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from exporter.net.tls import ProbeFailure, printable, read_exactly, read_line

#: Most lines accepted in one response (SELECT answers with about ten).
MAX_RESPONSE_LINES = 1000
#: Longest AUTHENTICATE line with a SASL-IR initial response (RFC 4959); a longer response is
#: sent after the continuation (Dovecot drops command lines above about 8 KB).
MAX_SASL_IR_LINE = 4096
#: Largest literal accepted inside a response.
MAX_LITERAL = 64 * 1024
#: Untagged lines kept per response (the rest is read and dropped).
_KEEP_UNTAGGED = 64

_TAG_RE = re.compile(rb"^[A-Za-z0-9.]{1,32}$")
_LITERAL_RE = re.compile(rb"\{(\d{1,10})\+?\}\r?\n$")


# --- responses (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImapLine:
    kind: Literal["untagged", "continuation", "tagged"]
    tag: str  # "*", "+" or the command tag
    status: str  # OK, NO, BAD, BYE, PREAUTH, or "" for untagged data such as "CAPABILITY ..."
    text: str


@dataclass(frozen=True, slots=True)
class ImapResponse:
    status: str  # OK, NO or BAD
    text: str
    untagged: tuple[str, ...]

    def summary(self) -> str:
        return printable(f"{self.status} {self.text}".rstrip(), 160)


_STATUSES = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})


def parse_response_line(line: bytes) -> ImapLine | None:
    """Classify one response line (line ending optional); ``None`` when it is not IMAP.  Never raises."""
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    if line == b"+" or line.startswith(b"+ "):
        return ImapLine("continuation", "+", "", _text(line[2:]))
    head, sep, rest = line.partition(b" ")
    if not sep:
        return None
    word, _, tail = rest.partition(b" ")
    status = word.decode("ascii", "replace").upper()
    if head == b"*":
        if status in _STATUSES:
            return ImapLine("untagged", "*", status, _text(tail))
        if not word:
            return None
        return ImapLine("untagged", "*", "", _text(rest))
    if _TAG_RE.match(head) and status in ("OK", "NO", "BAD"):
        return ImapLine("tagged", head.decode("ascii"), status, _text(tail))
    return None


def _text(data: bytes) -> str:
    return data[:2048].decode("utf-8", "replace")


def capabilities(text: str) -> frozenset[str] | None:
    """Capabilities from ``CAPABILITY a b c`` or a ``[CAPABILITY a b c] ...`` response code."""
    if text.startswith("[CAPABILITY "):
        text = text[1:].partition("]")[0]
    elif not text.upper().startswith("CAPABILITY "):
        return None
    return frozenset(token.upper() for token in text.split()[1:])


async def read_logical_line(
    reader: asyncio.StreamReader, step: str, trace: Callable[[str], None] | None, budget: list[int]
) -> bytes:
    """One response line with any literals inlined (as ``{n}`` placeholders); bounded."""
    raw = await read_line(reader, step)
    budget[0] -= 1
    if trace is not None:
        trace("S: " + printable(raw))
    while (m := _LITERAL_RE.search(raw)) is not None:
        size = int(m.group(1))
        if size > MAX_LITERAL:
            raise ProbeFailure("protocol", f"{step}: literal of {size} bytes is larger than {MAX_LITERAL}")
        await read_exactly(reader, size, step)
        if budget[0] <= 0:
            raise ProbeFailure("protocol", f"{step}: response longer than {MAX_RESPONSE_LINES} lines")
        more = await read_line(reader, step)
        budget[0] -= 1
        if trace is not None:
            trace("S: " + printable(more))
        raw = raw[: m.start()] + b"{literal}" + more
    return raw


async def read_response(
    reader: asyncio.StreamReader,
    tag: str,
    step: str,
    trace: Callable[[str], None] | None = None,
    *,
    bye_ok: bool = False,
) -> ImapResponse:
    """Read untagged lines up to the tagged completion of ``tag``.

    Raises :class:`~exporter.net.tls.ProbeFailure` and nothing else for
    anything the server may send.
    """
    untagged: list[str] = []
    budget = [MAX_RESPONSE_LINES]
    while budget[0] > 0:
        raw = await read_logical_line(reader, step, trace, budget)
        parsed = parse_response_line(raw)
        if parsed is None:
            raise ProbeFailure("protocol", f"{step}: not an IMAP response: {printable(raw, 60)!r}")
        if parsed.kind == "untagged":
            if parsed.status == "BYE" and not bye_ok:
                raise ProbeFailure("protocol", f"{step}: server said BYE: {printable(parsed.text, 120)}")
            if len(untagged) < _KEEP_UNTAGGED:
                untagged.append(f"{parsed.status} {parsed.text}" if parsed.status else parsed.text)
        elif parsed.kind == "continuation":
            raise ProbeFailure("protocol", f"{step}: unexpected continuation request")
        elif parsed.tag != tag:
            raise ProbeFailure("protocol", f"{step}: response for unknown tag {parsed.tag!r}")
        else:
            return ImapResponse(parsed.status, parsed.text, tuple(untagged))
    raise ProbeFailure("protocol", f"{step}: response longer than {MAX_RESPONSE_LINES} lines")


def quoted(value: str) -> str | None:
    """``value`` as an IMAP quoted string, or ``None`` when it needs a literal."""
    if not value.isascii() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return None
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def sasl_authenticate(
    reader: asyncio.StreamReader,
    send: Callable[[bytes], Awaitable[None]],
    tag: str,
    mechanism: str,
    response: str,
    abort: str,
    *,
    sasl_ir: bool,
    step: str,
    trace: Callable[[str], None] | None = None,
) -> tuple[str, str, str]:
    """``AUTHENTICATE mechanism`` with one initial ``response`` (base64); returns (status, text, challenge).

    The response goes on the command line when the server has SASL-IR (RFC 4959), else
    after its first continuation.  A second continuation is the server's error challenge
    (RFC 7628 §3.2.2): it is answered with ``abort`` and returned as ``challenge`` (its
    base64 text), and the tagged NO follows.  ``status`` is that of the tagged completion.
    Nothing secret is traced.  Raises ProbeFailure for anything else.
    """
    command = f"{tag} AUTHENTICATE {mechanism} {response}"
    sent = sasl_ir and len(command) <= MAX_SASL_IR_LINE
    if not sent:
        command = f"{tag} AUTHENTICATE {mechanism}"
    if trace is not None:
        trace(f"C: {tag} AUTHENTICATE {mechanism}" + (" <redacted>" if sent else ""))
    await send(command.encode("ascii") + b"\r\n")
    challenge = ""
    budget = [MAX_RESPONSE_LINES]
    while budget[0] > 0:
        raw = await read_logical_line(reader, step, trace, budget)
        parsed = parse_response_line(raw)
        if parsed is None:
            raise ProbeFailure("protocol", f"{step}: not an IMAP response: {printable(raw, 60)!r}")
        if parsed.kind == "continuation":
            if not sent:
                if trace is not None:
                    trace("C: <redacted>")
                await send(response.encode("ascii") + b"\r\n")
                sent = True
            elif not challenge:
                challenge = parsed.text or "-"
                if trace is not None:
                    trace("C: <abort>")
                await send(abort.encode("ascii") + b"\r\n")
            else:
                raise ProbeFailure("protocol", f"{step}: a second challenge after the error")
        elif parsed.kind == "tagged":
            if parsed.tag != tag:
                raise ProbeFailure("protocol", f"{step}: response for unknown tag {parsed.tag!r}")
            return parsed.status, parsed.text, challenge
        elif parsed.status == "BYE":
            raise ProbeFailure("protocol", f"{step}: server said BYE: {printable(parsed.text, 120)}")
    raise ProbeFailure("protocol", f"{step}: response longer than {MAX_RESPONSE_LINES} lines")
