"""Certificate inspection (pure) and the TLS contexts built from TLSSettings."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from exporter.config import TLSSettings
from exporter.net.tls import LeafInfo, TLSReport, client_context, inspect_leaf, printable

NOT_BEFORE = dt.datetime(2024, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
NOT_AFTER = dt.datetime(2037, 8, 9, 10, 11, 12, tzinfo=dt.UTC)
_KEY = ec.generate_private_key(ec.SECP256R1())


def make_der(*, dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), cn: str | None = None, san: bool = True) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Issuer")]))
        .public_key(_KEY.public_key())
        .serial_number(1234)
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
    )
    if san:
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(_KEY, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def matches(der: bytes, host: str) -> bool:
    return inspect_leaf(der, host).hostname_ok


def test_dates_subject_issuer_exact() -> None:
    info = inspect_leaf(make_der(dns=("mx.example.com",), cn="mx.example.com"), "mx.example.com")
    assert info.not_after == NOT_AFTER.timestamp() == 2133425472.0
    assert info.not_before == NOT_BEFORE.timestamp()
    assert info.subject == "CN=mx.example.com"
    assert info.issuer == "CN=Test Issuer"
    assert not info.self_signed


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("mx.example.com", True),
        ("MX.Example.COM", True),
        ("mx.example.com.", True),
        ("example.com", False),
        ("mx2.example.com", False),
        ("mx.example.com.evil.test", False),
    ],
)
def test_exact_dns_names(host: str, ok: bool) -> None:
    assert matches(make_der(dns=("mx.example.com",)), host) is ok


@pytest.mark.parametrize(
    ("pattern", "host", "ok"),
    [
        ("*.example.com", "mx.example.com", True),
        ("*.example.com", "MX.EXAMPLE.COM", True),
        ("*.example.com", "example.com", False),  # the wildcard needs a label
        ("*.example.com", "a.b.example.com", False),  # exactly one label
        ("*.example.com", ".example.com", False),
        ("*.com", "example.com", False),  # too broad
        ("f*.example.com", "foo.example.com", False),  # partial-label wildcards are not honoured
        ("*x.example.com", "ax.example.com", False),
        ("mx.*.example.com", "mx.a.example.com", False),  # only the leftmost label
        ("*.*.example.com", "a.b.example.com", False),
    ],
)
def test_wildcards(pattern: str, host: str, ok: bool) -> None:
    assert matches(make_der(dns=(pattern,)), host) is ok


def test_ip_addresses() -> None:
    der = make_der(dns=("localhost", "192.0.2.9"), ips=("127.0.0.1", "::1"))
    assert matches(der, "127.0.0.1")
    assert matches(der, "::1")
    assert matches(der, "[::1]")
    assert matches(der, "0:0:0:0:0:0:0:1")
    assert not matches(der, "127.0.0.2")
    assert not matches(der, "192.0.2.9")  # a DNS SAN spelling an address does not count
    assert not matches(make_der(cn="127.0.0.1", san=False), "127.0.0.1")  # nor does the CN


def test_common_name_only_without_dns_san() -> None:
    assert matches(make_der(cn="mx.example.com", san=False), "mx.example.com")
    assert matches(make_der(cn="*.example.com", san=False), "mx.example.com")
    # with a DNS SAN present the CN is ignored
    assert not matches(make_der(dns=("other.example.com",), cn="mx.example.com"), "mx.example.com")
    # an IP-only SAN leaves the CN in play for DNS names
    assert matches(make_der(ips=("127.0.0.1",), cn="mx.example.com"), "mx.example.com")
    assert not matches(make_der(san=False), "mx.example.com")


def test_internationalised_names() -> None:
    der = make_der(dns=("xn--bcher-kva.example",))
    assert matches(der, "bücher.example")
    assert matches(der, "xn--bcher-kva.example")
    assert not matches(der, "bucher.example")


def test_not_a_certificate() -> None:
    with pytest.raises(ValueError):
        inspect_leaf(b"\x30\x03\x02\x01\x00", "x")


@given(st.binary(max_size=200), st.text(max_size=60))
def test_inspect_leaf_raises_only_value_error(data: bytes, host: str) -> None:
    try:
        inspect_leaf(data, host)
    except ValueError:
        pass


@given(st.text(max_size=80))
def test_hostname_check_never_raises_for_any_name(host: str) -> None:
    inspect_leaf(make_der(dns=("*.example.com", "mx.example.com"), ips=("10.0.0.1",)), host)


def test_report_verdicts() -> None:
    leaf = LeafInfo(not_after=1.0, not_before=0.0, hostname_ok=True, subject="CN=a", issuer="CN=a")
    assert TLSReport("TLSv1.3", True, "", leaf, "a").valid
    assert leaf.self_signed
    bad_chain = TLSReport("TLSv1.3", False, "certificate has expired", leaf, "a")
    assert not bad_chain.valid and "certificate has expired" in bad_chain.problem()
    no_leaf = TLSReport("TLSv1.3", True, "", None, "a")
    assert not no_leaf.hostname_valid and not no_leaf.valid


# --- contexts ---------------------------------------------------------------------------------------


def test_contexts(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    settings = TLSSettings(ca_file=str(ca_file), min_version="TLS1.2")
    ctx = client_context(settings, verify=True)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert not ctx.check_hostname  # checked by hostname_matches instead
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert len(ctx.get_ca_certs()) == 1  # only the configured CA, not the system store
    assert client_context(settings, verify=True) is ctx  # cached
    insecure = client_context(settings, verify=False)
    assert insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname
    assert insecure.minimum_version == ssl.TLSVersion.TLSv1_2
    # a rotated CA file gives a fresh context
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    stat = ca_file.stat()
    os.utime(ca_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert client_context(settings, verify=True) is not ctx


def test_missing_ca_file(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        client_context(TLSSettings(ca_file=str(tmp_path / "missing.pem")), verify=True)


def test_printable() -> None:
    assert printable(b"220 ok\r\n") == "220 ok"
    assert printable(b"a\x00b\x1bc\xff") == "a?b?c\ufffd"
    assert printable("x" * 500, 10) == "x" * 10 + "..."
