"""LoRA adapters on the UNet and the text encoder (peft), and the diffusers-format file both LoRA recipes
write. Shared by ``methods/lora.py`` and ``methods/dreambooth_lora.py``."""

from __future__ import annotations

from pathlib import Path

import torch

from trainables.common.config import bad, check_lr, check_number, check_positive_ints

# Names of UNet submodules a LoRA may wrap (SD 1.x / 2.x UNet2DConditionModel)
UNET_LORA_TARGETS = frozenset(
    {
        "to_q", "to_k", "to_v", "to_out.0",  # attention projections (self and cross)
        "proj_in", "proj_out",  # transformer block in/out projections
        "ff.net.0.proj", "ff.net.2",  # feed-forward
        "conv1", "conv2", "conv_shortcut", "time_emb_proj",  # resnet blocks
    }
)  # fmt: skip
# the CLIP text encoder's attention projections, as diffusers' LoRA scripts wrap them
TEXT_ENCODER_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
# peft inits that leave the base weights untouched, so the saved adapter loads onto the stock model
# (PiSSA/OLoRA rewrite the base weights and would need a conversion step on save)
LORA_INITS = ("default", "gaussian")
ADAPTER_FILE = "pytorch_lora_weights.safetensors"


def check_lora_fields(cfg) -> None:
    """The checks of the fields every LoRA recipe has (rank, alpha, targets, init)."""
    check_positive_ints(cfg, ("lora_rank",))
    check_number("lora_alpha", cfg.lora_alpha, "use a positive number (alpha = rank gives scale 1)")
    if not cfg.lora_alpha > 0:
        bad("lora_alpha", cfg.lora_alpha, "use a positive number (alpha = rank gives scale 1)")
    if not cfg.lora_target_modules:
        bad("lora_target_modules", cfg.lora_target_modules, "name at least one module, e.g. ('to_q', 'to_v')")
    unknown = [m for m in cfg.lora_target_modules if m not in UNET_LORA_TARGETS]
    if unknown:
        bad("lora_target_modules", unknown, f"choose from {sorted(UNET_LORA_TARGETS)}")
    if cfg.lora_init not in LORA_INITS:
        bad("lora_init", cfg.lora_init, f"choose one of {LORA_INITS} (inits that keep the base weights)")


def check_text_encoder_fields(cfg) -> None:
    if not isinstance(cfg.train_text_encoder, bool):
        bad("train_text_encoder", cfg.train_text_encoder, "use True or False")
    if cfg.text_encoder_lr is not None:
        if not cfg.train_text_encoder:
            bad("text_encoder_lr", cfg.text_encoder_lr,
                "the text encoder is frozen: set train_text_encoder=True, or drop text_encoder_lr")  # fmt: skip
        check_lr("text_encoder_lr", cfg.text_encoder_lr)


def add_lora(model: torch.nn.Module, rank: int, alpha: float, targets, init: str = "default") -> list:
    """Freeze ``model``, wrap its ``targets`` with a LoRA adapter, return the trainable parameters
    (kept in float32 even when the frozen base runs in half precision)."""
    from peft import LoraConfig

    model.requires_grad_(False)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        init_lora_weights=True if init == "default" else init,
        target_modules=list(targets),
    )
    if hasattr(model, "add_adapter"):  # diffusers' UNet and transformers' CLIPTextModel both offer it
        model.add_adapter(config)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


def save_lora(unet, out_dir: Path, text_encoder=None) -> Path:
    """Write the UNet's (and, when it has one, the text encoder's) LoRA as diffusers-format safetensors,
    with each peft config (rank, alpha, targets) as metadata so ``load_lora_weights`` restores the scale."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    def layers(model):  # peft's own key names (lora_A/lora_B), which diffusers' loader reads as they are; the
        # older diffusers names (lora.down/up) exist only for linear layers, so a LoRA on convolutions and
        # attention converted to them came out mixed and the loader dropped the attention half
        state = get_peft_model_state_dict(model)
        return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}

    with_text = text_encoder is not None and getattr(text_encoder, "peft_config", None)
    StableDiffusionPipeline.save_lora_weights(
        out_dir,
        unet_lora_layers=layers(unet),
        text_encoder_lora_layers=layers(text_encoder) if with_text else None,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=text_encoder.peft_config["default"].to_dict() if with_text else None,
        safe_serialization=True,
    )
    return Path(out_dir) / ADAPTER_FILE
