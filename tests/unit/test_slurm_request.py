"""The SLURM request check of ``hydra/launcher=slurm`` against ``sinfo``'s nodes (the check on a
real cluster is in tests/integration/test_slurm.py)."""

from __future__ import annotations

from typing import Any

import pytest

from advtrain.cli.slurm_request import SlurmRequestError, check_request, parse_sinfo

SINFO = """debug*|2|3900|(null)|idle
gpu|32|257000|gpu:a100:4(S:0-1)|mixed
gpu|32|257000|gpu:a100:4(S:0-1)|idle
"""


def test_parse_sinfo() -> None:
    debug, gpu, _ = parse_sinfo(SINFO)
    assert (debug.partition, debug.default, debug.cpus, debug.memory_mb, debug.gpus) == (
        "debug",
        True,
        2,
        3900,
        0,
    )
    assert (gpu.partition, gpu.default, gpu.cpus, gpu.gpus) == ("gpu", False, 32, 4)


def test_requests_that_fit() -> None:
    nodes = parse_sinfo(SINFO)
    check_request({"cpus_per_task": 2, "tasks_per_node": 1}, nodes)
    check_request(
        {
            "partition": "gpu",
            "nodes": 2,
            "tasks_per_node": 4,
            "cpus_per_task": 8,
            "gpus_per_node": 4,
            "mem_gb": 200,
        },
        nodes,
    )


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"cpus_per_task": 4}, r"4 CPUs per node .* at most 2: set hydra.launcher.cpus_per_task=2"),
        ({"tasks_per_node": 2, "cpus_per_task": 2}, r"cpus_per_task=1"),
        ({"gpus_per_node": 1}, r"1 GPUs per node but its nodes have at most 0.*trainer=cpu"),
        ({"partition": "gpu", "gpus_per_node": 8}, r"at most 4"),
        ({"partition": "gpu", "mem_gb": 512}, r"hydra.launcher.mem_gb=250"),
        ({"partition": "gpu", "nodes": 3}, r"hydra.launcher.nodes=2"),
        ({"partition": "cpu"}, r"partition 'cpu' does not exist .*\['debug', 'gpu'\]"),
    ],
)
def test_requests_no_node_can_run_are_refused(params: dict[str, Any], match: str) -> None:
    with pytest.raises(SlurmRequestError, match=match):
        check_request(params, parse_sinfo(SINFO))
