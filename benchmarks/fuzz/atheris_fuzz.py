"""Coverage-guided fuzzing of one parser with atheris (libFuzzer), for long runs outside CI.

Hypothesis (tests/test_fuzz.py) runs in CI and is bounded; atheris follows branch
coverage inside the exporter's parsers, which finds deep inputs that random mutation
rarely reaches.  Both use the same targets and invariants (tests/fuzz/fuzz_targets.py)
and the same committed seeds (tests/fuzz/corpus/<target>/).

    pip install atheris
    python benchmarks/fuzz/atheris_fuzz.py showq -max_total_time=600
    python benchmarks/fuzz/atheris_fuzz.py received -runs=1000000 -jobs=2

Targets: config, showq, received, authresults, webhook, dns_txt, exim_log, dovecot_log,
postfix_log, syslog_frame.  New interesting inputs go to
``benchmarks/results/fuzz/<target>/`` (libFuzzer writes to the first corpus directory;
the committed corpus is only read); a crash is written to ``crash-<sha1>`` in the current
directory: copy it into tests/fuzz/corpus/<target>/ so that CI replays it from then on.
All work is in process: no network.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))

with atheris.instrument_imports(include=["exporter", "fuzz_targets"]):
    import fuzz_targets


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in fuzz_targets.TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(fuzz_targets.TARGETS)}}} [libFuzzer options]")
    target = sys.argv[1]
    work = ROOT / "benchmarks" / "results" / "fuzz" / target
    work.mkdir(parents=True, exist_ok=True)
    argv = [sys.argv[0], *sys.argv[2:], str(work), str(fuzz_targets.CORPUS / target)]
    atheris.Setup(argv, fuzz_targets.TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
