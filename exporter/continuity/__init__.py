"""Continuity: incidents from Alertmanager, MTTR/MTBF/availability, RTO and RPO estimates.

Modules, one concern each:

- :mod:`~exporter.continuity.webhook`: validation of Alertmanager payloads (pure);
- :mod:`~exporter.continuity.incidents`: how alerts become incidents, drills and maintenance;
- :mod:`~exporter.continuity.figures`: MTTR, MTBF, downtime, availability, RTO, RPO (pure);
- :mod:`~exporter.continuity.store`: the :class:`~exporter.continuity.store.Store` interface
  and its SQLite implementation (WAL, synchronous=FULL, group commit);
- :mod:`~exporter.continuity.sources`: backup and replica readings (files, commands, IMAP canary),
  one registry of sources per kind, keyed by the config's ``type``;
- :mod:`~exporter.continuity.service`: the :class:`~exporter.continuity.service.Continuity`
  object the exporter owns (webhook handler, refresh, checks, reconciliation);
- :mod:`~exporter.continuity.cli`: ``mail-continuity-exporter incidents import|list|export``.

See docs/continuity.md.
"""
