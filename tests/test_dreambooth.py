"""dreambooth, dreambooth_lora, full and text-encoder LoRA through the one trainable (no Tune): what each
trains and what it leaves bit-identical, the files it writes, its MLflow run; prior preservation's loss and
its class images, generated once."""

import json
import math
from dataclasses import replace

import mlflow
import pytest
import torch
from PIL import Image, ImageDraw

from eval.evaluate import EvalPrompt, EvalSet, SamplingConfig
from eval.metrics import metrics_for
from trainables.common.config import TrialError
from trainables.common.loop import diffusion_loss
from trainables.common.tracking import TrialContext
from trainables.data.base import PreparedData
from trainables.data.class_images import add_class_sets
from trainables.data.encoding import encode_dataset
from trainables.models import load_pipeline
from trainables.run_trial import run_trial

SAMPLING = SamplingConfig(steps=2, resolution=64, batch_size=4)


def _photo(i: int) -> Image.Image:
    """A 'subject': a red square with a yellow dot, moved and scaled on a different background each time."""
    image = Image.new("RGB", (64, 64), [(30, 90, 160), (40, 140, 60), (200, 200, 200), (90, 60, 30)][i % 4])
    draw = ImageDraw.Draw(image)
    x, y, s = 8 + 5 * i, 12 + 3 * i, 26 - 2 * i
    draw.rectangle([x, y, x + s, y + s], fill=(220, 20, 20))
    draw.ellipse([x + s // 3, y + s // 3, x + 2 * s // 3, y + 2 * s // 3], fill=(250, 220, 0))
    return image


@pytest.fixture(scope="module")
def subject(tiny_sd) -> PreparedData:
    photos = [_photo(i) for i in range(4)]
    encoded = encode_dataset(load_pipeline(tiny_sd), photos, ["a photo of sks toy"] * 4, 64, progress=False)
    prompts = (
        EvalPrompt("p00/0", "a sks toy on a beach", 0, score_text="a toy on a beach"),
        EvalPrompt("p01/0", "a sks toy in the snow", 1, score_text="a toy in the snow"),
    )
    eval_set = EvalSet(prompts, tuple(photos), metrics_for("subject"))
    return PreparedData("subject", encoded, eval_set, "sks", "toy", "a photo of toy", train_images=photos)


@pytest.fixture(scope="module")
def class_cache(tmp_path_factory, tiny_sd, subject):
    """The class images of two trials that share one set, generated (and encoded) once into a cache."""
    cache = tmp_path_factory.mktemp("class-cache")
    add_class_sets(subject, [(None, 3)], tiny_sd, 64, cache, SAMPLING, progress=False)
    return cache


@pytest.fixture
def context(tmp_path, tiny_sd, tiny_scorer_spec, subject, class_cache):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as parent:
        pass
    return TrialContext(
        tiny_sd, uri, experiment, parent.info.run_id, subject.eval, SAMPLING, tiny_scorer_spec, subject,
        num_class_images=3,
    )  # fmt: skip


@pytest.fixture
def trained(monkeypatch):
    """Run a trial and keep the pipeline it trained (the recipe's own object, after its last step)."""
    import trainables.models as models

    pipes = []
    load = models.load_for_training

    def keep(*args, **kwargs):
        pipes.append(load(*args, **kwargs))
        return pipes[-1]

    def run(config, ctx):
        for name in ("dreambooth", "dreambooth_lora", "full", "lora"):
            monkeypatch.setattr(f"trainables.methods.{name}.load_for_training", keep)
        run_trial(config, ctx)
        return pipes[-1]

    return run


def _child_runs(ctx):
    client = mlflow.MlflowClient(ctx.tracking_uri)
    return client, client.search_runs([ctx.experiment_id], f"tags.mlflow.parentRunId = '{ctx.parent_run_id}'")


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _base_weights_of(lora_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The frozen weights under a peft-wrapped model, keyed as in the unwrapped model."""
    state = lora_model.state_dict()
    return {k.replace(".base_layer", ""): v for k, v in state.items() if "lora_" not in k}


UNET_IN = (torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([10]))


def test_prior_preservation_loss_matches_a_hand_computation():
    prediction = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 1.0], [2.0, 2.0]])  # 2 instance rows, 2 class rows
    target = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [0.0, 2.0]])
    loss, terms = diffusion_loss(prediction, target, with_prior=True, prior_loss_weight=0.5)
    instance = (1 + 4 + 1 + 1) / 4  # squared errors of the instance rows, averaged
    prior = (4 + 0 + 4 + 0) / 4
    assert terms["train/instance_loss"].item() == pytest.approx(instance)
    assert terms["train/prior_loss"].item() == pytest.approx(prior)
    assert loss.item() == pytest.approx(instance + 0.5 * prior)
    plain, no_terms = diffusion_loss(prediction, target)
    assert plain.item() == pytest.approx((7 + 8) / 8) and no_terms == {}


def test_class_images_are_generated_once_and_shared(tiny_sd, subject, class_cache, monkeypatch, tmp_path):
    from sweeps.launch.main import _class_set_requests
    from sweeps.launch.spec import PRESETS
    from trainables.registry import parse_trial_config

    # two prior-preservation trials of different methods ask for the same set: one request
    trials = [
        parse_trial_config({"method": "dreambooth", "with_prior_preservation": True}),
        parse_trial_config({"method": "dreambooth_lora", "with_prior_preservation": True, "lora_rank": 8}),
        parse_trial_config({"method": "dreambooth"}),
    ]
    assert _class_set_requests(trials, PRESETS["smoke"]) == [(None, 8)]

    # the set of the fixture is on disk, and a later sweep reuses it without loading the model
    (folder,) = (class_cache / "class_images").iterdir()
    assert sorted(p.name for p in folder.glob("*.png")) == ["000.png", "001.png", "002.png"]
    assert (folder / "prompt.txt").read_text() == "a photo of toy"
    monkeypatch.setattr("trainables.data.class_images._base_pipeline", lambda m: pytest.fail("model loaded again"))
    again = replace(subject, class_sets={})
    add_class_sets(again, [(None, 3)], tiny_sd, 64, class_cache, SAMPLING, progress=False)
    assert torch.equal(again.class_sets[(None, 3)].latent_mean, subject.class_sets[(None, 3)].latent_mean)
    assert again.class_sets[(None, 3)].captions == ["a photo of toy"]

    # a fresh cache generates each image with its own seed: the first images of a larger set are the same
    calls = []
    from diffusers import StableDiffusionPipeline

    call = StableDiffusionPipeline.__call__

    def counted(self, *a, **k):
        calls.append(1)
        return call(self, *a, **k)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", counted)
    monkeypatch.setattr("trainables.data.class_images._base_pipeline", lambda m: load_pipeline(m))
    bigger = replace(subject, class_sets={})
    add_class_sets(bigger, [(None, 5)], tiny_sd, 64, tmp_path, SAMPLING, progress=False)
    assert len(calls) == 2  # 5 images in batches of 4
    (big,) = (tmp_path / "class_images").iterdir()
    import numpy as np

    with Image.open(folder / "001.png") as a, Image.open(big / "001.png") as b:  # same seed, other batch: ~1 LSB
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 2


def test_dreambooth_with_prior_trains_the_unet_only(context, trained, tiny_sd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = dict(method="dreambooth", with_prior_preservation=True, prior_loss_weight=0.5, num_class_images=3,
                  unet_lr=1e-3, max_steps=3, batch_size=2, resolution=64, eval_every=3, log_every=1)  # fmt: skip
    pipe = trained(config, context)
    base = load_pipeline(tiny_sd)
    assert _same(pipe.text_encoder, base.text_encoder) and _same(pipe.vae, base.vae)
    assert not _same(pipe.unet, base.unet)

    # the file it writes: a diffusers UNet folder that reloads to the trained weights
    from diffusers import UNet2DConditionModel

    reloaded = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    assert _same(reloaded, pipe.unet)

    client, (run,) = _child_runs(context)
    assert run.info.status == "FINISHED" and run.info.run_name == "dreambooth-prior-local"
    params = run.data.params
    assert params["method"] == "dreambooth" and params["prior_loss_weight"] == "0.5"
    assert "lora_rank" not in params and "text_encoder_lr" not in params  # only what applies to it
    for key in ("train/instance_loss", "train/prior_loss"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3]
    history = {k: client.get_metric_history(run.info.run_id, k)[-1].value for k in ("train/loss",
               "train/instance_loss", "train/prior_loss")}  # fmt: skip
    assert history["train/loss"] == pytest.approx(history["train/instance_loss"] + 0.5 * history["train/prior_loss"])
    assert all(math.isfinite(run.data.metrics[k]) for k in ("eval/dino", "eval/clip_i", "eval/clip_t"))
    # the files people load: the diffusers pipeline folder, the single-file checkpoint, the card
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert artifacts == {"model/README.md", "model/model.safetensors", "model/pipeline"}
    pipeline = client.download_artifacts(run.info.run_id, "model/pipeline", str(tmp_path / "logged"))
    from diffusers import StableDiffusionPipeline

    logged = StableDiffusionPipeline.from_pretrained(pipeline)
    assert _same(logged.unet, pipe.unet) and _same(logged.vae, base.vae)


def test_dreambooth_lora_with_text_encoder_leaves_base_weights_and_reloads(context, trained, tiny_sd, tmp_path,
                                                                          monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    config = dict(method="dreambooth_lora", lora_rank=4, lora_alpha=8.0, train_text_encoder=True)
    config.update(text_encoder_lr=1e-3, unet_lr=1e-3, max_steps=3, batch_size=2, resolution=64, eval_every=3)
    pipe = trained(config, context)
    base = load_pipeline(tiny_sd)
    for trained_part, base_part in ((pipe.unet, base.unet), (pipe.text_encoder, base.text_encoder)):
        frozen = _base_weights_of(trained_part)
        assert all(torch.equal(frozen[k], v) for k, v in base_part.state_dict().items())
    assert _same(pipe.vae, base.vae)

    # one file with UNet and text-encoder layers; loading it reproduces both trained modules
    from safetensors import safe_open

    with safe_open(str(tmp_path / "pytorch_lora_weights.safetensors"), "pt") as fh:
        keys, metadata = list(fh.keys()), fh.metadata()
    assert any(k.startswith("unet.") for k in keys) and any(k.startswith("text_encoder.") for k in keys)
    meta = json.loads(metadata["lora_adapter_metadata"])
    assert meta["unet.lora_alpha"] == 8.0 and meta["text_encoder.r"] == 4
    base.load_lora_weights(str(tmp_path))
    tokens = base.tokenizer(["a sks toy"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        pipe.text_encoder.eval(), pipe.unet.eval()
        text, text_reloaded = pipe.text_encoder(tokens)[0], base.text_encoder(tokens)[0]
        assert torch.allclose(text, text_reloaded, atol=1e-5)
        assert torch.allclose(pipe.unet(*UNET_IN, text).sample, base.unet(*UNET_IN, text).sample, atol=1e-5)
    _, (run,) = _child_runs(context)
    assert run.info.run_name == "dreambooth-lora-r4-a8-te-local" and run.data.params["text_encoder_lr"] == "0.001"


def test_full_fine_tune_trains_every_unet_weight_and_nothing_else(context, trained, tiny_sd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipe = trained(dict(method="full", unet_lr=1e-3, max_steps=2, batch_size=2, resolution=64, eval_every=2), context)
    base = load_pipeline(tiny_sd)
    assert _same(pipe.text_encoder, base.text_encoder) and _same(pipe.vae, base.vae)
    changed = [k for k, v in base.unet.state_dict().items() if not torch.equal(v, pipe.unet.state_dict()[k])]
    assert len(changed) > 0.9 * len(base.unet.state_dict())  # (a few, e.g. unused biases, may get no gradient)
    _, (run,) = _child_runs(context)
    assert run.info.status == "FINISHED" and run.data.params["method"] == "full"
    assert int(run.data.params["trainable_params"]) == sum(p.numel() for p in base.unet.parameters())


def test_lora_with_text_encoder_runs_the_text_encoder_on_cached_token_ids(context, trained, tiny_sd, tmp_path,
                                                                          monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    config = dict(method="lora", train_text_encoder=True, max_steps=2, batch_size=2, resolution=64, eval_every=2)
    pipe = trained(config, context)
    base = load_pipeline(tiny_sd)
    frozen = _base_weights_of(pipe.text_encoder)
    assert all(torch.equal(frozen[k], v) for k, v in base.text_encoder.state_dict().items())
    lora_b = [v for k, v in pipe.text_encoder.state_dict().items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: it trained
    _, (run,) = _child_runs(context)
    assert run.data.params["text_encoder_lr"] == "5e-05"  # the style study's default when unset


@pytest.mark.parametrize(
    "method, lr",
    [("dreambooth", "unet_lr \\(now 5e-06\\)"), ("dreambooth_lora", "unet_lr \\(now 0.0001\\)"),
     ("full", "unet_lr \\(now 1e-05\\)")],
)  # fmt: skip
def test_nan_loss_fails_only_its_trial(context, tmp_path, monkeypatch, method, lr):
    monkeypatch.chdir(tmp_path)
    data = context.data
    broken = replace(data, train=replace(data.train, latent_mean=data.train.latent_mean * float("nan")))
    with pytest.raises(TrialError, match=rf"train/loss became nan at step 1: lower {lr}"):
        run_trial(dict(method=method, max_steps=2, resolution=64, batch_size=2), replace(context, data=broken))
    _, runs = _child_runs(context)
    assert [r.info.status for r in runs] == ["FAILED"]


def test_a_config_that_fails_inside_its_trial_is_recorded_as_a_failed_run(context, tmp_path, monkeypatch):
    """An Optuna draw is checked only inside its trial: its failure still leaves a closed MLflow record."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="lora_rank=0 is not valid"):
        run_trial({"method": "lora", "lora_rank": 0}, context)
    _, (run,) = _child_runs(context)
    assert run.info.status == "FAILED" and run.info.run_name == "invalid-local" and run.data.params["lora_rank"] == "0"


def test_a_damaged_class_set_encoding_is_rebuilt(tiny_sd, subject, tmp_path, capsys):
    add_class_sets(replace(subject, class_sets={}), [(None, 2)], tiny_sd, 64, tmp_path, SAMPLING, progress=False)
    (encoded,) = (tmp_path / "encoded").glob("class-*.pt")
    whole = encoded.read_bytes()
    encoded.write_bytes(whole[:100])
    again = replace(subject, class_sets={})
    add_class_sets(again, [(None, 2)], tiny_sd, 64, tmp_path, SAMPLING, progress=False)
    assert f"the encoded cache {encoded} is damaged" in capsys.readouterr().err
    assert encoded.read_bytes() == whole and again.class_sets[(None, 2)].captions == ["a photo of toy"]
