"""Tests for tli.eval.stats: scipy agreement, hand-computed effect sizes, degenerate cases, plain-language readings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from tli.eval.stats import aggregate_runs, bootstrap_ci, difference_in_differences, paired_stats, wilcoxon_p


@pytest.fixture
def paired() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    before = rng.normal(0.2, 0.05, size=40)
    after = before + rng.normal(0.03, 0.02, size=40)
    return before, after


def test_paired_stats_matches_scipy_and_hand_values(paired):
    before, after = paired
    res = paired_stats(before, after, n_boot=2000, seed=1)
    tt = sps.ttest_rel(after, before)
    assert res["t"] == tt.statistic and res["p"] == tt.pvalue
    assert res["wilcoxon_p"] == sps.wilcoxon(after, before).pvalue
    diffs = [a - b for a, b in zip(after.tolist(), before.tolist(), strict=True)]
    mean_d = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean_d) ** 2 for d in diffs) / (len(diffs) - 1))
    assert res["cohen_dz"] == pytest.approx(mean_d / sd, rel=1e-12)
    assert res["delta"] == pytest.approx(mean_d, abs=1e-15)
    assert res["n"] == 40 and res["mean_before"] == pytest.approx(before.mean())
    assert res["mean_after"] == pytest.approx(after.mean())
    assert res["delta_pct"] == pytest.approx(100 * mean_d / abs(before.mean()))
    assert res["delta_ci_low"] < res["delta"] < res["delta_ci_high"]
    assert res["note"] is None


def test_paired_stats_bootstrap_deterministic_and_accepts_tensors(paired):
    before, after = paired
    a = paired_stats(torch.from_numpy(before), torch.from_numpy(after), n_boot=500, seed=3)
    b = paired_stats(before.tolist(), after.tolist(), n_boot=500, seed=3)
    assert a == b
    c = paired_stats(before, after, n_boot=500, seed=4)
    assert (c["delta_ci_low"], c["delta_ci_high"]) != (a["delta_ci_low"], a["delta_ci_high"])


def test_paired_stats_negative_baseline_pct_uses_abs():
    res = paired_stats([-0.2, -0.4], [-0.1, -0.3], n_boot=10)
    assert res["delta"] == pytest.approx(0.1)
    assert res["delta_pct"] == pytest.approx(100 * 0.1 / 0.3)  # positive: an improvement stays positive


def test_paired_stats_all_zero_differences():
    x = [0.1, 0.2, 0.3, 0.4]
    res = paired_stats(x, x, n_boot=50)
    assert res["delta"] == 0.0 and res["wilcoxon_p"] == 1.0
    assert res["t"] is None and res["p"] is None and res["cohen_dz"] is None
    assert res["delta_ci_low"] == 0.0 and res["delta_ci_high"] == 0.0
    assert "zero" in res["note"]


def test_paired_stats_constant_nonzero_differences():
    res = paired_stats([0.1, 0.2, 0.3], [0.2, 0.3, 0.4], n_boot=50)
    assert res["cohen_dz"] is None and res["note"] is not None
    assert res["delta"] == pytest.approx(0.1)


@pytest.mark.parametrize("n", [0, 1])
def test_paired_stats_small_n(n):
    res = paired_stats([0.5] * n, [0.7] * n, n_boot=50)
    assert res["n"] == n
    for key in ("t", "p", "wilcoxon_p", "cohen_dz", "delta_ci_low", "delta_ci_high"):
        assert res[key] is None, key
    if n == 1:
        assert res["delta"] == pytest.approx(0.2) and res["mean_before"] == 0.5
    else:
        assert res["delta"] is None and res["delta_pct"] is None


def test_paired_stats_zero_mean_before_pct_none():
    assert paired_stats([-0.1, 0.1], [0.0, 0.3], n_boot=10)["delta_pct"] is None


def test_paired_stats_length_mismatch_raises():
    with pytest.raises(ValueError):
        paired_stats([1.0, 2.0], [1.0])


def _did_data(train_gain: float, control_gain: float, n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    tb, cb = rng.normal(0.2, 0.05, n), rng.normal(0.2, 0.05, n)
    ta = tb + rng.normal(train_gain, 0.01, n)
    ca = cb + rng.normal(control_gain, 0.01, n)
    return tb, ta, cb, ca


def test_did_targeted_example():
    tb, ta, cb, ca = _did_data(0.05, 0.01)
    res = difference_in_differences(tb, ta, cb, ca, n_boot=1000)
    d_tr, d_c = ta - tb, ca - cb
    assert res["did"] == pytest.approx(d_tr.mean() - d_c.mean()) and res["did"] > 0.03
    welch = sps.ttest_ind(d_tr, d_c, equal_var=False)
    assert res["t"] == welch.statistic and res["p"] == welch.pvalue
    assert res["mannwhitney_p"] == sps.mannwhitneyu(d_tr, d_c, alternative="two-sided").pvalue
    assert res["did_ci_low"] < res["did"] < res["did_ci_high"] and res["did_ci_low"] > 0
    assert res["targeted"] is True
    assert "exceeds" in res["reading"] and "targeted" in res["reading"] and "global" not in res["reading"]


def test_did_unequal_sizes_welch_and_independent_bootstrap():
    rng = np.random.default_rng(4)
    tb, cb = rng.normal(0.2, 0.05, 15), rng.normal(0.2, 0.05, 40)
    ta, ca = tb + rng.normal(0.02, 0.02, 15), cb + rng.normal(0.0, 0.06, 40)
    res = difference_in_differences(tb, ta, cb, ca, n_boot=4000, seed=2)
    d_tr, d_c = ta - tb, ca - cb
    welch = sps.ttest_ind(d_tr, d_c, equal_var=False)
    assert 1e-4 < res["p"] < 0.5  # a non-degenerate p, where Welch and Student differ
    assert res["t"] == welch.statistic and res["p"] == welch.pvalue
    assert res["p"] != pytest.approx(sps.ttest_ind(d_tr, d_c).pvalue, rel=1e-3)
    se = np.sqrt(d_tr.var() / d_tr.size + d_c.var() / d_c.size)  # both sets contribute to the bootstrap spread
    assert (res["did_ci_high"] - res["did_ci_low"]) / 2 == pytest.approx(1.96 * se, rel=0.15)


def test_did_global_shift_example():
    tb, ta, cb, ca = _did_data(0.04, 0.04, seed=1)
    res = difference_in_differences(tb, ta, cb, ca, n_boot=1000)
    assert res["p"] > 0.05 and res["targeted"] is False
    assert res["did_ci_low"] < 0 < res["did_ci_high"]
    assert "not distinguishable" in res["reading"] and "global shift" in res["reading"]


def test_did_negative_sign():
    tb, ta, cb, ca = _did_data(0.0, 0.05, seed=2)
    res = difference_in_differences(tb, ta, cb, ca, n_boot=500)
    assert res["did"] < 0 and res["targeted"] is False and "below" in res["reading"]


def test_did_deterministic_and_small_n():
    tb, ta, cb, ca = _did_data(0.05, 0.0, n=10, seed=3)
    assert difference_in_differences(tb, ta, cb, ca, n_boot=300, seed=5) == difference_in_differences(
        tb, ta, cb, ca, n_boot=300, seed=5
    )
    res = difference_in_differences([0.1], [0.2], cb, ca, n_boot=50)
    assert res["p"] is None and res["did_ci_low"] is None and res["targeted"] is False
    assert res["did"] == pytest.approx(0.1 - (ca - cb).mean())
    assert "too few" in res["reading"]


def test_did_identical_constant_deltas_untestable():
    # binary-exact values: every delta is exactly 0.25 in both sets, so Welch's t is 0/0
    res = difference_in_differences([0.0, 0.5], [0.25, 0.75], [1.0, 2.0], [1.25, 2.25], n_boot=50)
    assert res["did"] == 0.0 and res["p"] is None and res["targeted"] is False
    assert "untestable" in res["reading"]


def test_aggregate_runs():
    runs = [{"a": 1.0, "b": 2.0}, {"a": 2.0, "b": None}, {"a": 4.0, "b": float("nan")}]
    agg = aggregate_runs(runs, ["a", "b", "c"])
    assert agg["a"]["n"] == 3 and agg["a"]["mean"] == pytest.approx(7 / 3)
    assert agg["a"]["std"] == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1))
    assert agg["b"] == {"mean": 2.0, "std": None, "n": 1}
    assert agg["c"] == {"mean": None, "std": None, "n": 0}


# --- non-finite input (an adapter with NaN weights) ----------------------------------------------------------------


def test_paired_stats_drops_nonfinite_pairs():
    rng = np.random.default_rng(7)
    b, a = rng.normal(0.3, 0.1, 20), rng.normal(0.35, 0.1, 20)
    bad_b, bad_a = b.copy(), a.copy()
    bad_b[3], bad_a[7], bad_a[11] = np.nan, np.inf, -np.inf
    keep = np.ones(20, dtype=bool)
    keep[[3, 7, 11]] = False
    got, ref = paired_stats(bad_b, bad_a, n_boot=500), paired_stats(b[keep], a[keep], n_boot=500)
    assert got["n"] == 17 and got["n_nonfinite"] == 3 and ref["n_nonfinite"] == 0
    assert got["p"] == sps.ttest_rel(a[keep], b[keep]).pvalue and got["t"] == ref["t"]
    assert got["wilcoxon_p"] == sps.wilcoxon(a[keep], b[keep]).pvalue
    assert got["delta"] == pytest.approx((a[keep] - b[keep]).mean())
    assert (got["delta_ci_low"], got["delta_ci_high"]) == (ref["delta_ci_low"], ref["delta_ci_high"])
    assert "3 non-finite pairs dropped" in got["note"]
    nan = paired_stats([np.nan] * 5, [1.0] * 5)
    assert nan["n"] == 0 and nan["n_nonfinite"] == 5 and nan["delta"] is None and "no finite values" in nan["note"]


def test_did_drops_nonfinite_pairs_and_reads_all_nan():
    tb, ta, cb, ca = _did_data(0.05, 0.0, n=20, seed=8)
    bad_ta, bad_cb = ta.copy(), cb.copy()
    bad_ta[0], bad_cb[5] = np.nan, np.inf
    got = difference_in_differences(tb, bad_ta, bad_cb, ca, n_boot=300)
    d_tr, d_c = (ta - tb)[1:], np.delete(ca - cb, 5)
    assert (got["n_train"], got["n_control"], got["n_nonfinite"]) == (19, 19, 2)
    assert got["p"] == sps.ttest_ind(d_tr, d_c, equal_var=False).pvalue
    assert got["did"] == pytest.approx(d_tr.mean() - d_c.mean()) and got["targeted"] is True
    assert "2 non-finite pairs dropped" in got["reading"]
    nan = np.full(20, np.nan)  # every trained score NaN: used to end in a TypeError formatting the CI
    res = difference_in_differences(nan, nan, cb, ca, n_boot=300)
    assert res["did"] is None and res["p"] is None and res["targeted"] is False and res["n_nonfinite"] == 20
    assert "non-finite" in res["reading"]
    inf = difference_in_differences(tb, np.full(20, np.inf), cb, np.full(20, -np.inf), n_boot=300)
    assert inf["did"] is None and "non-finite" in inf["reading"]


def test_bootstrap_and_aggregate_skip_nonfinite():
    x = np.random.default_rng(3).normal(size=30)
    with_bad = np.concatenate([x, [np.nan, np.inf, -np.inf]])
    assert bootstrap_ci(with_bad, n_boot=300, seed=1) == bootstrap_ci(x, n_boot=300, seed=1)
    assert bootstrap_ci(with_bad, with_bad, n_boot=300) == bootstrap_ci(x, x, n_boot=300)
    assert bootstrap_ci([np.nan, np.nan, 1.0], n_boot=300) == (None, None)
    agg = aggregate_runs([{"a": 1.0}, {"a": float("inf")}, {"a": 3.0}, {"a": float("-inf")}], ["a"])
    assert agg["a"] == {"mean": 2.0, "std": pytest.approx(math.sqrt(2.0)), "n": 2}


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_wilcoxon_p_is_scipys_number_with_ties_and_zeros(alternative):
    # scipy's exact sign-flip test (n <= 13 with ties or zeros) re-ranks per flip; wilcoxon_p ranks once.
    rng = np.random.default_rng(0)
    cases = [rng.integers(-2, 3, n) * 0.5 for n in (2, 3, 5, 8, 9)] + [rng.normal(size=7).round(1)]
    cases += [np.array([0.0, 0.1, 0.1, -0.2, 0.3, 0.3, 0.3, 0.5, -0.5, 1.0, 0.2, 0.4, 0.7]),  # n = 13, the limit
              np.array([0.0, *rng.normal(size=13).round(1)]),  # n = 14: scipy's normal approximation
              rng.normal(size=9)]  # no ties, no zeros: scipy's exact distribution
    before = rng.normal(size=14)
    for d in cases:
        if not d.any():
            continue
        b = before[: d.size]
        assert wilcoxon_p(b + d, b, alternative) == sps.wilcoxon(b + d, b, alternative=alternative).pvalue
