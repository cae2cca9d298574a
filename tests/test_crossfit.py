"""Cross-fitting (data.crossfit, data.fold) and the deranged null (data.derange): the pure functions of
tli.data.crossfit, the crossfit=... config group and a training run on a fold."""

import random
from collections import Counter

import pytest
from helpers import compose, compose_raw
from lightning.pytorch.callbacks import Callback

from tli.data.crossfit import assign_folds, components, derange, fold_split
from tli.data.lexicon import Lexicon, Pair
from tli.errors import ConfigError, DataError


def pairs_of(tuples) -> list[Pair]:
    return [Pair(s, t, f"entry {i + 1}") for i, (s, t) in enumerate(tuples)]


def random_lexicon(n=300, n_src=200, n_tgt=220, seed=0) -> list[Pair]:
    """Pairs with shared sources and shared targets (polysemy and synonymy): components of several sizes."""
    rng = random.Random(seed)
    tuples = {(f"s{rng.randrange(n_src)}", f"t{rng.randrange(n_tgt)}") for _ in range(n)}
    return pairs_of(sorted(tuples))


# ---- folds ------------------------------------------------------------------------------------------------------


def test_components_link_shared_sources_and_shared_targets():
    pairs = pairs_of([("a", "x"), ("b", "y"), ("a", "z"), ("c", "z"), ("d", "w"), ("e", "y")])
    assert components(pairs) == [[0, 2, 3], [1, 5], [4]]  # a-x, a-z, c-z through a and z; b-y, e-y through y


@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_every_pair_in_exactly_one_fold_components_together_sizes_balanced(k):
    pairs = random_lexicon()
    comps = components(pairs)
    assert max(map(len, comps)) > 2 and len(comps) < len(pairs)  # the test lexicon really has linked pairs
    folds = assign_folds(pairs, k, seed=0)
    assert len(folds) == len(pairs) and set(folds) == set(range(k))
    for comp in comps:
        assert len({folds[i] for i in comp}) == 1
    sizes = Counter(folds)
    assert max(sizes.values()) - min(sizes.values()) <= max(map(len, comps))
    held = []
    for fold in range(k):
        train, heldout = fold_split(pairs, k, fold, seed=0)
        assert heldout == [p for p, f in zip(pairs, folds, strict=True) if f == fold]  # lexicon order
        assert train == [p for p, f in zip(pairs, folds, strict=True) if f != fold]
        # a held-out word is unseen in training, as a source and as a target
        assert not {p.source for p in heldout} & {p.source for p in train}
        assert not {p.target for p in heldout} & {p.target for p in train}
        held += heldout
    assert Counter(held) == Counter(pairs)  # each pair held out by exactly one fold


def test_one_to_one_lexicon_folds_differ_by_at_most_one():
    pairs = pairs_of([(f"s{i}", f"t{i}") for i in range(23)])
    assert sorted(Counter(assign_folds(pairs, 5, seed=3)).values()) == [4, 4, 5, 5, 5]


def test_folds_are_deterministic_for_a_seed_and_differ_for_another():
    pairs = random_lexicon(seed=1)
    assert assign_folds(pairs, 5, seed=4) == assign_folds(list(pairs), 5, seed=4)
    assert assign_folds(pairs, 5, seed=4) != assign_folds(pairs, 5, seed=5)


def test_fold_split_takes_a_lexicon(tmp_path):
    pairs = random_lexicon(seed=2)
    lex = Lexicon(path=tmp_path / "train.json", pairs=pairs, src_lang="x", tgt_lang="y")
    assert fold_split(lex, 3, 2, seed=9) == fold_split(pairs, 3, 2, seed=9)


def test_fold_errors():
    pairs = pairs_of([("a", "x"), ("a", "y"), ("b", "z")])  # two components
    with pytest.raises(DataError, match="too few"):
        assign_folds(pairs, 3, seed=0)
    with pytest.raises(ConfigError, match=r"data\.fold"):
        fold_split(pairs, 2, 2, seed=0)
    with pytest.raises(ConfigError, match=r"data\.crossfit"):
        assign_folds(pairs, 1, seed=0)


# ---- derangement ------------------------------------------------------------------------------------------------


def test_derange_has_no_fixed_points_keeps_words_and_is_seeded():
    pairs = random_lexicon(seed=3)
    true = {(p.source, p.target) for p in pairs}
    out = derange(pairs, seed=0)
    assert [p.source for p in out] == [p.source for p in pairs] and [p.where for p in out] == [p.where for p in pairs]
    assert Counter(p.target for p in out) == Counter(p.target for p in pairs)
    assert not {(p.source, p.target) for p in out} & true  # no true translation, own target included
    assert derange(pairs, seed=0) == out
    assert derange(pairs, seed=1) != out


def test_derange_two_pairs_swaps_them():
    pairs = pairs_of([("a", "x"), ("b", "y")])
    assert [(p.source, p.target) for p in derange(pairs, seed=5)] == [("a", "y"), ("b", "x")]


def test_derange_avoids_true_translations_where_it_can_and_never_keeps_a_pair_where_it_cannot():
    pairs = pairs_of([("a", "x"), ("a", "y"), ("b", "z"), ("c", "w")])
    for seed in range(20):
        out = derange(pairs, seed)
        assert all(q.target not in {"x", "y"} for q in out[:2])  # a's translations go to b and c
        assert out[2].target != "z" and out[3].target != "w"
    both = pairs_of([("a", "x"), ("a", "y")])  # unavoidable: every target translates a; still no fixed point
    assert [p.target for p in derange(both, seed=0)] == ["y", "x"]
    with pytest.raises(DataError):
        derange(pairs[:1], seed=0)


# ---- the config group --------------------------------------------------------------------------------------------


def sweeper_params(*overrides):
    cfg = compose_raw_hydra("train", list(overrides))
    return dict(cfg.hydra.sweeper.params or {}), set(cfg.hydra.callbacks or {})


def compose_raw_hydra(config_name, overrides):
    """helpers.compose_raw with the hydra node (its sweeper params and callbacks)."""
    from helpers import ROOT, TEST_DEFAULTS
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from tli.config import register

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=[*TEST_DEFAULTS, *overrides], return_hydra_config=True)


@pytest.mark.parametrize("k", [3, 5, 10])
def test_crossfit_group_sweeps_the_folds(k, tmp_path):
    params, callbacks = sweeper_params(f"crossfit={k}fold")
    assert params == {"data.fold": ",".join(map(str, range(k)))}
    assert "crossfit_report" in callbacks and "seed_report" not in callbacks
    assert compose("train", [f"crossfit={k}fold", f"paths.output_dir={tmp_path}"]).data.crossfit == k
    with pytest.raises(ConfigError, match=r"data\.fold"):
        compose("train", [f"crossfit={k}fold", f"data.fold={k}", f"paths.output_dir={tmp_path}"])
    assert compose_raw("train", [f"crossfit={k}fold", "data.fold=1"]).data.fold == 1


def test_crossfit_group_composes_with_multiseed(tmp_path):
    params, callbacks = sweeper_params("crossfit=5fold", "multiseed=default")
    assert params == {"data.fold": "0,1,2,3,4", "seed": "0,1,2"}
    assert {"crossfit_report", "seed_report"} <= callbacks
    cfg = compose("train", ["crossfit=5fold", "multiseed=default", "data.fold=4", f"paths.output_dir={tmp_path}"])
    assert (cfg.data.crossfit, cfg.data.fold) == (5, 4)


def test_without_the_group_crossfit_is_off(tmp_path):
    cfg = compose("train", [f"paths.output_dir={tmp_path}"])
    assert (cfg.data.crossfit, cfg.data.fold, cfg.data.derange) == (0, 0, False)
    params, callbacks = sweeper_params()
    assert "data.fold" not in params and "crossfit_report" not in callbacks


def test_seed_report_leaves_a_crossfit_sweep_to_the_crossfit_report(tmp_path, monkeypatch):
    import tli.jobs.sweep as sweep

    calls = []
    monkeypatch.setattr(sweep, "_evaluate_sweep", lambda config, jobs, *a, **k: calls.append([j.name for j in jobs]))
    for job in ("0", "1"):
        (tmp_path / job / "adapter").mkdir(parents=True)
        (tmp_path / job / "adapter" / "tli_adapter.json").write_text("{}")
    both = compose_raw_hydra("train", ["crossfit=3fold", "multiseed=default", f"hydra.sweep.dir={tmp_path}"])
    sweep.SeedReport().on_multirun_end(both)
    assert calls == []
    sweep.CrossfitReport().on_multirun_end(both)
    assert calls == [["0", "1"]]
    seeds = compose_raw_hydra("train", ["multiseed=default", f"hydra.sweep.dir={tmp_path}"])
    sweep.SeedReport().on_multirun_end(seeds)
    assert calls == [["0", "1"], ["0", "1"]]


# ---- a training run on a fold ------------------------------------------------------------------------------------


class ServedWords(Callback):
    """Records every source and target string the data module serves in training and validation batches."""

    def __init__(self):
        self.train, self.val, self.dm = set(), set(), None

    def _record(self, trainer, batch, into):
        dm = self.dm = trainer.datamodule
        if "src_ids" in batch:
            into |= {dm.src_words[i] for i in batch["src_ids"].tolist()}
            into |= {dm.tgt_words[i] for i in batch["tgt_ids"].tolist()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._record(trainer, batch, self.train)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._record(trainer, batch, self.val)


def test_one_epoch_on_a_fold_trains_and_never_serves_the_held_out_fold(train_cfg):
    from tli.data.config import load_lexicons
    from tli.jobs.train import train_job

    cfg = train_cfg("data.crossfit=3", "data.fold=1")
    served = ServedWords()
    result = train_job(cfg, extra_callbacks=[served])
    assert result["global_step"] > 0 and served.train and served.val
    kept, heldout = fold_split(load_lexicons(cfg.data).train, 3, 1, cfg.seed)
    held_words = {p.source for p in heldout} | {p.target for p in heldout}
    assert len(heldout) == 16  # 48 one-to-one pairs, 3 folds
    assert not (served.train | served.val) & held_words
    assert served.train | served.val == {p.source for p in kept} | {p.target for p in kept}
    assert result["n_val_pairs"] == len(served.dm.val_pairs) and served.dm.heldout_pairs == heldout
