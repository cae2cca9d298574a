"""The evaluation report (Markdown) and its figures: the paper's before/after table plus the robust metrics."""

from __future__ import annotations

import io
from pathlib import Path

from tli.io import atomic_write_bytes, atomic_write_text


def _f(x, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    return f"{x:.{digits}f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def _p(p) -> str:
    return "n/a" if p is None else ("< 1e-4" if p < 1e-4 else f"{p:.4f}")


def _per_layer(run: dict):
    """(split, layer, statistics) for every split and reported layer of one run."""
    for split in ("train", "control"):
        for layer, stats in run.get(split, {}).items():
            yield split, layer, stats


def render(summary: dict) -> str:
    s = summary["settings"]
    lines = [
        "# TLI evaluation report", "",
        f"Model `{s['model']}` (revision {s['revision']}, quantization {s['quantization']}), pooling `{s['pooling']}` "
        f"(template `{s['template']}`), adapter(s) {', '.join(f'`{a}`' for a in s['adapters'])} trained at layer "
        f"{s['target_layer']}. Layers are Hugging Face hidden-state indices ({s['indexing']}).", "",
    ]
    for run_name, run in summary["runs"].items():
        lines += [f"## {run_name}", "", "### Mean cosine of translation pairs (the paper's table)", "",
                  "| split | layer | n | before | after | delta | delta % | t | p (paired t) | p (Wilcoxon) | "
                  "Cohen's d_z | 95% CI of delta |", "|" + "---|" * 12]
        for split, layer, r in _per_layer(run):
            lines.append(
                f"| {split} | {layer} | {r['n']} | {_f(r['mean_before'])} | {_f(r['mean_after'])} | "
                f"{_f(r['delta'])} | {_f(r['delta_pct'], 2)} | {_f(r['t'], 2)} | {_p(r['p'])} | "
                f"{_p(r['wilcoxon_p'])} | {_f(r['cohen_dz'], 2)} | {_f(r['delta_ci_low'])} to "
                f"{_f(r['delta_ci_high'])} |")
        lines += ["", "### Against the mismatched-pair baseline, and retrieval", "",
                  "| split | layer | baseline before | baseline after | margin before | margin after | "
                  "P@1 before | P@1 after | MRR before | MRR after |", "|" + "---|" * 10]
        for split, layer, r in _per_layer(run):
            lines.append(
                f"| {split} | {layer} | {_f(r['baseline_cosine_before'])} | {_f(r['baseline_cosine_after'])} | "
                f"{_f(r['margin_before'])} | {_f(r['margin_after'])} | {_f(r['p_at_1_before'])} | "
                f"{_f(r['p_at_1_after'])} | {_f(r['mrr_before'])} | {_f(r['mrr_after'])} |")
        lines += ["", "### Reading", ""]
        for split, layer, r in _per_layer(run):
            shift = r["baseline_cosine_after"] - r["baseline_cosine_before"]
            lines.append(
                f"- {split}, layer {layer}: mean cosine {_f(r['mean_before'])} -> {_f(r['mean_after'])}; the "
                f"cosine of unrelated pairs moved by {_f(shift)}, so the margin over them changed by "
                f"{_f(r['margin_delta'])}"
                + (" (most of the raw gain is a global shift)." if abs(shift) > abs(r["delta"]) / 2 else "."))
        for layer, d in run.get("targeted", {}).items():
            lines.append(f"- Targeted? layer {layer}: {d['reading']}.")
        lines.append("")
    if summary.get("aggregate"):
        lines += ["## Across runs (mean ± standard deviation)", "", "| split | layer | statistic | mean | std | runs |",
                  "|---|---|---|---|---|---|"]
        for split, per_layer in summary["aggregate"].items():
            for layer, stats in per_layer.items():
                for key, v in stats.items():
                    lines.append(f"| {split} | {layer} | {key} | {_f(v['mean'])} | {_f(v['std'])} | {v['n']} |")
        lines.append("")
    return "\n".join(lines)


def write_report(summary: dict, path: str | Path) -> Path:
    return atomic_write_text(path, render(summary) + "\n")


def _png(fig, path) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def plot_layers(curves: dict, path: str | Path, title: str) -> Path:
    """curves[split] = (layers, mean cos before, mean cos after, baseline before, baseline after)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    for ax, (split, (x, cb, ca, bb, ba)) in zip(axes[0], curves.items(), strict=True):
        ax.plot(x, cb, "-", color="tab:gray", label="cosine before")
        ax.plot(x, ca, "-", color="tab:red", label="cosine after")
        ax.plot(x, bb, ":", color="tab:gray", label="unrelated-pair baseline before")
        ax.plot(x, ba, ":", color="tab:red", label="unrelated-pair baseline after")
        ax.set_title(f"{split} pairs")
        ax.set_xlabel("hidden-state index (0 = embeddings)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _png(fig, path)


def plot_scatter(points: dict, path: str | Path, title: str) -> Path:
    """points[split] = (cos before (P,), cos after (P,)) at one layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    lo, hi = 1.0, -1.0
    for split, (before, after) in points.items():
        ax.scatter(before, after, s=8, alpha=0.6, label=split)
        lo, hi = min(lo, min(before), min(after)), max(hi, max(before), max(after))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="no change")
    ax.set_xlabel("cosine before")
    ax.set_ylabel("cosine after")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _png(fig, path)
