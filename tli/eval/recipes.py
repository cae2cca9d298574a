"""Several recipes in one evaluation (`evaluate.py +adapters.<recipe>=[dir,...]`): each recipe's runs against the base
model, and every two recipes (the prompt-only null `nn_shots` included) against each other on the same queries.

Rows of two recipes are matched by query and stratum: (split, direction, word, fold, seed). A comparison "A vs B"
reads B's answers as "before" and A's as "after": per split and direction, `stratified_mcnemar` over (fold, seed)
strata with per-seed tests and sign agreement (as `tli.eval.pooled`), `stratified_paired` on the graded scores, and
the minimum detectable effect. The p-values of all comparisons' accuracy tests in one report are Holm-adjusted as
one family (`holm_p`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

from tli.eval.pooled import GRADED, pooled_translation
from tli.eval.power import holm_table
from tli.eval.translation_stats import summarize_translation

KEY = ("split", "direction", "source", "fold", "seed")


def recipe_of(run: str) -> str:
    """The recipe of a run named "<recipe>/<i>" (the run itself otherwise)."""
    return run.rsplit("/", 1)[0]


def matched_rows(a: Sequence[dict], b: Sequence[dict]) -> list[dict]:
    """Rows for "a vs b": b's after-state as before, a's as after, for the queries both scored in one stratum."""
    by_key = {tuple(str(r.get(k)) for k in KEY): r for r in b}
    # a run scored once for every adapter (no fold, no seed: the nn_shots null of adapters not cross-fitted)
    anywhere = {tuple(str(r.get(k)) for k in KEY[:3]): r for r in b if r.get("fold") is None and r.get("seed") is None}
    out = []
    for r in a:
        other = by_key.get(tuple(str(r.get(k)) for k in KEY)) or anywhere.get(tuple(str(r.get(k)) for k in KEY[:3]))
        if other is None:
            continue
        row = {k: r.get(k) for k in KEY}
        row["fold"] = r.get("fold") if r.get("fold") is not None else "all"
        row["seed"] = r.get("seed") if r.get("seed") is not None else "all"
        row.update(correct_before=other["correct_after"], correct_after=r["correct_after"])
        for g in GRADED:
            row[f"{g}_before"], row[f"{g}_after"] = other.get(f"{g}_after"), r.get(f"{g}_after")
        out.append(row)
    return out


def compare_recipes(rows: Sequence[dict], n_boot: int = 10000, seed: int = 0) -> dict[str, Any]:
    """summary["comparisons"]: {"pairs": {"A vs B": {"n_matched", "translation": pooled_translation of the matched
    rows, each accuracy test with its "holm_p"}}, "family_size"} for every two recipes, A listed before B (list the
    recipe before its null: "A vs B" is then A's gain over B), the prompt-only null `nn_shots` last. Rows carry
    `run` = "<recipe>/<i>" or "nn_shots"."""
    by_recipe: dict[str, list[dict]] = {}
    for r in rows:
        by_recipe.setdefault(recipe_of(r["run"]), []).append(r)
    out: dict[str, Any] = {}
    order = sorted(by_recipe, key=lambda x: (x == "nn_shots", list(by_recipe).index(x)))  # as listed, nulls last
    for a, b in combinations(order, 2):
        matched = matched_rows(by_recipe[a], by_recipe[b])
        if matched:
            out[f"{a} vs {b}"] = {"n_matched": len(matched),
                                  "translation": pooled_translation(matched, n_boot=n_boot, seed=seed)}
    family = {f"{name} | {split} | {direction}": cell["correct"]["exact_p"]
              for name, c in out.items() for split, by in c["translation"].items() for direction, cell in by.items()}
    adjusted = holm_table(family)
    for name, c in out.items():
        for split, by in c["translation"].items():
            for direction, cell in by.items():
                cell["correct"]["holm_p"] = adjusted[f"{name} | {split} | {direction}"]
    return {"pairs": out, "family_size": len(family)} if out else {}


def recipe_runs(names: Sequence[str]) -> Mapping[str, list[str]]:
    """{recipe: its run names}, in order."""
    out: dict[str, list[str]] = {}
    for n in names:
        out.setdefault(recipe_of(n), []).append(n)
    return out


def behaviour_summary(rows: Sequence[dict], recipes: bool, crossfit: bool, n_boot: int = 10000,
                      seed: int = 0, runs: Sequence[str] = ()) -> dict[str, Any]:
    """The summary's pooled behaviour sections from every translation.csv row of an evaluation: "crossfit" (one
    recipe's cross-fitted pool), "nulls" ({"nn_shots": its translation summary, and pool when cross-fitted}),
    "recipes" ({recipe: {"runs", and "crossfit" when cross-fitted}}: of `runs`, the evaluation's run names, with
    those of the rows; so without translation too) and "comparisons" (`compare_recipes`), each only where it
    applies."""
    out: dict[str, Any] = {}
    adapter_rows = [r for r in rows if r["run"] != "nn_shots"]
    nn_rows = [r for r in rows if r["run"] == "nn_shots"]
    if crossfit and not recipes:  # every training-lexicon word scored once per seed, as unseen
        out["crossfit"] = pooled_translation(adapter_rows, n_boot, seed)
    if nn_rows:  # the prompt-only null on the same queries
        out["nulls"] = {"nn_shots": {"translation": summarize_translation(nn_rows, n_boot=n_boot, seed=seed),
                                     **({"crossfit": pooled_translation(nn_rows, n_boot, seed)} if crossfit else {})}}
    if recipes:
        grouped = recipe_runs([*runs, *(r["run"] for r in adapter_rows)])
        out["recipes"] = {name: {"runs": sorted(set(names)), **({"crossfit": pooled_translation(
            [r for r in adapter_rows if recipe_of(r["run"]) == name], n_boot, seed)} if crossfit and rows else {})}
            for name, names in grouped.items()}
        out["comparisons"] = compare_recipes(rows, n_boot=n_boot, seed=seed)
    return out
