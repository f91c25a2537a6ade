"""The parser registry: one parser per program class, one signature.

A parser is a pure function ``(record, tally, options) -> bool``: it counts what the
record says into the :class:`~exporter.logs.tally.Tally` and returns whether it understood
the line (a line it did not understand is counted in ``mail_log_lines_unparsed_total``).
It never raises for any input: a parser bug must not stop a log source.  Parsers
register with :data:`PARSERS` under their program class (:func:`~exporter.logs.record.program_class`)::

    @PARSERS.register("postfix")
    def parse_postfix(rec: LogRecord, tally: Tally, opts: ParseOptions) -> bool: ...
"""

from __future__ import annotations

__all__ = ["PARSERS", "ParseOptions", "Parser"]

from collections.abc import Callable
from dataclasses import dataclass, field

from exporter.core.registry import Registry
from exporter.logs.record import LogRecord
from exporter.logs.tally import Tally


@dataclass
class ParseOptions:
    """Per-source settings the parsers need, and the bounded domain label state."""

    #: Recipient domains that always get their own ``domain`` label value.
    domains: frozenset[str] = frozenset()
    #: How many further distinct recipient domains get their own label value (first seen).
    top_domains: int = 0
    #: Domains admitted so far beyond ``domains`` (at most ``top_domains``).
    seen_domains: set[str] = field(default_factory=set)

    @property
    def by_domain(self) -> bool:
        return bool(self.domains) or self.top_domains > 0

    def domain_label(self, domain: str) -> str:
        """The bounded label value for a recipient domain: itself if admitted, else ``other``."""
        domain = domain.lower()
        if domain in self.domains or domain in self.seen_domains:
            return domain
        if len(self.seen_domains) < self.top_domains and domain:
            self.seen_domains.add(domain)
            return domain
        return "other"


Parser = Callable[[LogRecord, Tally, ParseOptions], bool]

#: Parsers by program class: postfix, exim, dovecot.
PARSERS: Registry[Parser] = Registry("log parser")
