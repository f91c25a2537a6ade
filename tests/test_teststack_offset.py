"""MCE_STACK_PORT_OFFSET of scripts/teststack.sh shifts every port, and only the ports.

A second stack (the demo's, offset 1000) runs beside the test stack only if no port of the
generated configurations is left at its default.  This test runs the script's own
generators (every ``gen_*`` function and ``write_stack_json``) into a scratch stack
directory, once with offset 0 and once with an offset, and compares the files: each must
be the offset-0 file with every port replaced by port + offset.  Nothing is started.
(tests/test_demo.py runs a shifted stack end to end.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from stack import SCRIPT, missing_binaries, tool_env

#: Every port of the stack at offset 0, and the exporter's (the default webhook URL).
PORTS = (2525, 2526, 2527, 2528, 2587, 2465, 2143, 2993, 2424, 2499, 2053, 29090, 29093, 2999, 2432, 10587)
PORT_RE = re.compile(r"(?<![0-9])(" + "|".join(map(str, PORTS)) + r")(?![0-9])")
OFFSET = 1234
SCRATCH = "/tmp/mce-offset-test"
GENERATED = (
    "postfix/etc/main.cf",
    "postfix/etc/master.cf",
    "dovecot/dovecot.conf",
    "unbound/unbound.conf",
    "unbound/zones.conf",
    "prometheus/prometheus.yml",
    "alertmanager/alertmanager.yml",
    "postgresql/postgresql.conf",
    "stack.json",
)
#: Sources the script without running main, stubs the one step that writes outside the
#: stack dir (alternate_config_directories in /etc/postfix/main.cf), and generates.
GENERATE = r"""
set -euo pipefail
script=$(<"$1")
[[ ${script##*$'\n'} == 'main "$@"' ]] || { echo "last line of $1 is not main \"\$@\"" >&2; exit 3; }
eval "${script%$'\n'*}"
register_alternate_config_dir() { :; }
rm -rf "$STACK_DIR"
mkdir -p "$CERT_DIR" "$PF_ETC" "$DC_DIR" "$DC_RUN" "$DC_STATE" "$DC_DIR/sieve" "$UB_DIR" \
    "$PROM_DIR" "$PROM_RULES" "$PROM_TARGETS" "$AM_DIR" "$PG_DIR"
echo '{"ca": {"cert": "ca.pem"}}' >"$CERT_DIR/certs.json"
printf 'probe@example.test:{PLAIN}pw-probe::::::\n' >"$DC_USERS"
echo pw-pg >"$PG_PASSWORD"
gen_postfix
gen_dovecot
gen_unbound
gen_prometheus
gen_alertmanager
gen_postgresql
write_stack_json
"""


def run(offset: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**tool_env(), "MCE_STACK_DIR": SCRATCH, "MCE_STACK_PORT_OFFSET": offset}
    env.pop("MCE_WEBHOOK_URL", None)
    return subprocess.run(["bash", *argv], capture_output=True, text=True, env=env, timeout=120, check=False)


def generate(offset: int, tmp_path: Path) -> dict[str, str]:
    generator = tmp_path / "generate.sh"  # a file, not bash -c: the script needs BASH_SOURCE
    generator.write_text(GENERATE)
    proc = run(str(offset), str(generator), str(SCRIPT))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {name: (Path(SCRATCH) / name).read_text() for name in GENERATED}


@pytest.mark.parametrize("value", ["abc", "-1", "36443", "99999", "1e3", "100000", " 5"])
def test_a_bad_offset_is_refused_with_the_variable_named(value: str) -> None:
    proc = run(value, str(SCRIPT), "status")
    assert proc.returncode == 2
    assert proc.stderr == (
        f'teststack: ERROR: MCE_STACK_PORT_OFFSET: expected a whole number from 0 to 36442, got "{value}"\n'
    )


def test_every_port_and_only_the_ports_shift(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("generating the stack's configs needs root (chown to postfix)", pytrace=False)
    if missing_binaries():
        pytest.fail(f"missing: {missing_binaries()}; run: sudo {SCRIPT} install", pytrace=False)
    try:
        base = generate(0, tmp_path)
        shifted = generate(OFFSET, tmp_path)
    finally:
        shutil.rmtree(SCRATCH, ignore_errors=True)
    found = {int(m) for text in base.values() for m in PORT_RE.findall(text)}
    assert found == set(PORTS), "a port is missing from the generated files: the test would not see it"
    for name, text in base.items():
        expected = PORT_RE.sub(lambda m: str(int(m.group(1)) + OFFSET), text)
        assert shifted[name] == expected, name
    ports = json.loads(shifted["stack.json"])["ports"]
    assert ports["smtp"] == 2525 + OFFSET
    assert ports["alertmanager"] == 29093 + OFFSET
    assert json.loads(shifted["stack.json"])["dead_mx"] == {
        "hostname": "mx2.example.test",
        "host": "127.0.0.2",
        "port": 2525 + OFFSET,
    }
