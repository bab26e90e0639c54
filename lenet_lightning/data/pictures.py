"""User pictures -> 28 x 28 grayscale tensors that look like the data set's images.

The data sets' images are bright content on a black background, cropped to the content and scaled
into a fixed box: MNIST digits fit a 20 x 20 box centred by their centre of mass in the 28 x 28 field;
Fashion-MNIST products have their longest side scaled to 28 and are centred. Pictures of any size and
colour mode are brought into the same form, so a photo of a digit on white paper is classified like a
test image. Pictures larger than :data:`MAX_PIXELS` are refused from their header, before they are decoded.
A picture that cannot be decoded is skipped with its reason, so one bad file never stops the others; special
files (pipes, devices, sockets) are named for what they are and never read, since reading a pipe can block.
"""

import math
import os
import stat
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from lenet_lightning.data.datamodule import to_network_input
from lenet_lightning.errors import UserError

SIZE = 28
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
BRIGHT_BACKGROUND = 128  # a border brighter than this (0..255) means dark content on a light background
# 4096 x 4096 (16.8 megapixels): more than a 12-megapixel phone photo or an A4 page scanned at 300 dpi (8.7), far
# more than a 28 x 28 result needs, and a fifth of Pillow's own limit (89 megapixels, set for image viewers).
# Converting one that size takes at most about 400 MB and 2 s (some 23 bytes per pixel when the content fills
# the picture, the worst case); a 10000 x 10000 PNG of 122 KB would take 2.3 GB, so it is refused unread.
MAX_PIXELS = 4096 * 4096
TOO_LARGE = f"larger than {MAX_PIXELS:,} pixels (4096 x 4096), the most predict reads; scale it down first"
SPECIAL_FILES = (
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)
# What Pillow's own readers raise for damaged files; anything else is named with its type (see why_unreadable).
DECODING_ERRORS = (OSError, ValueError, SyntaxError, EOFError)


class NotAPictureFile(Exception):
    """The path names something other than a regular file: a pipe, a device, a socket."""


@dataclass(frozen=True)
class ImageStyle:
    """How a data set's images were made from the originals."""

    box: int  # the longest side of the content, in pixels
    centre_of_mass: bool  # centred by centre of mass (MNIST) rather than by its bounding box
    threshold: float  # pixels brighter than this fraction of the brightest one count as content


STYLES = {
    "mnist": ImageStyle(box=20, centre_of_mass=True, threshold=0.2),
    # Products include dim parts (a white shirt is dark once negated), so a lower threshold keeps them.
    "fashion": ImageStyle(box=SIZE, centre_of_mass=False, threshold=0.05),
}


@dataclass
class LoadedImages:
    """The pictures that could be read (as an N x 1 x 28 x 28 batch in [0, 1]) and those that could not."""

    paths: list[Path]
    images: Tensor
    failures: list[tuple[Path, str]] = field(default_factory=list)


def parse_invert(value: object) -> bool | None:
    """``auto`` -> None (decide per picture), ``true``/``false`` -> always/never invert."""
    if isinstance(value, bool):
        return value
    if str(value).lower() == "auto":
        return None
    raise UserError(f"invert={value} is not one of auto, true, false")


def find_images(inputs: str | Sequence[str]) -> list[Path]:
    """Files named in ``inputs`` plus the picture files (.png, .jpg, .jpeg, .bmp) in folders named there."""
    entries = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    if not entries:
        raise UserError("no inputs given: pass inputs=picture.png, inputs=some/folder or inputs=[a.png,b.jpg]")
    paths: list[Path] = []
    for entry in entries:
        path = Path(entry).expanduser()
        if path.is_dir():
            # Pipes and devices with a picture's name are listed too, so they are reported rather than dropped.
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())
            if not found:
                raise UserError(f"no {', '.join(IMAGE_SUFFIXES)} files in folder {path}")
            paths.extend(found)
        elif path.exists():  # a special file too: load_images refuses it by what it is
            paths.append(path)
        else:
            raise UserError(f"no such file or folder: {path}")
    return paths


def open_picture_file(path: Path) -> BinaryIO:
    """Open a regular file for reading; raise :class:`NotAPictureFile` naming anything else, without reading it.

    Opened non-blocking, so a file swapped for a pipe after the check reads as empty instead of waiting for a writer.
    """
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        kind = next((kind for is_kind, kind in SPECIAL_FILES if is_kind(mode)), "a special file")
        raise NotAPictureFile(f"is {kind}, not a picture file")
    return open(path, "rb", opener=lambda name, flags: os.open(name, flags | getattr(os, "O_NONBLOCK", 0)))


def why_unreadable(error: Exception) -> str:
    """The first line of a decoding error, with its type when Pillow raised something other than its usual ones."""
    if isinstance(error, UnidentifiedImageError):
        return "cannot identify image file: not a format Pillow reads"  # Pillow's own line names the file object
    message = str(error).splitlines()[0] if str(error).strip() else ""
    if isinstance(error, DECODING_ERRORS) and message:
        return message
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def flatten_transparency(image: Image.Image) -> Image.Image:
    """Transparent pixels become white, as if the picture were drawn on paper."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return image


def to_dataset_image(image: Image.Image, style: ImageStyle, invert: bool | None = None) -> np.ndarray:
    """One picture -> a 28 x 28 uint8 array with bright content centred on a black background.

    ``invert=None`` inverts pictures whose border is bright (dark-on-light, such as ink on paper).
    """
    # One float32 copy, worked on in place: memory stays a small multiple of the picture's size (see MAX_PIXELS).
    pixels = np.array(flatten_transparency(ImageOps.exif_transpose(image)).convert("L"), dtype=np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if invert is None:
        invert = bool(np.median(border) > BRIGHT_BACKGROUND)
    if invert:
        np.subtract(255, pixels, out=pixels)
        border = 255 - border
    pixels -= np.median(border)  # a grey paper background becomes black
    np.clip(pixels, 0, 255, out=pixels)
    brightest = pixels.max()
    if brightest == 0:
        return np.zeros((SIZE, SIZE), dtype=np.uint8)
    pixels *= 255 / brightest  # both data sets' images span the full range up to white
    content = pixels > style.threshold * 255
    rows, cols = np.flatnonzero(content.any(axis=1)), np.flatnonzero(content.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    scale = style.box / max(bottom - top, right - left)
    if style.centre_of_mass:
        crop = pixels[top:bottom, left:right]
        mass = crop.sum()  # by rows and columns: no index grid the size of the picture
        centre_y = top + np.arange(crop.shape[0]) @ crop.sum(axis=1, dtype=np.float64) / mass + 0.5
        centre_x = left + np.arange(crop.shape[1]) @ crop.sum(axis=0, dtype=np.float64) / mass + 0.5
        target = SIZE / 2 + 0.5  # MNIST's centres of mass sit on pixel 14
    else:
        centre_y, centre_x, target = (top + bottom) / 2, (left + right) / 2, SIZE / 2
    return resample(pixels, scale, centre_y, centre_x, target)


def resample(pixels: np.ndarray, scale: float, centre_y: float, centre_x: float, target: float) -> np.ndarray:
    """Scale the picture by ``scale`` and cut the 28 x 28 window that puts the centre at ``target``.

    Unscaled content moves by whole pixels, so a picture already in the data set's form comes back
    unchanged instead of blurred by a sub-pixel shift; scaled content is placed exactly. Resizing with a source
    ``box`` antialiases like a plain resize and never builds the scaled picture in full; only the part of the
    picture the filter reaches is copied, on a black field where the window reaches past the picture's edge.
    """
    first_row, first_col = centre_y * scale - target, centre_x * scale - target
    if scale == 1:
        first_row, first_col = round(first_row), round(first_col)
    top, left, span = first_row / scale, first_col / scale, SIZE / scale  # the window, in the picture's pixels
    reach = 3 * max(span / SIZE, 1) + 1  # Lanczos reads 3 output pixels (at least 3 picture pixels) past it
    y0, x0 = math.floor(top - reach), math.floor(left - reach)
    y1, x1 = math.ceil(top + span + reach), math.ceil(left + span + reach)
    height, width = pixels.shape
    region = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    ys, xs = slice(max(y0, 0), min(y1, height)), slice(max(x0, 0), min(x1, width))  # the part inside the picture
    region[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = pixels[ys, xs]
    box = (left - x0, top - y0, left - x0 + span, top - y0 + span)
    window = Image.fromarray(region, mode="F").resize((SIZE, SIZE), Image.Resampling.LANCZOS, box=box)
    return np.clip(np.asarray(window), 0, 255).round().astype(np.uint8)


@contextmanager
def pixel_limit(limit: int) -> Iterator[None]:
    """Pillow's decompression-bomb check, at ``limit`` pixels: ``Image.open`` raises for a larger picture.

    Pillow reads the size from the file's header and, above ``MAX_IMAGE_PIXELS``, warns (raises above twice
    that); the warning is made an error here, and Pillow's limit is put back afterwards.
    """
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def load_images(paths: Sequence[Path], style: ImageStyle, invert: bool | None = None) -> LoadedImages:
    """Read and convert each picture; special, unreadable and oversized files are listed in ``failures`` and skipped.

    Any error while one picture is decoded skips that picture only: Pillow's readers raise SyntaxError, EOFError,
    struct.error and more for damaged files, and a batch of good pictures should not be lost to one of them.
    """
    arrays, loaded, failures = [], [], []
    for path in paths:
        try:
            with open_picture_file(path) as file, pixel_limit(MAX_PIXELS), Image.open(file) as image:
                arrays.append(to_dataset_image(image, style, invert))
        except NotAPictureFile as refusal:
            failures.append((path, str(refusal)))
            continue
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            failures.append((path, TOO_LARGE))
            continue
        except Exception as error:  # whatever one damaged picture raises must not stop the others
            failures.append((path, why_unreadable(error)))
            continue
        loaded.append(path)
    images = to_network_input(torch.from_numpy(np.stack(arrays))) if arrays else torch.empty(0, 1, SIZE, SIZE)
    return LoadedImages(paths=loaded, images=images, failures=failures)
