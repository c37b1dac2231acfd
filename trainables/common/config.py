"""Settings every method shares (:class:`TrainArgs`), and the checks method configs build on.

A trial's flat Tune config splits into ``method``, the shared :class:`TrainArgs` fields and the fields of
the method's own config class (see ``trainables/registry.py``). Each class validates itself once in
``__post_init__`` and rejects a bad value with ``<field>=<value> is not valid: <fix>``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
MIXED_PRECISION = ("no", "fp16", "bf16")
# torch AdamW, its fused CUDA kernel, or bitsandbytes' 8-bit AdamW (GPU memory for full fine-tunes)
OPTIMIZERS = ("adamw", "adamw_fused", "adamw_8bit")
# mixed_precision setting -> the dtype the frozen model runs in (trials and the baseline alike)
PRECISION_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TrialError(RuntimeError):
    """A trial that cannot go on (a NaN loss, say); the message says what to change."""


def bad(field_name: str, value: Any, fix: str):
    """Raise the one-line error every config uses: the field, the value, the fix."""
    raise ValueError(f"{field_name}={value!r} is not valid: {fix}")


def check_positive_ints(config: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            bad(name, value, "use a whole number >= 1")


def check_lr(name: str, value: Any) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < 1:
        bad(name, value, "use a learning rate in (0, 1), e.g. 1e-4")


def check_number(name: str, value: Any, fix: str) -> None:
    """Reject strings and other non-numbers before a comparison would raise a confusing TypeError."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        bad(name, value, fix)


def field_names(cls) -> set[str]:
    return {f.name for f in fields(cls)}


def flat_params(config: Any) -> dict[str, Any]:
    """A config's fields as flat MLflow params (tuples joined with commas)."""
    return {k: ",".join(map(str, v)) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


@dataclass(frozen=True)
class TrainArgs:
    """What every method's training loop shares: batches, steps, schedule, cadence, precision."""

    batch_size: int = 4  # images per optimizer step (instance images only; class images come on top)
    max_steps: int = 1000  # optimizer steps
    lr_scheduler: str = "constant"  # diffusers' get_scheduler name
    lr_warmup_steps: int = 0  # warm-up steps for the schedulers that use them
    max_grad_norm: float = 1.0  # gradient clipping, as diffusers' training scripts
    seed: int = 0  # batch order, noise and timesteps
    resolution: int = 512  # training and sampling size in px (SD 1.5 native)
    eval_every: int = 250  # steps between evaluations (and one at the end)
    eval_at_start: bool = True  # also sample the untrained model at step 0 (MLflow's image slider starts there)
    log_every: int = 10  # steps averaged into one train/loss report
    checkpoint_every: int | None = None  # steps between full-state checkpoints; None: at every eval only
    mixed_precision: str = "no"  # "fp16"/"bf16" on GPU; CPU runs need "no"
    gradient_checkpointing: bool = False  # recompute activations in backward: less GPU memory, ~20% slower
    optimizer: str = "adamw"  # "adamw_fused" (CUDA) or "adamw_8bit" (bitsandbytes) save time or memory on GPU
    # GPU speed switches (trainables.common.loop.speed_settings); attention already runs through PyTorch's SDPA
    allow_tf32: bool = True  # TF32 matmuls and convolutions on Ampere+ GPUs (float32 work only)
    channels_last: bool = False  # the UNet in channels-last memory format (faster convolutions on tensor cores)
    compile_unet: bool = False  # torch.compile the UNet (after its adapters are added): slow first steps, then faster

    def __post_init__(self):
        check_positive_ints(self, ("batch_size", "max_steps", "resolution", "eval_every", "log_every"))
        if self.checkpoint_every is not None:
            check_positive_ints(self, ("checkpoint_every",))
        if self.resolution % 8:
            bad("resolution", self.resolution, "use a multiple of 8 (the VAE downsamples by 8)")
        if self.lr_scheduler not in LR_SCHEDULERS:
            bad("lr_scheduler", self.lr_scheduler, f"choose one of {LR_SCHEDULERS}")
        check_number("lr_warmup_steps", self.lr_warmup_steps, "use a whole number >= 0")
        if not 0 <= self.lr_warmup_steps < self.max_steps:
            bad("lr_warmup_steps", self.lr_warmup_steps, f"use 0 <= warm-up < max_steps ({self.max_steps})")
        if self.mixed_precision not in MIXED_PRECISION:
            bad("mixed_precision", self.mixed_precision, f"choose one of {MIXED_PRECISION}")
        check_number("max_grad_norm", self.max_grad_norm, "use a positive number, e.g. 1.0")
        if not self.max_grad_norm > 0:
            bad("max_grad_norm", self.max_grad_norm, "use a positive number, e.g. 1.0")
        check_number("seed", self.seed, "use a whole number")
        if not isinstance(self.gradient_checkpointing, bool):
            bad("gradient_checkpointing", self.gradient_checkpointing, "use True or False")
        for name in ("allow_tf32", "channels_last", "compile_unet"):
            if not isinstance(getattr(self, name), bool):
                bad(name, getattr(self, name), "use True or False")
        if self.optimizer not in OPTIMIZERS:
            bad("optimizer", self.optimizer, f"choose one of {OPTIMIZERS}")
