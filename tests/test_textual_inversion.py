"""The textual_inversion method through the one trainable, called directly (no Tune): only the placeholder rows
change, the embeddings file and its reload, MLflow records, NaN, config and set-up errors."""

import math
from dataclasses import replace
from types import SimpleNamespace

import mlflow
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open

import trainables.methods.textual_inversion as ti
from eval.evaluate import EvalPrompt, EvalSet, SamplingConfig
from eval.metrics import metrics_for
from trainables.common.config import TrialError
from trainables.common.tracking import TrialContext
from trainables.data.base import PreparedData
from trainables.data.encoding import EncodedDataset, encode_dataset, tokenize
from trainables.models import load_pipeline
from trainables.registry import METHODS, parse_trial_config
from trainables.run_trial import run_trial

EMBEDDINGS = ti.EMBEDDINGS_FILE
FAST = dict(max_steps=4, batch_size=2, resolution=64, eval_every=2, log_every=2, learning_rate=5e-3)


def train_ti(config: dict, ctx: TrialContext):
    return run_trial({"method": "textual_inversion", **config}, ctx)


def _toy_photos() -> list[Image.Image]:
    """Four 64 px "photos" of one red toy on different backgrounds and at different places."""
    photos = []
    for i, background in enumerate([(200, 220, 255), (240, 240, 200), (210, 255, 210), (230, 230, 230)]):
        image = Image.new("RGB", (64, 64), background)
        draw = ImageDraw.Draw(image)
        x, y = 10 + 6 * i, 14 + 4 * i
        draw.ellipse((x, y, x + 30, y + 26), fill=(210, 40, 40))
        draw.rectangle((x + 10, y - 8, x + 20, y + 2), fill=(90, 40, 20))
        photos.append(image)
    return photos


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return _toy_photos()


@pytest.fixture(scope="module")
def encoded(tiny_sd, photos) -> EncodedDataset:
    return encode_dataset(load_pipeline(tiny_sd), photos, ["a photo of sks toy"] * len(photos), 64, progress=False)


def _context(root, tiny_sd, scorer_spec, encoded, photos) -> TrialContext:
    uri = f"sqlite:///{root}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("t", artifact_location=(root / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as parent:
        pass
    prompts = (
        EvalPrompt("jungle", "a sks toy in the jungle", 1, score_text="a toy in the jungle"),
        EvalPrompt("beach", "a sks toy on the beach", 2, score_text="a toy on the beach"),
    )
    eval_set = EvalSet(prompts, tuple(photos), metrics_for("subject"))
    data = PreparedData("subject", encoded, eval_set, identifier="sks", class_noun="toy", train_images=photos)
    return TrialContext(
        tiny_sd, uri, experiment, parent.info.run_id, eval_set,
        SamplingConfig(steps=3, resolution=64), scorer_spec, data,
    )  # fmt: skip


@pytest.fixture
def context(tmp_path, tiny_sd, tiny_scorer_spec, encoded, photos) -> TrialContext:
    return _context(tmp_path, tiny_sd, tiny_scorer_spec, encoded, photos)


def _train_capturing(config: dict, ctx: TrialContext, monkeypatch):
    """Train through ``run_trial`` and return the trained pipeline (caught from the recipe's model loader)."""
    pipes = []
    load = ti.load_for_training
    monkeypatch.setattr(ti, "load_for_training", lambda *a: pipes.append(load(*a)) or pipes[-1])
    assert train_ti(config, ctx) is None  # results go to Tune and MLflow
    return pipes[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_sd, tiny_scorer_spec, encoded, photos):
    """One default-config trial (one vector, initialised from "toy"), shared by the tests that read its results."""
    root = tmp_path_factory.mktemp("ti-trained")
    ctx = _context(root, tiny_sd, tiny_scorer_spec, encoded, photos)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(root)
        pipe = _train_capturing(FAST, ctx, monkeypatch)
    return SimpleNamespace(ctx=ctx, pipe=pipe, file=root / EMBEDDINGS, base=load_pipeline(tiny_sd))


def _encode(pipe, prompt: str) -> torch.Tensor:
    """The text conditioning the pipeline samples with (placeholder tokens expanded as at inference)."""
    with torch.no_grad():
        return pipe.encode_prompt(prompt, "cpu", 1, False)[0]


def test_only_the_placeholder_rows_change(trained):
    base, pipe = trained.base, trained.pipe
    base_text, text = base.text_encoder.state_dict(), pipe.text_encoder.state_dict()
    assert base_text.keys() == text.keys()
    vocab = base.text_encoder.get_input_embeddings().weight.shape[0]
    placeholder = pipe.tokenizer.convert_tokens_to_ids("<sks>")
    toy = base.tokenizer.encode("toy", add_special_tokens=False)[0]
    for name, weight in base_text.items():
        if name.endswith("token_embedding.weight"):
            assert text[name].shape == (vocab + 1, weight.shape[1]) and placeholder == vocab
            assert torch.equal(text[name][:vocab], weight)  # every real token's row, bit for bit
            assert not torch.allclose(text[name][placeholder], weight[toy])  # trained away from the initializer
        else:
            assert torch.equal(text[name], weight), name
    for module in ("unet", "vae"):
        before, after = getattr(base, module).state_dict(), getattr(pipe, module).state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before), module


def test_embeddings_file_reloads_into_a_fresh_pipeline(trained, tiny_sd):
    with safe_open(str(trained.file), "pt") as fh:
        assert list(fh.keys()) == ["<sks>"]
        saved = fh.get_tensor("<sks>")
    assert saved.shape == (1, 32) and saved.dtype == torch.float32
    trained_rows = trained.pipe.text_encoder.get_input_embeddings().weight[-1:]
    assert torch.equal(saved, trained_rows.detach())

    fresh = load_pipeline(tiny_sd)
    fresh.load_textual_inversion(str(trained.file), token="<sks>")
    row = fresh.text_encoder.get_input_embeddings().weight[fresh.tokenizer.convert_tokens_to_ids("<sks>")]
    assert torch.allclose(row, saved[0], atol=1e-6)
    prompt = "a <sks> toy in the jungle"
    reloaded = _encode(fresh, prompt)
    assert torch.allclose(reloaded, _encode(trained.pipe, prompt), atol=1e-6)
    assert (reloaded - _encode(trained.base, prompt)).abs().max() > 1e-4  # vs the base model
    assert (reloaded - _encode(trained.base, "a toy toy in the jungle")).abs().max() > 1e-4  # vs its start


def test_mlflow_child_run(trained):
    ctx = trained.ctx
    client = mlflow.MlflowClient(ctx.tracking_uri)
    runs = client.search_runs([ctx.experiment_id], f"tags.mlflow.parentRunId = '{ctx.parent_run_id}'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "ti-v1-local"
    params = run.data.params
    assert params["method"] == "textual_inversion" and params["learning_rate"] == "0.005"
    assert params["initializer"] == "toy" and params["template_set"] == "object" and params["trainable_params"] == "32"
    assert all(math.isfinite(run.data.metrics[k]) for k in ("eval/clip_t", "eval/clip_i", "eval/dino"))
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/clip_t")] == [0, 2, 4]
    # diffusers' file, A1111's (named by the token, emb_params inside) and the model card
    assert [a.path for a in client.list_artifacts(run.info.run_id, "embeddings")] == [
        "embeddings/README.md", f"embeddings/{EMBEDDINGS}", "embeddings/sks.safetensors"
    ]  # fmt: skip
    assert len(client.list_artifacts(run.info.run_id, "samples/final")) == 2


def test_two_vectors_add_two_tokens_and_write_two_rows(context, tiny_sd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipe = _train_capturing({**FAST, "num_vectors": 2, "max_steps": 2}, context, monkeypatch)
    vocab = 49408
    assert pipe.tokenizer.convert_tokens_to_ids(["<sks>", "<sks>_1"]) == [vocab, vocab + 1]
    with safe_open(str(tmp_path / EMBEDDINGS), "pt") as fh:
        assert list(fh.keys()) == ["<sks>"] and fh.get_tensor("<sks>").shape == (2, 32)

    # at sampling the pipeline expands the lone placeholder to both vectors, as the training captions spell it
    spelled = tokenize(pipe.tokenizer, ["a <sks> <sks>_1 toy in the jungle"])
    with torch.no_grad():
        assert torch.equal(_encode(pipe, "a <sks> toy in the jungle"), pipe.text_encoder(spelled)[0])

    fresh = load_pipeline(tiny_sd)
    fresh.load_textual_inversion(str(tmp_path / EMBEDDINGS), token="<sks>")
    assert fresh.tokenizer.convert_tokens_to_ids(["<sks>", "<sks>_1"]) == [vocab, vocab + 1]
    assert torch.allclose(_encode(fresh, "a <sks> toy"), _encode(pipe, "a <sks> toy"), atol=1e-6)


def test_nan_loss_fails_the_trial_with_a_fix_and_marks_its_run(context, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = context.data.train
    broken = replace(data, latent_mean=data.latent_mean * float("nan"))
    with pytest.raises(TrialError, match=r"train/loss became nan at step 1: lower learning_rate \(now 0.0005\)"):
        train_ti(
            dict(max_steps=3, resolution=64, batch_size=2), replace(context, data=replace(context.data, train=broken))
        )
    runs = mlflow.MlflowClient(context.tracking_uri).search_runs([context.experiment_id], "tags.sdsweep.kind = 'trial'")
    assert [r.info.status for r in runs] == ["FAILED"]


@pytest.mark.parametrize(
    "field, value, fix",
    [
        ("num_vectors", 0, "whole number >= 1"),
        ("num_vectors", 1.5, "whole number >= 1"),
        ("templates", "poem", "choose one of"),
        ("initializer_token", "teddy bear", "use one word"),
        ("placeholder_token", "", "without spaces"),
        ("placeholder_token", "<s ks>", "without spaces"),
        ("placeholder_token", "sks", "no prompt contains by accident"),
        ("learning_rate", 2.0, "learning rate in"),
    ],
)
def test_config_errors_name_the_field_on_one_line(field, value, fix):
    with pytest.raises(ValueError) as err:
        parse_trial_config({"method": "textual_inversion", field: value})
    message = str(err.value)
    assert message.startswith(f"{field}={value!r} is not valid: ") and fix in message and "\n" not in message


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"initializer_token": "sksxqz"}, "initializer_token 'sksxqz' is 4 tokens for this tokenizer: set"),
        ({"placeholder_token": "<|endoftext|>"}, "already in the tokenizer's vocabulary: choose a new"),
    ],
)
def test_set_up_errors_fail_the_trial_with_a_fix(context, tmp_path, monkeypatch, setting, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrialError, match=message) as err:
        train_ti(dict(max_steps=1, resolution=64, **setting), context)
    assert "\n" not in str(err.value)
    runs = mlflow.MlflowClient(context.tracking_uri).search_runs([context.experiment_id], "tags.sdsweep.kind = 'trial'")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_registry_entry():
    method = METHODS["textual_inversion"]
    assert method.data_kinds == ("subject", "captioned") and method.writes == (EMBEDDINGS,)
    trial = parse_trial_config({"method": "textual_inversion"})
    assert trial.cached_text is False and trial.spec == ti.TextualInversionConfig()
    assert ti.run_name(ti.TextualInversionConfig(num_vectors=3)) == "ti-v3"
    with pytest.raises(ValueError, match="cache_text_embeddings=True is not valid"):
        parse_trial_config({"method": "textual_inversion", "cache_text_embeddings": True})
