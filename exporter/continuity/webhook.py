"""Alertmanager payloads, validated: the version 4 webhook and the ``/api/v2/alerts`` list.

Pure functions, no I/O.  :func:`parse_notification` takes the raw request body and
returns a :class:`Notification` or raises :class:`~exporter.core.errors.WebhookError`
with the HTTP status to answer (400 for anything malformed) and a message that says
which field is wrong and what was expected, for example::

    alerts[2].startsAt: expected an RFC 3339 time like "2030-01-05T22:00:00Z", got "yesterday"

What is checked (Alertmanager's ``notify/webhook`` message, version "4")::

    version            "4" (required)
    status             "firing" | "resolved" (required)
    alerts             list (required), each:
      status           "firing" | "resolved" (required)
      labels           mapping of string to string (required; at most MAX_LABELS,
                       names up to MAX_LABEL_NAME characters, values up to MAX_LABEL_VALUE)
      annotations      mapping of string to string (optional)
      startsAt         RFC 3339 time (required; not the zero time)
      endsAt           RFC 3339 time; "0001-01-01T00:00:00Z" (Go's zero time) means "not
                       ended".  Required and real for a resolved alert, not before startsAt.
      fingerprint      1 to 128 printable ASCII characters without spaces (required)
      generatorURL     string (optional)
    receiver, groupKey, externalURL              strings (optional)
    groupLabels, commonLabels, commonAnnotations mappings of string to string (optional)
    truncatedAlerts    integer >= 0 (optional: alerts Alertmanager left out for max_alerts)

Unknown fields are ignored, at every level, so that a newer Alertmanager does not break
ingestion.  A firing alert's ``endsAt`` is ignored: Alertmanager sends the zero time for
it, and Prometheus-style "expected end" times are not an end.
"""

from __future__ import annotations

__all__ = [
    "MAX_LABELS",
    "MAX_LABEL_NAME",
    "MAX_LABEL_VALUE",
    "ActiveAlert",
    "Alert",
    "Notification",
    "format_time",
    "parse_active_alerts",
    "parse_notification",
    "parse_time",
    "seconds",
]

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

from exporter.core.errors import WebhookError
from exporter.core.timefmt import format_time, parse_time, seconds

#: Most labels accepted on one alert (Prometheus alerts rarely carry more than 20).
MAX_LABELS = 100
#: Longest label name accepted.
MAX_LABEL_NAME = 256
#: Longest label value accepted.  Labels identify alerts; a longer value is a bug upstream.
MAX_LABEL_VALUE = 4096
#: Longest annotation value accepted (descriptions may be long; the body limit applies too).
MAX_ANNOTATION_VALUE = 65536

_FINGERPRINT_RE = re.compile(r"^[!-~]{1,128}$")
Status = Literal["firing", "resolved"]


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert of a notification.  Times are Unix seconds; ``starts_ms`` is the dedupe key."""

    status: Status
    fingerprint: str
    starts_at: float
    starts_ms: int
    ends_at: float | None  # None: not ended (firing, or Go's zero time)
    labels: tuple[tuple[str, str], ...]  # sorted by name

    def label(self, name: str, default: str = "") -> str:
        for k, v in self.labels:
            if k == name:
                return v
        return default


@dataclass(frozen=True, slots=True)
class Notification:
    status: Status
    receiver: str
    group_key: str
    truncated_alerts: int
    alerts: tuple[Alert, ...]


@dataclass(frozen=True, slots=True)
class ActiveAlert:
    """One alert from Alertmanager's ``GET /api/v2/alerts``."""

    fingerprint: str
    starts_at: float
    starts_ms: int
    state: str  # active | suppressed | unprocessed
    labels: tuple[tuple[str, str], ...]


# --- validation helpers ---------------------------------------------------------------------------


def _bad(path: str, expected: str, value: Any) -> WebhookError:
    return WebhookError(f"{path}: expected {expected}, got {_show(value)}", status=400)


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return json.dumps(text)
    if isinstance(value, int | float):
        return repr(value)[:40]
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _string(obj: Mapping[str, Any], key: str, path: str, *, required: bool) -> str:
    if key not in obj:
        if required:
            raise WebhookError(f"{path}: missing required field {key}", status=400)
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise _bad(f"{path}.{key}" if path else key, "a string", value)
    return value


def _status(obj: Mapping[str, Any], path: str) -> Status:
    where = f"{path}.status" if path else "status"
    if "status" not in obj:
        raise WebhookError(f"{path or 'payload'}: missing required field status", status=400)
    value = obj["status"]
    if value == "firing":
        return "firing"
    if value == "resolved":
        return "resolved"
    raise _bad(where, 'one of "firing", "resolved"', value)


def _labels(value: Any, path: str, *, limit_value: int, limit_count: int) -> tuple[tuple[str, str], ...]:
    """A mapping of string to string, bounded, as sorted pairs."""
    _check_map(value, path, limit_value=limit_value, limit_count=limit_count)
    return tuple(sorted(value.items()))


def _check_map(value: Any, path: str, *, limit_value: int, limit_count: int) -> None:
    if not isinstance(value, dict):
        raise _bad(path, "an object of string values", value)
    if len(value) > limit_count:
        raise WebhookError(f"{path}: expected at most {limit_count} entries, got {len(value)}", status=400)
    for k, v in value.items():
        if type(v) is not str or not k or len(k) > MAX_LABEL_NAME or len(v) > limit_value:
            if not k or len(k) > MAX_LABEL_NAME:
                raise WebhookError(f"{path}: expected names of 1 to {MAX_LABEL_NAME} characters", status=400)
            if not isinstance(v, str):
                raise _bad(f"{path}.{_name(k)}", "a string", v)
            raise WebhookError(
                f"{path}.{_name(k)}: expected at most {limit_value} characters, got {len(v)}", status=400
            )


def _name(key: str) -> str:
    return key if len(key) <= 60 else key[:57] + "..."


def _time(obj: Mapping[str, Any], key: str, path: str, *, required: bool) -> int | None:
    where = f"{path}.{key}"
    if key not in obj:
        if required:
            raise WebhookError(f"{path}: missing required field {key}", status=400)
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise _bad(where, 'an RFC 3339 time like "2030-01-05T22:00:00Z"', value)
    try:
        return parse_time(value)
    except ValueError:
        raise _bad(where, 'an RFC 3339 time like "2030-01-05T22:00:00Z"', value) from None


def _fingerprint(obj: Mapping[str, Any], path: str) -> str:
    value = _string(obj, "fingerprint", path, required=True)
    if not _FINGERPRINT_RE.match(value):
        raise _bad(f"{path}.fingerprint", "1 to 128 printable ASCII characters without spaces", value)
    return value


def _alert(raw: Any, path: str) -> Alert:
    if not isinstance(raw, dict):
        raise _bad(path, "an object", raw)
    status = _status(raw, path)
    if "labels" not in raw:
        raise WebhookError(f"{path}: missing required field labels", status=400)
    labels = _labels(raw["labels"], f"{path}.labels", limit_value=MAX_LABEL_VALUE, limit_count=MAX_LABELS)
    if "annotations" in raw and raw["annotations"] is not None:
        _check_map(raw["annotations"], f"{path}.annotations", limit_value=MAX_ANNOTATION_VALUE, limit_count=MAX_LABELS)
    if "generatorURL" in raw:
        _string(raw, "generatorURL", path, required=False)
    starts = _time(raw, "startsAt", path, required=True)
    if starts is None:
        raise WebhookError(f"{path}.startsAt: expected a real time, got the zero time", status=400)
    ends = _time(raw, "endsAt", path, required=status == "resolved")
    fingerprint = _fingerprint(raw, path)
    ends_at: float | None = None
    if status == "resolved":
        if ends is None:
            raise WebhookError(f"{path}.endsAt: a resolved alert needs a real end time, got the zero time", status=400)
        if ends < starts:
            raise WebhookError(f"{path}.endsAt: expected a time not before startsAt", status=400)
        ends_at = seconds(ends)
    return Alert(status, fingerprint, seconds(starts), starts // 1_000_000, ends_at, labels)


# --- the fast path -----------------------------------------------------------------------------------
#
# Every webhook request is validated on the exporter's event loop, so the common case, a
# well-formed notification, takes one pass with few calls: _fast_notification returns the
# Notification, or None at the first thing it does not like, and then the checked path
# (_checked_notification) validates again and raises the error that says what is wrong.
# The fast path accepts nothing the checked path refuses, and builds the same Notification
# (tests/test_continuity_webhook.py compares them).


def _map_ok(value: Any, limit_value: int, limit_count: int) -> TypeGuard[dict[str, str]]:
    """What :func:`_check_map` accepts: an object of at most ``limit_count`` bounded string values."""
    if type(value) is not dict or len(value) > limit_count:
        return False
    for k, v in value.items():
        if type(v) is not str or not k or len(k) > MAX_LABEL_NAME or len(v) > limit_value:
            return False
    return True


def _fast_alert(raw: Any) -> Alert | None:
    if type(raw) is not dict:
        return None
    status = raw.get("status")
    if status not in ("firing", "resolved"):
        return None
    labels = raw.get("labels")
    if not _map_ok(labels, MAX_LABEL_VALUE, MAX_LABELS):
        return None
    annotations = raw.get("annotations")
    if annotations is not None and not _map_ok(annotations, MAX_ANNOTATION_VALUE, MAX_LABELS):
        return None
    if "generatorURL" in raw and type(raw["generatorURL"]) is not str:
        return None
    fingerprint = raw.get("fingerprint")
    starts_text = raw.get("startsAt")
    if type(fingerprint) is not str or not _FINGERPRINT_RE.match(fingerprint) or type(starts_text) is not str:
        return None
    try:
        starts = parse_time(starts_text)
        if "endsAt" in raw:
            ends_text = raw["endsAt"]
            if type(ends_text) is not str:
                return None
            ends = parse_time(ends_text)
        elif status == "resolved":
            return None
    except ValueError:
        return None
    if starts is None:
        return None
    ends_at: float | None = None
    if status == "resolved":
        if ends is None or ends < starts:
            return None
        ends_at = seconds(ends)
    return Alert(status, fingerprint, seconds(starts), starts // 1_000_000, ends_at, tuple(sorted(labels.items())))


def _fast_notification(data: Any) -> Notification | None:
    if type(data) is not dict or data.get("version") != "4":
        return None
    status = data.get("status")
    if status not in ("firing", "resolved"):
        return None
    receiver = data.get("receiver", "")
    group_key = data.get("groupKey", "")
    if type(receiver) is not str or type(group_key) is not str or type(data.get("externalURL", "")) is not str:
        return None
    for key in ("groupLabels", "commonLabels", "commonAnnotations"):
        value = data.get(key)
        if value is not None and not _map_ok(value, MAX_ANNOTATION_VALUE, 10_000):
            return None
    truncated = data.get("truncatedAlerts", 0)
    if truncated is None:
        truncated = 0
    elif type(truncated) is not int or truncated < 0:
        return None
    raw_alerts = data.get("alerts")
    if type(raw_alerts) is not list:
        return None
    alerts = []
    for raw in raw_alerts:
        alert = _fast_alert(raw)
        if alert is None:
            return None
        alerts.append(alert)
    return Notification(status, receiver, group_key, truncated, tuple(alerts))


# --- the webhook ------------------------------------------------------------------------------------


def parse_notification(body: bytes) -> Notification:
    """Validate one webhook body.  Raises :class:`WebhookError` (status 400) when it is malformed."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise WebhookError("body: JSON nested too deeply", status=400) from None
    except UnicodeDecodeError:
        raise WebhookError("body: expected UTF-8 JSON", status=400) from None
    except ValueError as exc:
        raise WebhookError(f"body: not valid JSON: {str(exc)[:120]}", status=400) from None
    note = _fast_notification(data)
    return note if note is not None else _checked_notification(data)


def _checked_notification(data: Any) -> Notification:
    """The notification in ``data``, every field checked; raises the WebhookError of the first bad one."""
    if not isinstance(data, dict):
        raise _bad("body", "a JSON object (an Alertmanager webhook message)", data)
    if "version" not in data:
        raise WebhookError("payload: missing required field version", status=400)
    if data["version"] != "4":
        raise _bad("version", '"4" (Alertmanager webhook version 4)', data["version"])
    status = _status(data, "")
    receiver = _string(data, "receiver", "", required=False)
    group_key = _string(data, "groupKey", "", required=False)
    _string(data, "externalURL", "", required=False)
    for key in ("groupLabels", "commonLabels", "commonAnnotations"):
        if key in data and data[key] is not None:
            _check_map(data[key], key, limit_value=MAX_ANNOTATION_VALUE, limit_count=10_000)
    truncated = data.get("truncatedAlerts", 0)
    if truncated is None:
        truncated = 0
    if not isinstance(truncated, int) or isinstance(truncated, bool) or truncated < 0:
        raise _bad("truncatedAlerts", "an integer >= 0", truncated)
    if "alerts" not in data:
        raise WebhookError("payload: missing required field alerts", status=400)
    raw_alerts = data["alerts"]
    if not isinstance(raw_alerts, list):
        raise _bad("alerts", "a list", raw_alerts)
    alerts = tuple(_alert(a, f"alerts[{i}]") for i, a in enumerate(raw_alerts))
    return Notification(status, receiver, group_key, truncated, alerts)


# --- GET /api/v2/alerts -------------------------------------------------------------------------------


def parse_active_alerts(body: bytes) -> list[ActiveAlert]:
    """Alertmanager's active alerts (``GET /api/v2/alerts``).  Raises :class:`WebhookError` (502)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise WebhookError("alertmanager /api/v2/alerts: not valid JSON", status=502) from None
    if not isinstance(data, list):
        raise WebhookError("alertmanager /api/v2/alerts: expected a list", status=502)
    out = []
    for i, raw in enumerate(data):
        path = f"[{i}]"
        try:
            if not isinstance(raw, dict):
                raise _bad(path, "an object", raw)
            labels = _labels(raw.get("labels"), f"{path}.labels", limit_value=MAX_LABEL_VALUE, limit_count=MAX_LABELS)
            starts = _time(raw, "startsAt", path, required=True)
            if starts is None:
                raise WebhookError(f"{path}.startsAt: zero time", status=400)
            fingerprint = _fingerprint(raw, path)
            status = raw.get("status")
            state = status.get("state") if isinstance(status, dict) else None
        except WebhookError as exc:
            raise WebhookError(f"alertmanager /api/v2/alerts: {exc}", status=502) from None
        out.append(
            ActiveAlert(
                fingerprint, seconds(starts), starts // 1_000_000, state if isinstance(state, str) else "active", labels
            )
        )
    return out
