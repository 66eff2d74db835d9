"""Turning a user's picture into a 28x28 MNIST-like digit."""

from __future__ import annotations

import io
import warnings
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

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


def fit_digit(grey: np.ndarray) -> np.ndarray:
    """uint8 (784,) from uint8 greyscale pixels of any size: fitted into 28x28 keeping the aspect
    ratio, white ink on black (inverted when the background is light, as in a scan of dark ink
    on paper)."""
    ink = Image.fromarray(to_ink_on_black(grey))
    if ink.size != (28, 28):
        ink = ImageOps.pad(ink, (28, 28), method=Image.Resampling.LANCZOS, color=0)
    return np.asarray(ink, dtype=np.uint8).reshape(784)


INK_THRESHOLD = 0.1  # of the brightest pixel: fainter is paper noise, not ink
BOX = 20  # MNIST's digits are size-normalised into 20x20 ...
SIDE = 28  # ... and centred by centre of mass in 28x28


def light_background(grey: np.ndarray) -> bool:
    """Whether a greyscale picture is dark ink on light paper: its border is mostly light."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    return bool(np.median(border) > 127)


def to_ink_on_black(grey: np.ndarray) -> np.ndarray:
    """uint8 greyscale -> white ink on black, inverting when the background (border) is light."""
    return 255 - grey if light_background(grey) else grey


def _ink_box(ink: np.ndarray, peak: float) -> tuple[np.ndarray, np.ndarray]:
    """The rows and the columns holding ink (brighter than INK_THRESHOLD of the peak)."""
    lit = ink > INK_THRESHOLD * peak
    return np.flatnonzero(lit.any(axis=1)), np.flatnonzero(lit.any(axis=0))


def _mass_centre(image: np.ndarray) -> tuple[float, float]:
    """(row, column) of an image's centre of mass, its intensities the mass."""
    ys, xs = np.indices(image.shape)
    total = image.sum()
    return (ys * image).sum() / total, (xs * image).sum() / total


def mnist_style(ink: np.ndarray) -> np.ndarray:
    """Prepare a drawing as MNIST's digits were (LeCun et al.): crop to the ink's bounding box,
    scale it to fit 20x20 keeping its aspect ratio, place it in 28x28 with its centre of mass at
    the centre, and stretch the intensities to 0-255. ink: 2-D, white ink on black.
    Returns uint8 (784,); all zeros when there is no ink."""
    ink = np.asarray(ink, dtype=np.float64)
    peak = ink.max(initial=0.0)
    if peak <= 0:
        return np.zeros(SIDE * SIDE, dtype=np.uint8)
    rows, cols = _ink_box(ink, peak)
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
    cy, cx = _mass_centre(canvas)
    dy = int(np.clip(round((SIDE - 1) / 2 - cy), -top, SIDE - top - digit.shape[0]))
    dx = int(np.clip(round((SIDE - 1) / 2 - cx), -left, SIDE - left - digit.shape[1]))
    canvas = np.roll(canvas, (dy, dx), axis=(0, 1))
    canvas *= 255 / canvas.max()
    return np.uint8(np.clip(np.rint(canvas), 0, 255)).reshape(SIDE * SIDE)


# The paper's level is fitted on a thumbnail this many pixels across, to its pixels below the
# PAPER_SHARE quantile (ink covers well under half of a page with a digit on it).
PAPER_THUMB = 32
PAPER_SHARE = 0.6
PAPER_EVEN = 4  # grey levels the paper's thumbnail may span and count as even


def ink_only(grey: np.ndarray) -> np.ndarray:
    """White ink on black, with the paper taken away: `to_ink_on_black`, less the paper's own level
    at each pixel, so that grey paper, a shadow or light from one side read as no ink.

    The paper is read off a thumbnail: its darkest PAPER_SHARE of pixels (however thick the
    strokes, they are not among them). Even paper (a drawing canvas, a clean scan) only has its
    level taken away. Otherwise a median first takes out speckle (3x3; 5x5 from 112 pixels a
    side, where strokes are wider), the paper is a smooth surface a + b x + c y + d x^2 + e y^2 +
    f x y fitted to those pixels (least squares), and what stays of its grain (the level 99% of
    its pixels are under) is taken away too. Pictures under 56 pixels a side are taken as they are."""
    ink = to_ink_on_black(grey)
    h, w = ink.shape
    if min(h, w) < 2 * SIDE:
        return ink
    scale = PAPER_THUMB / max(h, w)
    size = (max(4, round(w * scale)), max(4, round(h * scale)))
    thumb = np.asarray(Image.fromarray(ink).resize(size, Image.Resampling.BOX), dtype=np.float64)
    paper = thumb <= np.quantile(thumb, PAPER_SHARE)
    if np.ptp(thumb[paper]) <= PAPER_EVEN:  # even paper: its level off, nothing else to do
        level = int(thumb[paper].max())
        return ink if level == 0 else np.uint8(np.clip(ink.astype(np.int16) - level, 0, 255))
    median = ImageFilter.MedianFilter(5 if min(h, w) >= 4 * SIDE else 3)  # narrower than a stroke
    filtered = Image.fromarray(ink).filter(median)
    thumb = np.asarray(filtered.resize(size, Image.Resampling.BOX), dtype=np.float64)
    paper = thumb <= np.quantile(thumb, PAPER_SHARE)
    ty, tx = np.mgrid[0 : thumb.shape[0], 0 : thumb.shape[1]]
    y, x = (ty[paper] + 0.5) / thumb.shape[0], (tx[paper] + 0.5) / thumb.shape[1]  # pixel centres, 0..1
    a, b, c, d, e, f = np.linalg.lstsq(np.stack([np.ones_like(x), x, y, x * x, y * y, x * y], axis=1), thumb[paper],
                                       rcond=None)[0]  # fmt: skip
    y = ((np.arange(h, dtype=np.float32) + 0.5) / h)[:, None]  # the whole picture's, broadcast:
    x = ((np.arange(w, dtype=np.float32) + 0.5) / w)[None, :]  # (h, w) arrays only for the result
    level = (a + b * x + d * x * x) + (c + e * y) * y + f * x * y
    flat = np.clip(np.asarray(filtered, dtype=np.float32) - level, 0, 255)
    sample = flat[:: max(1, h // 256), :: max(1, w // 256)]  # quantiles of a few 10,000 pixels suffice
    grain = np.percentile(sample[sample <= np.quantile(sample, PAPER_SHARE)], 99)  # the paper's highest speckle
    return np.uint8(np.clip(flat - grain, 0, 255))


def image_to_digit(source: Path | bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any image (a PNG from a drawing canvas, a photo of ink on paper) -> MNIST-style uint8 (784,)."""
    return mnist_style(ink_only(read_grey(source, max_pixels)))


# A picture whose ink-on-black version spans fewer grey levels than this holds no digit (a blank
# canvas, an evenly lit page); a digit's strokes stand out from their paper by far more.
BLANK_CONTRAST = 32
MNIST_LIKE_BOX = 22  # a 28x28 picture whose ink fits a box this size, centred within
MNIST_LIKE_OFFSET = 3.0  # pixels, by its centre of mass, is taken as prepared already


def is_mnist_like(grey: np.ndarray) -> bool:
    """Whether a greyscale picture already looks as MNIST's digits do: 28x28, light ink on a dark
    background, the ink within MNIST_LIKE_BOX pixels and its centre of mass near the centre."""
    if grey.shape != (SIDE, SIDE) or light_background(grey):
        return False
    ink = grey.astype(np.float64)
    peak = ink.max(initial=0.0)
    if peak <= 0:
        return True
    rows, cols = _ink_box(ink, peak)
    if rows[-1] - rows[0] + 1 > MNIST_LIKE_BOX or cols[-1] - cols[0] + 1 > MNIST_LIKE_BOX:
        return False
    cy, cx = _mass_centre(ink)
    return max(abs(cy - (SIDE - 1) / 2), abs(cx - (SIDE - 1) / 2)) <= MNIST_LIKE_OFFSET


def is_blank(grey: np.ndarray) -> bool:
    """Whether a greyscale picture holds no digit: its pixels span fewer than BLANK_CONTRAST levels."""
    return grey.size == 0 or int(grey.max()) - int(grey.min()) < BLANK_CONTRAST


def prepare_picture(grey: np.ndarray, mnist_like: bool | None = None) -> np.ndarray:
    """uint8 (784,) from a greyscale picture of any size, as `nnx predict` and `Model.predict`
    prepare it: by default (None) a picture that is not MNIST-like already (is_mnist_like) is
    prepared as MNIST's digits were (mnist_style of ink_only: the paper taken away, cropped,
    fitted to 20x20, centred by mass); True: always (as `nnx serve` prepares its drawings,
    image_to_digit); False: only inverted where its background is light and fitted into 28x28, as
    it is. A blank picture gives all zeros."""
    if is_blank(grey):
        return np.zeros(SIDE * SIDE, dtype=np.uint8)
    if mnist_like is None:
        mnist_like = not is_mnist_like(grey)
    return mnist_style(ink_only(grey)) if mnist_like else fit_digit(grey)


def _is_picture(item: Any) -> bool:
    return isinstance(item, (str, PathLike, Image.Image))


def picture_grey(picture: str | PathLike | Image.Image) -> np.ndarray:
    """An image file or a PIL image as uint8 greyscale (transparent: white paper)."""
    return grey_pixels(picture) if isinstance(picture, Image.Image) else read_grey(Path(picture))


def picture_pixels(picture: str | PathLike | Image.Image, centre: bool | None = None) -> np.ndarray:
    """uint8 (784,) from an image file or a PIL image, prepared by prepare_picture (`centre`:
    None, True or False, as its `mnist_like`)."""
    return prepare_picture(picture_grey(picture), centre)


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


def as_pixels(images: Any, centre: bool | None = None) -> np.ndarray:
    """uint8 (N, 784) from what a notebook holds: one 28x28 image or 784 values, a batch (N, 28, 28),
    (N, 784) or (N, 1, 28, 28); uint8 as they are, floats in 0-1 (or 0-255 when any value exceeds
    1) rounded. Also an image file's path or a PIL image (or a list of them), prepared as `nnx
    predict FILE` does (prepare_picture: MNIST-style unless MNIST-like already; `centre` True:
    always, False: never). A CSV file's path gives all its data rows (label then 784 pixels, or the
    pixels alone; `nnx predict FILE.csv --all-rows`)."""
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
