#!/usr/bin/env bash
# Audit the locked runtime dependencies (requirements.lock, what the Docker image installs)
# against PyPI's vulnerability advisories.  Exit 0 only when every pin was audited and none
# has a known vulnerability; anything else (a finding, a pin that could not be checked, the
# service unreachable) exits 1 and says which.  It never passes without having checked.
#
#   scripts/audit.sh [requirements.lock]
#
# 1. pip-audit (in the test extra), strict, without resolving (the lock is complete),
#    with PyPI's advisory service: it asks
#    https://pypi.org/pypi/<name>/<version>/json for each pin.
# 2. Only if pip-audit could not reach that per-release endpoint (some package proxies,
#    like the one on the project's build machine, serve the project endpoint but not the
#    per-release one): each pin is looked up at https://pypi.org/pypi/<name>/json instead.
#    That answer carries the advisories of the *latest* release only, from the same PyPI
#    advisory database, so it audits a pin that is the latest release and must refuse any
#    other (re-lock with `scripts/lock.sh --upgrade`, or audit where the per-release
#    endpoint is reachable).
set -euo pipefail
cd "$(dirname "$0")/.."
lock=${1:-requirements.lock}
[ -f "$lock" ] || { echo "audit.sh: $lock not found (scripts/lock.sh writes it)" >&2; exit 2; }
command -v pip-audit >/dev/null || { echo "audit.sh: pip-audit missing: pip install -e '.[test]'" >&2; exit 2; }

out=$(mktemp)
trap 'rm -f "$out"' EXIT
if pip-audit --requirement "$lock" --no-deps --disable-pip --vulnerability-service pypi --strict \
  --progress-spinner off >"$out" 2>&1; then
  cat "$out"
  echo "audit.sh: OK: every pin in $lock audited by pip-audit (PyPI advisories); no known vulnerabilities"
  exit 0
fi
cat "$out"
if grep -qi "known vulnerabilit" "$out"; then
  echo "audit.sh: FAILED: known vulnerabilities in $lock (above)" >&2
  exit 1
fi
if ! grep -q "could not be audited" "$out"; then
  echo "audit.sh: FAILED: pip-audit did not complete (above)" >&2
  exit 1
fi
echo "audit.sh: pip-audit could not reach PyPI's per-release endpoint; auditing each pin against"
echo "audit.sh: PyPI's project endpoint, which holds the advisories of the latest release only"
python3 - "$lock" <<'PY'
"""Each pin must be its project's latest release and have no open advisory."""

import json
import re
import sys
import urllib.request

pins = re.findall(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", open(sys.argv[1]).read(), re.MULTILINE)
if not pins:
    sys.exit(f"audit.sh: FAILED: no pins found in {sys.argv[1]}")
bad = []
for name, version in pins:
    url = f"https://pypi.org/pypi/{name}/json"
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            doc = json.load(resp)
    except OSError as exc:
        sys.exit(f"audit.sh: FAILED: {url} unreachable ({exc}); nothing was audited")
    latest = doc["info"]["version"]
    vulns = [v for v in doc.get("vulnerabilities") or [] if not v.get("withdrawn")]
    if version != latest:
        bad.append(f"{name}=={version}: cannot audit (only the latest release, {latest}, is answered here)")
    for v in vulns:
        bad.append(f"{name}=={version}: {v['id']} {' '.join(v.get('aliases') or [])} fixed in {v.get('fixed_in')}")
    print(f"  {name}=={version}: {'latest' if version == latest else 'latest is ' + latest}, {len(vulns)} advisories")
for line in bad:
    print(f"audit.sh: FAILED: {line}", file=sys.stderr)
if bad:
    sys.exit(1)
print(f"audit.sh: OK: {len(pins)} pins audited against PyPI advisories (latest releases); none known")
PY
