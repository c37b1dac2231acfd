"""LoRA on the Stable Diffusion UNet, optionally on the text encoder too: the ``lora`` method.

Set-up (model, adapters, optimizer, scorers), then one training loop on the sweep's encoded data. Writes a
diffusers-format ``pytorch_lora_weights.safetensors`` (UNet and, with ``train_text_encoder``, text-encoder
layers, each with its rank and alpha in the metadata), loadable with ``pipe.load_lora_weights``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from eval.scorers import load_scorers
from trainables.common.checkpoint import trained_parameters
from trainables.common.config import check_lr
from trainables.common.distributed import shard
from trainables.common.loop import (
    BatchCursor,
    Stepper,
    TrialRecorder,
    caption_embeddings,
    check_finite,
    device_and_dtype,
    diffusion_loss,
    evaluate_pipeline,
    make_optimizer,
    noisy_latents,
    speed_settings,
    train_mode,
)
from trainables.common.lora import (
    ADAPTER_FILE,
    TEXT_ENCODER_LORA_TARGETS,
    add_lora,
    check_lora_fields,
    check_text_encoder_fields,
)
from trainables.common.tracking import TrialContext, log_params
from trainables.export import card_writer, kohya_info, lora_files
from trainables.models import load_for_training

# the style study's text-encoder rate: half the UNet's 1e-4
DEFAULT_TEXT_ENCODER_LR = 5e-5


@dataclass(frozen=True)
class LoRAConfig:
    """The ``lora`` method's own settings (the shared ones are in ``TrainArgs``)."""

    lora_rank: int = 4  # adapter capacity; the kanji study compared 1..16
    lora_alpha: float = 4.0  # scale is alpha / rank; independent of rank so it can be swept
    lora_target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")  # attention projections
    lora_init: str = "default"  # peft's init: A Kaiming-uniform, B zero, so step 0 equals the base model
    unet_lr: float = 1e-4  # the usual SD LoRA learning rate
    train_text_encoder: bool = False  # also a LoRA (same rank and alpha) on the text encoder's attention
    text_encoder_lr: float | None = None  # None: 5e-5 when the text encoder trains (the style study)

    def __post_init__(self):
        object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))
        check_lora_fields(self)
        check_lr("unet_lr", self.unet_lr)
        check_text_encoder_fields(self)

    def text_lr(self) -> float:
        return self.text_encoder_lr if self.text_encoder_lr is not None else DEFAULT_TEXT_ENCODER_LR

    def resolved(self) -> dict:
        """The values the unset options take in this trial (logged with the params)."""
        return {"text_encoder_lr": self.text_lr()} if self.train_text_encoder else {}


def run_name(cfg: LoRAConfig) -> str:
    return f"lora-r{cfg.lora_rank}-a{cfg.lora_alpha:g}" + ("-te" if cfg.train_text_encoder else "")


def train_lora(trial, ctx: TrialContext, out_dir: Path) -> None:
    """Train one LoRA on the sweep's encoded data and evaluate it; results go to Tune and MLflow."""
    from diffusers import DDPMScheduler

    cfg, args = trial.spec, trial.train
    device, weight_dtype = device_and_dtype(args)
    data = ctx.prepared()
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)

    # load the base model; only the LoRA weights train
    pipe = load_for_training(ctx.model, device, weight_dtype)
    unet, text_encoder = pipe.unet, pipe.text_encoder
    text_encoder.requires_grad_(False)
    params = add_lora(unet, cfg.lora_rank, cfg.lora_alpha, cfg.lora_target_modules, cfg.lora_init)
    groups = [{"params": params, "lr": cfg.unet_lr}]
    if cfg.train_text_encoder:
        text_params = add_lora(text_encoder, cfg.lora_rank, cfg.lora_alpha, TEXT_ENCODER_LORA_TARGETS, cfg.lora_init)
        groups.append({"params": text_params, "lr": cfg.text_lr()})
    all_params = [p for g in groups for p in g["params"]]
    log_params({"trainable_params": sum(p.numel() for p in all_params)})
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    stepper = Stepper(make_optimizer(groups, args, device), all_params, args, device)
    scorers = load_scorers(ctx.scorers, device)
    info = kohya_info(trial, ctx.model, data.identifier, run_name(cfg))
    recorder = TrialRecorder(
        args,
        evaluate=lambda combo=None: evaluate_pipeline(pipe, ctx.eval, scorers, ctx.sampling, combo),
        save=lambda folder: lora_files(unet, text_encoder if cfg.train_text_encoder else None, folder, **info),
        eval_set=ctx.eval,
        artifact_path="adapter",
        card=card_writer(trial, ctx.model, data.identifier, run_name=run_name(cfg)),
        knobs=ctx.knobs,
        sampling=ctx.sampling,
        lora_models=(unet, text_encoder),
    )
    cursor = BatchCursor(len(data.train), generator)
    # a restored trial continues from its checkpoint: weights, optimizer, schedule, RNGs, batch order
    trained = trained_parameters(unet=unet, text_encoder=text_encoder)
    speed_settings(args, unet)  # TF32, channels-last, torch.compile: switches of TrainArgs
    first_step = recorder.track(trained, stepper, {"batches": generator}, {"instance": cursor})
    autocast = args.mixed_precision != "no"

    for step in range(first_step, args.max_steps + 1):
        train_mode(unet)
        train_mode(text_encoder, cfg.train_text_encoder)
        # next batch of cached latents
        index = cursor.next(args.batch_size)
        latents = data.train.sample_latents(index, generator).to(device, weight_dtype)
        # add noise at random timesteps
        noisy, timesteps, target = noisy_latents(latents, noise_scheduler, generator)
        # with N workers, each keeps its rows of the batch (the same batch and noise on every worker)
        noisy, timesteps, target, index = (shard(t) for t in (noisy, timesteps, target, index))

        # encode the captions (cached unless the text encoder trains) and predict the noise
        with torch.autocast(device, dtype=weight_dtype, enabled=autocast):
            text = caption_embeddings(data.train, index, text_encoder, trial.cached_text, device, weight_dtype)
            prediction = unet(noisy, timesteps, text).sample
        loss, terms = diffusion_loss(prediction, target)
        check_finite(loss, step, f"lower unet_lr (now {cfg.unet_lr}) or use mixed_precision='bf16' or 'no'")

        # update the adapter, then log, evaluate and checkpoint on schedule
        stepper.step(loss)
        recorder.after_step(step, loss, terms, stepper.lr)

    recorder.finish(out_dir)


__all__ = ["ADAPTER_FILE", "LoRAConfig", "run_name", "train_lora"]
