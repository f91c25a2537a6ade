"""Pure parsers of the queue readers, on bytes recorded from a real Postfix 3.7, plus fuzzing.

The recordings below were captured from a private Postfix 3.7.11 instance on this
machine: the raw bytes of its ``public/showq`` socket, ``postqueue -j`` taken at the
same moment, three queue files (a deferred one written by cleanup, one put on hold
by header_checks, and a maildrop file written by postdrop, which has no size
record) and the defer log of the deferred message.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.queues import (
    AGE_BUCKETS,
    DEFERRED_REASONS,
    QueueStats,
    classify_reason,
    first_reason,
    recipient_domain,
    top_domains,
)
from exporter.queues.exim import parse_exim_header
from exporter.queues.postqueue import stats_from_json_lines
from exporter.queues.showq_parse import MAX_RECIPIENTS, ShowqMessage, ShowqParser, parse_all
from exporter.queues.spool import parse_defer_log, parse_queue_file_header

# fmt: off
SHOWQ_STREAM = (
    b'protocol\x00mail_queue_list_protocol\x00\x00queue_name\x00deferred\x00queue'
    b'_id\x0083E7220C19D\x00time\x001795349278\x00size\x00252\x00forced_expire\x000\x00sen'
    b'der\x00s3@qdev.test\x00recipient\x00r3@example.com\x00reason\x00connect to '
    b'127.0.0.1[127.0.0.1]:2998: Connection refused\x00recipient\x00r3b@'
    b'example.org\x00reason\x00connect to 127.0.0.1[127.0.0.1]:2998: Con'
    b'nection refused\x00\x00queue_name\x00deferred\x00queue_id\x007F3E820C479\x00ti'
    b'me\x001795349622\x00size\x00274\x00forced_expire\x000\x00sender\x00md@qdev.test\x00r'
    b'ecipient\x00md1@example.net\x00reason\x00connect to 127.0.0.1[127.0.0'
    b'.1]:2998: Connection refused\x00\x00queue_name\x00deferred\x00queue_id\x007'
    b'4EA120C194\x00time\x001795349278\x00size\x00252\x00forced_expire\x000\x00sender\x00s'
    b'2@qdev.test\x00recipient\x00r2@example.com\x00reason\x00connect to 127.0'
    b'.0.1[127.0.0.1]:2998: Connection refused\x00recipient\x00r2b@examp'
    b'le.org\x00reason\x00connect to 127.0.0.1[127.0.0.1]:2998: Connecti'
    b'on refused\x00\x00queue_name\x00hold\x00queue_id\x007EE1320C498\x00time\x00179534'
    b'9629\x00size\x00274\x00forced_expire\x000\x00sender\x00hold@qdev.test\x00recipien'
    b't\x00h1@example.net\x00reason\x00\x00recipient\x00h2@example.org\x00reason\x00\x00\x00q'
    b'ueue_name\x00hold\x00queue_id\x006F5FE20C196\x00time\x001795349278\x00size\x00252'
    b'\x00forced_expire\x000\x00sender\x00s1@qdev.test\x00recipient\x00r1@example.co'
    b'm\x00reason\x00connect to 127.0.0.1[127.0.0.1]:2998: Connection re'
    b'fused\x00recipient\x00r1b@example.org\x00reason\x00connect to 127.0.0.1['
    b'127.0.0.1]:2998: Connection refused\x00\x00\x00'
)
POSTQUEUE_JSON = (
    b'{"queue_name": "deferred", "queue_id": "83E7220C19D", "arriv'
    b'al_time": 1795349278, "message_size": 252, "forced_expire": '
    b'false, "sender": "s3@qdev.test", "recipients": [{"address": '
    b'"r3@example.com", "delay_reason": "connect to 127.0.0.1[127.'
    b'0.0.1]:2998: Connection refused"}, {"address": "r3b@example.'
    b'org", "delay_reason": "connect to 127.0.0.1[127.0.0.1]:2998:'
    b' Connection refused"}]}\n{"queue_name": "deferred", "queue_id'
    b'": "7F3E820C479", "arrival_time": 1795349622, "message_size"'
    b': 274, "forced_expire": false, "sender": "md@qdev.test", "re'
    b'cipients": [{"address": "md1@example.net", "delay_reason": "'
    b'connect to 127.0.0.1[127.0.0.1]:2998: Connection refused"}]}'
    b'\n{"queue_name": "deferred", "queue_id": "74EA120C194", "arri'
    b'val_time": 1795349278, "message_size": 252, "forced_expire":'
    b' false, "sender": "s2@qdev.test", "recipients": [{"address":'
    b' "r2@example.com", "delay_reason": "connect to 127.0.0.1[127'
    b'.0.0.1]:2998: Connection refused"}, {"address": "r2b@example'
    b'.org", "delay_reason": "connect to 127.0.0.1[127.0.0.1]:2998'
    b': Connection refused"}]}\n{"queue_name": "hold", "queue_id": '
    b'"7EE1320C498", "arrival_time": 1795349629, "message_size": 2'
    b'74, "forced_expire": false, "sender": "hold@qdev.test", "rec'
    b'ipients": [{"address": "h1@example.net"}, {"address": "h2@ex'
    b'ample.org"}]}\n{"queue_name": "hold", "queue_id": "6F5FE20C19'
    b'6", "arrival_time": 1795349278, "message_size": 252, "forced'
    b'_expire": false, "sender": "s1@qdev.test", "recipients": [{"'
    b'address": "r1@example.com", "delay_reason": "connect to 127.'
    b'0.0.1[127.0.0.1]:2998: Connection refused"}, {"address": "r1'
    b'b@example.org", "delay_reason": "connect to 127.0.0.1[127.0.'
    b'0.1]:2998: Connection refused"}]}\n'
)
QF_DEFERRED = (
    b'C_            252             326               2           '
    b'    0             252               0T\x111795349278 506935A\x16cr'
    b'eate_time=1795349278A\x15rewrite_context=localF\x04rootS\x0cs3@qdev.t'
    b'estA#dsn_orig_rcpt=rfc822;r3@example.comO\x0er3@example.comR\x0er3'
    b'@example.comA$dsn_orig_rcpt=rfc822;r3b@example.orgO\x0fr3b@exam'
    b'ple.orgR\x0fr3b@example.orgM\x00N/Received: by qdev.test (Postfix,'
    b' from userid 0)N6\tid 83E7220C19D; Sun, 22 Nov 2026 12:07:58 '
    b'+0000 (UTC)N\x0bSubject: t3N2Message-Id: <20261122120758.83E722'
    b'0C19D@qdev.test>N+Date: Sun, 22 Nov 2026 12:07:58 +0000 (UTC'
    b')N\x19From: root <s3@qdev.test>N\x00N\x06body 3X\x00E\x00'
)
QF_HOLD = (
    b'C_            274             325               2           '
    b'    0             274               0T\x111795349629 518468A\x16cr'
    b'eate_time=1795349629A\x15rewrite_context=localF\x04rootS\x0ehold@qdev'
    b'.testA#dsn_orig_rcpt=rfc822;h1@example.netO\x0eh1@example.netR\x0e'
    b'h1@example.netA#dsn_orig_rcpt=rfc822;h2@example.orgO\x0eh2@exam'
    b'ple.orgR\x0eh2@example.orgM\x00N/Received: by qdev.test (Postfix, '
    b'from userid 0)N6\tid 7EE1320C498; Sun, 22 Nov 2026 12:13:49 +'
    b'0000 (UTC)N\x10Subject: hold meN2Message-Id: <20261122121349.7E'
    b'E1320C498@qdev.test>N+Date: Sun, 22 Nov 2026 12:13:49 +0000 '
    b'(UTC)N\x1bFrom: root <hold@qdev.test>N\x00N\x15held by header_checksX'
    b'\x00E\x00'
)
QF_MAILDROP = (
    b'T\x111795349622 524078A\x15rewrite_context=localF\x04rootS\x0cmd@qdev.te'
    b'stR\x0fmd1@example.netM\x00N\x16Subject: maildrop testN\x00N\x11stuck in ma'
    b'ildropX\x00E\x00'
)
DEFER_LOG = (
    b'\n<r3@example.com>: connect to 127.0.0.1[127.0.0.1]:2998: Con'
    b'nection refused\nrecipient=r3@example.com\noffset=236\ndsn_orig'
    b'_rcpt=rfc822;r3@example.com\nstatus=4.4.1\naction=delayed\nreas'
    b'on=connect to 127.0.0.1[127.0.0.1]:2998: Connection refused\n'
    b'\n\n<r3b@example.org>: connect to 127.0.0.1[127.0.0.1]:2998: C'
    b'onnection refused\nrecipient=r3b@example.org\noffset=307\ndsn_o'
    b'rig_rcpt=rfc822;r3b@example.org\nstatus=4.4.1\naction=delayed\n'
    b'reason=connect to 127.0.0.1[127.0.0.1]:2998: Connection refu'
    b'sed\n\n'
)
# fmt: on


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


def _rec(*attrs: bytes) -> bytes:
    """One attribute list (name, value, ...) + its terminator, + the end-of-listing terminator."""
    return b"".join(a + b"\0" for a in attrs) + b"\0\0"


def _messages(data: bytes) -> list[ShowqMessage]:
    msgs, err = parse_all([data])
    assert err is None
    return msgs


# --- showq stream ---------------------------------------------------------------------------------


def test_recorded_showq_stream_matches_postqueue_json() -> None:
    msgs = _messages(SHOWQ_STREAM)
    ground = [__import__("json").loads(line) for line in POSTQUEUE_JSON.splitlines()]
    assert len(msgs) == len(ground) == 5
    for m, g in zip(sorted(msgs, key=lambda m: m.queue_id), sorted(ground, key=lambda g: g["queue_id"]), strict=True):
        assert m.queue_name == g["queue_name"]
        assert m.queue_id == g["queue_id"]
        assert m.arrival_time == g["arrival_time"]
        assert m.size == g["message_size"]
        assert m.sender == g["sender"]
        assert m.forced_expire is g["forced_expire"]
        assert [a for a, _ in m.recipients] == [r["address"] for r in g["recipients"]]
        assert [r for _, r in m.recipients] == [r.get("delay_reason", "") for r in g["recipients"]]
        assert m.recipient_count == len(g["recipients"])


def test_recorded_stream_every_split_point() -> None:
    whole = _messages(SHOWQ_STREAM)
    for i in range(len(SHOWQ_STREAM) + 1):
        msgs, err = parse_all([SHOWQ_STREAM[:i], SHOWQ_STREAM[i:]])
        assert err is None and msgs == whole, i


def test_byte_at_a_time() -> None:
    msgs, err = parse_all(SHOWQ_STREAM[i : i + 1] for i in range(len(SHOWQ_STREAM)))
    assert err is None and msgs == _messages(SHOWQ_STREAM)


def test_empty_queue_with_and_without_announcement() -> None:
    assert parse_all([b"protocol\0mail_queue_list_protocol\0\0\0"]) == ([], None)
    assert parse_all([b"\0"]) == ([], None)  # Postfix before 3.1 sends no announcement


def test_truncated_stream_is_an_error_not_an_exception() -> None:
    end = SHOWQ_STREAM.index(b"\0\0queue_name") + 2  # after the first message record
    for cut in (0, 10, end - 1, end, len(SHOWQ_STREAM) - 1):
        _, err = parse_all([SHOWQ_STREAM[:cut]])
        assert err is not None and "ended" in err, cut


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (
            _rec(b"queue_name", b"deferred", b"queue_id", b"A1", b"time", b"x", b"size", b"1", b"sender", b""),
            "bad time",
        ),
        (
            _rec(b"queue_name", b"deferred", b"queue_id", b"A1", b"time", b"1", b"size", b"-1", b"sender", b""),
            "bad size",
        ),
        (_rec(b"queue_name", b"deferred", b"time", b"1", b"size", b"1", b"sender", b""), "without 'queue_id'"),
        (
            _rec(b"queue_name", b"deferred", b"queue_id", b"A1", b"time", b"1", b"size", b"1", b"recipient", b"x"),
            "recipient before sender",
        ),
        (b"queue_name\0a\0queue_name\0b\0", "duplicate"),
        (b"\0\0", "after the end"),
        (b"\0junk", "after the end"),
    ],
)
def test_malformed_streams(data: bytes, why: str) -> None:
    msgs, err = parse_all([data])
    assert msgs == []
    assert err is not None and why in err


def test_data_after_end_in_a_later_chunk() -> None:
    parser = ShowqParser()
    parser.feed(b"\0")
    assert parser.done
    parser.feed(b"x")
    assert parser.error is not None and "after the end" in parser.error


def test_many_recipients_are_counted_not_kept() -> None:
    rcpts = b"".join(b"recipient\0r%d@x.test\0reason\0\0" % i for i in range(50))
    head = _rec(b"queue_name", b"active", b"queue_id", b"A1", b"time", b"5", b"size", b"7", b"sender", b"s@x")
    data = head[:-2] + rcpts + b"\0\0"
    (msg,) = _messages(data)
    assert msg.recipient_count == 50
    assert len(msg.recipients) == MAX_RECIPIENTS
    assert msg.recipients[0] == ("r0@x.test", "")


def test_overlong_token_is_rejected_with_bounded_memory() -> None:
    parser = ShowqParser()
    parser.feed(b"queue_name\0")
    for _ in range(20):
        parser.feed(b"x" * 65536)
    assert parser.error is not None and "longer" in parser.error


_token = st.one_of(
    st.sampled_from(
        [
            b"queue_name",
            b"queue_id",
            b"time",
            b"size",
            b"sender",
            b"recipient",
            b"reason",
            b"forced_expire",
            b"protocol",
            b"deferred",
            b"hold",
            b"123",
            b"",
            b"x@y.test",
        ]
    ),
    st.binary(max_size=12),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_token, max_size=60), st.lists(st.integers(min_value=0, max_value=10_000), max_size=8))
def test_fuzz_never_raises_and_chunking_does_not_matter(tokens: list[bytes], cuts: list[int]) -> None:
    data = b"\0".join(tokens)
    whole = parse_all([data])
    assert parse_all(_chunks(data, cuts)) == whole


@settings(max_examples=200)
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0, max_value=5000), max_size=6))
def test_fuzz_random_bytes(data: bytes, cuts: list[int]) -> None:
    whole = parse_all([data])
    assert parse_all(_chunks(data, cuts)) == whole


@settings(max_examples=100)
@given(st.lists(st.integers(min_value=0, max_value=len(SHOWQ_STREAM)), max_size=10))
def test_fuzz_recorded_stream_chunking(cuts: list[int]) -> None:
    assert parse_all(_chunks(SHOWQ_STREAM, cuts)) == parse_all([SHOWQ_STREAM])


# --- queue files --------------------------------------------------------------------------------


def test_queue_file_header_of_real_files() -> None:
    deferred = parse_queue_file_header(QF_DEFERRED)
    assert deferred.arrival is not None and math.floor(deferred.arrival) == 1795349278
    assert deferred.size == 252  # == showq/postqueue message_size, not the file size
    assert deferred.recipient == "r3@example.com"
    held = parse_queue_file_header(QF_HOLD)
    assert held.arrival is not None and math.floor(held.arrival) == 1795349629
    assert held.size == 274
    assert held.recipient == "h1@example.net"
    # postdrop writes no size record: showq (and the scanner) use the file size instead
    dropped = parse_queue_file_header(QF_MAILDROP)
    assert dropped.arrival == pytest.approx(1795349622.524078)
    assert dropped.size is None
    assert dropped.recipient == "md1@example.net"


def test_queue_file_header_keeps_microseconds() -> None:
    header = parse_queue_file_header(QF_DEFERRED)
    assert header.arrival is not None and header.arrival != math.floor(header.arrival)


def test_queue_file_header_truncated_and_malformed() -> None:
    for cut in range(len(QF_DEFERRED)):
        parse_queue_file_header(QF_DEFERRED[:cut])  # never raises
    assert parse_queue_file_header(b"").arrival is None
    assert parse_queue_file_header(b"C\x05abcdeT\x031 2").size is None  # size record not digits/spaces
    assert parse_queue_file_header(b"T\xff\xff\xff\xff\xff\x01x").arrival is None  # too many length bits
    # a long record (two length bytes) before the time record
    long = b"A" + bytes([0x80 | (300 & 0x7F), 300 >> 7]) + b"a" * 300
    assert parse_queue_file_header(long + b"T\x0c1700000000 5").arrival == pytest.approx(1700000000.000005)
    # only the first time record counts, as in showq
    assert parse_queue_file_header(b"T\x0a1700000000T\x0a1800000000").arrival == 1700000000


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_fuzz_queue_file_header(data: bytes) -> None:
    parse_queue_file_header(data)
    parse_queue_file_header(QF_DEFERRED[:100] + data)


def test_defer_log() -> None:
    assert parse_defer_log(DEFER_LOG) == (
        "r3@example.com",
        "connect to 127.0.0.1[127.0.0.1]:2998: Connection refused",
    )
    first_entry_end = DEFER_LOG.index(b"\n\n", 2) + 2
    assert parse_defer_log(DEFER_LOG[:first_entry_end]) is not None
    assert parse_defer_log(DEFER_LOG[: first_entry_end - 1]) is None  # still being written
    assert parse_defer_log(b"") is None
    assert parse_defer_log(b"<old@style.test>: host said: 450 go away\n\n") == (
        "old@style.test",
        "host said: 450 go away",
    )


@settings(max_examples=200)
@given(st.binary(max_size=400))
def test_fuzz_defer_log(data: bytes) -> None:
    parse_defer_log(data)


# --- postqueue -j -----------------------------------------------------------------------------------


def test_postqueue_json_and_showq_give_the_same_counts() -> None:
    now = 1795349700.0
    from_json = stats_from_json_lines(POSTQUEUE_JSON.splitlines(), now=now)
    from_showq = QueueStats(from_json.queues, now=now)
    for m in _messages(SHOWQ_STREAM):
        from_showq.add(m.queue_name, m.arrival_time, m.size)
        if m.queue_name == "deferred":
            found = first_reason(m.recipients)
            assert found is not None
            from_showq.add_deferred(*found)
    for name in from_json.queues:
        assert from_json.queues[name] == from_showq.queues[name], name
    assert from_json.reasons == from_showq.reasons
    assert from_json.domains == from_showq.domains == {"example.com": 2, "example.net": 1}
    assert from_json.queues["deferred"].messages == 3
    assert from_json.queues["hold"].messages == 2
    assert from_json.reasons["refused_or_timeout"] == 3


# --- classification and accumulation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("connect to 127.0.0.1[127.0.0.1]:2999: Connection refused", "refused_or_timeout"),
        (
            "delivery temporarily suspended: connect to mx.example[192.0.2.1]:25: Connection refused",
            "refused_or_timeout",
        ),
        ("connect to mx.example[192.0.2.1]:25: Connection timed out", "refused_or_timeout"),
        (
            "conversation with mx.example[192.0.2.1] timed out while receiving the initial server greeting",
            "refused_or_timeout",
        ),
        (
            "lost connection with mx.example[192.0.2.1] while receiving the initial server greeting",
            "refused_or_timeout",
        ),
        (
            "Host or domain name not found. Name service error for name=nx.example type=MX: Host not found, try again",
            "dns",
        ),
        ("delivery temporarily suspended: Host or domain name not found", "dns"),
        ("Cannot start TLS: handshake failure", "tls"),
        ("TLS is required, but was not offered by host mx.example[192.0.2.1]", "tls"),
        ("Server certificate not verified", "tls"),
        (
            "host mx.example[192.0.2.1] said: 450 4.2.0 <a@b>: Recipient address rejected: Greylisted (in reply "
            "to RCPT TO command)",
            "greylist_or_ratelimit",
        ),
        (
            "host mx.example[192.0.2.1] said: 421 4.7.0 Too many connections, rate limit exceeded",
            "greylist_or_ratelimit",
        ),
        ("host mx.example[192.0.2.1] refused to talk to me: 421 4.7.0 try later", "greylist_or_ratelimit"),
        ("host mx.example[192.0.2.1] said: 550 5.1.1 <a@b>: Recipient address rejected: User unknown", "rejected"),
        ("host mx.example[192.0.2.1] said: 454 4.7.0 TLS not available due to local problem", "tls"),
        (
            "host mx.example[192.0.2.1] said: 450 4.1.8 Sender address rejected: Domain not found",
            "greylist_or_ratelimit",
        ),
        ("mail transport unavailable", "other"),
        ("", "other"),
    ],
)
def test_classify_reason(reason: str, expected: str) -> None:
    assert expected in DEFERRED_REASONS
    assert classify_reason(reason) == expected


def test_recipient_domain() -> None:
    assert recipient_domain("User@Example.NET") == "example.net"
    assert recipient_domain("a@b.test.") == "b.test"
    assert recipient_domain("postmaster") == "local"
    assert recipient_domain("") == "local"


def test_first_reason_prefers_a_recipient_with_a_reason() -> None:
    assert first_reason([]) is None
    assert first_reason([("a@x.test", ""), ("b@y.test", "Connection refused")]) == ("refused_or_timeout", "y.test")
    assert first_reason([("a@x.test", ""), ("b@y.test", "")]) == ("other", "x.test")


def test_top_domains() -> None:
    counts = {"a": 5, "b": 3, "c": 3, "d": 1, "other": 2}
    assert top_domains(counts, 2) == [("a", 5), ("b", 3), ("other", 6)]
    assert top_domains(counts, 0) == [("other", 14)]
    assert top_domains({}, 10) == [("other", 0)]
    assert top_domains({"a": 1}, 10, overflow=4) == [("a", 1), ("other", 4)]


def test_stats_add_and_add_sorted_agree() -> None:
    now = 1_000_000.0
    ages = [0.0, 59.0, 60.0, 61.0, 299.0, 300.0, 7200.0, 86400.0, 432000.0, 432001.0, 10**7, -5.0]
    one, bulk = QueueStats(["q"], now=now), QueueStats(["q"], now=now)
    for a in ages:
        one.add("q", now - a, 10)
    bulk.add_sorted("q", sorted(now - a for a in ages), 10 * len(ages))
    a, b = one.queues["q"], bulk.queues["q"]
    assert a.messages == b.messages == len(ages)
    assert a.size == b.size
    assert a.oldest == b.oldest == now - 10**7
    assert a.buckets == b.buckets
    assert a.age_sum == pytest.approx(b.age_sum)
    # bucket boundaries are inclusive (le)
    assert a.buckets[0] == 4  # 0, 59, 60 and the future one (age 0)
    assert len(a.buckets) == len(AGE_BUCKETS) + 1
    assert a.buckets[-1] == 2  # 432001 and 10**7 are only in +Inf


def test_unknown_queue_is_ignored() -> None:
    stats = QueueStats(["deferred"], now=10.0)
    assert stats.add("corrupt", 1.0, 5) is False
    assert stats.ignored == 1


# --- exim headers -----------------------------------------------------------------------------------


def test_exim_header() -> None:
    head = (
        b"1rJ0mK-000000004Xy-2Bab-H\nexim 101 103\n<a@example.test>\n1700000000 0\n"
        b"-received_time_usec .123456\n-frozen 1700000100\n-ident exim\nXX\n1\nb@example.net\n\n"
    )
    parsed = parse_exim_header(head)
    assert parsed.frozen
    assert parsed.arrival == pytest.approx(1700000000.123456)
    assert not parse_exim_header(head.replace(b"-frozen 1700000100\n", b"")).frozen
    assert parse_exim_header(b"garbage").arrival is None
    # an option line after the first non-option line is recipient data, not a flag
    assert not parse_exim_header(b"id-H\nu 1 1\n<>\n1 0\nXX\n-frozen 5\n").frozen


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_fuzz_exim_header(data: bytes) -> None:
    parse_exim_header(data)
