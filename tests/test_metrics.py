"""Tests for tli.metrics against independent loop / numpy reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tli.metrics import (
    alignment_report,
    bootstrap_ci,
    csls_p_at_1,
    csls_scores,
    gold_matrix,
    mismatched_baseline,
    pair_cosines,
    retrieval,
    retrieval_both,
)


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _np_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.einsum("id,jd->ij", a, b)


def _ref_retrieval(scores: np.ndarray, gold: np.ndarray, ks=(1, 5)) -> dict[str, float]:
    """Loop reference: stable argsort by descending score, first gold position (ties are absent in random data)."""
    hits = {k: [] for k in ks}
    rr = []
    for i in range(scores.shape[0]):
        if not gold[i].any():
            continue
        order = np.argsort(-scores[i], kind="stable")
        first = next(pos for pos, j in enumerate(order) if gold[i, j]) + 1
        rr.append(1.0 / first)
        for k in ks:
            hits[k].append(float(first <= k))
    out = {f"p_at_{k}": float(np.mean(v)) for k, v in hits.items()}
    out["mrr"] = float(np.mean(rr))
    return out


def _ref_csls(src: np.ndarray, tgt: np.ndarray, k: int) -> np.ndarray:
    cos = _np_cos(src, tgt)
    n, m = cos.shape
    out = np.zeros_like(cos)
    for i in range(n):
        for j in range(m):
            r_t = np.mean(sorted(cos[i, :], reverse=True)[: min(k, m)])
            r_s = np.mean(sorted(cos[:, j], reverse=True)[: min(k, n)])
            out[i, j] = 2 * cos[i, j] - r_t - r_s
    return out


def test_gold_matrix_unique_order_and_pairs():
    src_u, tgt_u, gold, ps, pt = gold_matrix(["maji", "moto", "maji", "nyumba"], ["water", "fire", "waters", "house"])
    assert src_u == ["maji", "moto", "nyumba"]
    assert tgt_u == ["water", "fire", "waters", "house"]
    assert ps.tolist() == [0, 1, 0, 2] and pt.tolist() == [0, 1, 2, 3]
    expected = np.zeros((3, 4), dtype=bool)
    expected[[0, 1, 0, 2], [0, 1, 2, 3]] = True
    assert np.array_equal(gold.numpy(), expected)
    with pytest.raises(ValueError):
        gold_matrix(["a"], ["b", "c"])


def test_pair_cosines_matches_numpy_and_batches():
    src, tgt = _rand(4, 7, 16, seed=1) * 3, _rand(4, 7, 16, seed=2)  # unnormalised on purpose
    out = pair_cosines(src, tgt)
    assert out.shape == (4, 7)
    for layer in range(4):
        ref = np.diag(_np_cos(src[layer].numpy(), tgt[layer].numpy()))
        np.testing.assert_allclose(out[layer].numpy(), ref, atol=1e-12)
        np.testing.assert_allclose(pair_cosines(src[layer], tgt[layer]).numpy(), ref, atol=1e-12)


def test_identical_embeddings_perfect_retrieval():
    x = _rand(12, 32, seed=3)
    gold = torch.eye(12, dtype=torch.bool)
    res = retrieval(x, x.clone(), gold)
    assert res == {"p_at_1": 1.0, "p_at_5": 1.0, "mrr": 1.0}
    both = retrieval_both(x, x.clone(), gold)
    assert both["s2t_p_at_1"] == both["t2s_p_at_1"] == both["t2s_mrr"] == 1.0


def test_known_permutation_zero_p_at_1_and_hand_mrr():
    # tgt row j holds the embedding of src row (j + 1) % 4, and gold says src i <-> tgt i: every query's own vector
    # sits at tgt (i - 1) % 4 (rank 1, not gold). With orthonormal rows all other cosines are 0, tied; the optimistic
    # rule ranks the gold target 2nd. So P@1 = 0, P@5 = 1, MRR = 1/2.
    src = torch.eye(4, 8, dtype=torch.float64)
    tgt = src[[1, 2, 3, 0]]
    res = retrieval(src, tgt, torch.eye(4, dtype=torch.bool))
    assert res["p_at_1"] == 0.0 and res["p_at_5"] == 1.0 and res["mrr"] == pytest.approx(0.5)


def test_hand_computed_ranks_with_distinct_scores():
    # 1-D angles give a fully known cosine ordering. src angle 0, tgt angles 0.1, 0.3, 0.6, 1.0 (rad):
    # gold = tgt 2 -> rank 3 (MRR 1/3); a second query at angle 1.0 with gold tgt 0 -> rank 4 (MRR 1/4).
    ang = torch.tensor([0.1, 0.3, 0.6, 1.0], dtype=torch.float64)
    tgt = torch.stack([ang.cos(), ang.sin()], 1)
    src = torch.tensor([[1.0, 0.0], [np.cos(1.0), np.sin(1.0)]], dtype=torch.float64)
    gold = torch.zeros(2, 4, dtype=torch.bool)
    gold[0, 2] = gold[1, 0] = True
    res = retrieval(src, tgt, gold, ks=(1, 3))
    assert res["p_at_1"] == 0.0 and res["p_at_3"] == 0.5
    assert res["mrr"] == pytest.approx((1 / 3 + 1 / 4) / 2)


def test_two_gold_translations_either_top1_is_hit():
    src = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    tgt = torch.tensor([[0.9, 0.1, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.1, 0.0, 1.0]], dtype=torch.float64)
    gold = torch.zeros(2, 4, dtype=torch.bool)
    gold[0, 0] = gold[0, 2] = True  # top-1 for src 0 is tgt 1 (not gold), tgt 0 second -> rank 2
    gold[1, 3] = True
    res = retrieval(src, tgt, gold)
    assert res["p_at_1"] == 0.5 and res["mrr"] == pytest.approx(0.75)
    gold[0, 1] = True  # now the top-1 is one of three gold translations
    assert retrieval(src, tgt, gold)["p_at_1"] == 1.0
    assert retrieval(src, tgt, gold)["mrr"] == 1.0


def test_retrieval_matches_loop_reference_and_rows_without_gold_are_skipped():
    src, tgt = _rand(9, 6, seed=4), _rand(11, 6, seed=5)
    rng = np.random.default_rng(0)
    gold = rng.random((9, 11)) < 0.15
    gold[3] = False  # no gold target: excluded from averages
    gold[0, 0] = True
    res = retrieval(src, tgt, torch.from_numpy(gold))
    ref = _ref_retrieval(_np_cos(src.numpy(), tgt.numpy()), gold)
    for k, v in ref.items():
        assert res[k] == pytest.approx(v, abs=1e-12), k
    both = retrieval_both(src, tgt, torch.from_numpy(gold))
    ref_t2s = _ref_retrieval(_np_cos(tgt.numpy(), src.numpy()), gold.T)
    for k, v in ref_t2s.items():
        assert both[f"t2s_{k}"] == pytest.approx(v, abs=1e-12), k


def test_no_gold_at_all_gives_nan():
    res = retrieval(_rand(3, 4), _rand(3, 4, seed=1), torch.zeros(3, 3, dtype=torch.bool))
    assert np.isnan(res["p_at_1"]) and np.isnan(res["mrr"])


def test_baseline_excludes_diagonal_and_gold():
    src, tgt = _rand(6, 5, seed=6), _rand(6, 5, seed=7)
    cos = _np_cos(src.numpy(), tgt.numpy())
    vals = [cos[i, j] for i in range(6) for j in range(6) if i != j]
    assert mismatched_baseline(src, tgt) == pytest.approx(np.mean(vals), abs=1e-12)
    gold = torch.zeros(6, 6, dtype=torch.bool)
    gold[0, 1] = gold[4, 2] = True
    vals_g = [cos[i, j] for i in range(6) for j in range(6) if i != j and (i, j) not in {(0, 1), (4, 2)}]
    assert mismatched_baseline(src, tgt, gold=gold) == pytest.approx(np.mean(vals_g), abs=1e-12)
    assert np.mean(vals_g) != pytest.approx(np.mean(vals), abs=1e-6)  # the exclusion actually matters here


def test_baseline_batched_equals_per_layer():
    src, tgt = _rand(3, 8, 10, seed=8), _rand(3, 8, 10, seed=9)
    out = mismatched_baseline(src, tgt)
    assert isinstance(out, torch.Tensor) and out.shape == (3,)
    for layer in range(3):
        assert float(out[layer]) == pytest.approx(mismatched_baseline(src[layer], tgt[layer]), abs=1e-12)


def test_retrieval_and_csls_batched_equal_per_layer():
    src, tgt = _rand(3, 7, 5, seed=10), _rand(3, 9, 5, seed=11)
    gold = torch.zeros(7, 9, dtype=torch.bool)
    gold[torch.arange(7), torch.arange(7)] = True
    batched = retrieval(src, tgt, gold)
    csls_b = csls_p_at_1(src, tgt, gold, k=3)
    for layer in range(3):
        single = retrieval(src[layer], tgt[layer], gold)
        for k in single:
            assert float(batched[k][layer]) == pytest.approx(single[k], abs=1e-12)
        assert float(csls_b[layer]) == pytest.approx(csls_p_at_1(src[layer], tgt[layer], gold, k=3), abs=1e-12)


@pytest.mark.parametrize("k", [1, 3, 50])  # 50 > N and M: clamped
def test_csls_matches_loop_formula(k):
    src, tgt = _rand(6, 4, seed=12), _rand(8, 4, seed=13)
    out = csls_scores(src, tgt, k=k)
    np.testing.assert_allclose(out.numpy(), _ref_csls(src.numpy(), tgt.numpy(), k), atol=1e-12)
    np.testing.assert_allclose(csls_scores(tgt, src, k=k).numpy(), out.numpy().T, atol=1e-12)


def test_csls_p_at_1_matches_reference_argmax():
    src, tgt = _rand(10, 4, seed=14), _rand(10, 4, seed=15)
    gold = torch.eye(10, dtype=torch.bool)
    ref = _ref_csls(src.numpy(), tgt.numpy(), 3)
    expected = np.mean([np.argmax(ref[i]) == i for i in range(10)])
    assert csls_p_at_1(src, tgt, gold, k=3) == pytest.approx(expected)
    assert csls_p_at_1(src, src, gold, k=3) == 1.0


def test_bootstrap_ci_deterministic_and_contains_mean():
    vals = torch.from_numpy(np.random.default_rng(1).normal(0.3, 0.1, size=200))
    a, b = bootstrap_ci(vals, n_boot=500, seed=7), bootstrap_ci(vals.numpy(), n_boot=500, seed=7)
    assert a == b
    assert a[0] < float(vals.mean()) < a[1]
    assert bootstrap_ci(vals, n_boot=500, seed=8) != a
    half_width = 1.96 * float(vals.std()) / np.sqrt(200)  # normal-theory width; percentile CI should be close
    assert (a[1] - a[0]) / 2 == pytest.approx(half_width, rel=0.2)
    # reference percentile bootstrap written out directly: one (n_boot, n) index matrix from the same seeded generator
    v = vals.numpy()
    idx = np.random.default_rng(7).integers(0, v.size, size=(500, v.size))
    ref_means = np.array([v[row].mean() for row in idx])
    assert a == pytest.approx(tuple(np.percentile(ref_means, [2.5, 97.5])), abs=1e-12)
    a90 = bootstrap_ci(vals, n_boot=500, alpha=0.1, seed=7)
    assert a90 == pytest.approx(tuple(np.percentile(ref_means, [5, 95])), abs=1e-12)
    assert bootstrap_ci([2.0], n_boot=10) == (2.0, 2.0)
    assert all(np.isnan(bootstrap_ci([], n_boot=10)))


def test_alignment_report_consistent_with_components():
    words_s = ["a", "b", "c", "a", "d", "e"]
    words_t = ["A", "B", "C", "A2", "D", "E"]
    src_u, tgt_u, gold, ps, pt = gold_matrix(words_s, words_t)
    src, tgt = _rand(len(src_u), 8, seed=16), _rand(len(tgt_u), 8, seed=17)
    tgt[:5] = src[[0, 1, 2, 0, 3]] + 3.0 * tgt[:5]  # A, B, C, A2, D noisily near their sources; E random
    rep = alignment_report(src, tgt, gold, ps, pt, csls_k=2, n_boot=200)
    cos = np.array(
        [_np_cos(src[[i]].numpy(), tgt[[j]].numpy())[0, 0] for i, j in zip(ps.tolist(), pt.tolist(), strict=True)]
    )
    assert rep["n_pairs"] == 6
    assert rep["cosine"] == pytest.approx(cos.mean(), abs=1e-12)
    assert rep["cosine_ci_low"] <= rep["cosine"] <= rep["cosine_ci_high"]
    full = _np_cos(src.numpy(), tgt.numpy())
    g = gold.numpy()
    psn, ptn = ps.numpy(), pt.numpy()
    off = [full[psn[i], ptn[j]] for i in range(6) for j in range(6) if i != j and not g[psn[i], ptn[j]]]
    assert rep["baseline_cosine"] == pytest.approx(np.mean(off), abs=1e-12)
    assert rep["margin"] == pytest.approx(rep["cosine"] - rep["baseline_cosine"], abs=1e-12)
    s2t, t2s = _ref_retrieval(full, g), _ref_retrieval(full.T, g.T)
    assert s2t["mrr"] != pytest.approx(t2s["mrr"])  # directions differ, so the averaging below is really tested
    assert rep["s2t_mrr"] == pytest.approx(s2t["mrr"]) and rep["t2s_p_at_5"] == pytest.approx(t2s["p_at_5"])
    assert rep["p_at_1"] == pytest.approx((s2t["p_at_1"] + t2s["p_at_1"]) / 2)
    assert rep["mrr"] == pytest.approx((s2t["mrr"] + t2s["mrr"]) / 2)
    cs = _ref_csls(src.numpy(), tgt.numpy(), 2)
    csls_s2t, csls_t2s = _ref_retrieval(cs, g, ks=(1,))["p_at_1"], _ref_retrieval(cs.T, g.T, ks=(1,))["p_at_1"]
    assert csls_s2t != csls_t2s
    expected_csls = (csls_s2t + csls_t2s) / 2
    assert rep["csls_p_at_1"] == pytest.approx(expected_csls)
