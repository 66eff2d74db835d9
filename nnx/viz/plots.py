"""PNG plots of a run: learning curves, confusion matrix, misclassified digits, first-layer weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nnx.errors import NnxError
from nnx.metrics import most_confident_mistakes


def pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise NnxError("plots need matplotlib: pip install 'nnx[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    import io

    from nnx.atomic import PNG_SOFTWARE, write_atomic

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": PNG_SOFTWARE})
    pyplot().close(fig)
    write_atomic(path, buffer.getvalue())
    return path


def plot_curves(runs: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Loss and accuracy per epoch, train (solid) and validation (dashed), one colour per run."""
    plt = pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for index, (name, history) in enumerate(runs.items()):
        colour = f"C{index}"
        epochs = [m["epoch"] for m in history]
        # Markers: a run of one epoch is a point, not an invisible line.
        train = {"color": colour, "marker": "o", "markersize": 4}
        val = {"color": colour, "marker": "s", "markersize": 4, "linestyle": "--"}
        loss_ax.plot(epochs, [m["train_loss"] for m in history], **train, label=f"{name} train")
        acc_ax.plot(epochs, [100 * m["train_accuracy"] for m in history], **train, label=f"{name} train")
        if any(m.get("val_loss") is not None for m in history):  # an epoch without validation is a gap
            loss_ax.plot(epochs, [_or_nan(m.get("val_loss")) for m in history], **val, label=f"{name} validation")
            acc_ax.plot(
                epochs, [100 * _or_nan(m.get("val_accuracy")) for m in history], **val, label=f"{name} validation"
            )
    loss_ax.set(title="loss", xlabel="epoch", ylabel="cross-entropy")
    acc_ax.set(title="accuracy", xlabel="epoch", ylabel="%")
    from matplotlib.ticker import MaxNLocator

    last = max((m["epoch"] for history in runs.values() for m in history), default=1)
    for ax in (loss_ax, acc_ax):
        ax.set_xlim(0.5, last + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def plot_confusion(confusion: np.ndarray, path: Path, classes: list[str] | None = None) -> Path:
    """Heatmap of C[true, predicted] with the count in every cell."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    # Log colour scale: the diagonal is ~1000, the mistakes a handful, and both should show.
    image = ax.imshow(np.log1p(confusion), cmap="Blues")
    for (true, predicted), count in np.ndenumerate(confusion):
        dark = np.log1p(count) > 0.6 * np.log1p(confusion.max())
        ax.text(predicted, true, str(count), ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true", title="confusion matrix (test set)")
    if classes and classes != [str(k) for k in range(10)]:
        ax.set_xticklabels(classes, rotation=45, ha="right")
        ax.set_yticklabels(classes)
    fig.colorbar(image, ax=ax, label="log(1 + count)")
    fig.tight_layout()
    return _save(fig, path)


def plot_misclassified(
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    path: Path,
    count: int = 36,
    classes: list[str] | None = None,
) -> Path:
    plt = pyplot()
    chosen = most_confident_mistakes(labels, probabilities, count)
    columns = 6
    rows = max(1, int(np.ceil(len(chosen) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.8))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, index in zip(np.atleast_1d(axes).ravel(), chosen, strict=False):
        predicted = int(probabilities[index].argmax())
        ax.imshow(images[index].reshape(28, 28), cmap="gray_r")
        true, guess = (classes[labels[index]], classes[predicted]) if classes else (labels[index], predicted)
        ax.set_title(f"#{index}: {true}→{guess}\n{probabilities[index, predicted]:.0%}", fontsize=8)
    fig.suptitle("most confidently misclassified test images (true→predicted, confidence)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_first_layer(architecture: list[dict[str, Any]], arrays: dict[str, np.ndarray], path: Path) -> Path:
    """A dense first layer's weights as 28x28 images (one per unit), or a conv layer's filters."""
    plt = pyplot()
    index = next(i for i, layer in enumerate(architecture) if layer["type"] in ("linear", "conv2d"))
    W = arrays[f"{index}.W"]
    if architecture[index]["type"] == "linear":
        tiles = W.T.reshape(-1, 28, 28)  # unit u's weights on the 784 pixels
        what = "units' 784 input weights as 28x28 images"
    else:
        tiles = W[:, 0] if W.shape[1] == 1 else W.mean(axis=1)  # (out, k, k)
        what = f"{W.shape[2]}x{W.shape[3]} filters" + ("" if W.shape[1] == 1 else " (mean over input channels)")
    total = len(tiles)
    tiles = tiles[:64]
    columns = 8
    rows = int(np.ceil(len(tiles) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.2, rows * 1.2 + 0.6))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    # One colour scale for all, so tiles compare: red positive, blue negative, white zero.
    limit = float(np.abs(tiles).max()) or 1.0
    image = None
    for ax, tile in zip(np.atleast_1d(axes).ravel(), tiles, strict=False):
        image = ax.imshow(tile, cmap="seismic", vmin=-limit, vmax=limit)
    fig.suptitle(f"first layer: {len(tiles)} of {total} {what}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    if image is not None:
        fig.colorbar(image, ax=np.atleast_1d(axes).ravel().tolist(), fraction=0.03, label="weight")
    return _save(fig, path)


def plot_augmented(images: np.ndarray, variants: list[np.ndarray], path: Path, what: str) -> Path:
    """Some images (top row) and, under each, what augmentation made of it in a few
    batches (one row a draw): the distortions a run trains on, to check by eye."""
    plt = pyplot()
    rows, columns = 1 + len(variants), len(images)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.1 + 0.5))
    for row, batch in enumerate([images, *variants]):
        for column, image in enumerate(batch):
            ax = np.atleast_2d(axes)[row, column]
            ax.imshow(image.reshape(28, 28), cmap="gray_r")
            ax.axis("off")
    fig.suptitle(f"images (top) and {len(variants)} draws of their augmentation: {what}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
