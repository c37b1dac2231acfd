"""The kanji dataset: white RGB glyphs without stroke numbers, captions from KANJIDIC2 meanings."""

import json

import numpy as np
import pytest
from PIL import Image

from trainables.data.kanji import (
    _STROKE_NUMBERS,
    DatasetError,
    KanjiData,
    build_dataset,
    kanji_eval_prompts,
    kanjidic_meanings,
    kanjivg_files,
    load_records,
    make_caption,
    render_glyph,
    split_of,
)


def test_kanjivg_base_files_only():
    files = kanjivg_files()
    assert "七" in files and files["七"].name == "04e03.svg"
    assert all("-" not in p.name for p in files.values())  # no -Kaisho etc. variants
    assert len(files) > 6000


def test_kanjidic_meanings_are_english_and_ordered():
    meanings = kanjidic_meanings(["七", "日", "ア"])
    assert meanings["七"] == ("seven",)
    assert meanings["日"][:2] == ("day", "sun")
    assert "ア" not in meanings  # katakana: in KanjiVG, not a kanji with meanings


def test_one_query_gives_what_the_jamdict_api_gives():
    import random

    from jamdict import Jamdict

    characters = random.Random(0).sample(sorted(kanjivg_files()), 60)
    jam = Jamdict()
    expected = {}
    for c in characters:
        entry = jam.kd2.get_char(c)
        found = tuple(m.strip() for m in entry.meanings(english_only=True) if m.strip()) if entry else ()
        if found:
            expected[c] = found
    assert kanjidic_meanings(characters) == expected and len(expected) > 40


def test_held_out_kanji_are_never_trained_on(kanji_dir, tiny_sd, tmp_path):
    cache = kanji_dir.parents[1]
    prepared = KanjiData(max_chars=120, n_heldout=2).prepare(tiny_sd, 64, cache, progress=False)
    encoded, prompts = prepared.train, prepared.eval.prompts
    assert prepared.kind == "kanji" and "eval/glyph_iou" in prepared.eval.metrics
    assert encoded.input_ids.shape == (len(encoded.captions), 77)  # token ids for text-encoder training
    records = load_records(kanji_dir)
    train = [r for r in records if r.split == "train"]
    assert len(encoded) == len(train) < len(records)
    assert not {p.text for p in prompts[:2]} & {r.caption for r in train}
    assert {p.text for p in prompts[:2]} <= {r.caption for r in records if r.split == "heldout"}


def test_dataset_rows_images_and_captions(kanji_dir):
    records = load_records(kanji_dir)
    assert len(records) == 120
    rows = [json.loads(line) for line in (kanji_dir / "metadata.jsonl").read_text("utf-8").splitlines()]
    assert set(rows[0]) == {"file_name", "character", "meanings", "text", "split"}  # imagefolder + extras
    seven = next(r for r in records if r.character == "七")
    assert seven.caption == 'kanji meaning "seven"'
    assert all(r.meanings and r.caption for r in records)
    with Image.open(kanji_dir / seven.file_name) as img:
        assert img.mode == "RGB" and img.size == (64, 64)
        pixels = np.asarray(img)
    assert tuple(pixels[0, 0]) == (255, 255, 255)  # opaque white paper, not black from transparency
    assert (pixels.mean(axis=-1) < 100).any()  # black ink present


def test_stroke_numbers_are_removed():
    import io

    import cairosvg

    svg = kanjivg_files()["七"].read_text("utf-8")
    assert "StrokeNumbers" in svg
    with_numbers = Image.open(
        io.BytesIO(
            cairosvg.svg2png(bytestring=svg.encode(), output_width=256, output_height=256, background_color="white")
        )
    ).convert("L")
    without = render_glyph(svg, 256).convert("L")
    # the numbers are drawn in grey (#808080): count every non-white pixel as marked
    marked_with, marked_without = np.asarray(with_numbers) < 250, np.asarray(without) < 250
    assert marked_without.sum() < marked_with.sum()  # the digits "1", "2" are gone
    # nothing but the numbers went: every marked pixel of the clean glyph is marked in the numbered one
    assert (marked_without & ~marked_with).sum() == 0
    assert "StrokeNumbers" not in _STROKE_NUMBERS.sub("", svg)


def test_split_is_deterministic_and_cache_is_reused(kanji_dir, tmp_path):
    records = load_records(kanji_dir)
    assert all(r.split == split_of(r.character) for r in records)
    mtime = (kanji_dir / "metadata.jsonl").stat().st_mtime
    again = build_dataset(kanji_dir.parents[1], size=64, max_chars=120, progress=False)
    assert again == kanji_dir and (kanji_dir / "metadata.jsonl").stat().st_mtime == mtime


def test_caption_template():
    assert make_caption(("day", "sun"), 'kanji meaning "{meanings}"') == 'kanji meaning "day, sun"'
    assert make_caption(("day", "sun"), "{meaning} kanji") == "day kanji"
    with pytest.raises(DatasetError, match="names no field"):
        KanjiData(caption_template="a kanji").check()


def test_eval_prompts_hold_out_glyphs_and_novel_concepts(kanji_dir):
    records = load_records(kanji_dir)
    heldout = [r for r in records if r.split == "heldout"]
    prompts = kanji_eval_prompts(kanji_dir, records, n_heldout=2)
    assert [p.name for p in prompts[2:]] == ["novel/internet", "novel/language model", "novel/multimedia"]
    assert prompts[3].text == 'kanji meaning "language model"'
    assert all(p.reference is not None for p in prompts[:2]) and all(p.reference is None for p in prompts[2:])
    assert {p.text for p in prompts[:2]} <= {r.caption for r in heldout}
    assert [p.seed for p in prompts] == list(range(5))
    with pytest.raises(DatasetError, match=f"holds {len(heldout)} held-out kanji but 99 eval prompts"):
        kanji_eval_prompts(kanji_dir, records, n_heldout=99)


def test_corrupt_image_names_file_and_fix(kanji_dir, tmp_path):
    from trainables.data.kanji import KanjiRecord, load_image

    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot read .*bad.png .*delete .* and run the sweep again"):
        load_image(tmp_path, KanjiRecord("bad.png", "x", ("x",), "x", "train"))
