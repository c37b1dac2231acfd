"""What every recipe's training loop does the same way, as functions and two small objects it calls.

- :class:`BatchCursor`: shuffled batches of indices, a new order each epoch.
- :func:`noisy_latents` and :func:`diffusion_loss`: the noise, timesteps and target of one step, and the
  loss with DreamBooth's prior-preservation term.
- :class:`Stepper`: optimizer, fp16 loss scaling, gradient clipping and learning-rate schedule.
- :class:`TrialRecorder`: the log/eval/checkpoint cadence, with files written before Tune hears of them.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from trainables.common.checkpoint import Trained
from trainables.common.config import PRECISION_DTYPES, TrainArgs, TrialError
from trainables.common.distributed import (
    any_worker,
    average_gradients,
    broadcast_parameters,
    is_main,
    mean_over_workers,
)
from trainables.common.session import report
from trainables.common.tracking import (
    current_run_id,
    drain_writes,
    log_files,
    log_item_scores,
    log_knob_samples,
    log_metrics,
    log_samples,
    set_tags,
)

_TRIAL_START: list[float] = []  # when this process's current trial began (run_trial), for time/setup_s


def mark_trial_start() -> None:
    """The trial's clock starts: its set-up time runs from here to its first training step."""
    _TRIAL_START[:] = [time.perf_counter()]


def device_and_dtype(args: TrainArgs) -> tuple[str, torch.dtype]:
    """The trial's device and the dtype its frozen weights run in; half precision needs a GPU."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and args.mixed_precision != "no":
        raise TrialError(
            f"mixed_precision={args.mixed_precision!r} needs a GPU and this trial has none: "
            "give trials a GPU (--gpus-per-trial 1) or set mixed_precision='no'"
        )
    return device, PRECISION_DTYPES[args.mixed_precision]


class BatchCursor:
    """Batches of indices into ``n`` items: each epoch a new permutation from ``generator``. A batch larger
    than the set spans epochs (5 subject photos at batch 8 is valid)."""

    def __init__(self, n: int, generator: torch.Generator):
        if n < 1:
            raise TrialError("the training set is empty: check the sweep's data")
        self.n, self.generator = n, generator
        self.order = torch.randperm(n, generator=generator)
        self.position = 0

    def next(self, batch_size: int) -> torch.Tensor:
        parts, wanted = [], batch_size
        while wanted:
            if self.position == self.n:
                self.order, self.position = torch.randperm(self.n, generator=self.generator), 0
            take = min(wanted, self.n - self.position)
            parts.append(self.order[self.position : self.position + take])
            self.position += take
            wanted -= take
        return torch.cat(parts)

    def state_dict(self) -> dict:
        return {"order": self.order.clone(), "position": self.position, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n:
            raise ValueError(f"the checkpoint's data has {state['n']} items and this trial's {self.n}")
        self.order, self.position = state["order"].clone(), state["position"]


def noisy_latents(latents: torch.Tensor, noise_scheduler, generator: torch.Generator):
    """Noise drawn on the CPU from ``generator`` (same on any device), random timesteps, and the target the
    model learns: the noise, or the velocity for v-prediction models. Returns ``(noisy, timesteps, target)``."""
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    timesteps = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator
    ).to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if noise_scheduler.config.prediction_type == "v_prediction":
        return noisy, timesteps, noise_scheduler.get_velocity(latents, noise, timesteps)
    return noisy, timesteps, noise


def diffusion_loss(
    prediction: torch.Tensor, target: torch.Tensor, with_prior: bool = False, prior_loss_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean squared error of the prediction, in float32.

    With ``with_prior`` the batch is instance rows followed by as many class rows (DreamBooth's prior
    preservation): ``loss = mse(instance) + prior_loss_weight * mse(class)``, and both terms are returned
    as ``train/instance_loss`` and ``train/prior_loss``.
    """
    prediction, target = prediction.float(), target.float()
    if not with_prior:
        return torch.nn.functional.mse_loss(prediction, target), {}
    pred_instance, pred_prior = prediction.chunk(2, dim=0)
    target_instance, target_prior = target.chunk(2, dim=0)
    instance = torch.nn.functional.mse_loss(pred_instance, target_instance)
    prior = torch.nn.functional.mse_loss(pred_prior, target_prior)
    return instance + prior_loss_weight * prior, {"train/instance_loss": instance, "train/prior_loss": prior}


def make_optimizer(param_groups: list[dict], args: TrainArgs, device: str) -> torch.optim.Optimizer:
    """AdamW over ``param_groups`` (each with its own ``lr``), in the variant ``args.optimizer`` names."""
    if args.optimizer == "adamw_8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise TrialError(
                "optimizer='adamw_8bit' needs bitsandbytes: `pip install bitsandbytes` on the GPU nodes, "
                "or use optimizer='adamw'"
            ) from err
        return bnb.optim.AdamW8bit(param_groups)
    if args.optimizer == "adamw_fused" and device != "cuda":
        raise TrialError("optimizer='adamw_fused' needs a CUDA GPU and this trial has none: use optimizer='adamw'")
    return torch.optim.AdamW(param_groups, fused=True if args.optimizer == "adamw_fused" else None)


class Stepper:
    """One optimizer step per batch: scale (fp16), backward, average over workers, unscale, clip, step,
    schedule."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], args: TrainArgs,
                 device: str):  # fmt: skip
        from diffusers.optimization import get_scheduler

        self.optimizer, self.params, self.max_grad_norm = optimizer, params, args.max_grad_norm
        self.scaler = torch.amp.GradScaler(device, enabled=args.mixed_precision == "fp16")
        self.schedule = get_scheduler(
            args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps, num_training_steps=args.max_steps
        )

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)  # frees gradient memory between steps
        self.scaler.scale(loss).backward()
        average_gradients(self.params)  # N Ray Train workers: every worker steps with the whole batch's gradient
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()

    @property
    def lr(self) -> float:
        return self.schedule.get_last_lr()[0]


def check_finite(loss: torch.Tensor, step: int, fix: str) -> None:
    """Fail the trial (not the sweep) on a NaN or infinite loss, saying what to change; with several workers,
    a bad loss on any worker's rows stops them all at the same step."""
    if any_worker(not bool(torch.isfinite(loss))):
        raise TrialError(f"train/loss became {loss.item()} at step {step}: {fix}")


class TrialRecorder:
    """The cadence every recipe shares: ``train/*`` every ``log_every`` steps; ``eval/*``, samples and a
    checkpoint every ``eval_every`` steps and at the last step; a checkpoint also every ``checkpoint_every``.

    At a checkpoint the trained files and the full training state are written first (to a checkpoint folder
    and, for small files, to the MLflow run), then metrics go to MLflow, then to Tune: a scheduler may end
    the process inside Tune's report, and a stopped trial keeps what it had.

    :meth:`track` hands the recorder what a checkpoint holds and, when the trial was restored (a restarted
    worker, a resumed sweep), puts the saved state back and returns the step to continue from. Steps the
    MLflow run already holds (logged before the restart) are not logged again.
    """

    def __init__(
        self,
        args: TrainArgs,
        evaluate: Callable[[], tuple[dict[str, float], list]],
        save: Callable[[Path], list[Path]],
        eval_set,
        artifact_path: str,
        log_files_every_eval: bool = True,
        export: Callable[[Path], list[Path]] | None = None,
        card: Callable[[dict[str, float], list[str]], str] | None = None,
        knobs: dict[str, list] | None = None,
        lora_models: tuple = (),
        sampling=None,
    ):
        self.args, self.evaluate, self.save, self.eval_set = args, evaluate, save, eval_set
        self.artifact_path = artifact_path  # "adapter", "embeddings" or "model" in the MLflow run
        self.log_files_every_eval = log_files_every_eval  # False for full models: too large to log at every eval
        # full models: the files people load (pipeline folder, single-file checkpoint), written once at the end
        # instead of logging the checkpoint's own files; ``card`` writes README.md from the final metrics
        self.export, self.card = export, card
        # inference settings tried on the final model (eval.knobs); the scales act on ``lora_models``' LoRA layers
        self.knobs, self.lora_models = knobs or {}, lora_models
        self.sampling = sampling  # the plain eval's sampling: the knob setting equal to it reuses its samples
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.started = self.created = time.perf_counter()
        # where the trial's time goes (time/*_s in MLflow, the report's time table): set-up (process start
        # to the first step: models, data, the step-0 eval excluded), sampling and scoring, checkpoints and
        # files; training time is train/time_s. Summed over a restarted trial's attempts.
        self.times = {"setup": 0.0, "eval": 0.0, "save": 0.0}
        self.train_s = 0.0
        self.metrics: dict[str, float] = {}
        self.tracked: dict[str, Any] | None = None
        self.logged_through = 0  # the last step the MLflow run already holds
        self._start_eval_s = 0.0

    def track(self, trained: Trained, stepper: Stepper, generators: dict[str, torch.Generator],
              cursors: dict[str, Any]) -> int:  # fmt: skip
        """Register the training state; restore it from the trial's checkpoint if there is one. Returns the
        first step to run (1 for a fresh trial)."""
        from trainables.common.checkpoint import load_state
        from trainables.common.session import resume_checkpoint
        from trainables.common.tracking import last_logged_step

        self.tracked = dict(trained=trained, stepper=stepper, generators=generators,
                            cursors={k: c for k, c in cursors.items() if c is not None})  # fmt: skip
        self.logged_through = last_logged_step()
        with resume_checkpoint() as folder:
            if folder is None:
                _same_on_every_worker(trained)
                self._eval_at_start()
                self._setup_done()
                self.started = time.perf_counter()
                return 1
            step, extra = load_state(folder, **self.tracked)
        set_tags({"sdsweep.restored_from_step": str(step)})  # the run says where this attempt took over
        self.sums, self.count = extra["window"], extra["count"]
        self.metrics = extra["metrics"]
        self.times = dict(extra.get("times", self.times))
        self._setup_done()
        self.started = time.perf_counter() - extra["train_time_s"]
        return step + 1

    def _setup_done(self) -> None:
        """Add this attempt's set-up (from the trial's start, or this recorder's creation for a direct call)
        to ``times``; the step-0 eval is eval time, not set-up."""
        start = _TRIAL_START[0] if _TRIAL_START else self.created
        self.times["setup"] += max(0.0, time.perf_counter() - max(start, 0.0) - self._start_eval_s)

    def after_step(self, step: int, loss: torch.Tensor, terms: dict[str, torch.Tensor], lr: float) -> None:
        for key, value in {"train/loss": loss, **terms}.items():  # no .item() here: no sync per step
            self.sums[key] = self.sums.get(key, 0) + value.detach()
        self.count += 1
        args = self.args
        is_eval = step % args.eval_every == 0 or step == args.max_steps
        is_checkpoint = is_eval or bool(args.checkpoint_every and step % args.checkpoint_every == 0)
        is_log = is_eval or step % args.log_every == 0
        if not (is_log or is_checkpoint):
            return
        metrics: dict[str, float] = {"step": step}
        if is_log:
            sums = mean_over_workers(self.sums)  # the whole batch's loss, not one worker's rows
            metrics.update({key: float(total) / self.count for key, total in sums.items()})
            metrics.update({"train/lr": lr, "train/time_s": time.perf_counter() - self.started})
            self.train_s = metrics["train/time_s"]
            self.sums, self.count = {}, 0
        if not is_checkpoint:
            self._log(metrics, step)
            report(metrics)
            return
        if not is_main():  # the other workers report too (Ray Train waits for every rank); rank 0 writes
            report(metrics)
            return
        eval_started = time.perf_counter()
        sampled = 0.0  # seconds of this block spent sampling and scoring; the rest is saving and logging
        if is_eval:
            scores, images, items = self.evaluate()
            metrics.update(scores)
            if step > self.logged_through:  # samples/final and scores/final.json: the latest eval's
                log_samples(list(self.eval_set.prompts), images, step, final=True)
                log_item_scores(list(self.eval_set.prompts), items, step)
            if step == args.max_steps and self.knobs:  # the trained model at each inference setting
                knob_metrics, knob_images = evaluate_knobs(
                    self.evaluate, self.knobs, *self.lora_models, plain=(scores, images, items), sampling=self.sampling
                )
                metrics.update(knob_metrics)
                if step > self.logged_through:
                    for combo, samples in knob_images.items():
                        log_knob_samples(list(self.eval_set.prompts), samples, combo)
            sampled = time.perf_counter() - eval_started
            self.times["eval"] += sampled
        with tempfile.TemporaryDirectory() as checkpoint:  # Tune copies it into the run's storage
            files = self.save(Path(checkpoint))
            if is_eval:
                metrics[f"{self.artifact_path}/size_mb"] = sum(_size(f) for f in files) / 2**20
                final = step == args.max_steps and self.export is None
                if (self.log_files_every_eval or final) and step > self.logged_through:
                    log_files(files, self.artifact_path)
                self.metrics = metrics
            spent = time.perf_counter() - eval_started
            self.times["save"] += spent - sampled
            self.started += spent  # train/time_s counts training steps only
            self._save_state(Path(checkpoint), step)
            self._log(metrics, step)
            drain_writes()  # a scheduler may stop the trial inside report: its records arrive first
            report(metrics, Path(checkpoint))

    def _eval_at_start(self) -> None:
        """The untrained model's samples and scores at step 0, once per MLflow run: the image slider opens on
        an image and the eval curves start where training did. Not reported to Tune (no step 0 result)."""
        from trainables.common.tracking import run_has_metric

        if not (self.args.eval_at_start and is_main()) or self.logged_through > 0:
            return
        if run_has_metric(next(iter(self.eval_set.metrics), "eval/clip_t")):  # a restart before its checkpoint
            return
        started = time.perf_counter()
        scores, images, _ = self.evaluate()
        log_samples(list(self.eval_set.prompts), images, 0, final=False)
        log_metrics(scores, 0)
        self._start_eval_s = time.perf_counter() - started
        self.times["eval"] += self._start_eval_s

    def _log(self, metrics: dict[str, float], step: int) -> None:
        """Queue one step's metrics for MLflow: the file's size once, at the last step (a value, not a curve)."""
        if step > self.logged_through:
            last = step == self.args.max_steps
            log_metrics({k: v for k, v in metrics.items() if k != "step" and (last or not k.endswith("/size_mb"))},
                        step)  # fmt: skip

    def _save_state(self, folder: Path, step: int) -> None:
        from trainables.common.checkpoint import save_state

        if self.tracked is None:
            return
        extra = {"window": self.sums, "count": self.count, "train_time_s": time.perf_counter() - self.started,
                 "metrics": self.metrics, "mlflow_run_id": current_run_id(), "times": dict(self.times)}  # fmt: skip
        save_state(folder, step=step, extra=extra, **self.tracked)

    def finish(self, out_dir: Path) -> None:
        """Write the final files into the trial directory; fail the trial if its scores are not finite."""
        if not is_main():
            return
        started = time.perf_counter()
        Path(out_dir).mkdir(parents=True, exist_ok=True)  # rank 0 may run on another node than the trial
        files = self.save(Path(out_dir))
        if self.export is not None:  # written and logged once, at the end
            files = self.export(Path(out_dir))
            log_files(files, self.artifact_path)
        if self.card is not None:
            card = Path(out_dir) / "README.md"
            card.write_text(self.card(self.metrics, [Path(f).name for f in files]), encoding="utf-8")
            log_files([card], self.artifact_path)
        self.times["save"] += time.perf_counter() - started
        log_metrics({**time_split(self.times, self.train_s), "sys/peak_rss_mb": peak_rss_mb()}, self.args.max_steps)
        if not all(math.isfinite(v) for k, v in self.metrics.items() if k.startswith("eval/")):
            raise TrialError(f"non-finite eval scores {self.metrics}: check the scorer models")


def time_split(times: dict[str, float], train_s: float | None = None) -> dict[str, float]:
    """``time/<part>_s`` metrics (set-up, train, eval, save) and their sum ``time/total_s``."""
    parts = {**{k: times.get(k, 0.0) for k in ("setup", "eval", "save")}, "train": train_s or 0.0}
    out = {f"time/{k}_s": parts[k] for k in TIME_PARTS}
    out["time/total_s"] = sum(parts.values())
    return out


TIME_PARTS = ("setup", "train", "eval", "save")


def train_mode(module, on: bool = True) -> None:
    """``module.train(on)`` only when its mode differs: ``train()`` walks every submodule, which cost 8% of a
    tiny LoRA step when called every step (an eval switches to eval mode; the next step switches back)."""
    if module.training != on:
        module.train(on)


def speed_settings(args: TrainArgs, unet) -> None:
    """The trial's GPU speed switches: TF32 (CUDA only), a channels-last UNet, and ``torch.compile`` of the
    UNet's forward in place (the module stays the same object, so saving and LoRA scaling still see it)."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = args.allow_tf32
        torch.backends.cudnn.allow_tf32 = args.allow_tf32
    if args.channels_last:
        unet.to(memory_format=torch.channels_last)
    if args.compile_unet:
        unet.compile()


def peak_rss_mb() -> float:
    """The peak resident memory of this process so far, in MB (a reused trial process: of all its trials)."""
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def _same_on_every_worker(trained: Trained) -> None:
    """Rank 0's initial trained tensors on every worker (seeded inits agree already; this makes it certain)."""
    from trainables.common.distributed import world_size

    if world_size() > 1:
        state = trained.state()
        broadcast_parameters(list(state.values()))
        trained.load(state)


def _size(path: Path) -> int:
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def caption_embeddings(data, index: torch.Tensor, text_encoder, cached: bool, device: str, dtype: torch.dtype):
    """The text conditioning of the images in ``index``: the sweep's cached embeddings when ``cached``,
    else the text encoder run on the cached token ids (with gradients when it trains)."""
    rows = data.caption_index[index]
    if cached:
        return data.text_embeds[rows].to(device, dtype)
    return text_encoder(data.input_ids[rows].to(device))[0]


def evaluate_pipeline(pipe, eval_set, scorers, sampling, combo: dict[str, float] | None = None):
    """Sample and score ``eval_set`` with ``pipe``'s current (trained) modules in eval mode: ``(metrics,
    images, per-prompt items)``; ``combo``: an inference setting's guidance and steps (eval.knobs)."""
    from eval.evaluate import evaluate
    from eval.knobs import sampling_for

    pipe.unet.eval()
    pipe.text_encoder.eval()
    return evaluate(pipe, eval_set, scorers, sampling_for(sampling, combo) if combo else sampling)


@contextmanager
def lora_scaled(model, scale: float):
    """Every LoRA layer of ``model`` at ``scale`` times its trained scale, restored on exit (an inference knob:
    the same as a loader's LoRA strength)."""
    layers = [m for m in (model.modules() if model is not None else ()) if getattr(m, "scaling", None)]
    saved = [dict(m.scaling) for m in layers]
    try:
        for m in layers:
            for name in m.scaling:
                m.scaling[name] = m.scaling[name] * scale
        yield
    finally:
        for m, scaling in zip(layers, saved, strict=True):
            m.scaling.update(scaling)


def has_lora(*models) -> bool:
    return any(getattr(m, "scaling", None) for model in models if model is not None for m in model.modules())


def evaluate_knobs(evaluate: Callable, knobs: dict[str, list], unet=None, text_encoder=None, plain=None,
                   sampling=None):  # fmt: skip
    """Every combination of ``knobs`` (eval.knobs) evaluated with ``evaluate(combo)``, LoRA scales applied to
    ``unet``/``text_encoder`` around it; settings that cannot change the samples are sampled once, and the one
    that samples as the plain eval (``sampling``) reuses its result ``plain`` = (scores, images, items).
    Returns ``(metrics, images)``: ``<metric> <knob text>`` and ``<metric> best knob`` keys, knob text ->
    samples."""
    from eval.knobs import best_over, effective, is_plain, knob_grid, knob_key, knob_text
    from eval.metrics import METRICS

    combos = knob_grid(knobs)
    lora = has_lora(unet, text_encoder)
    done: dict[tuple, tuple] = {}
    metrics: dict[str, float] = {}
    images: dict[str, list] = {}
    for combo in combos:
        key = effective(combo, lora)
        if key not in done and plain is not None and sampling is not None and is_plain(combo, sampling):
            done[key] = plain
        if key not in done:
            with lora_scaled(unet, combo.get("lora_scale", 1.0)), \
                    lora_scaled(text_encoder, combo.get("text_encoder_scale", 1.0)):  # fmt: skip
                done[key] = evaluate(combo)
        scores, samples, _ = done[key]
        metrics.update({knob_key(m, combo): v for m, v in scores.items()})
        images[knob_text(combo)] = samples
    scored = {m for scores, _, _ in done.values() for m in scores}
    metrics.update(best_over(metrics, combos, {m: METRICS[m].better for m in scored if m in METRICS}))
    return metrics, images
