"""A full fine-tune of the UNet on a captioned dataset: the ``full`` method.

The kanji study's open question, "is rank 64 the same as a full fine-tune?", needs this beside the LoRA
trials. Set-up, then one training loop on the sweep's cached latents and caption embeddings (the text
encoder stays frozen). Writes the fine-tuned ``unet/`` folder in the diffusers layout.
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
from trainables.common.tracking import TrialContext, log_params
from trainables.export import card_writer, full_model_files
from trainables.models import load_for_training


@dataclass(frozen=True)
class FullConfig:
    """The ``full`` method's own settings (the shared ones are in ``TrainArgs``)."""

    unet_lr: float = 1e-5  # every weight moves: ~10x below LoRA's 1e-4, as full SD fine-tunes commonly use

    def __post_init__(self):
        check_lr("unet_lr", self.unet_lr)


def run_name(cfg: FullConfig) -> str:
    return f"full-lr{cfg.unet_lr:g}"


def save_unet(unet, folder: Path) -> list[Path]:
    unet.save_pretrained(Path(folder) / "unet")
    return [Path(folder) / "unet"]


def train_full(trial, ctx: TrialContext, out_dir: Path) -> None:
    """Fine-tune every UNet weight on the sweep's encoded data; results go to Tune and MLflow."""
    from diffusers import DDPMScheduler

    cfg, args = trial.spec, trial.train
    device, weight_dtype = device_and_dtype(args)
    data = ctx.prepared()
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)

    # load the base model; the UNet trains in float32, the VAE and text encoder stay frozen
    pipe = load_for_training(ctx.model, device, weight_dtype)
    unet = pipe.unet.to(torch.float32).requires_grad_(True)
    pipe.text_encoder.requires_grad_(False)
    params = list(unet.parameters())
    log_params({"trainable_params": sum(p.numel() for p in params)})
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    stepper = Stepper(make_optimizer([{"params": params, "lr": cfg.unet_lr}], args, device), params, args, device)
    scorers = load_scorers(ctx.scorers, device)
    autocast = args.mixed_precision != "no"

    def evaluate(combo=None):
        # the float32 UNet meets half-precision text embeddings on GPU: sample under the training autocast
        with torch.autocast(device, dtype=weight_dtype, enabled=autocast):
            return evaluate_pipeline(pipe, ctx.eval, scorers, ctx.sampling, combo)

    recorder = TrialRecorder(
        args,
        evaluate=evaluate,
        save=lambda folder: save_unet(unet, folder),
        eval_set=ctx.eval,
        artifact_path="model",
        log_files_every_eval=False,  # a full UNet is GBs at SD scale: MLflow gets the final one, Tune every eval
        export=lambda folder: full_model_files(pipe, folder),
        card=card_writer(trial, ctx.model, data.identifier, run_name=run_name(cfg)),
        knobs=ctx.knobs,
        sampling=ctx.sampling,
    )
    cursor = BatchCursor(len(data.train), generator)
    # a restored trial continues from its checkpoint: weights, optimizer, schedule, RNGs, batch order
    speed_settings(args, unet)  # TF32, channels-last, torch.compile: switches of TrainArgs
    first_step = recorder.track(trained_parameters(unet=unet), stepper, {"batches": generator}, {"instance": cursor})

    for step in range(first_step, args.max_steps + 1):
        train_mode(unet)
        # next batch of cached latents, noised at random timesteps
        index = cursor.next(args.batch_size)
        latents = data.train.sample_latents(index, generator).to(device, weight_dtype)
        noisy, timesteps, target = noisy_latents(latents, noise_scheduler, generator)
        # with N workers, each keeps its rows of the batch (the same batch and noise on every worker)
        noisy, timesteps, target, index = (shard(t) for t in (noisy, timesteps, target, index))

        # predict the noise from the cached caption embeddings
        with torch.autocast(device, dtype=weight_dtype, enabled=autocast):
            text = caption_embeddings(data.train, index, pipe.text_encoder, trial.cached_text, device, weight_dtype)
            prediction = unet(noisy, timesteps, text).sample
        loss, terms = diffusion_loss(prediction, target)
        check_finite(loss, step, f"lower unet_lr (now {cfg.unet_lr}) or use mixed_precision='bf16' or 'no'")

        # update every UNet weight, then log, evaluate and checkpoint on schedule
        stepper.step(loss)
        recorder.after_step(step, loss, terms, stepper.lr)

    recorder.finish(out_dir)
