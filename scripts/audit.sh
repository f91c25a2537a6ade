#!/usr/bin/env bash
# Audit the locked runtime dependencies (requirements.lock, what the Docker image installs)
# against PyPI's vulnerability advisories.  The policy (docs/security.md, "Dependency audit"):
# a known advisory against a pinned version fails; a pin that cannot be audited from this
# machine is reported and does not fail (CI must not turn red because time passed);
# --strict fails on those too.
#
#   scripts/audit.sh [--strict] [requirements.lock]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import pip_audit' 2>/dev/null || { echo "audit.sh: pip-audit missing: pip install -e '.[test]'" >&2; exit 2; }
exec python3 scripts/audit.py "$@"
