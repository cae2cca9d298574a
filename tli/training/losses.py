"""Contrastive losses on pooled layer-k embeddings: `(src, tgt, src_ids, tgt_ids) -> scalar`.

`src[i]` and `tgt[i]` are a translation pair; every other target in the batch is a negative for `src[i]`, except
false negatives: a target whose string equals `tgt[i]`, or that is paired with the same source string (another
correct translation). `src_ids` / `tgt_ids` are integer ids of the strings, so equal ids mean equal words.
Under DDP, `gather=True` collects the other processes' embeddings as extra negatives (the global batch), with
gradients flowing back to the process that computed them (see `InfoNCE.forward` for why the result is exactly the
single-process gradient over the global batch).
"""

from __future__ import annotations

import inspect
import math
import typing

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from tli.errors import ConfigError
from tli.training.objective import AlignOptions


def false_negative_mask(src_ids: torch.Tensor, tgt_ids: torch.Tensor) -> torch.Tensor:
    """(B,), (B,) -> (B, B) bool: True where column j is a correct target for row i but j != i."""
    same = (src_ids[:, None] == src_ids[None, :]) | (tgt_ids[:, None] == tgt_ids[None, :])  # (B, B)
    return same & ~torch.eye(len(src_ids), dtype=torch.bool, device=src_ids.device)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_sizes(n: int, device: torch.device) -> list[int]:
    """Every process's row count (rank order); [n] without a process group."""
    if world_size() == 1:
        return [n]
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.long, device=device))
    return [int(s.item()) for s in sizes]


def gather_with_grad(x: torch.Tensor, sizes: list[int] | None = None) -> tuple[torch.Tensor, int]:
    """All processes' rows in rank order: (B_r, ...) -> (sum_r B_r, ...), and this rank's offset in it.

    Floating tensors go through the autograd-aware all-gather, whose backward sums every process's gradient for
    these rows and returns it to the process that owns them; integer tensors (word ids) through a plain all-gather.
    Processes may hold different row counts (`sizes`, gathered here if not given): rows are padded to the largest
    count for the collective and the padding dropped again. Without a process group (or with one process) `x` is
    returned unchanged with offset 0.
    """
    world = world_size()
    if world == 1:
        return x, 0
    rank = dist.get_rank()
    sizes = gather_sizes(x.shape[0], x.device) if sizes is None else sizes
    longest = max(sizes)
    padded = x
    if x.shape[0] < longest:
        padded = torch.cat([x, x.new_zeros((longest - x.shape[0], *x.shape[1:]))])
    padded = padded.contiguous()
    if x.is_floating_point():
        # torch 2.13 deprecates torch.distributed.nn.functional.all_gather (FutureWarning) in favour of this one;
        # both sum the gradients back to the owning rank (verified on gloo; NCCL uses reduce-scatter).
        from torch.distributed._functional_collectives import all_gather_single

        parts = all_gather_single(padded, 0, dist.group.WORLD).split(longest)  # (world * longest, ...)
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)]), sum(sizes[:rank])


class ContrastiveLoss(nn.Module):
    """The loss contract: `forward(src, tgt, src_ids, tgt_ids) -> scalar` on pooled (B, D) embeddings.

    A new loss is a subclass, an entry in `LOSSES` and a YAML file in conf/loss/ whose keys are its constructor's
    arguments (checked by `build_loss`). `gather` says whether it contrasts against every process's rows under DDP;
    `logged()` returns the values worth logging beside the loss (e.g. a learnable temperature).
    """

    gather: bool = False

    def logged(self) -> dict[str, torch.Tensor]:
        return {}


class InfoNCE(ContrastiveLoss):
    """Symmetric (CLIP-style) InfoNCE with in-batch negatives and false-negative masking.

    loss = (CE(src -> tgt) + CE(tgt -> src)) / 2 over logits = cos / temperature. A learnable temperature is kept as
    log(1/T) and clamped to `min_temperature` (CLIP's recipe).
    """

    def __init__(self, temperature: float = 0.05, learnable_temperature: bool = False, min_temperature: float = 0.01,
                 symmetric: bool = True, mask_false_negatives: bool = True, gather: bool = False):
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"loss.temperature={temperature} must be > 0")
        if not 0 < min_temperature <= temperature:
            raise ConfigError(f"loss.min_temperature={min_temperature} must be in (0, loss.temperature]")
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

    def logged(self) -> dict[str, torch.Tensor]:
        return {"temperature": self.temperature.detach()}

    def forward(self, src, tgt, src_ids, tgt_ids):
        """Scalar loss over this process's B rows; with `gather` (and in train mode) against the global batch.

        DDP exactness. Let G = sum_r B_r be the global batch and l_i the loss of global row i (its negatives are all
        G targets / sources). Process r returns L_r = (W / G) * sum_{i in r} l_i, which is the plain mean over its
        rows when all W processes hold B = G / W rows. The gather's backward hands process r the gradient of
        sum_{r'} L_{r'} with respect to its own embeddings, so its parameter gradient is d(sum_{r'} L_{r'})/d theta
        through its rows; DDP averages over the W processes, which adds up the contributions of all rows:
        (1 / W) * d(sum_r L_r)/d theta = d((1 / G) * sum_i l_i)/d theta: the single-process gradient of the mean
        over the global batch. Likewise the mean of L_r over processes (the logged train/loss with sync_dist) is
        the global mean. In eval mode nothing is gathered: under DDP every process validates the full set, so the
        other processes' rows would only be duplicates.
        """
        src, tgt = F.normalize(src, dim=-1), F.normalize(tgt, dim=-1)  # (B, D)
        n_local = src.shape[0]
        if self.gather and self.training and world_size() > 1:
            sizes = gather_sizes(n_local, src.device)
            all_src, offset = gather_with_grad(src, sizes)  # (G, D)
            all_tgt, _ = gather_with_grad(tgt, sizes)
            all_src_ids, _ = gather_with_grad(src_ids, sizes)  # (G,)
            all_tgt_ids, _ = gather_with_grad(tgt_ids, sizes)
            norm = sum(sizes) / len(sizes)  # G / W
        else:
            all_src, all_tgt, all_src_ids, all_tgt_ids, offset = src, tgt, src_ids, tgt_ids, 0
            norm = n_local
        rows = torch.arange(offset, offset + n_local, device=src.device)  # this rank's rows in the global batch
        logits = all_src[rows] @ all_tgt.T / self.temperature  # (B, G)
        mask = false_negative_mask(all_src_ids, all_tgt_ids)[rows] if self.mask_false_negatives else None
        loss = _masked_ce(logits, rows, mask, norm)
        if self.symmetric:
            logits_t = all_tgt[rows] @ all_src.T / self.temperature  # (B, G)
            loss = (loss + _masked_ce(logits_t, rows, mask, norm)) / 2
        return loss


def _masked_ce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None, norm: float) -> torch.Tensor:
    """Cross-entropy summed over the rows, divided by `norm` (the row count: the mean; G / W when gathered)."""
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    if norm == len(labels):
        return F.cross_entropy(logits, labels)
    return F.cross_entropy(logits, labels, reduction="sum") / norm


class BatchHardTriplet(ContrastiveLoss):
    """The paper's loss: for each source anchor, the hardest in-batch negative target (cosine distance).

    loss = mean_i relu(margin - cos(src_i, tgt_i) + max_{j != i, not a false negative} cos(src_i, tgt_j)).
    """

    def __init__(self, margin: float = 0.4, mask_false_negatives: bool = True):
        super().__init__()
        if margin < 0:
            raise ConfigError(f"loss.margin={margin} must be >= 0")
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


LOSSES: dict[str, type[ContrastiveLoss]] = {"infonce": InfoNCE, "triplet": BatchHardTriplet}


def build_loss(cfg: dict) -> ContrastiveLoss:
    """`loss.name` picks the loss; the other `loss.*` keys are its constructor's arguments, type-checked here (a
    Hydra schema cannot type them: each loss has its own), or the options every loss shares
    (tli.training.objective.AlignOptions: anchor, centred, centre_momentum, weight, translation_lm,
    translation_shots)."""
    options = dict(cfg)
    name = options.pop("name", None)
    align = AlignOptions.pop_from(options)  # anchor, centred, weight, translation_lm: shared by every loss
    if name not in LOSSES:
        raise ConfigError(f"loss.name={name!r} is not a loss; valid: {', '.join(LOSSES)}")
    cls = LOSSES[name]
    params = inspect.signature(cls).parameters
    hints = typing.get_type_hints(cls.__init__)
    for key, value in options.items():
        if key not in params:
            raise ConfigError(f"loss.{key} is not an option of loss {name!r}; valid: {', '.join(params)}")
        expected = hints.get(key)
        ok = {bool: isinstance(value, bool), int: isinstance(value, int) and not isinstance(value, bool),
              float: isinstance(value, (int, float)) and not isinstance(value, bool)}.get(expected, True)
        if not ok:
            raise ConfigError(f"loss.{key}={value!r} must be a {expected.__name__}")
    loss = cls(**options)
    loss.options = align
    loss.settings = {"name": name, **options, **align.settings()}  # what the run used, for checkpoints and sidecars
    return loss
