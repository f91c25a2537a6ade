"""Running a configured program: argv only (never a shell), bounded output, killed on cancel.

Queue sources (``type: command``) and continuity sources (command backups and replicas)
run user-supplied programs that print one short value.  Both need the same care: read
stdout and stderr to their end so the program never blocks on a full pipe, but keep only
the first bytes of each (a runaway program must not fill the exporter's memory); and
when the caller's timeout cancels the read, kill and reap the process so none is left
behind.  The callers turn the result into their own error types and reason labels.
"""

from __future__ import annotations

__all__ = ["CommandFailed", "CommandResult", "read_capped", "run_capped", "run_for_value", "spawned"]

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from exporter.core.errors import Failure


async def read_capped(stream: asyncio.StreamReader, keep: bytearray, limit: int) -> None:
    """Read ``stream`` to its end, appending at most ``limit`` bytes of it to ``keep``."""
    while chunk := await stream.read(65536):
        room = limit - len(keep)
        if room > 0:
            keep += chunk[:room]


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: bytes  # at most limit + 1 bytes, so that "longer than limit" can be told
    stderr: bytes  # at most limit bytes

    def why(self) -> str:
        """The first line of stderr, for an error message."""
        first = self.stderr.decode("utf-8", "replace").strip().splitlines()
        return first[0][:200] if first else "no message"


@contextlib.asynccontextmanager
async def spawned(argv: list[str] | tuple[str, ...]) -> AsyncIterator[asyncio.subprocess.Process]:
    """Start ``argv`` with stdin closed and stdout/stderr piped; on leaving (normally, on an
    error or on cancellation) kill it if it still runs, and reap it.

    Raises FileNotFoundError or PermissionError when the program cannot be started.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await proc.wait()


async def run_capped(argv: list[str] | tuple[str, ...], limit: int) -> CommandResult:
    """Run ``argv`` with stdin closed; keep ``limit + 1`` bytes of stdout and ``limit`` of stderr.

    Raises FileNotFoundError or PermissionError when the program cannot be started.
    """
    async with spawned(argv) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = bytearray(), bytearray()
        await asyncio.gather(read_capped(proc.stdout, out, limit + 1), read_capped(proc.stderr, err, limit))
        returncode = await proc.wait()
    return CommandResult(returncode, bytes(out), bytes(err))


class CommandFailed(Failure):
    """A program that should print one value did not: ``reason`` is one of ``not_found``,
    ``permission``, ``exit`` (non-zero status), ``too_long`` (more output than the limit)
    or ``timeout``.  Callers map these onto their own reason sets."""


async def run_for_value(argv: list[str] | tuple[str, ...], limit: int, *, timeout: float | None = None) -> bytes:
    """Run a program that prints one short value; its stdout (at most ``limit`` bytes).

    Raises :class:`CommandFailed` with a message that names the program, never its arguments.
    """
    if not argv:
        raise CommandFailed("not_found", "empty command")
    name = argv[0]
    try:
        async with asyncio.timeout(timeout):
            result = await run_capped(argv, limit)
    except FileNotFoundError:
        raise CommandFailed("not_found", f"command not found: {name}") from None
    except PermissionError as exc:
        raise CommandFailed("permission", f"cannot run {name}: {exc.strerror}") from None
    except TimeoutError:
        raise CommandFailed("timeout", f"{name} did not finish within {timeout:g}s") from None
    if result.returncode != 0:
        raise CommandFailed("exit", f"{name} exited with status {result.returncode}: {result.why()}")
    if len(result.stdout) > limit:
        raise CommandFailed("too_long", f"{name}: expected one value, got more than {limit} bytes")
    return result.stdout
