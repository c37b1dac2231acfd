"""DreamBooth: the whole UNet (and optionally the text encoder) fine-tuned on a few photos of one subject,
with optional prior preservation: the ``dreambooth`` method.

Set-up, then one training loop. With ``with_prior_preservation`` each batch is the instance images followed
by as many class images the base model generated (once per sweep), and the loss is
``mse(instance) + prior_loss_weight * mse(class)``. Writes the fine-tuned ``unet/`` (and ``text_encoder/``)
folders in the diffusers layout, loadable with ``UNet2DConditionModel.from_pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from eval.scorers import load_scorers
from trainables.common.checkpoint import trained_parameters
from trainables.common.config import bad, check_lr
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
from trainables.common.prior import check_prior_fields, class_images, prior_loss_weight, resolved_prior
from trainables.common.tracking import TrialContext, log_params
from trainables.export import card_writer, full_model_files
from trainables.models import load_for_training


@dataclass(frozen=True)
class DreamBoothConfig:
    """The ``dreambooth`` method's own settings (the shared ones are in ``TrainArgs``)."""

    unet_lr: float = 5e-6  # full fine-tunes of a few photos overfit fast; diffusers' DreamBooth default
    train_text_encoder: bool = False  # the paper's setting trains it too: better identity, more memory
    text_encoder_lr: float | None = None  # None: the UNet's rate (diffusers trains both at one rate)
    with_prior_preservation: bool = False  # keep the class's look with the base model's own class images
    prior_loss_weight: float | None = None  # None: 1.0 (the paper's lambda) with prior preservation
    num_class_images: int | None = None  # None: the preset's (100 on sd15, as diffusers; 8 on tiny)
    class_prompt: str | None = None  # None: the data's class prompt ("a photo of dog")

    def __post_init__(self):
        check_lr("unet_lr", self.unet_lr)
        if not isinstance(self.train_text_encoder, bool):
            bad("train_text_encoder", self.train_text_encoder, "use True or False")
        if self.text_encoder_lr is not None:
            if not self.train_text_encoder:
                bad("text_encoder_lr", self.text_encoder_lr,
                    "the text encoder is frozen: set train_text_encoder=True, or drop text_encoder_lr")  # fmt: skip
            check_lr("text_encoder_lr", self.text_encoder_lr)
        check_prior_fields(self)

    def resolved(self) -> dict:
        """The values the unset options take in this trial (logged with the params)."""
        values = {"text_encoder_lr": self.text_encoder_lr or self.unet_lr} if self.train_text_encoder else {}
        return {**values, **resolved_prior(self)}


def run_name(cfg: DreamBoothConfig) -> str:
    return "dreambooth" + ("-prior" if cfg.with_prior_preservation else "") + ("-te" if cfg.train_text_encoder else "")


def save_models(unet, text_encoder, folder: Path) -> list[Path]:
    """The trained UNet (and text encoder) as diffusers model folders (safetensors)."""
    files = [Path(folder) / "unet"]
    unet.save_pretrained(files[0])
    if text_encoder is not None:
        files.append(Path(folder) / "text_encoder")
        text_encoder.save_pretrained(files[1])
    return files


def train_dreambooth(trial, ctx: TrialContext, out_dir: Path) -> None:
    """Fine-tune the UNet (and text encoder) on the subject photos; results go to Tune and MLflow."""
    from diffusers import DDPMScheduler

    cfg, args = trial.spec, trial.train
    device, weight_dtype = device_and_dtype(args)
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)

    # load the base model; the UNet (and text encoder) train in float32, the VAE stays frozen
    pipe = load_for_training(ctx.model, device, weight_dtype)
    unet, text_encoder = pipe.unet.to(torch.float32), pipe.text_encoder
    unet.requires_grad_(True)
    text_encoder.requires_grad_(cfg.train_text_encoder)
    groups = [{"params": list(unet.parameters()), "lr": cfg.unet_lr}]
    if cfg.train_text_encoder:
        text_encoder.to(torch.float32)
        groups.append({"params": list(text_encoder.parameters()), "lr": cfg.resolved()["text_encoder_lr"]})
    params = [p for g in groups for p in g["params"]]
    log_params({"trainable_params": sum(p.numel() for p in params)})
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if cfg.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    stepper = Stepper(make_optimizer(groups, args, device), params, args, device)
    scorers = load_scorers(ctx.scorers, device)
    autocast = args.mixed_precision != "no"

    def evaluate(combo=None):
        # the float32 UNet meets half-precision text embeddings on GPU: sample under the training autocast
        with torch.autocast(device, dtype=weight_dtype, enabled=autocast):
            return evaluate_pipeline(pipe, ctx.eval, scorers, ctx.sampling, combo)

    recorder = TrialRecorder(
        args,
        evaluate=evaluate,
        save=lambda folder: save_models(unet, text_encoder if cfg.train_text_encoder else None, folder),
        eval_set=ctx.eval,
        artifact_path="model",
        log_files_every_eval=False,  # a full UNet is GBs at SD scale: MLflow gets the final one, Tune every eval
        export=lambda folder: full_model_files(pipe, folder),
        card=card_writer(trial, ctx.model, ctx.prepared().identifier, run_name=run_name(cfg)),
        knobs=ctx.knobs,
        sampling=ctx.sampling,
    )
    subject_loop(trial, ctx, out_dir, unet, text_encoder, noise_scheduler, stepper, recorder, generator)


def subject_loop(trial, ctx: TrialContext, out_dir: Path, unet, text_encoder, noise_scheduler, stepper: Stepper,
                 recorder: TrialRecorder, generator: torch.Generator) -> None:  # fmt: skip
    """The DreamBooth objective, shared by ``dreambooth`` and ``dreambooth_lora``: instance latents and (with
    prior preservation) as many class latents in one batch, the weighted prior term in the loss; restored
    from the trial's checkpoint when there is one."""
    cfg, args, data = trial.spec, trial.train, ctx.prepared()
    device, weight_dtype = device_and_dtype(args)
    autocast = args.mixed_precision != "no"
    cursor = BatchCursor(len(data.train), generator)
    class_data, class_cursor = class_images(cfg, data, ctx, generator)
    # a restored trial continues from its checkpoint: weights, optimizer, schedule, RNGs, batch order
    trained = trained_parameters(unet=unet, text_encoder=text_encoder)
    speed_settings(args, unet)  # TF32, channels-last, torch.compile: switches of TrainArgs
    first_step = recorder.track(trained, stepper, {"batches": generator}, {"instance": cursor, "class": class_cursor})

    for step in range(first_step, args.max_steps + 1):
        train_mode(unet)
        train_mode(text_encoder, cfg.train_text_encoder)
        # next batch: the instance latents, then as many class latents (prior preservation)
        index = cursor.next(args.batch_size)
        latents = data.train.sample_latents(index, generator)
        if class_data is not None:
            class_index = class_cursor.next(args.batch_size)
            latents = torch.cat([latents, class_data.sample_latents(class_index, generator)])
        # add noise at random timesteps
        noisy, timesteps, target = noisy_latents(latents.to(device, weight_dtype), noise_scheduler, generator)
        # with N workers, each keeps its rows of the instance block and of the class block
        blocks = 2 if class_data is not None else 1
        noisy, timesteps, target = (shard(t, blocks) for t in (noisy, timesteps, target))
        index = shard(index)
        if class_data is not None:
            class_index = shard(class_index)

        # encode the prompts (cached unless the text encoder trains) and predict the noise
        with torch.autocast(device, dtype=weight_dtype, enabled=autocast):
            text = caption_embeddings(data.train, index, text_encoder, trial.cached_text, device, weight_dtype)
            if class_data is not None:
                class_text = caption_embeddings(class_data, class_index, text_encoder, trial.cached_text, device,
                                                weight_dtype)  # fmt: skip
                text = torch.cat([text, class_text.to(text.dtype)])
            prediction = unet(noisy, timesteps, text).sample

        # the instance loss, plus the weighted prior-preservation term
        loss, terms = diffusion_loss(prediction, target, class_data is not None, prior_loss_weight(cfg))
        check_finite(loss, step, f"lower unet_lr (now {cfg.unet_lr}) or use mixed_precision='bf16' or 'no'")

        # update the weights (or adapter), then log, evaluate and checkpoint on schedule
        stepper.step(loss)
        recorder.after_step(step, loss, terms, stepper.lr)

    recorder.finish(out_dir)
