"""Cross-lingual word-alignment metrics: one registry, one function that computes all of them for one layer.

`alignment(src, tgt, gold, options)` scores the unique source words `src` (Ns, D) against the unique target words
`tgt` (Nt, D) given the translation pairs `gold`. Validation, the scan and the before/after evaluation all call it,
so one adapter on the same pairs scores the same everywhere; `METRICS` names what it returns, and every report,
plot, objective and scan criterion reads its names and labels from there.

Raw cosine alone cannot tell alignment from a global shift (every word moving together), and real hidden states are
anisotropic (unrelated words at cosine 0.95+): hence the mismatched-pair baseline, the margin over it in units of
the mismatched cosines' spread (`margin_z`, scale-free), retrieval, CSLS, and retrieval in pools of a fixed size
(`pool_*`), which is comparable between splits of different sizes. `Centring` removes each language's mean vector
(statistics from training words only), MUSE-style.

Scale: nothing here builds an N x N matrix for a large lexicon. The baseline and its spread are exact sums in
O(P D + P D^2); retrieval and CSLS run in row chunks with the gold relation rebuilt per chunk; above
`options.max_pool` unique words on either side, retrieval and CSLS run on a seeded random sample of pairs (reported
as `retrieval_pool`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tli.errors import ConfigError
from tli.eval.pairs import GoldPairs, normalize, pair_cosines
from tli.eval.retrieval import pool_retrieval, retrieval


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    higher_is_better: bool | None = True  # None: descriptive only, never a criterion or an objective
    headline: bool = True  # in console tables, plots and cross-run aggregates


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("cosine", "mean cosine of translation pairs", None),
    Metric("baseline_cosine", "mean cosine of mismatched pairs (the baseline)", None),
    Metric("margin", "margin: cosine - baseline", True),
    Metric("margin_z", "margin in standard deviations of the mismatched cosines", True),
    Metric("p_at_1", "retrieval P@1 (both directions, all candidates)", True),
    Metric("p_at_5", "retrieval P@5 (both directions)", True, headline=False),
    Metric("mrr", "retrieval MRR (both directions, all candidates)", True),
    Metric("csls_p_at_1", "CSLS P@1 (both directions)", True),
    Metric("pool_p_at_1", "P@1 in random pools of equal size (comparable across splits)", True),
    Metric("pool_mrr", "MRR in random pools of equal size", True, headline=False),
    Metric("s2t_p_at_1", "source -> target P@1", True, headline=False),
    Metric("t2s_p_at_1", "target -> source P@1", True, headline=False),
    Metric("s2t_p_at_5", "source -> target P@5", True, headline=False),
    Metric("t2s_p_at_5", "target -> source P@5", True, headline=False),
    Metric("s2t_mrr", "source -> target MRR", True, headline=False),
    Metric("t2s_mrr", "target -> source MRR", True, headline=False),
)}
COUNTS = ("n_pairs", "n_sources", "n_targets", "retrieval_pool", "pool_size")  # reported beside the metrics
HEADLINE = [m.name for m in METRICS.values() if m.headline]
CRITERIA = [m.name for m in METRICS.values() if m.higher_is_better]


def metric_key(stage: str, name: str, layer: int, centred: bool = False) -> str:
    """The one name of a metric everywhere (logs, checkpoints, objective, W&B): `val/centred/p_at_1@12`."""
    return f"{stage}/{'centred/' if centred else ''}{name}@{layer}"


def metric(name: str, key: str) -> Metric:
    """The registered metric `name`, or a ConfigError naming `key` and the choices."""
    if name not in METRICS:
        raise ConfigError(f"{key}={name!r} is not a metric; valid: {', '.join(CRITERIA)}")
    return METRICS[name]


@dataclass
class MetricsConfig:
    """`metrics.*` settings, shared by validation, scan and evaluation."""

    csls_k: int = 10  # neighbourhood size of CSLS
    pool_size: int = 20  # pairs per pool for pool_* (<= the smallest split you want to compare)
    n_pools: int = 200  # random pools averaged
    max_pool: int = 5000  # above this many unique words, retrieval and CSLS use a random sample of pairs
    chunk_size: int = 2048  # query rows scored at once (memory: chunk_size x candidates floats)
    centre: bool = True  # also report every metric after mean-centring each language (MUSE-style)
    seed: int = 0

    def __post_init__(self):
        for key in ("csls_k", "pool_size", "n_pools", "chunk_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"metrics.{key}={getattr(self, key)} must be >= 1")
        if self.pool_size < 2:
            raise ConfigError(f"metrics.pool_size={self.pool_size} must be >= 2: retrieval needs a wrong candidate")
        if self.max_pool < self.pool_size:
            raise ConfigError(f"metrics.max_pool={self.max_pool} must be >= metrics.pool_size={self.pool_size}")


def mismatched_moments(ps: torch.Tensor, pt: torch.Tensor, gold: GoldPairs) -> tuple[float, float]:
    """Mean and standard deviation of the cosines of mismatched pairs, exactly, without a P x P matrix.

    `ps`, `pt` (P, D) are the pairs' vectors. Mismatched: source of pair i with target of pair j, i != j,
    excluding entries that are translations too (two pairs sharing a word). With A = sum ps_i, B = sum pt_j, the
    sum over all (i, j) is A . B and the sum of squares is <ps^T ps, pt^T pt>_F; the excluded entries are few and
    subtracted explicitly. NaN when no mismatched entry exists (P < 2).
    """
    ps, pt = normalize(ps).double(), normalize(pt).double()
    ei, ej = gold.excluded_pairs
    n = gold.n_pairs ** 2 - ei.numel()
    if n <= 0:
        return float("nan"), float("nan")
    excluded = (ps[ei] * pt[ej]).sum(-1)  # (|E|,)
    total = float(ps.sum(0) @ pt.sum(0)) - float(excluded.sum())
    squares = float((ps.T @ ps * (pt.T @ pt)).sum()) - float((excluded ** 2).sum())
    mean = total / n
    return mean, max(squares / n - mean * mean, 0.0) ** 0.5


PAIR_SCORES = ("cosine", "margin", "pool_mrr")  # per-pair scores: paired tests and trained-vs-control comparisons


def pair_scores(src: torch.Tensor, tgt: torch.Tensor, gold: GoldPairs, options: MetricsConfig | None = None,
                n_draws: int = 20) -> dict[str, torch.Tensor]:
    """Per-pair versions of `cosine`, `margin` and `pool_mrr`, each (P,), for paired tests before/after and for
    comparing trained with control pairs (both baseline-corrected and pool-size-free, unlike raw retrieval).

    margin: the pair's cosine minus the mean cosine of its source to every mismatched target of the split (exact,
    O(P D)). pool_mrr: reciprocal rank of the translation among it and `pool_size - 1` random mismatched words of
    the split, both directions averaged, mean over `n_draws` draws (seeded).
    """
    opt = options or MetricsConfig()
    src, tgt = normalize(src).double(), normalize(tgt).double()
    ps, pt = src[gold.src_index], tgt[gold.tgt_index]  # (P, D)
    P = gold.n_pairs
    cos = (ps * pt).sum(-1)  # (P,)
    ei, ej = gold.excluded_pairs
    excluded = (ps[ei] * pt[ej]).sum(-1)  # (|E|,)
    row_sum = ps @ pt.sum(0) - torch.zeros(P, dtype=excluded.dtype).index_add_(0, ei, excluded)  # (P,)
    row_n = P - torch.bincount(ei, minlength=P)  # (P,) mismatched targets per row
    margin = cos - row_sum / row_n.clamp(min=1)
    margin[row_n == 0] = float("nan")
    g = torch.Generator().manual_seed(opt.seed)
    k = min(opt.pool_size, P) - 1
    rr = torch.zeros(P, dtype=torch.float64)
    step = max(1, 8192 // (n_draws * max(k, 1)))  # rows per chunk: ~8k gathered vectors at once
    for r0 in range(0, P, step):
        rows = torch.arange(r0, min(r0 + step, P))  # (c,)
        other = torch.randint(0, P, (len(rows), n_draws, max(k, 0)), generator=g)  # (c, R, k) distractor pairs
        valid = (gold.src_index[other] != gold.src_index[rows, None, None]) & \
                (gold.tgt_index[other] != gold.tgt_index[rows, None, None])  # (c, R, k) not a translation
        for q, c in ((ps, pt), (pt, ps)):  # s2t, then t2s
            scores = torch.einsum("cd,crkd->crk", q[rows], c[other])  # (c, R, k)
            beaten = ((scores > cos[rows, None, None]) & valid).sum(-1)  # (c, R)
            rr[rows] += (1.0 / (1.0 + beaten.double())).mean(-1) / 2
    return {"cosine": cos, "margin": margin, "pool_mrr": rr}


def alignment(src: torch.Tensor, tgt: torch.Tensor, gold: GoldPairs,
              options: MetricsConfig | None = None) -> dict[str, float]:
    """Every registered metric (and the counts in `COUNTS`) for one layer: (Ns, D), (Nt, D) unique-word vectors."""
    opt = options or MetricsConfig()
    src, tgt = normalize(src), normalize(tgt)
    ps, pt = src[gold.src_index], tgt[gold.tgt_index]  # (P, D)
    cosine = float(pair_cosines(ps, pt).double().mean())
    base_mean, base_sd = mismatched_moments(ps, pt, gold)
    out = {"n_pairs": gold.n_pairs, "n_sources": len(gold.src_keys), "n_targets": len(gold.tgt_keys),
           "cosine": cosine, "baseline_cosine": base_mean, "margin": cosine - base_mean,
           "margin_z": (cosine - base_mean) / base_sd if base_sd > 0 else float("nan")}
    r_gold, r_src, r_tgt = gold, src, tgt
    if max(len(gold.src_keys), len(gold.tgt_keys)) > opt.max_pool:  # a documented sample of pairs, seeded
        sample = torch.randperm(gold.n_pairs, generator=torch.Generator().manual_seed(opt.seed))[:opt.max_pool]
        r_gold, s_rows, t_rows = gold.subset(sample)
        r_src, r_tgt = src[s_rows], tgt[t_rows]
    out["retrieval_pool"] = len(r_gold.tgt_keys)
    out.update(retrieval(r_src, r_tgt, r_gold, opt.csls_k, opt.chunk_size))
    out.update(pool_retrieval(ps, pt, gold, opt.pool_size, opt.n_pools, opt.seed))
    return out


@dataclass(frozen=True)
class Centring:
    """Each language's mean vector per layer, from training words only (MUSE-style centring)."""

    src_mean: torch.Tensor  # (n_layers, D)
    tgt_mean: torch.Tensor  # (n_layers, D)

    @classmethod
    def fit(cls, src: torch.Tensor, tgt: torch.Tensor) -> Centring:
        """From the training split's unique-word vectors (Ns, n_layers, D) and (Nt, n_layers, D)."""
        def means(x):  # one layer at a time: no normalised copy of the whole tensor
            return torch.stack([normalize(x[:, j]).mean(0) for j in range(x.shape[1])])  # (n_layers, D)

        return cls(means(src), means(tgt))

    def apply(self, vectors: torch.Tensor, side: str, slot: int | None = None) -> torch.Tensor:
        """Centred and re-normalised vectors: (N, n_layers, D), or (N, D) of layer slot `slot`; `side`: src | tgt."""
        mean = self.src_mean if side == "src" else self.tgt_mean
        mean = mean if slot is None else mean[slot]
        return normalize(normalize(vectors) - mean.to(vectors.device))
