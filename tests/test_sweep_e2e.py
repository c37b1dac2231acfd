"""The tiny kanji sweep end to end through real Ray Tune (as a job on a two-node cluster), MLflow (sqlite)
and the report; and two more sweeps in this process: failing trials, Optuna with ASHA."""

import json
import math

import mlflow
import pytest
import torch
from conftest import sweep_args
from ray import tune

from trainables.tiny_learned import learned_tiny_dir

pytestmark = pytest.mark.integration


def _args(tmp_path, cache):
    return sweep_args(tmp_path, cache)


@pytest.fixture(scope="module")
def cache(sweep_cache):
    return sweep_cache


@pytest.fixture(scope="module")
def kanji_rank_run(kanji_cluster_run):
    """The tiny kanji_rank sweep, submitted to a two-node cluster (see conftest.kanji_cluster_run)."""
    run, tmp_path = kanji_cluster_run
    return run.code, tmp_path


def test_tiny_kanji_rank_sweep_records_everything(kanji_rank_run, capsys):
    code, tmp_path = kanji_rank_run
    assert code == 0
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("kanji_rank")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    trials = [r for r in children if r.data.tags["sdsweep.kind"] == "trial"]
    baselines = [r for r in children if r.data.tags["sdsweep.kind"] == "baseline"]
    assert len(trials) == 5 and len(baselines) == 1
    assert sorted(int(r.data.params["lora_rank"]) for r in trials) == [1, 4, 8, 16, 64]
    for run in trials:
        assert float(run.data.params["lora_alpha"]) == float(run.data.params["lora_rank"])
        assert run.data.params["method"] == "lora"
        # both LoRA files (diffusers and kohya) and the model card
        assert [a.path for a in client.list_artifacts(run.info.run_id, "adapter")] == [
            "adapter/README.md",
            "adapter/lora_kohya.safetensors",
            "adapter/pytorch_lora_weights.safetensors",
        ]
    settings = [f"scale:{s} cfg:{g}" for s in ("0.5", "1") for g in ("3", "7.5")]  # the sweep's knobs
    for run in children:
        assert run.info.status == "FINISHED"
        # every run at every inference setting, and the best of them; the baseline has no LoRA to scale
        knobs = {k: v for k, v in run.data.metrics.items() if k.startswith("eval/glyph_purity ")}
        assert set(knobs) == {f"eval/glyph_purity {t}" for t in settings} | {"eval/glyph_purity best knob"}
        assert knobs["eval/glyph_purity best knob"] == max(v for k, v in knobs.items() if "best" not in k)
        if run.data.tags["sdsweep.kind"] == "baseline":
            assert knobs["eval/glyph_purity scale:0.5 cfg:3"] == knobs["eval/glyph_purity scale:1 cfg:3"]
        else:
            folders = {a.path for a in client.list_artifacts(run.info.run_id, "knobs")}
            assert folders == {f"knobs/{t.replace(':', '-').replace(' ', '-')}" for t in settings}
        evals = {k: v for k, v in run.data.metrics.items() if k.startswith("eval/") and " " not in k}
        assert set(evals) == {"eval/clip_t", "eval/clip_score", "eval/clip_i", "eval/dino", "eval/glyph_purity",
                              "eval/glyph_iou"}  # fmt: skip
        assert all(math.isfinite(v) for v in evals.values())
        assert len(client.list_artifacts(run.info.run_id, "samples/final")) == 4 + 3  # held-out + novel prompts
    # the tiny preset's model learns: every rank moves glyph purity well past the untrained model's (a
    # fine-tune that silently does nothing fails here)
    base_purity = baselines[0].data.metrics["eval/glyph_purity"]
    purity = {int(r.data.params["lora_rank"]): r.data.metrics["eval/glyph_purity"] for r in trials}
    assert min(purity.values()) >= base_purity + 0.05, (base_purity, purity)
    # where each trial's time went: the parts add up, training is train/time_s, every part took time
    for run in trials:
        m = run.data.metrics
        parts = [m[f"time/{p}_s"] for p in ("setup", "train", "eval", "save")]
        assert sum(parts) == pytest.approx(m["time/total_s"]) and min(parts) > 0
        assert m["time/train_s"] == pytest.approx(m["train/time_s"], rel=0.05)
        assert 200 < m["sys/peak_rss_mb"] < 24 * 1024  # the trial process's peak memory, in MB
    # adapters differ by rank: the rank-64 file is the largest
    sizes = {int(r.data.params["lora_rank"]): r.data.metrics["adapter/size_mb"] for r in trials}
    assert sizes[64] > sizes[16] > sizes[1]

    # the report: 6 rows (baseline first), held-out and novel grids, plots, and the same files in the parent run
    rows = json.loads((tmp_path / "reports" / "kanji_rank" / "rows.json").read_text())
    assert len(rows) == 6 and rows[0]["kind"] == "baseline"
    assert [r["label"] for r in rows] == ["no fine-tune", *(f"rank={r} alpha={r}" for r in (1, 4, 8, 16, 64))]
    pictures = {"grid_heldout.png", "grid_novel.png", "params.png", "curves.png", "pareto.png", "knobs.png", "time.png"}
    assert all((tmp_path / "reports" / "kanji_rank" / p).exists() for p in pictures)
    logged = {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}
    assert {"report/report.md", "report/report.html", "report/rows.json", *(f"report/{p}" for p in pictures)} <= logged
    assert len(client.list_artifacts(parents[0].info.run_id, "references")) == 4

    # the verdict: every run's per-prompt scores, the winner's paired difference to the baseline on the parent
    for run in children:
        local = client.download_artifacts(run.info.run_id, "scores/final.json", str(tmp_path / run.info.run_id))
        scores = json.loads(open(local).read())
        assert len(scores["prompts"]) == 7 and len(scores["items"]["eval/glyph_iou"]) == 7
        held_out = [v for v in scores["items"]["eval/glyph_iou"] if v is not None]
        assert sum(held_out) / len(held_out) == pytest.approx(run.data.metrics["eval/glyph_iou"], abs=1e-6)
    verdict = json.loads((tmp_path / "reports" / "kanji_rank" / "verdict.json").read_text())
    parent = client.get_run(parents[0].info.run_id)
    assert parent.data.tags["sdsweep.best_trial"] == verdict["winner"] and verdict["delta"]["n"] == 4
    assert parent.data.metrics["best/delta"] == pytest.approx(verdict["delta"]["mean"])
    # the winner's files, copied to the parent run as best/: the same bytes as the winner's adapter/
    best = sorted(a.path for a in client.list_artifacts(parents[0].info.run_id, "best"))
    assert best == ["best/README.md", "best/lora_kohya.safetensors", "best/pytorch_lora_weights.safetensors"]
    mine = client.download_artifacts(verdict["winner_run_id"], "adapter/lora_kohya.safetensors", str(tmp_path / "w"))
    copy = client.download_artifacts(parents[0].info.run_id, "best/lora_kohya.safetensors", str(tmp_path / "b"))
    assert open(mine, "rb").read() == open(copy, "rb").read()
    verdicts = ("beats the baseline", "no trial beats the baseline beyond the spread")
    assert parent.data.tags["sdsweep.verdict"] in verdicts
    assert any("glyph purity and IoU show whether a fine-tune changed it" in line for line in verdict["lines"])
    # the table: swept settings only (not derived ones like trainable_params), the selection metric first
    report = (tmp_path / "reports" / "kanji_rank" / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| run |"))
    assert header.startswith("| run | status | method | lora_rank | lora_alpha | eval/glyph_iou | Δ glyph_iou vs")
    assert report.index("## Verdict") < report.index("| run |")


def test_trial_checkpoints_hold_the_adapter(kanji_rank_run):
    _, tmp_path = kanji_rank_run
    checkpoints = list(
        (tmp_path / "ray").glob("kanji_rank-*/run_trial_*/checkpoint_*/pytorch_lora_weights.safetensors")
    )
    assert len(checkpoints) == 5  # num_to_keep=1: the last eval's adapter per trial, in Tune's storage


def test_failing_trials_do_not_take_the_sweep_down(kanji_rank_run, cache, tmp_path):
    """A corrupt encoded cache (NaN latents) fails every trial at step 1: the sweep still finishes,
    keeps its baseline, records the failed trials, writes the report and exits 1."""
    import shutil
    from dataclasses import replace

    from sweeps.kanji_rank import SWEEP
    from sweeps.launch import launch

    broken_cache = shutil.copytree(cache, tmp_path / "cache")  # break a copy, never the shared cache
    (encoded,) = list((broken_cache / "encoded").glob("kanji-*.pt"))
    state = torch.load(encoded, weights_only=True)
    state["latent_mean"] = state["latent_mean"] * float("nan")
    torch.save(state, encoded)
    sweep = replace(SWEEP, name="kanji_broken", search_space={"lora_rank": tune.grid_search([1, 2])}, knobs={})

    # the same model path as the cluster sweep (the tiny preset's), so the copied encoding is found by its key
    model = str(learned_tiny_dir(cache))
    code = launch(sweep, [*_args(tmp_path, broken_cache), "--model", model])

    assert code == 1
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("kanji_broken")
    runs = client.search_runs([experiment.experiment_id])
    statuses = sorted((r.data.tags.get("sdsweep.kind", "parent"), r.info.status) for r in runs)
    assert statuses == [
        ("baseline", "FINISHED"),
        ("parent", "FAILED"),
        ("trial", "FAILED"),
        ("trial", "FAILED"),
    ]
    rows = json.loads((tmp_path / "reports" / "kanji_broken" / "rows.json").read_text())
    assert [r["status"] for r in rows] == ["FINISHED", "FAILED", "FAILED"]
    for run in (r for r in runs if r.data.tags.get("sdsweep.kind") == "trial"):  # why, in the run itself
        assert "became nan" in run.data.tags["sdsweep.error"]
        error = client.download_artifacts(run.info.run_id, "failure/error.txt", str(tmp_path / run.info.run_id))
        assert "Traceback" in open(error).read() and "became nan" in open(error).read()
    report = (tmp_path / "reports" / "kanji_broken" / "report.md").read_text()
    assert "FAILED: TrialError: train/loss became nan" in report


def test_optuna_search_with_asha_stops_and_records(kanji_rank_run, cache, tmp_path):
    """Optuna draws the trials, ASHA may stop weak ones at the first eval: every trial still ends with a
    closed MLflow run (FINISHED, or KILLED when stopped early) holding its adapter."""
    from dataclasses import replace

    from sweeps.kanji_rank import SWEEP
    from sweeps.launch import launch

    sweep = replace(
        SWEEP,
        name="kanji_optuna",
        search_space={"lora_rank": tune.choice([2, 4]), "unet_lr": tune.loguniform(1e-4, 1e-2)},
        search_alg="optuna",
        scheduler="asha",
        metric="eval/clip_t",
        knobs={},  # the kanji sweep's own knob grid is checked by the records test
    )
    code = launch(sweep, [*_args(tmp_path, cache), "--num-samples", "4", "--max-concurrent-trials", "2"])

    assert code == 0
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("kanji_optuna")
    parent = client.search_runs([experiment.experiment_id], "tags.sdsweep.sweep = 'kanji_optuna'")[0]
    assert parent.data.params["search_alg"] == "optuna" and parent.data.params["scheduler"] == "asha"
    trials = client.search_runs([experiment.experiment_id], "tags.sdsweep.kind = 'trial'")
    assert len(trials) == 4
    assert any(r.info.status == "KILLED" for r in trials)  # ASHA stopped at least one at its first rung
    assert len({(r.data.params["lora_rank"], r.data.params["unet_lr"]) for r in trials}) == 4  # distinct draws
    for run in trials:
        assert run.info.status in {"FINISHED", "KILLED"}
        assert (run.info.status == "KILLED") == ("sdsweep.stopped_early" in run.data.tags)
        assert len(client.list_artifacts(run.info.run_id, "samples/final")) == 7  # the latest eval's samples
        card = ["adapter/README.md"] if run.info.status == "FINISHED" else []  # written as a trial finishes
        assert [a.path for a in client.list_artifacts(run.info.run_id, "adapter")] == [
            *card,
            "adapter/lora_kohya.safetensors",
            "adapter/pytorch_lora_weights.safetensors",
        ]
        assert 1e-4 <= float(run.data.params["unet_lr"]) <= 1e-2
