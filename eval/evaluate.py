"""Fixed-seed sampling of eval prompts and scoring of the samples.

A pure function of a pipeline, prompts with seeds, and scorers: the same inputs give the same images, so
trials and the no-fine-tune baseline are compared on identical noise.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from PIL import Image

from eval.metrics import clip_score, clip_t_score, glyph_iou, glyph_purity, mean_pairwise_cosine
from eval.scorers import Scorers


@dataclass(frozen=True)
class EvalPrompt:
    """One eval prompt: ``name`` labels it in grids and artifact names, ``reference`` is its own ground truth.

    ``score_text`` is what CLIP-T compares the image with when it differs from ``text`` (the DreamBooth
    protocol drops the identifier: "a sks dog in the jungle" is scored against "a dog in the jungle").
    ``group`` "plain" marks prompts without the trigger word (scored as ``eval/*_plain``).
    """

    name: str
    text: str
    seed: int
    reference: Image.Image | None = None
    score_text: str | None = None
    group: str = "main"


@dataclass(frozen=True)
class EvalSet:
    """The prompts of a sweep, the images every sample is compared with, and the metrics that apply."""

    prompts: tuple[EvalPrompt, ...]
    references: tuple[Image.Image, ...] = ()  # subject photos: clip_i/dino over all (sample, reference) pairs
    metrics: tuple[str, ...] = ("eval/clip_t", "eval/clip_score")

    def with_word(self, old: str | None, new: str) -> EvalSet:
        """The same set with the whole word ``old`` replaced by ``new`` in every prompt text (a textual
        inversion trial puts its placeholder token where the others have the identifier)."""
        if not old or old == new:
            return self
        pattern = re.compile(rf"(?<![\w<>]){re.escape(old)}(?![\w<>])")
        prompts = tuple(replace(p, text=pattern.sub(new, p.text)) for p in self.prompts)
        return replace(self, prompts=prompts)


@dataclass(frozen=True)
class SamplingConfig:
    steps: int = 30  # SD 1.5's usual 25-50; the tiny preset uses 10
    guidance_scale: float = 7.5
    resolution: int = 512
    batch_size: int = 8  # prompts sampled together; per-prompt generators keep seeds independent of it
    # "default": the model's own scheduler (PNDM on SD 1.5); "dpm++": DPM-Solver++ (2nd-order multistep) built
    # from the model's scheduler config, which gets close to the default's images in fewer steps
    scheduler: str = "default"


SCHEDULERS = ("default", "dpm++")


@contextmanager
def eval_scheduler(pipe, name: str):
    """``pipe`` sampling with the scheduler ``name`` (see :class:`SamplingConfig`), restored afterwards."""
    if name == "default":
        yield
        return
    if name != "dpm++":
        raise ValueError(f"sampling scheduler {name!r} is unknown: choose from {SCHEDULERS}")
    from diffusers import DPMSolverMultistepScheduler

    saved = pipe.scheduler
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(saved.config, algorithm_type="dpmsolver++",
                                                             solver_order=2)  # fmt: skip
    try:
        yield
    finally:
        pipe.scheduler = saved


@torch.no_grad()
def sample_images(pipe, prompts: list[EvalPrompt], cfg: SamplingConfig) -> list[Image.Image]:
    """One image per prompt, its initial noise drawn from ``torch.Generator().manual_seed(prompt.seed)``.

    Generators live on the CPU so the same seed gives the same noise on any device.
    """
    images: list[Image.Image] = []
    with eval_scheduler(pipe, cfg.scheduler):
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


def score_images(
    images: list[Image.Image],
    prompts: list[EvalPrompt],
    scorers: Scorers,
    metrics: tuple[str, ...] | None = None,
    references: tuple[Image.Image, ...] = (),
    items: dict[str, list[float | None]] | None = None,
) -> dict[str, float]:
    """The eval metrics for ``images[i]`` sampled from ``prompts[i]``; ``metrics`` limits which (default all
    that the inputs allow).

    - ``eval/clip_t``, ``eval/clip_score``: each image against its prompt's ``score_text``, over "main"
      prompts; ``eval/clip_t_plain`` / ``eval/clip_score_plain`` the same over "plain" prompts.
    - ``eval/clip_i``, ``eval/dino``: with ``references``, the mean cosine over all pairs of (main-prompt
      image, reference), as DreamBooth; otherwise each image against its own prompt's ``reference``,
      averaged over the prompts that have one.
    - ``eval/glyph_purity`` (every image), ``eval/glyph_iou`` (prompts with a reference).

    Cosines are raw (in [-1, 1]); CLIPScore is in [0, 2.5]; purity and IoU are fractions in [0, 1].

    With ``items``, also each metric per prompt (``items[metric][i]`` for ``prompts[i]``, None where the
    metric does not apply to that prompt): the metric is the mean of its items, so a comparison of two models
    on the same prompts and seeds can pair them (see :mod:`eval.verdict`).
    """
    if len(images) != len(prompts) or not images:
        raise ValueError(f"need one image per prompt, got {len(images)} images for {len(prompts)} prompts")
    wanted = set(metrics) if metrics is not None else None

    def want(name: str) -> bool:
        return wanted is None or name in wanted

    out: dict[str, float] = {}
    per: dict[str, list[float | None]] = items if items is not None else {}

    def keep(name: str, rows: list[int], values) -> None:
        if items is not None:
            per[name] = [None] * len(prompts)
            for row, value in zip(rows, values, strict=True):
                per[name][row] = float(value)

    image_clip = scorers.clip.embed_images(images)
    text_clip = scorers.clip.embed_texts([p.score_text or p.text for p in prompts])
    for group, suffix in (("main", ""), ("plain", "_plain")):
        rows = [i for i, p in enumerate(prompts) if p.group == group]
        cosines = (image_clip[rows] * text_clip[rows]).sum(dim=-1).tolist() if rows else []
        if rows and want(f"eval/clip_t{suffix}"):
            out[f"eval/clip_t{suffix}"] = clip_t_score(image_clip[rows], text_clip[rows])
            keep(f"eval/clip_t{suffix}", rows, cosines)
        if rows and want(f"eval/clip_score{suffix}"):
            out[f"eval/clip_score{suffix}"] = clip_score(image_clip[rows], text_clip[rows])
            keep(f"eval/clip_score{suffix}", rows, [2.5 * max(c, 0.0) for c in cosines])
    if want("eval/glyph_purity"):
        purity = [glyph_purity(img) for img in images]
        out["eval/glyph_purity"] = _mean(purity)
        keep("eval/glyph_purity", list(range(len(images))), purity)

    main = [i for i, p in enumerate(prompts) if p.group == "main"]
    if references and main and (want("eval/clip_i") or want("eval/dino")):
        refs = list(references)
        if want("eval/clip_i"):
            ref_clip = scorers.clip.embed_images(refs)
            out["eval/clip_i"] = mean_pairwise_cosine(image_clip[main], ref_clip)
            keep("eval/clip_i", main, (image_clip[main] @ ref_clip.T).mean(dim=1).tolist())
        if want("eval/dino"):
            gen_dino, ref_dino = scorers.dino.embed_images([images[i] for i in main]), scorers.dino.embed_images(refs)
            out["eval/dino"] = mean_pairwise_cosine(gen_dino, ref_dino)
            keep("eval/dino", main, (gen_dino @ ref_dino.T).mean(dim=1).tolist())
        return out

    with_ref = [i for i, p in enumerate(prompts) if p.reference is not None]
    if with_ref:
        refs = [prompts[i].reference for i in with_ref]
        gens = [images[i] for i in with_ref]
        if want("eval/clip_i"):  # each generated image against its own prompt's ground truth
            ref_clip = scorers.clip.embed_images(refs)
            values = [mean_pairwise_cosine(image_clip[i : i + 1], ref_clip[k : k + 1]) for k, i in enumerate(with_ref)]
            out["eval/clip_i"] = _mean(values)
            keep("eval/clip_i", with_ref, values)
        if want("eval/dino"):
            ref_dino, gen_dino = scorers.dino.embed_images(refs), scorers.dino.embed_images(gens)
            values = [mean_pairwise_cosine(gen_dino[k : k + 1], ref_dino[k : k + 1]) for k in range(len(with_ref))]
            out["eval/dino"] = _mean(values)
            keep("eval/dino", with_ref, values)
        if want("eval/glyph_iou"):
            values = [glyph_iou(g, r) for g, r in zip(gens, refs, strict=True)]
            out["eval/glyph_iou"] = _mean(values)
            keep("eval/glyph_iou", with_ref, values)
    return out


def evaluate(pipe, eval_set: EvalSet, scorers: Scorers, cfg: SamplingConfig):
    """Sample every prompt of ``eval_set`` once and score the samples: returns ``(metrics, images, items)``
    with ``items`` each metric per prompt (see :func:`score_images`)."""
    prompts = list(eval_set.prompts)
    images = sample_images(pipe, prompts, cfg)
    items: dict[str, list[float | None]] = {}
    metrics = score_images(images, prompts, scorers, eval_set.metrics, eval_set.references, items=items)
    return metrics, images, items


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values))
