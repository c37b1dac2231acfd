"""A style LoRA on a captioned folder: network dim, alpha and batch size, text encoder trained too.

Reproduces the style study's four runs: dim/alpha 32/32 at batch 1 and at batch 8, 64/64 and 64/32, each
with a LoRA on the UNet (lr 1e-4) and on the text encoder (lr 5e-5), prompts prefixed with a trigger word.
Eval prompts are sampled with and without the trigger (CLIP-T on both), so a style that leaks into every
prompt shows as a change in the plain group.

    python sweeps/style_lora.py --preset tiny                                 # CPU, drawn shapes, minutes
    python sweeps/style_lora.py --data-dir my_style/ --trigger-word xyzstyle  # SD 1.5, one GPU per trial
    ray job submit --working-dir . -- python sweeps/style_lora.py --data-dir my_style/ --trigger-word xyzstyle
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweeps.launch import Sweep, launch
from trainables.data.captioned import CaptionedData

COMMON = {"method": "lora", "train_text_encoder": True, "unet_lr": 1e-4, "text_encoder_lr": 5e-5}

SWEEP = Sweep(
    name="style_lora",
    base_config={"max_steps": 1500, "eval_every": 250, "lr_scheduler": "constant", "seed": 0},
    arms=(
        {**COMMON, "lora_rank": 32, "lora_alpha": 32.0, "batch_size": 1},
        {**COMMON, "lora_rank": 32, "lora_alpha": 32.0, "batch_size": 8},
        {**COMMON, "lora_rank": 64, "lora_alpha": 64.0, "batch_size": 8},
        {**COMMON, "lora_rank": 64, "lora_alpha": 32.0, "batch_size": 8},  # scale 0.5: same capacity, half the step
    ),
    data=CaptionedData(),
    search_alg="grid",
    scheduler="fifo",
    metric="eval/clip_t",  # prompts with the trigger drawn as asked; see eval/clip_t_plain for leakage
    mode="max",
)

if __name__ == "__main__":
    sys.exit(launch(SWEEP))
