"""Benchmark: encode the training set once vs. run the frozen encoders every training step.

The project encodes every training image with the frozen VAE and every caption with the frozen text
encoder once (``trainables.data.encoding.encode_dataset``); each LoRA step then draws latents from the cached
posterior (``EncodedDataset.sample_latents``) and indexes the cached ``text_embeds``. The naive way (as
diffusers' training scripts do) runs ``vae.encode`` and the text encoder on every batch. This script times
both training loops side by side in one process on the tiny random SD (``build_tiny_sd``) with a LoRA on
the UNet's attention projections (``trainables.common.lora.add_lora``), on rendered KanjiVG glyphs.

Both loops share everything else (noise, timesteps, UNet forward/backward, clipping, AdamW step) and the
batch order. Pixel tensors and token ids are prepared once for the naive loop, so only the frozen
encoders' forward passes differ. Printed: ms per step (mean, median), the naive/cached ratio, the one-off
cost of ``encode_dataset`` (median of 3) and the step count after which encoding once has paid for itself
(from the medians, which other load on the machine disturbs less than the means).

    python benchmarks/encode_once.py                   # 30 timed steps, 64 px, batch 4
    python benchmarks/encode_once.py --steps 100 --resolution 128 --images 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from trainables.common.lora import add_lora
from trainables.data.encoding import encode_dataset, image_to_tensor
from trainables.data.kanji import kanjivg_files, render_glyph
from trainables.models import build_tiny_sd, load_pipeline


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30, help="timed steps per variant (default 30)")
    p.add_argument("--resolution", type=int, default=64, help="image size, a multiple of 8 (default 64)")
    p.add_argument("--batch-size", type=int, default=4, help="images per step (default 4)")
    p.add_argument("--images", type=int, default=32, help="training images (and captions) (default 32)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first (default 2)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def train_step(unet, optimizer, params, scheduler, latents, text, generator) -> None:
    """One LoRA step as trainables/methods/lora.py takes it (float32, epsilon target)."""
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, latents.shape[:1], generator=generator)
    prediction = unet(scheduler.add_noise(latents, noise, timesteps), timesteps, text).sample
    loss = torch.nn.functional.mse_loss(prediction.float(), noise.float())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.resolution % 8 or min(args.steps, args.batch_size, args.images) < 1 or args.warmup < 0:
        sys.exit("error: use --resolution a multiple of 8 and positive --steps/--batch-size/--images")
    torch.manual_seed(args.seed)
    from diffusers import DDPMScheduler
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Loading weights" bars say nothing here

    svgs = sorted(kanjivg_files().items())[: args.images]
    images = [render_glyph(path.read_text("utf-8"), args.resolution) for _, path in svgs]
    captions = [f'kanji "{character}"' for character, _ in svgs]

    with tempfile.TemporaryDirectory() as tmp:
        pipe = load_pipeline(str(build_tiny_sd(Path(tmp) / "tiny-sd")))
    vae, text_encoder, tokenizer, unet = pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet
    for frozen in (vae, text_encoder):
        frozen.requires_grad_(False).eval()
    params = add_lora(unet, 4, 4.0, ("to_q", "to_k", "to_v", "to_out.0"))
    unet.train()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    # cached: the project's one-off encoding (after an untimed warm-up batch; median of 3), then lookups
    bs = args.batch_size
    encode_dataset(pipe, images[:bs], captions[:bs], args.resolution, progress=False)
    one_off = []
    for _ in range(3):
        started = time.perf_counter()
        data = encode_dataset(pipe, images, captions, args.resolution, progress=False)
        one_off.append((time.perf_counter() - started) * 1e3)
    one_off_ms = statistics.median(one_off)

    # naive: pixels and token ids prepared once; the frozen encoders run on every batch
    pixels = torch.stack([image_to_tensor(img, args.resolution) for img in images])
    input_ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                          truncation=True, return_tensors="pt").input_ids  # fmt: skip
    scaling = float(vae.config.scaling_factor)

    def naive_batch(index, generator):
        with torch.no_grad():
            latents = vae.encode(pixels[index]).latent_dist.sample(generator) * scaling
            return latents, text_encoder(input_ids[index])[0]

    def cached_batch(index, generator):
        return data.sample_latents(index, generator), data.text_embeds[data.caption_index[index]].float()

    variants = {"naive (VAE + text encoder every step)": naive_batch, "cached (encode once)": cached_batch}
    generators = {name: torch.Generator().manual_seed(args.seed) for name in variants}
    timings: dict[str, list[float]] = {name: [] for name in variants}
    order_gen = torch.Generator().manual_seed(args.seed)
    order, cursor = torch.randperm(len(images), generator=order_gen), 0
    for step in range(args.warmup + args.steps):
        if cursor + args.batch_size > len(order):  # a new shuffle each epoch, the same for both variants
            order, cursor = torch.randperm(len(images), generator=order_gen), 0
        index = order[cursor : cursor + args.batch_size]
        cursor += args.batch_size
        # interleaved, alternating which runs first, so drift and cache effects hit both alike
        for name, get_batch in list(variants.items())[:: 1 if step % 2 else -1]:
            t0 = time.perf_counter()
            latents, text = get_batch(index, generators[name])
            train_step(unet, optimizer, params, scheduler, latents, text, generators[name])
            if step >= args.warmup:
                timings[name].append((time.perf_counter() - t0) * 1e3)

    naive_name, cached_name = timings
    mean = {name: statistics.fmean(t) for name, t in timings.items()}
    median = {name: statistics.median(t) for name, t in timings.items()}
    lora = "LoRA r4 on to_q,to_k,to_v,to_out.0"
    print(f"encode once vs. every step: tiny SD, {lora}, {args.resolution} px, batch {args.batch_size}, "
          f"{args.images} images, {args.steps} timed steps (+{args.warmup} warm-up each), "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"  {'variant':<40}{'mean ms/step':>14}{'median ms/step':>16}")
    for name in timings:
        print(f"  {name:<40}{mean[name]:>14.1f}{median[name]:>16.1f}")
    print(f"  {'ratio naive/cached':<40}{mean[naive_name] / mean[cached_name]:>13.2f}x"
          f"{median[naive_name] / median[cached_name]:>15.2f}x")  # fmt: skip
    saved = median[naive_name] - median[cached_name]  # medians: robust to other load on the machine
    what = f"{args.images} images, {len(set(captions))} captions"
    print(f"  one-off encode_dataset ({what}): {one_off_ms:.1f} ms ({one_off_ms / args.images:.2f} ms/image)")
    if saved > 0:
        steps = one_off_ms / saved
        epochs = steps * args.batch_size / args.images
        print(f"  break-even: after {steps:.1f} steps ({epochs:.2f} epochs); {saved:.1f} ms/step saved after")
    else:
        print("  break-even: never on this machine (the cached step is not faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
