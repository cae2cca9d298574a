"""Do no harm, compared: the held-out loss of one adapter before and after (`compare_lm_loss`) and across runs
(`aggregate_lm_loss`), from the results of `tli.eval.lm_loss.lm_loss`.

A rise is flagged (`compare_lm_loss`) when the mean NLL grows by more than `threshold` (default 2%, relative) AND
the per-sentence NLLs rose consistently: one-sided Wilcoxon signed-rank test (after > before), p < `alpha` (0.05).
The first condition ignores harmless drift, the second a change carried by one or two sentences. Non-finite values
(NaN / inf losses, e.g. an adapter with NaN weights) never raise: sentences whose NLL is not finite before or after
are left out of the test (`n_nonfinite`); a non-finite mean loss makes `change`, `relative_change` and `wilcoxon_p`
None, is flagged as a rise when only the after-loss is non-finite (the adapter broke the model), and the reading
says so.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tli.eval.power import mde_paired
from tli.eval.stats import aggregate_runs, finite_pairs, wilcoxon_p

AGGREGATED = ("nll_before", "nll_after", "change", "relative_change")


def compare_lm_loss(before: Mapping[str, Any], after: Mapping[str, Any], *, threshold: float = 0.02,
                    alpha: float = 0.05) -> dict[str, Any]:
    """Change of the held-out loss (after - before) and the `rise` flag (rule in the module docstring)."""
    if before["sentence_tokens"] != after["sentence_tokens"]:
        raise ValueError("before and after scored different tokens: same sentences and tokenizer are required")
    b, a = (np.asarray(x["sentence_nll"], dtype=np.float64) for x in (before, after))  # (N,), (N,)
    (b, a), dropped = finite_pairs(b, a)
    nll_b, nll_a = float(before["nll"]), float(after["nll"])
    out = {"n_sentences": before["n_sentences"], "n_tokens": before["n_tokens"], "nll_before": before["nll"],
           "nll_after": after["nll"], "change": None, "relative_change": None,
           "perplexity_before": before["perplexity"], "perplexity_after": after["perplexity"], "wilcoxon_p": None,
           "threshold": threshold, "alpha": alpha, "rise": False, "n_nonfinite": dropped}
    if not (math.isfinite(nll_b) and math.isfinite(nll_a)):
        out["rise"] = math.isfinite(nll_b)
        culprit = "after the adapter" if out["rise"] else "before the adapter (the base model)"
        out["reading"] = (f"NLL {nll_b:.3f} -> {nll_a:.3f} nats/token: the loss is non-finite (NaN or inf) {culprit}"
                          + (": RISE: the adapter breaks the model on held-out text" if out["rise"] else
                             ": no comparison is possible"))
        return out
    change = nll_a - nll_b
    relative = change / nll_b if nll_b > 0 else (math.inf if change > 0 else 0.0)
    if b.size < 2 or np.all(a == b):
        p = 1.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # scipy's note on ties / small samples
            p = wilcoxon_p(a, b, alternative="greater")
    rise = bool(relative > threshold and p < alpha)
    verdict = "RISE: the adapter made held-out text less likely" if rise else "no material rise"
    skipped = f", {dropped} sentences with a non-finite NLL left out of the test" if dropped else ""
    out.update(change=change, relative_change=float(relative), wilcoxon_p=p, rise=rise,
               mde=mde_paired(float((a - b).std(ddof=1)), int(b.size)) if b.size >= 2 else None)
    out["reading"] = (f"NLL {nll_b:.3f} -> {nll_a:.3f} nats/token ({100 * relative:+.1f}%), perplexity "
                      f"{before['perplexity']:.3g} -> {after['perplexity']:.3g}, Wilcoxon p (rise) = {p:.3g}{skipped}: "
                      f"{verdict} (flagged when > {100 * threshold:g}% and p < {alpha:g})")
    return out


def aggregate_lm_loss(runs: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Across runs (seeds), from one {language: compare_lm_loss result} per run: {language: {nll_before | nll_after |
    change | relative_change: {mean, std (ddof=1), n}, "rises": number of runs flagged}}, for the languages every
    run has."""
    if not runs:
        return {}
    out: dict[str, Any] = {}
    for lang in runs[0]:
        if all(lang in r for r in runs):
            out[lang] = {**aggregate_runs([r[lang] for r in runs], AGGREGATED),
                         "rises": sum(bool(r[lang]["rise"]) for r in runs)}
    return out
