"""DreamBooth with a LoRA instead of the whole UNet: the ``dreambooth_lora`` method.

The DreamBooth objective (a few photos of one subject, optional prior preservation with class images the
base model generated once per sweep) training a LoRA on the UNet and optionally on the text encoder.
Writes a diffusers-format ``pytorch_lora_weights.safetensors`` with rank and alpha in its metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from eval.scorers import load_scorers
from trainables.common.config import check_lr
from trainables.common.loop import (
    Stepper,
    TrialRecorder,
    device_and_dtype,
    evaluate_pipeline,
    make_optimizer,
)
from trainables.common.lora import (
    ADAPTER_FILE,
    TEXT_ENCODER_LORA_TARGETS,
    add_lora,
    check_lora_fields,
    check_text_encoder_fields,
)
from trainables.common.prior import check_prior_fields, resolved_prior
from trainables.common.tracking import TrialContext, log_params
from trainables.export import card_writer, kohya_info, lora_files
from trainables.methods.dreambooth import subject_loop
from trainables.models import load_for_training

DEFAULT_TEXT_ENCODER_LR = 5e-5  # half the UNet's rate, as DreamBooth-LoRA users commonly tune it


@dataclass(frozen=True)
class DreamBoothLoRAConfig:
    """The ``dreambooth_lora`` method's own settings (the shared ones are in ``TrainArgs``)."""

    lora_rank: int = 4  # diffusers' DreamBooth-LoRA default
    lora_alpha: float = 4.0  # scale alpha / rank = 1
    lora_target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")  # attention projections
    lora_init: str = "default"  # B zero: step 0 equals the base model
    unet_lr: float = 1e-4  # LoRA tolerates ~20x DreamBooth's full-model rate
    train_text_encoder: bool = False  # a LoRA on the text encoder's attention too
    text_encoder_lr: float | None = None  # None: 5e-5 when the text encoder trains
    with_prior_preservation: bool = False  # keep the class's look with the base model's own class images
    prior_loss_weight: float | None = None  # None: 1.0 (the paper's lambda) with prior preservation
    num_class_images: int | None = None  # None: the preset's (100 on sd15, as diffusers; 8 on tiny)
    class_prompt: str | None = None  # None: the data's class prompt ("a photo of dog")

    def __post_init__(self):
        object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))
        check_lora_fields(self)
        check_lr("unet_lr", self.unet_lr)
        check_text_encoder_fields(self)
        check_prior_fields(self)

    def resolved(self) -> dict:
        """The values the unset options take in this trial (logged with the params)."""
        values = {"text_encoder_lr": self.text_encoder_lr or DEFAULT_TEXT_ENCODER_LR} if self.train_text_encoder else {}
        return {**values, **resolved_prior(self)}


def run_name(cfg: DreamBoothLoRAConfig) -> str:
    prior = "-prior" if cfg.with_prior_preservation else ""
    return f"dreambooth-lora-r{cfg.lora_rank}-a{cfg.lora_alpha:g}{prior}" + ("-te" if cfg.train_text_encoder else "")


def train_dreambooth_lora(trial, ctx: TrialContext, out_dir: Path) -> None:
    """Train a LoRA with the DreamBooth objective on the subject photos; results go to Tune and MLflow."""
    from diffusers import DDPMScheduler

    cfg, args = trial.spec, trial.train
    device, weight_dtype = device_and_dtype(args)
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)

    # load the base model; only the LoRA weights train
    pipe = load_for_training(ctx.model, device, weight_dtype)
    unet, text_encoder = pipe.unet, pipe.text_encoder
    text_encoder.requires_grad_(False)
    groups = [{"params": add_lora(unet, cfg.lora_rank, cfg.lora_alpha, cfg.lora_target_modules, cfg.lora_init),
               "lr": cfg.unet_lr}]  # fmt: skip
    if cfg.train_text_encoder:
        text_params = add_lora(text_encoder, cfg.lora_rank, cfg.lora_alpha, TEXT_ENCODER_LORA_TARGETS, cfg.lora_init)
        groups.append({"params": text_params, "lr": cfg.resolved()["text_encoder_lr"]})
    params = [p for g in groups for p in g["params"]]
    log_params({"trainable_params": sum(p.numel() for p in params)})
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    stepper = Stepper(make_optimizer(groups, args, device), params, args, device)
    scorers = load_scorers(ctx.scorers, device)
    trigger = ctx.prepared().identifier
    info = kohya_info(trial, ctx.model, trigger, run_name(cfg))
    recorder = TrialRecorder(
        args,
        evaluate=lambda combo=None: evaluate_pipeline(pipe, ctx.eval, scorers, ctx.sampling, combo),
        save=lambda folder: lora_files(unet, text_encoder if cfg.train_text_encoder else None, folder, **info),
        eval_set=ctx.eval,
        artifact_path="adapter",
        card=card_writer(trial, ctx.model, trigger, run_name=run_name(cfg)),
        knobs=ctx.knobs,
        sampling=ctx.sampling,
        lora_models=(unet, text_encoder),
    )
    subject_loop(trial, ctx, out_dir, unet, text_encoder, noise_scheduler, stepper, recorder, generator)


__all__ = ["ADAPTER_FILE", "DreamBoothLoRAConfig", "run_name", "train_dreambooth_lora"]
