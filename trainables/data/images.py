"""Reading users' photos and drawings the same way for every folder-based data kind.

Real folders are messy: phone photos stored sideways with an EXIF orientation tag, PNGs with transparency,
greyscale scans, CMYK JPEGs from print workflows, 16-bit PNGs, half-copied files. :func:`load_image_file`
turns each into an upright RGB image, or skips it with one warning line on stderr naming the file and the
reason; :func:`center_crop_resize` makes the square training image.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# what the folder kinds pick up; other files (captions, metadata, licences) sit beside them
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
BACKGROUND = (255, 255, 255)  # transparent pixels become white, as a viewer on a white page shows them


class ImageReadError(OSError):
    """An image file that cannot be used; the message is the reason, without the path."""


def warn(message: str) -> None:
    """One line on stderr, in the launcher's ``[sdsweep]`` voice."""
    print(f"[sdsweep] {message}", file=sys.stderr, flush=True)


def image_files(folder: Path | str) -> list[Path]:
    """The image files directly in ``folder`` (by suffix, any case), sorted by name.

    Hidden files (``.DS_Store``, macOS ``._01.jpg`` resource forks) are not images and are left out.
    """
    folder = Path(folder)
    return sorted(
        (
            p
            for p in folder.iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
        ),
        key=lambda p: p.name,
    )


def read_rgb(path: Path | str) -> Image.Image:
    """Decode ``path`` fully and return it upright, in RGB; raises :class:`ImageReadError` with the reason."""
    path = Path(path)
    try:
        with Image.open(path) as opened:
            opened.load()  # decode everything now, so a truncated file fails here and not in the encoder
            upright = ImageOps.exif_transpose(opened)
        return to_rgb(upright)
    except UnidentifiedImageError:
        raise ImageReadError("not an image file Pillow can read") from None
    except FileNotFoundError:
        raise ImageReadError("no such file") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError) as err:
        reason = _first_line(err)
        if isinstance(err, EOFError) or "truncated" in reason.lower():  # Pillow words it several ways
            reason = "image file is truncated"
        raise ImageReadError(reason) from None


def load_image_file(path: Path | str) -> Image.Image | None:
    """:func:`read_rgb`, or ``None`` after one stderr line such as
    ``[sdsweep] skipping /x/03.jpg: image file is truncated``."""
    try:
        return read_rgb(path)
    except ImageReadError as err:
        warn(f"skipping {path}: {err}")
        return None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as RGB: transparency composited onto white, greyscale / palette / CMYK converted,
    16-bit greyscale scaled to 8 bits (not clipped)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit PNG greyscale: 0..65535, which a plain convert("L") would clip at 255
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8), mode="L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")  # also applies a palette's or a tRNS chunk's transparent colour
        flat = Image.new("RGB", rgba.size, BACKGROUND)
        flat.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return flat
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def center_crop_resize(image: Image.Image, resolution: int) -> Image.Image:
    """The largest centred square of ``image``, resized (bicubic, antialiased) to ``resolution`` px."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.resize((resolution, resolution), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))


def warn_if_upscaled(paths: Sequence[Path], images: Sequence[Image.Image], resolution: int, folder: Path) -> None:
    """One line listing the images whose short side is below ``resolution``: they are enlarged, and blurry."""
    small = [p.name for p, img in zip(paths, images, strict=True) if min(img.size) < resolution]
    if small:
        shown = ", ".join(small[:5]) + (f" and {len(small) - 5} more" if len(small) > 5 else "")
        warn(
            f"{len(small)} of {len(images)} images in {folder} are smaller than {resolution} px and are enlarged "
            f"(blurry training images): {shown}"
        )


def file_digest(path: Path | str) -> str:
    """SHA-1 of a file's bytes: encoded caches key on content, so an edited photo is re-encoded."""
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encode_cached(model: str, images: list, captions: list[str], resolution: int, cache_file: Path, progress: bool):
    """:func:`~trainables.data.encoding.encode_dataset` with ``cache_file``, loading the pipeline only when
    that file is missing (a second sweep over the same data never loads the model for it)."""
    import torch

    from trainables.data.encoding import encode_dataset, load_encoded
    from trainables.models import load_pipeline

    cached = load_encoded(cache_file)
    if cached is not None:
        return cached
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = load_pipeline(model, torch_dtype=torch.float16 if device == "cuda" else None).to(device)
    return encode_dataset(pipe, images, captions, resolution, cache_file=cache_file, progress=progress)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
