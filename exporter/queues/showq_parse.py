"""Incremental parser of Postfix's showq(8) byte stream (pure: no I/O).

The showq service of Postfix 3 speaks the ``attr_print0`` protocol: every
attribute is ``name NUL value NUL``, and an attribute list ends with a lone
``NUL`` (an empty name).  A listing is::

    protocol NUL mail_queue_list_protocol NUL NUL        (announcement; Postfix >= 3.1)
    queue_name NUL deferred NUL queue_id NUL 3F2A41C0B7 NUL time NUL 1700000000 NUL
    size NUL 329 NUL forced_expire NUL 0 NUL sender NUL a@example.com NUL
    recipient NUL b@example.net NUL reason NUL connect to ...: Connection refused NUL
    recipient NUL ... NUL reason NUL NUL                  (reason may be empty)
    NUL                                                   (end of this message)
    ... more messages ...
    NUL                                                   (end of the listing)

This is what ``showq.c`` (``showq_report``) writes and what ``postqueue``'s
``showq_json.c`` reads: per message the fixed attributes, then zero or more
``recipient``/``reason`` pairs, then a terminator; after the last message one
more terminator.  ``time`` is the arrival time in whole seconds and ``size`` the
message content size (the first field of the queue file's size record, or the
file size when that record is malformed).

:class:`ShowqParser` is fed arbitrary chunks and yields one :class:`ShowqMessage`
per completed message record.  It holds only the current record and the
unterminated tail of the last chunk (bounded by :data:`MAX_TOKEN`), so memory does
not grow with the queue.  It never raises on bad input: it records
:attr:`ShowqParser.error` and ignores the rest, so a corrupt stream is a failed
read with a reason, not an exception.  Results do not depend on how the stream is
split into chunks.
"""

from __future__ import annotations

__all__ = [
    "MAX_RECIPIENTS",
    "MAX_TOKEN",
    "ShowqMessage",
    "ShowqParser",
    "parse_all",
]

from collections.abc import Iterable
from dataclasses import dataclass, field

#: Longest attribute name or value accepted (a reason text is at most a few KB).
MAX_TOKEN = 1 << 20
#: Recipients kept per message (the rest are only counted): classification needs the first few.
MAX_RECIPIENTS = 8

_REQUIRED = (b"queue_name", b"queue_id", b"time", b"size")
_SPECIAL = frozenset((b"recipient", b"reason"))
_MAX_ATTRS = 32


@dataclass(slots=True)
class ShowqMessage:
    """One message record of the listing."""

    queue_name: str
    queue_id: str
    arrival_time: int
    size: int
    forced_expire: bool = False
    sender: str = ""
    #: ``(address, reason)`` of the first :data:`MAX_RECIPIENTS` recipients, in stream order.
    recipients: list[tuple[str, str]] = field(default_factory=list)
    #: All recipients, including those not kept in :attr:`recipients`.
    recipient_count: int = 0


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _number(raw: bytes) -> int | None:
    # attr_print0 writes numbers with "%lu"/"%u": plain ASCII digits only.
    if not raw or len(raw) > 20 or not raw.isdigit():
        return None
    return int(raw)


class ShowqParser:
    """Feed chunks with :meth:`feed`; call :meth:`close` at end of stream.

    After the end-of-listing terminator :attr:`done` is true.  On malformed input
    :attr:`error` says why and every later call is a no-op returning nothing.
    """

    __slots__ = (
        "_attrs",
        "_first",
        "_name",
        "_rcpt",
        "_rcpt_count",
        "_recipients",
        "_tail",
        "done",
        "error",
        "messages",
    )

    def __init__(self) -> None:
        self._tail = b""
        self._name: bytes | None = None  # name whose value is still to come
        self._attrs: dict[bytes, bytes] = {}
        self._recipients: list[tuple[str, str]] = []
        self._rcpt: str | None = None  # recipient waiting for its reason
        self._rcpt_count = 0
        self._first = True  # the next record is the first one (maybe the announcement)
        self.done = False
        self.error: str | None = None
        #: Message records completed so far.
        self.messages = 0

    # -- public ----------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> list[ShowqMessage]:
        """Consume ``chunk``; return the message records it completed."""
        out: list[ShowqMessage] = []
        if self.error is not None or not chunk:
            return out
        if self.done:
            self._fail("data after the end of the queue listing")
            return out
        data = self._tail + chunk if self._tail else chunk
        tokens = data.split(b"\0")
        tail = tokens.pop()  # unterminated rest (b"" when data ends with NUL)
        if len(data) > MAX_TOKEN and max([len(tail), *map(len, tokens)]) > MAX_TOKEN:
            self._fail(f"attribute longer than {MAX_TOKEN} bytes")
            return out
        self._tail = tail
        last = len(tokens) - 1
        # The hot loop: plain attributes are stored inline; recipients, reasons, errors and the
        # end of a record go through methods.
        name = self._name
        attrs = self._attrs
        for i, tok in enumerate(tokens):
            if name is None:
                if tok:
                    name = tok
                    continue
                msg = self._end_record()
                if msg is not None:
                    out.append(msg)
                elif self._failed():
                    return out
                elif self._finished() and (i < last or tail):
                    self._fail("data after the end of the queue listing")
                    return out
                attrs = self._attrs
                continue
            if self._rcpt_count or name in _SPECIAL or name in attrs or len(attrs) >= _MAX_ATTRS:
                self._attribute(name, tok)
                if self._failed():
                    return out
                attrs = self._attrs
            else:
                attrs[name] = tok
            name = None
        self._name = name
        return out

    def close(self) -> None:
        """End of stream: anything short of the end-of-listing terminator is an error."""
        if self.error is None and not self.done:
            if self._tail or self._name is not None or self._attrs or self._rcpt_count:
                self._fail("stream ended in the middle of a record")
            else:
                self._fail("stream ended before the end of the queue listing")

    # -- internals ---------------------------------------------------------------------------

    def _finished(self) -> bool:
        return self.done

    def _failed(self) -> bool:
        return self.error is not None

    def _fail(self, why: str) -> None:
        if self.error is None:
            self.error = why
        self._tail = b""
        self._attrs = {}
        self._recipients = []

    def _attribute(self, name: bytes, value: bytes) -> None:
        if name == b"recipient":
            if b"sender" not in self._attrs:
                self._fail("recipient before sender")
                return
            if self._rcpt is not None:  # a recipient without a reason (tolerated)
                self._add_rcpt("")
            self._rcpt = _text(value)
            self._rcpt_count += 1
        elif name == b"reason":
            if self._rcpt is None:
                self._fail("reason without a recipient")
                return
            self._add_rcpt(_text(value))
        elif self._rcpt_count:
            self._fail(f"attribute {_text(name[:40])!r} after the recipients")
        elif name in self._attrs:
            self._fail(f"duplicate attribute {_text(name[:40])!r}")
        elif len(self._attrs) >= _MAX_ATTRS:
            self._fail("too many attributes in one record")
        else:
            self._attrs[name] = value

    def _add_rcpt(self, reason: str) -> None:
        if self._rcpt is not None and len(self._recipients) < MAX_RECIPIENTS:
            self._recipients.append((self._rcpt, reason))
        self._rcpt = None

    def _end_record(self) -> ShowqMessage | None:
        attrs = self._attrs
        first = self._first
        self._first = False
        if not attrs and not self._rcpt_count:
            self.done = True  # an empty record ends the listing
            return None
        if self._rcpt is not None:
            self._add_rcpt("")
        recipients, count = self._recipients, self._rcpt_count
        self._attrs = {}
        self._recipients = []
        self._rcpt_count = 0
        if first and b"protocol" in attrs:
            if count:
                self._fail("recipients in the protocol announcement")
            return None  # the announcement: "protocol" = "mail_queue_list_protocol"
        for key in _REQUIRED:
            if key not in attrs:
                self._fail(f"message record without {key.decode()!r}")
                return None
        arrival = _number(attrs[b"time"])
        size = _number(attrs[b"size"])
        if arrival is None:
            self._fail(f"bad time {_text(attrs[b'time'][:40])!r}")
            return None
        if size is None:
            self._fail(f"bad size {_text(attrs[b'size'][:40])!r}")
            return None
        self.messages += 1
        return ShowqMessage(
            queue_name=_text(attrs[b"queue_name"]),
            queue_id=_text(attrs[b"queue_id"]),
            arrival_time=arrival,
            size=size,
            forced_expire=attrs.get(b"forced_expire", b"0") not in (b"0", b""),
            sender=_text(attrs.get(b"sender", b"")),
            recipients=recipients,
            recipient_count=count,
        )


def parse_all(chunks: Iterable[bytes]) -> tuple[list[ShowqMessage], str | None]:
    """Parse a whole stream: the messages and the error (``None`` when well formed)."""
    parser = ShowqParser()
    out: list[ShowqMessage] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    parser.close()
    return out, parser.error
