"""`nnx sweep show`: the trials ranked by the metric, the best config as YAML, and a
self-contained report.html (optimisation history, parameter importances, parallel coordinates)."""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnx.atomic import HTML_GENERATOR, write_atomic
from nnx.errors import NnxError
from nnx.sweep.spec import export_config

STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}


@dataclass
class TrialRow:
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    epochs: int | None
    note: str
    run_dir: str


def trial_rows(study: Any) -> list[TrialRow]:
    """Complete trials best first, then pruned (by their last reported value), running, waiting,
    failed. Surplus records (a worker that asked past the budget) are left out."""
    maximize = study.direction.name == "MAXIMIZE"
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue
        value = t.value
        if value is None and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        note = t.user_attrs.get("error") or t.user_attrs.get("diverged") or ""
        if t.user_attrs.get("interrupted"):
            note = "stopped by Ctrl-C (queued again)"
        elif t.state.name == "FAIL" and not note:
            note = "its worker died (killed, or its machine lost)"  # (its retry's row says whose it is)
        if t.state.name == "PRUNED" and not note:
            note = f"pruned after epoch {max(t.intermediate_values)}" if t.intermediate_values else "pruned"
        if t.system_attrs.get("failed_trial") is not None:
            note = (note + "; " if note else "") + f"retry of trial {t.system_attrs['failed_trial']}"
        if t.user_attrs.get("retry_of") is not None:
            note = (note + "; " if note else "") + f"retry of trial {t.user_attrs['retry_of']}"
        rows.append(
            TrialRow(
                t.number,
                t.state.name,
                value,
                dict(t.params),
                t.user_attrs.get("epochs"),
                note,
                t.user_attrs.get("run_dir", ""),
            )  # fmt: skip
        )

    def key(row: TrialRow) -> tuple:
        missing = row.value is None
        value = 0.0 if missing else (-row.value if maximize else row.value)
        return STATE_ORDER.get(row.state, 5), missing, value, row.number

    return sorted(rows, key=key)


def best_config(study: Any) -> str:
    """The best complete trial's config as YAML that `nnx train -c FILE` reproduces."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        raise NnxError(f"sweep {study.study_name}: no complete trial yet")
    best = study.best_trial
    config = best.user_attrs.get("config")
    if config is None:
        raise NnxError(f"sweep {study.study_name}: trial {best.number} kept no config")
    header = (
        f"# Best trial {best.number} of sweep {study.study_name}: {_metric(study)} {best.value:.6g}\n"
        f"# params: {json.dumps(best.params)}\n"
    )
    return header + export_config(config, f"{study.study_name}-best")


def _metric(study: Any) -> str:
    return study.user_attrs.get("sweep", {}).get("metric", "value")


def _figures(study: Any) -> list[tuple[str, str | None, str]]:
    """(title, base64 PNG or None, caption) for each plot; None where it cannot be drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as ov
    except ImportError:
        return [("plots", None, "matplotlib is not installed: pip install 'nnx[plot]' for the plots")]
    metric = _metric(study)
    plots = [
        ("Optimisation history", ov.plot_optimization_history, f"{metric} of each complete trial, best so far"),
        (
            "Parameter importances",
            ov.plot_param_importances,
            f"share of {metric}'s variation per parameter",
        ),
        (
            "Parallel coordinates",
            ov.plot_parallel_coordinate,
            f"complete trials' parameters, coloured by {metric}",
        ),
    ]
    out = []
    for title, plot, caption in plots:
        try:
            axes = plot(study)
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            buffer = io.BytesIO()
            figure.set_size_inches(9, 4.5)
            figure.tight_layout()
            figure.savefig(buffer, format="png", dpi=100)
            plt.close(figure)
            out.append((title, base64.b64encode(buffer.getvalue()).decode(), caption))
        except Exception as exc:  # too few complete trials for this plot, typically
            plt.close("all")
            out.append((title, None, f"not drawn: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"))
    return out


def write_report(study: Any, path: Path) -> Path:
    """report.html with the trials table, the best config and the plots, images embedded."""
    metric = _metric(study)
    rows = trial_rows(study)
    keys = sorted({k for r in rows for k in r.params})
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["trial", "state", metric, *keys, "epochs", "note"])
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(c))}</td>"
            for c in [
                r.number,
                r.state.lower(),
                "" if r.value is None else f"{r.value:.6g}",
                *(_short(r.params.get(k, "")) for k in keys),
                r.epochs or "",
                r.note,
            ]  # fmt: skip
        )
        + "</tr>"
        for r in rows
    )
    try:
        best = f"<h2>Best config</h2><pre>{html.escape(best_config(study))}</pre>"
    except NnxError as exc:
        best = f"<p>{html.escape(str(exc))}</p>"
    figures = "".join(
        f"<figure><h2>{html.escape(title)}</h2>"
        + (f'<img alt="{html.escape(title)}" src="data:image/png;base64,{png}">' if png else "")
        + f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for title, png, caption in _figures(study)
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">{HTML_GENERATOR}<title>nnx sweep {html.escape(study.study_name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:left}}
img{{max-width:100%}}figcaption{{color:#555}}pre{{background:#f6f6f6;padding:1em}}</style></head>
<body><h1>Sweep {html.escape(study.study_name)}</h1>
<p>{len(rows)} trials; {metric}, {study.direction.name.lower()}.</p>
{figures}{best}<h2>Trials</h2><table><tr>{head}</tr>{body}</table></body></html>
"""
    write_atomic(path, page.encode())
    return path


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
