"""``--web.config.file``: TLS and basic auth in the Prometheus exporter-toolkit format.

Operators run many exporters and copy one web config file between them, so the
file format is exporter-toolkit's (``tls_server_config``, ``http_server_config``,
``basic_auth_users``, ``rate_limit``), decoded as strictly as the main config by
:mod:`exporter.config.decode`: an unknown key is an error with its file, key path and line.
Paths are relative to the web config file's directory.

What Python's :mod:`ssl` cannot honour is accepted and logged, never silently
dropped: ``curve_preferences`` (OpenSSL's default groups are used), ``http2``
(aiohttp serves HTTP/1.1), ``RequestClientCert`` (no certificate is requested).
``RequireAnyClientCert`` needs a client CA here, because :mod:`ssl` verifies every
certificate it requires.

Rotation: the certificate, key and client CA files are checked (``stat``) at every
TLS handshake and the server context is rebuilt when they changed, so a renewed
certificate is served without a reload.  The whole file is re-read on SIGHUP and
``POST /-/reload``; a broken file, or one that changes a setting bound to the
listening socket (TLS on/off, client_auth_type, versions, cipher suites), is refused
and the previous settings stay in force.

Basic auth checks bcrypt hashes in a worker thread (a check costs ~70 ms at cost
10; on the event loop it would stall ``/metrics``), remembers verified
credentials by a SHA-256 of user, password and hash so a scrape does not pay
bcrypt every time, and spends the same bcrypt work on unknown users as on known
ones.
"""

from __future__ import annotations

__all__ = ["BasicAuth", "RateLimiter", "WebConfig", "WebSettings", "load_file"]

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import logging
import os
import re
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import bcrypt

from exporter.config.decode import Duration, decode, load_yaml
from exporter.core.errors import ConfigError, ConfigIssue
from exporter.core.secrets import Secret, register

log = logging.getLogger("exporter.web")

ClientAuth = Literal[
    "NoClientCert", "RequestClientCert", "RequireAnyClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"
]
TLSVersionName = Literal["TLS10", "TLS11", "TLS12", "TLS13"]

_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_VERIFY = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_NONE,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
#: Go crypto/tls cipher suite names (those of tls.CipherSuites()) -> OpenSSL names.
#: TLS 1.3 suites are accepted and, as in Go, not configurable.
_CIPHERS = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": "",
    "TLS_AES_256_GCM_SHA384": "",
    "TLS_CHACHA20_POLY1305_SHA256": "",
}
_CURVES = ("CurveP256", "CurveP384", "CurveP521", "X25519", "X25519MLKEM768")
_BCRYPT_RE = re.compile(r"^\$2[abxy]?\$(\d\d)\$[./A-Za-z0-9]{53}$")
_HEADER_CHOICES = {"X-Frame-Options": ("deny", "sameorigin"), "X-Content-Type-Options": ("nosniff",)}
#: Verified credentials remembered at most; the cache is emptied when full.
AUTH_CACHE_SIZE = 1024
#: bcrypt checks at once; more wait, so a flood of wrong passwords cannot take every core.
BCRYPT_CONCURRENCY = 2


# --- schema ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSServerConfig:
    cert_file: str = ""
    key_file: str = ""
    cert: str = ""  # inline PEM
    key: str = ""  # inline PEM; registered as a secret
    client_ca_file: str = ""
    client_ca: str = ""
    client_auth_type: ClientAuth = "NoClientCert"
    client_allowed_sans: tuple[str, ...] = ()
    min_version: TLSVersionName = "TLS12"
    max_version: TLSVersionName = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True
    curve_preferences: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file or self.cert or self.key_file or self.key)

    def validate(self) -> list[tuple[str, str]]:
        if self.key:
            register(self.key)
        out = _pair_errors(self)
        has_ca = bool(self.client_ca_file or self.client_ca)
        auth = self.client_auth_type
        if has_ca and auth in ("NoClientCert", "RequestClientCert"):
            out.append(
                (
                    "client_ca_file",
                    f"a client CA is set but client_auth_type is {auth}; "
                    "set client_auth_type: RequireAndVerifyClientCert",
                )
            )
        if not has_ca and _VERIFY[auth] != ssl.CERT_NONE:
            out.append(("client_auth_type", f"{auth} needs client_ca_file (or client_ca) to verify certificates"))
        if self.client_allowed_sans and auth not in ("RequireAnyClientCert", "RequireAndVerifyClientCert"):
            out.append(("client_allowed_sans", "needs client_auth_type RequireAndVerifyClientCert"))
        if _VERSIONS[self.min_version] > _VERSIONS[self.max_version]:
            out.append(("min_version", f"{self.min_version} is above max_version {self.max_version}"))
        for i, name in enumerate(self.cipher_suites):
            if name not in _CIPHERS:
                out.append(
                    (
                        f"cipher_suites[{i}]",
                        f"expected a Go crypto/tls cipher suite name like "
                        f'"TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", got "{name}"',
                    )
                )
        for i, name in enumerate(self.curve_preferences):
            if name not in _CURVES:
                out.append((f"curve_preferences[{i}]", "expected one of " + ", ".join(_CURVES) + f', got "{name}"'))
        return out


def _pair_errors(tls: TLSServerConfig) -> list[tuple[str, str]]:
    out = []
    for name in ("cert", "key", "client_ca"):
        if getattr(tls, name) and getattr(tls, f"{name}_file"):
            out.append((name, f"give either {name} or {name}_file, not both"))
    if tls.enabled and not (tls.cert or tls.cert_file):
        out.append(("cert_file", "missing: a key needs its certificate (cert_file or cert)"))
    if tls.enabled and not (tls.key or tls.key_file):
        out.append(("key_file", "missing: a certificate needs its key (key_file or key)"))
    if not tls.enabled and (tls.client_ca or tls.client_ca_file or tls.client_auth_type != "NoClientCert"):
        out.append(("cert_file", "missing: client certificates need TLS, and TLS needs cert_file and key_file"))
    return out


@dataclass(frozen=True)
class Headers:
    content_security_policy: str = field(default="", metadata={"key": "Content-Security-Policy"})
    x_frame_options: str = field(default="", metadata={"key": "X-Frame-Options"})
    x_content_type_options: str = field(default="", metadata={"key": "X-Content-Type-Options"})
    x_xss_protection: str = field(default="", metadata={"key": "X-XSS-Protection"})
    strict_transport_security: str = field(default="", metadata={"key": "Strict-Transport-Security"})

    def items(self) -> tuple[tuple[str, str], ...]:
        """(header, value) for every header that is set."""
        pairs = ((str(f.metadata["key"]), str(getattr(self, f.name))) for f in dataclasses.fields(self))
        return tuple((k, v) for k, v in pairs if v)

    def validate(self) -> list[tuple[str, str]]:
        out = []
        for key, value in self.items():
            choices = _HEADER_CHOICES.get(key)
            if choices and value.lower() not in choices:
                out.append((key, "expected " + " or ".join(choices) + f', got "{value}"'))
        return out


@dataclass(frozen=True)
class HTTPServerConfig:
    http2: bool | None = None  # accepted from exporter-toolkit files; aiohttp serves HTTP/1.1
    headers: Headers = field(default_factory=Headers)


@dataclass(frozen=True)
class RateLimitConfig:
    interval: Duration = 0.0
    burst: int = 0

    def validate(self) -> list[tuple[str, str]]:
        if self.interval < 0:
            return [("interval", "expected 0 (no limit) or a positive duration")]
        if self.interval > 0 and self.burst < 1:
            return [("burst", f"expected at least 1 when interval is set, got {self.burst}")]
        return []


@dataclass(frozen=True)
class WebConfig:
    tls_server_config: TLSServerConfig = field(default_factory=TLSServerConfig)
    http_server_config: HTTPServerConfig = field(default_factory=HTTPServerConfig)
    basic_auth_users: dict[str, Secret] = field(default_factory=dict)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)

    def validate(self) -> list[tuple[str, str]]:
        out = []
        for user, hashed in self.basic_auth_users.items():
            if not _BCRYPT_RE.match(hashed.reveal()):
                out.append(
                    (
                        f"basic_auth_users.{user}",
                        'expected a bcrypt hash like "$2y$10$..." (see '
                        "docs/security.md), got a value that is not shown (secret)",
                    )
                )
        return out


# --- loading ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    """A decoded web config, its TLS context (None without TLS) and what it could not honour."""

    path: str
    config: WebConfig
    context: ssl.SSLContext | None
    files: tuple[Path, ...]  # certificate, key and CA files, watched for rotation
    warnings: tuple[str, ...]


def load_file(path: str) -> Loaded:
    """Read, decode and check a web config file, and build its TLS context.

    Raises :class:`ConfigError` listing every issue (file, key path, expectation, line).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(path, "", f"cannot read file: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue(path, "", "expected UTF-8 text")]) from None
    data, lines = load_yaml(text, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(path, "", "expected a mapping at the top level")])
    cfg: WebConfig = decode(WebConfig, data, path, lines, p.parent)
    tls = cfg.tls_server_config
    files = _tls_files(tls, p.parent)
    context = _build_or_raise(tls, files, path, lines) if tls.enabled else None
    return Loaded(path, cfg, context, tuple(f for f in files.values() if f is not None), _warnings(cfg))


def _tls_files(tls: TLSServerConfig, base: Path) -> dict[str, Path | None]:
    def resolve(name: str) -> Path | None:
        return (base / name) if name else None

    return {
        "cert_file": resolve(tls.cert_file),
        "key_file": resolve(tls.key_file),
        "client_ca_file": resolve(tls.client_ca_file),
    }


def _build_or_raise(
    tls: TLSServerConfig, files: dict[str, Path | None], path: str, lines: dict[str, int]
) -> ssl.SSLContext:
    def issue(key: str, message: str) -> ConfigError:
        line = lines.get(key) or lines.get("tls_server_config") or 0
        return ConfigError([ConfigIssue(path, key, message + (f" (line {line})" if line else ""))])

    for key, file in files.items():
        if file is not None and not os.access(file, os.R_OK):
            reason = "no such file" if not file.exists() else "permission denied"
            raise issue(f"tls_server_config.{key}", f'cannot read "{file}": {reason}')
    try:
        return build_context(tls, files)
    except (ssl.SSLError, OSError, ValueError) as exc:
        key = "client_ca_file" if isinstance(exc, _CAError) else "cert_file"
        raise issue(f"tls_server_config.{key}", f"cannot load: {_ssl_reason(exc)}") from None


class _CAError(ValueError):
    pass


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{exc.reason.lower().replace('_', ' ')} ({exc.library or 'ssl'})"
    return str(exc.__cause__ or exc)


def build_context(tls: TLSServerConfig, files: Mapping[str, Path | None]) -> ssl.SSLContext:
    """A server SSLContext for ``tls``.  Raises ``ssl.SSLError``/``OSError``, or ``_CAError`` for the CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.maximum_version = _VERSIONS[tls.max_version]
    _load_chain(ctx, tls, files)
    ctx.verify_mode = _VERIFY[tls.client_auth_type]
    if ctx.verify_mode != ssl.CERT_NONE:
        try:
            ca_file = files.get("client_ca_file")
            ctx.load_verify_locations(cafile=ca_file, cadata=tls.client_ca or None)
        except (ssl.SSLError, OSError) as exc:
            raise _CAError(_ssl_reason(exc)) from exc
    suites = [_CIPHERS[name] for name in tls.cipher_suites if _CIPHERS[name]]
    if suites:
        ctx.set_ciphers(":".join(suites))
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    return ctx


def _load_chain(ctx: ssl.SSLContext, tls: TLSServerConfig, files: Mapping[str, Path | None]) -> None:
    """Load certificate and key from files or inline PEM (ssl only loads files: inline goes via a 0700 temp dir)."""
    if not (tls.cert or tls.key):
        ctx.load_cert_chain(files["cert_file"] or "", files["key_file"])
        return
    with tempfile.TemporaryDirectory(prefix="mce-tls-") as tmp:
        cert, key = files["cert_file"], files["key_file"]
        if tls.cert:
            cert = Path(tmp, "cert.pem")
            cert.write_text(tls.cert)
        if tls.key:
            key = Path(tmp, "key.pem")
            key.write_text(tls.key)
        ctx.load_cert_chain(cert or "", key)


def _warnings(cfg: WebConfig) -> tuple[str, ...]:
    tls = cfg.tls_server_config
    out = []
    if tls.curve_preferences:
        out.append(
            "tls_server_config.curve_preferences is not applied: Python's ssl cannot set the curve list; "
            "OpenSSL's default groups are used"
        )
    if tls.client_auth_type == "RequestClientCert":
        out.append(
            "tls_server_config.client_auth_type RequestClientCert: no client certificate is requested "
            "(an unverified certificate would not be used anyway)"
        )
    if cfg.http_server_config.http2:
        out.append("http_server_config.http2 is not applied: the exporter serves HTTP/1.1")
    return tuple(out)


# --- runtime --------------------------------------------------------------------------------------------


class BasicAuth:
    """bcrypt basic auth with a cache of verified credentials."""

    def __init__(self, users: Mapping[str, Secret]) -> None:
        self._users = {user: hashed.reveal().encode() for user, hashed in users.items()}
        self._verified: set[bytes] = set()
        self._gate = asyncio.Semaphore(BCRYPT_CONCURRENCY)
        cost = 10
        for hashed in self._users.values():
            match = _BCRYPT_RE.match(hashed.decode())
            cost = int(match.group(1)) if match else cost
            break
        # Unknown users are checked against this hash, so they cost the same bcrypt work.
        self._dummy = bcrypt.hashpw(b"unknown user", bcrypt.gensalt(rounds=cost)) if self._users else b""

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    async def check(self, authorization: str | None) -> bool:
        """True when the ``Authorization`` header carries a configured user and its password."""
        creds = _parse_basic(authorization)
        if creds is None:
            return False
        user, password = creds
        hashed = self._users.get(user)
        target = hashed if hashed is not None else self._dummy
        key = hashlib.sha256(b"\0".join((user.encode(), password, target))).digest()
        if hashed is not None and key in self._verified:
            return True
        async with self._gate:
            # bcrypt looks at 72 bytes at most (as htpasswd and Go do); bcrypt 5 refuses longer input.
            ok = await asyncio.to_thread(bcrypt.checkpw, password[:72], target)
        if not ok or hashed is None:
            return False
        if len(self._verified) >= AUTH_CACHE_SIZE:
            self._verified.clear()
        self._verified.add(key)
        return True


def _parse_basic(header: str | None) -> tuple[str, bytes] | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    return user.decode("utf-8", "replace"), password


class RateLimiter:
    """A token bucket: ``burst`` requests at once, then one per ``interval``.  Disabled at interval 0."""

    def __init__(self, interval: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def allow(self) -> bool:
        if self.interval <= 0:
            return True
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) / self.interval)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def _listener_bound(tls: TLSServerConfig) -> dict[str, object]:
    """Settings the listening socket's SSL context fixes: changing them needs a restart."""
    return {
        "tls_server_config": tls.enabled,
        "tls_server_config.client_auth_type": tls.client_auth_type,
        "tls_server_config.min_version": tls.min_version,
        "tls_server_config.max_version": tls.max_version,
        "tls_server_config.cipher_suites": tls.cipher_suites,
        "tls_server_config.prefer_server_cipher_suites": tls.prefer_server_cipher_suites,
    }


class WebSettings:
    """The web config in force: TLS contexts (rotated on file change), basic auth, headers, rate limit.

    Without a file, nothing is required: plain HTTP, no auth.
    """

    def __init__(self, path: str | None = None, healthy_without_auth: bool = False) -> None:
        self.path = path
        self.healthy_without_auth = healthy_without_auth
        self.loaded = load_file(path) if path else None
        self._apply(self.loaded)
        self._listener: ssl.SSLContext | None = None

    def _apply(self, loaded: Loaded | None) -> None:
        cfg = loaded.config if loaded else WebConfig()
        for warning in loaded.warnings if loaded else ():
            log.warning(warning, extra={"kv": {"file": loaded.path if loaded else ""}})
        self.auth = BasicAuth(cfg.basic_auth_users)
        self.headers = tuple(cfg.http_server_config.headers.items())
        self.limiter = RateLimiter(cfg.rate_limit.interval, cfg.rate_limit.burst)
        self._context = loaded.context if loaded else None
        self._stamp = self._file_stamp()
        self._failed_stamp: tuple[tuple[int, int, int], ...] | None = None

    @property
    def config(self) -> WebConfig:
        return self.loaded.config if self.loaded else WebConfig()

    def reload(self) -> tuple[bool, str]:
        """Read the file again and apply it; on any error keep the current settings.  Returns (ok, error)."""
        if not self.path:
            return True, ""
        try:
            loaded = load_file(self.path)
        except ConfigError as exc:
            return self._reload_failed(str(exc))
        old, new = _listener_bound(self.config.tls_server_config), _listener_bound(loaded.config.tls_server_config)
        changed = [key for key in old if old[key] != new[key]]
        if changed:
            issues = [
                ConfigIssue(
                    self.path,
                    key,
                    "changed; this setting is bound to the listening socket, restart the exporter to apply it",
                )
                for key in changed
            ]
            return self._reload_failed(str(ConfigError(issues)))
        self.loaded = loaded
        self._apply(loaded)
        log.info("web configuration reloaded", extra={"kv": {"file": self.path}})
        return True, ""

    def _reload_failed(self, message: str) -> tuple[bool, str]:
        log.error("web configuration reload failed; keeping the previous one", extra={"kv": {"err": message}})
        return False, message

    # --- TLS ---------------------------------------------------------------------------------------------

    def listener_context(self) -> ssl.SSLContext | None:
        """The context to listen with (None: plain HTTP).  Each handshake switches to the current context."""
        if self._context is None:
            return None
        if self._listener is None:
            self._listener = self._context
            self._listener.sni_callback = self._on_hello
        return self._listener

    def _on_hello(self, sock: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, ctx: ssl.SSLContext) -> None:
        current = self.current_context()
        if current is not None and current is not sock.context:
            sock.context = current

    def current_context(self) -> ssl.SSLContext | None:
        """The TLS context, rebuilt first when the certificate, key or CA files changed on disk."""
        stamp = self._file_stamp()
        if stamp not in (self._stamp, self._failed_stamp) and self.loaded is not None:
            tls = self.loaded.config.tls_server_config
            try:
                self._context = build_context(tls, _tls_files(tls, Path(self.loaded.path).parent))
            except (ssl.SSLError, OSError, ValueError) as exc:
                self._failed_stamp = stamp
                log.error(
                    "TLS files changed but cannot be loaded; serving the previous certificate",
                    extra={"kv": {"file": self.loaded.path, "err": _ssl_reason(exc)}},
                )
            else:
                self._stamp = stamp
                log.info("TLS certificate files changed; new handshakes use them", extra={"kv": {"file": self.path}})
        return self._context

    def _file_stamp(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for file in self.loaded.files if self.loaded else ():
            try:
                st = file.stat()
            except OSError:
                out.append((0, 0, 0))
            else:
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    # --- client certificates --------------------------------------------------------------------------------

    def san_allowed(self, peer_der: bytes | None) -> bool:
        """True unless ``client_allowed_sans`` is set and the client certificate has none of them."""
        allowed = self.config.tls_server_config.client_allowed_sans
        if not allowed:
            return True
        if not peer_der:
            return False
        return not set(allowed).isdisjoint(_sans(peer_der))


def _sans(der: bytes) -> set[str]:
    from cryptography import x509

    try:
        ext = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (ValueError, x509.ExtensionNotFound):
        return set()
    return {str(name.value) for name in ext.value}
