"""A captioned folder: a style (or any concept) learned from images with their own captions.

Captions come from ``metadata.jsonl`` beside the images (the Hugging Face imagefolder convention, one
``{"file_name": ..., "text": ...}`` per line) or, without it, from a ``.txt`` file beside each image (the
kohya convention: ``01.png`` + ``01.txt``). An optional trigger word goes in front of every caption
("nosnjaoutfit, a woman in a red coat"), so the style is called up by it.

Eval prompts come in two groups with the same seeds: "main" with the trigger in front (CLIP-T scored on the
prompt without it), and "plain", the same prompts without the trigger (``eval/clip_t_plain``), which shows
how much the style leaks into prompts that do not ask for it.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from eval.evaluate import EvalPrompt, EvalSet
from eval.metrics import metrics_for
from trainables.data.base import DatasetError, PreparedData
from trainables.data.encoding import cache_key
from trainables.data.images import (
    center_crop_resize,
    encode_cached,
    file_digest,
    image_files,
    load_image_file,
    warn,
    warn_if_upscaled,
)
from trainables.data.tiny_sets import STYLE_TRIGGER, write_style_set

METADATA_FILE = "metadata.jsonl"
# bump when loading, cropping or captioning changes, so stale encoded caches are not reused
CAPTIONED_VERSION = 1
GENERATED_SET = "style-v1"  # the tiny preset's drawn shapes, under <cache>/generated/

# subjects a style should carry over to, none of them in a typical style set
DEFAULT_EVAL_PROMPTS = (
    "a lighthouse on a rocky coast",
    "a cat asleep on a windowsill",
    "a bowl of fruit on a table",
    "a city street in the rain",
    "a portrait of an old fisherman",
    "a small house in a snowy forest",
    "a bicycle leaning against a fence",
    "a sailboat at sunset",
)


def read_captions(folder: Path, caption_extension: str = ".txt") -> tuple[list[tuple[Path, str]], list[str]]:
    """``(image path, caption)`` pairs of a folder, and the warnings for what was left out (not printed here:
    :meth:`CaptionedData.check` reads the folder too and must stay quiet). Bad metadata raises."""
    meta = folder / METADATA_FILE
    if meta.is_file():
        return _from_metadata(folder, meta)
    if (folder / "metadata.csv").is_file():
        raise DatasetError(
            f"{folder / 'metadata.csv'} is not read: write {METADATA_FILE} instead "
            '({"file_name": ..., "text": ...} per line) or a .txt caption beside each image'
        )
    pairs, warnings = [], []
    for path in image_files(folder):
        sidecar = path.with_suffix(caption_extension)
        try:
            caption = sidecar.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            warnings.append(f"skipping {path}: no caption file {sidecar.name} beside it (and no {METADATA_FILE})")
            continue
        except (OSError, UnicodeDecodeError) as err:
            warnings.append(f"skipping {path}: cannot read {sidecar.name} ({err})")
            continue
        pairs.append((path, " ".join(caption.split())))
    return pairs, warnings


def _from_metadata(folder: Path, meta: Path) -> tuple[list[tuple[Path, str]], list[str]]:
    fix = '{"file_name": "01.png", "text": "a caption"}'
    pairs, warnings, seen = [], [], {}
    with open(meta, encoding="utf-8-sig") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{meta} line {number} is not JSON ({err.msg}): write one {fix} per line") from None
            if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
                raise DatasetError(f'{meta} line {number} has no "file_name": write one {fix} per line')
            if not isinstance(row.get("text"), str):
                raise DatasetError(f'{meta} line {number} has no "text" caption: write one {fix} per line')
            name = row["file_name"]
            if name in seen:
                raise DatasetError(
                    f"{meta} lists {name} twice (lines {seen[name]} and {number}): keep one caption per image"
                )
            seen[name] = number
            path = folder / name
            if not path.is_file():
                warnings.append(f"skipping {path}: listed in {METADATA_FILE} (line {number}) but not there")
                continue
            pairs.append((path, " ".join(row["text"].split())))
    listed = {(folder / name).resolve() for name in seen}
    unlisted = [p.name for p in image_files(folder) if p.resolve() not in listed]
    if unlisted:
        shown = ", ".join(unlisted[:5]) + (f" and {len(unlisted) - 5} more" if len(unlisted) > 5 else "")
        warnings.append(f"{len(unlisted)} images in {folder} have no row in {METADATA_FILE} and are not used: {shown}")
    return pairs, warnings


def has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w<>]){re.escape(word)}(?![\w<>])", text) is not None


@dataclass(frozen=True)
class CaptionedData:
    """A folder of captioned images (a style, an outfit, a look), encoded once and shared by the trials."""

    kind = "captioned"  # a class attribute, not a field: the data kind every part keys on

    data_dir: str | None = None  # the images with metadata.jsonl or .txt captions; None needs use_generated_set
    trigger_word: str | None = None  # put in front of every caption and main eval prompt; None: captions as is
    eval_prompts: tuple[str, ...] = ()  # without the trigger word; empty: DEFAULT_EVAL_PROMPTS
    num_eval_prompts: int = 8  # the first N eval prompts (each once per group, one seed each)
    min_images: int = 1  # a style can be learned from a handful; raise it to catch a half-copied folder
    use_generated_set: bool = False  # without data_dir: the drawn shapes of trainables.data.tiny_sets (CPU runs)
    caption_extension: str = ".txt"  # kohya's default sidecar; some sets use ".caption"

    # ------------------------------------------------------------ cheap, before anything starts

    @property
    def identifier(self) -> str | None:
        """The trigger word (textual inversion swaps its placeholder token in for it); the generated set's own
        when it is used without one."""
        if self.trigger_word is None and self.data_dir is None and self.use_generated_set:
            return STYLE_TRIGGER
        return self.trigger_word

    def check(self) -> None:
        """Reject bad settings and unusable folders before any work starts (one-line :class:`DatasetError`)."""
        if self.data_dir is None and not self.use_generated_set:
            raise DatasetError(
                "captioned data needs images: pass --data-dir PATH (a folder of images with metadata.jsonl, "
                "or a .txt caption beside each image)"
            )
        trigger = self.trigger_word
        if trigger is not None and (not trigger or trigger.split() != [trigger] or "," in trigger):
            raise DatasetError(f"trigger_word={trigger!r} is not valid: use one word without commas, e.g. sdswstyle")
        for name, value in (("num_eval_prompts", self.num_eval_prompts), ("min_images", self.min_images)):
            if value < 1:
                raise DatasetError(f"{name}={value} is not valid: use 1 or more")
        if not self.caption_extension.startswith(".") or len(self.caption_extension) < 2:
            raise DatasetError(f"caption_extension={self.caption_extension!r} is not valid: use e.g. '.txt'")
        prompts = self._base_prompts()
        if self.num_eval_prompts > len(prompts):
            source = "eval_prompts" if self.eval_prompts else "the default prompt list"
            raise DatasetError(
                f"num_eval_prompts={self.num_eval_prompts} but {source} has {len(prompts)}: "
                f"use {len(prompts)} or fewer, or list more eval_prompts"
            )
        for i, prompt in enumerate(self.eval_prompts):
            if not isinstance(prompt, str) or not prompt.strip():
                raise DatasetError(f"eval_prompts[{i}]={prompt!r} is not valid: use non-empty text")
            if self.identifier and has_word(prompt, self.identifier):
                raise DatasetError(
                    f"eval_prompts[{i}]={prompt!r} contains the trigger word {self.identifier!r}: "
                    "leave it out, it is put in front of the main prompts"
                )
        if self.data_dir is None:
            return
        folder = Path(self.data_dir).expanduser()
        if not folder.is_dir():
            raise DatasetError(f"--data-dir {self.data_dir}: no such folder")
        pairs, _ = read_captions(folder, self.caption_extension)
        if len(pairs) < self.min_images:
            if not image_files(folder) and not (folder / METADATA_FILE).is_file():
                problem = "holds no .jpg/.jpeg/.png/.webp/.bmp files"
            else:
                problem = (
                    f"has {len(pairs)} images with captions ({METADATA_FILE} rows or {self.caption_extension} files)"
                )
            raise DatasetError(
                f"{folder} {problem} and captioned data needs at least {self.min_images}: add captioned images"
            )

    @classmethod
    def add_cli_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--data-dir", help="captioned data: a folder of images with metadata.jsonl or .txt captions"
        )
        parser.add_argument("--trigger-word", help="captioned data: a word put in front of every caption")

    def with_cli_args(self, args: argparse.Namespace) -> CaptionedData:
        changes = {
            name: getattr(args, name, None)
            for name in ("data_dir", "trigger_word")
            if getattr(args, name, None) is not None
        }
        return replace(self, **changes) if changes else self

    # ------------------------------------------------------------ once per sweep

    def prepare(self, model: str, resolution: int, cache_dir: Path, progress: bool = True) -> PreparedData:
        """Read the captions, load the images (skipping unreadable ones with a warning), crop them square,
        encode them with ``model``'s frozen VAE and text encoder (or reuse the cached encoding), make the
        eval prompts."""
        self.check()
        cache_dir = Path(cache_dir)
        if self.data_dir is not None:
            folder = Path(self.data_dir).expanduser()
        else:
            folder = write_style_set(cache_dir / "generated" / GENERATED_SET)
        pairs, warnings = read_captions(folder, self.caption_extension)
        for message in warnings:
            warn(message)
        loaded = [(path, image, caption) for path, caption in pairs if (image := load_image_file(path)) is not None]
        if len(loaded) < self.min_images:
            raise DatasetError(
                f"{folder}: {len(loaded)} usable captioned images, and captioned data needs at least "
                f"{self.min_images} (min_images): add images or replace the unreadable ones"
            )
        warn_if_upscaled([p for p, _, _ in loaded], [img for _, img, _ in loaded], resolution, folder)
        images = [center_crop_resize(image, resolution) for _, image, _ in loaded]
        captions = [self._with_trigger(caption) for _, _, caption in loaded]
        if self.identifier:
            already = sum(has_word(caption, self.identifier) for _, _, caption in loaded)
            if already:
                warn(
                    f"{already} of {len(loaded)} captions in {folder} already contain {self.identifier!r}: "
                    "used as written, not prefixed again"
                )

        ids = [f"captioned-v{CAPTIONED_VERSION}:{file_digest(path)}" for path, _, _ in loaded]
        cache_file = cache_dir / "encoded" / f"captioned-{cache_key(model, resolution, ids, captions)}.pt"
        encoded = encode_cached(model, images, captions, resolution, cache_file, progress)
        return PreparedData(
            kind=self.kind,
            train=encoded,
            eval=EvalSet(tuple(self.eval_prompt_list()), references=(), metrics=metrics_for(self.kind)),
            identifier=self.identifier,
            train_images=list(images),
        )

    def eval_prompt_list(self) -> list[EvalPrompt]:
        """The first ``num_eval_prompts`` prompts: "main" ones with the trigger word in front (scored without
        it), then, with a trigger word, the same as "plain" ones; prompt ``i`` has seed ``i`` in both groups,
        so each pair differs by the trigger word only."""
        trigger = self.identifier
        main, plain = [], []
        for i, prompt in enumerate(self._base_prompts()[: self.num_eval_prompts]):
            label = f"{i:02d}-" + ("-".join(re.findall(r"[a-z0-9]+", prompt.lower())[:4])[:32] or "prompt")
            if trigger:
                main.append(EvalPrompt(f"main/{label}", f"{trigger}, {prompt}", i, score_text=prompt))
                plain.append(EvalPrompt(f"plain/{label}", prompt, i, group="plain"))
            else:
                main.append(EvalPrompt(f"main/{label}", prompt, i))
        return main + plain

    def _base_prompts(self) -> tuple[str, ...]:
        return tuple(self.eval_prompts) or DEFAULT_EVAL_PROMPTS

    def _with_trigger(self, caption: str) -> str:
        trigger = self.identifier
        if not trigger or has_word(caption, trigger):
            return caption
        return f"{trigger}, {caption}" if caption else trigger
