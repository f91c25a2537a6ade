"""Helpers for the loopback mail stack run by ``scripts/teststack.sh``.

The script writes ``$MCE_STACK_DIR/stack.json`` (default
``/tmp/mce-teststack/stack.json``); :class:`Stack` is a read-only view of it
plus a few helpers to inject outages and look at the Postfix queue.  The
session fixture ``stack`` in ``tests/conftest.py`` hands out an instance.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "teststack.sh"
DEFAULT_STACK_DIR = "/tmp/mce-teststack"

SERVICES = ("postfix", "dovecot", "lmtp", "unbound", "prometheus", "alertmanager", "postgresql", "verifiers")
# Kept in sync with BINARIES in scripts/teststack.sh (minus python3).
REQUIRED_BINARIES = (
    "postfix",
    "postconf",
    "postqueue",
    "postsuper",
    "dovecot",
    "doveadm",
    "doveconf",
    "sievec",
    "unbound",
    "unbound-checkconf",
    "prometheus",
    "prometheus-alertmanager",
    "openssl",
    "ldns-keygen",
    "ldns-signzone",
    "opendkim",
    "opendmarc",
    "policyd-spf",
    "unshare",
)
# Not on PATH: in /usr/lib/postgresql/<major>/bin (Debian's package postgresql).
# Kept in sync with PG_BINARIES and pg_newest_bin_dir in scripts/teststack.sh.
POSTGRESQL_BINARIES = ("initdb", "pg_ctl", "postgres", "pg_isready", "psql")
POSTGRESQL_LIB_DIR = Path("/usr/lib/postgresql")
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def stack_dir() -> Path:
    """The stack directory: ``$MCE_STACK_DIR`` or ``/tmp/mce-teststack``."""
    return Path(os.environ.get("MCE_STACK_DIR") or DEFAULT_STACK_DIR)


def tool_env() -> dict[str, str]:
    """Environment for running the script and the Postfix tools (sbin on PATH)."""
    env = dict(os.environ)
    env["PATH"] = _SYSTEM_PATH + (os.pathsep + env["PATH"] if env.get("PATH") else "")
    return env


def tool(name: str) -> str:
    """Absolute path of a system tool (also finds /usr/sbin ones for non-root)."""
    found = shutil.which(name, path=tool_env()["PATH"])
    if found is None:
        raise FileNotFoundError(f"{name} not found; run scripts/teststack.sh install")
    return found


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def postgresql_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` with the server binaries, or None.

    (The stack's cluster runs with the major that created it: stack.json's
    ``postgresql.bin_dir``.)
    """
    try:
        majors = [d for d in POSTGRESQL_LIB_DIR.iterdir() if d.is_dir() and _version_key(d.name)]
    except OSError:
        return None
    for major in sorted(majors, key=lambda d: _version_key(d.name), reverse=True):
        bin_dir = major / "bin"
        if all(os.access(bin_dir / b, os.X_OK) for b in POSTGRESQL_BINARIES):
            return bin_dir
    return None


def missing_binaries() -> list[str]:
    path = tool_env()["PATH"]
    missing = [b for b in REQUIRED_BINARIES if shutil.which(b, path=path) is None]
    if postgresql_bin_dir() is None:
        missing.append("postgresql")
    return missing


def run_script(*args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    """Run ``scripts/teststack.sh ARGS`` and return the completed process.

    stdin is /dev/null and output is captured; the script detaches every
    daemon from its stdio, so this never hangs on a daemon holding the pipe.
    """
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=tool_env(),
        check=False,
    )


def stack_is_up() -> bool:
    """True if ``teststack.sh status`` reports every service up."""
    return run_script("status", timeout=60).returncode == 0


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until a TCP connect to host:port succeeds; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{host}:{port} did not accept connections within {timeout}s: {last}")
        time.sleep(0.1)


def _ro(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


@dataclass(frozen=True)
class Stack:
    """Everything a test needs to talk to the loopback mail stack.

    ``raw`` is the full stack.json; the other fields are the commonly used
    parts of it.  Mapping fields are read-only views.
    """

    stack_dir: Path
    host: str
    hostname: str
    ports: Mapping[str, int] = field(hash=False)
    users: Mapping[str, str] = field(hash=False)
    certs: Mapping[str, Mapping[str, Any]] = field(hash=False)
    local_domains: tuple[str, ...]
    postfix_config_dir: Path
    postfix_queue_dir: Path
    postfix_log: Path
    dovecot_config: Path
    dovecot_log: Path
    mail_dir: Path
    unbound_log: Path
    prometheus_url: str
    prometheus_config: Path
    prometheus_rules_dir: Path
    prometheus_targets_dir: Path
    alertmanager_url: str
    alertmanager_config: Path
    webhook_url: str
    dead_relay_port: int
    dead_mx_host: str
    raw: Mapping[str, Any] = field(hash=False, repr=False, compare=False)

    # -- construction -----------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Stack:
        """Load ``stack.json`` (default: the one in :func:`stack_dir`)."""
        p = Path(path) if path is not None else stack_dir() / "stack.json"
        data = json.loads(p.read_text())
        return cls(
            stack_dir=Path(data["stack_dir"]),
            host=data["host"],
            hostname=data["hostname"],
            ports=_ro(data["ports"]),
            users=_ro(data["users"]),
            certs=_ro({k: _ro(v) for k, v in data["certs"].items()}),
            local_domains=tuple(data["local_domains"]),
            postfix_config_dir=Path(data["postfix"]["config_dir"]),
            postfix_queue_dir=Path(data["postfix"]["queue_dir"]),
            postfix_log=Path(data["postfix"]["log"]),
            dovecot_config=Path(data["dovecot"]["config"]),
            dovecot_log=Path(data["dovecot"]["log"]),
            mail_dir=Path(data["mail_dir"]),
            unbound_log=Path(data["unbound"]["log"]),
            prometheus_url=data["prometheus"]["url"],
            prometheus_config=Path(data["prometheus"]["config"]),
            prometheus_rules_dir=Path(data["prometheus"]["rules_dir"]),
            prometheus_targets_dir=Path(data["prometheus"]["targets_dir"]),
            alertmanager_url=data["alertmanager"]["url"],
            alertmanager_config=Path(data["alertmanager"]["config"]),
            webhook_url=data["alertmanager"]["webhook_url"],
            dead_relay_port=int(data["dead_relay"]["port"]),
            dead_mx_host=data["dead_mx"]["host"],
            raw=MappingProxyType(data),
        )

    # -- small accessors --------------------------------------------------

    def port(self, name: str) -> int:
        return int(self.ports[name])

    def password(self, user: str) -> str:
        return self.users[user]

    @property
    def ca_file(self) -> str:
        return str(self.certs["ca"]["cert"])

    @property
    def dns_server(self) -> tuple[str, int]:
        return self.host, self.port("dns")

    @property
    def dnssec(self) -> Mapping[str, Any]:
        """stack.json "dnssec": zones, tlsa_port, trust_anchors, signed_dir."""
        return _ro(self.raw["dnssec"])

    @property
    def mta_sts(self) -> Mapping[str, Any]:
        """stack.json "mta_sts": domain, policy_host, cert (a key of ``certs``)."""
        return _ro(self.raw["mta_sts"])

    @property
    def oauth2(self) -> Mapping[str, Any]:
        """stack.json "oauth2": private_key (PEM path; signs the JWT access tokens Dovecot
        accepts), public_key, kid, alg ("RS256"), issuer (required by Dovecot), audience
        (None: Dovecot 2.3.19 does not check it), username_attribute ("email": the claim that
        must equal the login name), user ("oauth@example.test"), mechanisms, key_dict,
        key_file, dovecot_config, cert (the key of ``certs`` for the token service).
        tests/oauth_server.py issues such tokens."""
        try:
            return _ro(self.raw["oauth2"])
        except KeyError:
            raise KeyError(
                f'{self.stack_dir}/stack.json has no "oauth2" (made by an older teststack.sh): run: sudo {SCRIPT} up'
            ) from None

    @property
    def oauth2_user(self) -> str:
        """The mailbox user meant for OAuth2 tests (tokens work for every user)."""
        return str(self.oauth2["user"])

    @property
    def verifiers(self) -> Mapping[str, Any]:
        """stack.json "verifiers" (scripts/teststack.sh gen_verifiers): authserv_id
        ("mx-in.example.test"), submission_signed {host, port} (DKIM-signs, then relays every
        message to inbound), inbound {host, port, hostname} (policyd-spf, OpenDKIM and OpenDMARC
        add Authentication-Results), selector ("mce"), domains {signed, wrongkey, spffail},
        expected {domain: {spf, dkim, dmarc}}, keys / published_keys {domain: PEM path},
        milters {opendkim_sign, opendkim_verify, opendmarc: {host, port}}, resolver {host, port}
        (where Unbound also answers on port 53), dir, config, logs."""
        try:
            return _ro(self.raw["verifiers"])
        except KeyError:
            raise KeyError(
                f'{self.stack_dir}/stack.json has no "verifiers" (made by an older teststack.sh): run: sudo {SCRIPT} up'
            ) from None

    def cert(self, name: str) -> Mapping[str, Any]:
        """stack.json "certs" NAME: cert, key, chain, not_before, not_after, subject_cn, sans."""
        return self.certs[name]

    @property
    def postgresql(self) -> Mapping[str, Any]:
        """stack.json "postgresql": host, port, user, password, database, dsn (a libpq
        ``postgresql://`` URL with the password), data_dir, socket_dir, config, log, bin_dir."""
        return _ro(self.raw["postgresql"])

    # -- outage injection -------------------------------------------------

    def _script(self, *args: str, timeout: float = 120.0) -> str:
        env_dir = str(self.stack_dir)
        proc = subprocess.run(
            ["bash", str(SCRIPT), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**tool_env(), "MCE_STACK_DIR": env_dir},
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"teststack.sh {' '.join(args)} failed (rc={proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        return proc.stdout

    def stop(self, service: str) -> None:
        """Stop one service (see SERVICES); returns once it is really down."""
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}; expected one of {SERVICES}")
        self._script("stop", service)

    def start(self, service: str) -> None:
        """Start one service; returns once it answers again."""
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}; expected one of {SERVICES}")
        self._script("start", service)

    def is_up(self) -> bool:
        try:
            self._script("status", timeout=60)
        except RuntimeError:
            return False
        return True

    # -- Postfix queue ----------------------------------------------------

    def _postfix_tool(self, name: str, *args: str, timeout: float = 30.0) -> str:
        proc = subprocess.run(
            [tool(name), "-c", str(self.postfix_config_dir), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=tool_env(),
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{name} -c {self.postfix_config_dir} {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def postqueue_json(self) -> list[dict[str, Any]]:
        """``postqueue -c DIR -j``: one dict per queued message."""
        out = self._postfix_tool("postqueue", "-j")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def flush_queue(self) -> None:
        """Delete every queued message (``postsuper -c DIR -d ALL``)."""
        self._postfix_tool("postsuper", "-d", "ALL")

    def delete_queued(self, queue_id: str) -> None:
        """Delete one queued message (``postsuper -c DIR -d ID``)."""
        self._postfix_tool("postsuper", "-d", queue_id)

    def retry_queue(self) -> None:
        """Attempt delivery of all queued mail now (``postqueue -c DIR -f``)."""
        self._postfix_tool("postqueue", "-f")

    # -- misc -------------------------------------------------------------

    def wait_port(self, host: str, port: int, timeout: float = 10.0) -> None:
        wait_port(host, port, timeout)
