"""Figures for the reports (matplotlib, headless, written atomically as PNG). Panels and labels come from the metric
registry."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

from tli.eval.metrics import METRICS
from tli.io import atomic_write_bytes

SCAN_PANELS = ["cosine", "margin_z", "mrr", "pool_p_at_1", "csls_p_at_1", "bos_norm_ratio"]
LABELS = {**{m.name: m.label for m in METRICS.values()}, "bos_norm_ratio": "BOS norm / median word-token norm"}
COLOURS = {"train": "tab:blue", "unseen": "tab:green", "control": "tab:orange"}


def _figure(n_rows: int, n_cols: int, width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(n_rows, n_cols, figsize=(width, height), squeeze=False)


def save_figure(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def plot_layer_curves(rows: Sequence[dict], path: str | Path, title: str) -> Path:
    """Scan figure: one panel per metric over hidden-state index; a line per (model, split, vectors); the gold
    cosine with its CI band and the mismatched baseline dotted."""
    fig, axes = _figure(2, 3, 15, 8)
    groups = sorted({(r["model"], r["split"], r["vectors"]) for r in rows})
    for ax, name in zip(axes.flat, SCAN_PANELS, strict=True):
        for model, split, vectors in groups:
            if name in ("cosine", "bos_norm_ratio") and vectors != "raw":
                continue  # centring changes neither the BOS diagnostic nor what the raw-cosine panel is about
            sel = sorted((r for r in rows if (r["model"], r["split"], r["vectors"]) == (model, split, vectors)),
                         key=lambda r: r["layer"])
            x = [r["layer"] for r in sel]
            style = ("-" if model == "base" else "--") if vectors == "raw" else ("-." if model == "base" else ":")
            colour = COLOURS.get(split)
            ax.plot(x, [r[name] for r in sel], style, color=colour, label=f"{model}/{split}/{vectors}")
            if name == "cosine":
                ax.fill_between(x, [r["cosine_ci_low"] for r in sel], [r["cosine_ci_high"] for r in sel],
                                color=colour, alpha=0.2)
                ax.plot(x, [r["baseline_cosine"] for r in sel], ":", color=colour, lw=2,
                        label=f"{model}/{split} mismatched baseline")
        ax.set_title(LABELS[name], fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("hidden-state index (0 = embeddings)")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def plot_before_after(curves: dict, path: str | Path, title: str) -> Path:
    """Evaluation figure: curves[split] = {"layers", "cosine_before", "cosine_after", "baseline_before",
    "baseline_after"} (mean over pairs at every index)."""
    fig, axes = _figure(1, len(curves), 6 * len(curves), 4)
    for ax, (split, c) in zip(axes[0], curves.items(), strict=True):
        ax.plot(c["layers"], c["cosine_before"], "-", color="tab:gray", label="cosine before")
        ax.plot(c["layers"], c["cosine_after"], "-", color="tab:red", label="cosine after")
        ax.plot(c["layers"], c["baseline_before"], ":", color="tab:gray", label="mismatched-pair baseline before")
        ax.plot(c["layers"], c["baseline_after"], ":", color="tab:red", label="mismatched-pair baseline after")
        ax.set_title(f"{split} pairs")
        ax.set_xlabel("hidden-state index (0 = embeddings)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def plot_scatter(points: dict, path: str | Path, title: str, label: str = "cosine") -> Path:
    """points[split] = (score before (P,), score after (P,)), one point per pair or query; the diagonal is no change."""
    fig, axes = _figure(1, 1, 5, 5)
    ax = axes[0][0]
    lo, hi = math.inf, -math.inf
    for split, (before, after) in points.items():
        if not before:
            continue
        ax.scatter(before, after, s=8, alpha=0.6, label=split, color=COLOURS.get(split))
        lo, hi = min(lo, min(before), min(after)), max(hi, max(before), max(after))
    if lo < hi:
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="no change")
    ax.set_xlabel(f"{label} before")
    ax.set_ylabel(f"{label} after")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def gold_logprob_points(rows: list[dict]) -> dict:
    """plot_scatter points from translation.csv rows of adapters (not the nn_shots null): the gold translation's
    mean log-probability per query, before and after, trained (or unseen) words and control words apart."""
    points: dict = {}
    for r in rows:
        b, a = r.get("gold_logprob_before"), r.get("gold_logprob_after")
        if r.get("run") == "nn_shots" or b is None or a is None or not (math.isfinite(b) and math.isfinite(a)):
            continue
        pair = points.setdefault(r["split"], ([], []))
        pair[0].append(b)
        pair[1].append(a)
    return points
