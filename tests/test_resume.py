"""Checkpoints that resume exactly: a trial interrupted after step k and restored from its checkpoint ends
with the same loss history and weights as an uninterrupted run, in the same MLflow run, each step once."""

import shutil
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file

# the subject context of test_dreambooth (photos + class images) serves every method here
from test_dreambooth import class_cache, context, subject  # noqa: F401

from trainables.common.checkpoint import STATE_DIR, read_state
from trainables.common.config import TrialError
from trainables.run_trial import run_trial

STEPS = dict(max_steps=6, eval_every=6, log_every=1, checkpoint_every=2, resolution=64, batch_size=2)
CONFIGS = {
    "lora+te": dict(method="lora", lora_rank=4, train_text_encoder=True, unet_lr=1e-3, text_encoder_lr=1e-3),
    "dreambooth_lora+prior": dict(
        method="dreambooth_lora", with_prior_preservation=True, num_class_images=3, unet_lr=1e-3
    ),  # fmt: skip
    "dreambooth": dict(method="dreambooth", unet_lr=1e-4),
    "full": dict(method="full", unet_lr=1e-4),
    "textual_inversion": dict(method="textual_inversion", learning_rate=5e-2),
}
FILES = {"lora": "pytorch_lora_weights.safetensors", "dreambooth_lora": "pytorch_lora_weights.safetensors",
         "dreambooth": "unet/diffusion_pytorch_model.safetensors", "full": "unet/diffusion_pytorch_model.safetensors",
         "textual_inversion": "learned_embeds.safetensors"}  # fmt: skip


class WorkerLost(OSError):
    """Stands in for a killed process: not an error a retry would meet again."""


def _run(config, ctx, trial_dir: Path, trial_id: str, monkeypatch, *, keep: Path, crash_at=None, resume=None):
    """One attempt of a trial with a fixed Tune identity; every checkpoint it reports is copied to ``keep``."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr("trainables.run_trial.trial_dir", lambda default_name: (trial_dir, f"t_{trial_id}", trial_id))

    def report(metrics, checkpoint_dir=None):
        if checkpoint_dir is not None:
            shutil.copytree(checkpoint_dir, keep / f"step_{metrics['step']}")
        if metrics["step"] == crash_at:
            raise WorkerLost("worker process died")

    @contextmanager
    def resume_checkpoint():
        yield resume

    monkeypatch.setattr("trainables.common.loop.report", report)
    monkeypatch.setattr("trainables.common.session.resume_checkpoint", resume_checkpoint)
    run_trial({**config, **STEPS}, ctx)


def _history(ctx, trial_id):
    client = mlflow.MlflowClient(ctx.tracking_uri)
    (run,) = client.search_runs([ctx.experiment_id], f"tags.`sdsweep.trial_id` = '{trial_id}'")
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    return run, sorted((m.step, m.value) for m in losses)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_restored_trial_continues_exactly(name, context, tmp_path, monkeypatch):  # noqa: F811
    config = CONFIGS[name]
    monkeypatch.chdir(tmp_path)
    _run(config, context, tmp_path / "whole", "whole", monkeypatch, keep=tmp_path / "whole-ckpt")
    # the interrupted attempt dies after logging step 5; its last checkpoint is step 4
    with pytest.raises(WorkerLost):
        _run(config, context, tmp_path / "cut", "cut", monkeypatch, keep=tmp_path / "cut-ckpt", crash_at=5)
    state, _ = read_state(tmp_path / "cut-ckpt" / "step_4")
    assert state["step"] == 4 and (tmp_path / "cut-ckpt" / "step_4" / STATE_DIR / "tensors.safetensors").is_file()
    _run(config, context, tmp_path / "cut", "cut", monkeypatch, keep=tmp_path / "cut-ckpt2",
         resume=tmp_path / "cut-ckpt" / "step_4")  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "cut-ckpt2").iterdir()) == ["step_6"]  # steps 5-6 only: no retraining

    whole_run, whole = _history(context, "whole")
    cut_run, cut = _history(context, "cut")  # one run: the restarted attempt continued the first one's
    assert cut_run.info.status == "FINISHED" and cut_run.info.run_id == state["extra"]["__dict__"]["mlflow_run_id"]
    assert [s for s, _ in cut] == [1, 2, 3, 4, 5, 6]  # every step once: no gap, no repeat
    assert cut == whole  # the same loss at every step, bit for bit
    assert cut_run.data.metrics["eval/clip_t"] == whole_run.data.metrics["eval/clip_t"]
    file = FILES[config["method"]]
    a, b = load_file(tmp_path / "whole" / file), load_file(tmp_path / "cut" / file)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and the weights moved: the comparison is not between two untrained models
    first = load_file(tmp_path / "whole-ckpt" / "step_2" / file)
    assert any(not torch.equal(first[k], a[k]) for k in a)


def test_a_trial_that_failed_on_a_bad_value_fails_again_at_once(context, tmp_path, monkeypatch):  # noqa: F811
    """A retry (max_failures) of a NaN loss meets the same error: it is re-raised without training again."""
    from dataclasses import replace

    monkeypatch.chdir(tmp_path)
    data = context.data
    broken = replace(data, train=replace(data.train, latent_mean=data.train.latent_mean * float("nan")))
    ctx = replace(context, data=broken)
    with pytest.raises(TrialError, match="train/loss became nan"):
        _run(CONFIGS["full"], ctx, tmp_path / "t", "nan", monkeypatch, keep=tmp_path / "k")
    monkeypatch.setattr("trainables.models.load_for_training", lambda *a, **k: pytest.fail("trained again"))
    with pytest.raises(TrialError, match="train/loss became nan"):
        _run(CONFIGS["full"], ctx, tmp_path / "t", "nan", monkeypatch, keep=tmp_path / "k")
    runs = mlflow.MlflowClient(context.tracking_uri).search_runs([context.experiment_id])
    assert [r.info.status for r in runs if r.data.tags.get("sdsweep.kind") == "trial"] == ["FAILED"]
