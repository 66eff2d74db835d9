"""benchmarks/robustness.py on a small slice, and the preparation of pictures it measures:
digits as people, pens, mice and cameras give them, read through nnx's own preparation."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nnx.data.mnist import load_test
from nnx.images import ink_only, mnist_style, to_ink_on_black

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import robustness  # noqa: E402


def lit_from_one_side(digit: np.ndarray) -> np.ndarray:
    """A test digit as dark ink on a 112x112 page whose paper fades from white to mid grey."""
    picture = np.asarray(robustness.page(digit), dtype=np.float64)
    return np.uint8(picture / 255 * (255 - 110 * np.linspace(0, 1, 112)[None, :]))


def test_paper_that_is_grey_or_unevenly_lit_is_not_ink() -> None:
    """The shaded paper of a page lit from one side came out as ink, and the digit as a small
    part of a page-sized box; its ink alone now gives what the evenly lit page gives."""
    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[5:23, 12:16] = 255  # a "1"
    even = mnist_style(ink_only(np.asarray(robustness.page(digit.reshape(784)))))
    shaded_page = lit_from_one_side(digit.reshape(784))
    before = mnist_style(to_ink_on_black(shaded_page))  # the preparation without the paper taken away
    after = mnist_style(ink_only(shaded_page))

    def likeness(a: np.ndarray) -> float:
        return float(np.corrcoef(a.astype(float), even.astype(float))[0, 1])

    assert likeness(after) > 0.75 > 0.5 > likeness(before), (likeness(after), likeness(before))  # 0.84, 0.47
    grey_paper = np.full((100, 80), 180, dtype=np.uint8)
    grey_paper[20:80, 35:45] = 30
    ink = ink_only(grey_paper)
    assert ink[:15].max() == 0 and ink[30:70, 37:43].min() > 100  # paper 0, strokes bright


def test_even_paper_keeps_the_drawing_as_it_was() -> None:
    canvas = np.full((280, 280), 255, dtype=np.uint8)
    canvas[60:220, 130:150] = 0
    assert np.array_equal(ink_only(canvas), to_ink_on_black(canvas))
    small = np.zeros((28, 28), dtype=np.uint8)  # MNIST's own size: as it is
    small[8:20, 12:15] = 200
    assert np.array_equal(ink_only(small), small)


@pytest.mark.mnist
def test_the_suite_reads_every_change_of_a_slice(trained_mlp: Path, mnist_dir: Path) -> None:
    test = load_test(mnist_dir)
    digits, labels = test.images[:60].reshape(-1, 784), test.labels[:60].astype(np.int64)
    results = robustness.measure(trained_mlp, digits, labels)
    assert list(results) == list(robustness.CHANGES)
    for change, (accuracy, worst) in results.items():
        assert 0 <= accuracy <= 1 and worst.split()[0] in "0123456789", (change, worst)
    assert results["as drawn (no change)"][0] >= 0.9
    assert results["uneven lighting"][0] >= 0.85  # 19% before the paper was taken away
    for change, transform in robustness.CHANGES.items():  # each makes a picture that differs from the page
        picture = transform(robustness.page(digits[0]), np.random.default_rng(0))
        assert isinstance(picture, Image.Image) and picture.mode == "L", change
