"""What a sweep file declares (:class:`Sweep`) and the machines it can run on (:data:`PRESETS`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from eval.evaluate import SamplingConfig
from eval.scorers import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, DEFAULT_DINO_MODEL, ScorerSpec
from trainables.models import SD15_MODEL

SEARCH_ALGS = ("grid", "random", "optuna")
SCHEDULERS = ("fifo", "asha")


class SweepError(RuntimeError):
    """Bad sweep input found before trials start; printed as one line."""


@dataclass(frozen=True)
class Sweep:
    """One experiment: its data, a base config, a search space (or several method arms), how to search.

    ``search_space`` is one arm; ``arms`` lists several, each a sub-space with its own ``method`` (and
    only that method's settings), so one sweep can put LoRA, DreamBooth and textual inversion side by side.
    """

    name: str  # MLflow experiment, Ray run and report name
    data: Any  # a data kind (trainables.data): KanjiData, SubjectData, CaptionedData
    base_config: dict[str, Any] = field(default_factory=dict)  # settings every trial shares
    search_space: dict[str, Any] = field(default_factory=dict)
    arms: tuple[dict[str, Any], ...] = ()
    search_alg: str = "grid"  # grid/random: expanded before Ray starts; optuna: OptunaSearch (TPE) at run time
    scheduler: str = "fifo"  # fifo runs every trial to the end; asha stops weak trials at eval points
    metric: str = "eval/clip_t"  # what "best" means for the searcher, the scheduler and the summary
    mode: str = "max"
    workers_per_trial: int = 1  # >1: each trial is a Ray Train job of this many data-parallel workers
    # inference settings tried on every trained model and on the baseline, e.g. {"lora_scale": [0.5, 1.0],
    # "guidance_scale": [3.0, 7.5]} (eval.knobs); ``metric`` may name one ("eval/clip_t scale:0.5 cfg:3") or
    # the best of them ("eval/clip_t best knob")
    knobs: dict[str, list] = field(default_factory=dict)

    def all_arms(self) -> list[dict[str, Any]]:
        if self.arms and self.search_space:
            raise SweepError(f"sweep {self.name!r} sets both search_space and arms: put the space in one arm")
        return [dict(a) for a in self.arms] or [dict(self.search_space)]


@dataclass(frozen=True)
class Preset:
    """Model, scorers and settings for one kind of machine."""

    model: str | None  # None: a tiny model built from config (``tiny_model``)
    scorers: ScorerSpec | None  # None: tiny scorers built from config
    trial_overrides: dict[str, Any]  # shared training settings (TrainArgs fields); a sweep's own values win
    sampling: SamplingConfig
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> its own settings
    data_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # data kind -> its settings
    forced: dict[str, Any] = field(default_factory=dict)  # settings that win over the sweep's (only --flags beat them)
    num_class_images: int = 100  # prior-preservation set size when a trial does not say (diffusers' default)
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    # which tiny SD ``model=None`` builds: "learned" (trainables.tiny_learned: trained for a minute on glyphs
    # and shapes, so fine-tunes visibly change it) or "random" (random weights: samples are coloured noise)
    tiny_model: str = "random"
    # what the preset's numbers can and cannot say, for the report's source line
    caveat: str = ""


PRESETS = {
    # SD 1.5 at 512 px on one GPU per trial, with real CLIP ViT-L/14 and DINO ViT-S/16 scorers
    "sd15": Preset(
        model=SD15_MODEL,
        scorers=ScorerSpec(DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, DEFAULT_DINO_MODEL),
        trial_overrides=dict(
            resolution=512, batch_size=8, max_steps=3000, eval_every=500, log_every=10, mixed_precision="fp16",
        ),
        sampling=SamplingConfig(steps=30, guidance_scale=7.5, resolution=512, batch_size=8),
        data_overrides={"kanji": dict(n_heldout=8)},
        num_class_images=100,
        cpus_per_trial=4,
        gpus_per_trial=1,
    ),
    # CPU: a tiny SD trained for a minute on glyphs and coloured shapes (built once, cached), 64 px, 120 steps
    # per trial: a kanji LoRA visibly changes it (glyph purity ~0.2 -> ~0.75); the scorers stay random
    "tiny": Preset(
        model=None,
        scorers=None,
        trial_overrides=dict(batch_size=8),
        # a sweep written for SD 1.5 (800 steps at 512 px in fp16) still runs in minutes on CPU
        forced=dict(resolution=64, max_steps=120, eval_every=60, log_every=10, mixed_precision="no"),
        # rates ~10-30x the real ones, so 120 steps at batch 8 move the tiny model (benchmarks/tiny_learning.py)
        method_overrides={
            "lora": dict(unet_lr=3e-3),
            "dreambooth_lora": dict(unet_lr=1e-3),
            "dreambooth": dict(unet_lr=1e-4),
            "full": dict(unet_lr=1e-4),
            "textual_inversion": dict(learning_rate=5e-3),
        },
        sampling=SamplingConfig(steps=10, guidance_scale=7.5, resolution=64, batch_size=8),
        data_overrides={
            "kanji": dict(max_chars=400, n_heldout=4),
            # without --data-dir the tiny preset trains on small sets the project draws itself (offline, CI)
            "subject": dict(num_eval_prompts=3, images_per_prompt=2, use_generated_set=True),
            "captioned": dict(num_eval_prompts=3, use_generated_set=True),
        },
        num_class_images=8,
        cpus_per_trial=1,
        gpus_per_trial=0,
        tiny_model="learned",
        caveat="The tiny preset's SD was trained for about a minute on glyphs and coloured shapes: glyph purity "
        "and IoU show whether a fine-tune changed it; its CLIP and DINO scorers have random weights, so "
        "CLIP-T, CLIP-I and DINO test the machinery, not quality.",
    ),
}  # fmt: skip
# random tiny models on CPU, 20 steps: exercises every part in a minute or two (the tests); its images are
# coloured noise and its scores mean nothing. The tiny preset otherwise (sampling, data, class images).
PRESETS["smoke"] = replace(
    PRESETS["tiny"],
    trial_overrides=dict(batch_size=4),
    forced=dict(resolution=64, max_steps=20, eval_every=10, log_every=5, mixed_precision="no"),
    # rates ~10x the real ones, so 20 steps move the tiny random weights visibly
    method_overrides={**PRESETS["tiny"].method_overrides, "lora": dict(unet_lr=1e-3)},
    tiny_model="random",
    caveat="The smoke preset's models and scorers have random weights: its scores test the machinery, not quality.",
)
