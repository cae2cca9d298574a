"""Recipes against each other in the representations: each pair's score after one recipe's adapter against the
other's of the same (fold, seed), pooled over strata; Holm over the verdict tests on splits no adapter trained on."""

import numpy as np
import pytest
from scipy.stats import wilcoxon

from tli.eval.recipe_alignment import compare_alignment, recipe_alignment_section

PAIRS = [("a", "A"), ("b", "B"), ("c", "C"), ("d", "D"), ("e", "E"), ("f", "F")]


def _rows(run, seed, split, scores, fold=None):
    return [{"run": run, "split": split, "source": s, "target": t, "layer": 18, "fold": fold, "seed": seed,
             "cos_before": 0.1, "cos_after": x / 2, "margin_before": 0.0, "margin_after": x / 3,
             "pool_mrr_before": 0.2, "pool_mrr_after": x, "centred_cos_before": 0.1, "centred_cos_after": x / 4,
             "centred_margin_before": 0.0, "centred_margin_after": x / 5, "centred_pool_mrr_before": 0.2,
             "centred_pool_mrr_after": x + 0.01 * i}
            for i, ((s, t), x) in enumerate(zip(PAIRS, scores, strict=True))]


def test_a_recipe_meets_its_null_pair_by_pair_within_each_seed():
    rng = np.random.default_rng(0)
    recipe = {seed: rng.uniform(0.3, 1.0, len(PAIRS)) for seed in (2, 10)}
    null = {seed: rng.uniform(0.0, 0.5, len(PAIRS)) for seed in (2, 10)}
    rows = []
    for seed in (10, 2):  # the runs' order in the evaluation does not decide the matching
        rows += _rows(f"tli/{seed}", seed, "control", recipe[seed]) + _rows(f"tli/{seed}", seed, "train", recipe[seed])
    for seed in (2, 10):
        rows += _rows(f"null/{seed}", seed, "control", null[seed]) + _rows(f"null/{seed}", seed, "train", null[seed])
    out = compare_alignment(rows, n_boot=200)
    assert list(out["pairs"]) == ["tli vs null"]
    c = out["pairs"]["tli vs null"]
    assert c["n_matched"] == 2 * 2 * len(PAIRS)
    cell = c["splits"]["control"][18]["raw"]["pool_mrr"]
    diffs = np.concatenate([recipe[s] - null[s] for s in (2, 10)])  # seed 2 then seed 10: numbers in number order
    assert cell["n"] == 12 and cell["delta"] == pytest.approx(diffs.mean())
    assert cell["mean_before"] == pytest.approx(np.concatenate([null[2], null[10]]).mean())
    assert cell["wilcoxon_p"] == pytest.approx(wilcoxon(diffs).pvalue)
    assert list(cell["strata"]) == ["seed 2", "seed 10"]
    assert cell["strata"]["seed 10"]["delta"] == pytest.approx((recipe[10] - null[10]).mean())
    assert cell["n_positive"] == 2 and cell["same_sign_everywhere"]
    cos = c["splits"]["control"][18]["centred"]["cosine"]
    assert cos["delta"] == pytest.approx(diffs.mean() / 4)
    # Holm: the verdict score (centred pool_mrr) on control only; the trained split is descriptive
    assert out["family_size"] == 1
    assert c["splits"]["control"][18]["centred"]["pool_mrr"]["holm_p"] == pytest.approx(
        c["splits"]["control"][18]["centred"]["pool_mrr"]["wilcoxon_p"])
    assert "holm_p" not in c["splits"]["train"][18]["centred"]["pool_mrr"]
    assert "holm_p" not in cell
    text = recipe_alignment_section(out)
    verdict = c["splits"]["control"][18]["centred"]["pool_mrr"]
    assert "| tli vs null | control | 18 | centred | pool_mrr | 12 |" in text
    assert f"| p = {verdict['wilcoxon_p']:.3g}, Holm p = {verdict['holm_p']:.3g} | 2 up, 0 down |" in text
    assert "| tli vs null | train | 18 | centred | cosine |" in text


def test_holm_runs_over_every_comparison_and_untrained_split():
    rows = []
    for name, shift in (("a", 0.3), ("b", 0.2), ("c", 0.0)):
        base = np.linspace(0.1, 0.6, len(PAIRS))
        for seed in (0, 1):
            rows += _rows(f"{name}/{seed}", seed, "unseen", base + shift + 0.05 * seed, fold=seed)
    out = compare_alignment(rows, n_boot=100)
    assert list(out["pairs"]) == ["a vs b", "a vs c", "b vs c"] and out["family_size"] == 3
    raw = [out["pairs"][n]["splits"]["unseen"][18]["centred"]["pool_mrr"]["wilcoxon_p"] for n in out["pairs"]]
    holm = [out["pairs"][n]["splits"]["unseen"][18]["centred"]["pool_mrr"]["holm_p"] for n in out["pairs"]]
    order = np.argsort(raw)
    expected = np.maximum.accumulate([min(1.0, (3 - k) * raw[i]) for k, i in enumerate(order)])
    assert [holm[i] for i in order] == pytest.approx(expected)
    assert set(out["pairs"]["a vs b"]["splits"]["unseen"][18]["centred"]["pool_mrr"]["strata"]) == \
        {"fold 0 seed 0", "fold 1 seed 1"}


def test_runs_that_cannot_be_matched_one_to_one_are_named_not_compared():
    rows = (_rows("tli/0", 0, "control", np.ones(6)) + _rows("tli/1", 0, "control", np.ones(6))
            + _rows("null/0", 0, "control", np.zeros(6)) + _rows("other/0", 5, "control", np.zeros(6)))
    out = compare_alignment(rows, n_boot=100)
    assert out["pairs"]["tli vs null"]["skipped"] == "tli/0 and tli/1 share seed 0: runs cannot be matched one to one"
    assert out["pairs"]["null vs other"]["skipped"] == "no pair scored by both in one (fold, seed) stratum"
    assert out["family_size"] == 0
    assert "- tli vs null: not compared (tli/0 and tli/1 share seed 0" in recipe_alignment_section(out)
    assert compare_alignment(_rows("tli/0", 0, "control", np.ones(6))) == {}
