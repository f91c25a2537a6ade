#!/usr/bin/env bash
# Every benchmark in one command, and one summary table of the ratios (issue 20).
#   scripts/bench.sh                       full size; results and summary.md in benchmarks/results/
#   scripts/bench.sh --quick               small sizes, a few seconds each (what CI runs); a temp dir
#   scripts/bench.sh --only starttls,logs  a subset
# Everything else is benchmarks/run_all.py's (see its --help and benchmarks/README.md).
# Several benchmarks need the loopback test stack (scripts/teststack.sh up) and the peers
# prometheus-blackbox-exporter and prometheus-postfix-exporter (scripts/teststack.sh install).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export MCE_BENCH_COMMAND="scripts/bench.sh${*:+ $*}"
exec "$PY" benchmarks/run_all.py "$@"
