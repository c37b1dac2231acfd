"""Faults a real cluster has, on the tiny preset through real Ray and MLflow: a trial process killed
mid-training restarts from its checkpoint into the same MLflow run, with each step logged once."""

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
import torch
from _cluster import free_port

pytestmark = pytest.mark.integration


def _one_trial_sweep():
    from ray import tune

    from sweeps.kanji_rank import SWEEP

    space = {"lora_rank": tune.grid_search([4]), "lora_alpha": 4.0, "checkpoint_every": 5}
    return replace(SWEEP, name="faults", search_space=space, knobs={})  # knobs: not what these tests are about


# where the first checkpoint of a trial lands and which processes train it: the Tune trial itself (one
# worker), or the workers of its Ray Train job (more)
TRAINING = {1: ("faults-*/run_trial_*/checkpoint_*", "ray::ImplicitFunc"),
            2: ("faults-*/train-*/checkpoint_manager_snapshot.json", "ray::RayTrainWorker")}  # fmt: skip
# (Train writes its snapshot once a checkpoint is registered; a worker killed while the folder is still being
# copied restarts from the one before, here from step 0)


def _kill_trial_after_first_checkpoint(storage: Path, killed: list, stop: threading.Event, workers: int) -> None:
    """Watch Tune's storage; at the first checkpoint, SIGKILL the processes that train (as a lost node would)."""
    pattern, process = TRAINING[workers]
    while not stop.is_set():
        if list(storage.glob(pattern)):
            pids = subprocess.run(["pgrep", "-f", process], capture_output=True, text=True).stdout.split()
            for pid in pids:
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
            if killed:
                return
        time.sleep(0.1)


def _killed_and_restarted(tmp_path: Path, workers: int, cache: Path):
    """The one-trial sweep with its training processes SIGKILLed at the first checkpoint; the same assertions
    for a trial in Tune's process (1) and for a trial run as a 2-worker Train job (2). Returns the final
    adapter and the logged losses."""
    from safetensors.torch import load_file

    from sweeps.launch import launch

    storage, uri = tmp_path / "ray", f"sqlite:///{tmp_path}/mlflow.db"
    killed, stop = [], threading.Event()
    watcher = threading.Thread(target=_kill_trial_after_first_checkpoint, args=(storage, killed, stop, workers),
                               daemon=True)  # fmt: skip
    watcher.start()
    try:
        code = launch(_one_trial_sweep(), ["--preset", "smoke", "--max-steps", "20", "--max-chars", "160",
                                           "--cache-dir", str(cache), "--storage-path", str(storage),
                                           "--mlflow-uri", uri, "--report-dir", str(tmp_path / "reports"),
                                           "--workers-per-trial", str(workers)])  # fmt: skip
    finally:
        stop.set()
    assert killed, "the trial finished before its first checkpoint: nothing was killed"
    assert code == 0
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("faults").experiment_id], "tags.`sdsweep.kind` = 'trial'")
    assert len(runs) == 1, [r.info.run_name for r in runs]  # the restart continued the run, no second one
    (run,) = runs
    assert run.info.status == "FINISHED"
    restored = int(run.data.tags["sdsweep.restored_from_step"])
    assert restored >= 5 and restored % 5 == 0  # from a checkpoint, not from step 0
    losses = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert [step for step, _ in losses] == [5, 10, 15, 20]  # each logged step once: no gap, no repeat
    # step 0 (the untrained model) once, though the first attempt logged it and was killed
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "eval/clip_t")) == [0, 10, 20]
    adapters = [f.path for f in client.list_artifacts(run.info.run_id, "adapter")]
    assert adapters == [
        "adapter/README.md",
        "adapter/lora_kohya.safetensors",
        "adapter/pytorch_lora_weights.safetensors",
    ]  # rank 0 alone logs the files
    assert run.data.params.get("workers_per_trial", "1") == str(workers)
    assert run.data.tags["sdsweep.node_id"]  # where the last attempt trained
    (trial_dir,) = storage.glob("faults-*/run_trial_*")
    return load_file(trial_dir / "pytorch_lora_weights.safetensors"), torch.tensor([v for _, v in losses])


def test_a_killed_trial_restarts_from_its_checkpoint_in_the_same_run_on_one_or_two_workers(tmp_path):
    """Killed at its first checkpoint and restored, a trial ends the same whether it trained in Tune's process
    or as 2 Train workers that each took half of every batch and averaged their gradients: the same logged
    (whole-batch) losses and the same adapter, up to float summation order."""
    one, losses_one = _killed_and_restarted(tmp_path / "one", workers=1, cache=tmp_path / "cache")
    two, losses_two = _killed_and_restarted(tmp_path / "two", workers=2, cache=tmp_path / "cache")
    assert torch.allclose(losses_one, losses_two, rtol=1e-4, atol=1e-6), (losses_one, losses_two)
    assert one.keys() == two.keys()
    ups = [k for k in one if "lora.up" in k or "lora_B" in k]
    assert ups and all(one[k].abs().max() > 0 for k in ups)  # B starts at zero: the adapter trained
    # not bit-equal: the workers sum the batch in another order, and AdamW's division by the root of the
    # squared gradients enlarges that noise where a gradient is near zero
    worst = max(float((one[k] - two[k]).norm() / one[k].norm().clamp_min(1e-12)) for k in one)
    assert worst < 1e-3, worst


def resume_sweep():
    """Three short trials (imported by the driver subprocess below, so both launches share the space)."""
    from ray import tune

    from sweeps.kanji_rank import SWEEP

    space = {"lora_rank": tune.grid_search([1, 2, 4]), "lora_alpha": 4.0, "checkpoint_every": 5}
    return replace(SWEEP, name="resume", search_space=space, knobs={})  # knobs: not what these tests are about


def _resume_args(tmp_path):
    return ["--preset", "smoke", "--max-chars", "160", "--cache-dir", str(tmp_path / "cache"), "--storage-path",
            str(tmp_path / "ray"), "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db", "--report-dir",
            str(tmp_path / "reports")]  # fmt: skip


def _trial_runs(client, experiment_name):
    experiment = client.get_experiment_by_name(experiment_name)
    return client.search_runs([experiment.experiment_id], "tags.`sdsweep.kind` = 'trial'") if experiment else []


def test_a_killed_driver_is_resumed_without_retraining_or_duplicates(tmp_path, capsys):
    import sys
    import textwrap

    from sweeps.launch import launch

    tests_dir, repo = Path(__file__).parent, Path(__file__).parents[1]
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(repo)!r}, {str(tests_dir)!r}]
        from sweeps.launch import launch
        from test_faults import resume_sweep
        sys.exit(launch(resume_sweep(), {_resume_args(tmp_path)!r}))
    """)
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True, cwd=tmp_path)  # fmt: skip
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    deadline = time.time() + 600
    try:
        while time.time() < deadline and driver.poll() is None:
            runs = _trial_runs(client, "resume") if (tmp_path / "mlflow.db").exists() else []
            if any(r.info.status == "FINISHED" for r in runs):
                break
            time.sleep(1)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and everything it started, as a lost head node
        driver.wait()
    before = {r.info.run_id: r for r in _trial_runs(client, "resume")}
    finished_before = {i for i, r in before.items() if r.info.status == "FINISHED"}
    assert finished_before and len(finished_before) < 3

    # a plain relaunch does not start a second copy silently
    assert launch(resume_sweep(), _resume_args(tmp_path)) == 2
    assert "--resume" in capsys.readouterr().err

    assert launch(resume_sweep(), [*_resume_args(tmp_path), "--resume"]) == 0
    after = {r.info.run_id: r for r in _trial_runs(client, "resume")}
    assert len(after) == 3 and all(r.info.status == "FINISHED" for r in after.values())  # no duplicate run
    assert set(before) <= set(after)  # the runs the dead driver left open were continued, not replaced
    for run_id in finished_before:  # finished trials were not retrained: their records did not change
        assert after[run_id].info.end_time == before[run_id].info.end_time
        assert len(client.get_metric_history(run_id, "train/loss")) == 4
    for run in after.values():
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == [5, 10, 15, 20]
    (parent,) = client.search_runs([after[next(iter(after))].info.experiment_id], "tags.`sdsweep.sweep` = 'resume'")
    assert parent.info.status == "FINISHED" and parent.data.tags["sdsweep.complete"] == "true"
    baselines = client.search_runs([parent.info.experiment_id], "tags.`sdsweep.kind` = 'baseline'")
    assert [b.info.status for b in baselines] == ["FINISHED"]
    assert len(json.loads((tmp_path / "reports" / "resume" / "rows.json").read_text())) == 4


def _start_mlflow_server(tmp_path, port):
    import shutil
    import sys
    import urllib.request

    mlflow_bin = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    server = subprocess.Popen(
        [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "art")],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "server.log").open("a"), start_new_session=True,
    )  # fmt: skip
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return server
        except OSError:
            time.sleep(0.5)
    raise AssertionError((tmp_path / "server.log").read_text()[-2000:])


def test_an_mlflow_server_restart_mid_trial_loses_nothing(tmp_path):
    from sweeps.launch import launch

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    servers = [_start_mlflow_server(tmp_path, port)]
    outage = {}

    def restart_server_after_first_loss():
        client = mlflow.MlflowClient(uri)
        deadline = time.time() + 600
        while time.time() < deadline:
            try:
                runs = _trial_runs(client, "faults")
                if runs and client.get_metric_history(runs[0].info.run_id, "train/loss"):
                    break
            except Exception:
                pass
            time.sleep(0.2)
        os.killpg(servers[0].pid, signal.SIGKILL)
        servers[0].wait()
        outage["down"] = time.time()
        time.sleep(20)  # the trial trains on; its writes wait in the outbox
        servers.append(_start_mlflow_server(tmp_path, port))
        outage["up"] = time.time()

    watcher = threading.Thread(target=restart_server_after_first_loss, daemon=True)
    watcher.start()
    try:
        code = launch(_one_trial_sweep(), ["--preset", "smoke", "--max-steps", "60", "--max-chars", "160",
                                           "--cache-dir", str(tmp_path / "cache"), "--storage-path",
                                           str(tmp_path / "ray"), "--mlflow-uri", uri, "--report-dir",
                                           str(tmp_path / "reports")])  # fmt: skip
        watcher.join(60)
        assert "up" in outage, "the server was never restarted"
        assert code == 0
        client = mlflow.MlflowClient(uri)
        (run,) = _trial_runs(client, "faults")
        assert run.info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
        assert steps == list(range(5, 61, 5))  # nothing lost, nothing twice
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "eval/clip_t")) == list(
            range(0, 61, 10)
        )
        logged = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
        assert logged == {
            "adapter/README.md",
            "adapter/lora_kohya.safetensors",
            "adapter/pytorch_lora_weights.safetensors",
        }
        # the trial did not wait for the server: it logged steps while it was down
        during = [m for m in client.get_metric_history(run.info.run_id, "train/loss")
                  if outage["down"] * 1000 < m.timestamp < outage["up"] * 1000]  # fmt: skip
        assert during, "no step was trained while the server was down"
    finally:
        for server in servers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
