"""The reading's claims: Holm-adjusted as one family, and refused on splits too small to support them."""

import numpy as np
import pytest
from scipy import stats as sps

from tli.eval.claims import MIN_PAIRS_FOR_CLAIMS
from tli.eval.evaluation import evaluate_run
from tli.eval.metrics import PAIR_SCORES
from tli.eval.sections import embedding_section
from tli.eval.stats import holm

LAYERS = [2, 3]
METRICS = {"baseline_cosine": 0.1, "margin": 0.3, "margin_z": 1.0, "p_at_1": 0.2, "retrieval_pool": 12,
           "pool_p_at_1": 0.2, "mrr": 0.3, "csls_p_at_1": 0.2}


def _scores(deltas: dict[str, dict[str, np.ndarray]]):
    """before/after in `layer_scores` form, raw and centred alike: split -> score -> per-pair gains."""
    before, after = {}, {}
    for variant in ("raw", "centred"):
        for split, per_score in deltas.items():
            for layer in LAYERS:
                b = {s: 0.5 + 0.01 * np.arange(d.size) for s, d in per_score.items()}
                before.setdefault(variant, {}).setdefault(split, {})[layer] = {"metrics": METRICS, "pairs": b}
                after.setdefault(variant, {}).setdefault(split, {})[layer] = {
                    "metrics": METRICS, "pairs": {s: b[s] + d for s, d in per_score.items()}}
    return before, after


def _lines(run) -> str:
    return "\n".join(line for per_layer in run["reading"].values() for line in per_layer)


def test_holm_hand_computed():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005, 3 x 0.01, 2 x 0.03, max(0.06, 1 x 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.4]) == pytest.approx([0.8, 0.8])  # monotone: the larger p is never adjusted below
    assert holm([0.3, 0.9]) == pytest.approx([0.6, 0.9]) and holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert holm([None, 0.02, float("nan"), 0.01]) == [None, pytest.approx(0.02), None, pytest.approx(0.02)]
    assert holm([]) == []


def test_four_pair_lexicon_makes_no_claim():
    rng = np.random.default_rng(0)
    big = {s: 1.0 + rng.normal(0, 0.01, 4) for s in PAIR_SCORES}  # a huge, consistent gain on 4 trained pairs
    none = {s: rng.normal(0, 0.01, 4) for s in PAIR_SCORES}
    assert sps.ttest_ind(big["margin"], none["margin"], equal_var=False).pvalue < 1e-6  # was read as "targeted"
    run = evaluate_run(*_scores({"train": big, "control": none}), LAYERS, n_boot=200, seed=0)
    text = _lines(run)
    assert "targeted" not in text.replace("not targeted", "") and "beats" not in text and "worse" not in text
    assert f"fewer than {MIN_PAIRS_FOR_CLAIMS}" in text and "too small a split" in text
    assert run["claims"]["n"] == 0 and run["claims"]["tests"] == []
    d = run["targeted"][2]["raw"]["margin"]
    assert d["targeted"] is True and d["holm_targeted"] is False and d["holm_p"] is None  # raw keys unchanged


def test_a_dozen_claims_at_five_percent_are_adjusted():
    n, s = 12, 0.156
    spread = np.linspace(-1, 1, n) * s
    train = {"cosine": spread.copy(), "margin": 0.1 + spread, "pool_mrr": spread.copy()}
    control = {score: spread.copy() for score in PAIR_SCORES}
    raw_p = sps.ttest_ind(train["margin"], control["margin"], equal_var=False).pvalue
    assert 0.05 / 14 < raw_p < 0.05  # significant alone, not among 14 claims
    run = evaluate_run(*_scores({"train": train, "control": control}), LAYERS, n_boot=200, seed=0)
    claims = run["claims"]
    assert claims["n"] == 14 and claims["method"] == "holm"  # 2 layers x 2 variants x 3 scores + 2 verdicts
    ps = [t["p"] for t in claims["tests"]]
    assert [t["holm_p"] for t in claims["tests"]] == pytest.approx(holm(ps))
    d = run["targeted"][3]["centred"]["margin"]
    assert d["p"] == pytest.approx(raw_p) and d["targeted"] is True  # the single test, as before
    # the four margin tests share the smallest p: Holm multiplies it by 14 (then 13, 12, 11, the running max)
    assert d["holm_p"] == pytest.approx(min(1.0, 14 * raw_p)) and d["holm_targeted"] is False
    assert "the effect is targeted" not in _lines(run) and "Holm-adjusted over 14 claims" in d["reading"]
    pool = run["control"][2]["centred"]["paired"]["pool_mrr"]
    assert "holm_p" in pool and pool["holm_p"] >= pool["wilcoxon_p"]
    assert "Holm-adjusted over 14 claims" in embedding_section(run)


def test_a_large_real_effect_is_still_claimed():
    rng = np.random.default_rng(1)
    n = 30
    train = {s: 0.5 + rng.normal(0, 0.05, n) for s in PAIR_SCORES}
    control = {s: rng.normal(0, 0.05, n) for s in ("cosine", "margin")}
    control["pool_mrr"] = 0.3 + rng.normal(0, 0.05, n)  # unseen words gain too
    run = evaluate_run(*_scores({"train": train, "control": control}), LAYERS, n_boot=200, seed=0)
    text = _lines(run)
    assert "the effect is targeted" in text and "the adapter beats the centred base model" in text
    for layer in LAYERS:
        d = run["targeted"][layer]["raw"]["margin"]
        assert d["holm_targeted"] is True and d["holm_p"] <= 14 * d["p"] < 0.05
        pool = run["control"][layer]["centred"]["paired"]["pool_mrr"]
        assert pool["holm_p"] < 0.05 and pool["wilcoxon_p"] == pytest.approx(
            sps.wilcoxon(control["pool_mrr"] + 0.5 + 0.01 * np.arange(n), 0.5 + 0.01 * np.arange(n)).pvalue)
