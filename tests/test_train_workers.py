"""A trial as a Ray Train job of 2 data-parallel workers takes the same steps as the same trial in one
process: each worker trains its half of every batch, gradients are averaged, and only rank 0 writes the
MLflow records and files. Both paths run through real Tune (and Ray Train) with the same assertions."""

from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
import ray
import torch
from ray import tune
from safetensors.torch import load_file

# the subject context of test_dreambooth (photos + class images)
from test_dreambooth import class_cache, context, subject  # noqa: F401

from sweeps.launch.ray_env import quiet_libraries, start_ray
from sweeps.launch.resources import TRIAL_SLOT
from trainables.run_trial import run_trial

pytestmark = pytest.mark.integration

STEPS = dict(max_steps=6, eval_every=3, log_every=1, checkpoint_every=2, resolution=64, batch_size=4, seed=0)
# prior preservation: each worker must keep two instance rows and their two class rows
CONFIG = dict(method="dreambooth_lora", with_prior_preservation=True, num_class_images=3, unet_lr=1e-3)
ADAPTER = "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def local_ray():
    """Ray as the launcher starts it for multi-worker trials (dashboard on: Train frees a job's workers
    through Ray's state API)."""
    quiet_libraries()
    start_ray(2, dashboard=True)
    yield
    ray.shutdown()


def _fit(ctx, storage: Path, workers: int):
    """One trial through Tune: in the trial's process (1 worker) or as a Train job of ``workers``."""
    ctx = replace(ctx, workers_per_trial=workers, storage_path=str(storage), max_failures=0)
    resources = {"cpu": 1} if workers == 1 else {TRIAL_SLOT: 1}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources),
        param_space={"trial": {**CONFIG, **STEPS}},
        run_config=tune.RunConfig(
            name=f"w{workers}", storage_path=str(storage), verbose=0, failure_config=tune.FailureConfig(max_failures=0)
        ),  # fmt: skip
    )
    (result,) = list(tuner.fit())
    assert result.error is None, result.error
    return result


def _records(ctx, trial_id: str):
    client = mlflow.MlflowClient(ctx.tracking_uri)
    runs = client.search_runs([ctx.experiment_id], f"tags.`sdsweep.trial_id` = '{trial_id}'")
    assert len(runs) == 1  # one child run per trial, whatever the number of workers
    run = runs[0]
    history = {}
    for key in ("train/loss", "train/instance_loss", "train/prior_loss", "eval/clip_i"):
        points = client.get_metric_history(run.info.run_id, key)
        history[key] = sorted((m.step, m.value) for m in points)
    adapters = [f.path for f in client.list_artifacts(run.info.run_id, "adapter")]
    return run, history, adapters


def test_two_workers_take_the_same_steps_as_one(local_ray, context, tmp_path):  # noqa: F811
    one = _fit(context, tmp_path / "ray", workers=1)
    two = _fit(context, tmp_path / "ray", workers=2)

    run1, hist1, files1 = _records(context, one.metrics["trial_id"])
    run2, hist2, files2 = _records(context, two.metrics["trial_id"])
    assert run1.info.status == run2.info.status == "FINISHED"
    assert run2.data.params["workers_per_trial"] == "2" and "workers_per_trial" not in run1.data.params
    assert files1 == files2 == [f"adapter/{ADAPTER}"]  # rank 0 alone logs the adapter
    for key in hist1:
        steps1, steps2 = [s for s, _ in hist1[key]], [s for s, _ in hist2[key]]
        assert steps1 == steps2 and len(set(steps2)) == len(steps2), key  # every step once, none per worker
        assert steps1, key
        # the logged loss is the whole batch's on both paths (averaged over workers), not rank 0's rows
        assert torch.allclose(torch.tensor([v for _, v in hist1[key]]), torch.tensor([v for _, v in hist2[key]]),
                              rtol=1e-4, atol=1e-6), key  # fmt: skip
    assert [s for s, _ in hist1["train/loss"]] == list(range(1, 7))

    # the trained adapter: the same after 6 averaged steps (up to float summation order)
    weights1, weights2 = load_file(Path(one.path) / ADAPTER), load_file(Path(two.path) / ADAPTER)
    assert weights1.keys() == weights2.keys()
    ups = [k for k in weights1 if "lora_B" in k or "lora.up" in k]
    assert ups and all(weights1[k].abs().max() > 0 for k in ups)  # B starts at zero: it trained
    # not bit-equal: the workers sum the batch in another order, and AdamW's division by the root of the
    # squared gradients enlarges that noise where a gradient is near zero
    worst = max(float((weights1[k] - weights2[k]).norm() / weights1[k].norm().clamp_min(1e-12)) for k in ups)
    assert worst < 1e-3, worst
    for key in weights1:
        assert torch.allclose(weights1[key], weights2[key], rtol=1e-3, atol=1e-5), key
    # the Train job's checkpoint sits in its own run folder under the sweep's storage
    assert list((tmp_path / "ray").glob(f"train-{two.metrics['trial_id']}/checkpoint_*"))
