#!/usr/bin/env bash
# Regenerate requirements.lock: the runtime dependencies of pyproject.toml's [project]
# dependencies, resolved, pinned (==) and hashed, for the Docker image
# (`pip install --require-hashes -r requirements.lock`, then `pip install --no-deps .`).
#
#   scripts/lock.sh              # add what pyproject.toml gained, keep every other pin
#   scripts/lock.sh --upgrade    # move every pin to the newest release (then scripts/audit.sh)
#
# Needs pip-tools (`pip install -e '.[dev]'`) and the package index pip is configured for.
# Only the runtime dependencies are locked: the test and dev extras are not in the image.
# Index and find-links URLs are left out of the file: it must not depend on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v pip-compile >/dev/null || { echo "lock.sh: pip-compile missing: pip install -e '.[dev]'" >&2; exit 2; }
CUSTOM_COMPILE_COMMAND="scripts/lock.sh" pip-compile --quiet --generate-hashes --strip-extras \
  --no-emit-index-url --no-emit-find-links --output-file requirements.lock "$@" pyproject.toml
echo "lock.sh: $(grep -c '==' requirements.lock) pins written to requirements.lock"
