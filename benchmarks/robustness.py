"""How a model reads digits that differ from MNIST's own the ways real input does.

Each MNIST test digit is turned into a picture as a person, a pen, a mouse or a camera would
give it (a 112x112 page, dark ink on light paper), changed one way at a time (thin or thick
strokes, slant, rotation, a small digit off centre, blur, coarse pixels, noise, uneven
lighting, white ink on black, a constant-width pen as a mouse draws), and then read through the
same preparation `nnx serve` and `nnx predict` give a picture (nnx.images.prepare_picture). The
table gives the accuracy per change, and the worst class for each.

  NNX_DATA_DIR=... python benchmarks/robustness.py runs/<run> [runs/<other> ...] [--images 2000]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

PAGE = 112  # pixels of the picture a digit is drawn on (4x MNIST's)
Change = Callable[[Image.Image, np.random.Generator], Image.Image]


def page(digit: np.ndarray) -> Image.Image:
    """A 28x28 white-on-black MNIST digit as dark ink on a white 112x112 page."""
    ink = Image.fromarray(digit.reshape(28, 28)).resize((PAGE, PAGE), Image.Resampling.BICUBIC)
    return Image.fromarray(255 - np.asarray(ink))


def _ink_op(picture: Image.Image, op: Callable[[Image.Image], Image.Image]) -> Image.Image:
    """`op` on the ink (white on black), the result as ink on paper again."""
    ink = Image.fromarray(255 - np.asarray(picture))
    return Image.fromarray(255 - np.asarray(op(ink)))


def _affine(picture: Image.Image, matrix: tuple[float, ...]) -> Image.Image:
    return picture.transform(picture.size, Image.Transform.AFFINE, matrix, Image.Resampling.BILINEAR, fillcolor=255)


def _slant(picture: Image.Image, shear: float) -> Image.Image:
    """x' = x + shear (y - centre): the digit leans, its middle row staying where it was."""
    return _affine(picture, (1, shear, -shear * PAGE / 2, 0, 1, 0))


def _small_off_centre(picture: Image.Image, rng: np.random.Generator) -> Image.Image:
    scale = rng.uniform(0.6, 0.8)
    size = int(PAGE * scale)
    canvas = Image.new("L", (PAGE * 2, PAGE * 2), 255)
    canvas.paste(picture.resize((size, size), Image.Resampling.BILINEAR),
                 (int(rng.integers(0, 2 * PAGE - size)), int(rng.integers(0, 2 * PAGE - size))))  # fmt: skip
    return canvas


def _uneven_light(picture: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Paper lit from one side: its white fades to grey across the page; the ink stays dark."""
    x = np.linspace(0, 1, PAGE)[None, :] if rng.random() < 0.5 else np.linspace(0, 1, PAGE)[:, None]
    shade = 255 - 110 * x  # paper from white to mid grey
    pixels = np.asarray(picture, dtype=np.float64) / 255 * shade
    return Image.fromarray(np.uint8(np.clip(pixels, 0, 255)))


def _mouse(picture: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The strokes thinned to a line and drawn again with a round pen of one width, as a mouse or
    a finger on a canvas draws them (no pressure, no ink spread)."""

    def redraw(ink: Image.Image) -> Image.Image:
        line = ink.point(lambda v: 255 if v > 100 else 0)
        for _ in range(3):
            line = line.filter(ImageFilter.MinFilter(3))
        return line.filter(ImageFilter.MaxFilter(9)).filter(ImageFilter.GaussianBlur(1))

    return _ink_op(picture, redraw)


CHANGES: dict[str, Change] = {
    "as drawn (no change)": lambda p, rng: p,
    "thin strokes": lambda p, rng: _ink_op(p, lambda ink: ink.filter(ImageFilter.MinFilter(5))),
    "thick strokes (marker)": lambda p, rng: _ink_op(p, lambda ink: ink.filter(ImageFilter.MaxFilter(11))),
    "slant (shear 0.3)": lambda p, rng: _slant(p, float(rng.choice([-0.3, 0.3]))),
    "rotated 20 degrees": lambda p, rng: p.rotate(
        float(rng.choice([-20, 20])), Image.Resampling.BILINEAR, fillcolor=255
    ),  # fmt: skip
    "small, off centre": _small_off_centre,
    "blurred": lambda p, rng: p.filter(ImageFilter.GaussianBlur(4)),
    "coarse (8x8 and back)": lambda p, rng: p.resize((8, 8), Image.Resampling.BILINEAR).resize(
        (PAGE, PAGE), Image.Resampling.BILINEAR
    ),  # fmt: skip
    "noisy paper": lambda p, rng: Image.fromarray(
        np.uint8(np.clip(np.asarray(p, dtype=np.float64) + rng.normal(0, 40, (PAGE, PAGE)), 0, 255))
    ),  # fmt: skip
    "uneven lighting": _uneven_light,
    "white ink on black": lambda p, rng: Image.fromarray(255 - np.asarray(p)),
    "drawn with a mouse": _mouse,
}


def pictures(digits: np.ndarray, change: Change, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [change(page(digit), rng) for digit in digits]


def measure(model_path: Path, digits: np.ndarray, labels: np.ndarray) -> dict[str, tuple[float, str]]:
    """{change: (accuracy, the worst class and its accuracy)} for one model, every picture read
    through nnx's own preparation of pictures (Model.predict of PIL images)."""
    import nnx

    model = nnx.load(model_path)
    results = {}
    for name, change in CHANGES.items():
        predicted = model.predict(pictures(digits, change)).classes
        right = predicted == labels
        per_class = {c: float(right[labels == c].mean()) for c in range(10) if (labels == c).any()}
        worst = min(per_class, key=per_class.get)
        results[name] = (float(right.mean()), f"{model.classes[worst]} {per_class[worst]:.0%}")
    return results


def main() -> None:
    from nnx.data.mnist import load_test, resolve_data_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path, help="model files or run directories")
    parser.add_argument("--images", type=int, default=2000, help="the first N MNIST test images")
    args = parser.parse_args()
    test = load_test(resolve_data_dir())
    digits, labels = test.images[: args.images].reshape(-1, 784), test.labels[: args.images].astype(np.int64)
    columns = [measure(path, digits, labels) for path in args.models]
    names = " | ".join(f"{path} (worst class)" for path in args.models)
    print(f"| change ({len(labels):,} MNIST test digits, as pictures) | {names} |")
    print("|---|" + "---|" * len(args.models))
    for change in CHANGES:
        cells = " | ".join(f"{column[change][0]:.1%} ({column[change][1]})" for column in columns)
        print(f"| {change} | {cells} |")
    medians = " | ".join(f"{statistics.median(acc for acc, _ in column.values()):.1%}" for column in columns)
    print(f"| median over the changes | {medians} |")


if __name__ == "__main__":
    from kernels import host_line  # (this script's folder is on sys.path)

    print(host_line(), flush=True)  # the machine these figures belong to, and no other
    main()
