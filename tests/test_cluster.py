"""The tiny kanji sweep submitted to a real two-node Ray cluster (`ray start --head` with token auth plus a
second node, `ray job submit --working-dir .`; the session fixture ``kanji_cluster_run``): its trials run on
both nodes, and their results, checkpoints and MLflow records end up in one place. A request no node can
hold is refused before any trial starts. test_sweep_e2e checks the same sweep's records and report."""

from pathlib import Path

import mlflow
import pytest

pytestmark = pytest.mark.integration


def test_a_request_no_node_can_hold_is_refused_before_trials(kanji_cluster_run):
    run, tmp = kanji_cluster_run
    assert run.refused_code != 0
    errors = sorted({line for line in run.refused_logs.splitlines() if line.startswith("error:")})  # may echo
    assert len(errors) == 1, run.refused_logs[-3000:]
    assert "1 worker of 2 CPU and 0 GPU" in errors[0] and "1 CPU 0 GPU" in errors[0], errors[0]
    assert "--cpus-per-trial 1 or less" in errors[0]
    assert not list((tmp / "refused").glob("ray/*/run_trial_*"))  # no trial started
    assert not (tmp / "refused" / "mlflow.db").exists()  # refused before any MLflow run
    assert "Traceback" not in run.refused_logs


def test_a_submitted_sweep_runs_on_both_nodes_and_gathers_its_records(kanji_cluster_run):
    run, tmp = kanji_cluster_run
    assert run.code == 0, run.logs[-5000:]
    assert "Job 'raysubmit_" in run.logs and "succeeded" in run.logs, run.logs[-2000:]
    assert len(run.nodes) == 2

    client = mlflow.MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    experiment = client.get_experiment_by_name("kanji_rank")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`sdsweep.sweep` = 'kanji_rank'")
    assert parent.info.status == "FINISHED" and parent.data.tags["sdsweep.complete"] == "true"
    trials = client.search_runs([experiment.experiment_id], "tags.`sdsweep.kind` = 'trial'")
    assert len(trials) == 5 and all(r.info.status == "FINISHED" for r in trials)
    # placed on both nodes, each trial's node recorded
    assert {r.data.tags["sdsweep.node_id"] for r in trials} == run.nodes
    # one place: every trial's checkpoint and final files under --storage-path, the report under --report-dir
    tune_dir = Path(parent.data.tags["sdsweep.tune_path"])
    trial_dirs = sorted(tune_dir.glob("run_trial_*"))
    assert len(trial_dirs) == 5
    for folder in trial_dirs:
        assert list(folder.glob("checkpoint_*/state/tensors.safetensors")), folder
        assert (folder / "pytorch_lora_weights.safetensors").is_file(), folder
    assert (tmp / "reports" / "kanji_rank" / "report.md").is_file()
    # the job's log ends as a person reads it: the verdict, the report, the MLflow page
    assert "[sdsweep] Best trial by glyph_iou" in run.logs and "[sdsweep] report:" in run.logs
    assert "workflowType=machine_learning" in run.logs
    # progress as trial k of N lines with the settings and the baseline, not Tune's tables
    assert "[sdsweep] trial 1 of 5 started: rank=" in run.logs
    done = [line for line in run.logs.splitlines() if line.startswith("[sdsweep] trial ") and " done: " in line]
    assert len(done) == 5 and all("glyph_iou" in line and "(baseline " in line for line in done), done
    assert "Current best trial" not in run.logs and "Trial status" not in run.logs
