"""Loading Stable Diffusion, and building the tiny random one that tests and the CPU preset use.

Both go through :func:`load_pipeline`: the tiny model is saved with ``save_pretrained`` and read back with
``from_pretrained`` exactly as a hub id or a downloaded SD 1.5 folder is.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import torch

from trainables.common.atomic import build_once

SD15_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# SD 1.5's noise schedule, reused by the tiny model so both train on the same timesteps
_SD15_SCHEDULE = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    steps_offset=1,
    skip_prk_steps=True,
    set_alpha_to_one=False,
)


class ModelLoadError(RuntimeError):
    """A model whose weights cannot be loaded; the message names it and how to point at a local copy."""


def load_pipeline(model: str, torch_dtype: torch.dtype | None = None):
    """Load a Stable Diffusion pipeline from a hub id or a local ``save_pretrained`` folder.

    The safety checker is not loaded: it blanks images at random and is no part of a fine-tune's quality.
    Raises :class:`ModelLoadError` (never falls back to random weights) when the weights are not there.
    """
    import diffusers
    from diffusers import StableDiffusionPipeline

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()  # "Loading pipeline components" says nothing to a user
    _quiet_transformers()
    local = Path(model).expanduser()
    looks_local = local.exists() or model.startswith((".", "/", "~"))
    if looks_local and not (local / "model_index.json").exists():
        raise ModelLoadError(
            f"--model {model}: no Stable Diffusion folder there (no model_index.json); "
            "pass a folder written by save_pretrained or a hub id"
        )
    try:
        return StableDiffusionPipeline.from_pretrained(
            str(local) if looks_local else model,
            torch_dtype=torch_dtype,
            safety_checker=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"cannot load Stable Diffusion model {model!r} ({reason}); download it where the hub is reachable "
            f"(`hf download {model} --local-dir DIR`) and pass --model DIR, or use --preset tiny on CPU"
        ) from err


# the base pipeline this process loaded, kept on the CPU: a later trial in the same process (Tune reuses trial
# processes) gets a copy instead of reading the weights again
_BASE: dict[tuple[str, str], object] = {}


def load_for_training(model: str, device: str, dtype: torch.dtype):
    """A fresh copy of the base pipeline on ``device`` in ``dtype``, progress bars off (a trial samples it at
    every eval). The weights are read once per process; each call gets its own copy to train, so what one
    trial adds (a LoRA, a token) never reaches the next."""
    import copy

    key = (model, str(dtype))
    if key not in _BASE:
        pipe = load_pipeline(model)
        pipe.set_progress_bar_config(disable=True)
        _BASE.clear()  # one base model per process
        _BASE[key] = pipe.to("cpu", dtype)
    return copy.deepcopy(_BASE[key]).to(device, dtype)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards"


# ---------------------------------------------------------------- the real CLIP tokenizer, offline


def write_clip_tokenizer_files(out_dir: Path) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` of OpenAI's CLIP BPE from open_clip's bundled vocabulary.

    Token ids equal open_clip's (and SD 1.5's tokenizer): byte symbols, their ``</w>`` forms, one token per
    merge, then the two special tokens.
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe(), "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # the slice open_clip and CLIP use
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = out_dir / "vocab.json", out_dir / "merges.txt"
    vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False), "utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")
    return vocab_file, merges_file


def clip_tokenizer(work_dir: Path):
    """A real ``CLIPTokenizer`` (77 tokens) built offline from open_clip's vocabulary."""
    from transformers import CLIPTokenizer

    vocab_file, merges_file = write_clip_tokenizer_files(work_dir)
    return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)


# ---------------------------------------------------------------- the tiny model


def build_tiny_sd(out_dir: Path, seed: int = 0) -> Path:
    """Build a tiny random SD pipeline from config (fixed seed), save it, return its folder.

    UNet 32/64 channels with cross-attention width 32, a 2-block VAE (latents at half the image size),
    a 32-wide CLIP text encoder with the real 49408-token vocabulary. Reused if already saved.
    """
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out_dir = Path(out_dir)
    if (out_dir / "model_index.json").exists():
        return out_dir
    _quiet_transformers()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=64,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=49408,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )

    def write(tmp: Path) -> None:
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=clip_tokenizer(tmp / "_bpe"),
            unet=unet,
            scheduler=PNDMScheduler(**_SD15_SCHEDULE),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(tmp)
        shutil.rmtree(tmp / "_bpe")

    # two launches on a fresh cache may build it at once: each into its own folder, the first rename wins
    return build_once(out_dir, write, lambda d: (d / "model_index.json").exists())
