"""Turning a user's picture into a 28x28 MNIST-like digit."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nnx.errors import DataError


def read_grey(source: Path | bytes) -> np.ndarray:
    """An image file or its bytes as uint8 greyscale; transparent pixels count as white paper."""
    name = "upload" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(paper, rgba)
            return np.asarray(img.convert("L"))
    except FileNotFoundError:
        raise DataError(f"{name}: no such file") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        raise DataError(f"{name}: not a readable image ({exc})") from None


def load_digit_image(path: Path) -> np.ndarray:
    """uint8 (784,): greyscale, fitted into 28x28 keeping the aspect ratio, white ink on black
    (inverted when the background is light, as in a scan of dark ink on paper)."""
    ink = Image.fromarray(to_ink_on_black(read_grey(path)))
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


def image_to_digit(source: Path | bytes) -> np.ndarray:
    """Any image (a PNG from a drawing canvas, a photo of ink on paper) -> MNIST-style uint8 (784,)."""
    return mnist_style(to_ink_on_black(read_grey(source)))
