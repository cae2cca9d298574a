"""The LightningDataModule serving translation pairs: audited lexicons, a seeded validation split, words tokenised
once, and batches without repeated strings (no false negatives) from a loader that resumes mid-epoch exactly
(tli.data.sampling)."""

from __future__ import annotations

import logging
from functools import partial

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from tli.data.audit import AuditResult, format_audit
from tli.data.config import DataConfig, load_lexicons
from tli.data.lexicon import Pair
from tli.data.sampling import ResumableLoader, UniqueBatchSampler
from tli.data.splits import MIN_VAL_PAIRS, split_pairs
from tli.errors import DataError
from tli.model.embed import Encoded, collate, tokenize_words

log = logging.getLogger(__name__)
NOISY_VAL_PAIRS = 20


class PairDataset(Dataset):
    """Pairs as (pair index, src word id, tgt word id); word ids index the tokenised unique source / target word
    lists, the pair index is the pair's position in its split (lexicon order)."""

    def __init__(self, pairs: list[Pair], src_index: dict[str, int], tgt_index: dict[str, int]):
        self.src_ids = [src_index[p.source] for p in pairs]
        self.tgt_ids = [tgt_index[p.target] for p in pairs]

    def __len__(self) -> int:
        return len(self.src_ids)

    def __getitem__(self, i: int) -> tuple[int, int, int]:
        return i, self.src_ids[i], self.tgt_ids[i]


class PairCollator:
    """(pair index, src id, tgt id) items -> one padded batch of the source and target words, plus the ids; with
    `translation` (a function of the batch's (source, target) strings), the translation-LM sequences too."""

    def __init__(self, src_encoded: list[Encoded], tgt_encoded: list[Encoded], pad_id: int, translation=None,
                 words: tuple[list[str], list[str]] | None = None):
        self.src_encoded, self.tgt_encoded, self.pad_id = src_encoded, tgt_encoded, pad_id
        self.translation, self.words = translation, words

    def __call__(self, items: list[tuple[int, int, int]]) -> dict:
        words = [self.src_encoded[s] for _, s, _ in items] + [self.tgt_encoded[t] for _, _, t in items]
        batch = {
            "words": collate(words, self.pad_id),  # (2B, T): sources then targets, one forward pass
            "pair_idx": torch.tensor([i for i, _, _ in items]),  # (B,)
            "src_ids": torch.tensor([s for _, s, _ in items]),  # (B,)
            "tgt_ids": torch.tensor([t for _, _, t in items]),  # (B,)
        }
        if self.translation is not None:  # (2B, T') few-shot prompts, both directions
            batch["translation"] = self.translation([(self.words[0][s], self.words[1][t]) for _, s, t in items])
        return batch


class WordCollator:
    """(side, word id) items -> one padded batch of training words and which of them are source words."""

    def __init__(self, src_encoded: list[Encoded], tgt_encoded: list[Encoded], pad_id: int):
        self.src_encoded, self.tgt_encoded, self.pad_id = src_encoded, tgt_encoded, pad_id

    def __call__(self, items: list[tuple[bool, int]]) -> dict:
        words = [(self.src_encoded if is_src else self.tgt_encoded)[i] for is_src, i in items]
        return {"words": collate(words, self.pad_id), "is_src": torch.tensor([is_src for is_src, _ in items])}


class PairDataModule(L.LightningDataModule):
    """Serves the training pairs (and validation pairs carved from them); with `centring_words`, a second
    validation loader serves every training word once, for the centring statistics of the validation metrics."""

    def __init__(self, data: DataConfig, tokenizer, template: str = "{word}", seed: int = 0,
                 centring_words: bool = False, translation=None):
        super().__init__()
        # translation(pairs, tokenizer=, src_lang=, tgt_lang=) -> tensors: training batches then carry the
        # translation-LM sequences of their (source, target) strings (tli.training.translation_lm.translation_batch)
        self.translation = translation
        self.data_cfg, self.tokenizer, self.template, self.seed = data, tokenizer, template, seed
        self.batch_size, self.val_fraction, self.num_workers = data.batch_size, data.val_fraction, data.num_workers
        self.centring_words = centring_words
        self.lexicons: AuditResult | None = None
        self._train_loader: ResumableLoader | None = None
        self._loader_state: dict | None = None

    def prepare_lexicons(self, reported: set | None = None) -> AuditResult:
        """Read and audit the lexicons (the control set is audited for leakage, never trained on; special-token text
        is that of this tokenizer), and check that the training and validation splits are usable; all before any
        weights load. `reported`: findings already logged (tli.data.audit.log_findings)."""
        if self.lexicons is None:
            self.lexicons = load_lexicons(self.data_cfg, tokenizer=self.tokenizer, reported=reported)
            print(format_audit(self.lexicons))
            train, val, heldout = split_pairs(self.lexicons.train, self.data_cfg, self.seed)
            where = f"{self.lexicons.train.path} ({len(self.lexicons.train)} pairs) with data.val_fraction=" \
                    f"{self.val_fraction}"
            if self.data_cfg.crossfit:
                where += f", fold {self.data_cfg.fold} of data.crossfit={self.data_cfg.crossfit} held out " \
                         f"({len(heldout)} pairs)"
                log.info("cross-fitting: %d training, %d validation pairs; fold %d of %d held out (%d pairs)",
                         len(train), len(val), self.data_cfg.fold, self.data_cfg.crossfit, len(heldout))
            if self.data_cfg.derange:
                log.info("data.derange: the %d training pairs' targets are deranged (the matched null); validation "
                         "pairs stay true", len(train))
            if len(train) < 2:
                raise DataError(f"{where} leaves {len(train)} training pair(s); in-batch negatives need at least 2")
            if self.val_fraction > 0 and len(val) < MIN_VAL_PAIRS:
                raise DataError(f"{where} leaves {len(val)} validation pair(s): validation metrics need at least "
                                f"{MIN_VAL_PAIRS}; raise data.val_fraction, or set it to 0 to train without "
                                "validation (the last adapter is kept)")
            if self.val_fraction > 0 and len(val) < NOISY_VAL_PAIRS:
                log.warning("validation on %d pairs (%s): its metrics, and the best checkpoint chosen by them, are "
                            "noisy", len(val), where)
        return self.lexicons

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        lex = self.prepare_lexicons()
        train_pairs, val_pairs, heldout = split_pairs(lex.train, self.data_cfg, self.seed)
        self.train_pairs, self.val_pairs, self.heldout_pairs = train_pairs, val_pairs, heldout
        # only the words of the pairs served: a held-out fold's words are not even tokenised
        src_words = sorted({p.source for p in train_pairs + val_pairs})
        tgt_words = sorted({p.target for p in train_pairs + val_pairs})
        self.src_words, self.tgt_words = src_words, tgt_words  # what the word ids in batches index
        src_index = {w: i for i, w in enumerate(src_words)}
        tgt_index = {w: i for i, w in enumerate(tgt_words)}
        src_enc, tgt_enc = (tokenize_words(self.tokenizer, words, self.template) for words in (src_words, tgt_words))
        self.collator = PairCollator(src_enc, tgt_enc, self.tokenizer.pad_token_id)
        self.train_collator = self.collator
        if self.translation is not None:
            d, tok = self.data_cfg, self.tokenizer
            self.train_collator = PairCollator(src_enc, tgt_enc, tok.pad_token_id, words=(src_words, tgt_words),
                                               translation=partial(self.translation, tokenizer=tok,
                                                                   src_lang=d.src_lang, tgt_lang=d.tgt_lang))
        self.word_collator = WordCollator(src_enc, tgt_enc, self.tokenizer.pad_token_id)
        self.train_set = PairDataset(train_pairs, src_index, tgt_index)
        self.val_set = PairDataset(val_pairs, src_index, tgt_index)
        # the words of the pairs trained on (validation words excluded): what centring statistics may use
        self.train_words = sorted({(True, src_index[p.source]) for p in train_pairs}
                                  | {(False, tgt_index[p.target]) for p in train_pairs})

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
        # Data parallel: this process's slice of global batches of batch_size * world_size pairs. Lightning cannot
        # put a DistributedSampler under a custom batch sampler (the Trainer runs with use_distributed_sampler=False).
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = UniqueBatchSampler(self.train_set.src_ids, self.train_set.tgt_ids, self.batch_size, self.seed,
                                     num_replicas=replicas, rank=rank)
        loader = ResumableLoader(self.train_set, batch_sampler=sampler, collate_fn=self.train_collator,
                                 num_workers=self.num_workers, progress=self._processed, epoch=self._current_epoch,
                                 generator=self._generator())
        if self._loader_state is not None:  # resuming: see state_dict
            loader.load_state_dict(self._loader_state)
            self._loader_state = None
        self._train_loader = loader
        return loader

    # Lightning saves the loader's state with its loops and loads it back only if the loader is built after the
    # loops are restored. `trainer.estimated_stepping_batches` (the LR schedule's length, in configure_optimizers)
    # builds it before that whenever max_epochs is finite, and the state is silently dropped: a mid-epoch resume
    # would replay the epoch from its first batch (Lightning issue #20550, open in 2.6.6). The data module's own
    # state is restored before the optimizers are configured, so the loader position is kept here too; loading
    # the same state twice (where Lightning's restore does work) is harmless.
    def state_dict(self) -> dict:
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        self._loader_state = state_dict.get("train_loader")

    def val_dataloader(self) -> DataLoader:
        # Not sharded: under DDP every process validates the whole set in global batches (batch_size * world_size),
        # so the retrieval metrics (each query ranked against all validation targets) and val/loss are exactly those
        # of one process with the global batch.
        if len(self.val_set) == 0:
            return []
        replicas = self.trainer.world_size if self.trainer is not None else 1
        sampler = UniqueBatchSampler(self.val_set.src_ids, self.val_set.tgt_ids, self.batch_size * replicas, self.seed,
                                     shuffle=False)
        pairs = DataLoader(self.val_set, batch_sampler=sampler, collate_fn=self.collator, num_workers=self.num_workers,
                           generator=self._generator())
        if not self.centring_words:
            return pairs
        words = DataLoader(self.train_words, batch_size=64, shuffle=False, collate_fn=self.word_collator,
                           num_workers=self.num_workers, generator=self._generator())
        return [pairs, words]
