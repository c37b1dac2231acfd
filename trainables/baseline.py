"""The no-fine-tune baseline: the base model, evaluated once per sweep with the trials' prompts and seeds."""

from __future__ import annotations

import time

import torch

from eval.evaluate import evaluate
from eval.knobs import sampling_for
from eval.scorers import load_scorers
from trainables.common.config import PRECISION_DTYPES
from trainables.common.loop import evaluate_knobs, time_split
from trainables.common.tracking import (
    TrialContext,
    child_run,
    eval_params,
    log_item_scores,
    log_knob_samples,
    log_metrics,
    log_params,
    log_samples,
    outbox_root,
)
from trainables.models import load_pipeline


def evaluate_baseline(ctx: TrialContext) -> dict[str, float]:
    """Sample and score the base model into a child run named ``baseline``; returns its ``eval/*``."""

    # a Ray task's working directory is not the user's: writes wait in the temp folder if MLflow is down
    started = time.perf_counter()
    with child_run(ctx, run_name="baseline", kind="baseline", folder=outbox_root()):
        log_params({"method": "none", "model": ctx.model, **eval_params(ctx)})
        device = "cuda" if torch.cuda.is_available() else "cpu"
        # the trials' precision, so an adapter that changes nothing scores exactly as the baseline
        dtype = PRECISION_DTYPES[ctx.mixed_precision]
        pipe = load_pipeline(ctx.model).to(device, dtype if device == "cuda" else torch.float32)
        pipe.set_progress_bar_config(disable=True)
        scorers = load_scorers(ctx.scorers, device)
        loaded = time.perf_counter()
        metrics, images, items = evaluate(pipe, ctx.eval, scorers, ctx.sampling)
        log_samples(list(ctx.eval.prompts), images, step=0, final=True)
        log_item_scores(list(ctx.eval.prompts), items, step=0)
        if ctx.knobs:  # the trials' guidance and steps settings (LoRA scales do not apply to the base model)
            knob_metrics, knob_images = evaluate_knobs(
                lambda combo: evaluate(pipe, ctx.eval, scorers, sampling_for(ctx.sampling, combo)),
                ctx.knobs,
                plain=(dict(metrics), images, items),
                sampling=ctx.sampling,
            )
            metrics.update(knob_metrics)
            for combo, samples in knob_images.items():
                log_knob_samples(list(ctx.eval.prompts), samples, combo)
        sampled = time.perf_counter()
        log_metrics(metrics, step=0)
        log_metrics(time_split({"setup": loaded - started, "eval": sampled - loaded,
                                "save": time.perf_counter() - sampled}), step=0)  # fmt: skip
        return metrics
