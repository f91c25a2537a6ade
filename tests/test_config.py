"""Config loading: every invalid file is rejected with every error, its key path and line."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter import config
from exporter.config.decode import Renamed, format_duration, parse_duration
from exporter.core.errors import ConfigError

TESTDATA = Path(__file__).parent / "testdata"
INVALID = sorted(TESTDATA.glob("invalid-*.yml"))


def expected_errors(path: Path) -> list[str]:
    return [line.removeprefix("# expect: ") for line in path.read_text().splitlines() if line.startswith("# expect: ")]


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_config_reports_every_error(path: Path) -> None:
    expected = expected_errors(path)
    assert expected, f"{path.name} has no '# expect:' lines"
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert [str(i) for i in info.value.issues] == expected


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_config_check_cli_exits_1_without_traceback(path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.check", f"--config.file={path}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    for line in expected_errors(path):
        assert line in proc.stderr
    assert f"configuration invalid: {len(expected_errors(path))} error(s)" in proc.stderr


def test_config_check_cli_accepts_valid_file_and_default(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text(
        "global: {interval: 15s, timeout: 5s}\n"
        "endpoints:\n"
        "  - {name: sub, protocol: smtp, address: '127.0.0.1:587', tls: starttls,\n"
        "     auth: {username: probe, password_file: secret.txt}}\n"
    )
    (tmp_path / "secret.txt").write_text("hunter2-secret\n")
    for args in ([f"--config.file={good}"], []):
        proc = subprocess.run(
            [sys.executable, "-m", "exporter", "--config.check", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert "configuration valid" in proc.stdout
        assert "hunter2-secret" not in proc.stdout + proc.stderr


def test_secret_file_relative_to_config_and_stripped(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret-value\n")
    cfg = config.load_text(
        "endpoints: [{name: i, protocol: imap, address: 'h:993', tls: implicit,"
        " auth: {username: u, password_file: pw}}]",
        "c.yml",
        tmp_path,
    )
    auth = cfg.endpoints[0].auth
    assert auth is not None
    assert auth.password.reveal() == "s3cret-value"
    assert "s3cret-value" not in repr(cfg)
    assert "s3cret-value" not in str(auth.password)


def test_env_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCE_TEST_PW", "from-env-pw")
    monkeypatch.setenv("MCE_TEST_HOST", "imap.example.com")
    cfg = config.load_text(
        "endpoints: [{name: i, protocol: imap, address: '${MCE_TEST_HOST}:993', tls: implicit,"
        " auth: {username: u, password: '${MCE_TEST_PW}'}}]\n"
        "queues: [{name: q, type: command, command: ['echo', '$${NOT_EXPANDED}']}]",
    )
    assert cfg.endpoints[0].address == "imap.example.com:993"
    auth = cfg.endpoints[0].auth
    assert auth is not None and auth.password.reveal() == "from-env-pw"
    q = cfg.queues[0]
    assert isinstance(q, config.CommandQueue) and q.command == ("echo", "${NOT_EXPANDED}")


def test_secret_value_never_in_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as info:
        config.load_text("webhook: {bearer_token: [not-a-string-token]}")
    assert "not-a-string-token" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        config.load_text(
            "endpoints: [{name: a, protocol: smtp, address: 'x:25', auth: {username: u, password: 1234567}}]"
        )
    assert "1234567" not in str(info.value)


def test_both_secret_and_file_rejected(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("x")
    with pytest.raises(ConfigError, match="give either password or password_file, not both"):
        config.load_text(
            "endpoints: [{name: a, protocol: smtp, address: 'x:25', "
            "auth: {username: u, password: p, password_file: pw}}]",
            "c.yml",
            tmp_path,
        )


def test_defaults_and_tagged_unions() -> None:
    cfg = config.load_text(
        """
queues:
  - {name: pf, type: postfix}
  - {name: ex, type: exim, spool_directory: /var/spool/exim}
  - {name: dir, type: directory, path: /var/mail/queue}
continuity:
  datasets:
    - name: mailstore
      rpo_target: 15m
      backups: [{type: file_mtime, path: "/backups/*.tar"}]
"""
    )
    assert [type(q).__name__ for q in cfg.queues] == ["PostfixQueue", "EximQueue", "DirectoryQueue"]
    assert cfg.global_.interval == 60.0
    assert cfg.continuity.datasets[0].rpo_target == 900.0


def test_embedded_default_is_valid() -> None:
    cfg = config.load_text(config.DEFAULT_CONFIG_YAML)
    assert cfg.endpoints[0].address == "127.0.0.1:25"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("250ms", 0.25), ("7d", 604800), ("1.5s", 1.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5", "m5", "1x", "-1s", "1h 30m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10 * 365 * 86400))
def test_duration_round_trip(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
        max_leaves=20,
    )
)
def test_loader_never_crashes_on_arbitrary_structures(data: object) -> None:
    import yaml

    text = yaml.safe_dump({"global": data, "endpoints": data, "queues": data})
    try:
        config.load_text(text, "fuzz.yml")
    except ConfigError as exc:
        assert exc.issues
        assert all(str(i).startswith("fuzz.yml") for i in exc.issues)


def test_no_config_env_leak_into_issue_messages() -> None:
    # The file name, not an absolute path, is what users see first.
    with pytest.raises(ConfigError) as info:
        config.load(TESTDATA / "invalid-type.yml")
    assert all(str(i).startswith("invalid-type.yml: ") for i in info.value.issues)
    assert os.sep + "testdata" not in str(info.value)


# --- one TLS vocabulary (STYLE.md 13) -------------------------------------------------------------


def _config_dataclasses() -> dict[type[Any], dict[str, Any]]:
    """Every config dataclass reachable from Config, with its YAML keys and their types."""
    seen: dict[type[Any], dict[str, Any]] = {}
    todo: list[Any] = [config.Config]
    while todo:
        tp = todo.pop()
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if tp in seen:
                continue
            hints = typing.get_type_hints(tp, include_extras=True)
            seen[tp] = {str(f.metadata.get("key", f.name)): hints[f.name] for f in dataclasses.fields(tp)}
            todo.extend(seen[tp].values())
        else:
            todo.extend(a for a in typing.get_args(tp) if a is not Ellipsis)
    return seen


def test_one_tls_vocabulary_in_every_section() -> None:
    """``tls`` is always the mode and ``tls_config`` always the settings, in YAML and in the dataclasses."""
    sections = 0
    for cls, keys in _config_dataclasses().items():
        settings = [k for k, tp in keys.items() if tp is config.TLSSettings]
        if not settings:
            continue
        sections += 1
        assert settings == ["tls_config"], cls.__name__
        assert typing.get_origin(keys.get("tls")) is typing.Literal, cls.__name__
        assert {"starttls", "none"} <= set(typing.get_args(keys["tls"])), cls.__name__
        assert {f.name for f in dataclasses.fields(cls)} >= {"tls", "tls_config"}, cls.__name__
    assert sections == 5  # domains[].smtp, endpoints[], routes[].send, routes[].receive, the canary's IMAP


def test_renamed_rules_refuse_only_old_spellings() -> None:
    """A rule for a whole key names a key that is gone; a rule for values names values no longer accepted."""
    rules = 0
    for cls, keys in _config_dataclasses().items():
        renamed: tuple[Renamed, ...] = getattr(cls, "RENAMED", ())
        for rule in renamed:
            rules += 1
            if rule.values:
                assert not set(rule.values) & set(typing.get_args(keys[rule.key])), rule
            elif rule.shape is None:
                assert rule.key not in keys, rule
    assert rules >= 3


def test_new_tls_spelling_of_domains_smtp() -> None:
    cfg = config.load_text(
        "domains:\n"
        "  - {domain: example.com, smtp: {tls: starttls, tls_config: {ca_file: /etc/ca.pem, verify: false}}}\n"
        "  - {domain: example.net}\n",
        "c.yml",
    )
    first, second = (d.smtp for d in cfg.domains)
    assert (first.tls, first.tls_config.ca_file, first.tls_config.verify) == ("starttls", "/etc/ca.pem", False)
    assert (second.tls, second.tls_config) == ("optional", config.TLSSettings())
