"""The incident store: the :class:`Store` interface and its SQLite implementation.

Modules (imported in this order; none imports the package back):

- :mod:`.records`: what reads return (:class:`Summary`, :class:`IncidentRecord`, ...);
- :mod:`.protocol`: the :class:`Store` interface and its contract (durability,
  idempotency on (fingerprint, startsAt), errors) — what a PostgreSQL store implements;
- :mod:`.schema`: the SQLite file: :data:`DB_NAME`, :data:`MIGRATIONS`,
  :data:`SCHEMA_VERSION`, :func:`migrate`, connection settings (WAL, synchronous=FULL);
- :mod:`.queries`: the read statements both stores share (one placeholder apart);
- :mod:`.tx`: the incident rules' transaction (``IncidentTx``) in SQL, and the write operations;
- :mod:`.writer`: the writer thread or process, with group commit;
- :mod:`.sqlite`: :class:`SqliteStore`;
- :mod:`.postgres`: :class:`PostgresStore` (an HA pair's shared store).

:func:`open_store` picks one from ``continuity.store.url`` / ``--storage.url``.

``python -m exporter.continuity.store --writer-fd FD PATH`` runs the writer process
(started by :class:`SqliteStore` with ``writer="process"``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "DB_NAME",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "IncidentRecord",
    "OpenIncident",
    "PostgresStore",
    "RecoveryHistogram",
    "SqliteStore",
    "Store",
    "Summary",
    "migrate",
    "open_store",
]

from exporter.continuity.store.protocol import Store
from exporter.continuity.store.records import IncidentRecord, OpenIncident, RecoveryHistogram, Summary
from exporter.continuity.store.schema import DB_NAME, MIGRATIONS, SCHEMA_VERSION, migrate
from exporter.continuity.store.sqlite import SqliteStore
from exporter.core.secrets import register

if TYPE_CHECKING:
    from exporter.continuity.store.postgres import PostgresStore


def __getattr__(name: str) -> Any:
    # PostgresStore is exported lazily: importing psycopg costs about 0.2 s, which neither
    # SQLite users nor the SQLite writer process (``python -m exporter.continuity.store``) should pay.
    if name == "PostgresStore":
        from exporter.continuity.store.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(url: str | None, storage_path: str) -> Store:
    """The store for ``url``: PostgreSQL for a ``postgresql://`` URL, else SQLite under ``storage_path``
    (written from a child process, see :mod:`.writer`).  Nothing is opened yet."""
    if not url:
        return SqliteStore(storage_path, writer="process")
    register(url)  # PostgresStore registers the password itself
    from exporter.continuity.store.postgres import PostgresStore

    return PostgresStore(url)
