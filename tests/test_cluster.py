"""A real two-node Ray cluster on this machine, started the way a user starts one: `ray start --head` with
token authentication, then `ray start --address` for a second node. The tiny kanji sweep goes in with
`ray job submit --working-dir .`; its trials run on both nodes, and their results, checkpoints and MLflow
records end up in one place. A request no node can hold is refused before any trial starts."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray(env, *args, timeout=120, check=True):
    result = subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"ray {' '.join(args)} failed: {result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (1 CPU) + one worker node (1 CPU), token auth on; stopped after the module's tests."""
    tmp = tmp_path_factory.mktemp("cluster")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
    env.pop("RAY_ADDRESS", None)
    port, dashboard = _free_port(), _free_port()
    _ray(env, "get-auth-token", "--generate", check=False)  # the token every node and client shares
    try:
        _ray(env, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=true",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--disable-usage-stats")  # fmt: skip
        _ray(env, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1")
        yield env, f"http://127.0.0.1:{dashboard}", tmp
    finally:
        _ray(env, "stop", "--force", check=False)


def _submit(env, address, tmp, *flags, timeout=900):
    """`ray job submit --working-dir .` of the tiny kanji sweep; returns (exit code, job logs)."""
    sweep = ["python", "sweeps/kanji_rank.py", "--preset", "tiny", "--max-steps", "10", "--max-chars", "160",
             "--mlflow-uri", f"sqlite:///{tmp}/mlflow.db", "--cache-dir", str(tmp / "cache"),
             "--storage-path", str(tmp / "ray"), "--report-dir", str(tmp / "reports"), *flags]  # fmt: skip
    result = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".", "--", *sweep],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


def test_a_request_no_node_can_hold_is_refused_before_trials(cluster):
    env, address, tmp = cluster
    code, logs = _submit(env, address, tmp / "refused", "--cpus-per-trial", "2", timeout=300)
    assert code != 0
    errors = sorted({line for line in logs.splitlines() if line.startswith("error:")})  # `ray job` may echo it
    assert len(errors) == 1, logs[-3000:]
    assert "1 worker of 2 CPU and 0 GPU" in errors[0] and "1 CPU 0 GPU" in errors[0], errors[0]
    assert "--cpus-per-trial 1 or less" in errors[0]
    assert not list((tmp / "refused").glob("ray/*/run_trial_*"))  # no trial started
    assert "Traceback" not in logs


def test_a_submitted_sweep_runs_on_both_nodes_and_gathers_its_records(cluster):
    env, address, tmp = cluster
    start = time.perf_counter()
    code, logs = _submit(env, address, tmp)
    assert code == 0, logs[-5000:]
    assert "Job 'raysubmit_" in logs and "succeeded" in logs, logs[-2000:]
    assert time.perf_counter() - start < 900

    nodes = json.loads(_ray(env, "list", "nodes", "--address", address, "--format", "json").stdout)
    alive = {n["node_id"] for n in nodes if n["state"] == "ALIVE"}
    assert len(alive) == 2

    client = mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    experiment = client.get_experiment_by_name("kanji_rank")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`sdsweep.sweep` = 'kanji_rank'")
    assert parent.info.status == "FINISHED" and parent.data.tags["sdsweep.complete"] == "true"
    trials = client.search_runs([experiment.experiment_id], "tags.`sdsweep.kind` = 'trial'")
    assert len(trials) == 5 and all(r.info.status == "FINISHED" for r in trials)
    # placed on both nodes, each trial's node recorded
    assert {r.data.tags["sdsweep.node_id"] for r in trials} == alive
    for run in trials:
        assert [f.path for f in client.list_artifacts(run.info.run_id, "adapter")] == [
            "adapter/pytorch_lora_weights.safetensors"
        ]
    # one place: every trial's checkpoint and final files under --storage-path, the report under --report-dir
    tune_dir = Path(parent.data.tags["sdsweep.tune_path"])
    trial_dirs = sorted(tune_dir.glob("run_trial_*"))
    assert len(trial_dirs) == 5
    for folder in trial_dirs:
        assert list(folder.glob("checkpoint_*/state/tensors.safetensors")), folder
        assert (folder / "pytorch_lora_weights.safetensors").is_file(), folder
    assert (tmp / "reports" / "kanji_rank" / "report.md").is_file()
