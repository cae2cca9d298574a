"""Batches without repeated strings, the seeded validation split, the data module, and exact mid-epoch resume."""

import json
import logging
import random
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import dup_ids

import tli.data.datamodule
from tli.data.config import AuditConfig, DataConfig
from tli.data.datamodule import PairDataModule
from tli.data.lexicon import Lexicon, Pair
from tli.data.sampling import ResumableLoader, UniqueBatchSampler
from tli.data.splits import split_validation
from tli.errors import ConfigError, DataError

# ---- UniqueBatchSampler -----------------------------------------------------------------------------------------


def check_plan(batches, src_ids, tgt_ids, batch_size):
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(src_ids)))  # every index exactly once
    for b in batches:
        assert 1 <= len(b) <= batch_size
        assert len({src_ids[i] for i in b}) == len(b), f"repeated source string in {b}"
        assert len({tgt_ids[i] for i in b}) == len(b), f"repeated target string in {b}"


@pytest.mark.parametrize("batch_size", [2, 8, 16])
def test_sampler_covers_each_index_once_without_repeats(batch_size):
    src_ids, tgt_ids = dup_ids()
    sampler = UniqueBatchSampler(src_ids, tgt_ids, batch_size, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        check_plan(batches, src_ids, tgt_ids, batch_size)
        assert len(sampler) == len(batches)


def test_sampler_deterministic_per_seed_and_epoch():
    src_ids, tgt_ids = dup_ids()
    a = UniqueBatchSampler(src_ids, tgt_ids, 8, seed=3)
    b = UniqueBatchSampler(src_ids, tgt_ids, 8, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    assert list(a) == list(a)  # iterating again gives the same epoch
    first = list(a)
    a.set_epoch(3)
    assert list(a) != first  # a different epoch reshuffles
    a.set_epoch(2)
    assert list(a) == first  # and coming back gives the same plan
    c = UniqueBatchSampler(src_ids, tgt_ids, 8, seed=4)
    c.set_epoch(2)
    assert list(c) != first  # a different seed too
    assert a.plan(3) == b.plan(3)


def test_sampler_no_shuffle_keeps_order_without_conflicts():
    n = 19
    sampler = UniqueBatchSampler(list(range(n)), list(range(100, 100 + n)), 8, seed=0, shuffle=False)
    assert list(sampler) == [list(range(0, 8)), list(range(8, 16)), list(range(16, 19))]
    assert len(sampler) == 3
    sampler.set_epoch(5)
    assert list(sampler) == [list(range(0, 8)), list(range(8, 16)), list(range(16, 19))]


def test_sampler_conflicting_pair_waits_for_next_batch():
    # pairs 0 and 1 share a source string, 2 and 3 a target string
    sampler = UniqueBatchSampler([0, 0, 1, 2, 3], [0, 1, 2, 2, 3], 4, seed=0, shuffle=False)
    assert list(sampler) == [[0, 2, 4], [1, 3]]
    assert len(sampler) == 2


# ---- split_validation -------------------------------------------------------------------------------------------


def lexicon(n_sources=40, seed=0):
    rng = random.Random(seed)
    pairs = []
    for s in range(n_sources):
        for k in range(rng.randint(1, 3)):  # one source word, one to three targets
            pairs.append(Pair(f"src{s}", f"tgt{s}_{k}", f"entry {len(pairs)}"))
    return Lexicon(path=Path("lex.json"), pairs=pairs, src_lang="A", tgt_lang="B")


def test_split_validation_deterministic_disjoint_grouped():
    lex = lexicon()
    train, val = split_validation(lex, 0.25, seed=7)
    assert (train, val) == split_validation(lex, 0.25, seed=7)
    assert Counter(train) + Counter(val) == Counter(lex.pairs)  # a partition of the pairs
    assert not set(train) & set(val)
    train_src, val_src = {p.source for p in train}, {p.source for p in val}
    assert not train_src & val_src  # every pair of a source word is on the same side
    assert len(val_src) == 10  # 25% of 40 source words
    assert 0.1 < len(val) / len(lex.pairs) < 0.4
    assert {p.source for p in split_validation(lex, 0.25, seed=8)[1]} != val_src


def test_split_validation_zero_fraction():
    lex = lexicon()
    train, val = split_validation(lex, 0.0, seed=0)
    assert train == lex.pairs and val == []


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_split_validation_fraction_out_of_range(fraction):
    with pytest.raises(ConfigError, match=r"data\.val_fraction"):
        split_validation(lexicon(), fraction, seed=0)


# ---- PairDataModule ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_spec):
    # The same tokenizer `tiny_nf4[1]` is (load_model returns load_tokenizer's), without loading the 4-bit model.
    from tli.model.loading import load_tokenizer

    return load_tokenizer(tiny_spec)


TRAIN = [
    ("kichwa", "head"), ("nywele", "hair"), ("uso", "face"), ("jicho", "eye"), ("sikio", "ear"),
    ("kinywa", "mouth"), ("jino", "tooth"), ("ulimi", "tongue"), ("shingo", "neck"), ("bega", "shoulder"),
    ("mkono", "hand"), ("mkono", "arm"), ("kidole", "finger"), ("kifua", "chest"), ("tumbo", "stomach"),
    ("mguu", "leg"), ("mguu", "foot"), ("goti", "knee"), ("ngozi", "skin"), ("damu", "blood"), ("mfupa", "bone"),
    ("moyo", "heart"), ("ini", "liver"), ("ubongo", "brain"), ("jasho", "sweat"), ("koo", "throat"),
    ("mwili", "body"), ("mama", "mother"), ("baba", "father"), ("mtoto", "child"), ("kaka", "brother"),
    ("dada", "sister"),
]
CONTROL = [("pua", "nose"), ("mgongo", "back"), ("ndevu", "beard"), ("mjomba", "uncle"), ("punda", "donkey")]
LEAKED = ("kichwa", "head")  # also in the control file: the audit drops it from the control set


@pytest.fixture
def data_cfg(tmp_path):
    def write(name, pairs):
        path = tmp_path / name
        path.write_text(json.dumps([{"swahili": s, "english": e, "pos": "noun"} for s, e in pairs]), encoding="utf-8")
        return str(path)

    def make(**options) -> DataConfig:
        return DataConfig(train_file=write("train.json", TRAIN), control_file=write("control.json", CONTROL + [LEAKED]),
                          src_field="swahili", tgt_field="english", src_lang="Swahili", tgt_lang="English",
                          audit=AuditConfig(leaked_pair="drop"), **options)

    return make


def decode_pairs(batch, tokenizer):
    """(source, target) strings of a batch, read back from the tokens marked as the word's own."""
    words = batch["words"]
    texts = [tokenizer.decode(ids[mask].tolist()) for ids, mask in zip(words["input_ids"], words["word_mask"],
                                                                         strict=True)]
    b = len(batch["src_ids"])
    return list(zip(texts[:b], texts[b:], strict=True))


@pytest.mark.parametrize("batch_size", [0, 1])
def test_datamodule_batch_size_below_two(data_cfg, tokenizer, batch_size):
    with pytest.raises(ConfigError, match=r"data\.batch_size"):
        PairDataModule(data_cfg(batch_size=batch_size), tokenizer)


def test_datamodule_batches(data_cfg, tokenizer, monkeypatch):
    calls = []
    real = tli.data.datamodule.tokenize_words

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(tli.data.datamodule, "tokenize_words", counting)
    B = 6
    dm = PairDataModule(data_cfg(batch_size=B, val_fraction=0.25), tokenizer, seed=0)
    dm.setup("fit")
    collator = dm.collator
    dm.setup("fit")
    dm.setup("validate")
    assert len(calls) == 2  # source words and target words, tokenised once
    assert dm.collator is collator

    lexicon_pairs = set(TRAIN)
    control_pairs = {(p.source, p.target) for p in dm.lexicons.control.pairs}
    assert control_pairs == set(CONTROL)  # the leaked pair left the control set; the rest stayed unseen

    train_seen = []
    for batch in dm.train_dataloader():
        words, n = batch["words"], len(batch["src_ids"])
        assert 1 <= n <= B and batch["src_ids"].shape == batch["tgt_ids"].shape == (n,)
        T = words["input_ids"].shape[1]
        for key in ("input_ids", "attention_mask", "word_mask", "position_ids"):
            assert words[key].shape == (2 * n, T), key
        assert words["word_mask"].dtype == torch.bool
        assert (words["attention_mask"].bool() | ~words["word_mask"]).all()  # word tokens are attended
        pairs = decode_pairs(batch, tokenizer)
        assert set(pairs) <= lexicon_pairs  # first B rows are the sources, the rest their targets, in order
        assert len({s for s, _ in pairs}) == n and len({e for _, e in pairs}) == n
        assert len(set(batch["src_ids"].tolist())) == n and len(set(batch["tgt_ids"].tolist())) == n
        train_seen += pairs
    assert len(train_seen) == len(dm.train_set)
    first = next(iter(dm.train_dataloader()))
    assert len(first["src_ids"]) == B  # a full batch is possible here

    val_seen = [p for batch in dm.val_dataloader() for p in decode_pairs(batch, tokenizer)]
    val_pairs = [(p.source, p.target) for p in dm.val_pairs]
    assert val_pairs and Counter(val_seen) == Counter(val_pairs)  # every validation pair exactly once
    assert Counter(train_seen) + Counter(val_seen) == Counter(TRAIN)  # a partition of the training lexicon
    assert not {s for s, _ in train_seen} & {s for s, _ in val_seen}
    assert not (set(train_seen) | set(val_seen)) & control_pairs  # the control set is never trained/validated on
    assert not {s for s, _ in train_seen + val_seen} & {s for s, _ in CONTROL}


def test_datamodule_empty_validation(data_cfg, tokenizer):
    dm = PairDataModule(data_cfg(batch_size=4, val_fraction=0.0), tokenizer)
    dm.setup("fit")
    assert len(dm.train_set) == len(TRAIN) and dm.val_dataloader() == []


# ---- ResumableLoader --------------------------------------------------------------------------------------------


def make_loader(processed=0, epoch=0, seed=5):
    src_ids, tgt_ids = dup_ids(n=60, n_src=12, n_tgt=14, seed=2)
    data = list(zip(src_ids, tgt_ids, range(60), strict=True))
    sampler = UniqueBatchSampler(src_ids, tgt_ids, 8, seed=seed)
    sampler.set_epoch(epoch)
    return ResumableLoader(data, batch_sampler=sampler, collate_fn=lambda items: [i for _, _, i in items],
                           progress=lambda: processed)


def test_resumable_loader_plain_iteration_matches_sampler():
    loader = make_loader()
    assert list(loader) == loader.batch_sampler.plan(0)
    assert len(loader) == len(loader.batch_sampler.plan(0)) > 3


@pytest.mark.parametrize("n", [0, 1, 3])
def test_resumable_loader_resumes_mid_epoch(n):
    full = list(make_loader(epoch=1))
    trained = make_loader(processed=n, epoch=1)
    state = trained.state_dict()
    assert state == {"epoch": 1, "processed": n}

    fresh = make_loader()  # a new process: epoch 0 until the state is loaded
    fresh.load_state_dict(state)
    assert fresh.batch_sampler.epoch == 1
    assert list(fresh) == full[n:]  # exactly the batches not yet trained on
    assert list(fresh) == full  # the skip applies once; the next pass over the epoch is whole


def test_resumable_loader_epoch_boundary_does_not_skip_next_epoch():
    full = list(make_loader(epoch=2))
    state = make_loader(processed=len(full), epoch=1).state_dict()  # saved at the end of epoch 1
    assert state == {"epoch": 1, "processed": len(full)}
    # Lightning iterates a resumed loader before it calls set_epoch: the loader itself must move on to epoch 2
    # and serve all of it (the classic bug skips a whole epoch here).
    resumed = make_loader()
    resumed.load_state_dict(state)
    assert resumed.batch_sampler.epoch == 2
    assert list(resumed) == full
    assert len(full) > 0


# ---- degenerate lexicons: refused before any weights load, with the limit in the message -------------------------


def _pairs_file(tmp_path, name, n):
    path = tmp_path / name
    path.write_text(json.dumps([{"swahili": s, "english": e} for s, e in TRAIN[:n]]), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("n,fraction,message", [
    (3, 0.1, r"leaves 0 validation pair\(s\): validation metrics need at least 5"),
    (12, 0.25, r"leaves 3 validation pair\(s\)"),
    (2, 0.5, r"leaves 1 training pair\(s\); in-batch negatives need at least 2"),
])
def test_too_few_pairs_for_the_splits(tmp_path, tokenizer, n, fraction, message):
    cfg = DataConfig(train_file=_pairs_file(tmp_path, "t.json", n), src_field="swahili", tgt_field="english",
                     val_fraction=fraction)
    with pytest.raises(DataError, match=message):
        PairDataModule(cfg, tokenizer).prepare_lexicons()


def test_small_validation_sets_warn_and_no_validation_is_allowed(tmp_path, tokenizer, caplog):
    cfg = DataConfig(train_file=_pairs_file(tmp_path, "t.json", 30), src_field="swahili", tgt_field="english",
                     val_fraction=0.3)
    with caplog.at_level(logging.WARNING, logger="tli.data.datamodule"):
        PairDataModule(cfg, tokenizer).prepare_lexicons()
    assert re.search(r"validation on (8|9|10) pairs .* are noisy", caplog.text)
    no_val = DataConfig(train_file=_pairs_file(tmp_path, "t.json", 3), src_field="swahili", tgt_field="english",
                        val_fraction=0.0)
    assert len(PairDataModule(no_val, tokenizer).prepare_lexicons().train) == 3


def test_a_split_needs_two_pairs(tmp_path):
    from tli.data.config import load_lexicons

    cfg = DataConfig(train_file=_pairs_file(tmp_path, "t.json", 10), control_file=_pairs_file(tmp_path, "c.json", 1),
                     src_field="swahili", tgt_field="english", audit=AuditConfig(leaked_pair="ignore",
                                                                                  leaked_word="ignore"))
    with pytest.raises(DataError, match=r"c.json: the control set has 1 pair\(s\) after the audit; .* at least 2"):
        load_lexicons(cfg)


# ---- cross-fitting and the deranged null (tli.data.crossfit) in the data module ---------------------------------


@pytest.mark.parametrize("fold", [0, 2])
def test_datamodule_crossfit_never_serves_the_held_out_fold(data_cfg, tokenizer, fold):
    from tli.data.crossfit import fold_split

    cfg = data_cfg(batch_size=4, val_fraction=0.25, crossfit=3, fold=fold)
    dm = PairDataModule(cfg, tokenizer, seed=7)
    dm.setup("fit")
    kept, heldout = fold_split(dm.lexicons.train, 3, fold, 7)
    assert [(p.source, p.target) for p in dm.heldout_pairs] == [(p.source, p.target) for p in heldout]
    held_words = {p.source for p in heldout} | {p.target for p in heldout}
    assert heldout and held_words
    train_seen = [p for batch in dm.train_dataloader() for p in decode_pairs(batch, tokenizer)]
    val_seen = [p for batch in dm.val_dataloader() for p in decode_pairs(batch, tokenizer)]
    assert val_seen  # validation is carved from the other folds
    # every kept pair is served exactly once in training or validation; no held-out word is served at all
    assert Counter(train_seen) + Counter(val_seen) == Counter((p.source, p.target) for p in kept)
    assert not {w for pair in train_seen + val_seen for w in pair} & held_words
    # nor tokenised, nor used for the centring statistics
    assert not (set(dm.src_words) | set(dm.tgt_words)) & held_words
    centring = {(dm.src_words if is_src else dm.tgt_words)[i] for is_src, i in dm.train_words}
    assert centring == {w for pair in train_seen for w in pair}


def test_datamodule_crossfit_folds_partition_the_lexicon(data_cfg, tokenizer):
    held = []
    for fold in range(4):
        dm = PairDataModule(data_cfg(batch_size=4, val_fraction=0.0, crossfit=4, fold=fold), tokenizer, seed=1)
        dm.setup("fit")
        held += [(p.source, p.target) for p in dm.heldout_pairs]
        assert len(dm.train_set) + len(dm.heldout_pairs) == len(TRAIN)
    assert Counter(held) == Counter(TRAIN)  # each pair held out by exactly one of the K runs


@pytest.mark.parametrize(("options", "key"), [({"crossfit": 1}, "data.crossfit"), ({"crossfit": -2}, "data.crossfit"),
                                              ({"crossfit": 3, "fold": 3}, "data.fold"),
                                              ({"crossfit": 3, "fold": -1}, "data.fold"), ({"fold": 1}, "data.fold")])
def test_crossfit_settings_are_validated(data_cfg, options, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        data_cfg(**options)


def test_datamodule_derange_trains_on_deranged_pairs_and_validates_on_true_ones(data_cfg, tokenizer):
    true = set(TRAIN)
    plain = PairDataModule(data_cfg(batch_size=4, val_fraction=0.25), tokenizer, seed=3)
    null = PairDataModule(data_cfg(batch_size=4, val_fraction=0.25, derange=True), tokenizer, seed=3)
    plain.setup("fit")
    null.setup("fit")
    train_seen = [p for batch in null.train_dataloader() for p in decode_pairs(batch, tokenizer)]
    plain_train = [(p.source, p.target) for p in plain.train_pairs]
    assert not set(train_seen) & true  # no training pair is a true translation
    assert Counter(s for s, _ in train_seen) == Counter(s for s, _ in plain_train)  # same words, same counts
    assert Counter(t for _, t in train_seen) == Counter(t for _, t in plain_train)
    assert len(train_seen) == len(plain_train)
    val_seen = [p for batch in null.val_dataloader() for p in decode_pairs(batch, tokenizer)]
    assert Counter(val_seen) == Counter((p.source, p.target) for p in plain.val_pairs)  # true, and the same split
    assert set(val_seen) <= true
