"""The configuration schema: typed, frozen dataclasses, decoded strictly from YAML.

Defaults live on the dataclasses; :mod:`exporter.config.decode` rejects unknown keys and
reports every error with its key path; each ``validate`` method adds the
cross-field rules.  ``docs/configuration.md`` documents every key here, and
``tests/test_config_docs.py`` keeps the two in step.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_CONFIG_YAML",
    "Config",
    "load",
    "load_text",
    "parse_allow_target",
    "split_address",
    "split_target",
]

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from exporter.config.decode import Duration, Renamed, decode, load_yaml
from exporter.core.errors import ConfigError, ConfigIssue
from exporter.core.secrets import Secret

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9])?\.?$")

# One TLS vocabulary in every section: ``tls`` is the mode, ``tls_config`` the TLSSettings.
SmtpTLS = Literal["starttls", "optional", "implicit", "none"]
MxTLS = Literal["starttls", "optional", "none"]  # an MX host offers STARTTLS, never implicit TLS
ImapTLS = Literal["starttls", "implicit", "none"]


def _check_name(name: str) -> list[tuple[str, str]]:
    if not _NAME_RE.match(name):
        return [("name", f'expected a short name of letters, digits and "_.:-", got "{name}"')]
    return []


def split_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port``.  Raises ``ValueError``."""
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
        if not sep:
            raise ValueError(address)
    else:
        host, sep, port = address.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(address)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(address)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST_RE.match(host):
            raise ValueError(address) from None
    return host, int(port)


_TARGET_RE = re.compile(r"^([A-Za-z0-9_.-]+)\[([0-9A-Fa-f:.]+)\]:(\d{1,5})$")


def split_target(target: str) -> tuple[str, int, str | None]:
    """Split a probe target into (address to connect to, port, name to verify).

    Accepts ``host:port``, ``[v6]:port`` and Postfix's ``name[address]:port``, which
    connects to ``address`` and checks the certificate against ``name`` (how MX
    probes address each IP of an MX host).  Raises ``ValueError``.
    """
    m = _TARGET_RE.match(target)
    if m:
        name, address, port = m.groups()
        ipaddress.ip_address(address)
        if not 0 < int(port) < 65536:
            raise ValueError(target)
        return address, int(port), name
    host, port_n = split_address(target)
    return host, port_n, None


def _check_address(key: str, address: str) -> list[tuple[str, str]]:
    try:
        split_address(address)
    except ValueError:
        return [(key, f'expected host:port like "mail.example.com:25" or "[::1]:25", got "{address}"')]
    return []


# --- global -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolverConfig:
    """The DNS resolver used for MX discovery, DNS posture and DNSBL lookups."""

    nameservers: tuple[str, ...] = ()  # empty: the system resolver (/etc/resolv.conf)
    port: int = 53
    timeout: Duration = 5.0

    def validate(self) -> list[tuple[str, str]]:
        out = []
        for i, ns in enumerate(self.nameservers):
            try:
                ipaddress.ip_address(ns)
            except ValueError:
                out.append((f"nameservers[{i}]", f'expected an IP address, got "{ns}"'))
        if not 0 < self.port < 65536:
            out.append(("port", f"expected a port between 1 and 65535, got {self.port}"))
        return out


@dataclass(frozen=True)
class GlobalConfig:
    interval: Duration = 60.0
    timeout: Duration = 10.0
    jitter: float = 0.1
    max_concurrency: int = 64
    resolver: ResolverConfig = field(default_factory=ResolverConfig)

    def validate(self) -> list[tuple[str, str]]:
        out = []
        if self.interval <= 0:
            out.append(("interval", "expected a positive duration"))
        if self.timeout <= 0:
            out.append(("timeout", "expected a positive duration"))
        if not 0 <= self.jitter <= 0.5:
            out.append(("jitter", f"expected a fraction between 0 and 0.5, got {self.jitter}"))
        if self.max_concurrency < 1:
            out.append(("max_concurrency", f"expected at least 1, got {self.max_concurrency}"))
        return out


# --- TLS and auth -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSSettings:
    """How a probe judges the server's certificate."""

    #: True: an invalid certificate fails the probe (reason "tls"); False: the probe goes on.
    #: Unset (None): True for endpoints and routes; for MX hosts, the domain's published
    #: transport policy decides (DANE, MTA-STS, else opportunistic).  Metrics are kept either way.
    verify: bool | None = None
    ca_file: str | None = None  # trust these CAs instead of the system store
    server_name: str | None = None  # name to verify and send as SNI; default: the target host name
    min_version: Literal["TLS1.0", "TLS1.1", "TLS1.2", "TLS1.3"] | None = None

    @property
    def verifies(self) -> bool:
        """Whether an invalid certificate fails a probe: ``verify``, true when unset."""
        return self.verify is not False


@dataclass(frozen=True)
class BasicAuthConfig:
    """HTTP basic authentication credentials (``webhook.basic_auth``)."""

    username: str
    password: Secret

    def __repr__(self) -> str:
        return f"BasicAuthConfig(username={self.username!r}, password=<redacted>)"


#: SASL mechanisms a probe may be told to use; "auto" picks from what the server offers.
Mechanism = Literal["auto", "PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"]
#: Default scopes per OAuth2 provider (app-only IMAP/SMTP access).
OAUTH2_SCOPES = {"microsoft": "https://outlook.office365.com/.default", "google": "https://mail.google.com/"}
MICROSOFT_AUTHORITY = "https://login.microsoftonline.com"


@dataclass(frozen=True)
class OAuth2Certificate:
    """A certificate credential of a Microsoft Entra app registration (instead of a client secret)."""

    private_key: Secret  # PEM; usually private_key_file
    certificate_file: str  # the public certificate (PEM) uploaded to the app registration

    def __repr__(self) -> str:
        return f"OAuth2Certificate(certificate_file={self.certificate_file!r}, private_key=<redacted>)"


@dataclass(frozen=True)
class OAuth2Config:
    """Where a probe gets its OAuth2 access token (see docs/hosted.md)."""

    provider: Literal["microsoft", "google", "generic"]
    #: microsoft: the directory (tenant) id or domain; generic: unused.
    tenant_id: str | None = None
    #: microsoft, generic: the application (client) id.
    client_id: str | None = None
    client_secret: Secret | None = None
    #: microsoft: a certificate instead of client_secret.
    certificate: OAuth2Certificate | None = None
    #: microsoft: the authority host (sovereign clouds: https://login.microsoftonline.us ...).
    authority: str = MICROSOFT_AUTHORITY
    #: google: the service account's JSON key (usually service_account_file).
    service_account: Secret | None = None
    #: google: the mailbox the service account acts as (domain-wide delegation); default: the username.
    subject: str | None = None
    #: generic: the token endpoint; google: overrides the key file's token_uri.
    token_url: str | None = None
    #: generic: use the refresh-token grant with this token instead of client credentials.
    refresh_token: Secret | None = None
    #: generic: how the client authenticates at the token endpoint.
    client_auth: Literal["basic", "post"] = "basic"
    #: Default: https://outlook.office365.com/.default (microsoft), https://mail.google.com/ (google).
    scope: str | None = None
    #: Trust these CAs for the token endpoint instead of the system store.
    ca_file: str | None = None
    timeout: Duration = 10.0

    @property
    def scopes(self) -> tuple[str, ...]:
        scope = self.scope if self.scope is not None else OAUTH2_SCOPES.get(self.provider, "")
        return tuple(scope.split())

    def validate(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        p = self.provider
        if p == "microsoft":
            if not self.tenant_id:
                out.append(("tenant_id", "expected the directory (tenant) id of the app registration"))
            if not self.client_id:
                out.append(("client_id", "expected the application (client) id"))
            if (self.client_secret is None) == (self.certificate is None):
                out.append(("client_secret", "expected exactly one of client_secret and certificate"))
            if not re.match(r"^https://[^/\s]+/?$", self.authority):
                out.append(("authority", f'expected a URL like "{MICROSOFT_AUTHORITY}", got "{self.authority}"'))
        elif p == "google":
            if self.service_account is None:
                out.append(("service_account", "expected the service account's JSON key (service_account_file)"))
        else:
            if not self.token_url:
                out.append(("token_url", "expected the token endpoint's URL"))
            if not self.client_id:
                out.append(("client_id", "expected the client id"))
            if self.client_secret is None and self.refresh_token is None:
                out.append(("client_secret", "expected client_secret (client credentials) or refresh_token"))
        if self.token_url is not None and not re.match(r"^https://[^/\s]+(/\S*)?$", self.token_url):
            out.append(("token_url", f'expected an https:// URL, got "{self.token_url}"'))
        extra = {
            "microsoft": ("service_account", "subject", "refresh_token", "token_url"),
            "google": ("client_secret", "certificate", "refresh_token", "tenant_id"),
            "generic": ("certificate", "service_account", "subject", "tenant_id"),
        }[p]
        for key in extra:
            if getattr(self, key) is not None:
                out.append((key, f"not used by provider {p}"))
        if self.timeout <= 0:
            out.append(("timeout", "expected a positive duration"))
        return out


def _check_credentials(password: Secret | None, oauth2: OAuth2Config | None, mechanism: str) -> list[tuple[str, str]]:
    if (password is None) == (oauth2 is None):
        return [("password", "expected exactly one of password and oauth2")]
    if oauth2 is not None and mechanism in ("PLAIN", "LOGIN"):
        return [("mechanism", f"{mechanism} sends a password; with oauth2 use XOAUTH2, OAUTHBEARER or auto")]
    if password is not None and mechanism in ("XOAUTH2", "OAUTHBEARER"):
        return [("mechanism", f"{mechanism} needs oauth2 credentials, not a password")]
    return []


@dataclass(frozen=True)
class AuthConfig:
    username: str
    password: Secret | None = None
    oauth2: OAuth2Config | None = None
    mechanism: Mechanism = "auto"

    def validate(self) -> list[tuple[str, str]]:
        return _check_credentials(self.password, self.oauth2, self.mechanism)

    def __repr__(self) -> str:
        return f"AuthConfig(username={self.username!r}, mechanism={self.mechanism!r}, <credentials redacted>)"


# --- domains (MX discovery, DNS posture, DNSBL) -------------------------------------------------


@dataclass(frozen=True)
class SmtpSettings:
    port: int = 25
    tls: MxTLS = "optional"
    helo: str = "mail-continuity-exporter.invalid"
    tls_config: TLSSettings = field(default_factory=TLSSettings)
    timeout: Duration | None = None

    #: The spellings from before one TLS vocabulary: refused with the new key, never aliased.
    RENAMED: ClassVar[tuple[Renamed, ...]] = (
        Renamed("starttls", 'use "tls: starttls | optional | none" (and "tls_config:" for the settings)'),
        Renamed(
            "tls", 'use "tls_config:" for the TLS settings ("tls:" is the mode: starttls | optional | none)', shape=dict
        ),
        Renamed("tls", 'use "tls: starttls" (the mode "required" is now "starttls")', values=("required",)),
    )


@dataclass(frozen=True)
class MtaStsSettings:
    """How the MTA-STS policy of a domain is fetched and cached (RFC 8461)."""

    #: Refetch at least this often, even when the TXT id and max_age would allow the cache
    #: (so that an unreachable policy host is seen within this time).
    refresh: Duration = 3600.0
    timeout: Duration = 10.0
    #: Trust these CAs for the policy host instead of the system store (tests, private PKI).
    ca_file: str | None = None
    #: RFC 8461 fixes 443; another port is for test stacks only.
    port: int = 443

    def validate(self) -> list[tuple[str, str]]:
        out = []
        if self.refresh <= 0:
            out.append(("refresh", f"expected a positive duration, got {self.refresh:g}s"))
        if self.timeout <= 0:
            out.append(("timeout", f"expected a positive duration, got {self.timeout:g}s"))
        if not 1 <= self.port <= 65535:
            out.append(("port", f"expected 1 to 65535, got {self.port}"))
        return out


@dataclass(frozen=True)
class DnsPosture:
    mx: bool = True
    spf: bool = True
    dmarc: bool = True
    mta_sts: bool = False
    mta_sts_fetch_policy: bool = False
    tls_rpt: bool = False
    dkim_selectors: tuple[str, ...] = ()


@dataclass(frozen=True)
class DomainConfig:
    domain: str
    min_healthy_mx: int = 1
    interval: Duration | None = None
    timeout: Duration | None = None
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    dns: DnsPosture = field(default_factory=DnsPosture)
    mta_sts: MtaStsSettings = field(default_factory=MtaStsSettings)
    dnsbl: tuple[str, ...] = ()
    sending_ips: tuple[str, ...] = ()
    max_mx_addresses: int = 16

    def validate(self) -> list[tuple[str, str]]:
        out = []
        if not _HOST_RE.match(self.domain) or "." not in self.domain.strip("."):
            out.append(("domain", f'expected a domain name like "example.com", got "{self.domain}"'))
        if self.min_healthy_mx < 0:
            out.append(("min_healthy_mx", f"expected 0 or more, got {self.min_healthy_mx}"))
        if not 1 <= self.max_mx_addresses <= 256:
            out.append(("max_mx_addresses", f"expected 1 to 256, got {self.max_mx_addresses}"))
        for i, ip in enumerate(self.sending_ips):
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                out.append((f"sending_ips[{i}]", f'expected an IP address, got "{ip}"'))
        return out


# --- named endpoints --------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointConfig:
    name: str
    protocol: Literal["smtp", "imap"]
    address: str
    tls: SmtpTLS = "starttls"
    tls_config: TLSSettings = field(default_factory=TLSSettings)
    helo: str = "mail-continuity-exporter.invalid"
    auth: AuthConfig | None = None
    select: str | None = None  # IMAP: mailbox to SELECT after login
    interval: Duration | None = None
    timeout: Duration | None = None

    def validate(self) -> list[tuple[str, str]]:
        out = _check_name(self.name) + _check_address("address", self.address)
        if self.protocol == "imap" and self.tls == "optional":
            out.append(("tls", 'expected one of "starttls", "implicit", "none" for IMAP, got "optional"'))
        if self.select is not None and self.protocol != "imap":
            out.append(("select", "only valid for protocol imap"))
        if self.select is not None and self.auth is None:
            out.append(("select", "needs auth (SELECT requires a login)"))
        return out


# --- queues -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostfixQueue:
    name: str
    type: Literal["postfix"]
    config_directory: str | None = None  # postconf -c DIR; default: Postfix's default
    reader: Literal["auto", "showq", "spool", "postqueue"] = "auto"
    top_destinations: int = 10
    interval: Duration | None = None
    timeout: Duration | None = None

    def validate(self) -> list[tuple[str, str]]:
        out = _check_name(self.name)
        if not 0 <= self.top_destinations <= 100:
            out.append(("top_destinations", f"expected 0 to 100, got {self.top_destinations}"))
        return out


@dataclass(frozen=True)
class EximQueue:
    name: str
    type: Literal["exim"]
    spool_directory: str = "/var/spool/exim4"
    exim_binary: str | None = None  # set to cross-check with `exim -bpc`
    header_time_budget: Duration = 2.0
    interval: Duration | None = None
    timeout: Duration | None = None

    def validate(self) -> list[tuple[str, str]]:
        return _check_name(self.name)


@dataclass(frozen=True)
class DirectoryQueue:
    name: str
    type: Literal["directory"]
    path: str
    pattern: str = "*"
    queue: str = "queue"
    interval: Duration | None = None
    timeout: Duration | None = None

    def validate(self) -> list[tuple[str, str]]:
        return _check_name(self.name)


@dataclass(frozen=True)
class CommandQueue:
    name: str
    type: Literal["command"]
    command: tuple[str, ...]
    queue: str = "queue"
    interval: Duration | None = None
    timeout: Duration | None = None

    def validate(self) -> list[tuple[str, str]]:
        out = _check_name(self.name)
        if not self.command:
            out.append(("command", 'expected a non-empty argv list like ["/usr/bin/qcount", "-n"]'))
        return out


QueueConfig = PostfixQueue | EximQueue | DirectoryQueue | CommandQueue


# --- logs (real mail flow) ------------------------------------------------------------------------

LogParser = Literal["postfix", "exim", "dovecot"]


@dataclass(frozen=True)
class _LogCommon:
    """Keys every log source has (docs/logs.md)."""

    def _common(self) -> list[tuple[str, str]]:
        out = _check_name(getattr(self, "name", ""))
        parsers = getattr(self, "parsers", ())
        if not parsers:
            out.append(("parsers", "expected at least one of postfix, exim, dovecot"))
        if len(set(parsers)) != len(parsers):
            out.append(("parsers", "a parser is listed twice"))
        top = getattr(self, "top_domains", 0)
        if not 0 <= top <= 100:
            out.append(("top_domains", f"expected 0 to 100, got {top}"))
        if len(getattr(self, "domains", ())) > 100:
            out.append(("domains", "expected at most 100 domains"))
        if not 1_000 <= getattr(self, "max_lines_per_run", 1_000) <= 10_000_000:
            out.append(("max_lines_per_run", "expected 1000 to 10000000"))
        return out


@dataclass(frozen=True)
class FileLog(_LogCommon):
    """A log file followed like ``tail -F`` (rename and copytruncate rotation)."""

    name: str
    type: Literal["file"]
    path: str
    parsers: tuple[LogParser, ...] = ("postfix", "dovecot")
    start_at: Literal["end", "beginning"] = "end"  # where a file never read before starts
    top_domains: int = 0
    domains: tuple[str, ...] = ()
    max_lines_per_run: int = 500_000
    interval: Duration = 10.0

    def validate(self) -> list[tuple[str, str]]:
        out = self._common()
        if not self.path:
            out.append(("path", "expected the path of a log file"))
        return out


@dataclass(frozen=True)
class JournalLog(_LogCommon):
    """The systemd journal, read with ``journalctl -o json`` after the saved cursor."""

    name: str
    type: Literal["journal"]
    units: tuple[str, ...] = ()  # systemd units (journalctl -u)
    identifiers: tuple[str, ...] = ()  # syslog identifiers (journalctl -t), e.g. postfix/smtpd
    directory: str | None = None  # journalctl -D (a journal directory; default: the system journal)
    files: tuple[str, ...] = ()  # journalctl --file (journal files, e.g. for tests)
    journalctl: str = "journalctl"
    parsers: tuple[LogParser, ...] = ("postfix", "dovecot")
    start_at: Literal["end", "beginning"] = "end"
    top_domains: int = 0
    domains: tuple[str, ...] = ()
    max_lines_per_run: int = 500_000
    interval: Duration = 10.0
    timeout: Duration = 30.0

    def validate(self) -> list[tuple[str, str]]:
        out = self._common()
        if self.directory and self.files:
            out.append(("files", "give directory or files, not both"))
        return out


@dataclass(frozen=True)
class SyslogLog(_LogCommon):
    """A syslog receiver (RFC 3164 and RFC 5424, UDP or TCP), bound to loopback by default."""

    name: str
    type: Literal["syslog"]
    listen: str = "127.0.0.1:5514"
    protocol: Literal["udp", "tcp"] = "udp"
    parsers: tuple[LogParser, ...] = ("postfix", "dovecot")
    top_domains: int = 0
    domains: tuple[str, ...] = ()
    max_lines_per_run: int = 500_000
    buffer_lines: int = 100_000  # lines held between runs; beyond it they are dropped and counted
    interval: Duration = 10.0

    def validate(self) -> list[tuple[str, str]]:
        out = self._common()
        out.extend(_check_address("listen", self.listen))
        if not 1_000 <= self.buffer_lines <= 10_000_000:
            out.append(("buffer_lines", "expected 1000 to 10000000"))
        return out


LogConfig = FileLog | JournalLog | SyslogLog


# --- routes (end-to-end probes) ----------------------------------------------------------------


@dataclass(frozen=True)
class SendConfig:
    address: str
    tls: SmtpTLS = "starttls"
    tls_config: TLSSettings = field(default_factory=TLSSettings)
    helo: str = "mail-continuity-exporter.invalid"
    auth: AuthConfig | None = None
    mail_from: str = field(default="", metadata={"key": "from"})
    #: MAIL FROM, where bounces of probes go: an address, or "<>" for none.  Default: ``from``.
    envelope_from: str | None = None
    rcpt_to: str = field(default="", metadata={"key": "to"})
    headers: dict[str, str] = field(default_factory=dict)  # extra headers on every probe message

    @property
    def envelope_sender(self) -> str:
        """The MAIL FROM address: ``envelope_from`` ("" for the null sender ``<>``), else ``from``."""
        if self.envelope_from is None:
            return self.mail_from
        return "" if self.envelope_from == "<>" else self.envelope_from

    def validate(self) -> list[tuple[str, str]]:
        out = _check_address("address", self.address)
        for name in self.headers:
            if not re.match(r"^[A-Za-z0-9-]{1,64}$", name):
                out.append((f"headers.{name}", "expected a header name of letters, digits and dashes"))
        if "@" not in self.mail_from:
            out.append(("from", f'expected an address like "probe@example.com", got "{self.mail_from}"'))
        if self.envelope_from is not None and self.envelope_from != "<>" and "@" not in self.envelope_from:
            out.append(("envelope_from", f'expected an address, or "<>" for no bounces, got "{self.envelope_from}"'))
        if "@" not in self.rcpt_to:
            out.append(("to", f'expected an address like "probe@example.com", got "{self.rcpt_to}"'))
        return out


@dataclass(frozen=True)
class ReceiveConfig:
    address: str
    username: str
    password: Secret | None = None
    oauth2: OAuth2Config | None = None
    mechanism: Mechanism = "auto"
    tls: ImapTLS = "implicit"
    tls_config: TLSSettings = field(default_factory=TLSSettings)
    folders: tuple[str, ...] = ("INBOX",)
    junk_folders: tuple[str, ...] = ("Junk",)
    idle: bool = True
    idle_recheck: bool = True  # with IDLE, also search again while a probe is pending (see docs/roundtrip.md)
    poll_interval: Duration = 5.0
    keep_messages: bool = False
    #: The receiving domain's authserv-id: only Authentication-Results fields that carry it
    #: are read (``mx.google.com``; "" for Microsoft 365, whose field has none).  Unset: no
    #: authentication verdict.
    authserv_id: str | None = None

    def validate(self) -> list[tuple[str, str]]:
        out = _check_address("address", self.address)
        out.extend(_check_credentials(self.password, self.oauth2, self.mechanism))
        if not self.folders:
            out.append(("folders", "expected at least one folder"))
        aid = self.authserv_id
        if aid is not None and (len(aid) > 255 or not re.fullmatch(r"[!#-'*+\-.0-9A-Z^-~]*", aid)):
            out.append(
                (
                    "authserv_id",
                    f'expected the receiver\'s authserv-id, a token like "mx.google.com" (or "" for none), got {aid!r}',
                )
            )
        return out

    @property
    def auth(self) -> AuthConfig:
        """The mailbox's credentials as an :class:`AuthConfig`."""
        return AuthConfig(self.username, self.password, self.oauth2, self.mechanism)


@dataclass(frozen=True)
class RouteConfig:
    name: str
    send: SendConfig
    receive: ReceiveConfig
    interval: Duration = 60.0
    timeout: Duration = 300.0
    max_age: Duration = 3600.0

    def validate(self) -> list[tuple[str, str]]:
        out = _check_name(self.name)
        if self.max_age < self.timeout:
            out.append(("max_age", "expected max_age to be at least the timeout"))
        return out


# --- continuity ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    incident_match: dict[str, str] = field(default_factory=dict)
    availability_target: float = 0.999
    rto_target: Duration | None = None
    mttr_target: Duration | None = None
    check_outages: tuple[str, ...] = ()  # check names whose outages open incidents
    check_outage_threshold: int = 3

    def validate(self) -> list[tuple[str, str]]:
        out = _check_name(self.name)
        if not 0 < self.availability_target < 1:
            out.append(("availability_target", f"expected a ratio like 0.999, got {self.availability_target}"))
        if self.check_outage_threshold < 1:
            out.append(("check_outage_threshold", f"expected at least 1, got {self.check_outage_threshold}"))
        return out


@dataclass(frozen=True)
class FileMtimeBackup:
    type: Literal["file_mtime"]
    path: str
    name: str = ""
    max_age: Duration = 86400.0


@dataclass(frozen=True)
class TimestampFileBackup:
    type: Literal["timestamp_file"]
    path: str
    name: str = ""
    max_age: Duration = 86400.0


@dataclass(frozen=True)
class CommandBackup:
    type: Literal["command"]
    command: tuple[str, ...]
    name: str = ""
    max_age: Duration = 86400.0
    timeout: Duration = 30.0


BackupConfig = FileMtimeBackup | TimestampFileBackup | CommandBackup


@dataclass(frozen=True)
class ImapEndpoint:
    address: str
    username: str
    password: Secret | None = None
    oauth2: OAuth2Config | None = None
    mechanism: Mechanism = "auto"
    tls: ImapTLS = "implicit"
    tls_config: TLSSettings = field(default_factory=TLSSettings)
    folder: str = "INBOX"

    def validate(self) -> list[tuple[str, str]]:
        return _check_address("address", self.address) + _check_credentials(self.password, self.oauth2, self.mechanism)

    @property
    def auth(self) -> AuthConfig:
        return AuthConfig(self.username, self.password, self.oauth2, self.mechanism)


@dataclass(frozen=True)
class ImapCanaryReplica:
    type: Literal["imap_canary"]
    primary: ImapEndpoint
    replica: ImapEndpoint
    name: str = ""
    interval: Duration = 60.0
    timeout: Duration = 600.0
    poll_interval: Duration = 1.0


@dataclass(frozen=True)
class CommandReplica:
    type: Literal["command"]
    command: tuple[str, ...]
    name: str = ""
    interval: Duration = 60.0
    timeout: Duration = 30.0


ReplicaConfig = ImapCanaryReplica | CommandReplica


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    rpo_target: Duration | None = None
    backups: tuple[BackupConfig, ...] = ()
    replicas: tuple[ReplicaConfig, ...] = ()

    def validate(self) -> list[tuple[str, str]]:
        return _check_name(self.name)


@dataclass(frozen=True)
class MaintenanceWindow:
    service: str
    start: str
    end: str

    def validate(self) -> list[tuple[str, str]]:
        from exporter.core.timefmt import parse_time

        out: list[tuple[str, str]] = []
        times: dict[str, int] = {}
        for key in ("start", "end"):
            value = getattr(self, key)
            try:
                ns = parse_time(value)
            except ValueError:
                ns = None
            if ns is None:
                out.append((key, f'expected an RFC 3339 time like "2030-01-05T22:00:00Z", got "{value}"'))
            else:
                times[key] = ns
        if len(times) == 2 and times["end"] <= times["start"]:
            out.append(("end", "expected a time after start"))
        return out


@dataclass(frozen=True)
class StoreConfig:
    """Where incidents are kept: SQLite under ``--storage.path`` (default), or PostgreSQL."""

    #: ``postgresql://user@host:port/dbname`` (libpq URL; the password may be in it, or come
    #: from PGPASSWORD / PGPASSFILE).  Unset: the SQLite file under ``--storage.path``.
    url: Secret | None = None
    #: How long the lease for the once-only jobs lasts without renewal (PostgreSQL store only):
    #: the holder renews it every third of this; a standby takes it over at most this long
    #: (plus a second) after the holder died.
    lease_ttl: Duration = 6.0

    def validate(self) -> list[tuple[str, str]]:
        out = []
        if self.url is not None and not self.url.reveal().startswith(("postgresql://", "postgres://")):
            out.append(("url", "expected a postgresql:// URL (unset: the SQLite store under --storage.path)"))
        if not 2.0 <= self.lease_ttl <= 300.0:
            out.append(("lease_ttl", f"expected a duration from 2s to 5m, got {self.lease_ttl:g}s"))
        return out


@dataclass(frozen=True)
class ReconcileConfig:
    alertmanager_url: str | None = None
    interval: Duration = 300.0

    def validate(self) -> list[tuple[str, str]]:
        out = []
        url = self.alertmanager_url
        if url is not None and not re.match(r"^https?://[^/\s]+(/\S*)?$", url):
            out.append(("alertmanager_url", f'expected a URL like "http://alertmanager:9093", got "{url}"'))
        if self.interval <= 0:
            out.append(("interval", "expected a positive duration"))
        return out


@dataclass(frozen=True)
class ContinuityConfig:
    services: tuple[ServiceConfig, ...] = ()
    datasets: tuple[DatasetConfig, ...] = ()
    maintenance: tuple[MaintenanceWindow, ...] = ()
    reconcile: ReconcileConfig = field(default_factory=ReconcileConfig)
    store: StoreConfig = field(default_factory=StoreConfig)

    def validate(self) -> list[tuple[str, str]]:
        out = []
        for section in ("services", "datasets"):
            seen: dict[str, int] = {}
            for i, item in enumerate(getattr(self, section)):
                if item.name in seen:
                    out.append((f"{section}[{i}]", f'duplicate name "{item.name}" (also {section}[{seen[item.name]}])'))
                seen.setdefault(item.name, i)
        return out


@dataclass(frozen=True)
class WebhookConfig:
    bearer_token: Secret | None = None
    basic_auth: BasicAuthConfig | None = None
    max_body_bytes: int = 1 << 20

    def validate(self) -> list[tuple[str, str]]:
        if not 1024 <= self.max_body_bytes <= 64 << 20:
            return [("max_body_bytes", f"expected 1024 to 67108864 (64 MiB), got {self.max_body_bytes}")]
        return []


# --- /probe restrictions ------------------------------------------------------------------------

#: Address classes that /probe refuses unless listed in ``probe.allow_address_classes``.
AddressClass = Literal["loopback", "private", "link_local"]

_PATTERN_RE = re.compile(r"^[A-Za-z0-9_*?-]+(\.[A-Za-z0-9_*?-]+)*\.?$")
_IP_LIKE_RE = re.compile(r"^[0-9.*?]*[0-9][0-9.*?]*\.?$")

AllowTarget = ipaddress.IPv4Network | ipaddress.IPv6Network | re.Pattern[str]


def parse_allow_target(entry: str) -> AllowTarget:
    """An entry of ``probe.allow_targets``: a network (CIDR or one address) or a host name pattern.

    Patterns match whole host names, case-insensitively: ``*`` any run of characters
    (dots included), ``?`` one character other than a dot.  Raises ``ValueError`` with
    what was expected.
    """
    try:
        return ipaddress.ip_network(entry, strict=True)
    except ValueError as exc:
        if "/" in entry or ":" in entry:
            raise ValueError(
                f'expected a network like "192.0.2.0/24" or "2001:db8::/32", got "{entry}" ({exc})'
            ) from None
    if len(entry) > 253 or not _PATTERN_RE.match(entry):
        raise ValueError(f'expected a CIDR network or a host name pattern like "*.example.com", got "{entry}"')
    if _IP_LIKE_RE.match(entry):
        raise ValueError(f'IP addresses match only networks: write a CIDR like "192.0.2.0/24", not "{entry}"')
    body = "".join({"*": ".*", "?": "[^.]"}.get(c, re.escape(c)) for c in entry.rstrip(".").lower())
    return re.compile(body)


@dataclass(frozen=True)
class ProbeRateLimit:
    """A token bucket per client address: ``burst`` requests at once, refilled at ``requests_per_second``."""

    requests_per_second: float = 10.0  # 0: no limit
    burst: int = 50

    def validate(self) -> list[tuple[str, str]]:
        out = []
        if self.requests_per_second < 0:
            out.append(("requests_per_second", f"expected 0 (no limit) or more, got {self.requests_per_second}"))
        if self.burst < 1:
            out.append(("burst", f"expected at least 1, got {self.burst}"))
        return out


@dataclass(frozen=True)
class ProbeConfig:
    """What ``GET /probe`` may connect to: see docs/probe.md, "Restrictions" and "SSRF"."""

    allow_targets: tuple[str, ...] = ()
    allow_address_classes: tuple[AddressClass, ...] = ()
    rate_limit: ProbeRateLimit = field(default_factory=ProbeRateLimit)

    def validate(self) -> list[tuple[str, str]]:
        out = []
        for i, entry in enumerate(self.allow_targets):
            try:
                parse_allow_target(entry)
            except ValueError as exc:
                out.append((f"allow_targets[{i}]", str(exc)))
        return out


# --- top level -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    global_: GlobalConfig = field(default_factory=GlobalConfig, metadata={"key": "global"})
    domains: tuple[DomainConfig, ...] = ()
    endpoints: tuple[EndpointConfig, ...] = ()
    queues: tuple[QueueConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    logs: tuple[LogConfig, ...] = ()
    continuity: ContinuityConfig = field(default_factory=ContinuityConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def validate(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for section in ("domains", "endpoints", "queues", "routes", "logs"):
            seen: dict[str, int] = {}
            for i, item in enumerate(getattr(self, section)):
                key = getattr(item, "domain", None) or item.name
                if key in seen:
                    out.append((f"{section}[{i}]", f'duplicate name "{key}" (also {section}[{seen[key]}])'))
                seen.setdefault(key, i)
        services = {s.name for s in self.continuity.services}
        for i, m in enumerate(self.continuity.maintenance):
            if m.service not in services:
                out.append((f"continuity.maintenance[{i}].service", f'unknown service "{m.service}"'))
        return out


def oauth2_credentials(cfg: Config) -> set[OAuth2Config]:
    """Every ``oauth2`` credential of a config (endpoints, routes, IMAP canaries)."""
    out: set[OAuth2Config] = set()
    for ep in cfg.endpoints:
        if ep.auth is not None and ep.auth.oauth2 is not None:
            out.add(ep.auth.oauth2)
    for route in cfg.routes:
        for o in (route.send.auth.oauth2 if route.send.auth is not None else None, route.receive.oauth2):
            if o is not None:
                out.add(o)
    for ds in cfg.continuity.datasets:
        for replica in ds.replicas:
            for side in (getattr(replica, "primary", None), getattr(replica, "replica", None)):
                if isinstance(side, ImapEndpoint) and side.oauth2 is not None:
                    out.add(side.oauth2)
    return out


def load_text(text: str, file: str = "<config>", base_dir: Path | None = None) -> Config:
    """Load a config from YAML text.  Raises :class:`ConfigError` listing every issue."""
    data, lines = load_yaml(text, file)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(file, "", "expected a mapping at the top level")])
    cfg: Config = decode(Config, data, file, lines, base_dir)
    return cfg


def load(path: str | Path) -> Config:
    """Load a config file.  Raises :class:`ConfigError` listing every issue."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(str(p), "", f"cannot read file: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue(str(p), "", "expected UTF-8 text")]) from None
    return load_text(text, p.name, p.parent)


#: The embedded default: watch this host's own mail service.  Used with no --config.file.
DEFAULT_CONFIG_YAML = """\
# Embedded default: check the local MTA on this host.
global:
  interval: 30s
  timeout: 10s
endpoints:
  - name: local-smtp
    protocol: smtp
    address: 127.0.0.1:25
    tls: optional
    tls_config: {verify: false}
queues:
  - name: local
    type: postfix
logs:
  - name: mail
    type: file
    path: /var/log/mail.log
continuity:
  services:
    - name: mail
      incident_match: {}
"""
