"""Encode a training set once with the frozen VAE and text encoder.

Every trial of a sweep shares the result (through Ray's object store) and samples latents from the cached
posterior each step, so no trial runs the VAE encoder or the text encoder in its training loop. The
encoding is also cached on disk, keyed by model, images and captions, for later sweeps.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from trainables.common.atomic import write_file_atomically


@dataclass
class EncodedDataset:
    """VAE posteriors (mean and std, unscaled) per image and text embeddings per unique caption."""

    latent_mean: torch.Tensor  # [N, C, h, w], float16
    latent_std: torch.Tensor  # [N, C, h, w], float16
    text_embeds: torch.Tensor  # [K, 77, D], float16: the frozen text encoder's output per unique caption
    caption_index: torch.Tensor  # [N], long: image i uses text_embeds[caption_index[i]]
    scaling_factor: float
    input_ids: torch.Tensor  # [K, 77], long: the token ids, for methods that train the text encoder
    captions: list[str]  # the K unique captions, in text_embeds order

    def __len__(self) -> int:
        return self.latent_mean.shape[0]

    def sample_latents(self, index: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw scaled latents for the images in ``index`` (float32, on the CPU)."""
        mean, std = self.latent_mean[index].float(), self.latent_std[index].float()
        noise = torch.randn(mean.shape, generator=generator)
        return (mean + std * noise) * self.scaling_factor


def image_to_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """RGB image -> ``[3, H, W]`` in [-1, 1]; resized (bicubic) to ``resolution`` if it differs. No flips:
    a mirrored kanji is a different glyph."""
    image = image.convert("RGB")
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(resolution, resolution, 3)
    return pixels.permute(2, 0, 1).float().div(127.5).sub(1.0)


# bump when the encoded file's contents change, so stale caches are rebuilt rather than misread
ENCODING_VERSION = 2


def cache_key(model: str, resolution: int, image_ids: list[str], captions: list[str]) -> str:
    blob = json.dumps([ENCODING_VERSION, model, resolution, image_ids, captions], ensure_ascii=False)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    """Token ids ``[len(texts), 77]``, padded and truncated as Stable Diffusion's pipelines do."""
    return tokenizer(
        list(texts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


@torch.no_grad()
def encode_dataset(
    pipe,
    images: list,
    captions: list[str],
    resolution: int,
    batch_size: int = 16,
    cache_file: Path | None = None,
    progress: bool = True,
) -> EncodedDataset:
    """Encode ``images`` (PIL images, or callables returning one) and ``captions`` with ``pipe``'s frozen
    VAE and text encoder; read from / write to ``cache_file`` when given."""
    cached = load_encoded(cache_file) if cache_file is not None else None
    if cached is not None:
        return cached
    if len(images) != len(captions) or not images:
        raise ValueError(f"need one caption per image, got {len(images)} images and {len(captions)} captions")
    vae, text_encoder, tokenizer = pipe.vae, pipe.text_encoder, pipe.tokenizer
    device, dtype = vae.device, vae.dtype

    means, stds = [], []
    for start in tqdm(
        range(0, len(images), batch_size),
        desc="encoding latents",
        disable=not progress,
        mininterval=5,
        unit="batch",
    ):
        chunk = [img() if callable(img) else img for img in images[start : start + batch_size]]
        pixels = torch.stack([image_to_tensor(img, resolution) for img in chunk]).to(device, dtype)
        posterior = vae.encode(pixels).latent_dist
        means.append(posterior.mean.half().cpu())
        stds.append(posterior.std.half().cpu())

    unique = sorted(set(captions))
    position = {c: i for i, c in enumerate(unique)}
    input_ids = tokenize(tokenizer, unique)
    embeds = []
    for start in range(0, len(unique), batch_size * 4):
        tokens = input_ids[start : start + batch_size * 4].to(device)
        embeds.append(text_encoder(tokens)[0].half().cpu())

    encoded = EncodedDataset(
        latent_mean=torch.cat(means),
        latent_std=torch.cat(stds),
        text_embeds=torch.cat(embeds),
        caption_index=torch.tensor([position[c] for c in captions], dtype=torch.long),
        scaling_factor=float(vae.config.scaling_factor),
        input_ids=input_ids,
        captions=unique,
    )
    if cache_file is not None:  # a private temporary name, then an atomic replace: readers see whole files
        write_file_atomically(Path(cache_file), lambda tmp: torch.save(vars(encoded), tmp))
    return encoded


def load_encoded(cache_file: Path) -> EncodedDataset | None:
    """The encoded dataset in ``cache_file``; None when it is missing, or damaged (a truncated write, a
    disk error), in which case it is removed, with one line naming it, so the caller encodes it again."""
    cache_file = Path(cache_file)
    if not cache_file.is_file():
        return None
    try:
        return EncodedDataset(**torch.load(cache_file, weights_only=True))
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError... for a damaged file
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        print(f"[sdsweep] the encoded cache {cache_file} is damaged ({reason}): encoding the data again",
              file=sys.stderr)  # fmt: skip
        cache_file.unlink(missing_ok=True)
        return None
