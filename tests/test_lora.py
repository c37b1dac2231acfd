"""The lora method through the one trainable, called directly (no Tune): adapter file, its keys and scale,
MLflow records, NaN."""

import math

import mlflow
import pytest
import torch
from safetensors import safe_open

from eval.evaluate import EvalPrompt, EvalSet, SamplingConfig
from eval.metrics import metrics_for
from trainables.common.config import TrialError
from trainables.common.lora import ADAPTER_FILE, add_lora, save_lora
from trainables.common.tracking import TrialContext
from trainables.data.base import PreparedData
from trainables.data.encoding import EncodedDataset, encode_dataset
from trainables.data.kanji import kanji_eval_prompts, load_image, load_records
from trainables.models import load_pipeline
from trainables.run_trial import run_trial


def train_lora(config, ctx):
    return run_trial({"method": "lora", **config}, ctx)


@pytest.fixture(scope="module")
def encoded(tiny_sd, kanji_dir) -> EncodedDataset:
    train = [r for r in load_records(kanji_dir) if r.split == "train"][:32]
    pipe = load_pipeline(tiny_sd)
    return encode_dataset(
        pipe, [load_image(kanji_dir, r) for r in train], [r.caption for r in train], 64, progress=False
    )


@pytest.fixture
def context(tmp_path, tiny_sd, tiny_scorer_spec, kanji_dir, encoded):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as parent:
        pass
    prompts = kanji_eval_prompts(kanji_dir, load_records(kanji_dir), n_heldout=2)
    eval_set = EvalSet(tuple(prompts), (), metrics_for("kanji"))
    return TrialContext(
        tiny_sd, uri, experiment, parent.info.run_id, eval_set,
        SamplingConfig(steps=3, resolution=64), tiny_scorer_spec, PreparedData("kanji", encoded, eval_set),
    )  # fmt: skip


def test_encoding_once_matches_the_vae(tiny_sd, kanji_dir, encoded):
    assert encoded.latent_mean.shape == (32, 4, 32, 32) and encoded.text_embeds.shape[1:] == (77, 32)
    pipe = load_pipeline(tiny_sd)
    record = [r for r in load_records(kanji_dir) if r.split == "train"][0]
    from trainables.data.encoding import image_to_tensor

    with torch.no_grad():
        mean = pipe.vae.encode(image_to_tensor(load_image(kanji_dir, record), 64)[None]).latent_dist.mean
    assert torch.allclose(encoded.latent_mean[0].float(), mean[0], atol=1e-2)


def test_train_lora_writes_a_loadable_adapter_and_mlflow_records(context, tiny_sd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = dict(lora_rank=4, lora_alpha=8.0, max_steps=6, batch_size=2, resolution=64, eval_every=3, log_every=2,
                  unet_lr=1e-3)  # fmt: skip
    assert train_lora(config, context) is None  # results go to Tune and MLflow, not a duplicate final report

    # the adapter: diffusers-format keys for the UNet attention projections, rank/alpha in its metadata
    adapter = tmp_path / ADAPTER_FILE
    with safe_open(str(adapter), "pt") as fh:
        keys = list(fh.keys())
        metadata = fh.metadata()
    assert keys and all(k.startswith("unet.") for k in keys)
    assert {k.rsplit(".", 2)[0].rsplit(".", 1)[-1] for k in keys} == {"to_q", "to_k", "to_v", "0"}  # to_out.0
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)  # peft's names, as diffusers reads
    import json

    peft_config = json.loads(metadata["lora_adapter_metadata"])
    assert peft_config["unet.r"] == 4 and peft_config["unet.lora_alpha"] == 8.0

    # loading it into a fresh pipeline changes the output
    def sample(pipe):
        return pipe('kanji meaning "internet"', num_inference_steps=3, height=64, width=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images  # fmt: skip

    fresh = load_pipeline(tiny_sd)
    before = sample(fresh)
    fresh.load_lora_weights(str(tmp_path))
    assert abs(sample(fresh) - before).max() > 1e-4

    # MLflow: one FINISHED child run with params, finite scores, history, images and the adapter
    client = mlflow.MlflowClient(context.tracking_uri)
    runs = client.search_runs([context.experiment_id], f"tags.mlflow.parentRunId = '{context.parent_run_id}'")
    assert len(runs) == 1
    run = runs[0]
    metrics = run.data.metrics
    assert all(math.isfinite(metrics[k]) for k in ("eval/clip_t", "eval/clip_i", "eval/dino", "eval/glyph_iou"))
    assert run.info.status == "FINISHED" and run.info.run_name == "lora-r4-a8-local"
    assert run.data.params["lora_rank"] == "4" and run.data.params["method"] == "lora"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [2, 3, 4, 6]
    # the untrained model is scored and sampled at step 0: the eval curve and the image slider start there
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/clip_t")] == [0, 3, 6]
    first = client.list_artifacts(run.info.run_id, "images")
    assert any("+step+0+" in a.path for a in first) and any("+step+6+" in a.path for a in first)
    # the file's size is one value (at the last step), not a curve
    assert [m.step for m in client.get_metric_history(run.info.run_id, "adapter/size_mb")] == [6]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "samples/final")}
    assert len(artifacts) == len(context.eval.prompts)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "adapter")] == [
        "adapter/README.md", "adapter/lora_kohya.safetensors", f"adapter/{ADAPTER_FILE}"
    ]  # fmt: skip
    card = client.download_artifacts(run.info.run_id, "adapter/README.md", str(tmp_path / "card"))
    text = open(card, encoding="utf-8").read()
    assert "method **lora** on base model" in text and "| lora_rank | 4 |" in text and "| eval/clip_t |" in text
    assert "<lora:lora_kohya:1>" in text and "load_lora_weights('.', weight_name='pytorch_lora_weights" in text


def test_adapter_reloads_with_the_trained_scale(tiny_sd, tmp_path):
    """alpha != rank: the saved metadata must restore scale alpha/rank, or the reloaded UNet differs."""
    pipe = load_pipeline(tiny_sd)
    params = add_lora(pipe.unet, 2, 16.0, ("to_q", "to_k", "to_v", "to_out.0"))
    torch.manual_seed(0)
    for p in params:
        p.data.normal_(0, 0.05)  # non-zero lora_B so the adapter does something
    save_lora(pipe.unet, tmp_path)
    fresh = load_pipeline(tiny_sd)
    fresh.load_lora_weights(str(tmp_path))
    x, t, text = torch.randn(1, 4, 32, 32), torch.tensor([10]), torch.randn(1, 77, 32)
    with torch.no_grad():
        assert torch.allclose(pipe.unet(x, t, text).sample, fresh.unet(x, t, text).sample, atol=1e-5)


def test_nan_loss_fails_the_trial_with_a_fix_and_marks_its_run(context, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from dataclasses import replace

    data = context.data.train
    broken = replace(data, latent_mean=data.latent_mean * float("nan"))

    with pytest.raises(TrialError, match=r"train/loss became nan at step 1: lower unet_lr \(now 0.0001\)"):
        train_lora(
            dict(max_steps=3, resolution=64, batch_size=2), replace(context, data=replace(context.data, train=broken))
        )
    runs = mlflow.MlflowClient(context.tracking_uri).search_runs([context.experiment_id], "tags.sdsweep.kind = 'trial'")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_mixed_precision_on_cpu_is_refused(context, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrialError, match="mixed_precision='fp16' needs a GPU"):
        train_lora(dict(max_steps=1, resolution=64, mixed_precision="fp16"), context)


def test_eval_prompts_sample_the_same_images_for_the_same_seeds(tiny_sd, tiny_scorers):
    from eval.evaluate import sample_images

    pipe = load_pipeline(tiny_sd)
    prompts = [EvalPrompt("a", 'kanji meaning "a"', 5), EvalPrompt("b", 'kanji meaning "b"', 6)]
    cfg = SamplingConfig(steps=2, resolution=64, batch_size=2)
    together = sample_images(pipe, prompts, cfg)
    alone = sample_images(pipe, prompts[1:], SamplingConfig(steps=2, resolution=64, batch_size=1))
    import numpy as np

    assert np.array_equal(np.asarray(together[1]), np.asarray(alone[0]))  # seeds independent of batching


def test_training_never_runs_the_vae_encoder_and_text_encoder_only_for_eval(context, tmp_path, monkeypatch):
    """Latents and caption embeddings come from the sweep's one-off encoding: the VAE encoder never runs in
    a trial, and the text encoder runs only to encode eval prompts (prompt + negative, per eval)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    def no_encode(*args, **kwargs):
        raise AssertionError("a trial ran the VAE encoder")

    calls = []
    forward = CLIPTextModel.forward
    monkeypatch.setattr(AutoencoderKL, "encode", no_encode)
    monkeypatch.setattr(CLIPTextModel, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    monkeypatch.chdir(tmp_path)
    train_lora(dict(max_steps=8, batch_size=2, resolution=64, eval_every=4, log_every=4), context)
    evals, batches = 3, math.ceil(len(context.eval.prompts) / context.sampling.batch_size)  # steps 0, 4, 8
    assert len(calls) == evals * batches * 2


def test_v_prediction_models_train_on_the_velocity(tiny_sd, context, tmp_path, monkeypatch):
    import json
    import shutil
    from dataclasses import replace

    model = tmp_path / "tiny-v"
    shutil.copytree(tiny_sd, model)
    config = json.loads((model / "scheduler" / "scheduler_config.json").read_text())
    (model / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({**config, "prediction_type": "v_prediction"})
    )
    from diffusers import DDPMScheduler

    seen = []
    velocity = DDPMScheduler.get_velocity
    monkeypatch.setattr(DDPMScheduler, "get_velocity", lambda self, *a: seen.append(1) or velocity(self, *a))
    monkeypatch.chdir(tmp_path)
    train_lora(dict(max_steps=2, batch_size=2, resolution=64, eval_every=2), replace(context, model=str(model)))
    assert len(seen) == 2  # one velocity target per step
    run = mlflow.MlflowClient(context.tracking_uri).search_runs([context.experiment_id], "tags.sdsweep.kind = 'trial'")[
        0
    ]
    assert math.isfinite(run.data.metrics["train/loss"])
