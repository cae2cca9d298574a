"""Contrastive losses on pooled layer-k embeddings: `(src, tgt, src_ids, tgt_ids) -> scalar`.

`src[i]` and `tgt[i]` are a translation pair; every other target in the batch is a negative for `src[i]`, except
false negatives: a target whose string equals `tgt[i]`, or that is paired with the same source string (another
correct translation). `src_ids` / `tgt_ids` are integer ids of the strings, so equal ids mean equal words.
Under DDP, `gather=True` collects the other processes' embeddings as extra negatives (the global batch).
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def false_negative_mask(src_ids: torch.Tensor, tgt_ids: torch.Tensor) -> torch.Tensor:
    """(B,), (B,) -> (B, B) bool: True where column j is a correct target for row i but j != i."""
    same = (src_ids[:, None] == src_ids[None, :]) | (tgt_ids[:, None] == tgt_ids[None, :])  # (B, B)
    return same & ~torch.eye(len(src_ids), dtype=torch.bool, device=src_ids.device)


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All processes' rows, this process's with gradient: (B, ...) -> (world * B, ...), and this rank's offset."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    rank = dist.get_rank()
    parts[rank] = x
    return torch.cat(parts), rank * x.shape[0]


class InfoNCE(nn.Module):
    """Symmetric (CLIP-style) InfoNCE with in-batch negatives and false-negative masking.

    loss = (CE(src -> tgt) + CE(tgt -> src)) / 2 over logits = cos / temperature. A learnable temperature is kept as
    log(1/T) and clamped to `min_temperature` (CLIP's recipe).
    """

    def __init__(self, temperature: float = 0.05, learnable_temperature: bool = False, min_temperature: float = 0.01,
                 symmetric: bool = True, mask_false_negatives: bool = True, gather: bool = False):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"loss.temperature={temperature} must be > 0")
        if not 0 < min_temperature <= temperature:
            raise ValueError(f"loss.min_temperature={min_temperature} must be in (0, loss.temperature]")
        log_scale = torch.tensor(math.log(1.0 / temperature))
        self.log_scale = nn.Parameter(log_scale) if learnable_temperature else None
        if not learnable_temperature:
            self.register_buffer("fixed_log_scale", log_scale, persistent=False)
        self.max_log_scale = math.log(1.0 / min_temperature)
        self.symmetric, self.mask_false_negatives, self.gather = symmetric, mask_false_negatives, gather

    @property
    def temperature(self) -> torch.Tensor:
        scale = self.log_scale if self.log_scale is not None else self.fixed_log_scale
        return torch.exp(-scale.clamp(max=self.max_log_scale))

    def forward(self, src, tgt, src_ids, tgt_ids):
        src, tgt = F.normalize(src, dim=-1), F.normalize(tgt, dim=-1)  # (B, D)
        if self.gather:
            all_src, offset = gather_with_grad(src)
            all_tgt, _ = gather_with_grad(tgt)
            all_src_ids, _ = gather_with_grad(src_ids)
            all_tgt_ids, _ = gather_with_grad(tgt_ids)
        else:
            all_src, all_tgt, all_src_ids, all_tgt_ids, offset = src, tgt, src_ids, tgt_ids, 0
        rows = torch.arange(offset, offset + src.shape[0], device=src.device)  # this rank's rows in the global batch
        logits = all_src[rows] @ all_tgt.T / self.temperature  # (B, G)
        mask = false_negative_mask(all_src_ids, all_tgt_ids)[rows] if self.mask_false_negatives else None
        loss = _masked_ce(logits, rows, mask)
        if self.symmetric:
            logits_t = all_tgt[rows] @ all_src.T / self.temperature  # (B, G)
            loss = (loss + _masked_ce(logits_t, rows, mask)) / 2
        return loss


def _masked_ce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, labels)


class BatchHardTriplet(nn.Module):
    """The paper's loss: for each source anchor, the hardest in-batch negative target (cosine distance).

    loss = mean_i relu(margin - cos(src_i, tgt_i) + max_{j != i, not a false negative} cos(src_i, tgt_j)).
    """

    def __init__(self, margin: float = 0.4, mask_false_negatives: bool = True):
        super().__init__()
        if margin < 0:
            raise ValueError(f"loss.margin={margin} must be >= 0")
        self.margin, self.mask_false_negatives = margin, mask_false_negatives

    def forward(self, src, tgt, src_ids, tgt_ids):
        src, tgt = F.normalize(src, dim=-1), F.normalize(tgt, dim=-1)  # (B, D)
        sim = src @ tgt.T  # (B, B)
        pos = sim.diagonal()  # (B,)
        invalid = torch.eye(len(src), dtype=torch.bool, device=src.device)
        if self.mask_false_negatives:
            invalid |= false_negative_mask(src_ids, tgt_ids)
        hardest = sim.masked_fill(invalid, float("-inf")).max(dim=1).values  # (B,)
        valid = torch.isfinite(hardest)  # a row whose every other target is a false negative has no negative
        return F.relu(self.margin - pos + hardest)[valid].mean() if valid.any() else sim.sum() * 0.0


LOSSES = {"infonce": InfoNCE, "triplet": BatchHardTriplet}


def build_loss(cfg: dict) -> nn.Module:
    """`loss.name` picks the loss; the other `loss.*` keys are its options (unknown keys are an error)."""
    name = cfg.get("name")
    if name not in LOSSES:
        raise ValueError(f"loss.name={name!r} is not a loss; valid: {', '.join(LOSSES)}")
    options = [p for p in inspect.signature(LOSSES[name]).parameters]
    unknown = sorted(set(cfg) - set(options) - {"name"})
    if unknown:
        raise ValueError(f"loss.{unknown[0]} is not an option of loss {name!r}; valid: {', '.join(options)}")
    return LOSSES[name](**{k: v for k, v in cfg.items() if k != "name"})
