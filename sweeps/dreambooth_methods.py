"""One subject, every method: which fine-tune keeps the subject best (DINO), and at what cost to prompts?

LoRA, DreamBooth without and with prior preservation, DreamBooth-LoRA and textual inversion trained on
the same photos under the same identifier, evaluated the DreamBooth paper's way (CLIP-I and DINO against
the photos, CLIP-T against the prompt without the identifier) and compared with the untrained model.

    python sweeps/dreambooth_methods.py --preset tiny                   # CPU, a drawn toy, a few minutes
    python sweeps/dreambooth_methods.py --data-dir ~/dreambooth/dataset --subject dog2   # DreamBench, SD 1.5
    python sweeps/dreambooth_methods.py --data-dir photos/ --class-noun backpack         # your own photos
    ray job submit --working-dir . -- python sweeps/dreambooth_methods.py --data-dir ... --subject dog2
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ray import tune

from sweeps.launch import Sweep, launch
from trainables.data.subject import SubjectData

SWEEP = Sweep(
    name="dreambooth_methods",
    # the paper's setting: ~5 photos, batch 1, a few hundred steps (the tiny preset forces its own size)
    base_config={"batch_size": 1, "max_steps": 800, "eval_every": 200, "lr_scheduler": "constant", "seed": 0},
    arms=(
        {"method": "lora", "lora_rank": 16, "lora_alpha": 16.0},
        # full UNet, alone and with the base model's own class images keeping "dog" a dog
        {"method": "dreambooth", "with_prior_preservation": tune.grid_search([False, True])},
        {"method": "dreambooth_lora", "lora_rank": 16, "lora_alpha": 16.0, "with_prior_preservation": True},
        {"method": "textual_inversion", "num_vectors": 1, "max_steps": 2000},
    ),
    data=SubjectData(identifier="sks"),
    search_alg="grid",
    scheduler="fifo",
    metric="eval/dino",  # subject fidelity; the paper's preferred measure (CLIP-I ignores identity details)
    mode="max",
)

if __name__ == "__main__":
    sys.exit(launch(SWEEP))
