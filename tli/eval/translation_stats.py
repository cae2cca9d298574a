"""Few-shot translation compared: statistics of one adapter before/after, and their aggregate across runs.

Input: the rows of `tli.eval.translation.before_after_rows` (one per word, split and direction, with boolean
`correct_before` / `correct_after`). Per split and direction: accuracy before and after with percentile bootstrap
CIs, the paired bootstrap CI of the change (words resampled jointly, so before, after and change share one set of
resamples), and the exact McNemar test: a two-sided binomial test (p = 0.5) of c = wrong->right among the b + c
discordant words (p = 1 when there are none). The trained-vs-control comparison bootstraps each split independently.
All results are JSON-friendly dicts. The report section: `tli.eval.sections`. Non-finite correctness values (NaN or
inf where a boolean was expected) never raise: the word is left out and counted in `n_nonfinite`.

Graded scores (`tli.eval.graded`: gold_logprob, chrf, gold_rank; rows with `<score>_before` / `<score>_after`):
each cell gets "graded": {score: `paired_stats` of before/after over the words}, the trained-vs-control comparison
"graded": {score: `difference_in_differences`}, and the aggregate across runs the mean and sd of each score's
mean before, mean after and delta (and of the difference in differences). A missing (None) score counts as
non-finite and is left out of that score's statistics. Rows without graded columns get no "graded" section.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import binomtest

from tli.eval.stats import (
    aggregate_runs,
    bootstrap_ci,
    did_reading,
    difference_in_differences,
    finite_pairs,
    paired_stats,
)

AGGREGATED = ("accuracy_before", "accuracy_after", "change")
GRADED = ("gold_logprob", "chrf", "gold_rank")  # = tli.eval.translation.GRADED
GRADED_AGGREGATED = ("mean_before", "mean_after", "delta")


def _scores(rows: Sequence[dict], name: str) -> np.ndarray:
    """A graded score's column as floats, None -> NaN: (n,)."""
    return np.array([math.nan if r.get(name) is None else float(r[name]) for r in rows], dtype=np.float64)


def _has_graded(rows: Sequence[dict]) -> bool:
    return bool(rows) and all(f"{g}_{s}" in r for r in rows for g in GRADED for s in ("before", "after"))


def graded_stats(rows: Sequence[dict], *, n_boot: int = 10000, seed: int = 0) -> dict[str, Any]:
    """{score: paired_stats(before, after)} for each graded score of one cell."""
    return {g: paired_stats(_scores(rows, f"{g}_before"), _scores(rows, f"{g}_after"), n_boot=n_boot, seed=seed)
            for g in GRADED}


def graded_did(trained: Sequence[dict], control: Sequence[dict], *, n_boot: int = 10000, seed: int = 0,
               alpha: float = 0.05) -> dict[str, Any]:
    """{score: difference_in_differences(trained before/after, control before/after)} for each graded score. The
    numbers are of the raw scores; for gold_rank (lower is better) `targeted` and `reading` judge the fall in rank
    (a positive `did` there means the trained words' rank rose more: not a targeted gain)."""
    out = {g: difference_in_differences(_scores(trained, f"{g}_before"), _scores(trained, f"{g}_after"),
                                        _scores(control, f"{g}_before"), _scores(control, f"{g}_after"),
                                        n_boot=n_boot, seed=seed, alpha=alpha) for g in GRADED}
    r = out["gold_rank"]
    neg = (lambda x: None if x is None else -x)  # noqa: E731
    flipped = {**r, "train_delta": neg(r["train_delta"]), "control_delta": neg(r["control_delta"]),
               "did": neg(r["did"]), "did_ci_low": neg(r["did_ci_high"]), "did_ci_high": neg(r["did_ci_low"])}
    targeted, reading = did_reading(flipped, r["p"], alpha=alpha)
    r.update(targeted=targeted, reading=f"gains in rank (fall): {reading}")
    return out


def mcnemar_exact(before: Sequence[bool], after: Sequence[bool]) -> dict[str, Any]:
    """b = right->wrong, c = wrong->right and the exact two-sided McNemar p (binomial test of c in b + c at 0.5);
    n_nonfinite words (a NaN or inf value before or after) are left out."""
    bef, aft = (np.asarray(x, dtype=np.float64).reshape(-1) for x in (before, after))  # (n,), (n,)
    if bef.shape != aft.shape:
        raise ValueError(f"before and after must have the same length, got {bef.size} and {aft.size}")
    (bef, aft), dropped = finite_pairs(bef, aft)
    bef, aft = bef.astype(bool), aft.astype(bool)
    b, c = int((bef & ~aft).sum()), int((~bef & aft).sum())
    p = 1.0 if b + c == 0 else float(binomtest(c, b + c, 0.5, alternative="two-sided").pvalue)
    return {"b": b, "c": c, "p": p, "n_nonfinite": dropped}


def _finite_rows(rows: Sequence[dict]) -> list[dict]:
    return [r for r in rows if math.isfinite(float(r["correct_before"])) and math.isfinite(float(r["correct_after"]))]


def _flips(rows: Sequence[dict], was: bool) -> list[dict]:
    keys = ("source", "target", "prediction_before", "prediction_after")
    return [{k: r[k] for k in keys} for r in rows if r["correct_before"] == was and r["correct_after"] != was]


def split_stats(rows: Sequence[dict], *, n_boot: int = 10000, seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Accuracy before/after with CIs, the change with its paired CI, McNemar, and the flipped words of one cell
    (words with a non-finite value left out: n_nonfinite)."""
    kept, all_rows = _finite_rows(rows), rows
    dropped, rows = len(rows) - len(kept), kept
    bef = np.array([r["correct_before"] for r in rows], dtype=np.float64)  # (n,)
    aft = np.array([r["correct_after"] for r in rows], dtype=np.float64)  # (n,)
    n = int(bef.size)
    out: dict[str, Any] = {"n": n, "correct_before": int(bef.sum()), "correct_after": int(aft.sum())}
    for name, v in (("accuracy_before", bef), ("accuracy_after", aft), ("change", aft - bef)):
        out[name] = float(v.mean()) if n else None
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = bootstrap_ci(v, n_boot=n_boot, seed=seed, alpha=alpha)
    mc = mcnemar_exact(bef.astype(bool), aft.astype(bool))
    out.update(mcnemar_b=mc["b"], mcnemar_c=mc["c"], mcnemar_p=mc["p"], n_nonfinite=dropped)
    out["right_to_wrong"], out["wrong_to_right"] = _flips(rows, True), _flips(rows, False)
    if _has_graded(all_rows):
        out["graded"] = graded_stats(all_rows, n_boot=n_boot, seed=seed)
    return out


def compare_changes(trained: Sequence[dict], control: Sequence[dict], *, n_boot: int = 10000, seed: int = 0,
                    alpha: float = 0.05) -> dict[str, Any]:
    """Does the accuracy change on trained words exceed the change on control words? (difference of changes)

    Each split's words are resampled independently; `exceeds` is True when the whole (1 - alpha) CI of the
    difference lies above 0. `reading` says the result in words. Words with a non-finite value are left out
    (n_nonfinite); when a split has none left, the statistics are None and the reading says so.
    """
    if not trained or not control:
        raise ValueError(f"both splits need words, got {len(trained)} trained and {len(control)} control")
    kept = [_finite_rows(rows) for rows in (trained, control)]
    dropped = len(trained) + len(control) - sum(map(len, kept))
    d_tr, d_c = ([float(r["correct_after"]) - float(r["correct_before"]) for r in rows] for rows in kept)
    n_tr, n_c = len(d_tr), len(d_c)
    if not n_tr or not n_c:
        return {"n_trained": n_tr, "n_control": n_c, "trained_change": None, "control_change": None,
                "difference": None, "difference_ci_low": None, "difference_ci_high": None, "exceeds": False,
                "n_nonfinite": dropped,
                "reading": f"the correctness values were non-finite (NaN or inf; {dropped} words): no comparison"}
    m_tr, m_c = float(np.mean(d_tr)), float(np.mean(d_c))
    diff = m_tr - m_c
    out: dict[str, Any] = {"n_trained": n_tr, "n_control": n_c, "trained_change": m_tr, "control_change": m_c,
                           "difference": diff, "difference_ci_low": None, "difference_ci_high": None,
                           "exceeds": False, "n_nonfinite": dropped}
    changes = f"trained words {m_tr:+.3f}, control words {m_c:+.3f}"
    if n_tr < 2 or n_c < 2:
        out["reading"] = f"too few words to compare ({n_tr} trained, {n_c} control); accuracy change: {changes}"
        return out
    low, high = bootstrap_ci(d_tr, d_c, n_boot=n_boot, alpha=alpha, seed=seed)
    out["difference_ci_low"], out["difference_ci_high"] = low, high
    ci = f"difference {diff:+.3f}, {100 * (1 - alpha):g}% CI {low:+.3f} to {high:+.3f}"
    if low > 0:
        out["exceeds"] = True
        verdict = "the change on trained words exceeds the control change: the behavioural effect is targeted"
    elif high < 0:
        verdict = "the change on trained words is below the control change: no targeted gain"
    else:
        verdict = "the change on trained words does not exceed the control change (not distinguishable)"
    out["reading"] = f"accuracy change: {changes} ({ci}); {verdict}"
    return out


def summarize_translation(rows: Sequence[dict], *, n_boot: int = 10000, seed: int = 0,
                          alpha: float = 0.05) -> dict[str, Any]:
    """`summary.json["translation"]`: {split: {direction: split_stats}} plus, when both the "train" and "control"
    splits are present, "targeted": {direction: compare_changes}."""
    cells: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        cells.setdefault(r["split"], {}).setdefault(r["direction"], []).append(r)
    out: dict[str, Any] = {split: {d: split_stats(rs, n_boot=n_boot, seed=seed, alpha=alpha) for d, rs in by.items()}
                           for split, by in cells.items()}
    if "train" in cells and "control" in cells:
        out["targeted"] = {}
        for d in (d for d in cells["train"] if d in cells["control"]):
            tr, c = cells["train"][d], cells["control"][d]
            out["targeted"][d] = compare_changes(tr, c, n_boot=n_boot, seed=seed, alpha=alpha)
            if _has_graded(tr) and _has_graded(c):
                out["targeted"][d]["graded"] = graded_did(tr, c, n_boot=n_boot, seed=seed, alpha=alpha)
    return out


def aggregate_translation(summaries: Sequence[dict]) -> dict[str, Any]:
    """Across runs (seeds): {split: {direction: {accuracy_before|accuracy_after|change: {mean, std (ddof=1), n}}}}
    and "targeted": {direction: {"difference": {...}}}, over the cells every summary has; where every run has graded
    scores, each cell also gets "graded": {score: {mean_before|mean_after|delta: {...}}} and each targeted direction
    "graded": {score: {"did": {...}}}."""
    if not summaries:
        return {}
    out: dict[str, Any] = {}
    for split in summaries[0]:
        if split == "targeted" or not all(split in s for s in summaries):
            continue
        directions = [d for d in summaries[0][split] if all(d in s[split] for s in summaries)]
        out[split] = {d: aggregate_runs([s[split][d] for s in summaries], AGGREGATED) for d in directions}
        for d in directions:
            if all("graded" in s[split][d] for s in summaries):
                out[split][d]["graded"] = {g: aggregate_runs([s[split][d]["graded"][g] for s in summaries],
                                                             GRADED_AGGREGATED) for g in GRADED}
    if all("targeted" in s for s in summaries):
        directions = [d for d in summaries[0]["targeted"] if all(d in s["targeted"] for s in summaries)]
        out["targeted"] = {d: aggregate_runs([s["targeted"][d] for s in summaries], ("difference",))
                           for d in directions}
        for d in directions:
            if all("graded" in s["targeted"][d] for s in summaries):
                out["targeted"][d]["graded"] = {g: aggregate_runs([s["targeted"][d]["graded"][g] for s in summaries],
                                                                  ("did",)) for g in GRADED}
    return out
