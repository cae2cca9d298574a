"""The family of claims one run's reading makes, controlled together (`adjust_claims`).

The reading of `tli.eval.evaluation` makes claims in words: per reported layer, the verdict against the (centred)
base model on control pairs and on a cross-fitted adapter's held-out fold ("beats", "worse": Wilcoxon on the
pool-matched reciprocal rank), and the trained-vs-control difference in differences ("targeted") for every vector
variant and per-pair score. Judged each at 5%, a dozen such claims on a random model find something about half the
time. So all their p-values are Holm-adjusted as one family (family-wise error rate `ALPHA`), the adjusted value is
stored next to the raw one (`holm_p`; the DiD also gets `holm_targeted`), and the words follow the adjusted p. A
split with fewer than `MIN_PAIRS_FOR_CLAIMS` pairs supports no claim: its tests stay out of the family and the
reading says the split is too small.
"""

from __future__ import annotations

from typing import Any

from tli.eval.stats import did_reading, holm
from tli.eval.tables import fmt_p

ALPHA = 0.05  # family-wise error rate of the reading's claims
MIN_PAIRS_FOR_CLAIMS = 10  # pairs per split below which the reading makes no claim


def verdict_variant(run: dict, layer: int, split: str = "control") -> str:
    """The vectors the verdict on unseen pairs (`split`: control, or a cross-fitted adapter's held-out fold "unseen")
    uses: centred where evaluated (the honest null), else raw."""
    return "centred" if "centred" in run[split][layer] else "raw"


def claim_tests(run: dict, layers: list[int]) -> list[tuple[str, dict, str]]:
    """(name, result dict, p key) of every test the reading bases a claim on, splits too small excluded."""
    tests = []
    for layer in layers:
        for split in ("control", "unseen"):
            if split in run:
                variant = verdict_variant(run, layer, split)
                rr = run[split][layer][variant]["paired"]["pool_mrr"]
                if rr["n"] >= MIN_PAIRS_FOR_CLAIMS:
                    tests.append((f"{split}, index {layer}, {variant}: pool_mrr (Wilcoxon)", rr, "wilcoxon_p"))
        for variant, scores in run.get("targeted", {}).get(layer, {}).items():
            for score, d in scores.items():
                if min(d["n_train"], d["n_control"]) >= MIN_PAIRS_FOR_CLAIMS:
                    tests.append((f"trained vs control, index {layer}, {variant}: {score} (Welch)", d, "p"))
    return tests


def adjust_claims(run: dict, layers: list[int]) -> dict[str, Any]:
    """Holm-adjust the p-values of `claim_tests` as one family, in place: `holm_p` next to each raw p, and on the
    difference-in-differences results `holm_targeted` and a `reading` judged on the adjusted p (the raw `p` and
    `targeted` are kept). Every DiD result gets `holm_p` (None outside the family). Returns run["claims"]:
    {method, alpha, min_pairs, n (the family's size), tests: [{claim, p, holm_p}]}."""
    tests = claim_tests(run, layers)
    adjusted = holm([d[key] for _, d, key in tests])
    for (_, d, _), adj in zip(tests, adjusted, strict=True):
        d["holm_p"] = adj
    n = sum(p is not None for p in adjusted)
    for per_variant in run.get("targeted", {}).values():
        for scores in per_variant.values():
            for d in scores.values():
                adj = d.setdefault("holm_p", None)
                label = "Welch" if adj is None else f"Welch {fmt_p(d['p'], 2)}, Holm-adjusted over {n} claims:"
                d["holm_targeted"], d["reading"] = did_reading(d, d["p"] if adj is None else adj, alpha=ALPHA,
                                                               min_pairs=MIN_PAIRS_FOR_CLAIMS, p_label=label)
    return {"method": "holm", "alpha": ALPHA, "min_pairs": MIN_PAIRS_FOR_CLAIMS, "n": n,
            "tests": [{"claim": name, "p": d[key], "holm_p": adj}
                      for (name, d, key), adj in zip(tests, adjusted, strict=True)]}

