"""Kanji from English meanings, by method: is a rank-64 LoRA as good as a full fine-tune, and does a LoRA
on the text encoder help it read the meanings?

The kanji study's open question after its rank sweep. Same data and prompts as kanji_rank.py.

    python sweeps/kanji_methods.py --preset tiny        # CPU, random tiny models, a few minutes
    python sweeps/kanji_methods.py                      # SD 1.5 at 512 px, one GPU per trial
    ray job submit --working-dir . -- python sweeps/kanji_methods.py
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweeps.launch import Sweep, launch
from trainables.data.kanji import KanjiData

SWEEP = Sweep(
    name="kanji_methods",
    base_config={"lr_scheduler": "constant", "seed": 0},
    arms=(
        {"method": "lora", "lora_rank": 8, "lora_alpha": 8.0},
        {"method": "lora", "lora_rank": 64, "lora_alpha": 64.0},
        {"method": "lora", "lora_rank": 8, "lora_alpha": 8.0, "train_text_encoder": True, "text_encoder_lr": 5e-5},
        {"method": "full"},  # every UNet weight, at the full fine-tune's own rate (1e-5)
    ),
    data=KanjiData(caption_template='kanji meaning "{meanings}"', n_heldout=8),
    search_alg="grid",
    scheduler="fifo",
    metric="eval/glyph_iou",
    mode="max",
)

if __name__ == "__main__":
    sys.exit(launch(SWEEP))
