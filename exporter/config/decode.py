"""Strict, typed decoding of YAML into frozen dataclasses, with every error's key path.

The decoder is driven by type hints, so the config schema in :mod:`exporter.config`
is plain dataclasses.  It supports ``str``, ``int``, ``float``, ``bool``,
``Duration`` (``"30s"``, ``"5m"``, ``"1h30m"``), ``Secret`` (inline, ``<key>_file``
or ``${ENV}``), ``Literal[...]``, ``X | None``, ``list[X]``, ``dict[str, X]``,
nested dataclasses, and tagged unions of dataclasses that share a ``type`` field.

Errors are collected, not raised at the first one: every issue in a file is
reported together, each naming the file, the key path, what was expected and what
was found (secrets are never shown), and the line in the file.

A dataclass may define ``validate(self) -> list[tuple[str, str]]`` for cross-field
rules; each ``(subpath, message)`` becomes an issue under the dataclass's path.

A dataclass may list the old spellings of its keys in ``RENAMED: ClassVar[tuple[Renamed, ...]]``:
each is refused with ``renamed: <what to write instead>``, never read as an alias.
"""

from __future__ import annotations

__all__ = [
    "Duration",
    "Renamed",
    "decode",
    "format_duration",
    "load_yaml",
    "parse_duration",
]

import dataclasses
import os
import re
import types
import typing
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml

from exporter.core.errors import ConfigError, ConfigIssue
from exporter.core.secrets import Secret


class _DurationMarker:
    pass


#: A duration in seconds, written in the config as "30s", "5m", "1h", "1h30m", "250ms", "7d".
Duration = Annotated[float, _DurationMarker]

_DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h|d|w))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_ENV_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def parse_duration(text: str) -> float:
    """Parse ``"1h30m"`` into seconds.  Raises ``ValueError`` on anything else."""
    text = text.strip()
    if not text or not _DURATION_RE.match(text):
        raise ValueError(text)
    return sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(text))


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration: 90 -> "1m30s", 0.25 -> "250ms", 1.5 -> "1.5s".

    Exact: ``parse_duration(format_duration(x)) == x`` for any finite ``x >= 0``.  When the
    readable spelling would round (``0.0015`` is not a whole number of milliseconds), the
    value is written in seconds with every digit of its ``repr``.
    """
    if seconds == 0:
        return "0s"
    if seconds != int(seconds):
        readable = f"{round(seconds * 1000)}ms" if seconds < 1 else f"{seconds:g}s"
    else:
        parts = []
        rest = int(seconds)
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
            if rest >= size:
                parts.append(f"{rest // size}{unit}")
                rest %= size
        readable = "".join(parts)
    if parse_duration(readable) == seconds:
        return readable
    return format(Decimal(repr(seconds)), "f") + "s"


@dataclasses.dataclass(frozen=True)
class Renamed:
    """An old spelling of a key of a dataclass, refused with a pointer to the new one.

    ``key`` alone: the key is gone.  With ``values``: only those values of the key are old
    spellings (a renamed value).  With ``shape``: only values of that YAML shape (``dict``
    for a mapping), for a key whose name now means something else.  The error reads
    ``KEY.PATH: renamed: USE``.
    """

    key: str
    use: str
    values: tuple[str, ...] = ()
    shape: type[Any] | None = None

    def matches(self, value: Any) -> bool:
        if self.values:
            return isinstance(value, str) and value in self.values
        if self.shape is not None:
            return isinstance(value, self.shape)
        return True


def _renamed(cls: type[Any], value: dict[Any, Any]) -> dict[str, str]:
    """The keys of ``value`` that are old spellings in ``cls``, with what to write instead."""
    rules: tuple[Renamed, ...] = getattr(cls, "RENAMED", ())
    out: dict[str, str] = {}
    for key, item in value.items():
        use = next((rule.use for rule in rules if rule.key == key and rule.matches(item)), None)
        if use is not None:
            out[key] = use
    return out


class _Ctx:
    def __init__(self, file: str, lines: dict[str, int], base_dir: Path) -> None:
        self.file = file
        self.lines = lines
        self.base_dir = base_dir
        self._found: list[tuple[int, int, ConfigIssue]] = []

    @property
    def issues(self) -> list[ConfigIssue]:
        """Issues in the order of their lines in the file."""
        return [issue for _, _, issue in sorted(self._found, key=lambda t: (t[0], t[1]))]

    def error(self, path: str, message: str) -> None:
        line = self.lines.get(path) or self.lines.get(path.rsplit(".", 1)[0]) or 0
        suffix = f" (line {line})" if line else ""
        self._found.append((line or 1 << 30, len(self._found), ConfigIssue(self.file, path, message + suffix)))


# --- YAML with line numbers and duplicate-key detection ----------------------------------


def _invalid_yaml(exc: Exception, file: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    if not isinstance(exc, yaml.YAMLError):  # its text may quote the value, which may be a secret
        return ConfigError([ConfigIssue(file, "", "invalid YAML: a tagged value or a key that cannot be constructed")])
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return ConfigError([ConfigIssue(file, "", f"invalid YAML: {where}{problem}")])


def load_yaml(text: str, file: str) -> tuple[Any, dict[str, int]]:
    """Parse YAML text; return the data and a map from key path to line number.

    Raises :class:`ConfigError` on a syntax error or a duplicate key.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise _invalid_yaml(exc, file) from None
    if node is None:
        return {}, {}
    lines: dict[str, int] = {}
    issues: list[ConfigIssue] = []
    constructor = yaml.SafeLoader("")

    def build(n: yaml.Node, path: str) -> Any:
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            constructor.flatten_mapping(n)
            out: dict[Any, Any] = {}
            for key_node, value_node in n.value:
                key = constructor.construct_object(key_node, deep=True)
                key_s = str(key)
                sub = f"{path}.{key_s}" if path else key_s
                if key in out:
                    issues.append(ConfigIssue(file, sub, f"duplicate key (line {key_node.start_mark.line + 1})"))
                out[key] = build(value_node, sub)
            return out
        if isinstance(n, yaml.SequenceNode):
            return [build(item, f"{path}[{i}]") for i, item in enumerate(n.value)]
        return constructor.construct_object(n, deep=True)

    try:
        data = build(node, "")
    except (yaml.YAMLError, ValueError, TypeError) as exc:  # an unknown tag, "!!int x", an unhashable key
        raise _invalid_yaml(exc, file) from None
    if issues:
        raise ConfigError(issues)
    return data, lines


# --- decoding ------------------------------------------------------------------------------

_MISSING = object()


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f'"{shown}"'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _describe_type(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is Secret:
        return "a string"
    if origin is Annotated:
        if _DurationMarker in typing.get_args(tp)[1:]:
            return 'a duration like "30s"'
        return _describe_type(typing.get_args(tp)[0])
    if origin is list or origin is tuple:
        return "a list"
    if origin is dict:
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(f'"{a}"' for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return str(tp)


def _expand_env(value: str, ctx: _Ctx, path: str) -> str | None:
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        env = os.environ.get(name)
        if env is None:
            raise KeyError(name)
        return env

    try:
        return _ENV_RE.sub(sub, value)
    except KeyError as exc:
        ctx.error(path, f"environment variable {exc.args[0]} is not set")
        return None


def _key_of(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("key", f.name))


def decode(
    cls: type[Any], data: Any, file: str, lines: dict[str, int] | None = None, base_dir: Path | None = None
) -> Any:
    """Decode ``data`` into ``cls``.  Raises :class:`ConfigError` with every issue found."""
    ctx = _Ctx(file, lines or {}, base_dir or Path("."))
    result = _decode(cls, data, "", ctx, secret=False)
    if ctx.issues:
        raise ConfigError(ctx.issues)
    return result


def _decode(tp: Any, value: Any, path: str, ctx: _Ctx, secret: bool) -> Any:
    origin = typing.get_origin(tp)

    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) != len(typing.get_args(tp)):
            return None
        if len(args) == 1:
            return _decode(args[0], value, path, ctx, secret)
        return _decode_tagged(args, value, path, ctx)

    if isinstance(value, str) and not dataclasses.is_dataclass(tp):
        expanded = _expand_env(value, ctx, path)
        if expanded is None:
            return _MISSING
        value = expanded

    def wrong() -> Any:
        got = "a value that is not shown (secret)" if secret and isinstance(value, str) else _describe(value)
        ctx.error(path, f"expected {_describe_type(tp)}, got {got}")
        return _MISSING

    if origin is Annotated:
        base, *meta = typing.get_args(tp)
        if _DurationMarker in meta:
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                return wrong()
            if isinstance(value, int | float):
                if value == 0:
                    return 0.0
                ctx.error(path, f'expected a duration like "30s" (with a unit), got {_describe(value)}')
                return _MISSING
            try:
                return parse_duration(value)
            except ValueError:
                return wrong()
        return _decode(base, value, path, ctx, secret)

    if tp is Secret:
        if not isinstance(value, str):
            ctx.error(
                path, f"expected a string, got {_describe(value) if not isinstance(value, int | float) else 'a number'}"
            )
            return _MISSING
        return Secret(value)
    if tp is str:
        return value if isinstance(value, str) else wrong()
    if tp is bool:
        return value if isinstance(value, bool) else wrong()
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else wrong()
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return wrong()
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) is type(choices[0]):
            return value
        return wrong()
    if origin is list or origin is tuple:
        item_tp = typing.get_args(tp)[0]
        if not isinstance(value, list):
            return wrong()
        items = [_decode(item_tp, v, f"{path}[{i}]", ctx, secret) for i, v in enumerate(value)]
        return _MISSING if any(item is _MISSING for item in items) else tuple(items)
    if origin is dict:
        _key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            return wrong()
        out = {}
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            if not isinstance(k, str):
                ctx.error(sub, f"expected a string key, got {_describe(k)}")
                continue
            out[k] = _decode(val_tp, v, sub, ctx, secret)
        if any(v is _MISSING for v in out.values()):
            return _MISSING
        return types.MappingProxyType(out)
    if dataclasses.is_dataclass(tp):
        return _decode_dataclass(typing.cast(type[Any], tp), value, path, ctx)
    raise TypeError(f"unsupported config type {tp!r} at {path}")


def _decode_tagged(options: list[Any], value: Any, path: str, ctx: _Ctx) -> Any:
    tags: dict[str, Any] = {}
    for opt in options:
        hints = typing.get_type_hints(opt, include_extras=True)
        for tag in typing.get_args(hints["type"]):
            tags[tag] = opt
    if not isinstance(value, dict):
        ctx.error(path, f"expected a mapping, got {_describe(value)}")
        return _MISSING
    tag = value.get("type", _MISSING)
    sub = f"{path}.type" if path else "type"
    if tag is _MISSING:
        ctx.error(path, "missing required key type (one of " + ", ".join(f'"{t}"' for t in tags) + ")")
        return _MISSING
    if tag not in tags:
        ctx.error(sub, "expected one of " + ", ".join(f'"{t}"' for t in tags) + f", got {_describe(tag)}")
        return _MISSING
    return _decode_dataclass(tags[tag], value, path, ctx)


def _decode_dataclass(cls: type[Any], value: Any, path: str, ctx: _Ctx) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        ctx.error(path, f"expected a mapping, got {_describe(value)}")
        return _MISSING
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {_key_of(f): f for f in dataclasses.fields(cls) if f.init}
    secret_files = {f"{k}_file": k for k, f in fields.items() if _is_secret(hints[f.name])}
    kwargs: dict[str, Any] = {}
    failed = False
    renamed = _renamed(cls, value)
    for key, use in renamed.items():
        ctx.error(f"{path}.{key}" if path else key, f"renamed: {use}")
        failed = True
    for key in value:
        if key in renamed:
            continue
        if key not in fields and key not in secret_files:
            sub = f"{path}.{key}" if path else str(key)
            hint = _suggest(str(key), list(fields) + list(secret_files))
            ctx.error(sub, "unknown key" + (f" (did you mean {hint}?)" if hint else ""))
            failed = True
    for key, f in fields.items():
        sub = f"{path}.{key}" if path else key
        tp = hints[f.name]
        file_key = f"{key}_file"
        if file_key in secret_files and file_key in value:
            if key in value:
                ctx.error(sub, f"give either {key} or {file_key}, not both")
                failed = True
                continue
            decoded = _read_secret_file(value[file_key], f"{path}.{file_key}" if path else file_key, ctx)
        elif key in renamed:
            continue
        elif key in value:
            decoded = _decode(tp, value[key], sub, ctx, secret=_is_secret(tp))
        elif f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            continue
        elif dataclasses.is_dataclass(tp):
            decoded = _decode_dataclass(typing.cast(type[Any], tp), {}, sub, ctx)
        else:
            ctx.error(path, f"missing required key {key}")
            failed = True
            continue
        if decoded is _MISSING:
            failed = True
        else:
            kwargs[f.name] = decoded
    if failed:
        return _MISSING
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        ctx.error(path, str(exc))
        return _MISSING
    validate: Callable[[], list[tuple[str, str]]] | None = getattr(obj, "validate", None)
    if validate is not None:
        for subpath, message in validate():
            full = ".".join(p for p in (path, subpath) if p).replace(".[", "[")
            ctx.error(full, message)
    return obj


def _is_secret(tp: Any) -> bool:
    if tp is Secret:
        return True
    return any(a is Secret for a in typing.get_args(tp))


def _read_secret_file(value: Any, path: str, ctx: _Ctx) -> Any:
    if not isinstance(value, str):
        ctx.error(path, f"expected a file path, got {_describe(value)}")
        return _MISSING
    expanded = _expand_env(value, ctx, path)
    if expanded is None:
        return _MISSING
    file = Path(expanded)
    if not file.is_absolute():
        file = ctx.base_dir / file
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        ctx.error(path, f"cannot read secret file {str(file)!r}: {exc.strerror or exc}")
        return _MISSING
    return Secret(text.rstrip("\r\n"))


def _suggest(key: str, options: list[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(key, options, n=1, cutoff=0.75)
    return match[0] if match else None
