"""Launches that did not finish: finding them in MLflow, continuing one (``--resume``), or closing them
(``--fresh``) so a second copy of a sweep never starts silently.

The parent run carries what a later launch needs: ``sdsweep.tune_path`` (Tune's run folder, restorable with
``Tuner.restore``), ``sdsweep.space_hash`` (the expanded trial configs, which a restore cannot change),
``sdsweep.driver`` (host and pid of the process that ran it) and, once its report is written,
``sdsweep.complete``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
from dataclasses import dataclass
from typing import Any

from sweeps.launch.spec import SweepError


@dataclass(frozen=True)
class Unfinished:
    run_id: str
    tune_path: str
    started: str  # local time, for messages
    trials_done: int
    trials_total: int
    alive: bool  # its driver still runs (same host, live pid)


def space_hash(configs: list[dict[str, Any]]) -> str:
    return hashlib.sha1(json.dumps(configs, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def driver_tag() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _driver_alive(tag: str | None) -> bool:
    if not tag or ":" not in tag:
        return False
    host, pid = tag.rsplit(":", 1)
    if host != socket.gethostname():
        return False  # another machine: cannot tell; its run stays unfinished until resumed or closed
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return int(pid) != os.getpid()


def unfinished_launches(tracking_uri: str, experiment_id: str, sweep_name: str) -> list[Unfinished]:
    """The sweep's parent runs without ``sdsweep.complete``, newest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    parents = client.search_runs(
        [experiment_id], f"tags.`sdsweep.sweep` = '{sweep_name}'", order_by=["attributes.start_time DESC"]
    )
    found = []
    for run in parents:
        tags = run.data.tags
        if tags.get("sdsweep.complete") == "true" or "sdsweep.tune_path" not in tags:
            continue
        children = client.search_runs(
            [experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}' and tags.`sdsweep.kind` = 'trial'"
        )
        started = dt.datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")
        found.append(
            Unfinished(
                run_id=run.info.run_id,
                tune_path=tags["sdsweep.tune_path"],
                started=started,
                trials_done=sum(c.info.status == "FINISHED" for c in children),
                trials_total=int(run.data.params.get("num_trials", 0) or 0),
                alive=run.info.status == "RUNNING" and _driver_alive(tags.get("sdsweep.driver")),
            )
        )
    return found


def check_unfinished(found: list[Unfinished], sweep_name: str, resume: bool, fresh: bool) -> Unfinished | None:
    """What this launch does about earlier unfinished launches: the one to resume, or None to start a new
    sweep. Raises :class:`SweepError` when the choice is the user's to make."""
    if resume and fresh:
        raise SweepError("--resume and --fresh contradict each other: pass one")
    dead = [u for u in found if not u.alive]
    if resume:
        if not dead:
            live = f" ({len(found)} still running)" if found else ""
            raise SweepError(f"nothing to resume: no unfinished launch of {sweep_name} in this MLflow store{live}")
        return dead[0]
    if dead and not fresh:
        u = dead[0]
        raise SweepError(
            f"an unfinished launch of {sweep_name} is in MLflow (run {u.run_id}, started {u.started}, "
            f"{u.trials_done} of {u.trials_total} trials finished): continue it with --resume, or pass --fresh "
            "to close it and start over"
        )
    return None


def close_launch(tracking_uri: str, experiment_id: str, run_id: str, reason: str) -> None:
    """Mark an abandoned launch and its open child runs KILLED, with the reason."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    for child in client.search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}' and attributes.status = 'RUNNING'"
    ):
        client.set_tag(child.info.run_id, "sdsweep.error", reason)
        client.set_terminated(child.info.run_id, status="KILLED")
    client.set_tag(run_id, "sdsweep.complete", "abandoned")
    client.set_tag(run_id, "sdsweep.error", reason)
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, status="KILLED")


def finished_baseline(tracking_uri: str, experiment_id: str, parent_run_id: str) -> dict[str, float] | None:
    """The baseline metrics of a launch being resumed, when its baseline run finished; its unfinished
    baseline runs are closed (the baseline is evaluated again)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    runs = client.search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`sdsweep.kind` = 'baseline'"
    )
    done = [r for r in runs if r.info.status == "FINISHED"]
    for run in runs:
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, "sdsweep.error", "its driver died before the baseline finished")
            client.set_terminated(run.info.run_id, status="KILLED")
    if not done:
        return None
    return {k: v for k, v in done[0].data.metrics.items() if k.startswith("eval/")}


def check_same_space(parent_tags: dict[str, str], configs: list[dict[str, Any]], sweep_name: str) -> None:
    if parent_tags.get("sdsweep.space_hash") != space_hash(configs):
        raise SweepError(
            f"the trials of {sweep_name} changed since the launch being resumed (sweep file, preset or flags): "
            "a resumed sweep runs the trials it started with; undo the change, or pass --fresh to start over"
        )
