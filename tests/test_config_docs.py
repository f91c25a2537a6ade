"""docs/configuration.md and examples/full.yml stay in step with the schema in exporter/config/__init__.py.

Every dataclass reachable from :class:`exporter.config.Config` has one table in the
reference, marked by ``<!-- schema: ClassName -->``. The table lists exactly the
dataclass's YAML keys, with the type and default that the code has. The complete
example at the end of the reference is ``examples/full.yml``, which loads and passes
``--config.check``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import subprocess
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import pytest
import yaml

from exporter import config
from exporter.config.decode import Duration, parse_duration
from exporter.core.secrets import Secret

ROOT = Path(__file__).resolve().parent.parent
DOC_PATH = ROOT / "docs" / "configuration.md"
FULL = ROOT / "examples" / "full.yml"
TESTDATA = Path(__file__).parent / "testdata"

#: The environment variables examples/full.yml takes its secrets from.
FULL_ENV = {
    "MCE_PROBE_PASSWORD": "probe-pw-from-env-1f3a",
    "MCE_CANARY_PASSWORD": "canary-pw-from-env-9c2e",
    "MCE_WEBHOOK_TOKEN": "webhook-token-from-env-77d0",
    "MCE_WEBHOOK_PASSWORD": "webhook-pw-from-env-5b1c",
    "MCE_M365_CERT_KEY": "-----BEGIN PRIVATE KEY-----from-env-0e4d",
    "MCE_GOOGLE_SA_JSON": '{"type": "service_account", "from": "env-3a9f"}',
    "MCE_OAUTH_REFRESH_TOKEN": "refresh-token-from-env-c81b",
}

TABLE_HEADER = "| key | type | default | meaning |"
ANCHOR_RE = re.compile(r"^<!-- schema: (\w+) -->$")
KEY_CELL_RE = re.compile(r"^`([a-z_][a-z0-9_]*)`$")
CODE_CELL_RE = re.compile(r"^`([^`]*)`$")


# --- walking the schema ------------------------------------------------------------------------


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _dataclasses_in(tp: Any) -> Iterator[type[Any]]:
    """Every dataclass named by a type hint: through Annotated, X | None, unions, tuples, dicts."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        yield from _dataclasses_in(typing.get_args(tp)[0])
    elif _is_union(tp) or origin in (tuple, list, dict):
        for arg in typing.get_args(tp):
            if arg is not Ellipsis and arg is not type(None):
                yield from _dataclasses_in(arg)
    elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
        yield tp


def reachable_dataclasses(root: type[Any] = config.Config) -> dict[str, type[Any]]:
    seen: dict[str, type[Any]] = {}
    todo = [root]
    while todo:
        cls = todo.pop()
        if cls.__name__ in seen:
            assert seen[cls.__name__] is cls, f"two config dataclasses named {cls.__name__}"
            continue
        seen[cls.__name__] = cls
        hints = typing.get_type_hints(cls, include_extras=True)
        for f in dataclasses.fields(cls):
            todo.extend(_dataclasses_in(hints[f.name]))
    return seen


def yaml_key(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("key", f.name))


def init_fields(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.init]


def is_secret(tp: Any) -> bool:
    return tp is Secret or Secret in typing.get_args(tp)


SCHEMA = reachable_dataclasses()
ALL_KEYS = sorted({yaml_key(f) for cls in SCHEMA.values() for f in init_fields(cls)})
SECRET_KEYS = sorted(
    {
        yaml_key(f)
        for cls in SCHEMA.values()
        for f in init_fields(cls)
        if is_secret(typing.get_type_hints(cls, include_extras=True)[f.name])
    }
)


def type_text(tp: Any) -> str:
    """How a type is written in the reference's type column."""
    if tp == Duration:
        return "duration"
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return type_text(typing.get_args(tp)[0])
    if _is_union(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if all(dataclasses.is_dataclass(a) for a in args):
            return "mapping"
        assert len(args) == 1, f"cannot describe {tp!r}"
        return type_text(args[0])
    if origin is Literal:
        choices = ", ".join(f'"{c}"' for c in typing.get_args(tp))
        return choices if len(typing.get_args(tp)) == 1 else f"one of {choices}"
    if origin in (tuple, list):
        item = type_text(typing.get_args(tp)[0])
        return "list of mappings" if item == "mapping" else f"list of {item}"
    if origin is dict:
        key, value = (type_text(a) for a in typing.get_args(tp))
        return f"mapping of {key} to {value}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    names = {str: "string", Secret: "secret", bool: "bool", int: "int", float: "float"}
    assert tp in names, f"no documented spelling for the type {tp!r}"
    return names[tp]


def _is_dataclass_typed(tp: Any) -> bool:
    return type_text(tp) == "mapping"


# --- reading the reference -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC_PATH.read_text(encoding="utf-8")


def split_row(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().removeprefix("|").removesuffix("|").split("|")]


def schema_tables(text: str) -> dict[str, list[list[str]]]:
    """``<!-- schema: Name -->`` -> the rows (4 cells each) of the table right after it."""
    lines = text.splitlines()
    tables: dict[str, list[list[str]]] = {}
    for i, line in enumerate(lines):
        m = ANCHOR_RE.match(line.strip())
        if not m:
            continue
        name = m.group(1)
        assert name not in tables, f"two tables are marked schema: {name}"
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        assert j < len(lines) and lines[j].strip() == TABLE_HEADER, f"schema: {name} is not followed by a key table"
        assert lines[j + 1].strip() == "|---|---|---|---|", f"schema: {name}: table has no separator row"
        rows = []
        j += 2
        while j < len(lines) and lines[j].startswith("|"):
            cells = split_row(lines[j])
            assert len(cells) == 4, f"schema: {name}: row does not have 4 cells (a stray '|'?): {lines[j]}"
            rows.append(cells)
            j += 1
        tables[name] = rows
    return tables


# --- every key is documented -------------------------------------------------------------------


def test_schema_walk_finds_nested_and_union_dataclasses() -> None:
    for name in (
        "Config",
        "GlobalConfig",
        "ResolverConfig",
        "TLSSettings",
        "AuthConfig",
        "PostfixQueue",
        "CommandQueue",
        "ImapEndpoint",
        "ImapCanaryReplica",
        "TimestampFileBackup",
        "MaintenanceWindow",
    ):
        assert name in SCHEMA
    assert {"global", "from", "to", "min_healthy_mx", "password", "bearer_token"} <= set(ALL_KEYS)
    assert "global_" not in ALL_KEYS and "mail_from" not in ALL_KEYS
    assert SECRET_KEYS == [
        "bearer_token",
        "client_secret",
        "password",
        "private_key",
        "refresh_token",
        "service_account",
        "url",
    ]


@pytest.mark.parametrize("key", ALL_KEYS)
def test_every_yaml_key_is_in_a_table_row(doc: str, key: str) -> None:
    assert f"| `{key}` |" in doc, f"`{key}` is not documented in a table of docs/configuration.md"


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_every_secret_file_variant_is_mentioned(doc: str, key: str) -> None:
    assert f"`{key}_file`" in doc


def test_every_key_table_is_marked(doc: str) -> None:
    assert doc.count(TABLE_HEADER) == len(schema_tables(doc))


def test_one_table_per_dataclass(doc: str) -> None:
    tables = schema_tables(doc)
    assert sorted(tables) == sorted(SCHEMA), "tables marked schema: X in the doc != dataclasses in the schema"


@pytest.mark.parametrize("name", sorted(SCHEMA))
def test_table_matches_dataclass(doc: str, name: str) -> None:
    cls = SCHEMA[name]
    rows = schema_tables(doc).get(name)
    assert rows is not None, f"docs/configuration.md has no table marked <!-- schema: {name} -->"
    documented: dict[str, list[str]] = {}
    for key_cell, type_cell, default_cell, meaning in rows:
        m = KEY_CELL_RE.match(key_cell)
        assert m, f"{name}: key cell {key_cell!r} is not a backticked key"
        assert m.group(1) not in documented, f"{name}: `{m.group(1)}` listed twice"
        assert meaning, f"{name}: `{m.group(1)}` has no meaning"
        documented[m.group(1)] = [type_cell, default_cell]
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {yaml_key(f): f for f in init_fields(cls)}
    assert sorted(documented) == sorted(fields), f"{name}: documented keys != fields"

    for key, f in fields.items():
        tp = hints[f.name]
        type_cell, default_cell = documented[key]
        assert type_cell == type_text(tp), f"{name}.{key}: type"
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            assert default_cell == "required", f"{name}.{key}: default"
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if default is None:
            assert default_cell == "unset", f"{name}.{key}: default"
            continue
        if dataclasses.is_dataclass(default):
            continue  # "see <section>"
        m = CODE_CELL_RE.match(default_cell)
        assert m, f"{name}.{key}: default cell {default_cell!r} is not one backticked value"
        written = yaml.safe_load(m.group(1))
        if tp == Duration or (_is_union(tp) and Duration in typing.get_args(tp)):
            assert parse_duration(str(written)) == default, f"{name}.{key}: default"
        elif isinstance(default, tuple):
            assert written == list(default), f"{name}.{key}: default"
        else:
            assert type(written) is type(default) and written == default, f"{name}.{key}: default"


# --- the examples in the reference are real -------------------------------------------------------


def test_embedded_default_is_shown_verbatim(doc: str) -> None:
    assert f"```yaml\n{config.DEFAULT_CONFIG_YAML}```\n" in doc


def test_error_examples_are_real(doc: str) -> None:
    expected = {
        line.removeprefix("# expect: ")
        for path in TESTDATA.glob("invalid-*.yml")
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.startswith("# expect: ")
    }
    shown = [line for line in doc.splitlines() if re.match(r"^invalid-[\w-]+\.yml: ", line)]
    assert len(shown) >= 3
    for line in shown:
        assert line in expected, f"error example not in tests/testdata: {line}"


def test_complete_example_in_doc_is_examples_full_yml(doc: str) -> None:
    _, sep, tail = doc.partition("\n## Complete example\n")
    assert sep, "no '## Complete example' section"
    m = re.search(r"```yaml\n(.*?)```\n", tail, re.DOTALL)
    assert m, "no yaml block in the complete example"
    assert m.group(1) == FULL.read_text(encoding="utf-8")


# --- examples/full.yml ------------------------------------------------------------------------------


def _full_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in FULL_ENV.items():
        monkeypatch.setenv(name, value)


def _instances(obj: Any) -> Iterator[Any]:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        yield obj
        for f in dataclasses.fields(obj):
            yield from _instances(getattr(obj, f.name))
    elif isinstance(obj, tuple | list):
        for item in obj:
            yield from _instances(item)


def test_full_example_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    _full_env(monkeypatch)
    cfg = config.load(FULL)
    auth = cfg.endpoints[1].auth
    assert auth is not None and auth.password.reveal() == FULL_ENV["MCE_PROBE_PASSWORD"]
    assert cfg.webhook.bearer_token is not None
    assert cfg.webhook.bearer_token.reveal() == FULL_ENV["MCE_WEBHOOK_TOKEN"]
    for value in FULL_ENV.values():
        assert value not in repr(cfg)


def test_full_example_uses_every_dataclass(monkeypatch: pytest.MonkeyPatch) -> None:
    _full_env(monkeypatch)
    used = {type(obj).__name__ for obj in _instances(config.load(FULL))}
    assert sorted(set(SCHEMA) - used) == [], "examples/full.yml does not show these blocks"


def test_full_example_fails_cleanly_without_its_env() -> None:
    env = {k: v for k, v in os.environ.items() if k not in FULL_ENV}
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.check", f"--config.file={FULL}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 1
    assert "environment variable MCE_PROBE_PASSWORD is not set" in proc.stderr


def _reserved_host(host: str) -> bool:
    host = host.lower().rstrip(".")
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network("192.0.2.0/24")
    except ValueError:
        pass
    # RFC 2606 names; ".invalid" is the exporter's own default HELO name.
    return host in ("example.com", "example.net") or host.endswith(
        (".example.com", ".example.net", ".test", ".invalid")
    )


def test_full_example_uses_only_documentation_names(monkeypatch: pytest.MonkeyPatch) -> None:
    _full_env(monkeypatch)
    hosts: list[str] = []
    for obj in _instances(config.load(FULL)):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.name == "address":
                hosts.append(config.split_address(value)[0])
            elif f.name in ("domain", "helo", "server_name") and value:
                hosts.append(value)
            elif f.name in ("dnsbl", "nameservers", "sending_ips"):
                hosts.extend(value)
            elif f.name in ("mail_from", "rcpt_to", "username") and "@" in value:
                hosts.append(value.rpartition("@")[2])
            elif f.name == "alertmanager_url" and value:
                hosts.append(re.sub(r"^\w+://([^:/]+).*$", r"\1", value))
    assert len(hosts) > 20
    assert [h for h in hosts if not _reserved_host(h)] == []


def test_config_check_accepts_full_example() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.check", f"--config.file={FULL}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env={**os.environ, **FULL_ENV},
    )
    assert proc.returncode == 0, proc.stderr
    assert "configuration valid" in proc.stdout
    for value in FULL_ENV.values():
        assert value not in proc.stdout + proc.stderr
