"""Stratified paired tests, sign agreement across seeds, and the minimum detectable effect (MDE) of a null result.

Cross-fitted behavioural evaluations score every word once per fold and seed. A stratum is one such cell (e.g.
"fold 2 seed 1") holding paired before/after scores of its words. The pooled tests below treat the strata as
independent sets of pairs: that holds for the folds of one seed (disjoint words); seeds that re-score the same words
give correlated strata, and pooling them overstates n. Report those per seed and check their agreement
(`seed_signs`, `same_sign_everywhere`) rather than pooling them as independent.

* `stratified_mcnemar`: per-stratum exact McNemar and two pooled tests of binary correctness:
  - the exact conditional test: under H0 each discordant pair goes either way with probability 1/2, so given the
    discordant counts n_s = b_s + c_s the total C = sum c_s is Binomial(sum n_s, 1/2); two-sided exact binomial p;
  - the Cochran-Mantel-Haenszel statistic (Mantel & Haenszel 1959) with each matched pair as its own 2x2 stratum:
    a concordant pair adds nothing, a discordant pair adds O - E = +/-1/2 and variance 1/4, so with the continuity
    correction chi2_MH = (|C - B| - 1)^2 / (B + C) (|C - B| - 1 floored at 0), i.e. McNemar's corrected statistic on
    the pooled discordant pairs; p = P(chi2_1 > chi2_MH).
* `seed_signs`: the sign of an effect per seed and whether every seed agrees.
* `mde_mcnemar`: Connor's (1987) normal approximation for McNemar's test, n = (z_{1-alpha/2} sqrt(psi) +
  z_{power} sqrt(psi - delta^2))^2 / delta^2 with psi the discordance rate (b + c) / n and delta the accuracy change
  (c - b) / n, solved for delta (brentq). Connor, R. J. (1987), Sample size for testing differences in proportions
  for the paired-sample design, Biometrics 43(1), 207-211.
* `mde_paired`: (z_{1-alpha/2} + z_{power}) sd_diff / sqrt(n), the normal-theory MDE of a paired mean difference.
* `holm_table`: Holm's step-down adjustment of named p-values (`tli.eval.stats.holm`).
* `stratified_paired`: pooled paired statistics of continuous scores (`tli.eval.stats.paired_stats`) with the
  per-stratum mean change, its sign, and the MDE.
* `word_clustered`: the same accuracy change with the word as the unit. Strata that re-score the same words (seeds;
  the control words, scored by every adapter) are not independent: one word that flips in every adapter counts
  once per adapter in the pooled tests. Here each word's change is its mean over its scorings, and the p-value is
  the sign-flip permutation test of the mean change over words (exact up to 2^13 sign patterns, else 10,000 random
  ones; `scipy.stats.permutation_test`).

All results are JSON-friendly (Python int / float / bool / None / str). Non-finite inputs never raise: the pair is
dropped and counted in `n_nonfinite`. This module imports numpy and scipy only (its `tli.eval.stats` helpers import
torch themselves).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps
from scipy.optimize import brentq

from tli.eval.stats import as_vector, finite_pairs, holm, paired_stats
from tli.eval.translation_stats import mcnemar_exact


def _sign(x: float | None) -> int | None:
    """+1 / 0 / -1 of a number; None for None or NaN."""
    if x is None or math.isnan(x):
        return None
    return int(x > 0) - int(x < 0)


def _agreement(signs: Sequence[int | None]) -> dict[str, Any]:
    """Counts of positive / negative / zero / missing signs, and same_sign_everywhere: every sign present, non-zero,
    and equal (False for no signs at all)."""
    pos, neg = sum(s == 1 for s in signs), sum(s == -1 for s in signs)
    zero, missing = sum(s == 0 for s in signs), sum(s is None for s in signs)
    same = bool(signs) and (pos == len(signs) or neg == len(signs))
    return {"n_positive": pos, "n_negative": neg, "n_zero": zero, "n_missing": missing,
            "same_sign_everywhere": bool(same)}


def _check_level(alpha: float, power: float) -> None:
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must lie in (0, 1), got alpha={alpha}, power={power}")


def stratified_mcnemar(strata: Mapping[str, tuple[Sequence[bool], Sequence[bool]]], alpha: float = 0.05,
                       power: float = 0.8) -> dict[str, Any]:
    """Per-stratum exact McNemar and the pooled exact conditional and Mantel-Haenszel tests (see the module doc).

    `strata`: {name: (correct_before, correct_after)}, one boolean per word. b = right->wrong, c = wrong->right.
    Keys: strata ({name: {n, b, c, p (exact McNemar), effect = (c - b) / n (None when n == 0), sign (+1/0/-1, None
    when n == 0), n_nonfinite}}), n (pairs kept), b, c, n_discordant (B + C), discordance ((B + C) / n), effect
    ((C - B) / n, the pooled accuracy change), exact_p (two-sided binomial test of C in B + C at 1/2; 1.0 when there
    are no discordant pairs), cmh_chi2 and cmh_p (continuity-corrected; None when there are no discordant pairs),
    n_positive / n_negative / n_zero / n_missing (strata by sign of their effect), same_sign_everywhere, mde
    (`mde_mcnemar` at the pooled n and discordance) and n_nonfinite (pairs dropped for a NaN / inf value).
    """
    if not strata:
        raise ValueError("stratified_mcnemar needs at least one stratum")
    per: dict[str, dict[str, Any]] = {}
    for name, (before, after) in strata.items():
        mc = mcnemar_exact(before, after)
        n = int(np.asarray(before, dtype=np.float64).size) - mc["n_nonfinite"]
        effect = (mc["c"] - mc["b"]) / n if n else None
        per[name] = {"n": n, "b": mc["b"], "c": mc["c"], "p": float(mc["p"]), "effect": effect,
                     "sign": _sign(effect), "n_nonfinite": int(mc["n_nonfinite"])}
    n = sum(s["n"] for s in per.values())
    b, c = sum(s["b"] for s in per.values()), sum(s["c"] for s in per.values())
    nd = b + c
    out: dict[str, Any] = {"strata": per, "n": n, "b": b, "c": c, "n_discordant": nd,
                           "discordance": nd / n if n else None, "effect": (c - b) / n if n else None}
    out["exact_p"] = 1.0 if nd == 0 else float(sps.binomtest(c, nd, 0.5, alternative="two-sided").pvalue)
    if nd:
        chi2 = max(0.0, abs(c - b) - 1.0) ** 2 / nd
        out["cmh_chi2"], out["cmh_p"] = float(chi2), float(sps.chi2.sf(chi2, df=1))
    else:
        out["cmh_chi2"] = out["cmh_p"] = None
    out.update(_agreement([s["sign"] for s in per.values()]))
    out["mde"] = mde_mcnemar(n, out["discordance"] or 0.0, alpha=alpha, power=power)
    out["n_nonfinite"] = sum(s["n_nonfinite"] for s in per.values())
    return out


def seed_signs(values_by_seed: Mapping[str, float | None]) -> dict[str, Any]:
    """The sign of an effect per seed and whether all seeds agree.

    Keys: signs ({seed: +1 / 0 / -1, None for a missing or non-finite value}), n_positive, n_negative, n_zero,
    n_missing, same_sign_everywhere (every seed present and of one non-zero sign), sign (that common sign, else 0)
    and n_nonfinite (seeds whose value was None, NaN or inf).
    """
    signs: dict[str, int | None] = {}
    for seed, v in values_by_seed.items():
        signs[seed] = _sign(float(v)) if v is not None and math.isfinite(float(v)) else None
    out: dict[str, Any] = {"signs": signs, **_agreement(list(signs.values()))}
    out["sign"] = next(iter(signs.values())) if out["same_sign_everywhere"] else 0
    out["n_nonfinite"] = out["n_missing"]
    return out


def _connor_n(delta: float, psi: float, za: float, zb: float) -> float:
    """Connor (1987): pairs needed to detect an accuracy change delta at discordance psi."""
    return (za * math.sqrt(psi) + zb * math.sqrt(max(0.0, psi - delta * delta))) ** 2 / (delta * delta)


def mde_mcnemar(n: int, discordance: float, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Smallest accuracy change delta = (c - b) / n that McNemar's test on n pairs detects with probability `power`
    at two-sided level `alpha`, given the discordance rate psi = (b + c) / n.

    Solves Connor's (1987) n = (z_{1-alpha/2} sqrt(psi) + z_{power} sqrt(psi - delta^2))^2 / delta^2 for delta in
    (0, psi] by brentq (the required n falls as delta grows). |c - b| cannot exceed b + c, so delta is capped at psi:
    psi is returned when even delta = psi needs more than n pairs. None when n or psi is 0 (nothing to detect with).
    """
    _check_level(alpha, power)
    if not 0 <= discordance <= 1 or n < 0:
        raise ValueError(f"need n >= 0 and discordance in [0, 1], got n={n}, discordance={discordance}")
    if n == 0 or discordance == 0:
        return None
    za, zb = float(sps.norm.ppf(1 - alpha / 2)), float(sps.norm.ppf(power))
    psi = float(discordance)
    if _connor_n(psi, psi, za, zb) >= n:
        return psi
    lo = min(psi, 1e-12)
    return float(brentq(lambda d: _connor_n(d, psi, za, zb) - n, lo, psi, xtol=1e-12, rtol=1e-12))


def mde_paired(sd_diff: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """MDE of a paired mean difference: (z_{1-alpha/2} + z_{power}) * sd_diff / sqrt(n) (normal approximation to the
    paired t-test; slightly optimistic for small n). None when n == 0 or sd_diff is not finite."""
    _check_level(alpha, power)
    if n <= 0 or sd_diff is None or not math.isfinite(sd_diff):
        return None
    if sd_diff < 0:
        raise ValueError(f"sd_diff must be >= 0, got {sd_diff}")
    return float((sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)) * sd_diff / math.sqrt(n))


def mde_from_rows(before: Sequence[bool], after: Sequence[bool], alpha: float = 0.05,
                  power: float = 0.8) -> float | None:
    """`mde_mcnemar` at the observed n (finite pairs) and discordance (b + c) / n of boolean before/after rows."""
    mc = mcnemar_exact(before, after)
    n = int(np.asarray(before, dtype=np.float64).size) - mc["n_nonfinite"]
    return mde_mcnemar(n, (mc["b"] + mc["c"]) / n if n else 0.0, alpha=alpha, power=power)


def holm_table(pvalues: Mapping[str, float | None]) -> dict[str, float | None]:
    """Holm-adjusted p-values of several named comparisons (e.g. recipes) reported as one family; None / NaN
    entries are not part of the family and stay None."""
    names = list(pvalues)
    return dict(zip(names, holm([pvalues[k] for k in names]), strict=True))


def natural_key(name: str) -> tuple:
    """Sort key of stratum names: "seed 2" before "seed 10" (numbers compare as numbers)."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t)


def stratified_paired(strata: Mapping[str, tuple[Sequence[float], Sequence[float]]], n_boot: int = 10000,
                      seed: int = 0, alpha: float = 0.05, power: float = 0.8) -> dict[str, Any]:
    """Continuous paired scores (gold log-probability, chrF) in strata: pooled `paired_stats` on the concatenated
    pairs (diff = after - before: n, mean_before, mean_after, delta, delta_pct, t, p, wilcoxon_p, cohen_dz,
    delta_ci_low / delta_ci_high, note, n_nonfinite) plus strata ({name: {n, delta (mean diff; None when n == 0),
    sign, n_nonfinite}}), n_positive / n_negative / n_zero / n_missing, same_sign_everywhere, sd_diff (sd of the
    pooled finite differences, ddof=1; None when n < 2) and mde (`mde_paired(sd_diff, n)`).
    """
    if not strata:
        raise ValueError("stratified_paired needs at least one stratum")
    per: dict[str, dict[str, Any]] = {}
    befores, afters = [], []
    for name, (before, after) in strata.items():
        bef, aft = as_vector(before), as_vector(after)  # (n_s,), (n_s,)
        if bef.shape != aft.shape:
            raise ValueError(f"stratum {name!r}: before and after lengths differ ({bef.size} vs {aft.size})")
        (fb, fa), dropped = finite_pairs(bef, aft)
        delta = float((fa - fb).mean()) if fb.size else None
        per[name] = {"n": int(fb.size), "delta": delta, "sign": _sign(delta), "n_nonfinite": dropped}
        befores.append(bef)
        afters.append(aft)
    pooled_b, pooled_a = np.concatenate(befores), np.concatenate(afters)  # (N,), (N,)
    out: dict[str, Any] = paired_stats(pooled_b, pooled_a, n_boot=n_boot, seed=seed)
    out["strata"] = per
    out.update(_agreement([s["sign"] for s in per.values()]))
    (fb, fa), _ = finite_pairs(pooled_b, pooled_a)
    sd = float((fa - fb).std(ddof=1)) if fb.size >= 2 else None
    out["sd_diff"] = sd
    out["mde"] = mde_paired(sd, out["n"], alpha=alpha, power=power) if sd is not None else None
    return out


def word_clustered(words: Sequence[str], before: Sequence[bool], after: Sequence[bool], n_resamples: int = 10000,
                   seed: int = 0, n_listed: int = 5) -> dict[str, Any]:
    """The accuracy change with the word as the unit: d_w = mean(after) - mean(before) over the rows of word w.

    Keys: n_words, n_up / n_down / n_same (words whose d_w is > 0, < 0, 0), mean_change (mean d_w over words),
    p (two-sided sign-flip permutation test of mean d_w: under H0 before and after are exchangeable within a word, so
    each d_w is symmetric about 0; 1.0 when no word changed), exact (whether every sign pattern was enumerated),
    down / up ([word, d_w] of the n_listed words that fell or rose most)."""
    if not len(words) == len(before) == len(after):
        raise ValueError(f"words, before and after differ in length ({len(words)}, {len(before)}, {len(after)})")
    by: dict[str, list[float]] = {}
    for w, b, a in zip(words, before, after, strict=True):
        by.setdefault(w, []).append(float(bool(a)) - float(bool(b)))
    change = {w: float(np.mean(v)) for w, v in by.items()}
    moved = np.array([d for d in change.values() if d != 0.0])  # (n_moved,); unmoved words add nothing to any flip
    out: dict[str, Any] = {"n_words": len(change), "n_up": int((moved > 0).sum()), "n_down": int((moved < 0).sum()),
                           "n_same": len(change) - int(moved.size),
                           "mean_change": float(np.mean(list(change.values()))) if change else None,
                           "p": 1.0, "exact": True}
    if moved.size >= 2:  # one moved word: its two sign patterns are equally extreme, p = 1
        res = sps.permutation_test((moved,), np.sum, permutation_type="samples", n_resamples=n_resamples,
                                   alternative="two-sided", rng=np.random.default_rng(seed), vectorized=True)
        out["p"], out["exact"] = float(min(1.0, res.pvalue)), bool(2 ** moved.size <= n_resamples)
    ranked = sorted(change.items(), key=lambda kv: kv[1])
    out["down"] = [[w, d] for w, d in ranked[:n_listed] if d < 0]
    out["up"] = [[w, d] for w, d in reversed(ranked[-n_listed:]) if d > 0]
    return out
