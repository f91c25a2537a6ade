"""Read positions of log sources, kept across restarts.

One small JSON file per source under ``<storage.path>/logs/``, replaced atomically
(write to a temporary file, fsync, rename, fsync the directory), so that a crash leaves
either the old or the new position, never a torn one.  A file source stores its inode,
device and offset; a journal source its cursor.  Without a storage directory (for
example ``--config.check``) positions live in memory only.
"""

from __future__ import annotations

__all__ = ["PositionStore"]

import json
import os
import re
from pathlib import Path
from typing import Any

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class PositionStore:
    """Positions by source name, in ``directory`` (or in memory when it is None)."""

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[str, dict[str, Any]] = {}

    def _path(self, name: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{_SAFE.sub('_', name)}.json"

    def load(self, name: str) -> dict[str, Any] | None:
        """The saved position of ``name``, or None (never saved, or unreadable: start afresh)."""
        if self.directory is None:
            return self._memory.get(name)
        try:
            data = json.loads(self._path(name).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def save(self, name: str, position: dict[str, Any]) -> None:
        """Replace the saved position of ``name`` durably.  Raises OSError."""
        if self.directory is None:
            self._memory[name] = dict(position)
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(name)
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as fh:
            json.dump(position, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
