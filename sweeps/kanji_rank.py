"""Kanji from English meanings: sweep LoRA rank (alpha = rank, so every trial has scale 1).

Reproduces the kanji study: KanjiVG glyphs captioned with KANJIDIC2 meanings, LoRA ranks 1..16 and past
them, then prompts for held-out kanji and for concepts no kanji has ("internet", "language model").

    python sweeps/kanji_rank.py --preset tiny        # CPU, random tiny models, a few minutes
    python sweeps/kanji_rank.py                      # SD 1.5 at 512 px, one GPU per trial
    ray job submit --working-dir . -- python sweeps/kanji_rank.py
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray import tune

from sweeps.launch import Sweep, launch
from trainables.data.kanji import KanjiData

SWEEP = Sweep(
    name="kanji_rank",
    base_config={
        "method": "lora",
        "lora_target_modules": ("to_q", "to_k", "to_v", "to_out.0"),
        "lr_scheduler": "constant",
        "seed": 0,
    },
    search_space={
        "lora_rank": tune.grid_search([1, 4, 8, 16, 64]),
        # alpha follows rank per trial: scale alpha/rank stays 1, so only capacity changes
        "lora_alpha": tune.sample_from(lambda config: float(config["lora_rank"])),
    },
    data=KanjiData(caption_template='kanji meaning "{meanings}"', n_heldout=8),
    search_alg="grid",
    scheduler="fifo",
    metric="eval/glyph_iou",  # held-out glyphs drawn right; clip_t alone rewards any kanji-looking image
    mode="max",
    # every trained adapter (and the baseline, at each guidance) is also sampled at these inference settings
    knobs={"lora_scale": [0.5, 1.0], "guidance_scale": [3.0, 7.5]},
)

if __name__ == "__main__":
    sys.exit(launch(SWEEP))
