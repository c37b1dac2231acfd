"""Whether the cluster can ever run a trial: checked before any trial starts, with the numbers in the error.

A trial is ``workers`` Ray Train workers of ``cpus`` CPUs and ``gpus`` GPUs each (one worker: the trial
itself). A worker must fit on one node; all of a trial's workers must fit on the cluster at once. The nodes
counted are the live ones plus, on an autoscaling cluster, the worker types its config may add: the copy of
``cluster.yaml`` that ``ray up`` leaves on the head (where a ``ray job submit`` driver runs), or the file
``SDSWEEP_CLUSTER_YAML`` names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from sweeps.launch.spec import SweepError

# A multi-worker trial's own process only waits on its Train job; it holds one of these (advertised by the
# local Ray and cluster.yaml's head) instead of a CPU a worker needs.
TRIAL_SLOT = "sdsweep_trial"
# the autoscaling config `ray up` writes on the head node (cluster.yaml's head start command passes it to Ray)
AUTOSCALING_CONFIG = "~/ray_bootstrap_config.yaml"


def waiting_trial_resources() -> dict:
    """What the Tune trial of a multi-worker trial reserves: a trial slot, or a hundredth of a CPU on a
    cluster that advertises no slots."""
    import ray

    if any(n["Resources"].get(TRIAL_SLOT) for n in ray.nodes() if n.get("Alive")):
        return {TRIAL_SLOT: 1}
    return {"cpu": 0.01}


@dataclass(frozen=True)
class NodeShape:
    cpus: float
    gpus: float
    count: int  # how many such nodes can exist at once
    source: str  # "node 10.0.0.3" or "cluster.yaml gpu_worker"

    def workers(self, cpus: float, gpus: float) -> int:
        """Workers of this size one node of this shape holds."""
        by_cpu = math.floor(self.cpus / cpus + 1e-9)  # cpus > 0: checked with the flags
        return min(by_cpu, math.floor(self.gpus / gpus + 1e-9)) if gpus > 0 else by_cpu


def live_nodes() -> list[NodeShape]:
    import ray

    return [
        NodeShape(n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0), 1, f"node {n['NodeManagerAddress']}")
        for n in ray.nodes()
        if n.get("Alive")
    ]


def autoscaled_nodes(cluster_yaml: Path) -> list[NodeShape]:
    """The worker types a cluster launcher YAML can add (``available_node_types`` with ``max_workers``)."""
    if not cluster_yaml.is_file():
        return []
    import yaml

    try:
        spec = yaml.safe_load(cluster_yaml.read_text()) or {}
    except yaml.YAMLError:
        return []
    head = spec.get("head_node_type")
    shapes = []
    for name, node_type in (spec.get("available_node_types") or {}).items():
        resources, count = node_type.get("resources") or {}, int(node_type.get("max_workers", 0) or 0)
        if name != head and count > 0 and resources:
            shapes.append(NodeShape(float(resources.get("CPU", 0)), float(resources.get("GPU", 0)), count,
                                    f"{cluster_yaml.name} {name}"))  # fmt: skip
    return shapes


def check_fits(cpus: float, gpus: float, workers: int, shapes: list[NodeShape]) -> int:
    """Refuse a trial the nodes in ``shapes`` can never run; returns how many such trials fit at once."""
    what = f"{workers} worker{'s' if workers > 1 else ''} of {cpus:g} CPU and {gpus:g} GPU"
    largest = max(shapes, key=lambda s: (s.gpus, s.cpus), default=None)
    nodes = ", ".join(f"{s.source}: {s.cpus:g} CPU {s.gpus:g} GPU" for s in shapes) or "none"
    per_node = [s.workers(cpus, gpus) for s in shapes]
    if not any(per_node):
        gpu_hint = f"--gpus-per-trial {largest.gpus:g} or less" if largest and gpus > largest.gpus else ""
        cpu_hint = f"--cpus-per-trial {largest.cpus:g} or less" if largest and cpus > largest.cpus else ""
        hint = " and ".join(h for h in (gpu_hint, cpu_hint) if h) or "smaller per-worker resources"
        raise SweepError(
            f"each trial asks for {what}, and no node can hold one worker ({nodes}): use {hint}, "
            "or add larger nodes to the cluster"
        )
    capacity = sum(n * s.count for n, s in zip(per_node, shapes, strict=True))
    if workers > capacity:
        raise SweepError(
            f"each trial asks for {what}, and the cluster holds at most {capacity} such workers at once "
            f"({nodes}): use --workers-per-trial {capacity} or less, or add nodes"
        )
    return max(1, capacity // workers)
