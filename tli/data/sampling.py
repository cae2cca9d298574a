"""Batches for contrastive training: a seeded batch sampler in which no string repeats (no false negatives),
sharded over data-parallel processes, and a DataLoader whose position is saved in checkpoints."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from torch.utils.data import DataLoader, Sampler


class UniqueBatchSampler(Sampler[list[int]]):
    """Shuffled batches (seeded by seed + epoch) in which no source and no target string appears twice.

    A pair that would repeat a string in the current batch waits for the next one; the plan for an epoch is
    deterministic, so a resumed run sees the same batches.

    Data parallel (`num_replicas` W > 1): `batch_size` is per process. The sampler plans GLOBAL batches of
    `batch_size * W` pairs exactly as one process with that batch size would (same seed, same epoch order), and
    process `rank` gets the rank-th contiguous slice of each (sizes differ by at most one when a global batch is not
    a multiple of W). A global batch of fewer than W pairs (in practice one of the epoch's last, leftover batches)
    would leave a process without a pair: it is dropped on every process, so all processes serve the same number
    of batches and the union of their i-th batches is the i-th batch of the single-process plan without those.
    """

    def __init__(self, src_ids: list[int], tgt_ids: list[int], batch_size: int, seed: int, shuffle: bool = True,
                 num_replicas: int = 1, rank: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} must be in [0, num_replicas={num_replicas})")
        self.src_ids, self.tgt_ids, self.batch_size = src_ids, tgt_ids, batch_size
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        self.num_replicas, self.rank = num_replicas, rank
        self._plans: dict[int, list[list[int]]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_plan(self, epoch: int | None = None) -> list[list[int]]:
        """The epoch's batches of `batch_size * num_replicas` pairs over all processes (those of >= W pairs).

        One pass over the shuffled pairs: each goes into the oldest open batch that has neither its source nor its
        target yet, or opens a new one. Batches close when full, so few are open at once (about the largest
        number of pairs sharing one word): time grows linearly with the lexicon.
        """
        epoch = self.epoch if epoch is None else epoch
        order = list(range(len(self.src_ids)))
        if self.shuffle:
            random.Random(self.seed + epoch).shuffle(order)
        size = self.batch_size * self.num_replicas
        batches: list[list[int]] = []
        open_batches: list[tuple[list[int], set, set]] = []  # (pairs, sources, targets), oldest first
        for i in order:
            s, t = self.src_ids[i], self.tgt_ids[i]
            slot = next((b for b in open_batches if s not in b[1] and t not in b[2]), None)
            if slot is None:
                slot = ([], set(), set())
                open_batches.append(slot)
                batches.append(slot[0])
            slot[0].append(i)
            slot[1].add(s)
            slot[2].add(t)
            if len(slot[0]) == size:
                open_batches.remove(slot)
        return [b for b in batches if len(b) >= self.num_replicas]

    def plan(self, epoch: int | None = None) -> list[list[int]]:
        """This process's batches for the epoch: its slice of every global batch."""
        epoch = self.epoch if epoch is None else epoch
        if epoch not in self._plans:
            W, r = self.num_replicas, self.rank
            local = []
            for batch in self.global_plan(epoch):
                base, extra = divmod(len(batch), W)  # the first `extra` processes take one pair more
                start = r * base + min(r, extra)
                local.append(batch[start:start + base + (r < extra)])
            self._plans = {epoch: local}
        return self._plans[epoch]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.plan())

    def __len__(self) -> int:
        return len(self.plan())


class ResumableLoader(DataLoader):
    """A DataLoader whose state (epoch, batches already trained on) is saved in Lightning checkpoints.

    `progress()` returns how many batches of the current epoch the trainer has processed (Lightning prefetches a
    batch, so the loader's own count would be one ahead). On resume the first batches of that epoch are skipped.

    Under DDP each process has its own loader, but the state is the same on all of them: the epoch, and the number
    of batches processed, which every process advances in lockstep (each local batch is one slice of one global
    batch). The checkpoint holds rank 0's copy; every process loads it and skips the same global batches.
    """

    def __init__(self, *args, progress: Callable[[], int], epoch: Callable[[], int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._progress, self._epoch = progress, epoch
        self._resume: dict | None = None

    def __iter__(self):
        sampler: UniqueBatchSampler = self.batch_sampler
        skip = 0
        if self._resume is not None:
            sampler.set_epoch(self._resume["epoch"])
            skip = self._resume["processed"]
        elif self._epoch is not None:
            # Lightning calls set_epoch only on `loader.sampler` / `batch_sampler.sampler`: take it from the trainer.
            sampler.set_epoch(self._epoch())
        self._resume = None
        it = super().__iter__()
        for _ in range(min(skip, len(sampler))):
            next(it)  # cheap: batches are token-id lookups, no model work
        return it

    def state_dict(self) -> dict:
        return {"epoch": self.batch_sampler.epoch, "processed": int(self._progress())}

    def load_state_dict(self, state: dict) -> None:
        epoch, processed = state["epoch"], state["processed"]
        if processed >= len(self.batch_sampler.plan(epoch)):  # saved at the end of an epoch: the next one is whole
            epoch, processed = epoch + 1, 0
        # Lightning iterates the loader once before it calls set_epoch on a resumed run: set the epoch here.
        self.batch_sampler.set_epoch(epoch)
        self._resume = {"epoch": epoch, "processed": processed}
