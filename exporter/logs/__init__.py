"""Real mail flow from the logs: sources (file, journal, syslog), pure parsers (Postfix,
Exim, Dovecot), and the bounded tally they count into.

Layer: domain (beside probers, queues, roundtrip and continuity).  A log check
(:mod:`exporter.checks.logs`) reads a batch of :class:`~exporter.logs.record.LogRecord`
from its source, hands each to the parser of its program class, and flushes the
:class:`~exporter.logs.tally.Tally` into the check's cumulative state; then the source's
position is saved, so that a restart neither skips nor re-counts a line.
"""
