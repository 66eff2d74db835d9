"""Terminal drawings: a digit in half-block characters, probability bars and a network's layers."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

ASCII_RAMP = " .:-=+*#%@"


def digit_text(pixels: np.ndarray, console: Console) -> Text:
    """28x28 uint8 -> 14 lines of '▀' (upper pixel as foreground, lower as background) in colour
    terminals, or an ASCII grey ramp elsewhere."""
    image = np.asarray(pixels, dtype=np.uint8).reshape(28, 28)
    text = Text()
    if console.is_terminal and console.color_system is not None:
        for top, bottom in zip(image[0::2], image[1::2], strict=True):
            for t, b in zip(top.tolist(), bottom.tolist(), strict=True):
                text.append("▀", style=f"rgb({t},{t},{t}) on rgb({b},{b},{b})")
            text.append("\n")
    else:
        levels = (image.astype(np.int32) * (len(ASCII_RAMP) - 1) + 127) // 255
        for row in levels:
            text.append("".join(ASCII_RAMP[v] * 2 for v in row).rstrip() + "\n")
    return text


def probability_table(probabilities: np.ndarray, width: int = 30, classes: list[str] | None = None) -> Table:
    """A row per class: the class, its probability and a bar; the predicted class highlighted."""
    best = int(np.argmax(probabilities))
    table = Table(show_header=True, box=None, pad_edge=False)
    table.add_column("class", justify="right")
    table.add_column("p", justify="right")
    table.add_column("")
    for k, p in enumerate(probabilities.tolist()):
        filled = int(round(p * width))
        bar = "█" * filled + "·" * (width - filled)
        style = "bold green" if k == best else ""
        table.add_row(class_label(k, classes), f"{p:.1%}", Text(bar, style=style), style=style)
    return table


def class_label(k: int, classes: list[str] | None) -> str:
    """ "7" for a digit; "7 Sneaker" where the classes have names."""
    name = classes[k] if classes else str(k)
    return name if name == str(k) else f"{k} {name}"


def layer_table(model: Any, title: str = "layers") -> Table:
    """A row per layer: what it is, its output shape for one image and its parameters, then the totals."""
    table = Table(title=title, box=None, pad_edge=False)
    table.add_column("#", justify="right")
    table.add_column("layer", overflow="fold")
    table.add_column("output", justify="right", no_wrap=True)
    table.add_column("parameters", justify="right", no_wrap=True)
    for i, (text, shape, count) in enumerate(model.summary()):
        table.add_row(str(i), text, "x".join(map(str, shape)) if shape else "?", f"{count:,}" if count else "")
    table.add_row("", "total", "", f"{model.count_parameters():,}", style="bold")
    return table
