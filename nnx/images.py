"""Turning a user's picture into a 28x28 MNIST-like digit."""

from __future__ import annotations

import io
import warnings
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nnx.errors import DataError, NnxError


class ImageTooLargeError(DataError):
    """An image whose declared size is over the pixel limit (never decoded)."""


# Pixels an image may declare before it is decoded: a 26 KB PNG can claim 13000x13000 and cost
# gigabytes once decoded. 4 million (2000x2000) is far above any drawing or photo of a digit.
MAX_PIXELS = 4_000_000


def read_grey(source: Path | bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file or its bytes as uint8 greyscale; transparent pixels count as white paper.
    The size the image declares is checked against `max_pixels` before anything is decoded."""
    name = "upload" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes) and Path(source).exists() and not Path(source).is_file():
        raise DataError(f"{name}: not an image file (a folder, FIFO or device)")  # a FIFO would block
    try:
        with warnings.catch_warnings():  # PIL's own bomb warning: the stricter limit below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        with opened as img:
            width, height = img.size  # from the header: nothing decoded yet
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"{name}: the image declares {width}x{height} = {width * height:,} pixels, over the limit of "
                    f"{max_pixels:,}"
                )
            img.load()
            return grey_pixels(img)
    except FileNotFoundError:
        raise DataError(f"{name}: no such file") from None
    except Image.DecompressionBombError as exc:  # declared sizes far past even PIL's limit
        raise ImageTooLargeError(f"{name}: {exc}; nnx's limit is {max_pixels:,} pixels") from None
    except UnidentifiedImageError:
        # PIL's message names its internal file object (<_io.BytesIO object at 0x...>) for an upload.
        raise DataError(f"{name}: not a readable image (not in any image format Pillow knows)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{name}: not a readable image ({exc})") from None


def grey_pixels(img: Image.Image) -> np.ndarray:
    """A decoded image as uint8 greyscale; transparent pixels count as white paper."""
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(paper, rgba)
    return np.asarray(img.convert("L"))


def load_digit_image(path: Path) -> np.ndarray:
    """uint8 (784,): greyscale, fitted into 28x28 keeping the aspect ratio, white ink on black
    (inverted when the background is light, as in a scan of dark ink on paper)."""
    return fit_digit(read_grey(path))


def fit_digit(grey: np.ndarray) -> np.ndarray:
    """load_digit_image's preparation of uint8 greyscale pixels of any size."""
    ink = Image.fromarray(to_ink_on_black(grey))
    if ink.size != (28, 28):
        ink = ImageOps.pad(ink, (28, 28), method=Image.Resampling.LANCZOS, color=0)
    return np.asarray(ink, dtype=np.uint8).reshape(784)


INK_THRESHOLD = 0.1  # of the brightest pixel: fainter is paper noise, not ink
BOX = 20  # MNIST's digits are size-normalised into 20x20 ...
SIDE = 28  # ... and centred by centre of mass in 28x28


def to_ink_on_black(grey: np.ndarray) -> np.ndarray:
    """uint8 greyscale -> white ink on black, inverting when the background (border) is light."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    return 255 - grey if np.median(border) > 127 else grey


def mnist_style(ink: np.ndarray) -> np.ndarray:
    """Prepare a drawing as MNIST's digits were (LeCun et al.): crop to the ink's bounding box,
    scale it to fit 20x20 keeping its aspect ratio, place it in 28x28 with its centre of mass at
    the centre, and stretch the intensities to 0-255. ink: 2-D, white ink on black.
    Returns uint8 (784,); all zeros when there is no ink."""
    ink = np.asarray(ink, dtype=np.float64)
    peak = ink.max(initial=0.0)
    if peak <= 0:
        return np.zeros(SIDE * SIDE, dtype=np.uint8)
    rows = np.flatnonzero((ink > INK_THRESHOLD * peak).any(axis=1))
    cols = np.flatnonzero((ink > INK_THRESHOLD * peak).any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = crop.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = Image.fromarray(np.uint8(np.clip(crop * (255 / peak), 0, 255))).resize(size, Image.Resampling.LANCZOS)
    digit = np.asarray(resized, dtype=np.float64)
    canvas = np.zeros((SIDE, SIDE))
    top, left = (SIDE - digit.shape[0]) // 2, (SIDE - digit.shape[1]) // 2
    canvas[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    # Move the centre of mass to the middle, as far as the digit can move without leaving the field.
    total = canvas.sum()
    ys, xs = np.indices(canvas.shape)
    cy, cx = (ys * canvas).sum() / total, (xs * canvas).sum() / total
    dy = int(np.clip(round((SIDE - 1) / 2 - cy), -top, SIDE - top - digit.shape[0]))
    dx = int(np.clip(round((SIDE - 1) / 2 - cx), -left, SIDE - left - digit.shape[1]))
    canvas = np.roll(canvas, (dy, dx), axis=(0, 1))
    canvas *= 255 / canvas.max()
    return np.uint8(np.clip(np.rint(canvas), 0, 255)).reshape(SIDE * SIDE)


def image_to_digit(source: Path | bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any image (a PNG from a drawing canvas, a photo of ink on paper) -> MNIST-style uint8 (784,)."""
    return mnist_style(to_ink_on_black(read_grey(source, max_pixels)))


def _is_picture(item: Any) -> bool:
    return isinstance(item, (str, PathLike, Image.Image))


def picture_pixels(picture: str | PathLike | Image.Image, centre: bool = False) -> np.ndarray:
    """uint8 (784,) from an image file or a PIL image, prepared as `nnx predict FILE` prepares
    it (`centre`: as --mnist-style does)."""
    if isinstance(picture, Image.Image):
        grey = grey_pixels(picture)
        return mnist_style(to_ink_on_black(grey)) if centre else fit_digit(grey)
    return image_to_digit(Path(picture)) if centre else load_digit_image(Path(picture))


def _batch_of_784(array: np.ndarray) -> np.ndarray:
    """(N, 784) from one image, (784,) or (28, 28), or a batch, (N, 784) or (N, 28, 28), also with a
    channel axis of 1 as PyTorch ((N, 1, 28, 28)) and Keras ((N, 28, 28, 1)) hold images. Any other
    shape is refused, even with a multiple of 784 values: a (28, 28, 3) colour image is not three
    digits."""
    shape = array.shape
    if array.size == 0:
        return array.reshape(0, 784)
    if shape in ((784,), (28, 28), (28, 28, 1)):
        return array.reshape(1, 784)
    if (array.ndim == 2 and shape[1] == 784) or (array.ndim == 3 and shape[1:] == (28, 28)):
        return array.reshape(-1, 784)
    if array.ndim == 4 and shape[1:] in ((1, 28, 28), (28, 28, 1)):
        return array.reshape(-1, 784)
    colour = array.ndim in (3, 4) and shape[-1] in (3, 4)
    hint = "; a colour image? pass it as a PIL image (or a file), which is turned grey" if colour else ""
    raise NnxError(
        f"images: shape {shape} is not one 28x28 image or a batch (N, 28, 28), (N, 784) or (N, 1, 28, 28){hint}"
    )


def as_pixels(images: Any, centre: bool = False) -> np.ndarray:
    """uint8 (N, 784) from what a notebook holds: one 28x28 image or 784 values, a batch (N, 28, 28),
    (N, 784) or (N, 1, 28, 28); uint8 as they are, floats in 0-1 (or 0-255 when any value exceeds
    1) rounded. Also an image file's path or a PIL image (or a list of them), prepared as `nnx
    predict FILE` does: any size, dark ink on light paper inverted; `centre` crops and centres them
    as MNIST's digits were (`nnx predict --mnist-style`). A CSV file's path gives all its data rows
    (label then 784 pixels, or the pixels alone; `nnx predict FILE.csv --all-rows`)."""
    if isinstance(images, (str, Path)) and Path(images).suffix.lower() == ".csv":
        from nnx.data.csvfile import read_csv

        if centre:
            raise NnxError("mnist_style: for image files and PIL images; a CSV file's rows are MNIST-style pixels")
        return read_csv(Path(images), unlabelled=True)[0]
    if _is_picture(images):
        images = [images]
    if isinstance(images, (list, tuple)) and images and all(_is_picture(item) for item in images):
        return np.stack([picture_pixels(item, centre) for item in images])
    if centre:
        raise NnxError("mnist_style: for image files and PIL images; arrays are taken as MNIST-style pixels")
    array = np.asarray(images)
    if array.dtype.kind not in "uif":
        raise NnxError(f"images: expected numbers, got {array.dtype}")
    array = _batch_of_784(array)
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise NnxError("images: NaN or infinite values")
    if values.size and (values.min() < 0 or values.max() > 255):
        raise NnxError(f"images: values from {values.min():g} to {values.max():g}; expected 0-1 or 0-255")
    if array.dtype.kind == "f" and values.size and values.max() <= 1.0:
        values = values * 255.0
    return np.rint(values).astype(np.uint8)
