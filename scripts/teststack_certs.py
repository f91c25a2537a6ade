#!/usr/bin/env python3
"""Generate the TLS material for the loopback test mail stack.

Usage: teststack_certs.py OUTDIR

Writes into OUTDIR (created if missing):

  ca.pem / ca.key                 test CA ("MCE Test CA")
  valid.pem / valid.key           issued by the CA, SAN mx1.example.test,
                                  imap.example.test, localhost, IP 127.0.0.1,
                                  notAfter = now + 90 days
  expired.pem / expired.key       issued by the CA, same SANs,
                                  notBefore = now - 30 days, notAfter = now - 1 day
  selfsigned.pem / selfsigned.key self-signed (not from the CA), same SANs, 90 days
  wronghost.pem / wronghost.key   issued by the CA, SAN only wrong.invalid, 90 days
  mtasts.pem / mtasts.key         issued by the CA, CN and only SAN mta-sts.sts.test
                                  (the MTA-STS policy host of sts.test), 90 days
  NAME-chain.pem                  leaf followed by the CA (what servers present;
                                  for selfsigned it is just the leaf)
  certs.json                      the description below, also printed on stdout

certs.json maps each name (ca, valid, expired, selfsigned, wronghost, mtasts) to
{"cert", "key", "chain", "not_before", "not_after", "subject_cn", "sans"};
not_before/not_after are integer Unix timestamps exactly equal to the
certificate's validity bounds (times are truncated to whole seconds).

Key files are written with mode 0600; the caller adjusts group/mode for the
daemons that need them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DAY = 86400
VALID_SANS = ["mx1.example.test", "imap.example.test", "localhost", "127.0.0.1"]


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _utc(ts: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mail-continuity-exporter tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _bound(cert: x509.Certificate, which: str) -> int:
    """notBefore/notAfter as a Unix timestamp (works with cryptography < 42 too)."""
    value = getattr(cert, f"not_valid_{which}_utc", None)
    if value is None:  # pragma: no cover - old cryptography
        value = getattr(cert, f"not_valid_{which}").replace(tzinfo=dt.UTC)
    return int(value.timestamp())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca(now: int) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _key()
    name = _name("MCE Test CA")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now - DAY))
        .not_valid_after(_utc(now + 3650 * DAY))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(
    cn: str,
    sans: list[str],
    not_before: int,
    not_after: int,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _key()
    subject = _name(cn)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(not_before))
        .not_valid_after(_utc(not_after))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(_san(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is None:
        cert = builder.issuer_name(subject).sign(key, hashes.SHA256())
    else:
        ca_cert, ca_key = issuer
        builder = builder.issuer_name(ca_cert.subject).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        cert = builder.sign(ca_key, hashes.SHA256())
    return cert, key


def generate(outdir: Path, now: int | None = None) -> dict[str, dict[str, object]]:
    outdir.mkdir(parents=True, exist_ok=True)
    now = int(time.time()) if now is None else now
    ca = make_ca(now)

    specs: dict[str, tuple[str, list[str], int, int, bool]] = {
        # name: (CN, SANs, notBefore, notAfter, issued_by_ca)
        "valid": ("mx1.example.test", VALID_SANS, now - 3600, now + 90 * DAY, True),
        "expired": ("mx1.example.test", VALID_SANS, now - 30 * DAY, now - DAY, True),
        "selfsigned": ("mx1.example.test", VALID_SANS, now - 3600, now + 90 * DAY, False),
        "wronghost": ("wrong.invalid", ["wrong.invalid"], now - 3600, now + 90 * DAY, True),
        "mtasts": ("mta-sts.sts.test", ["mta-sts.sts.test"], now - 3600, now + 90 * DAY, True),
    }

    result: dict[str, dict[str, object]] = {}
    ca_cert, ca_key = ca
    (outdir / "ca.pem").write_bytes(_pem(ca_cert))
    _write_key(outdir / "ca.key", ca_key)
    result["ca"] = {
        "cert": str(outdir / "ca.pem"),
        "key": str(outdir / "ca.key"),
        "chain": str(outdir / "ca.pem"),
        "not_before": _bound(ca_cert, "before"),
        "not_after": _bound(ca_cert, "after"),
        "subject_cn": "MCE Test CA",
        "sans": [],
    }

    for name, (cn, sans, nb, na, from_ca) in specs.items():
        cert, key = make_leaf(cn, sans, nb, na, ca if from_ca else None)
        cert_path = outdir / f"{name}.pem"
        key_path = outdir / f"{name}.key"
        chain_path = outdir / f"{name}-chain.pem"
        cert_path.write_bytes(_pem(cert))
        chain_path.write_bytes(_pem(cert) + (_pem(ca_cert) if from_ca else b""))
        _write_key(key_path, key)
        # Read the bounds back from the certificate so the recorded values are
        # exactly what a TLS client will see.
        result[name] = {
            "cert": str(cert_path),
            "key": str(key_path),
            "chain": str(chain_path),
            "not_before": _bound(cert, "before"),
            "not_after": _bound(cert, "after"),
            "subject_cn": cn,
            "sans": sans,
        }
        assert result[name]["not_after"] == na, (name, result[name]["not_after"], na)

    (outdir / "certs.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    result = generate(Path(argv[1]).resolve())
    json.dump(result, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
