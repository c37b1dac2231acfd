"""The learned tiny model's builder (trainables/tiny_learned.py), at two steps per stage: a pipeline that loads
back through from_pretrained, 16x16x4 latents for 64 px, latents of unit spread, cached after the first build."""

import torch

from trainables.models import load_pipeline
from trainables.tiny_learned import build_learned_tiny_sd, shape_images


def test_the_learned_tiny_model_builds_loads_and_is_reused(tmp_path):
    small = dict(vae_steps=2, unet_steps=2, glyph_chars=20, n_shapes=8, progress=False)
    folder = build_learned_tiny_sd(tmp_path / "model", tmp_path / "glyphs", **small)
    pipe = load_pipeline(str(folder))
    assert pipe.unet.config.sample_size == 16 and len(pipe.vae.config.block_out_channels) == 3
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.mode()
    assert latents.shape == (1, 4, 16, 16)
    assert pipe.vae.config.scaling_factor != 0.18215  # set from the trained VAE's latent spread
    image = pipe("kanji meaning \"seven\"", num_inference_steps=2, height=64, width=64,
                 generator=torch.Generator().manual_seed(0)).images[0]  # fmt: skip
    assert image.size == (64, 64)
    stamp = (folder / "model_index.json").stat().st_mtime_ns
    assert build_learned_tiny_sd(tmp_path / "model", tmp_path / "glyphs", progress=False) == folder
    assert (folder / "model_index.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    shapes = shape_images(3, seed=1)
    assert [c for _, c in shapes] == [c for _, c in shape_images(3, seed=1)]  # deterministic captions
