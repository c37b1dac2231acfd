"""Fixed-seed sampling of eval prompts and scoring of the samples.

A pure function of a pipeline, prompts with seeds, and scorers: the same inputs give the same images, so
trials and the no-fine-tune baseline are compared on identical noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from eval.metrics import clip_score, clip_t_score, glyph_iou, glyph_purity, mean_pairwise_cosine
from eval.scorers import Scorers


@dataclass(frozen=True)
class EvalPrompt:
    """One eval prompt: ``name`` labels it in grids and artifact names, ``reference`` is its ground truth."""

    name: str
    text: str
    seed: int
    reference: Image.Image | None = None


@dataclass(frozen=True)
class SamplingConfig:
    steps: int = 30  # SD 1.5's usual 25-50; the tiny preset uses 10
    guidance_scale: float = 7.5
    resolution: int = 512
    batch_size: int = 8  # prompts sampled together; per-prompt generators keep seeds independent of it


@torch.no_grad()
def sample_images(pipe, prompts: list[EvalPrompt], cfg: SamplingConfig) -> list[Image.Image]:
    """One image per prompt, its initial noise drawn from ``torch.Generator().manual_seed(prompt.seed)``.

    Generators live on the CPU so the same seed gives the same noise on any device.
    """
    images: list[Image.Image] = []
    for start in range(0, len(prompts), cfg.batch_size):
        chunk = prompts[start : start + cfg.batch_size]
        out = pipe(
            [p.text for p in chunk],
            num_inference_steps=cfg.steps,
            guidance_scale=cfg.guidance_scale,
            height=cfg.resolution,
            width=cfg.resolution,
            generator=[torch.Generator("cpu").manual_seed(p.seed) for p in chunk],
            output_type="pil",
        )
        images.extend(out.images)
    return images


def score_images(images: list[Image.Image], prompts: list[EvalPrompt], scorers: Scorers) -> dict[str, float]:
    """All eval metrics for ``images[i]`` sampled from ``prompts[i]``.

    Returns ``eval/clip_t`` and ``eval/clip_score`` (every prompt), ``eval/glyph_purity`` (every prompt),
    and, over prompts with a reference image, ``eval/clip_i``, ``eval/dino`` and ``eval/glyph_iou``.
    Cosines are raw (in [-1, 1]); CLIPScore is in [0, 2.5]; purity and IoU are fractions in [0, 1].
    """
    if len(images) != len(prompts) or not images:
        raise ValueError(f"need one image per prompt, got {len(images)} images for {len(prompts)} prompts")
    image_clip = scorers.clip.embed_images(images)
    text_clip = scorers.clip.embed_texts([p.text for p in prompts])
    metrics = {
        "eval/clip_t": clip_t_score(image_clip, text_clip),
        "eval/clip_score": clip_score(image_clip, text_clip),
        "eval/glyph_purity": sum(glyph_purity(img) for img in images) / len(images),
    }
    with_ref = [i for i, p in enumerate(prompts) if p.reference is not None]
    if with_ref:
        refs = [prompts[i].reference for i in with_ref]
        gens = [images[i] for i in with_ref]
        ref_clip, ref_dino = scorers.clip.embed_images(refs), scorers.dino.embed_images(refs)
        gen_dino = scorers.dino.embed_images(gens)
        # each generated image against its own prompt's ground truth, averaged over prompts
        metrics["eval/clip_i"] = _mean(
            mean_pairwise_cosine(image_clip[i : i + 1], ref_clip[k : k + 1]) for k, i in enumerate(with_ref)
        )
        metrics["eval/dino"] = _mean(
            mean_pairwise_cosine(gen_dino[k : k + 1], ref_dino[k : k + 1]) for k in range(len(with_ref))
        )
        metrics["eval/glyph_iou"] = _mean(glyph_iou(g, r) for g, r in zip(gens, refs, strict=True))
    return metrics


def evaluate(pipe, prompts: list[EvalPrompt], scorers: Scorers, cfg: SamplingConfig):
    """Sample every prompt once and score the samples: returns ``(metrics, images)``."""
    images = sample_images(pipe, prompts, cfg)
    return score_images(images, prompts, scorers), images


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values))
