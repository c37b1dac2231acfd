"""DreamBooth's prior preservation, shared by ``methods/dreambooth.py`` and ``methods/dreambooth_lora.py``:
the settings' checks and the class half of each batch."""

from __future__ import annotations

import torch

from trainables.common.config import bad, check_number, check_positive_ints
from trainables.common.loop import BatchCursor
from trainables.data.class_images import class_set


def check_prior_fields(cfg) -> None:
    """``with_prior_preservation`` and the three settings that only mean something with it."""
    if not isinstance(cfg.with_prior_preservation, bool):
        bad("with_prior_preservation", cfg.with_prior_preservation, "use True or False")
    for name in ("prior_loss_weight", "num_class_images", "class_prompt"):
        value = getattr(cfg, name)
        if value is not None and not cfg.with_prior_preservation:
            bad(name, value, "it only applies with prior preservation: set with_prior_preservation=True, or drop it")
    if cfg.prior_loss_weight is not None:
        check_number("prior_loss_weight", cfg.prior_loss_weight, "use a number > 0 (the paper's is 1.0)")
        if not cfg.prior_loss_weight > 0:
            bad("prior_loss_weight", cfg.prior_loss_weight, "use a number > 0 (the paper's is 1.0)")
    if cfg.num_class_images is not None:
        check_positive_ints(cfg, ("num_class_images",))
    if cfg.class_prompt is not None and (not isinstance(cfg.class_prompt, str) or not cfg.class_prompt.strip()):
        bad("class_prompt", cfg.class_prompt, "use a prompt naming the class, e.g. 'a photo of dog'")


def prior_loss_weight(cfg) -> float:
    return 1.0 if cfg.prior_loss_weight is None else float(cfg.prior_loss_weight)


def resolved_prior(cfg) -> dict:
    """The prior weight a prior-preservation trial uses when unset (the count and prompt come from the sweep)."""
    return {"prior_loss_weight": prior_loss_weight(cfg)} if cfg.with_prior_preservation else {}


def class_images(cfg, prepared, ctx, generator: torch.Generator):
    """The trial's prior-preservation set and a cursor over it (its own shuffled order), or ``(None, None)``
    without prior preservation."""
    if not cfg.with_prior_preservation:
        return None, None
    data = class_set(prepared, cfg.class_prompt, cfg.num_class_images or ctx.num_class_images)
    return data, BatchCursor(len(data), generator)
