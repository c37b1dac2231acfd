"""Inference knobs: the grid and its keys, and evaluate_knobs on a real tiny pipeline: LoRA scale 0 samples the
base model exactly, scale 1 the trained one, guidance changes the samples, and nothing is sampled twice."""

import math

import pytest
import torch

from eval.knobs import best_key, best_over, effective, knob_grid, knob_key, knob_text
from trainables.common.loop import evaluate_knobs, evaluate_pipeline
from trainables.common.lora import add_lora
from trainables.models import load_pipeline


@pytest.fixture
def context(kanji_dir):
    from types import SimpleNamespace

    from eval.evaluate import EvalSet, SamplingConfig
    from eval.metrics import metrics_for
    from trainables.data.kanji import kanji_eval_prompts, load_records

    prompts = kanji_eval_prompts(kanji_dir, load_records(kanji_dir), n_heldout=2)
    return SimpleNamespace(eval=EvalSet(tuple(prompts), (), metrics_for("kanji")),
                           sampling=SamplingConfig(steps=3, resolution=64))  # fmt: skip


def test_grid_keys_and_refusals():
    combos = knob_grid({"lora_scale": [0.5, 1.0], "guidance_scale": [3, 7.5]})
    assert combos == [{"lora_scale": 0.5, "guidance_scale": 3}, {"lora_scale": 0.5, "guidance_scale": 7.5},
                      {"lora_scale": 1.0, "guidance_scale": 3}, {"lora_scale": 1.0, "guidance_scale": 7.5}]  # fmt: skip
    assert knob_key("eval/clip_t", combos[1]) == "eval/clip_t scale:0.5 cfg:7.5"
    assert effective(combos[1], has_lora=False) == (("guidance_scale", 7.5),)  # scales do not touch a base model
    metrics = {knob_key("eval/a", c): v for c, v in zip(combos, (0.1, 0.4, 0.3, 0.2), strict=True)}
    assert best_over(metrics, combos, {"eval/a": "max"}) == {best_key("eval/a"): 0.4}
    assert best_over(metrics, combos, {"eval/a": "min"}) == {"eval/a best knob": 0.1}
    for bad, says in (({"cfg": [1]}, "unknown"), ({"lora_scale": []}, "non-empty"), ({"steps": [2.5]}, "whole"),
                      ({"guidance_scale": [float("nan")]}, "number")):  # fmt: skip
        with pytest.raises(ValueError, match=says):
            knob_grid(bad)
    assert knob_grid({}) == [{}] and knob_text({}) == ""


class _Eval:
    """A real evaluation (sampling + the tiny scorers) that counts its calls."""

    def __init__(self, pipe, eval_set, scorers, sampling):
        self.args, self.calls = (pipe, eval_set, scorers, sampling), []

    def __call__(self, combo=None):
        self.calls.append(combo)
        return evaluate_pipeline(*self.args, combo)


def test_evaluate_knobs_scale_zero_is_the_base_model(tiny_sd, tiny_scorers, context):
    pipe = load_pipeline(tiny_sd)
    base_scores, base_images, _ = evaluate_pipeline(pipe, context.eval, tiny_scorers, context.sampling)
    add_lora(pipe.unet, 4, 4.0, ("to_q", "to_k", "to_v", "to_out.0"))
    gen = torch.Generator().manual_seed(0)
    for name, p in pipe.unet.named_parameters():
        if "lora_B" in name:
            p.data = 0.5 * torch.randn(p.shape, generator=gen)
    trained_scores, trained_images, _ = evaluate_pipeline(pipe, context.eval, tiny_scorers, context.sampling)
    assert any((torch.tensor(list(a.getdata())) != torch.tensor(list(b.getdata()))).any()
               for a, b in zip(base_images, trained_images, strict=True))  # fmt: skip  # the LoRA acts

    run = _Eval(pipe, context.eval, tiny_scorers, context.sampling)
    cfg = context.sampling.guidance_scale
    metrics, images = evaluate_knobs(run, {"lora_scale": [0.0, 1.0], "guidance_scale": [cfg, 1.5]}, pipe.unet)
    assert len(run.calls) == 4 and set(images) == {f"scale:{s:g} cfg:{g:g}" for s in (0, 1) for g in (cfg, 1.5)}
    for key, value in base_scores.items():  # scale 0 at the eval's own guidance: exactly the base model
        assert metrics[knob_key(key, {"lora_scale": 0.0, "guidance_scale": cfg})] == value
        assert metrics[knob_key(key, {"lora_scale": 1.0, "guidance_scale": cfg})] == trained_scores[key]
        assert math.isfinite(metrics[best_key(key)])
    assert list(images[f"scale:0 cfg:{cfg:g}"][0].getdata()) == list(base_images[0].getdata())
    assert list(images["scale:0 cfg:1.5"][0].getdata()) != list(base_images[0].getdata())  # guidance acts
    # given the plain eval's result, the setting that samples as it does (scale 1, the eval's guidance) is not
    # sampled again, and its scores are that result's
    again = _Eval(pipe, context.eval, tiny_scorers, context.sampling)
    reused, _ = evaluate_knobs(again, {"lora_scale": [0.0, 1.0], "guidance_scale": [cfg, 1.5]}, pipe.unet,
                               plain=(trained_scores, trained_images, None), sampling=context.sampling)  # fmt: skip
    assert len(again.calls) == 3 and reused == metrics
    # the trained scaling is back after the grid
    assert all(m.scaling["default"] == 1.0 for m in pipe.unet.modules() if getattr(m, "scaling", None))

    # a model without LoRA layers: the scale knob cannot change its samples, each guidance is sampled once
    plain = _Eval(load_pipeline(tiny_sd), context.eval, tiny_scorers, context.sampling)
    metrics, _ = evaluate_knobs(plain, {"lora_scale": [0.5, 1.0], "guidance_scale": [cfg]})
    assert len(plain.calls) == 1
    assert metrics[f"eval/clip_t scale:0.5 cfg:{cfg:g}"] == metrics[f"eval/clip_t scale:1 cfg:{cfg:g}"]


def test_dpm_solver_sampling_is_a_setting_and_leaves_the_pipeline_as_it_was(tiny_sd, tiny_scorers, context):
    from dataclasses import replace

    from eval.evaluate import eval_scheduler

    pipe = load_pipeline(tiny_sd)
    own = pipe.scheduler
    _, default_images, _ = evaluate_pipeline(pipe, context.eval, tiny_scorers, context.sampling)
    dpm = replace(context.sampling, scheduler="dpm++")
    scores, dpm_images, _ = evaluate_pipeline(pipe, context.eval, tiny_scorers, dpm)
    assert pipe.scheduler is own  # restored
    assert all(math.isfinite(v) for v in scores.values())
    assert list(dpm_images[0].getdata()) != list(default_images[0].getdata())  # another sampler, same seeds
    _, again, _ = evaluate_pipeline(pipe, context.eval, tiny_scorers, dpm)
    assert list(again[0].getdata()) == list(dpm_images[0].getdata())  # and deterministic
    with pytest.raises(ValueError, match="unknown"), eval_scheduler(pipe, "euler"):
        pass
