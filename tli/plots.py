"""Figures for the reports (matplotlib, headless, written atomically as PNG)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from tli.io import atomic_write_bytes

SCAN_PANELS = [
    ("cosine", "gold-pair cosine (95% CI) vs mismatched baseline"),
    ("margin", "margin = cosine - baseline"),
    ("p_at_1", "retrieval P@1 (both directions)"),
    ("mrr", "retrieval MRR"),
    ("csls_p_at_1", "CSLS P@1 (k=10)"),
    ("bos_norm_ratio", "BOS norm / median word-token norm"),
]


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def plot_layer_curves(rows: Sequence[dict], path: str | Path, title: str) -> Path:
    """One panel per metric over hidden-state index; a line per (model, split); CI band on cosine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8), sharex=True)
    groups = sorted({(r["model"], r["split"]) for r in rows})
    colours = {"train": "tab:blue", "control": "tab:orange"}
    for ax, (metric, label) in zip(axes.flat, SCAN_PANELS, strict=True):
        for model, split in groups:
            sel = sorted((r for r in rows if r["model"] == model and r["split"] == split), key=lambda r: r["layer"])
            x = [r["layer"] for r in sel]
            style = "-" if model == "base" else "--"
            colour = colours.get(split)
            ax.plot(x, [r[metric] for r in sel], style, color=colour, label=f"{model}/{split}")
            if metric == "cosine":
                ax.fill_between(x, [r["cosine_ci_low"] for r in sel], [r["cosine_ci_high"] for r in sel],
                                color=colour, alpha=0.2)
                ax.plot(x, [r["baseline_cosine"] for r in sel], ":", color=colour, label=f"{model}/{split} baseline")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("hidden-state index (0 = embeddings)")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)
