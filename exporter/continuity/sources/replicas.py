"""Replica sources: how far behind a replica is (each measurement returns the lag in seconds).

- ``imap_canary``: a message written on the primary and awaited on the replica
  (:mod:`.canary`);
- ``command``: a program (argv list, never a shell) printing the lag in seconds, killed
  at its timeout.
"""

from __future__ import annotations

__all__ = ["CommandReplicaSource", "ImapCanarySource", "read_command_lag"]

import logging

from exporter.config import CommandReplica, ImapCanaryReplica
from exporter.continuity.sources.canary import CANARY_GRACE, measure_canary
from exporter.continuity.sources.common import parse_lag, run_command
from exporter.continuity.sources.registry import ReplicaSource, register_replica


async def read_command_lag(cfg: CommandReplica) -> float:
    return parse_lag(await run_command(cfg.command, cfg.timeout), cfg.command[0])


@register_replica("imap_canary")
class ImapCanarySource(ReplicaSource[ImapCanaryReplica]):
    grace = CANARY_GRACE

    async def measure(self, cfg: ImapCanaryReplica, log: logging.Logger) -> float:
        return await measure_canary(cfg, log)


@register_replica("command")
class CommandReplicaSource(ReplicaSource[CommandReplica]):
    async def measure(self, cfg: CommandReplica, log: logging.Logger) -> float:
        return await read_command_lag(cfg)
