"""The study figure: what each recipe buys in alignment and what it costs in behaviour, one point per recipe.

x: held-out NLL harm, the relative rise of the negative log-likelihood of held-out text over the base model, the
larger of the two languages (per run; in %); y: alignment gain on unseen words, the change of centred pool P@1 (in
points) at the reported index on the words the run never saw: a cross-fitted adapter's held-out fold (its "unseen"
split, `tli.eval.unseen`), else the control pairs; colour: the change of few-shot
translation accuracy (points) on the words the adapters never saw (the "unseen" split of cross-fitted recipes, the
control split otherwise), both directions pooled; marker: circle where the alignment is on held-out folds, square on
control pairs; error bars: 95% t-intervals of the mean over the recipe's runs
(none for a one-run recipe: summary.json keeps no per-sentence NLLs or per-pool hits to resample); a dashed line at
the harm budget (`objective.max_harm`).

    python -m tli.eval.front <eval dir> [<eval dir> ...] --out front.png [--budget 0.02] [--layer 18]

An eval dir is `<run or sweep dir>/eval` (or the directory above it). An evaluation of several recipes
(`evaluate.py +adapters.<recipe>=[...]`) gives a point per recipe; any other evaluation one point for all its runs,
named after its directory.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tli.errors import TLIError
from tli.eval.plots import _figure, save_figure
from tli.eval.saved import eval_dir_of, read_summary

BUDGET = 0.02  # objective.max_harm's default: a 2% rise of held-out NLL


class SummaryError(TLIError, ValueError):
    """An evaluation summary that cannot give a recipe point (names the file and what is missing)."""


@dataclass(frozen=True)
class RecipePoint:
    """One recipe: the means over its runs, each with its 95% CI (None with a single run)."""

    name: str
    alignment: float | None  # centred pool P@1 change on unseen words (after - before; 0.1 = +10 points)
    alignment_low: float | None
    alignment_high: float | None
    harm: float | None  # relative held-out NLL rise, the larger of the two languages (0.013 = +1.3%)
    harm_low: float | None
    harm_high: float | None
    translation: float | None  # translation accuracy change on unseen words, in points (-5.0 = five points worse)
    translation_split: str | None = None  # where the translation change was counted: "unseen" or "control"
    n_runs: int = 1
    layer: int | None = None
    source: str = ""  # the evaluation directory
    alignment_split: str | None = None  # where the alignment was measured: "unseen" (held-out folds) or "control"


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high): the t-interval of the mean; the bounds are None below two values."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None, None
    from scipy.stats import t

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = float(t.ppf(0.5 + level / 2, len(values) - 1)) * sd / math.sqrt(len(values))
    return mean, mean - half, mean + half


def _layer_cell(run: dict, split: str, layer: int):
    cells = run.get(split) or {}
    return cells.get(str(layer), cells.get(layer))


def run_alignment(run: dict, layer: int) -> tuple[str, float | None]:
    """(split, centred pool P@1 after - before at `layer`) on the words the run never saw: its held-out fold
    ("unseen") when cross-fitted, else the control pairs (None without them or without centring)."""
    split = "unseen" if run.get("unseen") else "control"
    cell = (_layer_cell(run, split, layer) or {}).get("centred")
    return split, cell["after"]["pool_p_at_1"] - cell["before"]["pool_p_at_1"] if cell else None


def run_harm(run: dict) -> float | None:
    """The larger relative NLL change of the two languages (None without lm_loss, or with a non-finite NLL)."""
    changes = [c.get("relative_change") for c in (run.get("lm_loss") or {}).values()]
    if not changes or any(c is None for c in changes):
        return None
    return max(changes)


def translation_counts(run: dict) -> tuple[str, float, int] | None:
    """(split, summed accuracy change times n, n) over both directions on the words the adapter never saw: the
    "unseen" split of a cross-fitted adapter, else "control"."""
    translation = run.get("translation") or {}
    split = "unseen" if "unseen" in translation else "control" if "control" in translation else None
    if split is None:
        return None
    cells = translation[split].values()
    return split, sum((c["accuracy_after"] - c["accuracy_before"]) * c["n"] for c in cells), sum(c["n"] for c in cells)


def recipe_point(name: str, runs: Sequence[dict], layer: int, source: str = "") -> RecipePoint:
    """The point of one recipe from its runs' summary entries. The translation change pools every run's rows (a
    cross-fitted recipe's runs score different words: together, every word once per seed)."""
    aligned = [run_alignment(r, layer) for r in runs]
    a, a_low, a_high = mean_ci([value for _, value in aligned])
    h, h_low, h_high = mean_ci([run_harm(r) for r in runs])
    counts = [c for c in (translation_counts(r) for r in runs) if c is not None]
    n = sum(c[2] for c in counts)
    translation = 100 * sum(c[1] for c in counts) / n if n else None
    return RecipePoint(name, a, a_low, a_high, h, h_low, h_high, translation,
                       "/".join(sorted({c[0] for c in counts})) or None, len(runs), layer, source,
                       "/".join(sorted({split for split, value in aligned if value is not None})) or None)


def points_from_summary(summary: dict, source: str = "", layer: int | None = None,
                        name: str | None = None) -> list[RecipePoint]:
    """One point per recipe of an eval/summary.json (`summary["recipes"]`), or one point named `name` for all the runs
    of an evaluation without recipes. `layer`: the reported index (default: the highest, the output index when
    evaluated)."""
    layers = summary["settings"]["layers"]
    layer = max(layers) if layer is None else layer
    if layer not in layers:
        raise SummaryError(f"{source or 'summary.json'}: index {layer} was not reported (eval.layers: {layers})")
    runs = summary["runs"]
    recipes = {r: recipe["runs"] for r, recipe in (summary.get("recipes") or {}).items()}
    recipes = recipes or {name or Path(source).name or "runs": list(runs)}
    points = [recipe_point(r, [runs[n] for n in names], layer, source) for r, names in recipes.items()]
    for p in points:
        if p.alignment is None:
            raise SummaryError(f"{source or 'summary.json'}: recipe {p.name!r} has no centred figures on unseen words "
                               f"at index {layer} (evaluate cross-fitted adapters or control pairs, with "
                               "metrics.centre)")
    return points


def load_points(eval_dir: str | Path, layer: int | None = None) -> list[RecipePoint]:
    """The recipe points of `<eval_dir>/summary.json` (or `<eval_dir>/eval/summary.json`)."""
    eval_dir = eval_dir_of(eval_dir)
    summary = read_summary(eval_dir, SummaryError)
    label = eval_dir.parent.name if eval_dir.name == "eval" else eval_dir.name
    return points_from_summary(summary, str(eval_dir), layer, name=label)


def _bars(mid: float, low: float | None, high: float | None, scale: float) -> tuple[float, float]:
    return (0.0, 0.0) if low is None or high is None else (scale * (mid - low), scale * (high - mid))


def plot_front(points: Sequence[RecipePoint], path: str | Path, budget: float | None = BUDGET,
               title: str = "") -> Path:
    """The study figure (module docstring), written atomically as PNG. Points without a harm are left out."""
    return save_figure(front_figure(points, budget, title), path)


def front_figure(points: Sequence[RecipePoint], budget: float | None = BUDGET, title: str = ""):
    """The study figure as a matplotlib Figure; the colour bar only where some point has a translation change."""
    from matplotlib import cm, colors

    shown = [p for p in points if p.alignment is not None and p.harm is not None]
    fig, axes = _figure(1, 1, 8, 6)
    ax = axes[0][0]
    spread = max([abs(p.translation) for p in shown if p.translation is not None] or [0.0]) or 1.0
    norm, cmap = colors.Normalize(-spread, spread), "RdBu"  # centred at 0: red worse, blue better
    for p in shown:
        x, y = 100 * p.harm, 100 * p.alignment
        xerr, yerr = _bars(p.harm, p.harm_low, p.harm_high, 100), _bars(p.alignment, p.alignment_low,
                                                                        p.alignment_high, 100)
        ax.errorbar([x], [y], xerr=[[xerr[0]], [xerr[1]]], yerr=[[yerr[0]], [yerr[1]]], fmt="none",
                    ecolor="0.5", elinewidth=1, capsize=3, zorder=1)
    markers = {"unseen": ("o", "held-out folds (cross-fitted)"), "control": ("s", "control pairs")}
    for split, (marker, where) in markers.items():
        coloured = [p for p in shown if p.translation is not None and (p.alignment_split or "control") == split]
        if coloured:
            ax.scatter([100 * p.harm for p in coloured], [100 * p.alignment for p in coloured], marker=marker,
                       c=[p.translation for p in coloured], cmap=cmap, norm=norm, s=70, edgecolors="k", zorder=2,
                       label=f"alignment on {where}")
    grey = [p for p in shown if p.translation is None]
    if grey:
        ax.scatter([100 * p.harm for p in grey], [100 * p.alignment for p in grey], color="0.75", s=70,
                   edgecolors="k", zorder=2, label="no translation figures")
    if len(grey) < len(shown):
        fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax,
                     label="translation accuracy change on unseen words (points)")
    ax.axhline(0, color="0.6", lw=0.8, ls=":")
    if budget is not None:
        ax.axvline(100 * budget, color="tab:red", lw=1, ls="--", label=f"harm budget {100 * budget:g}%")
    ax.legend(fontsize=8, loc="best")
    label = "held-out NLL harm: relative rise, max of the two languages (%)"
    if max([100 * p.harm for p in shown] or [0]) > 20:  # a collapsed recipe (+250%) beside ones within the budget
        ax.set_xscale("symlog", linthresh=1.0)
        ends = [100 * (v if v is not None else p.harm) for p in shown for v in (p.harm_low, p.harm_high)]
        ax.set_xlim(min(ends + [0]) - 0.5, 2 * max(ends))  # symlog's own margins reach far into negative harm
        label += "; linear to 1%, logarithmic above"
    ax.set_xlabel(label)
    layers = sorted({p.layer for p in shown if p.layer is not None})
    where = f" at index {', '.join(map(str, layers))}" if layers else ""
    splits = {"unseen": "held-out folds", "control": "control pairs"}
    on = " and ".join(splits[x] for x in sorted({x for p in shown for x in (p.alignment_split or "").split("/") if x}))
    ax.set_ylabel(f"alignment gain on unseen words ({on or 'n/a'}):\ncentred pool P@1 change{where} (points)")
    ax.grid(alpha=0.3)
    ax.set_title(title or "what each recipe buys (alignment) and costs (harm); bars: 95% CI over runs", fontsize=10)
    _labels(ax, [(p.name, 100 * p.harm, 100 * p.alignment) for p in shown])
    return fig


def label_offsets(anchors: Sequence[tuple[float, float]], sizes: Sequence[tuple[float, float]],
                  gap: float = 6.0) -> list[float]:
    """Vertical offsets (display units, from `gap` above each anchor downwards) so that no two label boxes overlap:
    `anchors` are the points in display coordinates, `sizes` the labels' (width, height); boxes start `gap` right
    of their point. Greedy, highest anchor first."""
    placed: list[tuple[float, float, float, float]] = []  # x0, y0, x1, y1
    out = [0.0] * len(anchors)
    for i in sorted(range(len(anchors)), key=lambda i: (-anchors[i][1], anchors[i][0])):
        (x, y), (w, h) = anchors[i], sizes[i]
        offset = gap
        while any(x + gap < bx1 and bx0 < x + gap + w and y + offset < by1 and by0 < y + offset + h
                  for bx0, by0, bx1, by1 in placed):
            offset -= h
        placed.append((x + gap, y + offset, x + gap + w, y + offset + h))
        out[i] = offset
    return out


def _labels(ax, labels: Sequence[tuple[str, float, float]], fontsize: int = 8) -> None:
    """Each recipe's name beside its point, moved down where it would cover another label."""
    anchors = [tuple(ax.transData.transform((x, y))) for _, x, y in labels]
    px = fontsize * ax.figure.dpi / 72  # the font size in pixels
    sizes = [(0.6 * px * len(name), 1.3 * px) for name, _, _ in labels]
    for (name, x, y), offset in zip(labels, label_offsets(anchors, sizes, gap=0.75 * px), strict=True):
        ax.annotate(name, (x, y), textcoords="offset pixels", xytext=(0.75 * px, offset), fontsize=fontsize)


def _ci(mid, low, high, scale: float = 100, unit: str = "") -> str:
    if mid is None:
        return "n/a"
    text = f"{scale * mid:+.1f}{unit}"
    return text + (f" [{scale * low:+.1f}, {scale * high:+.1f}]" if low is not None and high is not None else "")


def table_rows(points: Sequence[RecipePoint]) -> list[dict]:
    """The console table: one row per recipe, figures in points and percent."""
    return [{"recipe": p.name, "runs": p.n_runs, "alignment gain (P@1 points)": _ci(p.alignment, p.alignment_low,
                                                                                      p.alignment_high)
             + (f" ({p.alignment_split})" if p.alignment_split else ""),
             "harm (NLL %)": _ci(p.harm, p.harm_low, p.harm_high, unit="%"),
             "translation (points)": _ci(p.translation, None, None, scale=1)
             + (f" ({p.translation_split})" if p.translation_split else ""), "evaluation": p.source}
            for p in points]


def _unique_names(groups: list[list[RecipePoint]]) -> list[RecipePoint]:
    """All points; a name found in several evaluations gets its evaluation's directory in brackets."""
    from collections import Counter
    from dataclasses import replace

    counts = Counter(p.name for g in groups for p in g)
    return [replace(p, name=f"{p.name} ({Path(p.source).parent.name or p.source})") if counts[p.name] > 1 else p
            for g in groups for p in g]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tli.eval.front", description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_dirs", nargs="+", help="evaluation directories (<run or sweep dir>/eval)")
    parser.add_argument("--out", default="front.png", help="the PNG to write (default: %(default)s)")
    parser.add_argument("--budget", default=str(BUDGET),
                        help="the harm budget drawn as a line, relative (default: %(default)s; none: no line)")
    parser.add_argument("--layer", type=int, help="the reported index of the alignment (default: the highest)")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    try:
        budget = None if args.budget.lower() in ("none", "null") else float(args.budget)
    except ValueError:
        parser.error(f"--budget {args.budget!r} must be a number (0.02 = 2%) or none")
    try:
        points = _unique_names([load_points(d, args.layer) for d in args.eval_dirs])
        plot_front(points, args.out, budget, args.title)
    except TLIError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from tli.eval.tables import print_table

    rows = table_rows(points)
    print_table(rows, list(rows[0]), title="recipes: alignment gain on unseen words against held-out NLL harm")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
