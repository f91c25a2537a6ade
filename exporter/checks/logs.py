"""Log checks (``logs:``): real mail flow counted from a file, the journal or syslog.

One check per log source, kind ``log``, named after the source.  A run reads the lines
that arrived since the last run (at most ``max_lines_per_run``, in batches of
:data:`BATCH` lines, each counted and committed before the next is read), hands each to the parser
of its program class (:mod:`exporter.logs.parsers`), adds the counts to the check's
cumulative state and then saves the source's position, so that a restart neither skips
nor re-counts a line.  Parsing runs in a worker thread: a burst of lines does not stall
``/metrics``.  Source health::

    mail_log_up{source}                                1 when the last read worked
    mail_log_lines_total{source, program}              lines read, by program class
    mail_log_lines_unparsed_total{source, program}     lines a parser did not understand
    mail_log_last_line_timestamp_seconds{source}       the newest line's own time
    mail_log_read_errors_total{source, reason}         too_long, truncated, rotated, decode, dropped, ...
"""

from __future__ import annotations

__all__ = ["PROGRAMS", "count_records", "log_check"]

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from exporter import config as cfgmod
from exporter.checks.registry import BuildContext, check_kind
from exporter.core.model import CheckState, Sink
from exporter.core.scheduler import Check
from exporter.logs import dovecot, exim, postfix  # noqa: F401 (the parsers register)
from exporter.logs.parsers import PARSERS, ParseOptions, Parser
from exporter.logs.position import PositionStore
from exporter.logs.record import LogRecord, program_class
from exporter.logs.sources import (
    SOURCES,
    LogSource,
    LogSourceError,
    file,  # noqa: F401 (the sources register)
)
from exporter.logs.tally import Tally

#: Program classes of ``mail_log_lines_total``: the parsers', other (no parser for it) and
#: malformed (no syslog shape at all).
PROGRAMS = ("postfix", "exim", "dovecot", "other", "malformed")
#: Lines parsed on the event loop before parsing moves to a worker thread.
INLINE_LINES = 2_000
#: Lines read, counted and committed at a time within a run (bounds the memory of a run).
BATCH = 20_000


def count_records(
    records: Sequence[LogRecord], parsers: Mapping[str, Parser], opts: ParseOptions, tally: Tally
) -> float | None:
    """Count ``records`` into ``tally``; return the newest timestamp seen (None if none)."""
    newest: float | None = None
    lines: Counter[str] = Counter()
    unparsed: Counter[str] = Counter()
    classes: dict[str, str] = {}
    for rec in records:
        program = rec.program
        if not program:
            lines["malformed"] += 1
            continue
        cls = classes.get(program)
        if cls is None:
            cls = classes[program] = program_class(program)
        parse = parsers.get(cls)
        if parse is None:
            lines["other"] += 1
            continue
        lines[cls] += 1
        try:
            understood = parse(rec, tally, opts)
        except Exception:  # a parser bug must not stop the source; the line counts as not understood
            understood = False
        if not understood:
            unparsed[cls] += 1
        ts = rec.timestamp
        if ts is not None and (newest is None or ts > newest):
            newest = ts
    for cls, n in lines.items():
        tally.inc("mail_log_lines_total", (cls,), n)
    for cls, n in unparsed.items():
        tally.inc("mail_log_lines_unparsed_total", (cls,), n)
    return newest


def _init_state(state: CheckState, cfg: cfgmod.LogConfig) -> None:
    for program in PROGRAMS:
        state.init_counter("mail_log_lines_total", source=cfg.name, program=program)
    for parser in cfg.parsers:
        state.init_counter("mail_log_lines_unparsed_total", source=cfg.name, program=parser)


def log_check(cfg: cfgmod.LogConfig, positions: PositionStore) -> Check:
    parsers: dict[str, Parser] = {name: PARSERS[name] for name in cfg.parsers}
    opts = ParseOptions(domains=frozenset(d.lower() for d in cfg.domains), top_domains=cfg.top_domains)
    state = CheckState()
    _init_state(state, cfg)
    holder: dict[str, LogSource] = {}
    newest: list[float] = []
    reported: Counter[str] = Counter()
    name = cfg.name

    def source() -> LogSource:
        if "source" not in holder:
            holder["source"] = SOURCES[cfg.type](cfg, positions)
        return holder["source"]

    def count_batch(records: Sequence[LogRecord], errors: Counter[str]) -> float | None:
        """Count one batch into the check's state (run in a worker thread for large batches)."""
        tally = Tally()
        ts = count_records(records, parsers, opts, tally)
        for reason, n in errors.items():
            if n > reported[reason]:
                tally.inc("mail_log_read_errors_total", (reason,), n - reported[reason])
                reported[reason] = n
        tally.flush(state, name)
        return ts

    async def run(sink: Sink, log: logging.Logger) -> bool:
        src = source()
        ok = True
        total = 0
        while total < cfg.max_lines_per_run:
            want = min(BATCH, cfg.max_lines_per_run - total)
            try:
                records = await src.read(want)
            except LogSourceError as exc:
                ok = False
                sink.fail(exc.reason, exc.message)
                break
            errors = Counter(src.errors)
            if len(records) > INLINE_LINES:
                ts = await asyncio.to_thread(count_batch, records, errors)
            else:
                ts = count_batch(records, errors)
            if not records:
                break
            total += len(records)
            try:
                await src.commit()
            except LogSourceError as exc:
                ok = False
                sink.fail(exc.reason, exc.message)
                break
            newest[:] = [max(ts if ts is not None else time.time(), newest[0] if newest else 0.0)]
            if len(records) < want:
                break
        sink.gauge("mail_log_up", 1.0 if ok else 0.0, source=name)
        if newest:
            sink.gauge("mail_log_last_line_timestamp_seconds", newest[0], source=name)
        sink.detail("lines", str(total))
        return ok

    def on_timeout(check: Check, sink: Sink) -> None:
        sink.gauge("mail_log_up", 0.0, source=name)
        if newest:
            sink.gauge("mail_log_last_line_timestamp_seconds", newest[0], source=name)
        sink.fail("timeout", f"reading the log did not finish within {check.timeout:g}s")

    async def close() -> None:
        if "source" in holder:
            await holder.pop("source").close()

    timeout = max(60.0, getattr(cfg, "timeout", 0.0) + 30.0)
    return Check("log", name, cfg.interval, timeout, cfg, run, on_timeout, state=state, on_close=close)


@check_kind("log", order=35)
def build(cfg: cfgmod.Config, ctx: BuildContext) -> Iterable[Check]:
    positions = PositionStore(ctx.state_dir)
    return [log_check(log, positions) for log in cfg.logs]
