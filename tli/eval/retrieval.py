"""Retrieval of translations among candidate words: exact ranks in row chunks (cosine and CSLS, both directions),
and retrieval inside random pools of a fixed size (comparable between splits of different sizes)."""

from __future__ import annotations

from functools import lru_cache

import torch

from tli.eval.pairs import GoldPairs, normalize


def _ranks(queries: torch.Tensor, cands: torch.Tensor, q_of_pair: torch.Tensor, c_of_pair: torch.Tensor,
           chunk: int, c_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Rank of each query's best gold candidate by score = q . c - c_bias[c], in row chunks.

    rank = 1 + #candidates scoring strictly higher (exact ties resolved optimistically); inf for a query without a
    gold candidate. (Nq, D), (Nc, D), gold given as (P,) query and candidate indices -> (Nq,).
    """
    ranks = torch.full((queries.shape[0],), float("inf"), dtype=torch.float64)
    order = torch.argsort(q_of_pair, stable=True)
    q_sorted, c_sorted = q_of_pair[order], c_of_pair[order]
    for r0 in range(0, queries.shape[0], chunk):
        r1 = min(r0 + chunk, queries.shape[0])
        scores = queries[r0:r1] @ cands.T  # (c, Nc)
        if c_bias is not None:
            scores = scores - c_bias[None, :]  # (c, Nc)
        lo, hi = torch.searchsorted(q_sorted, torch.tensor([r0, r1]))
        rows, cols = q_sorted[lo:hi] - r0, c_sorted[lo:hi]  # gold entries inside this chunk
        best = torch.full((r1 - r0,), float("-inf"), dtype=scores.dtype)
        best.scatter_reduce_(0, rows, scores[rows, cols], reduce="amax")  # (c,) best gold score per query
        has_gold = torch.isfinite(best)
        rank = 1.0 + (scores > best[:, None]).sum(1).double()  # (c,)
        ranks[r0:r1] = torch.where(has_gold, rank, torch.tensor(float("inf"), dtype=torch.float64))
    return ranks


def _knn_mean(rows: torch.Tensor, cols: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Mean cosine of each row to its k nearest columns (CSLS's neighbourhood density): (N, D), (M, D) -> (N,)."""
    k = min(k, cols.shape[0])
    return torch.cat([(rows[r:r + chunk] @ cols.T).topk(k, dim=1).values.mean(1)
                      for r in range(0, rows.shape[0], chunk)])


def _rank_summary(ranks: torch.Tensor, prefix: str) -> dict[str, float]:
    valid = torch.isfinite(ranks)
    if not valid.any():
        return {f"{prefix}p_at_1": float("nan"), f"{prefix}p_at_5": float("nan"), f"{prefix}mrr": float("nan")}
    r = ranks[valid]
    return {f"{prefix}p_at_1": float((r <= 1).double().mean()), f"{prefix}p_at_5": float((r <= 5).double().mean()),
            f"{prefix}mrr": float((1.0 / r).mean())}


def retrieval(src: torch.Tensor, tgt: torch.Tensor, gold: GoldPairs, csls_k: int = 10,
              chunk: int = 2048) -> dict[str, float]:
    """Exact retrieval in both directions by cosine and by CSLS (Conneau et al. 2018), in row chunks.

    s2t ranks every target for each source word (t2s the reverse); a query's rank is that of its best gold
    candidate. CSLS(x, y) = 2 cos(x, y) - r_T(x) - r_S(y), r = mean cosine to the k nearest words of the other side.
    Keys: s2t_/t2s_ p_at_1, p_at_5, mrr; their two-direction means p_at_1, p_at_5, mrr; csls_p_at_1 (mean).
    """
    src, tgt = normalize(src), normalize(tgt)
    s, t = gold.src_index, gold.tgt_index
    out = {**_rank_summary(_ranks(src, tgt, s, t, chunk), "s2t_"),
           **_rank_summary(_ranks(tgt, src, t, s, chunk), "t2s_")}
    for key in ("p_at_1", "p_at_5", "mrr"):
        out[key] = (out[f"s2t_{key}"] + out[f"t2s_{key}"]) / 2
    # Ranking targets y for a source x by CSLS drops the constant r_T(x): score = cos(x, y) - r_S(y) / 2.
    r_t, r_s = _knn_mean(src, tgt, csls_k, chunk), _knn_mean(tgt, src, csls_k, chunk)  # (Ns,), (Nt,)
    csls = [_rank_summary(_ranks(src, tgt, s, t, chunk, c_bias=r_s / 2), "")["p_at_1"],
            _rank_summary(_ranks(tgt, src, t, s, chunk, c_bias=r_t / 2), "")["p_at_1"]]
    out["csls_p_at_1"] = sum(csls) / 2
    return out


def pool_retrieval(ps: torch.Tensor, pt: torch.Tensor, gold: GoldPairs, pool_size: int, n_pools: int,
                   seed: int) -> dict[str, float]:
    """P@1 and MRR averaged over `n_pools` random pools of `pool_size` pairs (all pairs if fewer), both directions.

    Each pool's sources are ranked against the pool's targets only, so the chance level (1 / pool_size) is the same
    for every split: train and control become comparable. Pairs sharing a word count as gold for each other.
    """
    P = gold.n_pairs
    k = min(pool_size, P)
    idx = _pools(P, k, n_pools if k < P else 1, seed)  # (n, k)
    qs, cs = normalize(ps)[idx], normalize(pt)[idx]  # (n, k, D)
    si, ti = gold.src_index[idx], gold.tgt_index[idx]  # (n, k)
    is_gold = (si[:, :, None] == si[:, None, :]) | (ti[:, :, None] == ti[:, None, :])  # (n, k, k)
    out = {}
    for name, scores in (("s2t", qs @ cs.transpose(1, 2)), ("t2s", cs @ qs.transpose(1, 2))):  # (n, k, k)
        best = scores.masked_fill(~is_gold, float("-inf")).amax(-1)  # (n, k)
        rank = 1.0 + (scores > best[..., None]).sum(-1).double()  # (n, k)
        out[name] = ((rank <= 1).double().mean(), (1.0 / rank).mean())
    return {"pool_p_at_1": float(out["s2t"][0] + out["t2s"][0]) / 2,
            "pool_mrr": float(out["s2t"][1] + out["t2s"][1]) / 2, "pool_size": k}


@lru_cache(maxsize=16)
def _pools(n_pairs: int, size: int, n_pools: int, seed: int) -> torch.Tensor:
    """(n_pools, size) pair indices, each row a random pool without repeats; the same for every layer."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n_pairs, generator=g)[:size] for _ in range(n_pools)])
