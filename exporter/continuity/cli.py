"""``mail-continuity-exporter incidents import|list|export|migrate``: history in, audit out,
and a whole store copied between SQLite and PostgreSQL (:mod:`exporter.continuity.store.transfer`).

Import file formats (docs/continuity.md#importing-past-incidents):

YAML, a list (or a mapping with an ``incidents`` list) of::

    - service: inbound              # required: a service name
      severity: critical            # critical | warning | info | anything else -> other (default other)
      start: "2026-03-01T10:00:00Z" # required: RFC 3339 (quoted or not) or Unix seconds
      end: "2026-03-01T10:45:00Z"   # required, not before start
      labels: {alertname: MXDown}   # optional; drill: "true" makes it a drill
      kind: incident                # optional: incident | drill

CSV with a header row: ``service,severity,start,end,labels`` (``labels`` optional: a JSON
object or ``key=value;key=value``; ``kind`` optional).  The columns that ``incidents export
--format csv`` adds (``id``, ``duration_seconds``, ``source``, ``alerts``) are accepted
and ignored, and so are rows of kind ``maintenance``, so an export can be imported
elsewhere.

An incident's identity is its service, kind and start (to the millisecond): importing the
same file again, or a file that overlaps an earlier import, adds nothing twice.  The
whole file is checked first; with any error nothing is imported and every error is
printed with its line.
"""

from __future__ import annotations

__all__ = ["main", "read_import_file"]

import argparse
import asyncio
import csv
import io
import json
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import yaml

from exporter.continuity.incidents import ImportRecord, severity_of
from exporter.continuity.store import IncidentRecord, SqliteStore, Store
from exporter.continuity.webhook import format_time, parse_time, seconds
from exporter.core.errors import ConfigError, ExporterError
from exporter.core.secrets import redact, register

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")
_IMPORT_KEYS = ("service", "severity", "start", "end", "labels", "kind")
_EXPORT_ONLY = ("id", "duration_seconds", "source", "alerts")
EXPORT_COLUMNS = ("id", "service", "kind", "severity", "start", "end", "duration_seconds", "source", "alerts", "labels")


class ImportError_(ExporterError, ValueError):
    """An import file has errors; ``errors`` lists every one."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


# --- reading import files -----------------------------------------------------------------------------


def _time(value: Any, where: str, key: str, errors: list[str]) -> float | None:
    if isinstance(value, bool) or value is None or value == "":
        errors.append(f"{where}: {key}: required (an RFC 3339 time or Unix seconds)")
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            errors.append(f"{where}: {key}: a time needs a zone, such as Z or +02:00")
            return None
        return value.timestamp()
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
            return float(text)
        try:
            ns = parse_time(text)
        except ValueError:
            ns = None
        if ns is not None:
            return seconds(ns)
    errors.append(
        f'{where}: {key}: expected an RFC 3339 time like "2026-03-01T10:00:00Z" or Unix seconds, got {value!r}'
    )
    return None


def _labels(value: Any, where: str, errors: list[str]) -> tuple[tuple[str, str], ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except ValueError:
                errors.append(f"{where}: labels: not a valid JSON object")
                return ()
        else:
            pairs = {}
            for part in text.split(";"):
                if not part.strip():
                    continue
                k, sep, v = part.partition("=")
                if not sep or not k.strip():
                    errors.append(f'{where}: labels: expected "key=value;key=value" or a JSON object')
                    return ()
                pairs[k.strip()] = v.strip()
            value = pairs
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        errors.append(f"{where}: labels: expected a mapping of string to string")
        return ()
    return tuple(sorted(value.items()))


def _record(item: dict[str, Any], where: str, errors: list[str]) -> ImportRecord | None:
    n = len(errors)
    unknown = [k for k in item if k not in _IMPORT_KEYS and k not in _EXPORT_ONLY]
    if unknown:
        errors.append(
            f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; expected {', '.join(_IMPORT_KEYS)}"
        )
    service = item.get("service")
    if not isinstance(service, str) or not _NAME_RE.match(service):
        errors.append(f"{where}: service: expected a service name, got {service!r}")
    severity = item.get("severity") or "other"
    if not isinstance(severity, str):
        errors.append(f"{where}: severity: expected a string, got {severity!r}")
        severity = "other"
    start = _time(item.get("start"), where, "start", errors)
    end = _time(item.get("end"), where, "end", errors)
    if start is not None and end is not None and end < start:
        errors.append(f"{where}: end is before start")
    labels = _labels(item.get("labels"), where, errors)
    kind = item.get("kind") or ""
    if kind == "maintenance":
        return None  # in an export: maintenance comes from the configuration, not from history
    if kind not in ("", "incident", "drill"):
        errors.append(f'{where}: kind: expected "incident" or "drill", got {kind!r}')
    if kind == "drill" and dict(labels).get("drill") != "true":
        labels = tuple(sorted({**dict(labels), "drill": "true"}.items()))
    if kind == "incident" and dict(labels).get("drill", "").lower() == "true":
        errors.append(f'{where}: kind "incident" contradicts the label drill="true"')
    if len(errors) > n or start is None or end is None or not isinstance(service, str):
        return None
    return ImportRecord(service, severity_of(severity), start, end, labels, where)


def _read_yaml(text: str, name: str, errors: list[str]) -> list[ImportRecord]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ImportError_([f"{name}: not valid YAML: {exc}"]) from None
    items_node = node
    if isinstance(data, dict) and set(data) == {"incidents"}:
        data = data["incidents"]
        assert isinstance(node, yaml.MappingNode)
        items_node = node.value[0][1]
    if not isinstance(data, list):
        raise ImportError_([f"{name}: expected a list of incidents (or a mapping with an incidents list)"])
    out = []
    for i, item in enumerate(data):
        line = items_node.value[i].start_mark.line + 1 if isinstance(items_node, yaml.SequenceNode) else 0
        where = f"{name} line {line}"
        if not isinstance(item, dict):
            errors.append(f"{where}: expected a mapping with service, severity, start, end, labels")
            continue
        rec = _record(item, where, errors)
        if rec is not None:
            out.append(rec)
    return out


def _read_csv(text: str, name: str, errors: list[str]) -> list[ImportRecord]:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None:
        raise ImportError_([f"{name}: empty file; expected a header row service,severity,start,end,labels"])
    missing = [c for c in ("service", "start", "end") if c not in reader.fieldnames]
    if missing:
        raise ImportError_([f"{name} line 1: header lacks column(s) {', '.join(missing)}"])
    out = []
    for row in reader:
        where = f"{name} line {reader.line_num}"
        if None in row:
            errors.append(f"{where}: more cells than header columns")
            continue
        item = {k: v for k, v in row.items() if k is not None}
        rec = _record(item, where, errors)
        if rec is not None:
            out.append(rec)
    return out


def read_import_file(path: str, fmt: str = "auto", services: set[str] | None = None) -> list[ImportRecord]:
    """Read and check an import file.  Raises :class:`ImportError_` listing every error."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ImportError_([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ImportError_([f"{path}: expected UTF-8 text"]) from None
    if fmt == "auto":
        fmt = "csv" if p.suffix.lower() == ".csv" else "yaml"
    errors: list[str] = []
    records = _read_csv(text, p.name, errors) if fmt == "csv" else _read_yaml(text, p.name, errors)
    if services is not None:
        for rec in records:
            if rec.service not in services:
                errors.append(f"{rec.where}: service: {rec.service!r} is not in the configuration")
    seen: dict[str, str] = {}
    for rec in records:
        if rec.key in seen:
            errors.append(f"{rec.where}: same service, kind and start as {seen[rec.key]}")
        seen.setdefault(rec.key, rec.where)
    if errors:
        raise ImportError_(errors)
    return records


# --- commands ---------------------------------------------------------------------------------------------


def _services(config_file: str | None) -> set[str] | None:
    if config_file is None:
        return None
    from exporter import config

    cfg = config.load(config_file)
    return {s.name for s in cfg.continuity.services}


async def _import(args: argparse.Namespace, out: TextIO) -> int:
    records = read_import_file(args.file, args.format, _services(args.config_file))
    if args.dry_run:
        print(f"{args.file}: {len(records)} incidents, all valid (dry run: nothing written)", file=out)
        return 0
    store = _store(args, readonly=False)
    await store.open()
    try:
        changes = await store.import_records(records, time.time())
    finally:
        await store.close()
    print(
        f"{args.file}: imported {changes.imported}, already present {changes.skipped} (store: {store.description})",
        file=out,
    )
    return 0


def _store(args: argparse.Namespace, *, readonly: bool) -> Store:
    """The store of ``--storage.url`` (PostgreSQL), else the SQLite file under ``--storage.path``."""
    if args.storage_url:
        register(args.storage_url)
        from exporter.continuity.store.postgres import PostgresStore

        return PostgresStore(args.storage_url, readonly=readonly)
    store = SqliteStore(args.storage_path, readonly=readonly)
    if readonly and not store.path.exists():
        raise ExporterError(f"{store.path}: no incident store here (see --storage.path)")
    return store


async def _load(args: argparse.Namespace) -> list[IncidentRecord]:
    store = _store(args, readonly=True)
    await store.open()
    try:
        rows = await store.incidents(service=args.service, open_only=args.open)
    finally:
        await store.close()
    if args.kind != "all":
        rows = [r for r in rows if r.kind == args.kind]
    return rows


def _duration(r: IncidentRecord) -> str:
    return "" if r.ended_at is None else f"{r.ended_at - r.started_at:.3f}"


async def _list(args: argparse.Namespace, out: TextIO) -> int:
    rows = await _load(args)
    if args.limit is not None:
        rows = rows[-args.limit :]
    table = [("ID", "SERVICE", "KIND", "SEVERITY", "START", "END", "DURATION", "SOURCE", "ALERTS")]
    for r in rows:
        end = "open" if r.ended_at is None else format_time(r.ended_at)
        dur = "" if r.ended_at is None else _human(r.ended_at - r.started_at)
        table.append(
            (str(r.id), r.service, r.kind, r.severity, format_time(r.started_at), end, dur, r.source, str(r.alerts))
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
    print(f"{len(rows)} record(s)", file=out)
    return 0


def _human(seconds: float) -> str:
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


async def _export(args: argparse.Namespace, out: TextIO) -> int:
    rows = await _load(args)
    dest: TextIO = out
    handle = None
    if args.output:
        handle = Path(args.output).open("w", encoding="utf-8", newline="")  # noqa: SIM115, ASYNC230 - closed below
        dest = handle
    try:
        if args.format == "json":
            items = [
                {
                    "id": r.id,
                    "service": r.service,
                    "kind": r.kind,
                    "severity": r.severity,
                    "start": format_time(r.started_at),
                    "end": None if r.ended_at is None else format_time(r.ended_at),
                    "duration_seconds": None if r.ended_at is None else round(r.ended_at - r.started_at, 3),
                    "source": r.source,
                    "alerts": r.alerts,
                    "labels": json.loads(r.labels),
                }
                for r in rows
            ]
            json.dump(items, dest, indent=2, sort_keys=False)
            dest.write("\n")
        else:
            w = csv.writer(dest, lineterminator="\n")
            w.writerow(EXPORT_COLUMNS)
            for r in rows:
                w.writerow(
                    [
                        r.id,
                        r.service,
                        r.kind,
                        r.severity,
                        format_time(r.started_at),
                        "" if r.ended_at is None else format_time(r.ended_at),
                        _duration(r),
                        r.source,
                        r.alerts,
                        r.labels,
                    ]
                )
    finally:
        if handle is not None:
            handle.close()
    return 0


async def _migrate(args: argparse.Namespace, out: TextIO) -> int:
    from exporter.continuity.store.transfer import migrate_store, parse_location

    for text in (args.source, args.destination):
        if text.startswith(("postgresql://", "postgres://")):
            register(text)
    copied = await migrate_store(args.source, args.destination, time.time())
    where = {t: parse_location(t) for t in (args.source, args.destination)}
    shown = {t: (loc.store(readonly=True).description) for t, loc in where.items()}
    counts = ", ".join(f"{n} {table}" for table, n in copied.items())
    print(f"copied {counts} from {shown[args.source]} to {shown[args.destination]}; figures equal", file=out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mail-continuity-exporter incidents",
        description="Import past incidents, and list or export the incident store for audit.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Formats and rules: docs/continuity.md. The exporter may keep running meanwhile.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--storage.path",
        dest="storage_path",
        metavar="DIR",
        default="./data",
        help="Directory of the incident store (as given to the exporter). Default: ./data",
    )
    common.add_argument(
        "--storage.url",
        dest="storage_url",
        metavar="URL",
        default=None,
        help="A PostgreSQL store instead (postgresql://USER@HOST:PORT/DBNAME; password from PGPASSWORD "
        "or a PGPASSFILE).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    imp = sub.add_parser(
        "import",
        parents=[common],
        help="import past incidents from YAML or CSV (idempotent)",
        description="Import past incidents. Importing the same file twice adds nothing the second time.",
    )
    imp.add_argument("file", metavar="FILE", help="YAML (.yml/.yaml) or CSV (.csv) file")
    imp.add_argument("--format", choices=["auto", "yaml", "csv"], default="auto", help="Default: from the extension")
    imp.add_argument(
        "--config.file",
        dest="config_file",
        metavar="PATH",
        default=None,
        help="Check that every service is configured in this file.",
    )
    imp.add_argument("--dry-run", action="store_true", help="Check the file, write nothing.")
    for name, help_ in (("list", "print incidents as a table"), ("export", "write incidents as CSV or JSON")):
        sp = sub.add_parser(name, parents=[common], help=help_, description=help_.capitalize() + ".")
        sp.add_argument("--service", default=None, help="Only this service.")
        sp.add_argument("--open", action="store_true", help="Only open incidents.")
        sp.add_argument(
            "--kind",
            choices=["incident", "drill", "maintenance", "all"],
            default="all",
            help="Only this kind. Default: all",
        )
        if name == "list":
            sp.add_argument("--limit", type=int, default=None, help="Only the last N.")
        else:
            sp.add_argument("--format", choices=["csv", "json"], default="csv", help="Default: csv")
            sp.add_argument("--output", "-o", default=None, metavar="FILE", help="Write here instead of stdout.")
    mig = sub.add_parser(
        "migrate",
        help="copy a whole store: SQLite to PostgreSQL or back",
        description="Copy every alert, incident and recovery of one store into another, empty one, ids "
        "included, in one transaction, then check that both read the same. Stop the exporter that writes "
        "the source first. Keep passwords out of the command line (PGPASSWORD or a PGPASSFILE).",
    )
    mig.add_argument("--from", dest="source", required=True, metavar="STORE", help="sqlite:DIR or postgresql://...")
    mig.add_argument("--to", dest="destination", required=True, metavar="STORE", help="sqlite:DIR or postgresql://...")
    return p


def main(argv: list[str], out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    stdout = out or sys.stdout
    commands = {"import": _import, "list": _list, "export": _export, "migrate": _migrate}
    try:
        return asyncio.run(commands[args.command](args, stdout))
    except ImportError_ as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        print(f"import refused: {len(exc.errors)} error(s); nothing was written", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except ExporterError as exc:
        print(redact(f"incidents {args.command}: {exc}"), file=sys.stderr)
        return 1
