"""Structured logging in logfmt or JSON, with secrets scrubbed from every line.

Use ``log.info("msg", extra={"kv": {"check": name}})`` to attach fields.
"""

from __future__ import annotations

__all__ = ["setup"]

import json
import logging
import sys
import time
from typing import Any

from exporter.core.secrets import redact

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
    out: dict[str, Any] = {"ts": ts, "level": record.levelname.lower(), "logger": record.name}
    out["msg"] = record.getMessage()
    kv = getattr(record, "kv", None)
    if isinstance(kv, dict):
        out.update(kv)
    if record.exc_info and record.exc_info[0] is not None:
        exc = record.exc_info[1]
        out["err"] = f"{type(exc).__name__}: {exc}"
    return out


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\\\n\t'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record).items())
        return redact(line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(json.dumps(_fields(record), default=str))


def setup(level: str = "info", fmt: str = "logfmt", stream: Any = None) -> None:
    """Configure the root logger once for the whole process."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    # Libraries are chatty at debug level and may echo protocol lines; keep them at warning.
    for noisy in ("aiohttp.access", "aioimaplib", "aiosmtplib", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, _LEVELS[level]))
