"""LoRA fine-tuning of the Stable Diffusion UNet: one Ray Tune function trial.

Set-up (config, data, model, adapter, optimizer, scorers), then one training loop that reports
``train/loss`` every ``log_every`` steps and the ``eval/*`` scores every ``eval_every`` steps and at the
end, to Tune and to the trial's MLflow child run. The final adapter is a diffusers-format
``pytorch_lora_weights.safetensors`` in the trial directory, loadable with ``pipe.load_lora_weights``.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from eval.evaluate import evaluate
from eval.scorers import load_scorers
from trainables.encoding import EncodedDataset
from trainables.models import PRECISION_DTYPES, load_pipeline
from trainables.tracking import TrialContext, child_run, log_metrics, log_samples, trial_dir

# Names of UNet submodules a LoRA may wrap (SD 1.x / 2.x UNet2DConditionModel)
UNET_LORA_TARGETS = frozenset(
    {
        "to_q", "to_k", "to_v", "to_out.0",  # attention projections (self and cross)
        "proj_in", "proj_out",  # transformer block in/out projections
        "ff.net.0.proj", "ff.net.2",  # feed-forward
        "conv1", "conv2", "conv_shortcut", "time_emb_proj",  # resnet blocks
    }
)  # fmt: skip
# peft inits that leave the base weights untouched, so the saved adapter loads onto the stock model
# (PiSSA/OLoRA rewrite the base weights and would need a conversion step on save)
LORA_INITS = ("default", "gaussian")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
MIXED_PRECISION = ("no", "fp16", "bf16")
ADAPTER_FILE = "pytorch_lora_weights.safetensors"


class TrialError(RuntimeError):
    """A trial that cannot go on (a NaN loss, say); the message says what to change."""


@dataclass(frozen=True)
class LoRATrialConfig:
    """One LoRA trial's hyperparameters, validated once. Unknown keys are rejected by the constructor."""

    method: str = "lora"  # logged with the params so runs of different methods can be told apart
    lora_rank: int = 4  # adapter capacity; the kanji study compared 1..16
    lora_alpha: float = 4.0  # scale is alpha / rank; independent of rank so it can be swept
    lora_target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")  # attention projections
    lora_init: str = "default"  # peft's init: A Kaiming-uniform, B zero, so step 0 equals the base model
    unet_lr: float = 1e-4  # the usual SD LoRA learning rate
    batch_size: int = 4  # images per step
    max_steps: int = 1000  # optimizer steps
    lr_scheduler: str = "constant"  # diffusers' get_scheduler name
    lr_warmup_steps: int = 0  # warm-up steps for the schedulers that use them
    max_grad_norm: float = 1.0  # gradient clipping, as diffusers' training scripts
    seed: int = 0  # batch order, noise and timesteps
    resolution: int = 512  # training and sampling size in px (SD 1.5 native)
    eval_every: int = 250  # steps between evaluations (and one at the end)
    log_every: int = 10  # steps averaged into one train/loss report
    mixed_precision: str = "no"  # "fp16"/"bf16" on GPU; CPU runs need "no"

    def __post_init__(self):
        object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))
        if self.method != "lora":
            _bad("method", self.method, "this trainable only runs method='lora'")
        if not isinstance(self.lora_rank, int) or self.lora_rank < 1:
            _bad("lora_rank", self.lora_rank, "use a whole number >= 1 (e.g. 4)")
        if not self.lora_alpha > 0:
            _bad("lora_alpha", self.lora_alpha, "use a positive number (alpha = rank gives scale 1)")
        if not self.lora_target_modules:
            _bad(
                "lora_target_modules",
                self.lora_target_modules,
                "name at least one module, e.g. ('to_q', 'to_v')",
            )
        unknown = [m for m in self.lora_target_modules if m not in UNET_LORA_TARGETS]
        if unknown:
            _bad("lora_target_modules", unknown, f"choose from {sorted(UNET_LORA_TARGETS)}")
        if self.lora_init not in LORA_INITS:
            _bad("lora_init", self.lora_init, f"choose one of {LORA_INITS} (inits that keep the base weights)")
        if not (0 < self.unet_lr < 1):
            _bad("unet_lr", self.unet_lr, "use a learning rate in (0, 1), e.g. 1e-4")
        for name in ("batch_size", "max_steps", "resolution", "eval_every", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                _bad(name, value, "use a whole number >= 1")
        if self.resolution % 8:
            _bad("resolution", self.resolution, "use a multiple of 8 (the VAE downsamples by 8)")
        if self.lr_scheduler not in LR_SCHEDULERS:
            _bad("lr_scheduler", self.lr_scheduler, f"choose one of {LR_SCHEDULERS}")
        if not 0 <= self.lr_warmup_steps < self.max_steps:
            _bad("lr_warmup_steps", self.lr_warmup_steps, f"use 0 <= warm-up < max_steps ({self.max_steps})")
        if self.mixed_precision not in MIXED_PRECISION:
            _bad("mixed_precision", self.mixed_precision, f"choose one of {MIXED_PRECISION}")
        if not self.max_grad_norm > 0:
            _bad("max_grad_norm", self.max_grad_norm, "use a positive number, e.g. 1.0")

    @classmethod
    def from_dict(cls, config: dict) -> LoRATrialConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown LoRA trial setting(s) {unknown}: known settings are {sorted(known)}")
        return cls(**config)

    def params(self) -> dict:
        """Flat params for MLflow (tuples joined)."""
        return {k: ",".join(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _bad(field_name: str, value, fix: str):
    raise ValueError(f"{field_name}={value!r} is not valid: {fix}")


# ---------------------------------------------------------------- set-up helpers


def _device_and_dtype(cfg: LoRATrialConfig) -> tuple[str, torch.dtype]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and cfg.mixed_precision != "no":
        raise TrialError(
            f"mixed_precision={cfg.mixed_precision!r} needs a GPU and this trial has none: "
            "give trials a GPU (--gpus-per-trial 1) or set mixed_precision='no'"
        )
    return device, PRECISION_DTYPES[cfg.mixed_precision]


def _add_lora(unet, cfg: LoRATrialConfig) -> list[torch.nn.Parameter]:
    """Freeze the UNet, wrap the target modules with a LoRA adapter, return the trainable parameters."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            init_lora_weights=True if cfg.lora_init == "default" else cfg.lora_init,
            target_modules=list(cfg.lora_target_modules),
        )
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:  # LoRA weights train in float32 even when the frozen base is half precision
        p.data = p.data.float()
    return params


def save_adapter(unet, out_dir: Path) -> Path:
    """Write the UNet's LoRA as diffusers-format safetensors, with its peft config (rank, alpha, targets)
    as metadata so ``load_lora_weights`` restores the same scale."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(
        out_dir,
        unet_lora_layers={k: v.detach().float().cpu().contiguous() for k, v in layers.items()},
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        safe_serialization=True,
    )
    return Path(out_dir) / ADAPTER_FILE


def _get_data(ctx: TrialContext) -> EncodedDataset:
    data = ctx.data
    if data is not None and type(data).__name__ == "ObjectRef":
        import ray

        data = ray.get(data)
    if data is None or len(data) == 0:
        raise TrialError("the sweep passed no encoded training data to this trial")
    return data


def _report(metrics: dict, checkpoint_dir: Path | None = None) -> None:
    """To Tune inside a trial; outside one (a direct call in a test) Tune's report is a no-op.

    A scheduler (ASHA) stops a trial by exiting from ``tune.report``, and the process ends right after:
    whatever must survive a stop is written before this call.
    """
    import warnings

    from ray import tune

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "report is meant to only be called inside a Tuner"
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None)


# ---------------------------------------------------------------- the trial


def train_lora(config: dict, ctx: TrialContext) -> None:
    """Train one LoRA on the sweep's encoded data and evaluate it; results go to Tune and MLflow."""
    cfg = LoRATrialConfig.from_dict(config)
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "Checkpoint successfully created" per eval
    device, weight_dtype = _device_and_dtype(cfg)
    out_dir, trial_name, trial_id = trial_dir(default_name="local")
    name = f"lora-r{cfg.lora_rank}-a{cfg.lora_alpha:g}-{trial_name.rsplit('_', 1)[-1]}"

    with child_run(ctx, run_name=name, kind="trial", tags={"sdsweep.trial_id": trial_id}):
        import mlflow

        mlflow.log_params(cfg.params())
        data = _get_data(ctx)
        generator = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)

        # load the base model; only the UNet's LoRA trains
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_scheduler

        pipe = load_pipeline(ctx.model)
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device, weight_dtype)
        unet = pipe.unet
        params = _add_lora(unet, cfg)
        mlflow.log_param("trainable_params", sum(p.numel() for p in params))
        noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        optimizer = torch.optim.AdamW(params, lr=cfg.unet_lr)
        lr_schedule = get_scheduler(
            cfg.lr_scheduler,
            optimizer,
            num_warmup_steps=cfg.lr_warmup_steps,
            num_training_steps=cfg.max_steps,
        )
        scaler = torch.amp.GradScaler(device, enabled=cfg.mixed_precision == "fp16")
        scorers = load_scorers(ctx.scorers, device)
        prompts = list(ctx.eval_prompts)

        order = torch.randperm(len(data), generator=generator)
        cursor, losses, started = 0, [], time.perf_counter()
        metrics: dict = {}
        for step in range(1, cfg.max_steps + 1):
            unet.train()
            # next batch of cached latents and text embeddings (a new shuffle each epoch)
            if cursor + cfg.batch_size > len(order):
                order, cursor = torch.randperm(len(data), generator=generator), 0
            index = order[cursor : cursor + cfg.batch_size]
            cursor += cfg.batch_size
            latents = data.sample_latents(index, generator).to(device, weight_dtype)
            text = data.text_embeds[data.caption_index[index]].to(device, weight_dtype)

            # add noise at random timesteps
            noise = torch.randn(latents.shape, generator=generator).to(device, weight_dtype)
            timesteps = torch.randint(
                0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator
            ).to(device)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            if noise_scheduler.config.prediction_type == "v_prediction":
                target = noise_scheduler.get_velocity(latents, noise, timesteps)
            else:
                target = noise

            # predict the noise
            with torch.autocast(device, dtype=weight_dtype, enabled=cfg.mixed_precision != "no"):
                prediction = unet(noisy, timesteps, text).sample
            loss = torch.nn.functional.mse_loss(prediction.float(), target.float())
            if not torch.isfinite(loss):
                raise TrialError(
                    f"train/loss became {loss.item()} at step {step}: lower unet_lr (now {cfg.unet_lr}) "
                    "or use mixed_precision='bf16' or 'no'"
                )

            # update the adapter
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            lr_schedule.step()
            losses.append(loss.item())

            # report the loss, and evaluate on schedule
            is_eval = step % cfg.eval_every == 0 or step == cfg.max_steps
            if step % cfg.log_every and not is_eval:
                continue
            metrics = {
                "train/loss": sum(losses) / len(losses),
                "train/lr": lr_schedule.get_last_lr()[0],
                "train/time_s": time.perf_counter() - started,
                "step": step,
            }
            losses = []
            if not is_eval:
                log_metrics(metrics, step)
                _report(metrics)
                continue
            eval_started = time.perf_counter()
            unet.eval()
            # as the baseline: the pipeline in weight_dtype, no autocast (peft casts around the fp32 LoRA)
            scores, images = evaluate(pipe, prompts, scorers, ctx.sampling)
            metrics.update(scores)
            log_samples(prompts, images, step, final=True)  # samples/final: the latest eval's
            with tempfile.TemporaryDirectory() as checkpoint:  # Tune copies it into the run's storage
                adapter = save_adapter(unet, Path(checkpoint))
                metrics["adapter/size_mb"] = adapter.stat().st_size / 2**20
                # logged before the report: a trial that ASHA stops keeps its last eval's adapter
                mlflow.log_artifact(str(adapter), artifact_path="adapter")
                log_metrics(metrics, step)
                _report(metrics, Path(checkpoint))
            started += time.perf_counter() - eval_started  # train/time_s counts training steps only

        # the final adapter (already in MLflow from the last eval) in the trial directory
        save_adapter(unet, out_dir)
        if not all(math.isfinite(v) for k, v in metrics.items() if k.startswith("eval/")):
            raise TrialError(f"non-finite eval scores {metrics}: check the scorer models")
