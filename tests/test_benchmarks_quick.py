"""Every benchmark script still runs: ``benchmarks/run_all.py --quick`` (issue 20).

The quick mode runs each benchmark at small sizes (a few seconds each) against the
loopback test stack and the Debian peers.  This test checks that every one of them ran
and wrote numeric headline figures; it never checks a measured value or a time.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from stack import REPO_ROOT, Stack, tool_env

pytestmark = pytest.mark.slow

RUN_ALL = REPO_ROOT / "benchmarks" / "run_all.py"


def _benchmarks() -> tuple[Any, ...]:
    spec = importlib.util.spec_from_file_location("mce_bench_run_all", RUN_ALL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return tuple(module.BENCHMARKS)


def _genuine_skip(bench: Any, reason: str) -> bool:
    """A skip is allowed only for a prerequisite that is really absent here (never the stack)."""
    path = tool_env()["PATH"]
    if "is not installed" in reason and any(shutil.which(b, path=path) is None for b in bench.binaries):
        return True
    if "module" in reason and any(importlib.util.find_spec(m) is None for m in bench.modules):
        return True
    return reason == "needs root" and os.geteuid() != 0


def _committed_results() -> dict[str, float]:
    results = REPO_ROOT / "benchmarks" / "results"
    return {p.name: p.stat().st_mtime for p in results.iterdir()} if results.is_dir() else {}


def test_every_benchmark_runs_in_quick_mode(stack: Stack, tmp_path: Path) -> None:
    committed = _committed_results()
    proc = subprocess.run(
        [sys.executable, str(RUN_ALL), "--quick", f"--results-dir={tmp_path}", f"--log-dir={tmp_path / 'logs'}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,  # generous: the budgets of run_all itself bound each benchmark
        check=False,
    )
    logs = "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted((tmp_path / "logs").glob("*.log"))
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{logs}"

    runs = {r["benchmark"]: r for r in json.loads((tmp_path / "runs.json").read_text())}
    benchmarks = _benchmarks()
    assert set(runs) == {b.name for b in benchmarks}
    for bench in benchmarks:
        run = runs[bench.name]
        if run["status"] == "skipped":
            assert _genuine_skip(bench, run["reason"]), f"{bench.name} skipped: {run['reason']}"
        else:
            assert run["status"] == "ok", f"{bench.name}: {run}\n{logs}"

    summary = (tmp_path / "summary.md").read_text()
    assert "| benchmark | figure | ours | peer | ratio | better | rounds |" in summary
    assert "## Machine" in summary

    lines = [json.loads(line) for line in (tmp_path / "summary.jsonl").read_text().splitlines() if line.strip()]
    ran = {name for name, r in runs.items() if r["status"] == "ok"}
    assert {line["benchmark"] for line in lines} == ran
    for line in lines:
        ours = line["ours"]
        assert isinstance(ours, (int, float)) and math.isfinite(ours), line
        assert line["better"] in ("higher", "lower"), line
        assert line["quick"] is True, line
        assert line["rounds"] >= 1, line
        if line["better"] == "higher":  # rates and counts
            assert ours > 0, line
        if line["peer"] is not None:
            assert line["peer_name"], line
            assert line["ratio"] is not None and math.isfinite(line["ratio"]), line
        else:
            assert line["ratio"] is None, line
        assert line["benchmark"] in summary and line["figure"] in summary

    # the quick run wrote its results into tmp_path, never over the committed full-size ones
    assert _committed_results() == committed
    assert (tmp_path / "starttls.md").exists() or runs["starttls"]["status"] == "skipped"
