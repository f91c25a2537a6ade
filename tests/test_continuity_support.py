"""Helpers shared by the continuity tests: Alertmanager payloads, store dumps, HTTP posts.

(Named ``test_continuity_*`` to live with the tests it serves; its own tests check the
builders against the validator, so a broken builder cannot make other tests pass.)
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exporter.continuity.store import DB_NAME
from exporter.continuity.webhook import parse_notification

ZERO = "0001-01-01T00:00:00Z"


def ts(t: float) -> str:
    """Unix seconds as RFC 3339 with nanoseconds, the way Alertmanager writes times."""
    whole = int(t // 1)
    nanos = round((t - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def am_alert(
    fingerprint: str,
    labels: dict[str, str],
    starts: float,
    ends: float | None = None,
    *,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One alert of an Alertmanager v4 webhook message: firing when ``ends`` is None."""
    return {
        "status": "firing" if ends is None else "resolved",
        "labels": dict(labels),
        "annotations": annotations if annotations is not None else {"summary": "Something is wrong."},
        "startsAt": ts(starts),
        "endsAt": ZERO if ends is None else ts(ends),
        "generatorURL": "http://prometheus.example.com:9090/graph",
        "fingerprint": fingerprint,
    }


def payload(alerts: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    status = "firing" if any(a.get("status") == "firing" for a in alerts) else "resolved"
    msg: dict[str, Any] = {
        "version": "4",
        "groupKey": '{}:{alertname="Test"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "mail-continuity-exporter",
        "groupLabels": {"alertname": "Test"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example.com:9093",
        "alerts": alerts,
    }
    msg.update(extra)
    return msg


def body(msg: Any) -> bytes:
    return json.dumps(msg).encode()


def post(url: str, data: bytes, headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, bytes]:
    hdrs = {"Content-Type": "application/json"}
    hdrs.update(headers or {})
    req = urllib.request.Request(url, data=data, method="POST", headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def db_path(storage: Path) -> Path:
    return storage / DB_NAME


def db_dump(storage: Path) -> list[str]:
    """Every row of every table, as SQL (read-only, does not change the files)."""
    uri = f"file:{db_path(storage)}?mode=ro"
    with sqlite3.connect(uri, uri=True) as conn:
        return list(conn.iterdump())


def db_bytes_digest(storage: Path) -> str:
    """SHA-256 over the database file and its WAL: equal digests mean byte-for-byte equal files.

    A missing WAL counts as an empty one (a reader may create the empty file); the ``-shm``
    index is not data and is left out.
    """
    h = hashlib.sha256()
    for suffix in ("", "-wal"):
        p = Path(str(db_path(storage)) + suffix)
        data = p.read_bytes() if p.exists() else b""
        h.update(f"{p.name}:{len(data)}:".encode())
        h.update(data)
    return h.hexdigest()


def alert_keys(storage: Path) -> list[tuple[str, int]]:
    uri = f"file:{db_path(storage)}?mode=ro"
    with sqlite3.connect(uri, uri=True) as conn:
        return [(r[0], int(r[1])) for r in conn.execute("SELECT fingerprint, starts_ms FROM alerts")]


# --- the builders themselves -------------------------------------------------------------------------


def test_builders_make_valid_notifications() -> None:
    msg = payload([am_alert("a1", {"alertname": "X"}, 1_800_000_000.25), am_alert("a2", {}, 1.0e9, 1.0e9 + 5)])
    note = parse_notification(body(msg))
    assert note.status == "firing"
    assert [a.status for a in note.alerts] == ["firing", "resolved"]
    assert note.alerts[0].starts_at == 1_800_000_000.25
    assert note.alerts[0].starts_ms == 1_800_000_000_250
    assert note.alerts[1].ends_at == 1.0e9 + 5


def test_ts_has_nanoseconds_like_alertmanager() -> None:
    assert ts(1_800_000_000.5) == "2027-01-15T08:00:00.500000000Z"
