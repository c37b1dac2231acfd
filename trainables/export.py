"""Files every Stable Diffusion tool loads, written by this project's own key maps.

- **kohya LoRA** (AUTOMATIC1111, Forge, ComfyUI, InvokeAI, and diffusers' ``load_lora_weights``): one
  ``lora_unet_*`` / ``lora_te_*`` entry per adapted module, named by the module's path with ``_`` for ``.``,
  holding ``lora_down.weight`` (peft's ``lora_A``), ``lora_up.weight`` (``lora_B``) and a scalar ``.alpha``
  with the **trained** alpha (scale = alpha / rank, so the file loads at the strength it was trained at), plus
  ``ss_*`` metadata in the safetensors header.
- **Textual Inversion, A1111 layout**: ``{"emb_params": [n_vectors, dim]}``; the token is the file's name.
- **Single-file checkpoint** in the original Stable Diffusion (LDM) layout: ``model.diffusion_model.*`` (UNet),
  ``first_stage_model.*`` (VAE), ``cond_stage_model.transformer.*`` (CLIP text encoder), and the way back.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

KOHYA_LORA_FILE = "lora_kohya.safetensors"  # A1111/ComfyUI name a LoRA by its file: rename it freely
CHECKPOINT_FILE = "model.safetensors"  # the single-file checkpoint (A1111 models/Stable-diffusion, ComfyUI)


# ---------------------------------------------------------------- kohya LoRA


def kohya_lora_state(unet, text_encoder=None, adapter: str = "default") -> dict[str, torch.Tensor]:
    """The kohya-format tensors of the LoRA layers peft injected into ``unet`` (and ``text_encoder``).

    Each module's ``.alpha`` is its trained scale times its rank, so a loader that computes alpha / rank gets
    back exactly the scale the adapter trained with (whatever alpha, rank pattern or rsLoRA produced it)."""
    state: dict[str, torch.Tensor] = {}
    for prefix, model in (("lora_unet", unet), ("lora_te", text_encoder)):
        if model is None:
            continue
        root = _text_model_prefix(model) if prefix == "lora_te" else ""
        for path, module in model.named_modules():
            lora_a = getattr(module, "lora_A", None)
            if lora_a is None or adapter not in lora_a:
                continue
            down = lora_a[adapter].weight
            up = module.lora_B[adapter].weight
            name = f"{prefix}_{(root + path).replace('.', '_')}"
            state[f"{name}.lora_down.weight"] = down.detach().float().cpu().contiguous()
            state[f"{name}.lora_up.weight"] = up.detach().float().cpu().contiguous()
            state[f"{name}.alpha"] = torch.tensor(float(module.scaling[adapter]) * down.shape[0])
    return state


def _text_model_prefix(text_encoder) -> str:
    """``text_model.``, the CLIP text encoder's inner module every SD checkpoint and kohya file names, when
    this transformers version's ``CLIPTextModel`` has no such wrapper (transformers 5 flattened it)."""
    return "" if hasattr(text_encoder, "text_model") else "text_model."


def kohya_metadata(state: dict[str, torch.Tensor], base_model: str, steps: int, resolution: int, seed: int,
                   trigger: str | None = None, title: str = "") -> dict[str, str]:  # fmt: skip
    """The ``ss_*`` header kohya's sd-scripts writes and A1111/ComfyUI show: network dim and alpha, base
    model, steps, resolution, seed, and the trigger word's tag frequency (where there is one)."""
    ranks = sorted({int(v.shape[0]) for k, v in state.items() if k.endswith("lora_down.weight")})
    alphas = sorted({round(float(v), 6) for k, v in state.items() if k.endswith(".alpha")})
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(ranks[-1] if ranks else 0),
        "ss_network_alpha": f"{alphas[-1]:g}" if alphas else "0",
        "ss_base_model_version": "sd_v1",
        "ss_sd_model_name": str(base_model),
        "ss_max_train_steps": str(steps),
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_seed": str(seed),
        "ss_output_name": title or "sdsweep_lora",
        "ss_training_comment": "trained by sdsweep; alpha per module is the trained alpha",
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.title": title or "sdsweep LoRA",
    }
    if any(k.startswith("lora_te_") for k in state):
        meta["ss_network_args"] = json.dumps({"train_text_encoder": True})
    if trigger:
        meta["ss_tag_frequency"] = json.dumps({"sdsweep": {trigger: steps}})
    return meta


def save_kohya_lora(unet, out_dir: Path, text_encoder=None, **metadata) -> Path:
    """Write ``lora_kohya.safetensors`` (see :func:`kohya_lora_state`, :func:`kohya_metadata`)."""
    from safetensors.torch import save_file

    state = kohya_lora_state(unet, text_encoder)
    path = Path(out_dir) / KOHYA_LORA_FILE
    save_file(state, str(path), metadata=kohya_metadata(state, **metadata) if metadata else None)
    return path


# ---------------------------------------------------------------- Textual Inversion


def a1111_embedding_file(vectors: torch.Tensor, token: str, out_dir: Path) -> Path:
    """``<token>.safetensors`` holding ``emb_params`` ([n_vectors, dim]): A1111 names the embedding by its file,
    diffusers loads it with ``load_textual_inversion(path, token=...)``."""
    from safetensors.torch import save_file

    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", token.strip("<>")) or "embedding"
    path = Path(out_dir) / f"{name}.safetensors"
    vectors = vectors.detach().float().cpu().reshape(-1, vectors.shape[-1]).contiguous()
    save_file({"emb_params": vectors}, str(path), metadata={"sdsweep.token": token})
    return path


# ---------------------------------------------------------------- single-file checkpoints

_RESNET_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}  # fmt: skip
_VAE_ATTENTION_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_UNET_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}  # fmt: skip


def _swap(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def unet_key_to_ldm(key: str, layers_per_block: int, up_attention: list[bool]) -> str:
    """A diffusers ``UNet2DConditionModel`` key in the original layout (``model.diffusion_model.`` omitted).
    ``layers_per_block`` and which up blocks have attention come from the UNet's config."""
    per = layers_per_block + 1  # LDM numbers resnets and the down/up-sampler of a level in one sequence
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = 1 + i * per + j
        return (
            f"input_blocks.{block}.0.{_swap(rest, _RESNET_LDM)}"
            if kind == "resnets"
            else f"input_blocks.{block}.1.{rest}"
        )
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * per}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_swap(m[2], _RESNET_LDM)}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = i * per + j
        return (
            f"output_blocks.{block}.0.{_swap(rest, _RESNET_LDM)}"
            if kind == "resnets"
            else f"output_blocks.{block}.1.{rest}"
        )
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        i = int(m[1])
        return f"output_blocks.{i * per + layers_per_block}.{2 if up_attention[i] else 1}.conv.{m[2]}"
    swapped = _swap(key, _UNET_TOP)
    if swapped == key:
        raise ValueError(f"no original-layout name for UNet key {key!r}: not a Stable Diffusion 1.x/2.x UNet")
    return swapped


def vae_key_to_ldm(key: str, n_levels: int) -> str:
    """A diffusers ``AutoencoderKL`` key in the original layout (``first_stage_model.`` omitted)."""
    if m := re.fullmatch(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        level = int(m[3]) if m[1] == "encoder" else n_levels - 1 - int(m[3])  # LDM numbers decoder levels upward
        return f"{m[1]}.{m[2]}.{level}.block.{m[4]}.{_swap(m[5], {'conv_shortcut': 'nin_shortcut'})}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{n_levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_swap(m[3], {'conv_shortcut': 'nin_shortcut'})}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        return f"{m[1]}.mid.attn_1.{_swap(m[2], _VAE_ATTENTION_LDM)}"
    if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
        return f"{m[1]}.norm_out.{m[2]}"
    if re.fullmatch(r"(encoder|decoder)\.conv_(in|out)\.(.+)|(post_)?quant_conv\.(.+)", key):
        return key
    raise ValueError(f"no original-layout name for VAE key {key!r}: not a Stable Diffusion VAE")


_PREFIX = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.transformer.",
}


def checkpoint_key_map(unet, vae, text_encoder) -> dict[str, tuple[str, str]]:
    """Original-layout key -> (component, diffusers key) for every tensor of the three models."""
    unet_cfg, vae_cfg = unet.config, vae.config
    up_attention = ["CrossAttn" in t for t in unet_cfg.up_block_types]
    layers = unet_cfg.layers_per_block
    if not isinstance(layers, int):
        raise ValueError(f"layers_per_block {layers!r} varies by block: not a Stable Diffusion 1.x/2.x UNet")
    out: dict[str, tuple[str, str]] = {}
    for key in unet.state_dict():
        out[_PREFIX["unet"] + unet_key_to_ldm(key, layers, up_attention)] = ("unet", key)
    for key in vae.state_dict():
        out[_PREFIX["vae"] + vae_key_to_ldm(key, len(vae_cfg.block_out_channels))] = ("vae", key)
    root = _PREFIX["text_encoder"] + _text_model_prefix(text_encoder)
    for key in text_encoder.state_dict():
        out[root + key] = ("text_encoder", key)
    return out


def _is_vae_attention(ldm_key: str) -> bool:
    return bool(re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", ldm_key))


def checkpoint_state(unet, vae, text_encoder, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The three models as one original-layout state dict (``dtype`` for floating tensors: fp16 halves the
    file as A1111 checkpoints usually are; use float32 for an exact copy)."""
    models = {"unet": unet.state_dict(), "vae": vae.state_dict(), "text_encoder": text_encoder.state_dict()}
    state = {}
    for ldm_key, (component, key) in checkpoint_key_map(unet, vae, text_encoder).items():
        tensor = models[component][key].detach().cpu()
        if _is_vae_attention(ldm_key) and tensor.ndim == 2:  # LDM's VAE attention uses 1x1 convolutions
            tensor = tensor[:, :, None, None]
        state[ldm_key] = (tensor.to(dtype) if tensor.is_floating_point() else tensor).contiguous()
    return state


def save_checkpoint(unet, vae, text_encoder, out_dir: Path, dtype: torch.dtype = torch.float16,
                    metadata: dict[str, str] | None = None) -> Path:  # fmt: skip
    """Write ``model.safetensors``, the single-file checkpoint A1111 and ComfyUI load."""
    from safetensors.torch import save_file

    path = Path(out_dir) / CHECKPOINT_FILE
    save_file(checkpoint_state(unet, vae, text_encoder, dtype), str(path), metadata=metadata)
    return path


def load_checkpoint_into(path: Path, unet, vae, text_encoder) -> None:
    """The way back: load an original-layout checkpoint into diffusers models of the same architecture
    (every tensor must be present; a missing or unexpected key is an error naming it)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    key_map = checkpoint_key_map(unet, vae, text_encoder)
    missing = sorted(set(key_map) - set(state))
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} tensors of this architecture, e.g. {missing[0]}")
    per: dict[str, dict[str, torch.Tensor]] = {"unet": {}, "vae": {}, "text_encoder": {}}
    for ldm_key, (component, key) in key_map.items():
        tensor = state[ldm_key]
        if _is_vae_attention(ldm_key) and tensor.ndim == 4:
            tensor = tensor[:, :, 0, 0]
        per[component][key] = tensor
    for component, model in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        target = model.state_dict()
        model.load_state_dict({k: v.to(target[k].dtype) for k, v in per[component].items()}, strict=True)


# ---------------------------------------------------------------- what a trial leaves


def lora_files(unet, text_encoder, folder: Path, **info) -> list[Path]:
    """A trained LoRA twice: diffusers/peft (``pytorch_lora_weights.safetensors``) and kohya
    (``lora_kohya.safetensors``, ``info`` as its ``ss_*`` header: see :func:`kohya_metadata`)."""
    from trainables.common.lora import save_lora

    return [save_lora(unet, folder, text_encoder), save_kohya_lora(unet, folder, text_encoder, **info)]


def full_model_files(pipe, folder: Path) -> list[Path]:
    """A fine-tuned model twice: the diffusers pipeline folder ``from_pretrained`` loads (``pipeline/``) and
    the single-file checkpoint in the original layout (``model.safetensors``, fp16)."""
    pipe.save_pretrained(Path(folder) / "pipeline", safe_serialization=True)
    return [Path(folder) / "pipeline", save_checkpoint(pipe.unet, pipe.vae, pipe.text_encoder, folder)]


def model_card(method: str, base_model: str, settings: dict, metrics: dict[str, float], files: list[str],
               trigger: str | None = None, placeholder: str | None = None, run_name: str = "") -> str:  # fmt: skip
    """``README.md`` beside a trial's files: what was trained, on what, with which settings and scores, and
    how to load each file in diffusers and in A1111 / ComfyUI."""
    word = placeholder or trigger
    lines = [f"# {run_name or method}", "", f"Trained by sdsweep: method **{method}** on base model `{base_model}`."]
    if placeholder:
        lines.append(f"Placeholder token: `{placeholder}` (put it in prompts).")
    elif trigger:
        lines.append(f"Trigger word: `{trigger}` (put it in prompts).")
    lines += ["", "## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(settings.items())]
    scores = {k: v for k, v in sorted(metrics.items()) if k.startswith(("eval/", "train/loss"))}
    if scores:
        lines += ["", "## Final scores (same prompts and seeds as the sweep's baseline)", "", "| metric | value |",
                  "|---|---|", *(f"| {k} | {v:.4f} |" for k, v in scores.items())]  # fmt: skip
    lines += ["", "## Files and how to load them", ""]
    prompt = f"a photo of {word}" if word else "your prompt"
    for name in files:
        if name == "pytorch_lora_weights.safetensors":
            lines += [f"- `{name}`: diffusers / peft LoRA (rank and alpha in its metadata).", "  ```python",
                      f"  pipe = StableDiffusionPipeline.from_pretrained({base_model!r})",
                      f"  pipe.load_lora_weights('.', weight_name='{name}')",
                      f"  image = pipe({prompt!r}).images[0]", "  ```"]  # fmt: skip
        elif name == KOHYA_LORA_FILE:
            lines += [f"- `{name}`: kohya-format LoRA for AUTOMATIC1111 / Forge (`models/Lora/`, prompt "
                      f"`<lora:{Path(name).stem}:1>`; rename the file to rename the tag) and ComfyUI (`models/loras/`, "
                      "LoraLoader). Each module's `.alpha` is the trained alpha, so strength 1 is the trained scale. "
                      "diffusers loads it too: "
                      f"`pipe.load_lora_weights('.', weight_name='{name}')`."]  # fmt: skip
        elif name == "learned_embeds.safetensors":
            lines += [f"- `{name}`: diffusers textual inversion: "
                      f"`pipe.load_textual_inversion('.', weight_name='{name}')`, "
                      f"then prompt with `{word}`."]  # fmt: skip
        elif name.endswith(".safetensors") and placeholder:
            lines += [f"- `{name}`: AUTOMATIC1111 embedding (`emb_params`; put it in `embeddings/`, prompt with "
                      f"`{Path(name).stem}`); ComfyUI: `embedding:{Path(name).stem}`. diffusers: "
                      f"`pipe.load_textual_inversion('{name}', token='{placeholder}')`."]  # fmt: skip
        elif name == "pipeline":
            lines += ["- `pipeline/`: the whole diffusers pipeline: "
                      "`StableDiffusionPipeline.from_pretrained('pipeline')`."]  # fmt: skip
        elif name == CHECKPOINT_FILE:
            lines += [f"- `{name}`: single-file checkpoint in the original Stable Diffusion layout (fp16) for "
                      "AUTOMATIC1111 (`models/Stable-diffusion/`) and ComfyUI (`models/checkpoints/`); diffusers: "
                      f"`StableDiffusionPipeline.from_single_file('{name}')`."]  # fmt: skip
    lines.append("")
    return "\n".join(lines)


def card_writer(trial, base_model: str, trigger: str | None = None, placeholder: str | None = None,
                run_name: str = ""):  # fmt: skip
    """The ``card`` callback of a trial's recorder: its settings now, its metrics and files at the end."""
    settings = trial.params()

    def write(metrics: dict[str, float], files: list[str]) -> str:
        return model_card(trial.method, base_model, settings, metrics, files, trigger, placeholder, run_name)

    return write


def kohya_info(trial, base_model: str, trigger: str | None, title: str) -> dict:
    """The kohya header's training facts of one trial (see :func:`kohya_metadata`)."""
    args = trial.train
    return dict(base_model=base_model, steps=args.max_steps, resolution=args.resolution, seed=args.seed,
                trigger=trigger, title=title)  # fmt: skip
