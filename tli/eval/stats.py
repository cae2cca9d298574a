"""Paired before/after statistics for alignment scores, and a difference-in-differences test for targeting.

All results are plain dicts of Python floats / ints / None (JSON-friendly). Undefined statistics (too few values,
zero variance) are None rather than NaN; each function documents when that happens. Non-finite inputs (NaN, +/-inf,
e.g. from an adapter with NaN weights) never raise: paired values are dropped pair by pair and counted in
`n_nonfinite`, and a reading says so. `holm` adjusts a family of p-values (Holm's step-down method).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats as sps

from tli.eval.tables import fmt_p

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]
_BOOT_BATCH = 1 << 22  # resampled values held at once by scipy's bootstrap (bounds memory for large n)
_BOOT_MAX = 50_000_000  # resampled values in all; beyond, the normal-theory interval (equal at such sizes)


def as_vector(x: ArrayLike) -> np.ndarray:
    """Any 1-D numeric input -> float64 numpy vector."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def finite_pairs(*arrays: np.ndarray) -> tuple[list[np.ndarray], int]:
    """Keep the positions where every array (all of one shape) is finite; returns the kept arrays and how many
    positions were dropped."""
    keep = np.logical_and.reduce([np.isfinite(a) for a in arrays]) if arrays else np.ones(0, dtype=bool)
    return [a[keep] for a in arrays], int(keep.size - keep.sum())


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (controls the family-wise error rate): the i-th smallest
    of the m p-values becomes max over j <= i of min(1, (m - j + 1) * p_(j)). None and NaN entries are not part of
    the family and stay None. E.g. [0.01, 0.04, 0.03, 0.005] -> [0.03, 0.06, 0.06, 0.02]."""
    values = [_num(p) for p in pvalues]
    family = sorted((i for i, p in enumerate(values) if p is not None), key=lambda i: values[i])
    out: list[float | None] = [None] * len(values)
    running = 0.0
    for rank, i in enumerate(family):
        running = max(running, min(1.0, (len(family) - rank) * values[i]))
        out[i] = running
    return out


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return a.mean(axis=axis) - b.mean(axis=axis)


def bootstrap_ci(*samples: ArrayLike, n_boot: int = 10000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float | None, float | None]:
    """Percentile bootstrap (1 - alpha) CI of the mean of one sample, or of mean(a) - mean(b) for two independent
    samples (each resampled on its own), by `scipy.stats.bootstrap`; deterministic for a seed. Non-finite values are
    dropped from each sample; (None, None) when a sample then has fewer than 2 values. For very large samples
    (n_boot x n above 5e7, e.g. 5,000+ pairs at 10,000 resamples) the normal-theory interval, which the bootstrap
    reproduces there, keeps the time linear in n."""
    data = tuple(d[np.isfinite(d)] for d in (as_vector(s) for s in samples))
    if any(d.size < 2 for d in data):
        return None, None
    if n_boot * sum(d.size for d in data) > _BOOT_MAX:  # e.g. 100,000 pairs: the mean is normal to 4 digits
        centre = data[0].mean() - (data[1].mean() if len(data) > 1 else 0.0)
        half = sps.norm.ppf(1 - alpha / 2) * np.sqrt(sum(d.var(ddof=1) / d.size for d in data))
        return _num(centre - half), _num(centre + half)
    statistic = np.mean if len(data) == 1 else _mean_difference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant data: a zero-width interval is the right answer
        res = sps.bootstrap(data, statistic, n_resamples=n_boot, confidence_level=1 - alpha, method="percentile",
                            vectorized=True, paired=False, batch=max(1, _BOOT_BATCH // max(d.size for d in data)),
                            random_state=np.random.default_rng(seed))
    low, high = res.confidence_interval
    return _num(low), _num(high)


def _num(x: Any) -> float | None:
    """Scalar -> float, with NaN / None mapped to None (inf is kept)."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def paired_stats(before: ArrayLike, after: ArrayLike, n_boot: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Paired comparison of per-item scores before and after an intervention (diff = after - before).

    Keys: n, mean_before, mean_after, delta (mean diff), delta_pct (100 * delta / |mean_before|, None if
    mean_before == 0), t and p of ``scipy.stats.ttest_rel(after, before)``, wilcoxon_p of
    ``scipy.stats.wilcoxon(after, before)``, cohen_dz = mean(diff) / std(diff, ddof=1), delta_ci_low / delta_ci_high
    (percentile bootstrap 95% CI of the mean diff), n_nonfinite (pairs dropped because a value was NaN or inf; n
    counts the pairs kept) and note (str or None) explaining any degenerate case.

    Degenerate cases: n < 2 -> t, p, wilcoxon_p, cohen_dz and the CI are None (n == 0 also makes the means None).
    All differences zero -> wilcoxon_p = 1.0 (no evidence of change; scipy may warn or raise here), t and p None.
    Constant non-zero differences (std <= 1e-12 * max|diff|, i.e. 0 up to rounding) -> cohen_dz None; t and p are
    kept as scipy returns them (+/-inf or huge t, p ~ 0).
    """
    b, a = as_vector(before), as_vector(after)  # (n,), (n,)
    if b.shape != a.shape:
        raise ValueError(f"before and after must have the same length, got {b.size} and {a.size}")
    (b, a), dropped = finite_pairs(b, a)
    diff = a - b  # (n,)
    n = int(diff.size)
    keys = ("mean_before", "mean_after", "delta", "delta_pct", "t", "p", "wilcoxon_p", "cohen_dz")
    out: dict[str, Any] = {"n": n, **dict.fromkeys(keys), "delta_ci_low": None, "delta_ci_high": None, "note": None,
                           "n_nonfinite": dropped}
    if n == 0:
        out["note"] = f"no finite values ({dropped} non-finite pairs)" if dropped else "no values"
        return out
    out.update(_paired_tests(b, a, diff, n_boot, seed))
    if dropped:
        out["note"] = f"{dropped} non-finite pairs dropped" + (f"; {out['note']}" if out["note"] else "")
    return out


def wilcoxon_p(after: np.ndarray, before: np.ndarray, alternative: str = "two-sided") -> float:
    """``scipy.stats.wilcoxon(after, before, alternative=alternative).pvalue``, the same number, fast where scipy is
    slow.

    With zeros or ties among at most 13 differences scipy runs the exact sign-flip permutation test (2^n flips) and
    re-ranks |d| for every flip, one flip at a time: about 2 s per call, most of a small evaluation's time. The ranks
    of |d| do not change when signs flip, so the same test with the ranks computed once (a vectorised statistic,
    the same `scipy.stats.permutation_test`) gives the same null distribution and p-value in milliseconds.
    """
    d = after - before  # (n,)
    nonzero = d[d != 0]  # scipy's zero_method="wilcox": zeros leave the ranking
    permutation = d.size <= 13 and (nonzero.size < d.size or np.unique(np.abs(nonzero)).size < nonzero.size)
    if not permutation or nonzero.size == 0:
        return float(sps.wilcoxon(after, before, alternative=alternative).pvalue)
    ranks = np.zeros_like(d)  # (n,): average ranks of |d| among the non-zero differences, 0 for zeros
    ranks[d != 0] = sps.rankdata(np.abs(nonzero))

    def r_plus(flipped: np.ndarray, axis: int = -1) -> np.ndarray:  # (..., n) -> (...): ranks of positive differences
        return np.sum(ranks * (flipped > 0), axis=axis)

    return float(sps.permutation_test((d,), r_plus, permutation_type="samples", vectorized=True,
                                      alternative=alternative).pvalue)


def _paired_tests(b: np.ndarray, a: np.ndarray, diff: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """paired_stats on finite values (n >= 1)."""
    n, out = int(diff.size), {"note": None}
    mean_b, delta = float(b.mean()), float(diff.mean())
    out.update(mean_before=mean_b, mean_after=float(a.mean()), delta=delta)
    out["delta_pct"] = None if mean_b == 0 else 100.0 * delta / abs(mean_b)
    if n < 2:
        out["note"] = "n < 2: tests, effect size and CI are undefined"
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        tt = sps.ttest_rel(a, b)
        out["t"], out["p"] = _num(tt.statistic), _num(tt.pvalue)
        if np.all(diff == 0):
            out["wilcoxon_p"] = 1.0
            out["note"] = "all differences are zero: wilcoxon_p set to 1.0, t-test undefined"
        else:
            out["wilcoxon_p"] = _num(wilcoxon_p(a, b))
    sd = float(diff.std(ddof=1))
    constant = sd <= 1e-12 * float(np.abs(diff).max())  # rounding noise on constant differences counts as std 0
    out["cohen_dz"] = None if constant else delta / sd
    if constant and out["note"] is None:
        out["note"] = "constant differences: cohen_dz undefined (std 0)"
    out["delta_ci_low"], out["delta_ci_high"] = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
    return out


def difference_in_differences(
    train_before: ArrayLike,
    train_after: ArrayLike,
    control_before: ArrayLike,
    control_after: ArrayLike,
    n_boot: int = 10000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Is the gain on trained pairs larger than the gain on held-out control pairs?

    Per-pair deltas (after - before) of the two sets are treated as independent samples. Keys: n_train, n_control,
    train_delta, control_delta, did (= train_delta - control_delta), t and p of Welch's t-test
    (``ttest_ind(train_d, control_d, equal_var=False)``), mannwhitney_p (two-sided), did_ci_low / did_ci_high
    (percentile bootstrap, each set resampled independently, 1 - alpha level), targeted (bool: p < alpha and did > 0),
    n_nonfinite (pairs dropped, in both sets, because a value was NaN or inf; n_train / n_control count the pairs
    kept) and a one-line plain-language ``reading`` (`did_reading`). With fewer than 2 pairs in either set the tests
    and CI are None; with no finite pair in a set every statistic is None and the reading says so.
    """
    pairs = [(as_vector(train_before), as_vector(train_after)), (as_vector(control_before), as_vector(control_after))]
    for name, (b, a) in zip(("train", "control"), pairs, strict=True):
        if b.shape != a.shape:
            raise ValueError(f"{name} before/after lengths differ: {b.size} vs {a.size}")
    if any(b.size == 0 for b, _ in pairs):
        raise ValueError(f"both sets need pairs, got n_train={pairs[0][0].size}, n_control={pairs[1][0].size}")
    kept = [finite_pairs(b, a) for b, a in pairs]
    d_tr, d_c = (a - b for (b, a), _ in kept)  # (n_train,), (n_control,)
    n_tr, n_c, dropped = int(d_tr.size), int(d_c.size), sum(k[1] for k in kept)
    m_tr, m_c = (float(d.mean()) if d.size else None for d in (d_tr, d_c))
    did = None if m_tr is None or m_c is None else m_tr - m_c
    out: dict[str, Any] = {"n_train": n_tr, "n_control": n_c, "train_delta": m_tr, "control_delta": m_c, "did": did}
    out.update(dict.fromkeys(("t", "p", "mannwhitney_p", "did_ci_low", "did_ci_high")), targeted=False,
               n_nonfinite=dropped)
    if n_tr >= 2 and n_c >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            welch = sps.ttest_ind(d_tr, d_c, equal_var=False)
            out["t"], out["p"] = _num(welch.statistic), _num(welch.pvalue)
            out["mannwhitney_p"] = _num(sps.mannwhitneyu(d_tr, d_c, alternative="two-sided").pvalue)
        out["did_ci_low"], out["did_ci_high"] = bootstrap_ci(d_tr, d_c, n_boot=n_boot, alpha=alpha, seed=seed)
    out["targeted"], out["reading"] = did_reading(out, out["p"], alpha=alpha)
    return out


def _g(x: float | None, spec: str = ".3g") -> str:
    return "n/a" if x is None else format(x, spec)


def did_reading(d: Mapping[str, Any], p: float | None, *, alpha: float = 0.05, min_pairs: int = 2,
                p_label: str = "Welch") -> tuple[bool, str]:
    """(targeted, one-line reading) of a `difference_in_differences` result judged on the p-value `p` (its own p,
    or the Holm-adjusted one when the reading belongs to a family of claims, `p_label` then saying so): targeted
    when p < alpha and the difference is positive; no claim when either set has fewer than `min_pairs` pairs or the
    values were non-finite."""
    n_tr, n_c, did = d["n_train"], d["n_control"], d["did"]
    m_tr, m_c, dropped = d["train_delta"], d["control_delta"], d.get("n_nonfinite", 0)
    nonfinite = f" ({dropped} non-finite pairs dropped)" if dropped else ""
    if did is None:
        return False, f"the scores were non-finite (NaN or inf; {dropped} pairs): no comparison is possible"
    if n_tr < 2 or n_c < 2:
        return False, (f"too few pairs to test (n_train = {n_tr}, n_control = {n_c}){nonfinite}; raw difference "
                       f"{did:+.3g}")
    if n_tr < min_pairs or n_c < min_pairs:
        return False, (f"too few pairs to support a claim (n_train = {n_tr}, n_control = {n_c}, fewer than "
                       f"{min_pairs} in a split){nonfinite}; raw difference {did:+.3g} ({p_label} {fmt_p(p, 2)})")
    if p is None:
        return False, f"gain on trained pairs ({m_tr:+.3g}) vs control ({m_c:+.3g}): no variance, untestable{nonfinite}"
    level = f"{100 * (1 - alpha):g}%"
    ci = f"{level} CI {_g(d['did_ci_low'])} to {_g(d['did_ci_high'])}, {p_label} {fmt_p(p, 2)}{nonfinite}"
    if p < alpha and did > 0:
        return True, (f"gain on trained pairs exceeds gain on control pairs by {did:.3g} ({ci}): "
                      "the effect is targeted")
    if p < alpha:
        return False, (f"gain on trained pairs is below gain on control pairs by {-did:.3g} ({ci}): "
                       "the change is not targeted at the trained pairs")
    return False, (f"gain on trained pairs ({m_tr:+.3g}) is not distinguishable from the control gain ({m_c:+.3g}) "
                   f"(difference {did:+.3g}, {ci}): the change looks like a global shift, not targeted alignment")


def aggregate_runs(run_values: Sequence[Mapping[str, Any]], keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Across runs (e.g. seeds): {key: {"mean", "std" (ddof=1), "n"}} for each key.

    Runs where a key is missing, None, NaN or infinite are skipped for that key; mean is None when n == 0, std None
    when n < 2.
    """
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        vals = np.array([float(r[key]) for r in run_values if _num(r.get(key)) is not None], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        n = int(vals.size)
        out[key] = {
            "mean": float(vals.mean()) if n else None,
            "std": float(vals.std(ddof=1)) if n > 1 else None,
            "n": n,
        }
    return out
