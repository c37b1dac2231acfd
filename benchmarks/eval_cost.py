"""Benchmark: what a trial's evaluation costs, and which sampler gets the same numbers for less.

On the tiny preset's model (the learned tiny SD, 64 px), a LoRA is trained once (the tiny preset's kanji
settings: attention rank 4, 120 steps, lr 3e-3, batch 8, on cached latents); then the baseline and the
trained model are sampled and scored on the tiny kanji eval set (held-out kanji + novel concepts, fixed
seeds) with each sampler below, several times:

- ``PNDM 50``: the pipeline's default scheduler and step count (the reference numbers);
- ``PNDM 30`` and ``PNDM 10``: the sd15 and tiny presets' eval sampling;
- ``DPM++ 20`` and ``DPM++ 10``: DPM-Solver++ (2nd order multistep, ``SamplingConfig(scheduler="dpm++")``).

Printed per sampler: seconds to sample the set (median, spread) and to score it, glyph purity and IoU of
the baseline and the trained model, and the trained - baseline difference, against PNDM 50's. Also: the
set sampled in batches of 8 prompts against one prompt at a time (same images: per-prompt generators).

    python benchmarks/eval_cost.py
    python benchmarks/eval_cost.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SAMPLERS = {"PNDM 50": ("default", 50), "PNDM 30": ("default", 30), "PNDM 10": ("default", 10),
            "DPM++ 20": ("dpm++", 20), "DPM++ 10": ("dpm++", 10)}  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--n-heldout", type=int, default=8)
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "sdsweep"))
    return p.parse_args(argv)


def train_lora(pipe, data, steps=120, lr=3e-3, batch=8):
    """A rank-4 attention LoRA trained as the tiny preset's kanji trials train it (cached latents)."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from trainables.common.lora import add_lora

    torch.manual_seed(0)
    params = add_lora(pipe.unet, 4, 4.0, ("to_q", "to_k", "to_v", "to_out.0"))
    optimizer = torch.optim.AdamW(params, lr=lr)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(0)
    pipe.unet.train()
    for _ in range(steps):
        index = torch.randint(0, len(data), (batch,), generator=generator)
        latents = data.sample_latents(index, generator)
        text = data.text_embeds[data.caption_index[index]].float()
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), generator=generator)
        loss = F.mse_loss(
            pipe.unet(noise_scheduler.add_noise(latents, noise, timesteps), timesteps, text).sample, noise
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    pipe.unet.eval()


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from eval.evaluate import SamplingConfig, sample_images, score_images
    from eval.scorers import ScorerSpec, build_tiny_clip, build_tiny_dino, load_scorers
    from trainables.data.kanji import KanjiData
    from trainables.models import load_pipeline
    from trainables.tiny_learned import learned_tiny

    cache = Path(args.cache_dir).expanduser()
    model = str(learned_tiny(cache))
    scorers = load_scorers(ScorerSpec(build_tiny_clip(cache / "models" / "tiny-clip-64", 64), None,
                                      str(build_tiny_dino(cache / "models" / "tiny-dino-64", 64))))  # fmt: skip
    prepared = KanjiData(max_chars=400, n_heldout=args.n_heldout).prepare(model, 64, cache, progress=False)
    prompts = list(prepared.eval.prompts)
    base = load_pipeline(model)
    trained = load_pipeline(model)
    for pipe in (base, trained):
        pipe.set_progress_bar_config(disable=True)
    train_lora(trained, prepared.train)

    def measure(pipe, cfg):
        times, images = [], None
        for _ in range(args.repeats):
            started = time.perf_counter()
            images = sample_images(pipe, prompts, cfg)
            times.append(time.perf_counter() - started)
        started = time.perf_counter()
        scores = score_images(images, prompts, scorers, prepared.eval.metrics)
        return times, time.perf_counter() - started, scores, images

    results = {}
    for name, (scheduler, steps) in SAMPLERS.items():
        cfg = SamplingConfig(steps=steps, guidance_scale=7.5, resolution=64, batch_size=8, scheduler=scheduler)
        results[name] = {who: measure(pipe, cfg) for who, pipe in (("baseline", base), ("trained", trained))}
    one_by_one = replace(SamplingConfig(steps=10, guidance_scale=7.5, resolution=64, batch_size=1))
    single = measure(trained, one_by_one)

    print(f"\neval cost: learned tiny SD, 64 px, {len(prompts)} prompts ({args.n_heldout} held-out kanji + novel), "
          f"guidance 7.5, {args.repeats} repeats, torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"  {'sampler':<10}{'sample s (median, min-max)':>28}{'score s':>9}{'purity base':>13}{'trained':>9}"
          f"{'diff':>8}{'IoU base':>10}{'trained':>9}{'diff':>8}")  # fmt: skip
    ref = results["PNDM 50"]
    for name, r in results.items():
        times = r["trained"][0] + r["baseline"][0]
        pb, pt = r["baseline"][2]["eval/glyph_purity"], r["trained"][2]["eval/glyph_purity"]
        ib, it = r["baseline"][2]["eval/glyph_iou"], r["trained"][2]["eval/glyph_iou"]
        print(
            f"  {name:<10}{statistics.median(times):>12.2f} ({min(times):.2f}-{max(times):.2f}){'':>4}"
            f"{r['trained'][1]:>9.2f}{pb:>13.4f}{pt:>9.4f}{pt - pb:>+8.4f}{ib:>10.4f}{it:>9.4f}{it - ib:>+8.4f}"
        )
    print("  vs PNDM 50 (the pipeline's default): the trained - baseline difference each sampler reports")
    ref_purity = ref["trained"][2]["eval/glyph_purity"] - ref["baseline"][2]["eval/glyph_purity"]
    ref_time = statistics.median(ref["trained"][0] + ref["baseline"][0])
    for name, r in results.items():
        diff = r["trained"][2]["eval/glyph_purity"] - r["baseline"][2]["eval/glyph_purity"]
        speed = ref_time / statistics.median(r["trained"][0] + r["baseline"][0])
        print(f"  {name:<10} {speed:5.1f}x faster, purity difference {diff:+.4f} ({diff - ref_purity:+.4f} vs PNDM 50)")
    batched = statistics.median(results["PNDM 10"]["trained"][0])
    import numpy as np

    gap = max(int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())
              for a, b in zip(single[3], results["PNDM 10"]["trained"][3], strict=True))  # fmt: skip
    print(
        f"  PNDM 10, batches of 8 vs one prompt at a time: {statistics.median(single[0]) / batched:.2f}x faster "
        f"batched; largest pixel difference between the two sets of images: {gap}/255"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
