"""Cross-lingual word-alignment metrics over L2-normalised embeddings.

Conventions: ``src`` is (N, D), ``tgt`` is (M, D); ``gold`` is a bool (N, M) matrix with ``gold[i, j]`` True when
target word j is a correct translation of source word i (a word may have several). Functions marked "batched" also
accept a leading layer dimension, (L, N, D) -> (L, ...). Rows are re-normalised defensively; half precision inputs are
upcast to float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

_BOOT_CHUNK = 1 << 22  # max resample indices drawn at once (bounds memory of the (n_boot, n) index matrix)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension, upcasting anything below float32."""
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    return F.normalize(x, dim=-1)


def _cos_matrix(src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Cosine matrix (..., N, D) x (..., M, D) -> (..., N, M)."""
    return _normalize(src) @ _normalize(tgt).transpose(-1, -2)  # (..., N, M)


def _out(x: torch.Tensor) -> float | torch.Tensor:
    """0-d tensor -> Python float; batched result -> tensor."""
    return float(x) if x.dim() == 0 else x


def gold_matrix(
    src_words: Sequence[str], tgt_words: Sequence[str]
) -> tuple[list[str], list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Build unique word lists and the gold relation from translation pairs (src_words[i], tgt_words[i]).

    Returns (src_unique, tgt_unique, gold (Nu, Mu) bool, pair_src_idx (P,), pair_tgt_idx (P,)); unique lists keep the
    order of first appearance and the index tensors map each pair into them.
    """
    if len(src_words) != len(tgt_words):
        raise ValueError(f"got {len(src_words)} source words but {len(tgt_words)} target words")
    src_unique = list(dict.fromkeys(src_words))
    tgt_unique = list(dict.fromkeys(tgt_words))
    s_pos = {w: i for i, w in enumerate(src_unique)}
    t_pos = {w: i for i, w in enumerate(tgt_unique)}
    pair_src_idx = torch.tensor([s_pos[w] for w in src_words], dtype=torch.long)  # (P,)
    pair_tgt_idx = torch.tensor([t_pos[w] for w in tgt_words], dtype=torch.long)  # (P,)
    gold = torch.zeros(len(src_unique), len(tgt_unique), dtype=torch.bool)  # (Nu, Mu)
    gold[pair_src_idx, pair_tgt_idx] = True
    return src_unique, tgt_unique, gold, pair_src_idx, pair_tgt_idx


def pair_cosines(src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Cosine of aligned rows (batched): (N, D), (N, D) -> (N,); (L, N, D) -> (L, N)."""
    if src.shape != tgt.shape:
        raise ValueError(f"pair_cosines needs equal shapes, got {tuple(src.shape)} and {tuple(tgt.shape)}")
    return (_normalize(src) * _normalize(tgt)).sum(-1)  # (..., N)


def mismatched_baseline(src: torch.Tensor, tgt: torch.Tensor, gold: torch.Tensor | None = None) -> float | torch.Tensor:
    """Mean cosine between mismatched pairs (batched): src[i] vs tgt[j] for i != j of pair-aligned (N, D) inputs.

    This is the expected cosine of two unrelated words, so ``margin = mean gold cosine - baseline`` separates real
    alignment from a global shift that moves every word closer to every other. ``gold`` (N, N) bool, optional, marks
    off-diagonal entries that are in fact translations (e.g. the same word in two pairs) so they are excluded too.
    Returns a float for (N, D) input, a (L,) tensor for (L, N, D); NaN if no entry remains (N < 2).
    """
    if src.shape != tgt.shape:
        raise ValueError(
            f"mismatched_baseline needs pair-aligned inputs, got {tuple(src.shape)} and {tuple(tgt.shape)}"
        )
    sim = _cos_matrix(src, tgt)  # (..., N, N)
    n = sim.shape[-1]
    keep = ~torch.eye(n, dtype=torch.bool, device=sim.device)  # (N, N)
    if gold is not None:
        keep = keep & ~gold.to(device=sim.device, dtype=torch.bool)
    count = keep.sum()
    total = (sim * keep).sum(dim=(-2, -1))  # (...,)
    mean = total / count if count > 0 else torch.full_like(total, float("nan"))
    return _out(mean)


def _retrieval_from_scores(
    scores: torch.Tensor, gold: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, torch.Tensor]:
    """Rank metrics from a score matrix (..., N, M) and gold (N, M); values are (...,) tensors."""
    gold = gold.to(device=scores.device, dtype=torch.bool)
    neg_inf = torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device)
    best_gold = torch.where(gold, scores, neg_inf).amax(dim=-1)  # (..., N)
    rank = 1 + (scores > best_gold.unsqueeze(-1)).sum(dim=-1)  # (..., N)
    valid = gold.any(dim=-1)  # (N,)
    n_valid = valid.sum()
    rank = rank.to(scores.dtype)
    out: dict[str, torch.Tensor] = {}

    def avg(x: torch.Tensor) -> torch.Tensor:
        if n_valid == 0:
            return torch.full(x.shape[:-1], float("nan"), dtype=scores.dtype)
        return (x * valid).sum(dim=-1) / n_valid  # (...,)

    for k in ks:
        out[f"p_at_{k}"] = avg((rank <= k).to(scores.dtype))
    out["mrr"] = avg(1.0 / rank)
    return out


def retrieval(
    src: torch.Tensor, tgt: torch.Tensor, gold: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float | torch.Tensor]:
    """Source -> target retrieval by cosine (batched): ``p_at_{k}`` for each k and ``mrr``.

    For each source row all target rows are ranked by cosine. The rank of a row is that of its best-scoring gold target:
    rank = 1 + #targets with a strictly greater score (so exact ties are resolved optimistically). hit@k means
    rank <= k (any gold target in the top k); MRR averages 1/rank (the first gold target in the ranking). Averages run
    over source rows with at least one gold target (NaN if none). Call with (tgt, src, gold.T) for the other direction.
    """
    res = _retrieval_from_scores(_cos_matrix(src, tgt), gold, ks)
    return {k: _out(v) for k, v in res.items()}


def retrieval_both(
    src: torch.Tensor, tgt: torch.Tensor, gold: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float | torch.Tensor]:
    """`retrieval` in both directions, keys prefixed ``s2t_`` and ``t2s_``."""
    s2t = retrieval(src, tgt, gold, ks)
    t2s = retrieval(tgt, src, gold.transpose(-1, -2), ks)
    return {**{f"s2t_{k}": v for k, v in s2t.items()}, **{f"t2s_{k}": v for k, v in t2s.items()}}


def csls_scores(src: torch.Tensor, tgt: torch.Tensor, k: int = 10) -> torch.Tensor:
    """Cross-domain similarity local scaling (Conneau et al. 2018, "Word Translation Without Parallel Data"), batched.

    CSLS(x, y) = 2 cos(x, y) - r_T(x) - r_S(y), with r_T(x) the mean cosine of x to its k nearest targets and r_S(y)
    the mean cosine of y to its k nearest sources; k is clamped to the number of candidates. (N, D), (M, D) -> (N, M).
    The matrix is symmetric in roles: csls_scores(tgt, src) == csls_scores(src, tgt).T.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    cos = _cos_matrix(src, tgt)  # (..., N, M)
    n, m = cos.shape[-2], cos.shape[-1]
    r_t = cos.topk(min(k, m), dim=-1).values.mean(dim=-1)  # (..., N)
    r_s = cos.topk(min(k, n), dim=-2).values.mean(dim=-2)  # (..., M)
    return 2 * cos - r_t.unsqueeze(-1) - r_s.unsqueeze(-2)  # (..., N, M)


def csls_p_at_1(src: torch.Tensor, tgt: torch.Tensor, gold: torch.Tensor, k: int = 10) -> float | torch.Tensor:
    """Source -> target P@1 under CSLS scores (same ranking rule as `retrieval`), batched."""
    return _out(_retrieval_from_scores(csls_scores(src, tgt, k), gold, ks=(1,))["p_at_1"])


def _to_numpy_1d(values: torch.Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def bootstrap_means(
    values: torch.Tensor | np.ndarray | Sequence[float], n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Means of `n_boot` resamples (with replacement) of 1-D `values`, drawn from `rng` -> (n_boot,).

    Indices are drawn as an (n_boot, n) matrix in fixed-size row chunks to bound memory; the result is deterministic
    for a given generator state, n and n_boot.
    """
    v = _to_numpy_1d(values)  # (n,)
    n = v.size
    if n == 0:
        return np.full(n_boot, np.nan)
    rows = max(1, _BOOT_CHUNK // n)
    out = np.empty(n_boot)
    for start in range(0, n_boot, rows):
        stop = min(start + rows, n_boot)
        idx = rng.integers(0, n, size=(stop - start, n))  # (chunk, n)
        out[start:stop] = v[idx].mean(axis=1)
    return out


def bootstrap_ci(
    values: torch.Tensor | np.ndarray | Sequence[float], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) CI of the mean; deterministic for a seed. (nan, nan) for empty input."""
    means = bootstrap_means(values, n_boot, np.random.default_rng(seed))  # (n_boot,)
    if np.isnan(means).all():
        return float("nan"), float("nan")
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def alignment_report(
    src: torch.Tensor,
    tgt: torch.Tensor,
    gold: torch.Tensor,
    pair_src_idx: torch.Tensor,
    pair_tgt_idx: torch.Tensor,
    *,
    csls_k: int = 10,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, float | int]:
    """All alignment metrics for one layer.

    ``src`` (Nu, D) / ``tgt`` (Mu, D) embed the unique words, ``gold`` is (Nu, Mu), and the translation pairs are the
    index tensors ``pair_src_idx``/``pair_tgt_idx`` (P,) into them (see `gold_matrix`). Cosine, its bootstrap CI and the
    mismatched baseline run over the listed pairs; retrieval and CSLS run over unique words, and ``p_at_1``, ``mrr`` and
    ``csls_p_at_1`` average the two directions.
    """
    pair_src_idx = pair_src_idx.to(src.device)
    pair_tgt_idx = pair_tgt_idx.to(tgt.device)
    ps, pt = src[pair_src_idx], tgt[pair_tgt_idx]  # (P, D), (P, D)
    cos = pair_cosines(ps, pt)  # (P,)
    pair_gold = gold[pair_src_idx.to(gold.device)][:, pair_tgt_idx.to(gold.device)]  # (P, P)
    cosine = float(cos.mean())
    baseline = mismatched_baseline(ps, pt, gold=pair_gold)
    low, high = bootstrap_ci(cos, n_boot=n_boot, seed=seed)
    rb = retrieval_both(src, tgt, gold, ks=(1, 5))
    csls = csls_scores(src, tgt, k=csls_k)  # (Nu, Mu); symmetric in roles, so the t2s matrix is its transpose
    csls_s2t = float(_retrieval_from_scores(csls, gold, ks=(1,))["p_at_1"])
    csls_t2s = float(_retrieval_from_scores(csls.transpose(0, 1), gold.transpose(0, 1), ks=(1,))["p_at_1"])
    report: dict[str, float | int] = {
        "n_pairs": int(pair_src_idx.numel()),
        "cosine": cosine,
        "cosine_ci_low": low,
        "cosine_ci_high": high,
        "baseline_cosine": float(baseline),
        "margin": cosine - float(baseline),
    }
    report.update({k: float(v) for k, v in rb.items()})
    report["p_at_1"] = (report["s2t_p_at_1"] + report["t2s_p_at_1"]) / 2
    report["mrr"] = (report["s2t_mrr"] + report["t2s_mrr"]) / 2
    report["csls_p_at_1"] = (csls_s2t + csls_t2s) / 2
    return report
