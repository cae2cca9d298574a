"""Tests for tli.eval.metrics against independent loop / numpy reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tli.errors import ConfigError
from tli.eval.metrics import (
    COUNTS,
    CRITERIA,
    METRICS,
    Centring,
    MetricsConfig,
    alignment,
    metric,
    metric_key,
    mismatched_moments,
    pair_scores,
)
from tli.eval.pairs import GoldPairs, pair_cosines
from tli.eval.retrieval import _pools, pool_retrieval, retrieval


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _np_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.einsum("id,jd->ij", a, b)


def _ref_ranks(scores: np.ndarray, gold: np.ndarray) -> list[int]:
    """Loop reference: the 1-based position of the first gold column in a stable descending sort."""
    out = []
    for i in range(scores.shape[0]):
        order = np.argsort(-scores[i], kind="stable")
        out.append(next(pos for pos, j in enumerate(order) if gold[i, j]) + 1)
    return out


def _ref_summary(scores: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    r = np.array(_ref_ranks(scores, gold), dtype=float)
    return {"p_at_1": float((r <= 1).mean()), "p_at_5": float((r <= 5).mean()), "mrr": float((1 / r).mean())}


def _ref_csls(cos: np.ndarray, k: int) -> np.ndarray:
    n, m = cos.shape
    out = np.zeros_like(cos)
    for i in range(n):
        for j in range(m):
            r_t = np.mean(sorted(cos[i, :], reverse=True)[: min(k, m)])
            r_s = np.mean(sorted(cos[:, j], reverse=True)[: min(k, n)])
            out[i, j] = 2 * cos[i, j] - r_t - r_s
    return out


def _lexicon(n_pairs: int = 14, seed: int = 0):
    """Pairs with shared words (a source with two translations, a target with two sources) and their vectors."""
    src_words = [f"s{i}" for i in range(n_pairs)]
    tgt_words = [f"t{i}" for i in range(n_pairs)]
    src_words[3], tgt_words[7] = "s0", "t5"  # s0 has two translations; t5 two sources
    gold = GoldPairs.from_pairs(src_words, tgt_words)
    src, tgt = _rand(len(gold.src_keys), 6, seed=seed), _rand(len(gold.tgt_keys), 6, seed=seed + 1)
    tgt[gold.tgt_index[:6]] += 2.0 * src[gold.src_index[:6]]  # some pairs aligned, so ranks vary
    return gold, src, tgt


def test_gold_pairs_unique_order_indices_and_first_rows():
    gold = GoldPairs.from_pairs(["maji", "moto", "maji", "nyumba"], ["water", "fire", "waters", "house"])
    assert gold.src_keys == ["maji", "moto", "nyumba"] and gold.tgt_keys == ["water", "fire", "waters", "house"]
    assert gold.src_index.tolist() == [0, 1, 0, 2] and gold.tgt_index.tolist() == [0, 1, 2, 3]
    expected = np.zeros((3, 4), dtype=bool)
    expected[[0, 1, 0, 2], [0, 1, 2, 3]] = True
    assert np.array_equal(gold.matrix().numpy(), expected)
    s, t = gold.first_rows()
    assert s.tolist() == [0, 1, 3] and t.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        GoldPairs.from_pairs(["a"], ["b", "c"])


def test_excluded_pairs_are_exactly_the_pairs_sharing_a_word():
    gold, _, _ = _lexicon()
    s, t = gold.src_index.tolist(), gold.tgt_index.tolist()
    expected = {(i, j) for i in range(len(s)) for j in range(len(s)) if s[i] == s[j] or t[i] == t[j]}
    ei, ej = gold.excluded_pairs
    assert set(zip(ei.tolist(), ej.tolist(), strict=True)) == expected and len(ei) == len(expected)


def test_pair_cosines_matches_numpy_and_batches():
    src, tgt = _rand(4, 7, 16, seed=1) * 3, _rand(4, 7, 16, seed=2)  # unnormalised on purpose
    out = pair_cosines(src, tgt)
    assert out.shape == (4, 7)
    for layer in range(4):
        ref = np.diag(_np_cos(src[layer].numpy(), tgt[layer].numpy()))
        np.testing.assert_allclose(out[layer].numpy(), ref, atol=1e-12)


def test_mismatched_moments_equal_brute_force_without_translations():
    gold, src, tgt = _lexicon()
    cos = _np_cos(src.numpy(), tgt.numpy())
    s, t = gold.src_index.tolist(), gold.tgt_index.tolist()
    vals = [cos[s[i], t[j]] for i in range(len(s)) for j in range(len(s)) if s[i] != s[j] and t[i] != t[j]]
    mean, sd = mismatched_moments(src[gold.src_index], tgt[gold.tgt_index], gold)
    assert mean == pytest.approx(np.mean(vals), abs=1e-12) and sd == pytest.approx(np.std(vals), abs=1e-10)
    everything = [cos[s[i], t[j]] for i in range(len(s)) for j in range(len(s)) if i != j]
    assert np.mean(everything) != pytest.approx(mean, abs=1e-6)  # the exclusion of shared words matters here
    one = GoldPairs.from_pairs(["a"], ["b"])
    assert all(np.isnan(mismatched_moments(src[:1], tgt[:1], one)))


def test_identical_embeddings_retrieve_perfectly():
    x = _rand(12, 32, seed=3)
    gold = GoldPairs.from_pairs(list(range(12)), list(range(12)))
    res = retrieval(x, x.clone(), gold)
    assert res["p_at_1"] == res["mrr"] == res["csls_p_at_1"] == res["t2s_mrr"] == 1.0


def test_known_permutation_zero_p_at_1_and_hand_mrr():
    # tgt j holds the vector of src (j + 1) % 4; orthonormal rows tie every other cosine at 0 and the optimistic
    # rule ranks the gold target 2nd: P@1 = 0, P@5 = 1, MRR = 1/2 in both directions.
    src = torch.eye(4, 8, dtype=torch.float64)
    res = retrieval(src, src[[1, 2, 3, 0]], GoldPairs.from_pairs(list(range(4)), list(range(4))))
    assert res["p_at_1"] == 0.0 and res["p_at_5"] == 1.0 and res["mrr"] == pytest.approx(0.5)


def test_hand_computed_ranks_with_distinct_scores():
    # src angle 0 has gold tgt at 0.6 rad (rank 3 among 0.1, 0.3, 0.6, 1.0); src angle 1.0 has gold tgt 0.1 (rank 4).
    ang = torch.tensor([0.1, 0.3, 0.6, 1.0], dtype=torch.float64)
    tgt = torch.stack([ang.cos(), ang.sin()], 1)
    src = torch.tensor([[1.0, 0.0], [np.cos(1.0), np.sin(1.0)]], dtype=torch.float64)
    gold = GoldPairs(["x", "y"], ["a", "b", "c", "d"], torch.tensor([0, 1]), torch.tensor([2, 0]))
    res = retrieval(src, tgt, gold)
    assert res["s2t_p_at_1"] == 0.0 and res["s2t_mrr"] == pytest.approx((1 / 3 + 1 / 4) / 2)


def test_two_gold_translations_either_top1_is_hit():
    src = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    tgt = torch.tensor([[0.9, 0.1, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.1, 0.0, 1.0]], dtype=torch.float64)
    # src 0's translations are tgt 0 and tgt 2; its nearest target is tgt 1 (not gold), tgt 0 second: rank 2
    gold = GoldPairs(["x", "y"], ["a", "b", "c", "d"], torch.tensor([0, 0, 1]), torch.tensor([0, 2, 3]))
    res = retrieval(src, tgt, gold)
    assert res["s2t_p_at_1"] == 0.5 and res["s2t_mrr"] == pytest.approx(0.75)
    gold3 = GoldPairs(["x", "y"], ["a", "b", "c", "d"], torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1, 2, 3]))
    assert retrieval(src, tgt, gold3)["s2t_p_at_1"] == 1.0  # now the top-1 is one of three translations


@pytest.mark.parametrize("chunk", [1, 3, 4096])
def test_retrieval_and_csls_match_loop_references_in_any_chunking(chunk):
    gold, src, tgt = _lexicon()
    res = retrieval(src, tgt, gold, csls_k=3, chunk=chunk)
    cos, g = _np_cos(src.numpy(), tgt.numpy()), gold.matrix().numpy()
    s2t, t2s = _ref_summary(cos, g), _ref_summary(cos.T, g.T)
    assert s2t["mrr"] != pytest.approx(t2s["mrr"])  # directions differ, so the averaging is really tested
    for key in ("p_at_1", "p_at_5", "mrr"):
        assert res[f"s2t_{key}"] == pytest.approx(s2t[key], abs=1e-12)
        assert res[f"t2s_{key}"] == pytest.approx(t2s[key], abs=1e-12)
        assert res[key] == pytest.approx((s2t[key] + t2s[key]) / 2, abs=1e-12)
    csls = _ref_csls(cos, 3)
    expected = (_ref_summary(csls, g)["p_at_1"] + _ref_summary(csls.T, g.T)["p_at_1"]) / 2
    assert res["csls_p_at_1"] == pytest.approx(expected, abs=1e-12)


def test_pool_retrieval_equals_a_loop_over_the_same_pools():
    gold, src, tgt = _lexicon(20)
    ps, pt = src[gold.src_index], tgt[gold.tgt_index]
    res = pool_retrieval(ps, pt, gold, pool_size=5, n_pools=30, seed=4)
    pools = _pools(gold.n_pairs, 5, 30, 4).numpy()
    s, t = gold.src_index.numpy(), gold.tgt_index.numpy()
    p1, rr = [], []
    for pool in pools:
        cos = _np_cos(ps.numpy()[pool], pt.numpy()[pool])
        g = (s[pool][:, None] == s[pool][None, :]) | (t[pool][:, None] == t[pool][None, :])
        for scores, gm in ((cos, g), (cos.T, g.T)):
            ranks = np.array(_ref_ranks(scores, gm), dtype=float)
            p1.append((ranks <= 1).mean())
            rr.append((1 / ranks).mean())
    assert res["pool_size"] == 5 and res["pool_p_at_1"] == pytest.approx(np.mean(p1), abs=1e-12)
    assert res["pool_mrr"] == pytest.approx(np.mean(rr), abs=1e-12)
    small = pool_retrieval(ps[:3], pt[:3], GoldPairs.from_pairs([0, 1, 2], [0, 1, 2]), 5, 30, 4)
    assert small["pool_size"] == 3  # fewer pairs than the pool size: one pool of all of them


def test_pair_scores_margin_is_exact_and_pool_rank_is_bounded():
    gold, src, tgt = _lexicon()
    scores = pair_scores(src, tgt, gold, MetricsConfig(pool_size=5, seed=1))
    cos = _np_cos(src.numpy(), tgt.numpy())
    s, t = gold.src_index.tolist(), gold.tgt_index.tolist()
    for i in range(len(s)):
        others = [cos[s[i], t[j]] for j in range(len(s)) if s[i] != s[j] and t[i] != t[j]]
        assert float(scores["margin"][i]) == pytest.approx(cos[s[i], t[i]] - np.mean(others), abs=1e-12)
        assert float(scores["cosine"][i]) == pytest.approx(cos[s[i], t[i]], abs=1e-12)
    assert ((scores["pool_mrr"] >= 1 / 5 - 1e-12) & (scores["pool_mrr"] <= 1)).all()
    again = pair_scores(src, tgt, gold, MetricsConfig(pool_size=5, seed=1))
    assert torch.equal(again["pool_mrr"], scores["pool_mrr"])  # seeded
    one_to_one = GoldPairs.from_pairs(list(range(8)), list(range(8)))
    x = _rand(8, 6, seed=3)
    assert pair_scores(x, x.clone(), one_to_one)["pool_mrr"].tolist() == [1.0] * 8  # identical vectors rank first


def test_alignment_returns_the_registry_and_agrees_with_its_parts():
    gold, src, tgt = _lexicon()
    out = alignment(src, tgt, gold, MetricsConfig(csls_k=3, pool_size=5, n_pools=10))
    assert set(out) == set(METRICS) | set(COUNTS)
    mean, sd = mismatched_moments(src[gold.src_index], tgt[gold.tgt_index], gold)
    cos = float(pair_cosines(src[gold.src_index], tgt[gold.tgt_index]).mean())
    assert out["cosine"] == pytest.approx(cos) and out["baseline_cosine"] == pytest.approx(mean)
    assert out["margin_z"] == pytest.approx((cos - mean) / sd)
    assert out["retrieval_pool"] == len(gold.tgt_keys) and out["n_pairs"] == gold.n_pairs
    for key, value in retrieval(src, tgt, gold, csls_k=3).items():
        assert out[key] == pytest.approx(value)


def test_large_sets_are_scored_on_a_documented_sample():
    gold = GoldPairs.from_pairs(list(range(60)), list(range(60)))
    src, tgt = _rand(60, 8, seed=5), _rand(60, 8, seed=6)
    opts = MetricsConfig(max_pool=25, pool_size=5, seed=3)
    out = alignment(src, tgt, gold, opts)
    assert out["retrieval_pool"] == 25 and out["n_pairs"] == 60  # cosines over all pairs, retrieval on 25
    sample = torch.randperm(60, generator=torch.Generator().manual_seed(3))[:25]
    sub, s_rows, t_rows = gold.subset(sample)
    assert out["mrr"] == pytest.approx(retrieval(src[s_rows], tgt[t_rows], sub)["mrr"])
    assert alignment(src, tgt, gold, opts) == out  # seeded


def test_centring_uses_the_training_means():
    src, tgt = _rand(30, 2, 8, seed=7) + 5.0, _rand(25, 2, 8, seed=8) - 3.0  # a large shared direction per language
    c = Centring.fit(src, tgt)
    centred = c.apply(src, "src")
    assert torch.allclose(centred.norm(dim=-1), torch.ones(30, 2, dtype=torch.float64))
    n = torch.nn.functional.normalize
    expected = n(n(src, dim=-1) - n(src, dim=-1).mean(0), dim=-1)
    torch.testing.assert_close(centred, expected)
    other = _rand(5, 2, 8, seed=9)  # a control split is centred with the training statistics
    torch.testing.assert_close(c.apply(other, "tgt"), n(n(other, dim=-1) - n(tgt, dim=-1).mean(0), dim=-1))


def test_registry_names_keys_and_errors():
    assert metric("mrr", "objective.metric").higher_is_better
    assert "baseline_cosine" not in CRITERIA and "mrr" in CRITERIA and "margin_z" in CRITERIA
    with pytest.raises(ConfigError, match="scan.criterion='mrrr' is not a metric; valid: .*mrr"):
        metric("mrrr", "scan.criterion")
    assert metric_key("val", "p_at_1", 12) == "val/p_at_1@12"
    assert metric_key("val", "p_at_1", 12, centred=True) == "val/centred/p_at_1@12"
    with pytest.raises(ConfigError, match="metrics.pool_size=1 must be >= 2"):
        MetricsConfig(pool_size=1)
