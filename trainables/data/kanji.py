"""Kanji (image, caption) pairs from KanjiVG glyphs and KANJIDIC2 English meanings.

The dataset is rendered once into a cache directory in the Hugging Face imagefolder convention
(``metadata.jsonl`` beside the PNGs) and reused by every trial and every later sweep.

    python -m trainables.data.kanji --size 256            # build (or reuse) the full cache
    python -m trainables.data.kanji --size 64 --max-chars 50

KanjiVG (CC BY-SA 3.0) and KANJIDIC2 (CC BY-SA 4.0, EDRDG): see NOTICE.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import sqlite3
import sys
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from eval.evaluate import EvalPrompt, EvalSet
from eval.metrics import metrics_for
from trainables.common.atomic import build_once
from trainables.data.base import DatasetError, PreparedData

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "sdsweep"
DEFAULT_CAPTION_TEMPLATE = 'kanji meaning "{meanings}"'
# 5% of characters never seen in training: ~320 of 6.4k, plenty for fixed eval prompts
DEFAULT_HOLDOUT_PERCENT = 5
# bump when rendering or captioning changes, so stale caches are rebuilt rather than reused
DATASET_VERSION = 1

_BASE_SVG = re.compile(r"^[0-9a-f]{5}\.svg$")
_STROKE_NUMBERS = re.compile(r'<g id="kvg:StrokeNumbers_[^"]*".*?</g>', re.DOTALL)


@dataclass(frozen=True)
class KanjiRecord:
    """One row of the dataset: the image path is relative to the dataset directory."""

    file_name: str
    character: str
    meanings: tuple[str, ...]
    caption: str
    split: str  # "train" or "heldout"


# ---------------------------------------------------------------- sources


def kanjivg_files() -> dict[str, Path]:
    """Map each KanjiVG base character to its SVG file (variants such as ``-Kaisho`` are skipped)."""
    try:
        root = resources.files("kanji")
    except ModuleNotFoundError as err:
        raise DatasetError("KanjiVG SVGs not found: install them with `pip install kanjivg`") from err
    files = {}
    for entry in root.iterdir():
        if _BASE_SVG.match(entry.name):
            files[chr(int(entry.name[:5], 16))] = Path(str(entry))
    if not files:
        raise DatasetError("the kanjivg package holds no SVG files: reinstall it with `pip install -U kanjivg`")
    return files


def kanjidic_meanings(characters: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """English KANJIDIC2 meanings per character (characters without any are left out).

    Reads jamdict's KANJIDIC2 tables in one query: the same rows as
    ``Jamdict().kd2.get_char(c).meanings(english_only=True)``, ~2000x faster than a lookup per character.
    """
    try:
        from jamdict import Jamdict
    except ImportError as err:
        raise DatasetError("KANJIDIC2 not found: install it with `pip install jamdict jamdict-data`") from err
    jam = Jamdict()
    if not jam.has_kd2() or not jam.kd2_file:
        raise DatasetError("jamdict has no KANJIDIC2 data: install it with `pip install jamdict-data`")
    wanted = set(characters)
    meanings: dict[str, list[str]] = {}
    with closing(sqlite3.connect(f"file:{jam.kd2_file}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT c.literal, m.value FROM character c"
            " JOIN rm_group g ON g.cid = c.ID JOIN meaning m ON m.gid = g.ID"
            " WHERE m.m_lang = '' ORDER BY c.ID, g.ID, m.rowid"
        )
        for character, value in rows:
            if character in wanted and value and value.strip():
                meanings.setdefault(character, []).append(value.strip())
    return {c: tuple(v) for c, v in meanings.items()}


# ---------------------------------------------------------------- rendering and captions


def render_glyph(svg_text: str, size: int) -> Image.Image:
    """Black strokes on an opaque white RGB square of ``size`` px, stroke numbers removed."""
    import cairosvg

    svg_text = _STROKE_NUMBERS.sub("", svg_text)
    png = cairosvg.svg2png(
        bytestring=svg_text.encode("utf-8"),
        output_width=size,
        output_height=size,
        background_color="white",  # cairosvg's default is transparent, which turns black in RGB
    )
    return Image.open(io.BytesIO(png)).convert("RGB")


def make_caption(meanings: tuple[str, ...], template: str = DEFAULT_CAPTION_TEMPLATE) -> str:
    """Fill ``{meanings}`` (all, comma separated) or ``{meaning}`` (the first) in the template."""
    return template.format(meanings=", ".join(meanings), meaning=meanings[0])


def split_of(character: str, holdout_percent: int = DEFAULT_HOLDOUT_PERCENT) -> str:
    """Deterministic split by character: the same character is held out whatever the subset."""
    bucket = int(hashlib.sha1(character.encode("utf-8")).hexdigest(), 16) % 100
    return "heldout" if bucket < holdout_percent else "train"


def check_caption_template(template: str) -> None:
    """Reject a caption template that names no field or an unknown one."""
    try:
        filled = template.format(meanings="x", meaning="x")
    except (KeyError, IndexError, ValueError) as err:
        raise DatasetError(
            f"caption_template={template!r} is not valid: use the fields {{meanings}} or {{meaning}}"
        ) from err
    if filled == template:
        raise DatasetError(f"caption_template={template!r} names no field: include {{meanings}} or {{meaning}}")


# ---------------------------------------------------------------- the cached dataset


def dataset_dir(
    cache_dir: Path,
    size: int,
    caption_template: str = DEFAULT_CAPTION_TEMPLATE,
    max_chars: int | None = None,
    holdout_percent: int = DEFAULT_HOLDOUT_PERCENT,
) -> Path:
    """Where a dataset with these settings lives in the cache (one folder per setting)."""
    key = json.dumps([DATASET_VERSION, caption_template, max_chars, holdout_percent])
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:10]
    subset = f"-first{max_chars}" if max_chars else ""
    return Path(cache_dir) / "kanji" / f"{size}px{subset}-{digest}"


def build_dataset(
    cache_dir: Path = DEFAULT_CACHE_DIR,
    size: int = 256,
    caption_template: str = DEFAULT_CAPTION_TEMPLATE,
    max_chars: int | None = None,
    holdout_percent: int = DEFAULT_HOLDOUT_PERCENT,
    progress: bool = True,
) -> Path:
    """Render the dataset once and return its directory; an existing complete cache is reused.

    ``max_chars`` keeps the first N characters (by code point) that have English meanings.
    """
    if size < 16:
        raise DatasetError(f"size={size} px is too small to render a kanji: use 32 or more")
    check_caption_template(caption_template)
    out = dataset_dir(cache_dir, size, caption_template, max_chars, holdout_percent)
    if (out / "metadata.jsonl").exists():
        return out

    svgs = kanjivg_files()
    meanings = kanjidic_meanings(sorted(svgs))
    characters = sorted(meanings)
    if max_chars:
        characters = characters[:max_chars]

    def write(partial: Path) -> None:
        partial.mkdir(parents=True)
        rows = []
        for character in tqdm(
            characters, desc=f"rendering kanji at {size}px", disable=not progress, mininterval=5, unit="glyph"
        ):
            file_name = f"{ord(character):05x}.png"
            render_glyph(svgs[character].read_text(encoding="utf-8"), size).save(partial / file_name)
            rows.append(
                {
                    "file_name": file_name,
                    "character": character,
                    "meanings": list(meanings[character]),
                    "text": make_caption(meanings[character], caption_template),
                    "split": split_of(character, holdout_percent),
                }
            )
        with open(partial / "metadata.jsonl", "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    # each launch renders into its own folder (metadata.jsonl last); the first rename wins
    return build_once(out, write, lambda d: (d / "metadata.jsonl").exists())


def load_records(directory: Path) -> list[KanjiRecord]:
    """Read ``metadata.jsonl`` of a built dataset."""
    meta = Path(directory) / "metadata.jsonl"
    if not meta.exists():
        raise DatasetError(f"no kanji dataset at {directory}: build it with `python -m trainables.data.kanji --size N`")
    records = []
    with open(meta, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            records.append(
                KanjiRecord(row["file_name"], row["character"], tuple(row["meanings"]), row["text"], row["split"])
            )
    return records


def load_image(directory: Path, record: KanjiRecord) -> Image.Image:
    """Open one glyph as RGB; a corrupt or missing file names itself and the fix."""
    path = Path(directory) / record.file_name
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, SyntaxError) as err:
        raise DatasetError(
            f"cannot read {path} ({err}): delete {directory} and run the sweep again to re-render it"
        ) from err


# ---------------------------------------------------------------- what a sweep needs

# concepts no kanji has: the study's question of what the model invents for them
NOVEL_CONCEPTS = ("internet", "language model", "multimedia")


def kanji_eval_prompts(
    directory: Path,
    records: list[KanjiRecord],
    n_heldout: int,
    caption_template: str = DEFAULT_CAPTION_TEMPLATE,
    novel: tuple[str, ...] = NOVEL_CONCEPTS,
    seed: int = 0,
) -> list[EvalPrompt]:
    """Fixed eval prompts: ``n_heldout`` held-out kanji (with their glyph as reference) chosen by a stable
    hash, then the novel concepts; prompt ``i`` samples with seed ``seed + i``."""
    heldout = sorted(
        (r for r in records if r.split == "heldout"),
        key=lambda r: hashlib.sha1(r.character.encode("utf-8")).hexdigest(),
    )
    if len(heldout) < n_heldout:
        raise DatasetError(
            f"the dataset holds {len(heldout)} held-out kanji but {n_heldout} eval prompts need them: "
            "use more characters (raise --max-chars or drop it) or fewer held-out eval prompts"
        )
    prompts = [
        EvalPrompt(f"heldout/{r.character} {r.meanings[0]}", r.caption, seed + i, load_image(directory, r))
        for i, r in enumerate(heldout[:n_heldout])
    ]
    for concept in novel:
        prompts.append(EvalPrompt(f"novel/{concept}", make_caption((concept,), caption_template), seed + len(prompts)))
    return prompts


@dataclass(frozen=True)
class KanjiData:
    """The kanji experiment's data: rendered once, encoded once per model and resolution, shared by trials."""

    kind = "kanji"  # a class attribute, not a field: the data kind every part keys on

    caption_template: str = DEFAULT_CAPTION_TEMPLATE
    max_chars: int | None = None  # None = all ~6.4k characters with English meanings
    n_heldout: int = 8  # held-out kanji among the eval prompts (plus the novel concepts)
    size: int | None = None  # render size in px; None = the trials' resolution
    holdout_percent: int = DEFAULT_HOLDOUT_PERCENT

    def check(self) -> None:
        """Reject bad settings before any work starts."""
        check_caption_template(self.caption_template)
        if self.max_chars is not None and self.max_chars < 1:
            raise DatasetError(f"max_chars={self.max_chars} is not valid: use a positive number or leave it unset")
        if self.n_heldout < 0:
            raise DatasetError(f"n_heldout={self.n_heldout} is not valid: use 0 or more")

    @classmethod
    def add_cli_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--max-chars", type=int, help="kanji data: use only the first N kanji (overrides the preset)"
        )

    def with_cli_args(self, args: argparse.Namespace) -> KanjiData:
        if getattr(args, "max_chars", None) is not None:
            return replace(self, max_chars=args.max_chars)
        return self

    def prepare(self, model: str, resolution: int, cache_dir: Path, progress: bool = True) -> PreparedData:
        """Build (or reuse) the dataset, encode its train split with ``model``'s frozen VAE and text
        encoder (or reuse the cached encoding), and make the eval prompts."""
        from trainables.data.encoding import cache_key
        from trainables.data.images import encode_cached

        self.check()
        directory = build_dataset(
            cache_dir,
            self.size or resolution,
            self.caption_template,
            self.max_chars,
            self.holdout_percent,
            progress,
        )
        records = load_records(directory)
        train = [r for r in records if r.split == "train"]
        prompts = kanji_eval_prompts(directory, records, self.n_heldout, self.caption_template)
        key = cache_key(
            model, resolution, [f"{directory.name}/{r.file_name}" for r in train], [r.caption for r in train]
        )
        cache_file = Path(cache_dir) / "encoded" / f"kanji-{key}.pt"
        encoded = encode_cached(
            model,
            [lambda r=r: load_image(directory, r) for r in train],
            [r.caption for r in train],
            resolution,
            cache_file,
            progress,
        )
        return PreparedData(kind=self.kind, train=encoded, eval=EvalSet(tuple(prompts), (), metrics_for(self.kind)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--size", type=int, default=256, help="image side in px (default 256)")
    parser.add_argument("--caption-template", default=DEFAULT_CAPTION_TEMPLATE)
    parser.add_argument("--max-chars", type=int, default=None, help="keep only the first N characters")
    args = parser.parse_args(argv)
    try:
        out = build_dataset(args.cache_dir, args.size, args.caption_template, args.max_chars)
    except DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    records = load_records(out)
    heldout = sum(r.split == "heldout" for r in records)
    print(f"{len(records)} kanji ({len(records) - heldout} train, {heldout} held out) in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
