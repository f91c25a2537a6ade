#!/usr/bin/env bash
# package.sh - build the sdist and the wheel (python -m build), then check them:
#   * both carry the version of exporter/__init__.py (the single source of the version),
#     and CHANGELOG.md has a section for it;
#   * the sdist is the whole project (rules, dashboards, deploy, docs, tests, LICENSE);
#   * the wheel installs into a fresh virtualenv, where the console script starts and
#     accepts the embedded default configuration.
# Usage: scripts/package.sh [OUTDIR]   (default: dist/)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
out=${1:-dist}
rm -rf "$out"
"$PY" -m build --outdir "$out" . >"${TMPDIR:-/tmp}/mce-build.log" 2>&1 || {
  tail -n 40 "${TMPDIR:-/tmp}/mce-build.log"; echo "package: python -m build failed" >&2; exit 1; }
version=$("$PY" -c 'import ast,sys; t=ast.parse(open("exporter/__init__.py").read()); print(next(n.value.value for n in t.body if isinstance(n, ast.Assign) and n.targets[0].id == "__version__"))')
sdist="$out/mail_continuity_exporter-$version.tar.gz"
wheel="$out/mail_continuity_exporter-$version-py3-none-any.whl"
for f in "$sdist" "$wheel"; do
  [ -f "$f" ] || { echo "package: expected $f (version $version) but python -m build made: $(ls "$out")" >&2; exit 1; }
done
grep -q "^## \[$version\]" CHANGELOG.md || { echo "package: CHANGELOG.md has no section \"## [$version]\"" >&2; exit 1; }
listing=$(tar tzf "$sdist")
for want in LICENSE CHANGELOG.md rules/mail-alerts.rules.yml dashboards/mce-overview.json deploy docs/metrics.md \
            examples tests/conftest.py scripts/teststack.sh exporter/cli.py; do
  grep -q "^mail_continuity_exporter-$version/$want" <<<"$listing" || { echo "package: sdist lacks $want" >&2; exit 1; }
done
if grep -q "__pycache__\|\.pyc$" <<<"$listing"; then echo "package: sdist contains bytecode" >&2; exit 1; fi
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
# --system-site-packages: the dependencies come from the environment that runs this script
# (installed from the package index already); the wheel itself is installed with --no-deps
# --force-reinstall so its own files, not the editable checkout, are what runs.
"$PY" -m venv --system-site-packages "$venv"
"$venv/bin/pip" install --quiet --no-deps --force-reinstall "$wheel"
(cd "$venv" && "$venv/bin/mail-continuity-exporter" --version) | grep -qx "mail-continuity-exporter $version" || {
  echo "package: the installed wheel does not report version $version" >&2; exit 1; }
(cd "$venv" && "$venv/bin/python" -c 'import exporter,sys; sys.exit(0 if exporter.__file__.startswith(sys.prefix) else 1)') || {
  echo "package: the venv imported exporter from outside the installed wheel" >&2; exit 1; }
(cd "$venv" && "$venv/bin/mail-continuity-exporter" --config.check) >/dev/null
echo "package: $sdist ($(du -k "$sdist" | cut -f1) KiB) and $wheel ($(du -k "$wheel" | cut -f1) KiB), version $version: ok"
