"""The subject and captioned data kinds on messy folders: rotated, transparent, greyscale, CMYK and truncated
images, DreamBench's layout, captions from metadata.jsonl or .txt files, and the sets the project draws."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.data.base import DatasetError
from trainables.data.captioned import DEFAULT_EVAL_PROMPTS, CaptionedData, read_captions
from trainables.data.images import center_crop_resize, image_files, load_image_file, read_rgb
from trainables.data.subject import DEFAULT_TEMPLATES, SubjectData, read_dreambench, subject_eval_prompts
from trainables.data.tiny_sets import (
    STYLE_FILES,
    STYLE_TRIGGER,
    SUBJECT_CLASS_NOUN,
    SUBJECT_FILES,
    write_style_set,
    write_subject_set,
)

RED, GREEN, BLUE, WHITE = (220, 30, 30), (30, 200, 30), (30, 30, 220), (250, 250, 250)


def _quadrants(size: tuple[int, int], tl, tr, bl, br) -> Image.Image:
    w, h = size
    image = Image.new("RGB", size)
    image.paste(tl, (0, 0, w // 2, h // 2))
    image.paste(tr, (w // 2, 0, w, h // 2))
    image.paste(bl, (0, h // 2, w // 2, h))
    image.paste(br, (w // 2, h // 2, w, h))
    return image


def _quadrant_colours(image: Image.Image) -> list[tuple[int, int, int]]:
    w, h = image.size
    return [image.getpixel((x, y)) for x, y in ((w // 4, h // 4), (3 * w // 4, h // 4), (w // 4, 3 * h // 4),
                                                 (3 * w // 4, 3 * h // 4))]  # fmt: skip


def _close(actual, expected, tolerance: int = 40) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def _photo(path: Path, colour=(200, 120, 40), size=(80, 72)) -> Path:
    """A small JPEG with some structure, so every file has different bytes."""
    image = Image.new("RGB", size, colour)
    image.paste((20, 20, 20), (size[0] // 3, size[1] // 3, size[0] // 2, size[1] // 2))
    image.save(path, quality=90)
    return path


def _truncated(path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("[sdsweep]")]


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- loading one file


@pytest.mark.parametrize(
    "orientation, stored",
    [
        # upright: red | green over blue | white, 64 wide and 32 tall; stored a quarter turn away
        (6, _quadrants((32, 64), GREEN, WHITE, RED, BLUE)),  # viewers turn it clockwise
        (8, _quadrants((32, 64), BLUE, RED, WHITE, GREEN)),  # viewers turn it anticlockwise
    ],
)
def test_exif_rotated_jpeg_comes_out_upright(tmp_path, orientation, stored):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "sideways.jpg"
    stored.save(path, quality=95, exif=exif.tobytes())
    with Image.open(path) as raw:
        assert raw.size == (32, 64)  # the pixels really are stored sideways

    image = read_rgb(path)
    assert image.mode == "RGB" and image.size == (64, 32)
    for got, want in zip(_quadrant_colours(image), (RED, GREEN, BLUE, WHITE), strict=True):
        assert _close(got, want), (got, want)


def test_transparency_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 1))
    rgba.putdata([(0, 0, 0, 0), (255, 0, 0, 255), (255, 0, 0, 128), (0, 0, 255, 0)])
    rgba.save(tmp_path / "cut.png")
    la = Image.new("LA", (2, 1))
    la.putdata([(0, 0), (40, 255)])
    la.save(tmp_path / "la.png")
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putdata([0, 1])
    palette.save(tmp_path / "palette.png", transparency=0)

    pixels = list(read_rgb(tmp_path / "cut.png").getdata())
    assert pixels[0] == (255, 255, 255) and pixels[3] == (255, 255, 255)  # transparent black/blue -> white
    assert pixels[1] == (255, 0, 0)
    assert _close(pixels[2], (255, 127, 127), 2)  # half red over white
    assert list(read_rgb(tmp_path / "la.png").getdata()) == [(255, 255, 255), (40, 40, 40)]
    assert list(read_rgb(tmp_path / "palette.png").getdata()) == [(255, 255, 255), (0, 0, 255)]


def test_greyscale_16_bit_and_cmyk_become_rgb(tmp_path):
    Image.new("L", (8, 8), 100).save(tmp_path / "grey.png")
    Image.fromarray(np.full((8, 8), 128 * 257, dtype=np.uint16)).save(tmp_path / "grey16.png")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)  # pure red in print
    Image.new("CMYK", (16, 16), (0, 0, 0, 128)).save(tmp_path / "cmyk_grey.jpg", quality=95)
    with Image.open(tmp_path / "grey16.png") as raw:
        assert raw.mode.startswith("I")  # a 16-bit file, which a plain convert would clip to white

    assert read_rgb(tmp_path / "grey.png").getpixel((3, 3)) == (100, 100, 100)
    assert read_rgb(tmp_path / "grey16.png").getpixel((3, 3)) == (128, 128, 128)
    cmyk = read_rgb(tmp_path / "cmyk.jpg")
    assert cmyk.mode == "RGB" and _close(cmyk.getpixel((8, 8)), (255, 0, 0), 6)
    assert _close(read_rgb(tmp_path / "cmyk_grey.jpg").getpixel((8, 8)), (127, 127, 127), 6)


def test_truncated_or_foreign_file_is_skipped_with_one_line(tmp_path, capsys):
    truncated = _truncated(tmp_path / "03.jpg")
    foreign = tmp_path / "04.png"
    foreign.write_text("not a picture")

    assert load_image_file(truncated) is None
    warnings = _warnings(capsys.readouterr().err)
    assert warnings == [f"[sdsweep] skipping {truncated}: image file is truncated"]
    assert load_image_file(foreign) is None
    (line,) = _warnings(capsys.readouterr().err)
    assert str(foreign) in line and "not an image" in line


def test_image_files_and_center_crop(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.webp", "notes.txt", ".hidden.jpg", "d.bmp", "e.jpeg"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in image_files(tmp_path)] == ["a.jpg", "b.PNG", "c.webp", "d.bmp", "e.jpeg"]

    wide = _quadrants((120, 60), RED, GREEN, BLUE, WHITE)
    wide.paste((0, 0, 0), (0, 0, 30, 60))  # the left quarter, outside the centre square
    square = center_crop_resize(wide, 32)
    assert square.size == (32, 32)
    assert _quadrant_colours(square) == [RED, GREEN, BLUE, WHITE]  # nothing of the black strip, no stretching


# ---------------------------------------------------------------- subject: settings and errors


def _subject_folder(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        _photo(folder / f"{i:02d}.jpg", colour=(60 * i + 40, 120, 200 - 40 * i))
    return folder


def test_subject_check_errors_are_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    photos = _subject_folder(tmp_path / "photos")
    cases = [
        (SubjectData(), "--data-dir PATH"),
        (SubjectData(data_dir=str(tmp_path / "nope"), class_noun="dog"), "no such folder"),
        (SubjectData(data_dir=str(empty), class_noun="dog"), "holds no .jpg"),
        (SubjectData(data_dir=str(photos)), "--class-noun"),
        (SubjectData(data_dir=str(photos), class_noun="dog", num_eval_prompts=0), "num_eval_prompts=0"),
        (SubjectData(data_dir=str(photos), class_noun="dog", num_eval_prompts=26), "num_eval_prompts=26"),
        (SubjectData(data_dir=str(photos), class_noun="dog", images_per_prompt=0), "images_per_prompt=0"),
        (SubjectData(data_dir=str(photos), class_noun="dog", identifier="two words"), "identifier="),
        (SubjectData(data_dir=str(photos), class_noun="dog", instance_template="a photo of {thing}"), "{thing}"),
        (SubjectData(data_dir=str(photos), class_noun="dog", instance_template="a photo of a {class_noun}"),
         "lacks {identifier}"),
        (SubjectData(subject="dog2"), "DreamBench"),
    ]  # fmt: skip
    for data, expected in cases:
        with pytest.raises(DatasetError) as excinfo:
            data.check()
        assert expected in _one_line(excinfo), (data, str(excinfo.value))
    SubjectData(data_dir=str(photos), class_noun="dog").check()
    SubjectData(use_generated_set=True).check()


def test_empty_folder_fails_before_any_model_is_loaded(tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be loaded for a folder that cannot be used")

    monkeypatch.setattr("trainables.models.load_pipeline", no_model)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("photos go here")
    with pytest.raises(DatasetError) as excinfo:
        SubjectData(data_dir=str(empty), class_noun="dog").prepare("no-model", 64, tmp_path / "cache", progress=False)
    assert str(empty) in _one_line(excinfo)
    assert not (tmp_path / "cache" / "encoded").exists()


def test_too_few_usable_photos_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("trainables.models.load_pipeline", lambda *a, **k: pytest.fail("loaded a model"))
    folder = _subject_folder(tmp_path / "photos", n=2)
    _truncated(folder / "02.jpg")
    with pytest.raises(DatasetError) as excinfo:
        SubjectData(data_dir=str(folder), class_noun="dog").prepare("no-model", 64, tmp_path / "cache", progress=False)
    message = _one_line(excinfo)
    assert "2 usable photos of 3" in message and "at least 3" in message
    assert len(_warnings(capsys.readouterr().err)) == 1


def test_cli_flags(tmp_path):
    parser = argparse.ArgumentParser()
    SubjectData.add_cli_args(parser)
    args = parser.parse_args(["--data-dir", "/d", "--subject", "dog2", "--class-noun", "puppy"])
    data = SubjectData(num_eval_prompts=3).with_cli_args(args)
    assert (data.data_dir, data.subject, data.class_noun, data.num_eval_prompts) == ("/d", "dog2", "puppy", 3)
    plain = SubjectData()
    assert plain.with_cli_args(argparse.Namespace(max_chars=5)) is plain  # another kind's namespace

    parser = argparse.ArgumentParser()
    CaptionedData.add_cli_args(parser)
    data = CaptionedData().with_cli_args(parser.parse_args(["--data-dir", "/s", "--trigger-word", "zzstyle"]))
    assert (data.data_dir, data.trigger_word, data.identifier) == ("/s", "zzstyle", "zzstyle")
    assert CaptionedData().with_cli_args(argparse.Namespace()) == CaptionedData()


# ---------------------------------------------------------------- subject: eval prompts and DreamBench


def test_subject_eval_prompts_texts_scores_and_seeds():
    prompts = subject_eval_prompts(DEFAULT_TEMPLATES, "sks", "dog", num_prompts=3, images_per_prompt=2)
    assert len(prompts) == 6
    assert [p.seed for p in prompts] == [0, 1, 2, 3, 4, 5]
    assert prompts[0].text == "a sks dog on a wooden kitchen table"
    assert prompts[0].score_text == "a dog on a wooden kitchen table"
    assert prompts[0].text == prompts[1].text and prompts[0].name != prompts[1].name
    assert prompts[3].name == "p01-in-a-field-of/1"
    assert all(p.group == "main" and p.reference is None for p in prompts)
    assert len({p.name for p in prompts}) == 6
    assert all(p.name.isascii() and len(p.name) <= 40 for p in prompts)
    assert all("sks" not in p.score_text for p in prompts)
    assert len(DEFAULT_TEMPLATES) == 25 and all(
        "{identifier} {class_noun}" in t for t in DEFAULT_TEMPLATES
    )  # "a sks dog", never "a dog sks"


# the real file's layout (github.com/google/dreambooth dataset/prompts_and_classes.txt), with made-up prompts
_DREAMBENCH = """Classes

subject_name,class
backpack,backpack
bear_plushie,stuffed animal
cat2,cat
dog2,dog
duck_toy,toy

Prompts

Object Prompts

prompt_list = [
'a {0} {1} on a glass shelf'.format(unique_token, class_token),
'a {0} {1} beside a potted fern'.format(unique_token, class_token),
'a blue {0} {1}'.format(unique_token, class_token)
]

Live Subject Prompts

prompt_list = [
'a {0} {1} wearing a tiny crown'.format(unique_token, class_token),
'a {0} {1} on a garden bench'.format(unique_token, class_token),
'a sleepy {0} {1}'.format(unique_token, class_token)
]
"""


def _dreambench(root: Path, newline: str = "\n") -> Path:
    dataset = root / "dataset"
    dataset.mkdir(parents=True)
    (dataset / "prompts_and_classes.txt").write_bytes(_DREAMBENCH.replace("\n", newline).encode("utf-8"))
    for subject in ("dog2", "duck_toy"):
        _subject_folder(dataset / subject, n=3)
    return dataset


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_dreambench_file_is_parsed_without_running_it(tmp_path, newline):
    bench = read_dreambench(_dreambench(tmp_path, newline) / "prompts_and_classes.txt")
    assert bench.classes == {
        "backpack": "backpack", "bear_plushie": "stuffed animal", "cat2": "cat", "dog2": "dog", "duck_toy": "toy",
    }  # fmt: skip
    assert bench.object_templates[0] == "a {identifier} {class_noun} on a glass shelf"
    assert bench.live_templates[2] == "a sleepy {identifier} {class_noun}"


def test_dreambench_live_subject_gets_class_and_live_prompts(tmp_path):
    dataset = _dreambench(tmp_path)
    dog = SubjectData(data_dir=str(dataset), subject="dog2", num_eval_prompts=3, images_per_prompt=2)
    dog.check()
    assert dog.class_prompt == "a photo of dog"
    prompts = dog.eval_prompt_list()
    assert [p.text for p in prompts[::2]] == [
        "a sks dog wearing a tiny crown", "a sks dog on a garden bench", "a sleepy sks dog",
    ]  # fmt: skip
    assert [p.score_text for p in prompts[::2]] == [
        "a dog wearing a tiny crown", "a dog on a garden bench", "a sleepy dog",
    ]  # fmt: skip
    assert [p.seed for p in prompts] == list(range(6))
    assert prompts[0].name == "p00-wearing-a-tiny-crown/0" and prompts[5].name == "p02-sleepy/1"

    toy = SubjectData(data_dir=str(dataset), subject="duck_toy", num_eval_prompts=1, images_per_prompt=1)
    assert [p.text for p in toy.eval_prompt_list()] == ["a sks toy on a glass shelf"]  # objects: object prompts


def test_dreambench_mistakes_are_named(tmp_path):
    dataset = _dreambench(tmp_path)
    with pytest.raises(DatasetError) as excinfo:
        SubjectData(data_dir=str(dataset), subject="dog9").check()
    assert "--subject dog9" in _one_line(excinfo) and "dog2" in str(excinfo.value)
    with pytest.raises(DatasetError) as excinfo:
        SubjectData(data_dir=str(dataset), subject="dog2", num_eval_prompts=4).check()
    assert "has 3" in _one_line(excinfo)
    with pytest.raises(DatasetError) as excinfo:
        SubjectData(data_dir=str(dataset), class_noun="dog").check()  # the dataset/ folder without --subject
    assert "--subject NAME" in _one_line(excinfo)
    with pytest.raises(DatasetError) as excinfo:
        SubjectData(data_dir=str(dataset / "dog2")).check()  # one subject's folder, no class noun
    assert f"--data-dir {dataset.resolve()} --subject dog2" in _one_line(excinfo)
    assert SubjectData(data_dir=str(dataset / "dog2")).class_prompt is None
    with pytest.raises(DatasetError) as excinfo:
        SubjectData(data_dir=str(dataset / "dog2"), subject="dog2").check()
    assert "no prompts_and_classes.txt" in _one_line(excinfo)


# ---------------------------------------------------------------- subject: prepare with the tiny model


def test_subject_prepare_encodes_usable_photos_and_reuses_the_cache(tiny_sd, tmp_path, monkeypatch, capsys):
    folder = _subject_folder(tmp_path / "photos", n=3)
    rgba = Image.new("RGBA", (72, 72), (0, 0, 0, 0))
    rgba.paste((200, 30, 30, 255), (20, 20, 50, 50))
    rgba.save(folder / "03.png")
    Image.new("L", (70, 90), 90).save(folder / "04.jpg")
    bad = _truncated(folder / "05.jpg")
    data = SubjectData(data_dir=str(folder), class_noun="toy", num_eval_prompts=2, images_per_prompt=2)
    cache = tmp_path / "cache"

    prepared = data.prepare(tiny_sd, 64, cache, progress=False)
    assert _warnings(capsys.readouterr().err) == [f"[sdsweep] skipping {bad}: image file is truncated"]
    assert prepared.kind == "subject" and len(prepared.train) == 5
    assert prepared.train.captions == ["a photo of sks toy"] and prepared.train.caption_index.tolist() == [0] * 5
    assert prepared.train.latent_mean.shape[0] == 5
    assert (prepared.identifier, prepared.class_noun, prepared.class_prompt) == ("sks", "toy", "a photo of toy")
    assert len(prepared.train_images) == 5 and all(img.size == (64, 64) for img in prepared.train_images)
    assert prepared.train_images[3].getpixel((2, 2)) == (255, 255, 255)  # the PNG's transparent corner
    assert prepared.train_images[4].getpixel((32, 32)) == (90, 90, 90)  # greyscale as RGB
    assert prepared.eval.references == tuple(prepared.train_images)
    assert prepared.eval.metrics == ("eval/clip_t", "eval/clip_score", "eval/clip_i", "eval/dino")
    assert [p.seed for p in prepared.eval.prompts] == [0, 1, 2, 3]
    assert len(list((cache / "encoded").glob("subject-*.pt"))) == 1

    def no_model(*args, **kwargs):
        raise AssertionError("the cached encoding should have been reused")

    monkeypatch.setattr("trainables.models.load_pipeline", no_model)
    again = data.prepare(tiny_sd, 64, cache, progress=False)
    assert torch.equal(again.train.latent_mean, prepared.train.latent_mean)
    assert again.train.captions == prepared.train.captions

    _photo(folder / "00.jpg", colour=(10, 250, 10))  # an edited photo: same names, new content
    with pytest.raises(AssertionError, match="cached encoding"):
        data.prepare(tiny_sd, 64, cache, progress=False)


def test_generated_sets_are_deterministic_and_load_through_the_same_path(tmp_path, capsys):
    first, second = write_subject_set(tmp_path / "a" / "subject"), write_subject_set(tmp_path / "b" / "subject")
    styles = write_style_set(tmp_path / "a" / "style"), write_style_set(tmp_path / "b" / "style")
    for a, b, names in ((first, second, SUBJECT_FILES), (*styles, STYLE_FILES)):
        assert sorted(p.name for p in a.iterdir()) == sorted(names)
        for name in names:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    stamp = (first / "00.jpg").stat().st_mtime_ns
    assert write_subject_set(first) == first and (first / "00.jpg").stat().st_mtime_ns == stamp  # reused
    assert not list(tmp_path.glob("*/*.partial*"))
    half = tmp_path / "half"
    half.mkdir()
    (half / "00.jpg").write_bytes((first / "00.jpg").read_bytes())
    with pytest.raises(DatasetError, match="not a complete generated set"):
        write_subject_set(half)  # never mixed with or written over

    # messy on purpose: a sideways JPEG with an orientation tag, a PNG cut-out
    with Image.open(first / "02.jpg") as raw:
        assert raw.size == (96, 112) and raw.getexif()[0x0112] == 6
    upright = np.asarray(read_rgb(first / "02.jpg")).astype(int)
    assert upright.shape == (96, 112, 3)
    yellow = (upright[..., 0] > 200) & (upright[..., 1] > 170) & (upright[..., 2] < 90)
    red = (upright[..., 0] > 170) & (upright[..., 1] < 80) & (upright[..., 2] < 80)
    assert np.nonzero(yellow)[0].min() < np.nonzero(red)[0].mean()  # the head is above the body
    with Image.open(first / "04.png") as raw:
        assert raw.mode == "RGBA"
    assert read_rgb(first / "04.png").getpixel((1, 1)) == (255, 255, 255)
    assert all(load_image_file(p) is not None for p in image_files(first))
    assert _warnings(capsys.readouterr().err) == []

    pairs, warnings = read_captions(styles[0])
    assert len(pairs) == 8 and not warnings and pairs[0][1] == "two circles and a triangle"


def test_generated_sets_through_prepare(tiny_sd, tmp_path, capsys):
    cache = tmp_path / "cache"
    subject = SubjectData(num_eval_prompts=3, images_per_prompt=2, use_generated_set=True)
    assert subject.class_prompt == f"a photo of {SUBJECT_CLASS_NOUN}"
    prepared = subject.prepare(tiny_sd, 64, cache, progress=False)
    assert len(prepared.train) == 5 and prepared.class_noun == "toy"
    assert prepared.eval.prompts[0].text.startswith("a sks toy ")
    assert (cache / "generated" / "subject-v1" / "00.jpg").is_file()

    style = CaptionedData(num_eval_prompts=3, use_generated_set=True)
    prepared = style.prepare(tiny_sd, 64, cache, progress=False)
    assert len(prepared.train) == 8 and prepared.identifier == STYLE_TRIGGER
    assert "sdswstyle, two circles and a triangle" in prepared.train.captions
    assert [p.group for p in prepared.eval.prompts] == ["main"] * 3 + ["plain"] * 3
    assert _warnings(capsys.readouterr().err) == []


# ---------------------------------------------------------------- captioned folders


def _metadata_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    _photo(folder / "a.jpg", colour=(250, 10, 10))
    _photo(folder / "b.png", colour=(10, 10, 250))
    _photo(folder / "unlisted.jpg")
    rows = [
        {"file_name": "a.jpg", "text": "a red   square\nwith a dot"},
        {"file_name": "b.png", "text": "zzstyle a blue square"},
        {"file_name": "gone.jpg", "text": "a missing file"},
    ]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    return folder


def test_captions_from_metadata_jsonl(tmp_path):
    folder = _metadata_folder(tmp_path / "style")
    pairs, warnings = read_captions(folder)
    assert [(p.name, c) for p, c in pairs] == [("a.jpg", "a red square with a dot"), ("b.png", "zzstyle a blue square")]
    assert len(warnings) == 2
    assert "gone.jpg" in warnings[0] and "line 3" in warnings[0]
    assert "unlisted.jpg" in warnings[1] and "1 images" in warnings[1]


def test_captions_from_txt_sidecars(tmp_path):
    folder = tmp_path / "style"
    folder.mkdir()
    for name in ("01.jpg", "02.png", "03.jpg"):
        _photo(folder / name)
    (folder / "01.txt").write_text("a red circle\n", encoding="utf-8")
    (folder / "03.txt").write_text("\ufefftwo  squares\n", encoding="utf-8")  # a BOM, as some editors write
    pairs, warnings = read_captions(folder)
    assert [(p.name, c) for p, c in pairs] == [("01.jpg", "a red circle"), ("03.jpg", "two squares")]
    assert len(warnings) == 1 and "02.png" in warnings[0] and "02.txt" in warnings[0]
    (folder / "02.caption").write_text("a blue triangle")
    pairs, _ = read_captions(folder, ".caption")
    assert [p.name for p, _ in pairs] == ["02.png"]


def test_bad_metadata_and_settings_are_one_line_errors(tmp_path):
    folder = tmp_path / "style"
    folder.mkdir()
    _photo(folder / "a.jpg")
    (folder / "metadata.jsonl").write_text('{"file_name": "a.jpg", "text": "ok"}\n{"file_name": "a.jpg" "text"}\n')
    empty = tmp_path / "empty"
    empty.mkdir()
    csv = tmp_path / "csv"
    csv.mkdir()
    _photo(csv / "a.jpg")
    (csv / "metadata.csv").write_text("file_name,text\na.jpg,hello\n")
    uncaptioned = tmp_path / "uncaptioned"
    uncaptioned.mkdir()
    _photo(uncaptioned / "a.jpg")
    cases = [
        (CaptionedData(), "--data-dir PATH"),
        (CaptionedData(data_dir=str(folder)), "line 2 is not JSON"),
        (CaptionedData(data_dir=str(empty)), "holds no .jpg"),
        (CaptionedData(data_dir=str(csv)), "metadata.csv is not read"),
        (CaptionedData(data_dir=str(uncaptioned)), "has 0 images with captions"),
        (CaptionedData(data_dir=str(empty), trigger_word="two words"), "trigger_word="),
        (CaptionedData(data_dir=str(empty), eval_prompts=("a cat", "a dog")), "eval_prompts has 2"),
        (CaptionedData(data_dir=str(empty), trigger_word="zz", eval_prompts=("a zz cat",), num_eval_prompts=1),
         "contains the trigger word"),
    ]  # fmt: skip
    for data, expected in cases:
        with pytest.raises(DatasetError) as excinfo:
            data.check()
        assert expected in _one_line(excinfo), (data, str(excinfo.value))


def test_captioned_eval_prompts_with_and_without_trigger():
    data = CaptionedData(data_dir="unused", trigger_word="zzstyle", num_eval_prompts=2)
    prompts = data.eval_prompt_list()
    assert [(p.group, p.text, p.score_text, p.seed) for p in prompts] == [
        ("main", f"zzstyle, {DEFAULT_EVAL_PROMPTS[0]}", DEFAULT_EVAL_PROMPTS[0], 0),
        ("main", f"zzstyle, {DEFAULT_EVAL_PROMPTS[1]}", DEFAULT_EVAL_PROMPTS[1], 1),
        ("plain", DEFAULT_EVAL_PROMPTS[0], None, 0),
        ("plain", DEFAULT_EVAL_PROMPTS[1], None, 1),
    ]
    assert len({p.name for p in prompts}) == 4 and all(p.name.isascii() for p in prompts)
    untriggered = CaptionedData(data_dir="unused", eval_prompts=("a red bus", "a fox"), num_eval_prompts=2)
    assert [(p.group, p.text, p.score_text) for p in untriggered.eval_prompt_list()] == [
        ("main", "a red bus", None),
        ("main", "a fox", None),
    ]
    assert len(DEFAULT_EVAL_PROMPTS) == 8


def test_captioned_prepare_puts_the_trigger_in_front(tiny_sd, tmp_path, monkeypatch, capsys):
    folder = _metadata_folder(tmp_path / "style")
    data = CaptionedData(data_dir=str(folder), trigger_word="zzstyle", num_eval_prompts=2)
    prepared = data.prepare(tiny_sd, 64, tmp_path / "cache", progress=False)
    warnings = _warnings(capsys.readouterr().err)
    assert len(warnings) == 3  # the missing file, the unlisted one, the caption that has the trigger already
    assert "already contain 'zzstyle'" in warnings[2]
    assert prepared.kind == "captioned" and len(prepared.train) == 2 and prepared.identifier == "zzstyle"
    # the trigger word goes in front, once; encoded captions are the unique ones, sorted
    assert prepared.train.captions == ["zzstyle a blue square", "zzstyle, a red square with a dot"]
    assert prepared.train.caption_index.tolist() == [1, 0]
    assert prepared.eval.references == () and "eval/clip_t_plain" in prepared.eval.metrics
    assert "eval/dino" not in prepared.eval.metrics
    assert [p.group for p in prepared.eval.prompts] == ["main", "main", "plain", "plain"]

    monkeypatch.setattr("trainables.models.load_pipeline", lambda *a, **k: pytest.fail("cache not reused"))
    assert data.prepare(tiny_sd, 64, tmp_path / "cache", progress=False).train.captions == prepared.train.captions

    plain = CaptionedData(data_dir=str(folder), num_eval_prompts=2)
    with pytest.raises(pytest.fail.Exception):  # other captions: a new encoding, so the model is needed
        plain.prepare(tiny_sd, 64, tmp_path / "cache", progress=False)
    assert [p.group for p in plain.eval_prompt_list()] == ["main", "main"]
