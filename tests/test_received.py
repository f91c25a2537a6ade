"""The Received-header parser: a corpus of real-world formats, hop delays, and fuzzing."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.roundtrip.received import (
    HOST_LABEL_MAX,
    MAX_HOPS,
    Received,
    hop_delays,
    parse_chain,
    parse_date,
    parse_received,
    server_delivery_delay,
)

CORPUS_PATH = Path(__file__).parent / "testdata" / "received" / "corpus.yml"
CORPUS: list[dict[str, Any]] = yaml.safe_load(CORPUS_PATH.read_text())


def test_corpus_is_large_and_well_formed() -> None:
    names = [entry["name"] for entry in CORPUS]
    assert len(names) >= 30
    assert len(set(names)) == len(names)
    fields = set(Received.__dataclass_fields__)
    for entry in CORPUS:
        assert set(entry) == {"name", "source", "header", "expect"}, entry["name"]
        assert set(entry["expect"]) <= fields, entry["name"]


@pytest.mark.parametrize("entry", CORPUS, ids=[e["name"] for e in CORPUS])
def test_corpus(entry: dict[str, Any]) -> None:
    parsed = parse_received(entry["header"])
    for key, want in entry["expect"].items():
        got = getattr(parsed, key)
        if key == "timestamp" and want is not None:
            expected = datetime.fromisoformat(want).timestamp()
            assert got == pytest.approx(expected, abs=1e-6), f"{key}: {got} != {want}"
        else:
            assert got == want, f"{key}: {got!r} != {want!r}"


def test_corpus_with_field_name_and_crlf_folding() -> None:
    raw = (
        "Received: from a.example.org (a.example.org [192.0.2.1])\r\n"
        "\tby b.example.net (Postfix) with ESMTP id X1;\r\n\tMon, 20 Nov 2023 10:15:42 +0100 (CET)"
    )
    parsed = parse_received(raw)
    assert parsed.by_host == "b.example.net"
    assert parsed.timestamp == datetime(2023, 11, 20, 9, 15, 42, tzinfo=UTC).timestamp()


# --- dates -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "iso", "offset"),
    [
        ("Mon, 20 Nov 2023 10:15:42 +0000", "2023-11-20T10:15:42+00:00", 0),
        ("20 Nov 2023 10:15:42 -0000", "2023-11-20T10:15:42+00:00", None),
        ("Mon, 20 Nov 2023 10:15:42 GMT", "2023-11-20T10:15:42+00:00", 0),
        ("Mon, 20 Nov 2023 10:15:42 PDT", "2023-11-20T10:15:42-07:00", -25200),
        ("Mon, 20 Nov 2023 10:15:42 +1345", "2023-11-20T10:15:42+13:45", 49500),
        ("Mon, 20 Nov 2023 10:15:42 -0930 (MART)", "2023-11-20T10:15:42-09:30", -34200),
        ("Mon, 20 Nov 2023 10:15:42 +0100 (GMT)", "2023-11-20T10:15:42+01:00", 3600),  # numeric wins
        ("Mon, 20 Nov 2023 10:15:42 XYZ", "2023-11-20T10:15:42+00:00", None),
        ("Sat, 31 Dec 2016 23:59:60 +0000", "2017-01-01T00:00:00+00:00", 0),  # leap second
        ("Thu, 1 Jan 70 00:00:00 +0000", "1970-01-01T00:00:00+00:00", 0),
        ("Fri, 1 Jan 49 00:00:00 +0000", "2049-01-01T00:00:00+00:00", 0),
        ("1 Jan 105 00:00:00 +0000", "2005-01-01T00:00:00+00:00", 0),
        ("2023-11-20 10:15:42 +02:00", "2023-11-20T10:15:42+02:00", 7200),
        ("Mon Nov 20 10:15:42 2023 +0100", "2023-11-20T10:15:42+01:00", 3600),
    ],
)
def test_dates(text: str, iso: str, offset: int | None) -> None:
    parsed = parse_date(text)
    assert parsed is not None
    assert parsed.timestamp == datetime.fromisoformat(iso).timestamp()
    assert parsed.utc_offset == offset


@pytest.mark.parametrize(
    "text", ["", "yesterday", "Mon, 32 Nov 2023 10:15:42 +0000", "Mon, 20 Foo 2023 10:15:42 +0000", "99:99"]
)
def test_bad_dates(text: str) -> None:
    assert parse_date(text) is None


MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


@settings(max_examples=400, deadline=None)
@given(
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1)),
    st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59),
    st.booleans(),
    st.sampled_from(["", " (UTC)", " (CET)", " (PST)"]),
)
def test_dates_round_trip_with_any_offset(naive: datetime, offset_min: int, weekday: bool, comment: str) -> None:
    tz = timezone(timedelta(minutes=offset_min))
    dt = naive.replace(microsecond=0, tzinfo=tz)
    sign = "-" if offset_min < 0 else "+"
    zone = f"{sign}{abs(offset_min) // 60:02d}{abs(offset_min) % 60:02d}"
    text = f"{dt.day} {MONTHS[dt.month - 1]} {dt.year} {dt:%H:%M:%S} {zone}{comment}"
    if weekday:
        text = f"{DAYS[dt.weekday()]}, {text}"
    header = f"from a.example.org (a.example.org [192.0.2.1]) by b.example.net with ESMTP id Q1; {text}"
    parsed = parse_received(header)
    assert parsed.timestamp == dt.timestamp()
    expected_offset = None if zone == "-0000" else offset_min * 60
    assert parsed.utc_offset == expected_offset
    assert parsed.by_host == "b.example.net"


@settings(max_examples=1500, deadline=None)
@given(st.text(max_size=400))
def test_fuzz_never_raises(text: str) -> None:
    parsed = parse_received(text)
    assert isinstance(parsed, Received)
    assert parsed.timestamp is None or math.isfinite(parsed.timestamp)
    parse_date(text)


_PIECES = st.sampled_from(
    [
        "from", "by", "with", "id", "for", "via", "(", ")", "((", "))", ";", '"', "\\", "<", ">", "[", "]",
        "[IPv6:", "2001:db8::1", "192.0.2.1", "mx.example.net", "ESMTPS", "Mon,", "20", "Nov", "2023",
        "10:15:42", "+0100", "-0000", "GMT", "(CET)", "\r\n\t", " ", "helo=", "60", "99", "Feb", "31",
    ]
)  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(st.lists(_PIECES, max_size=60))
def test_fuzz_structured_never_raises(pieces: list[str]) -> None:
    text = " ".join(pieces)
    parsed = parse_received(text)
    assert isinstance(parsed, Received)
    chain = parse_chain([text, text])
    hops = hop_delays(chain, 1_700_000_000.5)
    assert len(hops) == 2
    server_delivery_delay(chain, 1_700_000_000.5)


def test_huge_header_is_bounded() -> None:
    text = "from " + "(" * 100_000 + "x" + ")" * 100_000 + " by b.example.net; Mon, 20 Nov 2023 10:15:42 +0000"
    parsed = parse_received(text)
    assert isinstance(parsed, Received)


# --- chains and hops -----------------------------------------------------------------------------------


STACK_MESSAGE_HEADERS = [
    # newest first, as in the message (Dovecot LMTP on top of Postfix)
    "from mx1.example.test ([127.0.0.1])\n\tby mx1.example.test with LMTP\n\tid kGnrJ3rmAmtgYgAAg+zDdQ\n"
    "\t(envelope-from <probe@example.test>)\n\tfor <probe@example.test>; Sun, 22 Nov 2026 12:56:26 +0000",
    "from monitor.example.test (unknown [127.0.0.1])\n\tby mx1.example.test (Postfix) with ESMTP id 9AA952D4001\n"
    "\tfor <probe@example.test>; Sun, 22 Nov 2026 12:56:25 +0000 (UTC)",
]


def test_chain_is_oldest_first_and_hops_are_measured_from_the_send_time() -> None:
    chain = parse_chain(STACK_MESSAGE_HEADERS)
    assert [r.protocol for r in chain] == ["ESMTP", "LMTP"]
    sent = datetime(2026, 11, 22, 12, 56, 25, 636419, tzinfo=UTC).timestamp()
    hops = hop_delays(chain, sent)
    assert [h.label for h in hops] == ["1:mx1.example.test", "2:mx1.example.test"]
    # whole-second headers are compared with the send time truncated to whole seconds
    assert hops[0].delay == 0.0
    assert hops[1].delay == 1.0
    assert server_delivery_delay(chain, sent) == 1.0


def test_hop_without_date_is_skipped_for_the_next_delay() -> None:
    chain = [
        Received(by_host="a", timestamp=100.0),
        Received(by_host="b", timestamp=None),
        Received(by_host="c", timestamp=107.0),
    ]
    hops = hop_delays(chain, 98.0)
    assert [h.delay for h in hops] == [2.0, None, 7.0]
    assert server_delivery_delay(chain, 98.0) == 9.0
    assert server_delivery_delay([Received()], 98.0) is None


def test_fractional_timestamps_are_compared_exactly() -> None:
    chain = [Received(by_host="gw", timestamp=100.75, whole_seconds=False)]
    assert hop_delays(chain, 100.5)[0].delay == pytest.approx(0.25)


def test_hops_are_bounded_and_labels_are_safe() -> None:
    chain = [Received(by_host=f"host{i}.example.net", timestamp=1000.0 + i) for i in range(25)]
    hops = hop_delays(chain, 999.0)
    assert len(hops) == MAX_HOPS
    assert hops[-1].label == f"{MAX_HOPS}:host{MAX_HOPS - 1}.example.net"
    odd = hop_delays([Received(by_host="MX.Example.NET." + "x" * 200 + '"}\n', timestamp=1.0)], 0.0)[0]
    assert odd.host.startswith("mx.example.net.")
    assert len(odd.host) == HOST_LABEL_MAX
    assert all(c.isalnum() or c in "._:[]-" for c in odd.host)
    assert hop_delays([Received()], 0.0)[0].host == "unknown"


# --- the client address: the connection's, not the client's claim --------------------------------

_BY = " by mx.example.net with ESMTP id X1; Mon, 20 Nov 2023 10:15:42 +0000"


@pytest.mark.parametrize(
    ("from_clause", "ip"),
    [
        # Exim $sender_rcvhost (spec, "Expansion variables"): "[ip]:port" when port logging is on...
        ("from mail.example.org ([198.51.100.7]:54321 helo=mail.example.org)", "198.51.100.7"),
        ("from mail.example.org ([2001:db8::25]:54321 helo=mail.example.org)", "2001:db8::25"),
        ("from [198.51.100.7]:54321", "198.51.100.7"),
        # ... "port=" in the comment without a verified host name; helo= is the client's claim
        ("from [198.51.100.7] (port=54321 helo=mail.example.org)", "198.51.100.7"),
        ("from [198.51.100.7] (port=54321 helo=[10.0.0.1])", "198.51.100.7"),
        ("from mail.example.org ([198.51.100.7] helo=[10.0.0.1])", "198.51.100.7"),
        # qmail-smtpd received.c: "from relay1.uu.net (HELO uunet.uu.net) (7@192.48.96.5)"
        ("from relay1.example.net (HELO uunet.example.net) (7@192.0.2.5)", "192.0.2.5"),
        ("from unknown (HELO [10.0.0.1]) (192.0.2.5)", "192.0.2.5"),  # notqmail keeps [] in HELO
        ("from unknown (HELO 10.0.0.1) (bob@example.net@192.0.2.5)", "192.0.2.5"),  # SMTP AUTH patch
        # Postfix smtpd and Sendmail proto.m4 ("from $s ($_)"): the HELO literal is the claim,
        # "(rdns [addr])" is the connection
        ("from [192.0.2.9] (unknown [192.0.2.1])", "192.0.2.1"),
        ("from [192.0.2.9] (host.example.org [192.0.2.1])", "192.0.2.1"),
        ("from [IPv6:2001:db8::9] (unknown [IPv6:2001:db8::1])", "2001:db8::1"),
        ("from mail.example.org (root@host.example.org [192.0.2.1] (may be forged))", "192.0.2.1"),
        ("from mail.example.org ([192.0.2.1])", "192.0.2.1"),  # Sendmail, no reverse name
        # Exim's spool writes "-host_address 192.0.2.1.54321"; no MTA writes that in Received:
        ("from mail.example.org (192.0.2.1.54321)", None),
    ],
)
def test_client_address(from_clause: str, ip: str | None) -> None:
    parsed = parse_received(from_clause + _BY)
    assert parsed.from_ip == ip
    assert parsed.by_host == "mx.example.net"
