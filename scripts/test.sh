#!/usr/bin/env bash
# The whole test suite: what the README's quick start and CI (.ci/run) both run.
#   scripts/test.sh            install what is missing, then lint, type-check and test
#   scripts/test.sh -k smtp    extra arguments go to pytest
# It installs Debian packages (the loopback test stack) and the Python test extra
# when they are missing, so it works on a fresh Debian machine (as root, or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}

need_pip=0
"$PY" -c "import exporter, pytest, pytest_asyncio, hypothesis, trustme, aiohttp, dns, yaml, prometheus_client" \
  2>/dev/null || need_pip=1
command -v ruff >/dev/null || need_pip=1
command -v mypy >/dev/null || need_pip=1
if [ "$need_pip" = 1 ]; then
  echo "== installing the Python package and its test extra"
  "$PY" -m pip install --quiet --disable-pip-version-check -e '.[test]'
fi
echo "== installing the loopback test stack's Debian packages (skipped when present)"
scripts/teststack.sh install

echo "== ruff"
ruff check .
ruff format --check exporter tests benchmarks scripts 2>/dev/null || {
  echo "ruff format would change files: run 'ruff format exporter tests benchmarks scripts'"; exit 1; }
echo "== mypy (strict on exporter/)"
mypy
echo "== hadolint"
hadolint Dockerfile
echo "== pytest"
exec "$PY" -m pytest --durations=25 "$@"
