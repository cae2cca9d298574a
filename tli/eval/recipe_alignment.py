"""Recipes against each other in the representations (`evaluate.py +adapters.<recipe>=[...]`, two recipes or more):
the counterpart of `tli.eval.recipes.compare_recipes` for the vectors, so a recipe meets its deranged null even where
translation is not scored (a language the model cannot translate).

eval/pairs.csv rows of two recipes are matched by pair and stratum: (split, source, target, layer, fold, seed), one
run of each recipe per (fold, seed). "A vs B" reads B's after-score as "before" and A's as "after": per split, layer,
vector variant and per-pair score (`PAIR_SCORES`), `stratified_paired` over the (fold, seed) strata, with the strata's
sign agreement. The Wilcoxon p-values of the verdict score (centred `pool_mrr` where evaluated, else raw) on the
splits no adapter trained on (control; a cross-fitted adapter's unseen fold) are Holm-adjusted as one family.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

from tli.eval.metrics import PAIR_SCORES
from tli.eval.power import holm_table, natural_key, stratified_paired
from tli.eval.recipes import recipe_of
from tli.eval.tables import fmt_number, fmt_p, markdown_table
from tli.eval.unseen import VARIANT_PREFIX

UNTRAINED = ("control", "unseen")  # splits no adapter of the recipe trained on: the Holm family's
VERDICT_SCORE = "pool_mrr"


def _column(variant: str, score: str) -> str:
    return f"{VARIANT_PREFIX[variant]}{'cos' if score == 'cosine' else score}_after"


def _stratum(row: Mapping) -> str:
    fold = row.get("fold")
    return f"seed {row.get('seed')}" if fold in (None, "") else f"fold {fold} seed {row.get('seed')}"


def _by_stratum(rows: Sequence[dict]) -> tuple[dict[tuple, dict], str | None]:
    """{(split, source, target, layer, stratum): row} of one recipe, or a reason it cannot be matched."""
    out: dict[tuple, dict] = {}
    runs: dict[str, str] = {}
    for r in rows:
        stratum = _stratum(r)
        if runs.setdefault(stratum, r["run"]) != r["run"]:
            return {}, f"{runs[stratum]} and {r['run']} share {stratum}: runs cannot be matched one to one"
        out[(r["split"], r["source"], r["target"], int(r["layer"]), stratum)] = r
    return out, None


def _compare(a: dict[tuple, dict], b: dict[tuple, dict], n_boot: int, seed: int) -> dict[str, Any]:
    """{split: {layer: {variant: {score: stratified_paired}}}} of a's after-scores against b's, matched pairs only."""
    cells: dict[tuple[str, int], dict[str, list[tuple[dict, dict]]]] = {}
    for key, ra in a.items():
        rb = b.get(key)
        if rb is not None:
            split, _, _, layer, stratum = key
            cells.setdefault((split, layer), {}).setdefault(stratum, []).append((rb, ra))
    out: dict[str, Any] = {}
    for (split, layer), strata in sorted(cells.items()):
        first = next(iter(strata.values()))[0][0]
        ordered = sorted(strata.items(), key=lambda kv: natural_key(kv[0]))  # "seed 2" before "seed 10"
        for variant in VARIANT_PREFIX:
            for score in PAIR_SCORES:
                column = _column(variant, score)
                if column not in first:
                    continue  # no centred columns without metrics.centre
                out.setdefault(split, {}).setdefault(layer, {}).setdefault(variant, {})[score] = stratified_paired(
                    {name: ([float(rb[column]) for rb, _ in matched], [float(ra[column]) for _, ra in matched])
                     for name, matched in ordered}, n_boot=n_boot, seed=seed)
    return out


def _verdict_variant(by_variant: Mapping[str, Any]) -> str:
    return "centred" if "centred" in by_variant else "raw"


def compare_alignment(rows: Sequence[dict], n_boot: int = 10000, seed: int = 0) -> dict[str, Any]:
    """summary["recipe_alignment"]: {"pairs": {"A vs B": {"n_matched", "splits": `_compare`} or {"skipped": why}},
    "family_size"} for every two recipes in the order listed (list a recipe before its null: "A vs B" is then A's
    gain over B), from eval/pairs.csv rows with `run` = "<recipe>/<i>"; {} with fewer than two recipes. Each verdict
    test on an untrained split carries "holm_p"."""
    by_recipe: dict[str, list[dict]] = {}
    for r in rows:
        by_recipe.setdefault(recipe_of(r["run"]), []).append(r)
    keyed = {name: _by_stratum(rs) for name, rs in by_recipe.items()}
    out: dict[str, Any] = {}
    for a, b in combinations(by_recipe, 2):
        why = keyed[a][1] or keyed[b][1]
        if why:
            out[f"{a} vs {b}"] = {"skipped": why}
            continue
        splits = _compare(keyed[a][0], keyed[b][0], n_boot, seed)
        n = sum(1 for k in keyed[a][0] if k in keyed[b][0])
        out[f"{a} vs {b}"] = ({"n_matched": n, "splits": splits} if splits else
                              {"skipped": "no pair scored by both in one (fold, seed) stratum"})
    verdicts = {(name, split, layer): by_variant[_verdict_variant(by_variant)][VERDICT_SCORE]
                for name, c in out.items() for split, by_layer in c.get("splits", {}).items() if split in UNTRAINED
                for layer, by_variant in by_layer.items()}
    adjusted = holm_table({" | ".join(map(str, k)): v["wilcoxon_p"] for k, v in verdicts.items()})
    for k, v in verdicts.items():
        v["holm_p"] = adjusted[" | ".join(map(str, k))]
    return {"pairs": out, "family_size": len(verdicts)} if out else {}


def recipe_alignment_section(compared: Mapping[str, Any]) -> str:
    """The report's table of `compare_alignment`: the verdict variant's scores of every comparison, split, layer."""
    rows, skipped = [], []
    for name, c in compared["pairs"].items():
        if "skipped" in c:
            skipped.append(f"- {name}: not compared ({c['skipped']})")
            continue
        for split, by_layer in c["splits"].items():
            for layer, by_variant in by_layer.items():
                variant = _verdict_variant(by_variant)
                for score, r in by_variant[variant].items():
                    holm = f", Holm {fmt_p(r['holm_p'])}" if r.get("holm_p") is not None else ""
                    rows.append([name, split, layer, variant, score, r["n"],
                                 f"{fmt_number(r['mean_before'])} -> {fmt_number(r['mean_after'])}",
                                 fmt_number(r["delta"]),
                                 f"{fmt_number(r['delta_ci_low'])} to {fmt_number(r['delta_ci_high'])}",
                                 fmt_p(r["wilcoxon_p"]) + holm, f"{r['n_positive']} up, {r['n_negative']} down",
                                 fmt_number(r["mde"])])
    text = ("## Recipes against each other: representations\n\n\"A vs B\": each pair's score after B's adapter "
            "(before) and after A's (after), the runs of one (fold, seed) matched; pooled over the strata, Wilcoxon "
            f"signed-rank p; Holm over the {compared['family_size']} tests of `{VERDICT_SCORE}` on the splits no "
            "adapter trained on (control, unseen). The trained split is descriptive: each recipe saw its own "
            "targets there.\n\n")
    if rows:
        text += markdown_table(rows, ["comparison", "split", "layer", "vectors", "score", "pairs", "B -> A", "delta",
                                      "95% CI", "p (Wilcoxon)", "strata", "MDE"]) + "\n"
    return text + ("\n" + "\n".join(skipped) + "\n" if skipped else "")
