"""``python -m exporter.continuity.store --writer-fd FD PATH``: the store's writer process."""

from __future__ import annotations

import sys

from exporter.continuity.store.writer import main

if __name__ == "__main__":
    sys.exit(main())
