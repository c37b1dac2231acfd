"""Scores as pure functions of embeddings and images. No model is loaded here.

Conventions: embeddings are ``[N, D]`` float tensors, L2-normalised by the scorer; images are PIL images.
Every score is a plain float.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

# a pixel is "ink" or "paper" when every channel is within this distance of black or white (in [0, 1])
PURITY_TOLERANCE = 0.2
# gray level (in [0, 1]) below which a pixel counts as ink for IoU
INK_THRESHOLD = 0.5


def clip_t_score(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> float:
    """CLIP-T: mean cosine between each image and its own prompt (row i with row i).

    Inputs: normalised ``[N, D]`` image and text embeddings. Output: raw cosine in [-1, 1], not x100.
    """
    _check_pairs(image_embeds, text_embeds)
    return float((image_embeds * text_embeds).sum(dim=-1).mean())


def clip_score(image_embeds: torch.Tensor, text_embeds: torch.Tensor, weight: float = 2.5) -> float:
    """CLIPScore (Hessel et al. 2021): mean of ``weight * max(cos, 0)`` over image/prompt pairs.

    Inputs as :func:`clip_t_score`. Output in [0, 2.5] with the paper's weight w = 2.5.
    """
    _check_pairs(image_embeds, text_embeds)
    cos = (image_embeds * text_embeds).sum(dim=-1)
    return float((weight * cos.clamp(min=0)).mean())


def mean_pairwise_cosine(generated: torch.Tensor, references: torch.Tensor) -> float:
    """CLIP-I / DINO score: mean cosine over all (generated, reference) pairs, as in DreamBooth.

    Inputs: normalised ``[N, D]`` generated and ``[M, D]`` reference embeddings from the same scorer.
    Output: raw cosine in [-1, 1]; identical images give 1.0.
    """
    if generated.ndim != 2 or references.ndim != 2 or generated.shape[1] != references.shape[1]:
        raise ValueError(f"need [N, D] and [M, D] embeddings, got {tuple(generated.shape)}, {tuple(references.shape)}")
    return float((generated @ references.T).mean())


def glyph_purity(image: Image.Image, tolerance: float = PURITY_TOLERANCE) -> float:
    """Share of pixels that are near-white or near-black (every channel within ``tolerance`` of 0 or 1).

    Input: any PIL image. Output in [0, 1]: a clean ink-on-paper glyph scores near 1; strokes blended
    into a photo-like or grey background score low. Defined for any prompt, with or without a reference.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    near_black = (rgb <= tolerance).all(axis=-1)
    near_white = (rgb >= 1.0 - tolerance).all(axis=-1)
    return float((near_black | near_white).mean())


def ink_mask(image: Image.Image, size: tuple[int, int] | None = None, threshold: float = INK_THRESHOLD) -> np.ndarray:
    """Boolean ink mask: gray level below ``threshold`` (after resizing to ``size`` if given)."""
    gray = image.convert("L")
    if size is not None and gray.size != size:
        gray = gray.resize(size, Image.Resampling.BILINEAR)
    return (np.asarray(gray, dtype=np.float32) / 255.0) < threshold


def glyph_iou(generated: Image.Image, reference: Image.Image, threshold: float = INK_THRESHOLD) -> float:
    """Ink IoU of a generated image against the ground-truth glyph, both binarised at ``threshold``.

    The generated image is resized to the reference's size. Output in [0, 1]; an all-white image
    against any glyph scores 0; two blank images count as identical (1.0).
    """
    ref = ink_mask(reference, threshold=threshold)
    gen = ink_mask(generated, size=reference.size, threshold=threshold)
    union = np.logical_or(gen, ref).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(gen, ref).sum() / union)


def _check_pairs(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two [N, D] tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


# ---------------------------------------------------------------- the table every part reads


@dataclass(frozen=True)
class MetricInfo:
    """One metric: its name as logged, which direction is better, its range and the data kinds it applies to."""

    name: str
    better: str  # "max" or "min"
    range: str
    kinds: tuple[str, ...]
    what: str


_ALL = ("kanji", "subject", "captioned")
METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo("eval/clip_t", "max", "[-1, 1]", _ALL,
                   "cosine between each image and its prompt (identifier or trigger word removed)"),
        MetricInfo("eval/clip_score", "max", "[0, 2.5]", _ALL, "CLIPScore, mean of 2.5 * max(cos, 0)"),
        MetricInfo("eval/clip_i", "max", "[-1, 1]", ("kanji", "subject"),
                   "CLIP image cosine with the reference images (kanji: its own glyph; subject: all pairs)"),
        MetricInfo("eval/dino", "max", "[-1, 1]", ("kanji", "subject"),
                   "the same with DINO ViT-S/16 (CLS token), the DreamBooth paper's subject fidelity"),
        MetricInfo("eval/glyph_purity", "max", "[0, 1]", ("kanji",), "share of pixels near white or near black"),
        MetricInfo("eval/glyph_iou", "max", "[0, 1]", ("kanji",), "ink IoU with the held-out glyph"),
        MetricInfo("eval/clip_t_plain", "max", "[-1, 1]", ("captioned",),
                   "clip_t on the same prompts without the trigger word (how much the style leaks)"),
        MetricInfo("eval/clip_score_plain", "max", "[0, 2.5]", ("captioned",),
                   "CLIPScore on the prompts without the trigger word"),
        MetricInfo("train/loss", "min", "[0, inf)", _ALL, "mean diffusion loss since the last report"),
    )
}  # fmt: skip


def metrics_for(kind: str) -> tuple[str, ...]:
    """The ``eval/*`` metrics that apply to a data kind, in table order."""
    return tuple(m.name for m in METRICS.values() if kind in m.kinds and m.name.startswith("eval/"))
