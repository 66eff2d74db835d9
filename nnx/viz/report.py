"""`nnx plot`: a run's PNGs and its self-contained report.html."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from nnx.atomic import HTML_GENERATOR, write_atomic
from nnx.backend import get_backend
from nnx.data.datasets import class_names
from nnx.data.mnist import load_test
from nnx.errors import NnxError
from nnx.io import open_model
from nnx.metrics import confusion_matrix, predict_probabilities
from nnx.runs import human_value, read_json, read_metrics
from nnx.viz.plots import plot_augmented, plot_confusion, plot_curves, plot_first_layer, plot_misclassified

PLOTS = ("curves.png", "confusion.png", "misclassified.png", "weights.png")


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        if (run_dir / "config.yaml").is_file():  # a run that stopped before its first epoch ended
            resume = f"; nnx train --resume {run_dir} continues it" if (run_dir / "checkpoint.npz").is_file() else ""
            raise NnxError(f"{run_dir}: this run stopped before its first epoch ended: nothing to plot yet{resume}")
        raise NnxError(f"{run_dir}: no metrics.jsonl (not a run directory?)")
    return read_metrics(path)


def make_plots(run_dir: Path, data_dir: Path, device: str = "cpu", csv: tuple[Path, Path] | None = None) -> list[Path]:
    """Write the four PNGs and report.html into `run_dir`; returns their paths. The test set is
    the run's: `csv` (its data.train_csv and test_csv) when it trained on CSV files."""
    history = read_history(run_dir)
    model_path = run_dir / "model.npz"
    loaded = open_model(model_path, device)
    classes = class_names(loaded.header)
    backend = loaded.model.backend
    test = load_test(data_dir, csv)
    images = backend.asarray(test.images)
    probabilities = predict_probabilities(loaded.model, images, loaded.preprocess, backend)
    confusion = confusion_matrix(
        test.labels.astype("int64"), probabilities.argmax(axis=1), get_backend("cpu", cpu_path="numpy")
    )
    paths = [
        plot_curves({run_dir.name: history}, run_dir / "curves.png"),
        plot_confusion(confusion, run_dir / "confusion.png", classes),
        plot_misclassified(test.images, test.labels, probabilities, run_dir / "misclassified.png", classes=classes),
        plot_first_layer(loaded.header["architecture"], loaded.model.state(), run_dir / "weights.png"),
    ]
    augmented = _plot_augmentation(run_dir, test.images[:10], backend)
    if augmented is not None:
        paths.append(augmented)
    paths.append(write_report(run_dir, paths, confusion))
    return paths


def _plot_augmentation(run_dir: Path, images: Any, backend: Any) -> Path | None:
    """augmented.png, for a run whose config.yaml turns augmentation on: its shifts, rotations
    and elastic distortions, as its training drew them (the keys of its first batches)."""
    import yaml

    from nnx.augment import make_augment
    from nnx.config import AugmentConfig
    from nnx.trainer import batch_key

    try:
        raw = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        augment = AugmentConfig.model_validate(raw.get("training", {}).get("augment", {}))
        seed = int(raw.get("training", {}).get("seed", 0))
    except Exception:  # no config, or one of an older nnx: no picture, never a failed report
        return None
    transform = make_augment(backend, augment)
    if transform is None:
        return None
    pixels = backend.asarray(images)
    draws = [backend.to_numpy(transform(pixels, batch_key(seed, 1, batch, "augment"))) for batch in range(3)]
    what = f"shift <= {augment.max_shift} px, rotation <= {augment.max_rotation:g} degrees"
    if augment.elastic is not None:
        what += f", elastic alpha {augment.elastic.alpha:g}, sigma {augment.elastic.sigma:g}"
    return plot_augmented(images, draws, run_dir / "augmented.png", what)


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def write_report(run_dir: Path, pngs: list[Path], confusion: Any) -> Path:
    """report.html with every image embedded: it opens in a browser with no server or network."""
    summary_path = run_dir / "summary.json"
    summary = read_json(summary_path) if summary_path.is_file() else {}
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    rows = "".join(
        f"<tr><th>{html.escape(str(key).replace('_', ' '))}</th><td>{html.escape(human_value(key, value))}</td></tr>"
        for key, value in summary.items()
    )
    accuracy = summary.get("test_accuracy")
    headline = f"test accuracy {accuracy:.2%}" if isinstance(accuracy, float) else ""
    images = "".join(
        f"<figure>{_image(p, CAPTIONS.get(p.name, p.stem))}<figcaption>{html.escape(CAPTIONS.get(p.name, p.stem))}"
        "</figcaption></figure>"
        for p in pngs
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{HTML_GENERATOR}<title>nnx run {html.escape(run_dir.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; }} th, td {{ text-align: left; padding: 2px 12px; border-bottom: 1px solid #ddd; }}
pre {{ background: #f6f6f6; padding: 1rem; }} img {{ max-width: 100%; }} figure {{ margin: 1rem 0; }}
</style></head><body>
<h1>nnx run {html.escape(run_dir.name)}</h1>
<p>{html.escape(headline)}; {int(confusion.trace())} of {int(confusion.sum())} test images right</p>
<h2>Summary</h2><table>{rows}</table>
<h2>Plots</h2>{images}
<h2>Config</h2><pre>{html.escape(config)}</pre>
</body></html>
"""
    path = run_dir / "report.html"
    write_atomic(path, page.encode())
    return path


CAPTIONS = {
    "curves.png": "Loss and accuracy per epoch: training (solid) and validation (dashed).",
    "confusion.png": "Test set: how often each true class (rows) was predicted as each class (columns).",
    "misclassified.png": "The test images the model got wrong most confidently: true → predicted, confidence.",
    "weights.png": "The first layer's weights (red positive, blue negative): what each unit or filter looks for.",
    "augmented.png": "Test images (top) and three draws of the run's augmentation of them, as its training drew them.",
}
