"""Checking a SLURM job's request against the cluster before anything is submitted.

SLURM accepts a job that no node can ever run (more CPUs per node than any node has, GPUs on a
partition without them) and leaves it ``PENDING`` for ever (reason ``PartitionConfig`` or
``Resources``); a multirun then waits silently. ``hydra/launcher=slurm`` uses
``hydra_plugins.advtrain_slurm.CheckedSlurmLauncher`` (hydra-submitit-launcher's launcher), which
reads the nodes of the target partition with ``sinfo`` (:func:`query_nodes`) and refuses such a
request (:func:`check_request`) with a message naming the ``hydra.launcher.*`` override that
fixes it.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: sinfo's output: one line per (node, partition): partition|cpus|memory MB|gres|state.
SINFO_FORMAT = "%P|%c|%m|%G|%T"


@dataclass(frozen=True)
class SlurmNode:
    """One node of one partition as ``sinfo -N`` reports it."""

    partition: str
    default: bool
    cpus: int
    memory_mb: int
    gpus: int


class SlurmRequestError(ValueError):
    """A SLURM request no node of the cluster can satisfy; the message names the override."""


def _gpus(gres: str) -> int:
    """GPUs in a gres string such as ``gpu:4``, ``gpu:a100:8(S:0-1)``, ``(null)``."""
    total = 0
    for item in gres.split(","):
        parts = re.sub(r"\(.*?\)", "", item).split(":")
        if parts and parts[0] == "gpu":
            count = parts[-1]
            total += int(count) if count.isdigit() else 1
    return total


def parse_sinfo(text: str) -> list[SlurmNode]:
    """The nodes in ``sinfo -h -N -o "%P|%c|%m|%G|%T"`` output."""
    nodes = []
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 4 or not fields[0]:
            continue
        partition, cpus, memory, gres = fields[:4]
        default = partition.endswith("*")
        memory_digits = re.sub(r"\D", "", memory)
        nodes.append(
            SlurmNode(
                partition=partition.rstrip("*"),
                default=default,
                cpus=int(re.sub(r"\D", "", cpus) or 0),
                memory_mb=int(memory_digits) if memory_digits else 0,
                gpus=_gpus(gres),
            )
        )
    return nodes


def query_nodes() -> list[SlurmNode] | None:
    """The cluster's nodes, or ``None`` where ``sinfo`` is missing or fails."""
    if shutil.which("sinfo") is None:
        return None
    try:
        proc = subprocess.run(
            ["sinfo", "-h", "-N", "-o", SINFO_FORMAT], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_sinfo(proc.stdout) if proc.returncode == 0 else None


def _int(value: Any, default: int) -> int:
    return default if value is None else int(value)


def check_request(params: Mapping[str, Any], nodes: Sequence[SlurmNode]) -> None:
    """Raises unless enough nodes of the target partition can each run the job's share.

    Args:
        params: The launcher's settings (``partition``, ``nodes``, ``tasks_per_node``,
            ``cpus_per_task``, ``gpus_per_node``, ``mem_gb``...).
        nodes: The cluster's nodes (:func:`query_nodes`).

    Raises:
        SlurmRequestError: Naming the request, what the partition's nodes offer and the
            override to change.
    """
    partition = params.get("partition")
    if partition:
        known = sorted({n.partition for n in nodes})
        pool = [n for n in nodes if n.partition == partition]
        if not pool:
            raise SlurmRequestError(
                f"hydra/launcher=slurm: partition {partition!r} does not exist on this cluster "
                f"(partitions: {known}); set hydra.launcher.partition to one of them"
            )
        where = f"partition {partition!r}"
    else:
        pool = [n for n in nodes if n.default] or list(nodes)
        where = f"the default partition {pool[0].partition!r}" if pool else "this cluster"
    if not pool:
        return
    tasks = _int(params.get("tasks_per_node"), 1)
    cpus = tasks * _int(params.get("cpus_per_task"), 1)
    gpus = _int(params.get("gpus_per_node"), 0)
    if params.get("gpus_per_task") is not None:
        gpus = max(gpus, tasks * int(params["gpus_per_task"]))
    memory_mb = 0 if params.get("mem_gb") is None else math.ceil(float(params["mem_gb"]) * 1024)
    wanted_nodes = _int(params.get("nodes"), 1)
    fitting = [n for n in pool if n.cpus >= cpus and n.gpus >= gpus and n.memory_mb >= memory_mb]
    if len(fitting) >= wanted_nodes:
        return
    problems = []
    most_cpus = max(n.cpus for n in pool)
    if cpus > most_cpus:
        per_task = max(1, most_cpus // max(tasks, 1))
        problems.append(
            f"{cpus} CPUs per node (tasks_per_node={tasks} x cpus_per_task="
            f"{_int(params.get('cpus_per_task'), 1)}) but its nodes have at most {most_cpus}: "
            f"set hydra.launcher.cpus_per_task={per_task}"
        )
    most_gpus = max(n.gpus for n in pool)
    if gpus > most_gpus:
        problems.append(
            f"{gpus} GPUs per node but its nodes have at most {most_gpus}: set "
            f"trainer.devices (hydra.launcher.gpus_per_node follows it) to {most_gpus} or less"
            + (", or train on the CPU (trainer=cpu)" if most_gpus == 0 else "")
        )
    most_memory = max(n.memory_mb for n in pool)
    if memory_mb > most_memory:
        problems.append(
            f"{memory_mb} MB of memory per node but its nodes have at most {most_memory} MB: "
            f"set hydra.launcher.mem_gb={most_memory // 1024} or less (or null)"
        )
    if not problems:
        problems.append(
            f"{wanted_nodes} nodes but only {len(fitting)} of its {len(pool)} nodes offer the "
            f"{cpus} CPUs, {gpus} GPUs and {memory_mb} MB asked for: set "
            f"hydra.launcher.nodes={max(len(fitting), 1)}"
        )
    raise SlurmRequestError(
        f"hydra/launcher=slurm: no job could ever start on {where}; it would wait in the queue "
        "for ever. The job asks for " + "; and ".join(problems)
    )


def check_before_submitting(params: Mapping[str, Any]) -> None:
    """:func:`check_request` against the cluster; skipped with a log line where ``sinfo`` cannot
    be run."""
    nodes = query_nodes()
    if nodes is None:
        log.warning("sinfo is not available: the SLURM request is not checked")
        return
    check_request(params, nodes)


__all__ = [
    "SlurmNode",
    "SlurmRequestError",
    "check_before_submitting",
    "check_request",
    "parse_sinfo",
    "query_nodes",
]
