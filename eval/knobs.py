"""Inference-time knobs: settings tried on every trained adapter after training, with the same prompts and seeds,
without retraining (LoRA scale of the UNet and of the text encoder, guidance scale, sampling steps).

A sweep names a small grid, e.g. ``knobs={"lora_scale": [0.5, 1.0], "guidance_scale": [3.0, 7.5]}``. Each
combination's scores are logged as ``<metric> <knob text>`` (``eval/glyph_purity scale:0.5 cfg:3``; MLflow keys
allow no ``=``/``@``/``,``) and the best over the grid as ``<metric> best knob``, so a sweep's ``metric`` can
be the plain score, one fixed combination, or the best one.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

from eval.evaluate import SamplingConfig

# knob -> its short name in metric keys; the scales act on LoRA layers, the rest on sampling
KNOBS = {"lora_scale": "scale", "text_encoder_scale": "te_scale", "guidance_scale": "cfg", "steps": "steps"}
LORA_KNOBS = ("lora_scale", "text_encoder_scale")
BEST = "best knob"


def knob_grid(knobs: dict[str, list]) -> list[dict[str, float]]:
    """Every combination of the knobs' values, in the order written. Raises ``ValueError`` naming a bad knob
    or value (unknown name, empty list, a value that is not a positive number, non-integer steps)."""
    for name, values in knobs.items():
        if name not in KNOBS:
            raise ValueError(f"knob {name!r} is unknown: choose from {sorted(KNOBS)}")
        if not isinstance(values, list | tuple) or not values:
            raise ValueError(f"knob {name}={values!r}: give a non-empty list of values, e.g. [0.5, 1.0]")
        for v in values:
            ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (v >= 0 if name != "steps" else (v >= 1 and float(v).is_integer()))
            if not ok:
                need = "a whole number >= 1" if name == "steps" else "a number >= 0"
                raise ValueError(f"knob {name}={values!r}: {v!r} is not {need}")
    names = list(knobs)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(knobs[n] for n in names))]


def knob_text(combo: dict[str, float]) -> str:
    """``scale:0.5 cfg:3``: a combination as it appears in metric keys, tables and grids."""
    return " ".join(f"{KNOBS[k]}:{v:g}" for k, v in combo.items())


def knob_key(metric: str, combo: dict[str, float]) -> str:
    return f"{metric} {knob_text(combo)}"


def best_key(metric: str) -> str:
    return f"{metric} {BEST}"


def base_metric(key: str) -> str:
    """``eval/clip_t`` of ``eval/clip_t scale:0.5 cfg:3`` or ``eval/clip_t best knob``."""
    return key.split(" ", 1)[0]


def is_knob_key(key: str) -> bool:
    return " " in key and key.split(" ", 1)[0].startswith("eval/")


def sampling_for(sampling: SamplingConfig, combo: dict[str, float]) -> SamplingConfig:
    """The eval sampling with the combination's guidance and steps (its LoRA scales apply to the model)."""
    changes = {}
    if "guidance_scale" in combo:
        changes["guidance_scale"] = float(combo["guidance_scale"])
    if "steps" in combo:
        changes["steps"] = int(combo["steps"])
    return replace(sampling, **changes)


def is_plain(combo: dict[str, float], sampling: SamplingConfig) -> bool:
    """Whether the combination samples exactly as the plain eval does (scales 1, the eval's guidance and
    steps): its samples and scores are the plain eval's, already made."""
    return (all(combo.get(k, 1.0) == 1.0 for k in LORA_KNOBS)
            and float(combo.get("guidance_scale", sampling.guidance_scale)) == float(sampling.guidance_scale)
            and int(combo.get("steps", sampling.steps)) == int(sampling.steps))  # fmt: skip


def effective(combo: dict[str, float], has_lora: bool) -> tuple:
    """The settings that change the samples of a model: scales count only where there are LoRA layers, so a
    full fine-tune or the baseline samples each guidance/steps setting once."""
    return tuple(sorted((k, v) for k, v in combo.items() if has_lora or k not in LORA_KNOBS))


def best_over(metrics: dict[str, float], combos: list[dict[str, float]], better: dict[str, str]) -> dict[str, float]:
    """``<metric> best knob`` for every metric measured at every combination (``better``: metric -> max/min)."""
    out = {}
    for metric, direction in better.items():
        values = [metrics.get(knob_key(metric, c)) for c in combos]
        values = [v for v in values if v is not None and math.isfinite(v)]
        if values:
            out[best_key(metric)] = max(values) if direction == "max" else min(values)
    return out
