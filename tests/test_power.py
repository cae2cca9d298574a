"""Tests for tli.eval.power: stratified McNemar (exact conditional and Mantel-Haenszel) against scipy and hand values,
seed sign agreement, minimum detectable effects against their formulas and seeded Monte Carlo power, Holm,
stratified continuous paired statistics, and the word-clustered test against an enumeration of every sign pattern.
Strata are named like the cross-fitted design ("fold f seed s")."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from tli.eval.pooled import pooled_translation
from tli.eval.power import (
    holm_table,
    mde_from_rows,
    mde_mcnemar,
    mde_paired,
    natural_key,
    seed_signs,
    stratified_mcnemar,
    stratified_paired,
    word_clustered,
)

Z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)  # 1.959964 + 0.841621


def rows(both: int, b: int, c: int, neither: int) -> tuple[list[bool], list[bool]]:
    """Before/after correctness with `both` right->right, `b` right->wrong, `c` wrong->right, `neither` wrong->wrong."""
    before = [True] * both + [True] * b + [False] * c + [False] * neither
    after = [True] * both + [False] * b + [True] * c + [False] * neither
    return before, after


def assert_plain(obj) -> None:
    """Only Python built-ins (no numpy scalars) and JSON-serialisable."""
    json.dumps(obj)
    if isinstance(obj, dict):
        for v in obj.values():
            assert_plain(v)
    else:
        assert obj is None or type(obj) in (int, float, bool, str), type(obj)


def generic_cmh(strata) -> float:
    """Continuity-corrected Mantel-Haenszel chi2 with every matched pair as its own 2x2 table (rows: before / after,
    columns: right / wrong), by the general formula (|sum (a - E a)| - 1/2)^2 / sum Var a."""
    dev = var = 0.0
    for before, after in strata.values():
        for x, y in zip(before, after, strict=True):
            m1 = int(x) + int(y)  # right answers in the pair's table; n1 = n2 = 1, N = 2
            dev += int(x) - m1 / 2
            var += 1 * 1 * m1 * (2 - m1) / (2**2 * (2 - 1))
    return max(0.0, abs(dev) - 0.5) ** 2 / var


def test_stratified_mcnemar_hand_example():
    strata = {"fold 0 seed 0": rows(20, 2, 8, 10), "fold 1 seed 0": rows(15, 1, 5, 9)}
    res = stratified_mcnemar(strata)
    assert_plain(res)
    assert (res["n"], res["b"], res["c"], res["n_discordant"]) == (70, 3, 13, 16)
    # exact conditional: C = 13 of 16 at 1/2, two-sided: 2 (C(16,13) + C(16,14) + C(16,15) + C(16,16)) / 2^16
    assert res["exact_p"] == pytest.approx(2 * (560 + 120 + 16 + 1) / 2**16, rel=1e-12)
    assert res["exact_p"] == pytest.approx(sps.binomtest(13, 16, 0.5).pvalue, rel=1e-12)
    # Mantel-Haenszel = corrected McNemar on the pooled pairs: (|13 - 3| - 1)^2 / 16 = 81/16 = 2.25^2
    assert res["cmh_chi2"] == pytest.approx(81 / 16, rel=1e-12)
    assert res["cmh_p"] == pytest.approx(sps.chi2.sf(81 / 16, 1), rel=1e-12)
    assert res["cmh_p"] == pytest.approx(math.erfc(2.25 / math.sqrt(2)), rel=1e-9)  # P(|N(0,1)| > 2.25)
    assert res["effect"] == pytest.approx(10 / 70) and res["discordance"] == pytest.approx(16 / 70)
    s0 = res["strata"]["fold 0 seed 0"]
    assert (s0["n"], s0["b"], s0["c"], s0["sign"]) == (40, 2, 8, 1)
    assert s0["effect"] == pytest.approx(6 / 40) and s0["p"] == pytest.approx(sps.binomtest(8, 10, 0.5).pvalue)
    assert res["strata"]["fold 1 seed 0"]["p"] == pytest.approx(sps.binomtest(5, 6, 0.5).pvalue)
    assert res["same_sign_everywhere"] and (res["n_positive"], res["n_negative"], res["n_zero"]) == (2, 0, 0)
    assert res["mde"] == pytest.approx(mde_mcnemar(70, 16 / 70)) and res["n_nonfinite"] == 0


def test_stratified_mcnemar_cmh_matches_general_formula_on_random_strata():
    rng = np.random.default_rng(3)
    for _ in range(20):
        strata = {}
        for fold in range(3):
            before = rng.random(int(rng.integers(5, 60))) < 0.5
            after = np.where(rng.random(before.size) < 0.3, ~before, before)
            strata[f"fold {fold} seed 0"] = (before.tolist(), after.tolist())
        res = stratified_mcnemar(strata)
        if res["n_discordant"] == 0:
            continue
        assert res["cmh_chi2"] == pytest.approx(generic_cmh(strata), rel=1e-12, abs=1e-15)
        b, c = res["b"], res["c"]
        assert res["exact_p"] == pytest.approx(sps.binomtest(c, b + c, 0.5).pvalue, rel=1e-12)


def test_stratified_mcnemar_mixed_signs_no_discordance_and_nonfinite():
    res = stratified_mcnemar({"seed 0": rows(10, 1, 4, 5), "seed 1": rows(10, 3, 1, 5), "seed 2": rows(10, 0, 0, 5)})
    assert [s["sign"] for s in res["strata"].values()] == [1, -1, 0]
    assert not res["same_sign_everywhere"]
    assert (res["n_positive"], res["n_negative"], res["n_zero"]) == (1, 1, 1)
    assert res["effect"] == pytest.approx((5 - 4) / 54)
    none = stratified_mcnemar({"seed 0": rows(5, 0, 0, 5)})
    assert none["exact_p"] == 1.0 and none["cmh_chi2"] is None and none["cmh_p"] is None
    assert none["effect"] == 0.0 and none["mde"] is None and not none["same_sign_everywhere"]
    before, after = rows(3, 1, 4, 2)
    nan = stratified_mcnemar({"fold 0": ([*before, float("nan")], [*after, True])})
    assert nan["n_nonfinite"] == 1 and nan["strata"]["fold 0"]["n"] == 10 and nan["c"] == 4
    assert_plain(nan)
    with pytest.raises(ValueError):
        stratified_mcnemar({})


def test_seed_signs():
    agree = seed_signs({"seed 0": 0.02, "seed 1": 0.01, "seed 2": np.float64(0.3)})
    assert agree["same_sign_everywhere"] and agree["sign"] == 1 and agree["n_positive"] == 3
    assert_plain(agree)
    neg = seed_signs({"seed 0": -1.0, "seed 1": -0.5})
    assert neg["same_sign_everywhere"] and neg["sign"] == -1
    mixed = seed_signs({"seed 0": 0.2, "seed 1": -0.1, "seed 2": 0.0, "seed 3": float("nan"), "seed 4": None})
    assert mixed["signs"] == {"seed 0": 1, "seed 1": -1, "seed 2": 0, "seed 3": None, "seed 4": None}
    assert not mixed["same_sign_everywhere"] and mixed["sign"] == 0
    assert (mixed["n_positive"], mixed["n_negative"], mixed["n_zero"], mixed["n_nonfinite"]) == (1, 1, 1, 2)
    assert not seed_signs({"seed 0": 0.2, "seed 1": None})["same_sign_everywhere"]
    assert not seed_signs({})["same_sign_everywhere"]


def connor_n(delta: float, psi: float) -> float:
    """Connor (1987), written out independently: pairs needed for power 0.8 at two-sided 0.05."""
    return (1.959963984540054 * math.sqrt(psi) + 0.8416212335729143 * math.sqrt(psi - delta**2)) ** 2 / delta**2


@pytest.mark.parametrize(("n", "psi"), [(236, 0.2), (1000, 0.1), (500, 0.35), (5000, 0.02)])
def test_mde_mcnemar_solves_connor(n, psi):
    delta = mde_mcnemar(n, psi)
    assert type(delta) is float and 0 < delta < psi
    assert connor_n(delta, psi) == pytest.approx(n, rel=1e-8)
    assert mde_mcnemar(4 * n, psi) < delta  # more pairs, smaller detectable change
    assert mde_mcnemar(n, psi, power=0.9) > delta and mde_mcnemar(n, psi, alpha=0.01) > delta


def test_mde_mcnemar_edges():
    assert mde_mcnemar(0, 0.2) is None and mde_mcnemar(100, 0.0) is None
    assert mde_mcnemar(50, 0.1) == 0.1  # delta = psi would need connor_n(0.1, 0.1) ~ 76 > 50 pairs: capped
    assert connor_n(0.1, 0.1) > 50
    with pytest.raises(ValueError):
        mde_mcnemar(100, 1.5)
    with pytest.raises(ValueError):
        mde_mcnemar(100, 0.2, power=1.0)


def exact_power(n: int, psi: float, delta: float, reps: int, seed: int) -> float:
    """Monte Carlo power of the exact McNemar test: each pair is discordant with probability psi, and a discordant
    pair is wrong->right with probability (psi + delta) / (2 psi)."""
    rng = np.random.default_rng(seed)
    nd = rng.binomial(n, psi, reps)
    c = rng.binomial(nd, (psi + delta) / (2 * psi))
    p = [sps.binomtest(int(ci), int(k), 0.5).pvalue if k else 1.0 for ci, k in zip(c, nd, strict=True)]
    return float(np.mean(np.array(p) < 0.05))


@pytest.mark.parametrize(("n", "psi"), [(236, 0.2), (1000, 0.1)])
def test_mde_mcnemar_has_the_stated_power_by_monte_carlo(n, psi):
    delta = mde_mcnemar(n, psi)
    assert exact_power(n, psi, delta, reps=3000, seed=n) == pytest.approx(0.8, abs=0.08)
    assert exact_power(n, psi, delta / 2, reps=3000, seed=n + 1) < 0.5  # half the MDE is mostly missed


def test_mde_from_rows():
    before, after = rows(150, 20, 27, 39)
    assert mde_from_rows(before, after) == mde_mcnemar(236, 47 / 236)
    assert mde_from_rows([*before, float("inf")], [*after, False]) == mde_mcnemar(236, 47 / 236)
    assert mde_from_rows(*rows(5, 0, 0, 5)) is None


def test_mde_paired_formula_and_t_test_monte_carlo():
    assert mde_paired(2.0, 100) == pytest.approx(Z * 2.0 / 10, rel=1e-12)
    assert mde_paired(2.0, 100) == pytest.approx(2.8015852 * 0.2, rel=1e-7)
    assert mde_paired(1.0, 0) is None and mde_paired(float("nan"), 10) is None
    n, sd = 60, 1.5
    delta = mde_paired(sd, n)
    rng = np.random.default_rng(7)
    diffs = rng.normal(delta, sd, size=(3000, n))
    power = float(np.mean(sps.ttest_1samp(diffs, 0.0, axis=1).pvalue < 0.05))
    assert power == pytest.approx(0.8, abs=0.05)


def test_holm_table_hand_values():
    res = holm_table({"rank 8": 0.01, "rank 16": 0.04, "full": 0.03, "dora": 0.005, "broken": None})
    assert res == pytest.approx({"rank 8": 0.03, "rank 16": 0.06, "full": 0.06, "dora": 0.02, "broken": None})
    assert res["broken"] is None and list(res) == ["rank 8", "rank 16", "full", "dora", "broken"]
    assert holm_table({"a": 0.5}) == {"a": 0.5} and holm_table({}) == {}


def test_stratified_paired_pools_and_signs():
    rng = np.random.default_rng(11)
    strata = {}
    for seed in range(2):
        for fold in range(3):
            before = rng.normal(-5.0, 1.0, 30)
            strata[f"fold {fold} seed {seed}"] = (before.tolist(), (before + rng.normal(0.4, 0.5, 30)).tolist())
    res = stratified_paired(strata, n_boot=2000, seed=1)
    assert_plain(res)
    diff = np.concatenate([np.subtract(a, b) for b, a in strata.values()])
    assert res["n"] == 180 and res["delta"] == pytest.approx(diff.mean(), rel=1e-12)
    assert res["wilcoxon_p"] == pytest.approx(sps.wilcoxon(diff).pvalue, rel=1e-12)
    assert res["delta_ci_low"] < res["delta"] < res["delta_ci_high"]
    for name, (b, a) in strata.items():
        assert res["strata"][name]["delta"] == pytest.approx(np.mean(np.subtract(a, b)), rel=1e-12)
    assert res["same_sign_everywhere"] and res["n_positive"] == 6
    assert res["sd_diff"] == pytest.approx(diff.std(ddof=1), rel=1e-12)
    assert res["mde"] == pytest.approx(Z * diff.std(ddof=1) / math.sqrt(180), rel=1e-9)


def test_stratified_paired_mixed_signs_and_nonfinite():
    strata = {"seed 0": ([0.0, 1.0, 2.0], [0.5, 1.5, 2.5]), "seed 1": ([0.0, 1.0, float("nan")], [-1.0, 0.0, 3.0]),
              "seed 2": ([float("inf")], [1.0])}
    res = stratified_paired(strata, n_boot=500)
    assert res["n"] == 5 and res["n_nonfinite"] == 2 and "non-finite" in res["note"]
    assert [s["sign"] for s in res["strata"].values()] == [1, -1, None]
    assert res["strata"]["seed 1"]["n_nonfinite"] == 1 and res["strata"]["seed 2"]["delta"] is None
    assert not res["same_sign_everywhere"] and res["n_missing"] == 1
    assert res["delta"] == pytest.approx((0.5 * 3 - 2.0) / 5)
    assert_plain(res)
    with pytest.raises(ValueError):
        stratified_paired({"s": ([1.0, 2.0], [1.0])})


def _sign_flip_p(d: list[float]) -> float:
    """Two-sided exact sign-flip p of sum(d), enumerated independently of scipy."""
    obs = abs(sum(d))
    sums = [abs(sum(s * x for s, x in zip(signs, d, strict=True)))
            for signs in itertools.product((1, -1), repeat=len(d))]
    return sum(s >= obs - 1e-12 for s in sums) / len(sums)


def test_word_clustered_counts_each_word_once():
    """The control-word situation: 2 of 23 words lost by all 15 adapters. The pooled test counts 30 discordant pairs
    (p ~ 2e-9); with the word as the unit it is two words out of two, p = 2 / 4."""
    words, before, after = [], [], []
    for _adapter in range(15):
        for i in range(23):
            words.append(f"w{i}"), before.append(True), after.append(i >= 2)
    pooled = stratified_mcnemar({f"fold {a} seed 0": (before[23 * a:23 * a + 23], after[23 * a:23 * a + 23])
                                 for a in range(15)})
    assert pooled["exact_p"] == pytest.approx(2 * 0.5 ** 30)
    w = word_clustered(words, before, after)
    assert (w["n_words"], w["n_up"], w["n_down"], w["n_same"]) == (23, 0, 2, 21)
    assert w["p"] == pytest.approx(0.5) and w["exact"]
    assert w["mean_change"] == pytest.approx(-2 / 23)
    assert w["down"] == [["w0", -1.0], ["w1", -1.0]] and w["up"] == []


def test_word_clustered_matches_an_enumeration_of_sign_patterns():
    rng = np.random.default_rng(3)
    words, before, after = [], [], []
    for i in range(12):  # 12 words, 1-3 scorings each
        for _ in range(int(rng.integers(1, 4))):
            words.append(f"w{i}"), before.append(bool(rng.random() < 0.5)), after.append(bool(rng.random() < 0.7))
    d = {}
    for w_, b, a in zip(words, before, after, strict=True):
        d.setdefault(w_, []).append(int(a) - int(b))
    change = [sum(v) / len(v) for v in d.values()]
    moved = [x for x in change if x != 0]
    w = word_clustered(words, before, after)
    assert w["p"] == pytest.approx(_sign_flip_p(moved)) and w["exact"]
    assert (w["n_up"], w["n_down"]) == (sum(x > 0 for x in moved), sum(x < 0 for x in moved))
    assert w["mean_change"] == pytest.approx(np.mean(change))
    one = word_clustered(["a", "a", "b"], [True, False, True], [True, True, True])  # one word moved (scipy needs 2)
    assert one["p"] == pytest.approx(_sign_flip_p([0.5])) == 1.0 and (one["n_up"], one["n_down"]) == (1, 0)
    nothing = word_clustered(["a", "a", "b"], [True, False, True], [True, False, True])
    assert nothing["p"] == 1.0 and nothing["n_same"] == 2 and nothing["down"] == [] == nothing["up"]
    with pytest.raises(ValueError, match="differ in length"):
        word_clustered(["a"], [True, False], [True, False])


def test_strata_and_seeds_sort_numbers_as_numbers():
    names = ["fold 1 seed 10", "fold 1 seed 2", "fold 10 seed 0", "fold 2 seed 0", "all"]
    assert sorted(names, key=natural_key) == ["all", "fold 1 seed 2", "fold 1 seed 10", "fold 2 seed 0",
                                              "fold 10 seed 0"]
    rows = [{"split": "unseen", "direction": "ko->en", "source": f"w{i}", "fold": 0, "seed": seed,
             "correct_before": False, "correct_after": i % 2 == 0} for seed in (10, 2) for i in range(4)]
    cell = pooled_translation(rows, n_boot=50)["unseen"]["ko->en"]
    assert list(cell["per_seed"]) == ["seed 2", "seed 10"]
    assert cell["per_seed"]["seed 10"]["effect"] == pytest.approx(0.5)
