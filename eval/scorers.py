"""The models that score images: CLIP (open_clip) and DINO ViT-S/16 (transformers).

Real runs load OpenAI CLIP ``ViT-L-14-quickgelu`` / ``openai`` and ``facebook/dino-vits16``; tests and the
tiny preset build tiny random ones from config, save them, and load them back through the same loaders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from trainables.common.atomic import build_once

DEFAULT_CLIP_MODEL = "ViT-L-14-quickgelu"
DEFAULT_CLIP_PRETRAINED = "openai"
DEFAULT_DINO_MODEL = "facebook/dino-vits16"


class ScorerLoadError(RuntimeError):
    """Scorer weights that cannot be loaded; the message names the model and how to use a local copy."""


@dataclass(frozen=True)
class ScorerSpec:
    """Which scorers to load. ``clip_model`` may be ``local-dir:/path`` (then ``clip_pretrained`` is unused)."""

    clip_model: str = DEFAULT_CLIP_MODEL
    clip_pretrained: str | None = DEFAULT_CLIP_PRETRAINED
    dino_model: str = DEFAULT_DINO_MODEL

    def text(self) -> str:
        """The scorer models in a few words (local folders by their name), for run params and verdicts."""

        def short(name: str | None) -> str:
            return Path(name.removeprefix("local-dir:")).name if name and "/" in name else str(name)

        clip = short(self.clip_model) + (f" ({self.clip_pretrained})" if self.clip_pretrained else "")
        return f"CLIP {clip}, DINO {short(self.dino_model)}"


class ClipScorer:
    """open_clip model + its preprocessing + tokenizer; embeddings come back L2-normalised."""

    def __init__(self, model_name: str, pretrained: str | None, device: str = "cpu"):
        import open_clip

        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device=device, require_pretrained=True
            )
            self.tokenizer = open_clip.get_tokenizer(model_name)
        except Exception as err:  # open_clip raises RuntimeError, OSError, HF errors... all mean "not loadable"
            where = model_name if model_name.startswith("local-dir:") else f"{model_name} / {pretrained}"
            raise ScorerLoadError(
                f"cannot load CLIP scorer {where} ({_first_line(err)}); pass --clip-pretrained FILE with a "
                "local open_clip checkpoint, or --clip-model local-dir:DIR"
            ) from err
        self.model = model.eval()
        self.preprocess = preprocess
        self.device = device

    @torch.no_grad()
    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        batch = torch.stack([self.preprocess(img.convert("RGB")) for img in images]).to(self.device)
        return self.model.encode_image(batch, normalize=True).float().cpu()

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return self.model.encode_text(tokens, normalize=True).float().cpu()


class DinoScorer:
    """DINO ViT: the CLS token of ``last_hidden_state`` (after the final norm), L2-normalised.

    The checkpoint's pooler is untrained, so it is neither loaded nor used.
    """

    def __init__(self, model: str, device: str = "cpu"):
        from transformers import AutoImageProcessor, ViTModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            self.processor = AutoImageProcessor.from_pretrained(model)
            self.model = ViTModel.from_pretrained(model, add_pooling_layer=False).to(device).eval()
        except Exception as err:
            raise ScorerLoadError(
                f"cannot load DINO scorer {model} ({_first_line(err)}); download it where the hub is reachable "
                f"(`hf download {model} --local-dir DIR`) and pass --dino-model DIR"
            ) from err
        self.device = device

    @torch.no_grad()
    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=[img.convert("RGB") for img in images], return_tensors="pt").pixel_values
        cls = self.model(pixel_values=pixels.to(self.device)).last_hidden_state[:, 0]
        return torch.nn.functional.normalize(cls.float(), dim=-1).cpu()


@dataclass
class Scorers:
    clip: ClipScorer
    dino: DinoScorer


_LOADED: dict[tuple[ScorerSpec, str], Scorers] = {}  # frozen scorers, shared by the trials of one process


def load_scorers(spec: ScorerSpec, device: str = "cpu") -> Scorers:
    """Load both scorers, once per process and device (they are frozen and only read); raises
    :class:`ScorerLoadError` with a one-line fix if either is missing."""
    key = (spec, device)
    if key not in _LOADED:
        _LOADED[key] = Scorers(ClipScorer(spec.clip_model, spec.clip_pretrained, device),
                               DinoScorer(spec.dino_model, device))  # fmt: skip
    return _LOADED[key]


# ---------------------------------------------------------------- tiny random scorers


def build_tiny_clip(out_dir: Path, image_size: int = 64, seed: int = 0) -> str:
    """Save a tiny random open_clip model (real BPE tokenizer) as a local dir; return its model name.

    The name is ``local-dir:<out_dir>``, loadable with :class:`ClipScorer` like any open_clip model.
    """
    import open_clip
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    name = f"local-dir:{out_dir}"
    if (out_dir / "open_clip_model.safetensors").exists():
        return name
    model_cfg = {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": image_size,
            "layers": 2,
            "width": 32,
            "patch_size": 16,
            "head_width": 16,
        },
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    preprocess_cfg = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)

    def write(folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "open_clip_config.json").write_text(
            json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, indent=2)
        )
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / "open_clip_model.safetensors"))  # last: marks the folder complete

    build_once(out_dir, write, lambda d: (d / "open_clip_model.safetensors").exists())
    return name


def build_tiny_dino(out_dir: Path, image_size: int = 64, seed: int = 0) -> Path:
    """Save a tiny random DINO-style ViT (patch 16, like ViT-S/16) with its image processor; return the dir."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    out_dir = Path(out_dir)

    def complete(folder: Path) -> bool:  # save_pretrained writes config.json before the weights
        return all((folder / f).exists() for f in ("config.json", "model.safetensors", "preprocessor_config.json"))

    if complete(out_dir):
        return out_dir
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=image_size,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
    )
    model = ViTModel(config, add_pooling_layer=False)

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        ViTImageProcessor(
            size={"height": image_size, "width": image_size},
            image_mean=[0.485, 0.456, 0.406],  # ImageNet statistics, as dino-vits16's processor
            image_std=[0.229, 0.224, 0.225],
        ).save_pretrained(folder)

    return build_once(out_dir, write, complete)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= 200 else line[:197] + "..."
