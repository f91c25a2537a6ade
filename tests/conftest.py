from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from stack import SCRIPT, Stack, missing_binaries, run_script, stack_is_up  # noqa: E402


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The loopback mail stack of scripts/teststack.sh.

    Reuses a stack that is already up; otherwise runs ``teststack.sh up`` and,
    at the end of the session, ``teststack.sh down`` -- but only if this
    session's ``up`` created the stack ("up: created"); a partially-down stack
    that already existed is repaired by ``up`` and left running.  With
    pytest-xdist, start the stack before the run so no worker takes it down.
    """
    missing = missing_binaries()
    if missing:
        pytest.fail(
            f"mail stack binaries missing ({', '.join(missing)}); run: sudo {SCRIPT} install",
            pytrace=False,
        )
    started = False
    if not stack_is_up():
        if os.geteuid() != 0:
            pytest.fail(
                f"the mail stack is not up and starting it needs root; run: sudo {SCRIPT} up",
                pytrace=False,
            )
        proc = run_script("up", timeout=300)
        if proc.returncode != 0:
            pytest.fail(
                f"{SCRIPT} up failed (rc={proc.returncode}):\n{proc.stdout}{proc.stderr}",
                pytrace=False,
            )
        started = "up: created" in proc.stdout.splitlines()
    yield Stack.load()
    if started:
        run_script("down", timeout=180)
