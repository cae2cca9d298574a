"""Translation pairs over unique words (`GoldPairs`), and the vector helpers every metric shares."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension in float32 (or float64 if given)."""
    return F.normalize(x if x.dtype in (torch.float32, torch.float64) else x.float(), dim=-1)


@dataclass(frozen=True)
class GoldPairs:
    """Translation pairs over unique words: pair p links source word `src_index[p]` to target `tgt_index[p]`.

    Keys are whatever identifies a word (strings, or integer word ids in training batches); the unique lists keep
    the order of first appearance. A word may have several translations.
    """

    src_keys: list
    tgt_keys: list
    src_index: torch.Tensor  # (P,) long
    tgt_index: torch.Tensor  # (P,) long

    @classmethod
    def from_pairs(cls, sources: Sequence[Hashable], targets: Sequence[Hashable]) -> GoldPairs:
        if len(sources) != len(targets):
            raise ValueError(f"got {len(sources)} source words but {len(targets)} target words")
        src_keys, tgt_keys = list(dict.fromkeys(sources)), list(dict.fromkeys(targets))
        s_pos, t_pos = {w: i for i, w in enumerate(src_keys)}, {w: i for i, w in enumerate(tgt_keys)}
        return cls(src_keys, tgt_keys, torch.tensor([s_pos[w] for w in sources], dtype=torch.long),
                   torch.tensor([t_pos[w] for w in targets], dtype=torch.long))

    @property
    def n_pairs(self) -> int:
        return int(self.src_index.numel())

    def first_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per unique source / target word, the first pair it appears in: turns per-pair rows into unique rows."""
        P = self.n_pairs
        src = torch.full((len(self.src_keys),), P).scatter_reduce(0, self.src_index, torch.arange(P), "amin")
        tgt = torch.full((len(self.tgt_keys),), P).scatter_reduce(0, self.tgt_index, torch.arange(P), "amin")
        return src, tgt

    def matrix(self) -> torch.Tensor:
        """(Ns, Nt) bool gold relation: only for small sets (tests, reports)."""
        gold = torch.zeros(len(self.src_keys), len(self.tgt_keys), dtype=torch.bool)
        gold[self.src_index, self.tgt_index] = True
        return gold

    def subset(self, pairs: torch.Tensor) -> tuple[GoldPairs, torch.Tensor, torch.Tensor]:
        """The pairs `pairs` (indices) re-indexed over their own unique words: (gold, source rows, target rows)."""
        s_used, s_new = torch.unique(self.src_index[pairs], return_inverse=True)
        t_used, t_new = torch.unique(self.tgt_index[pairs], return_inverse=True)
        gold = GoldPairs([self.src_keys[i] for i in s_used.tolist()], [self.tgt_keys[i] for i in t_used.tolist()],
                         s_new, t_new)
        return gold, s_used, t_used

    @cached_property
    def excluded_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every ordered pair (i, j) of pairs that share a source or a target word, i == j included: the entries of
        the pair-by-pair cosine matrix that are not mismatched. Size ~P for an ordinary lexicon."""
        out = []
        for index in (self.src_index, self.tgt_index):
            order = torch.argsort(index, stable=True)
            counts = torch.bincount(index)[index[order]]  # (P,) group size of each sorted member
            starts = torch.cumsum(torch.bincount(index), 0) - torch.bincount(index)  # (groups,)
            first = starts[index[order]]  # (P,) where each member's group starts in `order`
            rows = order.repeat_interleave(counts)  # every member, once per member of its group
            offs = torch.arange(int(counts.sum())) - torch.repeat_interleave(
                torch.cumsum(counts, 0) - counts, counts)  # (sum m^2,) 0..m-1 within each block
            cols = order[first.repeat_interleave(counts) + offs]
            out.append(rows * self.n_pairs + cols)
        code = torch.unique(torch.cat(out))
        return code // self.n_pairs, code % self.n_pairs


def pair_cosines(src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Cosine of aligned rows (batched): (..., P, D), (..., P, D) -> (..., P)."""
    if src.shape != tgt.shape:
        raise ValueError(f"pair_cosines needs equal shapes, got {tuple(src.shape)} and {tuple(tgt.shape)}")
    return (normalize(src) * normalize(tgt)).sum(-1)
