"""The LightningDataModule serving translation pairs: audited lexicons, a seeded validation split, words tokenised
once, batches without repeated strings (no false negatives), and a loader that resumes mid-epoch exactly."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tli.audit import AuditResult, format_audit
from tli.config import load_lexicons
from tli.embed import Encoded, collate, tokenize_words
from tli.lexicon import Lexicon, Pair


class DataConfigError(ValueError):
    pass


class PairDataset(Dataset):
    """Pairs as (src word id, tgt word id); word ids index the tokenised unique source / target word lists."""

    def __init__(self, pairs: list[Pair], src_index: dict[str, int], tgt_index: dict[str, int]):
        self.src_ids = [src_index[p.source] for p in pairs]
        self.tgt_ids = [tgt_index[p.target] for p in pairs]

    def __len__(self) -> int:
        return len(self.src_ids)

    def __getitem__(self, i: int) -> tuple[int, int]:
        return self.src_ids[i], self.tgt_ids[i]


class UniqueBatchSampler(Sampler[list[int]]):
    """Shuffled batches (seeded by seed + epoch) in which no source and no target string appears twice.

    A pair that would repeat a string in the current batch waits for the next one; the plan for an epoch is
    deterministic, so a resumed run sees the same batches.
    """

    def __init__(self, src_ids: list[int], tgt_ids: list[int], batch_size: int, seed: int, shuffle: bool = True):
        self.src_ids, self.tgt_ids, self.batch_size = src_ids, tgt_ids, batch_size
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        self._plans: dict[int, list[list[int]]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def plan(self, epoch: int | None = None) -> list[list[int]]:
        epoch = self.epoch if epoch is None else epoch
        if epoch not in self._plans:
            order = list(range(len(self.src_ids)))
            if self.shuffle:
                random.Random(self.seed + epoch).shuffle(order)
            batches, pending = [], order
            while pending:
                batch, srcs, tgts, rest = [], set(), set(), []
                for i in pending:
                    s, t = self.src_ids[i], self.tgt_ids[i]
                    if len(batch) < self.batch_size and s not in srcs and t not in tgts:
                        batch.append(i)
                        srcs.add(s)
                        tgts.add(t)
                    else:
                        rest.append(i)
                batches.append(batch)
                pending = rest
            self._plans = {epoch: batches}
        return self._plans[epoch]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.plan())

    def __len__(self) -> int:
        return len(self.plan())


class ResumableLoader(DataLoader):
    """A DataLoader whose state (epoch, batches already trained on) is saved in Lightning checkpoints.

    `progress()` returns how many batches of the current epoch the trainer has processed (Lightning prefetches a
    batch, so the loader's own count would be one ahead). On resume the first batches of that epoch are skipped.
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


class PairCollator:
    """(src id, tgt id) pairs -> one padded batch of the source and target words, plus the word ids."""

    def __init__(self, src_encoded: list[Encoded], tgt_encoded: list[Encoded], pad_id: int):
        self.src_encoded, self.tgt_encoded, self.pad_id = src_encoded, tgt_encoded, pad_id

    def __call__(self, items: list[tuple[int, int]]) -> dict:
        words = [self.src_encoded[s] for s, _ in items] + [self.tgt_encoded[t] for _, t in items]
        return {
            "words": collate(words, self.pad_id),  # (2B, T): sources then targets, one forward pass
            "src_ids": torch.tensor([s for s, _ in items]),  # (B,)
            "tgt_ids": torch.tensor([t for _, t in items]),  # (B,)
        }


def split_validation(lexicon: Lexicon, fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Carve a validation split from the training pairs by seed; all pairs of one source word stay together."""
    if not 0 <= fraction < 1:
        raise DataConfigError(f"data.val_fraction={fraction} must be in [0, 1)")
    sources = sorted({p.source for p in lexicon.pairs})
    random.Random(seed).shuffle(sources)
    val_sources = set(sources[: round(fraction * len(sources))])
    train = [p for p in lexicon.pairs if p.source not in val_sources]
    val = [p for p in lexicon.pairs if p.source in val_sources]
    return train, val


class PairDataModule(L.LightningDataModule):
    def __init__(self, data: Mapping, tokenizer, template: str = "{word}", batch_size: int = 8,
                 val_fraction: float = 0.1, seed: int = 0, num_workers: int = 0):
        super().__init__()
        if batch_size < 2:
            raise DataConfigError(f"data.batch_size={batch_size} must be >= 2: in-batch negatives need a second pair")
        self.data_cfg, self.tokenizer, self.template = dict(data), tokenizer, template
        self.batch_size, self.val_fraction, self.seed, self.num_workers = batch_size, val_fraction, seed, num_workers
        self.lexicons: AuditResult | None = None

    def prepare_lexicons(self) -> AuditResult:
        """Read and audit the lexicons (the control set is audited for leakage, never trained on)."""
        if self.lexicons is None:
            self.lexicons = load_lexicons(self.data_cfg)
            print(format_audit(self.lexicons))
        return self.lexicons

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        lex = self.prepare_lexicons()
        train_pairs, val_pairs = split_validation(lex.train, self.val_fraction, self.seed)
        if len(train_pairs) < 2:
            raise DataConfigError(f"{lex.train.path}: {len(train_pairs)} training pairs left; need at least 2")
        self.val_pairs = val_pairs
        src_words = sorted({p.source for p in lex.train.pairs})
        tgt_words = sorted({p.target for p in lex.train.pairs})
        src_index = {w: i for i, w in enumerate(src_words)}
        tgt_index = {w: i for i, w in enumerate(tgt_words)}
        self.collator = PairCollator(tokenize_words(self.tokenizer, src_words, self.template),
                                     tokenize_words(self.tokenizer, tgt_words, self.template),
                                     self.tokenizer.pad_token_id)
        self.train_set = PairDataset(train_pairs, src_index, tgt_index)
        self.val_set = PairDataset(val_pairs, src_index, tgt_index)

    def _processed(self) -> int:
        trainer = self.trainer
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer is not None else 0

    def _generator(self) -> torch.Generator:
        # Each DataLoader iterator draws a seed from its generator; from the global one it would shift the RNG
        # stream (LoRA dropout) between a straight run and a resumed one.
        return torch.Generator().manual_seed(self.seed)

    def _current_epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        sampler = UniqueBatchSampler(self.train_set.src_ids, self.train_set.tgt_ids, self.batch_size, self.seed)
        return ResumableLoader(self.train_set, batch_sampler=sampler, collate_fn=self.collator,
                               num_workers=self.num_workers, progress=self._processed, epoch=self._current_epoch,
                               generator=self._generator())

    def val_dataloader(self) -> DataLoader:
        if len(self.val_set) == 0:
            return []
        sampler = UniqueBatchSampler(self.val_set.src_ids, self.val_set.tgt_ids, self.batch_size, self.seed,
                                     shuffle=False)
        return DataLoader(self.val_set, batch_sampler=sampler, collate_fn=self.collator, num_workers=self.num_workers,
                          generator=self._generator())
