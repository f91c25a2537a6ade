"""``/probe`` restrictions (SSRF): allowlist, address classes, DNS rebinding, rate limit, counters.

Three layers:

* pure functions (``check_target``, ``address_class``, ``RateLimiter``), with hypothesis;
* the real exporter process against the loopback stack (Postfix on 127.0.0.1, Unbound
  on 127.0.0.1:2053): only loopback targets, the one address class tested end to end;
* the exporter in-process, for the non-loopback classes (10/8, 169.254/16, fc00::/7,
  IPv4-mapped, numeric forms), with a guard on ``socket.socket.connect`` that records
  and blocks any non-loopback connect, so a bug could not reach the network: every
  such test asserts its 403 *and* that no connect was attempted.  Names there are
  answered by the scripted DNS server in ``tests/dnsserver.py``.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from dnsserver import DnsServer
from helpers import metric_values, one, run_exporter
from hypothesis import given
from hypothesis import strategies as st
from stack import Stack

from exporter import config as cfgmod
from exporter.app import Exporter, Options
from exporter.web.probe import REFUSAL_REASONS, RateLimiter, address_class, check_target, compile_policy
from exporter.web.server import make_app

# --- pure: address classes and target matching ------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "cls"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2002:a00:1::1", "private"),  # 6to4 of 10.0.0.1
        ("169.254.169.254", "link_local"),
        ("fe80::1", "link_local"),
        ("fe80::1%lo", "link_local"),
        ("::ffff:169.254.169.254", "link_local"),
        ("0.0.0.0", "reserved"),
        ("0.1.2.3", "reserved"),
        ("::", "reserved"),
        ("::a00:1", "reserved"),  # IPv4-compatible (deprecated)
        ("224.0.0.1", "reserved"),
        ("ff02::1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.1", "reserved"),
        ("8.8.8.8", None),
        ("2001:4860:4860::8888", None),
    ],
)
def test_address_class(address: str, cls: str | None) -> None:
    assert address_class(ipaddress.ip_address(address)) == cls


def _policy(*allow: str, classes: tuple[Any, ...] = ()) -> Any:
    return compile_policy(cfgmod.ProbeConfig(allow_targets=allow, allow_address_classes=classes))


@pytest.mark.parametrize(
    ("kind", "target", "reason"),
    [
        ("smtp", "mx1.example.com:25", None),
        ("smtp", "MX1.Example.COM.:25", None),
        ("smtp", "mx7.example.net:25", None),
        ("smtp", "mx10.example.net:25", "not_allowed"),  # ? is one character
        ("smtp", "example.com:25", "not_allowed"),  # *.example.com needs a label before
        ("smtp", "a.b.example.com:25", None),  # * spans dots
        ("smtp", "evil.com:25", "not_allowed"),
        ("smtp", "example.com.evil.com:25", "not_allowed"),
        ("smtp", "81.2.69.7:25", None),
        ("smtp", "81.2.70.7:25", "not_allowed"),
        ("smtp", "[2001:db8::5]:25", "reserved_address"),  # listed, but documentation space
        ("smtp", "mx.example.com[81.2.69.7]:25", None),  # the connected address decides
        ("smtp", "mx.example.com[81.2.70.1]:25", "not_allowed"),
        ("smtp", "10.1.2.3:25", "private_address"),
        ("smtp", "[::ffff:10.1.2.3]:25", "private_address"),
        ("smtp", "[::ffff:81.2.69.7]:25", None),
        ("smtp", "167838211:25", "malformed_target"),  # 10.1.2.3 in decimal
        ("smtp", "012.1.2.3:25", "malformed_target"),  # octal
        ("smtp", "10.1.515:25", "malformed_target"),
        ("smtp", "0x0a010203:25", "malformed_target"),
        ("smtp", "mx1.example.com", "malformed_target"),  # no port
        ("smtp", "mx1.example.com:0", "malformed_target"),
        ("mx", "example.com", "not_allowed"),
        ("mx", "sub.example.com", None),
        ("mx", "localhost", "malformed_target"),  # a domain has a dot
        ("mx", "81.2.69.7", "malformed_target"),
    ],
)
def test_check_target(kind: str, target: str, reason: str | None) -> None:
    policy = _policy("*.example.com", "mx?.example.net", "81.2.69.0/24", "2001:db8::/32", "10.0.0.0/8")
    refusal = check_target(policy, kind, target)
    assert (refusal.reason if refusal else None) == reason, refusal


def test_address_classes_can_be_allowed() -> None:
    policy = _policy("10.0.0.0/8", "127.0.0.0/8", classes=("private",))
    assert check_target(policy, "smtp", "10.1.2.3:25") is None
    refusal = check_target(policy, "smtp", "127.0.0.1:25")
    assert refusal is not None and refusal.reason == "loopback_address"
    assert 'allow_address_classes lists "loopback"' in refusal.message


def test_empty_allowlist_refuses_everything() -> None:
    policy = _policy()
    for kind, target in (("smtp", "mx.example.com:25"), ("smtp", "192.0.2.1:25"), ("mx", "example.com")):
        refusal = check_target(policy, kind, target)
        assert refusal is not None and refusal.reason == "not_allowed"


_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True).filter(
    lambda s: not s.isdigit() and not s.startswith("0x")
)
_NAME = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)


@given(sub=_NAME, other=_NAME, port=st.integers(1, 65535))
def test_wildcard_pattern_matches_exactly_the_subdomains(sub: str, other: str, port: int) -> None:
    policy = _policy("*.example.com")
    assert check_target(policy, "smtp", f"{sub}.example.com:{port}") is None
    assert check_target(policy, "mx", f"{sub}.Example.com.") is None
    outside = f"{other}.example.org:{port}"
    refusal = check_target(policy, "smtp", outside)
    assert refusal is not None and refusal.reason == "not_allowed"


@given(value=st.integers(0, 2**32 - 1), port=st.integers(1, 65535))
def test_numeric_host_forms_never_pass(value: int, port: int) -> None:
    """Decimal, hex and short forms of any IPv4 address are refused as malformed, whatever is allowed."""
    policy = _policy("*", "0.0.0.0/0", "::/0", classes=("loopback", "private", "link_local"))
    ip = ipaddress.IPv4Address(value)
    a, b, c, d = ip.packed
    for form in (str(value), hex(value), f"{a}.{(b << 16) | (c << 8) | d}", f"0{a:o}.{b}.{c}.{d}"):
        refusal = check_target(policy, "smtp", f"{form}:{port}")
        assert refusal is not None and refusal.reason == "malformed_target", form


@given(value=st.integers(0, 2**32 - 1))
def test_ipv4_mapped_is_judged_as_ipv4(value: int) -> None:
    policy = _policy("0.0.0.0/0")
    ip = ipaddress.IPv4Address(value)
    plain = check_target(policy, "smtp", f"{ip}:25")
    mapped = check_target(policy, "smtp", f"[::ffff:{ip}]:25")
    assert (mapped.reason if mapped else None) == (plain.reason if plain else None)
    assert (plain.reason if plain else None) == (None if address_class(ip) is None else f"{address_class(ip)}_address")


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ("10.0.0.1/8", 'expected a network like "192.0.2.0/24" or "2001:db8::/32", got "10.0.0.1/8"'),
        ("10.0.0.*", 'IP addresses match only networks: write a CIDR like "192.0.2.0/24", not "10.0.0.*"'),
        (
            "mx..example.com",
            'expected a CIDR network or a host name pattern like "*.example.com", got "mx..example.com"',
        ),
    ],
)
def test_bad_allow_targets_entry_is_a_config_error(entry: str, error: str) -> None:
    text = f"probe:\n  allow_targets: ['*.example.com', '{entry}']\n  rate_limit: {{burst: 0}}\n"
    with pytest.raises(cfgmod.ConfigError) as info:
        cfgmod.load_text(text, "probe.yml")
    message = str(info.value)
    assert f"probe.yml: probe.allow_targets[1]: {error}" in message
    assert "probe.yml: probe.rate_limit.burst: expected at least 1, got 0" in message


def test_bad_address_class_is_a_config_error() -> None:
    with pytest.raises(cfgmod.ConfigError) as info:
        cfgmod.load_text("probe: {allow_address_classes: [multicast]}\n", "probe.yml")
    assert "probe.yml: probe.allow_address_classes[0]:" in str(info.value)


# --- pure: the rate limiter ---------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_bucket_per_client() -> None:
    clock = _Clock()
    limiter = RateLimiter(clock)
    assert [limiter.take("a", 2.0, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", 2.0, 3) == 0.5  # one token at 2/s
    assert limiter.take("b", 2.0, 3) == 0.0  # another client has its own bucket
    clock.now += 0.5
    assert limiter.take("a", 2.0, 3) == 0.0
    assert limiter.take("a", 2.0, 3) == 0.5
    clock.now += 100
    assert [limiter.take("a", 2.0, 3) for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]  # refilled to burst, no more
    assert limiter.take("a", 0.0, 1) == 0.0  # rate 0: no limit


def test_rate_limiter_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("exporter.web.probe.MAX_TRACKED_CLIENTS", 3)
    limiter = RateLimiter(_Clock())
    for client in ("a", "b", "c", "d"):
        assert limiter.take(client, 1.0, 1) == 0.0
    assert list(limiter._buckets) == ["b", "c", "d"]  # the least recently seen went
    assert limiter.take("a", 1.0, 1) == 0.0  # forgotten: a full bucket again
    assert limiter.take("c", 1.0, 1) == 1.0


# --- end to end: the real exporter, loopback targets only --------------------------------------------


def _stack_config(stack: Stack, probe: str) -> str:
    dns_host, dns_port = stack.dns_server
    return f"""
global:
  interval: 1h
  timeout: 5s
  resolver: {{nameservers: ['{dns_host}'], port: {dns_port}, timeout: 2s}}
endpoints:
  - {{name: mta, protocol: smtp, address: '127.0.0.1:{stack.port("smtp")}', tls: none}}
domains:
  - {{domain: good.test, smtp: {{port: {stack.port("smtp")}, tls: none}}}}
probe: {probe}
"""


def _refused(text: str) -> dict[str, float]:
    values = metric_values(text, "mail_exporter_probe_refused_total")
    return {dict(k)["reason"]: v for k, v in values.items()}


def _zero_but(**counts: float) -> dict[str, float]:
    return {reason: counts.get(reason, 0.0) for reason in REFUSAL_REASONS}


def test_only_configured_and_listed_targets_end_to_end(stack: Stack, tmp_path: Path) -> None:
    smtp = stack.port("smtp")
    probe = "{allow_targets: ['127.0.0.0/8', 'localhost', '*.test']}"
    with run_exporter(tmp_path, config_text=_stack_config(stack, probe)) as exp:
        exp.wait_ready()
        assert _refused(exp.metrics()) == _zero_but()  # every reason exists from start-up
        # the module's own target: always allowed (explicitly or by default)
        for query in ("module=mta", f"module=mta&target=127.0.0.1:{smtp}", "module=good.test"):
            resp = exp.get(f"/probe?{query}")
            assert resp.status == 200, resp.text
            assert one(metric_values(resp.text, "probe_success")) == 1, query
        cases = [
            (f"[::1]:{smtp}", 403, "not_allowed"),
            ("mail.example.net:25", 403, "not_allowed"),
            (f"127.0.0.2:{smtp}", 403, "loopback_address"),
            (f"[::ffff:127.0.0.1]:{smtp}", 403, "loopback_address"),
            (f"localhost:{smtp}", 403, "loopback_address"),  # listed name, loopback address
            (f"2130706433:{smtp}", 400, "malformed_target"),
            (f"0177.0.0.1:{smtp}", 400, "malformed_target"),
        ]
        for target, status, reason in cases:
            resp = exp.get(f"/probe?module=mta&target={target}")
            assert (resp.status, resp.headers["Content-Type"].split(";")[0]) == (status, "text/plain"), target
            assert "probe_success" not in resp.text, target
            if reason == "loopback_address":
                assert ", a loopback address (probed only when probe.allow_address_classes" in resp.text
        # a listed domain whose MX host resolves (via Unbound) to 127.0.0.1
        resp = exp.get("/probe?module=good.test&target=example.test")
        assert resp.status == 403
        assert resp.text.startswith('Target "example.test" refused: it leads to 127.0.0.1, a loopback address'), (
            resp.text
        )
        assert _refused(exp.metrics()) == _zero_but(not_allowed=2, loopback_address=4, malformed_target=2)


def test_allowed_loopback_class_end_to_end(stack: Stack, tmp_path: Path) -> None:
    smtp = stack.port("smtp")
    probe = "{allow_targets: ['127.0.0.0/8', 'local*', '*.test'], allow_address_classes: [loopback]}"
    with run_exporter(tmp_path, config_text=_stack_config(stack, probe)) as exp:
        exp.wait_ready()
        resp = exp.get(f"/probe?module=mta&target=localhost:{smtp}")
        assert resp.status == 200
        assert one(metric_values(resp.text, "mail_smtp_up"), target=f"localhost:{smtp}") == 1
        # allowed, but nothing listens there: a failed probe, not a refusal
        resp = exp.get(f"/probe?module=mta&target=127.0.0.2:{smtp}")
        assert resp.status == 200
        assert one(metric_values(resp.text, "probe_success")) == 0
        failures = metric_values(resp.text, "mail_probe_failures_total")
        assert one(failures, target=f"127.0.0.2:{smtp}", reason="refused") == 1
        resp = exp.get("/probe?module=good.test&target=example.test")  # MX 127.0.0.1 (up) and 127.0.0.2 (dead)
        assert resp.status == 200
        assert one(metric_values(resp.text, "mail_mx_records"), domain="example.test") == 2
        assert one(metric_values(resp.text, "mail_mx_healthy"), domain="example.test") == 1
        assert _refused(exp.metrics()) == _zero_but()


def _get_from(source: str, port: int, path: str) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode()
    finally:
        conn.close()


def test_rate_limit_per_client_end_to_end(stack: Stack, tmp_path: Path) -> None:
    probe = "{allow_targets: ['*.test'], rate_limit: {requests_per_second: 0.001, burst: 3}}"
    path = "/probe?module=mta&target=mail.example.net:25"  # not listed: refused without DNS
    with run_exporter(tmp_path, config_text=_stack_config(stack, probe)) as exp:
        exp.wait_ready()
        statuses = [_get_from("127.0.0.1", exp.port, path)[0] for _ in range(3)]
        assert statuses == [403, 403, 403]
        status, headers, body = _get_from("127.0.0.1", exp.port, path)
        assert status == 429, body
        assert 999 <= int(headers["Retry-After"]) <= 1000  # one token at 0.001/s
        assert body.startswith("Too many /probe requests from 127.0.0.1: retry in ")
        # another client address has its own bucket
        assert _get_from("127.0.0.2", exp.port, path)[0] == 403
        assert _refused(exp.metrics()) == _zero_but(not_allowed=4, rate_limited=1)


# --- in process: non-loopback classes, with every non-loopback connect blocked --------------------


@pytest.fixture
def connect_attempts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Blocks (and records) every connect to a non-loopback address; the test fails if any happened."""
    attempts: list[Any] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def allowed(address: Any) -> bool:
        if not isinstance(address, tuple):
            return True  # a Unix socket
        return ipaddress.ip_address(str(address[0]).partition("%")[0]).is_loopback

    def connect(self: socket.socket, address: Any) -> None:
        if not allowed(address):
            attempts.append(address)
            raise OSError(errno.EACCES, f"test guard: connect to {address} blocked")
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if not allowed(address):
            attempts.append(address)
            return errno.EACCES
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield attempts
    assert attempts == [], f"non-loopback connect attempted: {attempts}"


Get = Callable[[str], Awaitable[tuple[int, str]]]


@pytest.fixture
async def dns() -> AsyncIterator[DnsServer]:
    async with DnsServer() as server:
        # the configured domain resolves to loopback only: its scheduled check runs unguarded
        server.add("home.test", "MX", "10 mx.home.test.").add("mx.home.test", "A", "127.0.0.1")
        server.add("rebind.test", "MX", "10 mx.rebind.test.").add("mx.rebind.test", "A", "169.254.169.254")
        server.add("private.test", "MX", "10 mx.private.test.").add("mx.private.test", "A", "10.0.0.1")
        server.add("mapped.test", "MX", "10 mx.mapped.test.").add("mx.mapped.test", "AAAA", "::ffff:10.0.0.1")
        server.add("linklocal6.test", "MX", "10 mx.linklocal6.test.").add("mx.linklocal6.test", "AAAA", "fe80::1")
        yield server


@contextlib.asynccontextmanager
async def _in_process(tmp_path: Path, dns: DnsServer, probe: str) -> AsyncIterator[tuple[Exporter, Get]]:
    text = f"""
global:
  interval: 1h
  timeout: 3s
  resolver: {{nameservers: ['127.0.0.1'], port: {dns.port}, timeout: 1s}}
endpoints:
  - {{name: mta, protocol: smtp, address: '127.0.0.1:9', tls: none}}
domains:
  - {{domain: home.test, smtp: {{port: 9, tls: none}}, dns: {{spf: false, dmarc: false}}}}
probe: {probe}
"""
    (tmp_path / "config.yml").write_text(text)
    exporter = Exporter(Options(str(tmp_path / "config.yml"), storage_path=str(tmp_path / "data")))
    await exporter.start()
    runner = web.AppRunner(make_app(exporter))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session:

        async def get(query: str) -> tuple[int, str]:
            async with session.get(f"http://127.0.0.1:{port}/probe?{query}") as resp:
                return resp.status, await resp.text()

        try:
            yield exporter, get
        finally:
            await runner.cleanup()
            await exporter.stop()


def _class_name(reason: str) -> str:
    return reason.removesuffix("_address").replace("_", "-")


def _counts(exporter: Exporter) -> dict[str, float]:
    return _refused(exporter.snapshot.render().decode())


@pytest.fixture
async def open_probe(
    tmp_path: Path, dns: DnsServer, connect_attempts: list[Any]
) -> AsyncIterator[tuple[Exporter, Get]]:
    """Everything matches the allowlist; only the address classes stand in the way."""
    async with _in_process(tmp_path, dns, "{allow_targets: ['0.0.0.0/0', '::/0', '*']}") as pair:
        yield pair


@pytest.mark.parametrize(
    ("target", "status", "reason", "address"),
    [
        ("10.0.0.1:25", 403, "private_address", "10.0.0.1"),
        ("[fc00::1]:25", 403, "private_address", "fc00::1"),
        ("[::ffff:10.0.0.1]:25", 403, "private_address", "10.0.0.1"),
        ("mx.example.com[10.0.0.1]:25", 403, "private_address", "10.0.0.1"),
        ("169.254.169.254:80", 403, "link_local_address", "169.254.169.254"),
        ("[fe80::1]:25", 403, "link_local_address", "fe80::1"),
        ("0.0.0.0:25", 403, "reserved_address", "0.0.0.0"),
        ("[::]:25", 403, "reserved_address", "::"),
        ("224.0.0.1:25", 403, "reserved_address", "224.0.0.1"),
        ("167772161:25", 400, "malformed_target", None),
        ("012.0.0.1:25", 400, "malformed_target", None),
        ("0xa9fea9fe:80", 400, "malformed_target", None),
    ],
)
async def test_non_loopback_literal_refused_before_connect(
    open_probe: tuple[Exporter, Get], target: str, status: int, reason: str, address: str | None
) -> None:
    exporter, get = open_probe
    got, body = await get(f"module=mta&target={target}")
    assert got == status, body
    if address is not None:
        assert f'Target "{target}" refused: it leads to {address}, a {_class_name(reason)} address' in body
    assert _counts(exporter) == _zero_but(**{reason: 1})


@pytest.mark.parametrize(
    ("domain", "reason", "address"),
    [
        ("rebind.test", "link_local_address", "169.254.169.254"),
        ("private.test", "private_address", "10.0.0.1"),
        ("mapped.test", "private_address", "10.0.0.1"),
        ("linklocal6.test", "link_local_address", "fe80::1"),
    ],
)
async def test_mx_hosts_resolving_to_internal_addresses_refused_before_connect(
    open_probe: tuple[Exporter, Get], dns: DnsServer, domain: str, reason: str, address: str
) -> None:
    exporter, get = open_probe
    got, body = await get(f"module=home.test&target={domain}")
    assert got == 403, body
    assert f'Target "{domain}" refused: it leads to {address}, a {_class_name(reason)} address' in body
    assert {q[0].rstrip(".") for q in dns.queries} >= {domain, f"mx.{domain}"}  # resolved, then refused
    assert _counts(exporter) == _zero_but(**{reason: 1})


async def test_refused_and_rate_limited_requests_do_no_dns_lookup(
    tmp_path: Path, dns: DnsServer, connect_attempts: list[Any]
) -> None:
    probe = "{allow_targets: ['*.allowed.test'], rate_limit: {requests_per_second: 0.001, burst: 2}}"
    async with _in_process(tmp_path, dns, probe) as (exporter, get):
        dns.queries.clear()
        assert (await get("module=home.test&target=rebind.test"))[0] == 403  # not listed
        assert (await get("module=mta&target=10.0.0.1:25"))[0] == 403  # not listed
        status, body = await get("module=home.test&target=rebind.allowed.test")
        assert status == 429, body
        assert dns.queries == []
        assert _counts(exporter) == _zero_but(not_allowed=2, rate_limited=1)
