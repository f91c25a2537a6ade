"""End-to-end delivery probes ("routes"): send a message over SMTP, find it over IMAP.

* :mod:`exporter.roundtrip.sender`: the probe message and the SMTP dialog (aiosmtplib);
* :mod:`exporter.roundtrip.receiver`: one shared IMAP connection per mailbox (aioimaplib),
  IDLE or polling, search by header, deletion and the sweep;
* :mod:`exporter.roundtrip.route`: the outcome state machine of one route and its run.

:func:`exporter.checks.route.route_check` turns a route of the config into a scheduled
check.  See ``docs/roundtrip.md``.
"""

from __future__ import annotations

__all__ = ["LATENCY_BUCKETS", "RESULTS", "Route"]

from exporter.roundtrip.route import LATENCY_BUCKETS, RESULTS, Route
