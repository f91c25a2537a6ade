"""Render previews of the Grafana dashboards of dashboards/ without a Grafana server.

Every panel of a dashboard is drawn with matplotlib from a Prometheus server's data, at
its place in the dashboard grid, into one PNG per dashboard:

    python scripts/render_previews.py --prometheus http://127.0.0.1:9090 --job mail --out docs/img

Needs matplotlib (a development dependency: ``pip install matplotlib``).  The dashboard
variables are substituted as Grafana would with "All" selected: ``$job`` by --job,
``$instance``, ``$domain`` and ``$check`` by ``.+``, ``$__rate_interval`` by --rate-interval.
This is a preview, not Grafana: thresholds, overrides and colours are approximated.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
UIDS = ("mce-overview", "mce-delivery", "mce-continuity", "mce-domain")
#: Pixels of one grid row in Grafana; a grid column is 1/24 of the width.
ROW_PX, WIDTH_PX, DPI = 30, 1800, 100


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"(\d+)([smhd])", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (like 30s, 10m, 6h, 1d)")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def substitute(expr: str, args: argparse.Namespace) -> str:
    values = {
        "$__rate_interval": args.rate_interval,
        "$__range": f"{int(args.range)}s",
        "$job": args.job,
        "$instance": args.instance,
        "$domain": ".+",
        "$check": ".+",
    }
    for key, value in values.items():
        expr = expr.replace(key, value)
    return expr


def query(prom: str, expr: str, *, instant: bool, start: float, end: float, step: float) -> list[dict[str, Any]]:
    if instant:
        path, params = "/api/v1/query", {"query": expr, "time": f"{end:.3f}"}
    else:
        path = "/api/v1/query_range"
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    url = f"{prom.rstrip('/')}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as resp:
        data = json.loads(resp.read())
    if data.get("status") != "success":
        raise RuntimeError(f"{expr}: {data.get('error')}")
    return list(data["data"]["result"])


def legend(fmt: str, labels: dict[str, str]) -> str:
    if not fmt or fmt == "__auto":
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        return f"{labels.get('__name__', '')}{{{inner}}}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def fmt_value(value: float, unit: str) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if unit == "percentunit":
        return f"{value * 100:.3g}%"
    if unit == "s":
        for size, suffix in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
            if abs(value) >= size:
                return f"{value / size:.3g} {suffix}"
        return f"{value * 1000:.3g} ms"
    if unit == "d":
        return f"{value:.3g} d"
    if unit == "bytes":
        for size, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if abs(value) >= size:
                return f"{value / size:.3g} {suffix}"
        return f"{value:.0f} B"
    if unit.startswith("bool"):
        return "yes" if value else "no"
    return f"{value:.4g}"


def series(panel: dict[str, Any], args: argparse.Namespace, start: float, end: float, step: float) -> list[Any]:
    """[(refId, label, [(t, v)], instant)] of every target of a panel."""
    out = []
    for t in panel["targets"]:
        instant = bool(t.get("instant")) or panel["type"] in ("stat", "bargauge")
        result = query(args.prometheus, substitute(t["expr"], args), instant=instant, start=start, end=end, step=step)
        for r in result:
            points = [r["value"]] if instant else r["values"]
            out.append(
                (t["refId"], legend(t.get("legendFormat", ""), r["metric"]), [(float(a), float(b)) for a, b in points])
            )
    return out


def table_rows(panel: dict[str, Any], args: argparse.Namespace, end: float) -> tuple[list[str], list[list[str]]]:
    """The header and rows of a table panel: its instant queries joined on their common labels
    (Grafana's merge), value columns renamed and hidden as its organize step says, values shown
    through the value mappings and units of its column overrides."""
    organize: dict[str, Any] = next(
        (t["options"] for t in panel.get("transformations", []) if t["id"] == "organize"), {}
    )
    names: dict[str, str] = organize.get("renameByName", {})
    hidden = {k for k, v in organize.get("excludeByName", {}).items() if v}
    mappings: dict[str, dict[str, str]] = {}
    units: dict[str, str] = {}
    for o in panel.get("fieldConfig", {}).get("overrides", []):
        column = o["matcher"]["options"]
        for prop in o["properties"]:
            if prop["id"] == "mappings":
                mappings[column] = {k: v["text"] for m in prop["value"] for k, v in m["options"].items()}
            elif prop["id"] == "unit":
                units[column] = prop["value"]
    label_columns: list[str] = []
    value_columns: list[str] = []
    rows: list[dict[str, str]] = []
    for t in panel["targets"]:
        raw = f"Value #{t['refId']}"
        column = names.get(raw, raw)
        if raw not in hidden:
            value_columns.append(column)
        for r in query(args.prometheus, substitute(t["expr"], args), instant=True, start=end, end=end, step=1):
            labels = {k: v for k, v in r["metric"].items() if k != "__name__"}
            label_columns += [k for k in labels if k not in label_columns]
            row = next((row for row in rows if all(row.get(k) == v for k, v in labels.items())), None)
            if row is None:
                row = dict(labels)
                rows.append(row)
            value = float(r["value"][1])
            row[column] = mappings.get(column, {}).get(f"{value:g}", fmt_value(value, units.get(column, "none")))
    header = label_columns + value_columns
    return header, [[row.get(c, "") for c in header] for row in rows]


def draw_table(ax: Any, panel: dict[str, Any], header: list[str], rows: list[list[str]]) -> None:
    ax.set_title(panel["title"], fontsize=9, loc="left", fontweight="bold")
    ax.axis("off")
    if not rows:
        ax.text(0.5, 0.5, "No data", ha="center", va="center", transform=ax.transAxes, color="grey")
        return
    table = ax.table(cellText=rows[:12], colLabels=header, loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(7)


def draw_panel(ax: Any, panel: dict[str, Any], data: list[Any], unit: str) -> None:
    import matplotlib.dates as mdates
    import numpy as np

    kind = panel["type"]
    ax.set_title(panel["title"], fontsize=9, loc="left", fontweight="bold")
    ax.tick_params(labelsize=7)
    if not data:
        ax.text(0.5, 0.5, "No data", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    if kind == "stat":
        ax.axis("off")
        values = [(label, pts[-1][1]) for _, label, pts in data][:6]
        for i, (label, value) in enumerate(values):
            y = 1 - (i + 0.5) / len(values)
            size = 20 if len(values) <= 2 else 12
            ax.text(0.5, y, fmt_value(value, unit), ha="center", va="center", fontsize=size, transform=ax.transAxes)
            ax.text(
                0.5,
                y - 0.18 / len(values),
                label,
                ha="center",
                va="top",
                fontsize=7,
                color="grey",
                transform=ax.transAxes,
            )
        return
    if kind == "bargauge":
        labels = [label for _, label, _ in data][:12]
        values = [pts[-1][1] for _, _, pts in data][:12]
        finite = [v if math.isfinite(v) else 0.0 for v in values]
        ax.barh(range(len(finite)), finite, color="tab:green", alpha=0.7)
        ax.set_yticks([])
        ax.invert_yaxis()
        for i, v in enumerate(values):
            ax.text(0, i, f" {labels[i]}: {fmt_value(v, unit)}", va="center", fontsize=7)
        ax.xaxis.set_major_formatter(lambda x, _pos: fmt_value(x, unit))
        return
    if kind == "heatmap":
        by_le: dict[float, dict[float, float]] = {}
        for _, label, pts in data:
            le = float("inf") if label in ("+Inf", "Inf") else float(label)
            by_le[le] = dict(pts)
        les = sorted(by_le)
        times = sorted({t for pts in by_le.values() for t in pts})
        cum = np.array([[by_le[le].get(t, 0.0) for t in times] for le in les])
        grid = np.diff(np.vstack([np.zeros(len(times)), cum]), axis=0).clip(min=0)
        ax.imshow(grid, aspect="auto", origin="lower", cmap="Oranges", interpolation="nearest")
        ax.set_yticks(range(len(les)), [fmt_value(le, unit) if math.isfinite(le) else "+Inf" for le in les], fontsize=6)
        step = max(1, len(times) // 6)
        ax.set_xticks(range(0, len(times), step), [datetime.fromtimestamp(t).strftime("%H:%M") for t in times[::step]])
        return
    bars = panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {}).get("drawStyle") == "bars"
    overrides = {o["matcher"]["options"] for o in panel.get("fieldConfig", {}).get("overrides", [])}
    right = ax.twinx() if overrides else None
    bottom: dict[float, float] = {}
    for ref, label, pts in data[:20]:
        target_ax = right if right is not None and ref in overrides else ax
        xs = [datetime.fromtimestamp(t) for t, _ in pts]
        ys = [v for _, v in pts]
        if bars:
            base = [bottom.get(t, 0.0) for t, _ in pts]
            target_ax.bar(
                xs, ys, bottom=base, width=0.8 * (pts[1][0] - pts[0][0]) / 86400 if len(pts) > 1 else 0.001, label=label
            )
            for (t, v), b in zip(pts, base, strict=True):
                bottom[t] = b + v
        elif kind == "state-timeline":
            target_ax.step(xs, ys, where="post", label=label)
        else:
            style = "--" if target_ax is right else "-"
            target_ax.plot(xs, ys, style, label=label, linewidth=1.2)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    ax.yaxis.set_major_formatter(lambda x, _pos: fmt_value(x, unit))
    if right is not None:
        right.yaxis.set_major_formatter(lambda x, _pos: fmt_value(x, "s"))
        right.tick_params(labelsize=7)
    handles, labels = ax.get_legend_handles_labels()
    if right is not None:
        h2, l2 = right.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles[:8], labels[:8], fontsize=6, loc="upper left", framealpha=0.6)


def render(uid: str, args: argparse.Namespace) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = json.loads((ROOT / "dashboards" / f"{uid}.json").read_text())
    end = time.time()
    start = end - args.range
    step = max(args.range / 120, 5.0)
    height_units = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"])
    width_in, height_in = WIDTH_PX / DPI, (height_units * ROW_PX + 90) / DPI
    fig = plt.figure(figsize=(width_in, height_in), dpi=DPI)
    fig.suptitle(
        f"{board['title']}  (uid {uid}, job {args.job}, last {args.range / 60:g} min)", fontsize=12, x=0.01, ha="left"
    )
    total = height_units * ROW_PX + 90
    top, bottom_margin = 1 - 50 / total, 30 / total
    unit_h = (top - bottom_margin) / height_units
    for p in board["panels"]:
        g = p["gridPos"]
        x0, y0 = g["x"] / 24, top - (g["y"] + g["h"]) * unit_h
        if p["type"] == "row":
            fig.text(x0 + 0.005, y0 + unit_h * 0.3, p["title"], fontsize=11, fontweight="bold", color="#1f4e79")
            continue
        pad_x, pad_y = 0.035, 0.045 * unit_h * 8
        ax = fig.add_axes(
            (
                x0 + pad_x * g["w"] / 24 + 0.01,
                y0 + pad_y,
                g["w"] / 24 - 0.02 - pad_x * g["w"] / 24,
                g["h"] * unit_h - 2 * pad_y,
            )
        )
        if p["type"] == "table":
            draw_table(ax, p, *table_rows(p, args, end))
            continue
        unit = p["fieldConfig"]["defaults"].get("unit", "short")
        draw_panel(ax, p, series(p, args, start, end, step), unit)
    out = Path(args.out) / f"{uid}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus base URL")
    parser.add_argument("--job", default="mail", help="value of $job (a regex)")
    parser.add_argument("--instance", default=".+", help="value of $instance (a regex)")
    parser.add_argument("--range", type=parse_duration, default=parse_duration("1h"), help="time range, like 1h")
    parser.add_argument("--rate-interval", default="1m", help="value of $__rate_interval")
    parser.add_argument("--out", default=str(ROOT / "docs" / "img"), help="output directory")
    parser.add_argument("dashboards", nargs="*", default=list(UIDS), help="dashboard uids (default: all)")
    args = parser.parse_args(argv)
    for uid in args.dashboards:
        print(f"wrote {render(uid, args)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
