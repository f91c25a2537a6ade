"""The incident store: the :class:`Store` interface and its SQLite implementation.

Modules (imported in this order; none imports the package back):

- :mod:`.records`: what reads return (:class:`Summary`, :class:`IncidentRecord`, ...);
- :mod:`.protocol`: the :class:`Store` interface and its contract (durability,
  idempotency on (fingerprint, startsAt), errors) — what a PostgreSQL store implements;
- :mod:`.schema`: the SQLite file: :data:`DB_NAME`, :data:`MIGRATIONS`,
  :data:`SCHEMA_VERSION`, :func:`migrate`, connection settings (WAL, synchronous=FULL);
- :mod:`.tx`: the incident rules' transaction (``IncidentTx``) in SQL, and the write operations;
- :mod:`.writer`: the writer thread or process, with group commit;
- :mod:`.sqlite`: :class:`SqliteStore`.

``python -m exporter.continuity.store --writer-fd FD PATH`` runs the writer process
(started by :class:`SqliteStore` with ``writer="process"``).
"""

from __future__ import annotations

__all__ = [
    "DB_NAME",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "IncidentRecord",
    "OpenIncident",
    "RecoveryHistogram",
    "SqliteStore",
    "Store",
    "Summary",
    "migrate",
]

from exporter.continuity.store.protocol import Store
from exporter.continuity.store.records import IncidentRecord, OpenIncident, RecoveryHistogram, Summary
from exporter.continuity.store.schema import DB_NAME, MIGRATIONS, SCHEMA_VERSION, migrate
from exporter.continuity.store.sqlite import SqliteStore
