#!/usr/bin/env python3
"""Regenerate the metric table in docs/metrics.md from exporter/core/metrics.py.

python scripts/gen_metrics_doc.py          # rewrite the table in place
python scripts/gen_metrics_doc.py --check  # exit 1 if docs/metrics.md is out of date (used by the tests)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.core.metrics import FAMILIES  # noqa: E402

DOC = ROOT / "docs" / "metrics.md"
BEGIN = "<!-- BEGIN GENERATED METRICS TABLE (scripts/gen_metrics_doc.py) -->"
END = "<!-- END GENERATED METRICS TABLE -->"


def table() -> str:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for name, spec in FAMILIES.items():
        labels = ", ".join(f"`{label}`" for label in spec.labels) or "—"
        typ = "gauge histogram" if spec.type == "gaugehistogram" else spec.type
        rows.append(f"| `{name}` | {typ} | {labels} | {spec.help} |")
    return "\n".join(rows)


def render(current: str) -> str:
    head, _, rest = current.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main() -> int:
    current = DOC.read_text()
    if BEGIN not in current or END not in current:
        print(f"{DOC}: markers missing", file=sys.stderr)
        return 1
    new = render(current)
    if "--check" in sys.argv:
        if new != current:
            print("docs/metrics.md is out of date: run python scripts/gen_metrics_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
