"""Turning a user's picture into a 28x28 MNIST-like digit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nnx.errors import DataError


def load_digit_image(path: Path) -> np.ndarray:
    """uint8 (784,): greyscale, fitted into 28x28 keeping the aspect ratio, white ink on black
    (inverted when the background is light, as in a scan of dark ink on paper)."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                # Transparent drawings: put them on white paper before judging the background.
                rgba = img.convert("RGBA")
                paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(paper, rgba)
            grey = img.convert("L")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None
    pixels = np.asarray(grey)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = int(np.median(border))
    if background > 127:
        grey = ImageOps.invert(grey)
        background = 255 - background
    if grey.size != (28, 28):
        grey = ImageOps.pad(grey, (28, 28), method=Image.Resampling.LANCZOS, color=background)
    return np.asarray(grey, dtype=np.uint8).reshape(784)
