"""The method sweeps end to end on the tiny preset: every arm a child run beside the baseline, with its own
files and the data kind's metrics, through real Ray Tune and MLflow (sqlite)."""

import math

import mlflow
import pytest
from safetensors import safe_open

pytestmark = pytest.mark.integration


def _launch(sweep_module, tmp_path, cache):
    import importlib

    from sweeps.launch import launch

    sweep = importlib.import_module(f"sweeps.{sweep_module}").SWEEP
    # --max-steps 10: one eval, at step 10, so the suite stays short
    args = ["--preset", "smoke", "--cache-dir", str(cache), "--storage-path", str(tmp_path / "ray"),
            "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db", "--report-dir", str(tmp_path / "reports"),
            "--max-steps", "10"]  # fmt: skip
    code = launch(sweep, args)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(sweep.name).experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    trials = sorted((r for r in children if r.data.tags["sdsweep.kind"] == "trial"), key=lambda r: r.info.start_time)
    (baseline,) = [r for r in children if r.data.tags["sdsweep.kind"] == "baseline"]
    return code, client, parent, trials, baseline


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("sdsweep-cache")


def _files(client, run, path):
    return {a.path for a in client.list_artifacts(run.info.run_id, path)}


def test_dreambooth_methods_sweep_puts_every_method_beside_the_baseline(tmp_path, cache):
    code, client, parent, trials, baseline = _launch("dreambooth_methods", tmp_path, cache)
    assert code == 0 and parent.info.status == "FINISHED"
    arms = sorted((r.data.params["method"], r.data.params.get("with_prior_preservation")) for r in trials)
    assert arms == [("dreambooth", "False"), ("dreambooth", "True"), ("dreambooth_lora", "True"), ("lora", None),
                    ("textual_inversion", None)]  # fmt: skip
    subject_metrics = {"eval/clip_t", "eval/clip_score", "eval/clip_i", "eval/dino"}
    for run in [baseline, *trials]:
        assert run.info.status == "FINISHED", run.info.run_name
        evals = {k: v for k, v in run.data.metrics.items() if k.startswith("eval/")}
        assert set(evals) == subject_metrics, run.info.run_name
        assert all(math.isfinite(v) for v in evals.values()), evals
        # 3 prompts x 2 seeds each (the tiny preset's subject eval)
        assert len(client.list_artifacts(run.info.run_id, "samples/final")) == 6
    by_method = {(r.data.params["method"], r.data.params.get("with_prior_preservation")): r for r in trials}
    # the files each method leaves in its run, each with its model card
    lora_files = {"adapter/README.md", "adapter/lora_kohya.safetensors", "adapter/pytorch_lora_weights.safetensors"}
    assert _files(client, by_method["lora", None], "adapter") == lora_files
    assert _files(client, by_method["dreambooth_lora", "True"], "adapter") == lora_files
    for prior in ("False", "True"):
        model = {"model/README.md", "model/model.safetensors", "model/pipeline"}
        assert _files(client, by_method["dreambooth", prior], "model") == model
        assert "model/pipeline/unet" in _files(client, by_method["dreambooth", prior], "model/pipeline")
    embeddings = _files(client, by_method["textual_inversion", None], "embeddings")
    assert embeddings == {"embeddings/README.md", "embeddings/learned_embeds.safetensors", "embeddings/sks.safetensors"}
    # the winner's files, with its card, in the parent run as best/
    winner = client.get_run(parent.data.tags["sdsweep.best_run_id"])
    kind = next(k for k in ("adapter", "embeddings", "model") if _files(client, winner, k))
    assert {f.replace(kind, "best", 1) for f in _files(client, winner, kind)} == _files(client, parent, "best")
    # prior preservation logs both loss terms; without it there is no prior term
    for key in (("dreambooth", "True"), ("dreambooth_lora", "True")):
        history = client.get_metric_history(by_method[key].info.run_id, "train/prior_loss")
        assert history and all(math.isfinite(m.value) and m.value > 0 for m in history)
        assert by_method[key].data.params["num_class_images"] == "8"  # the tiny preset's set size
    assert not client.get_metric_history(by_method["dreambooth", "False"].info.run_id, "train/prior_loss")
    # the class images were generated once for the sweep, in the cache, and shared by both prior trials
    (class_set,) = (cache / "class_images").iterdir()
    assert len(list(class_set.glob("*.png"))) == 8
    # the subject photos are the references of CLIP-I and DINO
    assert len(_files(client, parent, "references/subject")) >= 3


def test_style_lora_sweep_trains_text_encoder_loras_and_scores_the_trigger(tmp_path, cache):
    code, client, parent, trials, baseline = _launch("style_lora", tmp_path, cache)
    assert code == 0 and parent.info.status == "FINISHED"
    settings = sorted((int(r.data.params["lora_rank"]), float(r.data.params["lora_alpha"]),
                       int(r.data.params["batch_size"])) for r in trials)  # fmt: skip
    assert settings == [(32, 32.0, 1), (32, 32.0, 8), (64, 32.0, 8), (64, 64.0, 8)]
    style_metrics = {"eval/clip_t", "eval/clip_score", "eval/clip_t_plain", "eval/clip_score_plain"}
    for run in [baseline, *trials]:
        assert run.info.status == "FINISHED", run.info.run_name
        evals = {k: v for k, v in run.data.metrics.items() if k.startswith("eval/")}
        assert set(evals) == style_metrics and all(math.isfinite(v) for v in evals.values()), evals
    for run in trials:
        assert run.data.params["train_text_encoder"] == "True"
        assert float(run.data.params["text_encoder_lr"]) == 5e-5 and float(run.data.params["unet_lr"]) == 1e-4
        local = client.download_artifacts(run.info.run_id, "adapter/pytorch_lora_weights.safetensors", str(tmp_path))
        with safe_open(local, "pt") as f:
            keys = list(f.keys())
        assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("unet.") for k in keys)
