"""A tiny Stable Diffusion that can learn on a CPU, built once from config and cached like the random one.

The random tiny model (``trainables.models.build_tiny_sd``) samples coloured noise: every fine-tune scores as
its baseline, so nobody can see a sweep find anything. This one is trained for a few minutes first:

- **VAE** (3 levels: 64 px images <-> 16x16x4 latents) trained to reconstruct kanji glyphs *and* coloured
  shapes (MSE + 1e-6 KL), its ``scaling_factor`` set so latents have unit spread;
- **UNet** (16x16 latents) pretrained as a full fine-tune on coloured shapes with captions ("a red circle on
  sand"), as real SD is pretrained on other data: it denoises, but draws shapes, not the kanji a sweep's LoRA
  then learns, so the baseline does not already draw the answer;
- the text encoder stays random (its embeddings still tell captions apart).

    python -m trainables.tiny_learned OUT_DIR     # about 70 s on 2 cores, then reused
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import torch

# training lengths found by a probe on 2 cores (see benchmarks/tiny_learning.py)
VAE_STEPS, UNET_STEPS = 120, 200  # ~70 s; a LoRA of 120 steps then gains ~0.57 glyph purity
_COLORS = [("red", (214, 40, 40)), ("blue", (40, 80, 214)), ("green", (40, 170, 70)), ("yellow", (240, 200, 30)),
           ("purple", (140, 60, 180)), ("orange", (240, 130, 30))]  # fmt: skip
_BACKGROUNDS = [("sky", (176, 214, 240)), ("sand", (236, 222, 190)), ("grass", (150, 200, 130)),
                ("grey", (150, 150, 160))]  # fmt: skip


def shape_images(count: int, seed: int = 0, size: int = 64):
    """``count`` (image, caption) pairs: one coloured circle, square or triangle on a coloured ground."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    out = []
    for _ in range(count):
        (color_name, color), (ground_name, ground) = rng.choice(_COLORS), rng.choice(_BACKGROUNDS)
        kind = rng.choice(["circle", "square", "triangle"])
        image = Image.new("RGB", (size, size), ground)
        draw = ImageDraw.Draw(image)
        s = size / 64
        cx, cy, r = rng.uniform(20, 44) * s, rng.uniform(20, 44) * s, rng.uniform(10, 20) * s
        if kind == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
        elif kind == "square":
            draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=color)
        else:
            draw.polygon([(cx - r, cy + r), (cx + r, cy + r), (cx, cy - r)], fill=color)
        out.append((image, f"a {color_name} {kind} on {ground_name}"))
    return out


def _tensor(images) -> torch.Tensor:
    import numpy as np

    array = np.stack([np.asarray(i.convert("RGB"), dtype=np.float32) / 127.5 - 1 for i in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def build_learned_tiny_sd(out_dir: Path, glyph_dir: Path, seed: int = 0, vae_steps: int = VAE_STEPS,
                          unet_steps: int = UNET_STEPS, glyph_chars: int = 400, n_shapes: int = 400,
                          progress: bool = True) -> Path:  # fmt: skip
    """Build (or reuse) the learned tiny pipeline in ``out_dir``; ``glyph_dir`` caches the rendered glyphs the
    VAE learns from. Deterministic for a seed."""
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from trainables.common.atomic import build_once
    from trainables.data.kanji import build_dataset, load_image, load_records
    from trainables.models import _SD15_SCHEDULE, _quiet_transformers, clip_tokenizer

    out_dir = Path(out_dir)
    if (out_dir / "model_index.json").exists():
        return out_dir

    def say(text: str) -> None:
        if progress:
            print(f"[sdsweep] tiny model: {text}", flush=True)

    def write(tmp: Path) -> None:
        _quiet_transformers()  # no "Writing model shards" bar
        started = time.perf_counter()
        say(f"building it once ({vae_steps} VAE steps, {unet_steps} UNet steps; about a minute on 2 cores)")
        glyph_root = build_dataset(Path(glyph_dir), size=64, max_chars=glyph_chars, progress=False)
        glyphs = _tensor([load_image(glyph_root, r) for r in load_records(glyph_root)])
        shapes = shape_images(n_shapes, seed)
        shape_pixels = _tensor([image for image, _ in shapes])
        generator = torch.Generator().manual_seed(seed)

        torch.manual_seed(seed)
        vae = AutoencoderKL(block_out_channels=(32, 64, 64), in_channels=3, out_channels=3,
                            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                            latent_channels=4, sample_size=64)  # fmt: skip
        optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3)
        for step in range(vae_steps):
            pick_glyphs = torch.randint(0, len(glyphs), (4,), generator=generator)
            pick_shapes = torch.randint(0, len(shape_pixels), (4,), generator=generator)
            batch = torch.cat([glyphs[pick_glyphs], shape_pixels[pick_shapes]])
            posterior = vae.encode(batch).latent_dist
            loss = F.mse_loss(vae.decode(posterior.sample(generator)).sample, batch) + 1e-6 * posterior.kl().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 100 == 99:
                say(f"VAE step {step + 1}/{vae_steps}, reconstruction loss {loss.item():.4f}")
        vae.eval().requires_grad_(False)
        with torch.no_grad():
            raw = torch.cat([vae.encode(glyphs).latent_dist.mode(), vae.encode(shape_pixels).latent_dist.mode()])
        vae.register_to_config(scaling_factor=float(1.0 / raw.std()))  # unit-spread latents for the UNet
        latents = vae.encode(shape_pixels).latent_dist.mode().detach() * vae.config.scaling_factor

        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=5, vocab_size=49408,
            max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        ))  # fmt: skip
        tokenizer = clip_tokenizer(tmp / "_bpe")
        ids = tokenizer([c for _, c in shapes], padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt").input_ids  # fmt: skip
        with torch.no_grad():
            embeds = text_encoder(ids)[0]

        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        )  # fmt: skip
        scheduler = PNDMScheduler(**_SD15_SCHEDULE)
        noise_scheduler = DDPMScheduler.from_config(scheduler.config)  # as the training recipes do
        optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
        for step in range(unet_steps):
            index = torch.randint(0, len(latents), (8,), generator=generator)
            noise = torch.randn(latents[index].shape, generator=generator)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (8,), generator=generator)
            noisy = noise_scheduler.add_noise(latents[index], noise, timesteps)
            loss = F.mse_loss(unet(noisy, timesteps, embeds[index]).sample, noise)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 200 == 199:
                say(f"UNet pretraining step {step + 1}/{unet_steps} on shapes, loss {loss.item():.4f}")

        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet.eval(),
                                       scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)  # fmt: skip
        pipe.save_pretrained(tmp)
        import shutil

        shutil.rmtree(tmp / "_bpe")
        say(f"built in {time.perf_counter() - started:.0f} s, cached in {out_dir}")

    return build_once(out_dir, write, lambda d: (d / "model_index.json").exists())


def learned_tiny_dir(cache_dir: Path) -> Path:
    """Where the cache keeps the learned tiny model; the folder names its build, so a change of the build's
    lengths builds a new one instead of reusing a stale one."""
    return Path(cache_dir) / "models" / f"tiny-sd-learned-{VAE_STEPS}-{UNET_STEPS}"


def learned_tiny(cache_dir: Path, progress: bool = True) -> Path:
    """The learned tiny model in ``cache_dir`` (built there the first time)."""
    cache_dir = Path(cache_dir)
    return build_learned_tiny_sd(learned_tiny_dir(cache_dir), cache_dir / "generated" / "tiny-glyphs",
                                 progress=progress)  # fmt: skip


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-sd-learned")
    print(build_learned_tiny_sd(target, target.parent / "tiny-glyphs"))
