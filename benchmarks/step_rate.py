"""Benchmark: optimizer steps per second of the project's LoRA trainable against bare diffusers + peft loops.

Three loops train the same attention LoRA (rank 4, peft) on the same tiny model, glyphs, batch, resolution and
number of steps, one after another in each repeat (the order rotates from repeat to repeat):

- ``trainable``: ``trainables.run_trial.run_trial`` (the recipe a sweep's trial runs, MLflow records
  included), timed by its own ``train/time_s`` (training steps only: its evals and checkpoints are excluded);
  it reads latents and caption embeddings from the sweep's one-off encoding;
- ``bare, encode every step``: a minimal loop written here the way the diffusers example scripts train: each
  step runs the frozen VAE encoder on the batch's pixels and the text encoder on its token ids, then noise,
  UNet, MSE, backward, clipping, AdamW, and a ``loss.item()`` for the progress bar;
- ``bare, cached``: the same minimal loop on the same cached latents and embeddings the trainable reads: the
  floor for a loop that caches, so ``trainable / bare cached`` is what the project's loop machinery costs.

Every loop runs ``--steps`` + 1 steps and is timed over all of them, the first included (the trainable's
``train/time_s`` includes it). Printed per loop: steps/s of each repeat, the median and the spread
(min-max), and the ratios of the medians.

    python benchmarks/step_rate.py                       # learned tiny model, 64 glyphs, batch 4, 60 steps, 5 repeats
    python benchmarks/step_rate.py --repeats 5 --steps 100
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument(
        "--images", type=int, default=64, help="kanji rendered (default 64; the held-out ones are not trained on)"
    )
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: with 2 on 2 shared cores repeats differed by 20%%)")  # fmt: skip
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "sdsweep"))
    return p.parse_args(argv)


def bare_loop(model: str, pixels, input_ids, cached, args, encode: bool) -> float:
    """Steps/s of a minimal diffusers + peft LoRA loop; ``encode``: run the VAE and text encoder per step."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    from trainables.models import load_pipeline

    pipe = load_pipeline(model)
    vae, text_encoder, unet = pipe.vae, pipe.text_encoder, pipe.unet
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian", target_modules=list(TARGETS))
    )
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(0)
    scaling = float(vae.config.scaling_factor)
    unet.train()
    started = time.perf_counter()
    for _ in range(args.steps + 1):  # the first step included, as the trainable's train/time_s includes it
        index = torch.randint(0, len(pixels), (args.batch_size,), generator=generator)
        if encode:
            with torch.no_grad():
                latents = vae.encode(pixels[index]).latent_dist.sample(generator) * scaling
                text = text_encoder(input_ids[index])[0]
        else:
            latents = cached.sample_latents(index, generator)
            text = cached.text_embeds[cached.caption_index[index]].float()
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(
            0, noise_scheduler.config.num_train_timesteps, (args.batch_size,), generator=generator
        )
        prediction = unet(noise_scheduler.add_noise(latents, noise, timesteps), timesteps, text).sample
        loss = F.mse_loss(prediction.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.detach().item()  # the example scripts' progress bar shows the loss every step
    return (args.steps + 1) / (time.perf_counter() - started)


def trainable_loop(ctx, args, work: Path, repeat: int) -> float:
    """Steps/s of the project's LoRA trainable, from its own train/time_s (training steps only)."""
    import mlflow

    from trainables.run_trial import run_trial

    config = {"method": "lora", "lora_rank": args.rank, "lora_alpha": float(args.rank), "unet_lr": 1e-4,
              "lora_target_modules": TARGETS, "max_steps": args.steps + 1, "batch_size": args.batch_size,
              "resolution": 64, "eval_every": args.steps + 1, "log_every": args.steps + 1, "eval_at_start": False,
              "seed": repeat, "lora_init": "gaussian"}  # fmt: skip
    run_trial(config, ctx)
    (run,) = mlflow.search_runs([ctx.experiment_id], f"params.seed = '{repeat}'", output_format="list")
    # train/time_s covers all its steps, the first (optimizer state, first-call costs) included; so do the bare loops
    return (args.steps + 1) / run.data.metrics["train/time_s"]


def main(argv=None) -> int:
    args = parse_args(argv)
    import mlflow
    import torch

    torch.set_num_threads(args.threads)

    from eval.evaluate import SamplingConfig
    from eval.scorers import ScorerSpec, build_tiny_clip, build_tiny_dino
    from trainables.common.tracking import TrialContext
    from trainables.data.encoding import image_to_tensor, tokenize
    from trainables.data.kanji import KanjiData, dataset_dir, load_image, load_records
    from trainables.models import load_pipeline
    from trainables.tiny_learned import learned_tiny

    cache = Path(args.cache_dir).expanduser()
    model = str(learned_tiny(cache))
    scorers = ScorerSpec(build_tiny_clip(cache / "models" / "tiny-clip-64", 64), None,
                         str(build_tiny_dino(cache / "models" / "tiny-dino-64", 64)))  # fmt: skip
    data = KanjiData(max_chars=args.images, n_heldout=1)
    prepared = data.prepare(model, 64, cache, False)
    cached = prepared.train
    directory = dataset_dir(cache, 64, data.caption_template, data.max_chars, data.holdout_percent)
    records = [r for r in load_records(directory) if r.split == "train"]
    pixels = torch.stack([image_to_tensor(load_image(directory, r), 64) for r in records])
    input_ids = tokenize(load_pipeline(model).tokenizer, [r.caption for r in records])
    sampling = SamplingConfig(steps=10, guidance_scale=7.5, resolution=64, batch_size=8)

    loops = ["trainable", "bare, encode every step", "bare, cached"]
    rates: dict[str, list[float]] = {name: [] for name in loops}
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # a direct run_trial call writes its files to the working directory
        uri = f"sqlite:///{tmp}/mlflow.db"
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.create_experiment("step-rate", artifact_location=(Path(tmp) / "art").as_uri())
        with mlflow.start_run(experiment_id=experiment) as parent:
            pass
        ctx = TrialContext(model, uri, experiment, parent.info.run_id, prepared.eval, sampling, scorers, prepared)
        for repeat in range(args.repeats):
            order = loops[repeat % 3 :] + loops[: repeat % 3]  # each loop first once in three repeats
            for name in order:
                if name == "trainable":
                    rates[name].append(trainable_loop(ctx, args, Path(tmp), repeat))
                else:
                    rates[name].append(bare_loop(model, pixels, input_ids, cached, args, encode="encode" in name))
    median = {name: statistics.median(r) for name, r in rates.items()}
    print(f"\nstep rate: learned tiny SD, LoRA r{args.rank} on attention, 64 px, batch {args.batch_size}, "
          f"{len(cached)} glyphs, {args.steps} timed steps, {args.repeats} repeats, torch threads "
          f"{torch.get_num_threads()}")  # fmt: skip
    print(f"  {'loop':<28}{'steps/s (each repeat)':>30}{'median':>9}{'min-max':>15}")
    for name in loops:
        each = " ".join(f"{r:.1f}" for r in rates[name])
        print(f"  {name:<28}{each:>30}{median[name]:>9.2f}{min(rates[name]):>8.1f}-{max(rates[name]):<6.1f}")
    print(f"  trainable / bare encode-every-step: {median['trainable'] / median['bare, encode every step']:.2f}x")
    print(f"  trainable / bare cached:            {median['trainable'] / median['bare, cached']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
