"""Small image sets the project draws itself with PIL: offline, deterministic, a second or less to write.

The tiny preset trains on them when no ``--data-dir`` is given (CPU runs, CI). They are messy on purpose,
so they go through the same loading path as users' folders:

- the subject set: five pictures of one red-and-yellow toy built from shapes (class noun "toy"), at
  varied positions, sizes and backgrounds; JPEGs of several shapes, one stored sideways with an EXIF
  orientation tag, and one PNG with a transparent background.
- the style set: eight drawings of simple shapes in one look (cream paper, thick navy outlines, flat
  fills, an offset shadow), captioned with what is drawn in ``metadata.jsonl``; trigger word "sdswstyle".

    python -m trainables.data.tiny_sets OUT_DIR     # write both into OUT_DIR/subject and OUT_DIR/style
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from trainables.data.base import DatasetError

SUBJECT_CLASS_NOUN = "toy"  # what the subject set shows, for class prompts and textual inversion's start
STYLE_TRIGGER = "sdswstyle"  # a made-up word the tokenizer splits into pieces no prompt uses
JPEG_QUALITY = 90  # fixed, so the bytes are the same on every run

# ---------------------------------------------------------------- the subject: one toy

_RED, _YELLOW, _INK = (214, 40, 40), (250, 204, 21), (30, 30, 30)


def _draw_toy(draw: ImageDraw.ImageDraw, cx: float, cy: float, scale: float) -> None:
    """The toy, centred at (cx, cy): a red block body on yellow wheels, a yellow round head with two eyes
    and a red triangle hat. ``scale`` 1 is ~50 px tall."""

    def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
        return [cx + x0 * scale, cy + y0 * scale, cx + x1 * scale, cy + y1 * scale]

    draw.rectangle(box(-14, -4, 14, 18), fill=_RED, outline=_INK, width=max(1, round(scale)))  # body
    draw.ellipse(box(-13, 14, -3, 24), fill=_YELLOW, outline=_INK)  # wheels
    draw.ellipse(box(3, 14, 13, 24), fill=_YELLOW, outline=_INK)
    draw.ellipse(box(-10, -24, 10, -4), fill=_YELLOW, outline=_INK)  # head
    draw.ellipse(box(-6, -17, -2, -13), fill=_INK)  # eyes
    draw.ellipse(box(2, -17, 6, -13), fill=_INK)
    draw.polygon([(cx - 8 * scale, cy - 22 * scale), (cx + 8 * scale, cy - 22 * scale), (cx, cy - 34 * scale)],
                 fill=_RED, outline=_INK)  # fmt: skip
    draw.rectangle(box(-4, 4, 4, 10), fill=_YELLOW)  # a yellow badge on the body


def _background(size: tuple[int, int], kind: str) -> Image.Image:
    image = Image.new("RGB", size, {"sky": (176, 214, 240), "grass": (150, 200, 130), "sand": (236, 222, 190),
                                    "stripes": (230, 230, 236)}[kind])  # fmt: skip
    draw = ImageDraw.Draw(image)
    if kind == "stripes":
        for x in range(-size[1], size[0], 12):
            draw.line([(x, size[1]), (x + size[1], 0)], fill=(170, 170, 190), width=4)
    elif kind == "grass":
        draw.rectangle([0, size[1] * 2 // 3, size[0], size[1]], fill=(90, 150, 80))
    elif kind == "sand":
        draw.ellipse([size[0] - 30, 6, size[0] - 8, 28], fill=(250, 170, 60))  # a sun
    return image


# (file name, canvas size, background, toy centre as fractions of the canvas, scale, how it is stored)
_SUBJECT_SHOTS = (
    ("00.jpg", (96, 96), "sky", (0.5, 0.55), 1.0, "plain"),
    ("01.jpg", (128, 96), "grass", (0.42, 0.5), 0.8, "plain"),
    ("02.jpg", (112, 96), "sand", (0.45, 0.55), 1.1, "exif-rotated"),
    ("03.jpg", (96, 112), "stripes", (0.55, 0.52), 1.3, "plain"),
    ("04.png", (96, 96), None, (0.5, 0.55), 0.9, "transparent"),
)
SUBJECT_FILES = tuple(shot[0] for shot in _SUBJECT_SHOTS)


def _subject_image(size, background, centre, scale) -> Image.Image:
    if background is None:
        image = Image.new("RGBA", size, (0, 0, 0, 0))  # a cut-out: the loader composites it onto white
    else:
        image = _background(size, background)
    _draw_toy(ImageDraw.Draw(image), centre[0] * size[0], centre[1] * size[1], scale)
    return image


def write_subject_set(folder: Path | str) -> Path:
    """Write the toy photos into ``folder`` (reused when already complete) and return it."""

    def write(partial: Path) -> None:
        for name, size, background, centre, scale, stored in _SUBJECT_SHOTS:
            image = _subject_image(size, background, centre, scale)
            if stored == "transparent":
                image.save(partial / name, format="PNG")
            elif stored == "exif-rotated":
                # pixels stored a quarter turn anticlockwise; orientation 6 tells viewers to turn them back
                exif = Image.Exif()
                exif[0x0112] = 6
                image.transpose(Image.Transpose.ROTATE_90).save(
                    partial / name, format="JPEG", quality=JPEG_QUALITY, exif=exif.tobytes()
                )
            else:
                image.save(partial / name, format="JPEG", quality=JPEG_QUALITY)

    return _write_once(Path(folder), SUBJECT_FILES, write)


# ---------------------------------------------------------------- the style: shapes in one look

_PAPER, _NAVY, _SHADOW = (246, 238, 214), (28, 38, 84), (205, 192, 160)
_FILLS = {"coral": (240, 120, 100), "teal": (60, 170, 160), "mustard": (226, 180, 60)}

# (caption, shapes): each shape is (kind, centre x, centre y, radius, fill), on a 96 px canvas
_STYLE_SCENES = (
    ("two circles and a triangle", [("circle", 28, 34, 16, "coral"), ("circle", 68, 34, 16, "teal"),
                                    ("triangle", 48, 70, 18, "mustard")]),
    ("a square and a circle", [("square", 32, 50, 18, "teal"), ("circle", 68, 50, 16, "coral")]),
    ("three triangles in a row", [("triangle", 20, 50, 13, "mustard"), ("triangle", 48, 50, 13, "coral"),
                                  ("triangle", 76, 50, 13, "teal")]),
    ("a large circle above a small square", [("circle", 48, 34, 22, "mustard"), ("square", 48, 76, 10, "teal")]),
    ("a five-pointed star", [("star", 48, 50, 30, "coral")]),
    ("two squares and a circle", [("square", 26, 30, 13, "coral"), ("square", 70, 30, 13, "mustard"),
                                  ("circle", 48, 70, 16, "teal")]),
    ("a triangle inside a circle", [("circle", 48, 50, 32, "teal"), ("triangle", 48, 52, 18, "mustard")]),
    ("four small circles", [("circle", 28, 28, 11, "coral"), ("circle", 68, 28, 11, "teal"),
                            ("circle", 28, 68, 11, "mustard"), ("circle", 68, 68, 11, "coral")]),
)  # fmt: skip
STYLE_FILES = tuple(f"{i:02d}.png" for i in range(len(_STYLE_SCENES))) + ("metadata.jsonl",)


def _shape_points(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if kind == "triangle":
        return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
    if kind == "star":
        import math

        return [
            (cx + (r if i % 2 == 0 else r * 0.45) * math.sin(i * math.pi / 5),
             cy - (r if i % 2 == 0 else r * 0.45) * math.cos(i * math.pi / 5))
            for i in range(10)
        ]  # fmt: skip
    return None


def _style_image(shapes) -> Image.Image:
    image = Image.new("RGB", (96, 96), _PAPER)
    draw = ImageDraw.Draw(image)
    for y in range(4, 96, 8):  # faint ruled lines on the paper
        draw.line([(0, y), (96, y)], fill=(236, 226, 198))
    for offset, colour in ((4, _SHADOW), (0, None)):  # the shadows first, then the shapes on top
        for kind, cx, cy, r, fill in shapes:
            cx, cy = cx + offset, cy + offset
            style = {"fill": colour or _FILLS[fill], "outline": None if colour else _NAVY}
            points = _shape_points(kind, cx, cy, r)
            if points is not None:
                draw.polygon(points, width=3 if not colour else 1, **style)
            elif kind == "circle":
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], width=3 if not colour else 1, **style)
            else:
                draw.rectangle([cx - r, cy - r, cx + r, cy + r], width=3 if not colour else 1, **style)
    return image


def write_style_set(folder: Path | str) -> Path:
    """Write the shape drawings and their ``metadata.jsonl`` into ``folder`` (reused when complete)."""

    def write(partial: Path) -> None:
        rows = []
        for i, (caption, shapes) in enumerate(_STYLE_SCENES):
            name = f"{i:02d}.png"
            _style_image(shapes).save(partial / name, format="PNG")
            rows.append(json.dumps({"file_name": name, "text": caption}))
        (partial / "metadata.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")

    return _write_once(Path(folder), STYLE_FILES, write)


# ---------------------------------------------------------------- writing once


def _write_once(folder: Path, expected: tuple[str, ...], write) -> Path:
    """Reuse ``folder`` when it holds every expected file; else write into ``<folder>.partial-<pid>`` and rename
    it, so a crash never leaves a half set under the real name and two processes never share a folder."""
    if all((folder / name).is_file() for name in expected):
        return folder
    if folder.exists():
        raise DatasetError(f"{folder} exists but is not a complete generated set: delete it and run again")
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write(partial)
    try:
        partial.rename(folder)
    except OSError:
        if not all((folder / name).is_file() for name in expected):  # another process won the race: keep its
            raise
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m trainables.data.tiny_sets OUT_DIR", file=sys.stderr)
        return 2
    out = Path(args[0])
    print(write_subject_set(out / "subject"))
    print(write_style_set(out / "style"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
