"""Trials the cluster can never run are refused before they start, naming the numbers and the fix."""

from pathlib import Path

import pytest

from sweeps.launch.resources import NodeShape, autoscaled_nodes, check_fits
from sweeps.launch.spec import SweepError

REPO = Path(__file__).resolve().parents[1]
HEAD = NodeShape(0, 0, 1, "node 10.0.0.1")
GPU_NODE = NodeShape(4, 1, 1, "node 10.0.0.2")


def test_more_gpus_per_worker_than_any_node_has_is_refused_with_the_numbers():
    with pytest.raises(SweepError) as err:
        check_fits(cpus=4, gpus=2, workers=1, shapes=[HEAD, GPU_NODE])
    message = str(err.value)
    assert "1 worker of 4 CPU and 2 GPU" in message and "node 10.0.0.2: 4 CPU 1 GPU" in message
    assert "--gpus-per-trial 1 or less" in message


def test_more_workers_than_the_cluster_holds_is_refused():
    with pytest.raises(SweepError, match=r"holds at most 2 such workers.*--workers-per-trial 2 or less"):
        check_fits(cpus=2, gpus=0.5, workers=3, shapes=[GPU_NODE])  # 4 CPU / 2 each, 1 GPU / 0.5 each: 2 workers


def test_fractional_gpus_pack_trials_and_set_how_many_run_at_once():
    assert check_fits(cpus=1, gpus=0.25, workers=1, shapes=[HEAD, GPU_NODE]) == 4
    assert check_fits(cpus=1, gpus=0, workers=2, shapes=[GPU_NODE, NodeShape(4, 1, 1, "node b")]) == 4


def test_autoscaled_worker_types_from_cluster_yaml_count():
    shapes = autoscaled_nodes(REPO / "cluster.yaml")
    assert [(s.cpus, s.gpus, s.count) for s in shapes] == [(4.0, 1.0, 4)]  # the head type is not a worker type
    # a GPU trial on a cluster whose only live node is the CPU-less head fits once workers are added
    assert check_fits(cpus=4, gpus=1, workers=2, shapes=[HEAD, *shapes]) == 2
