"""A cross-fitted evaluation: every training-lexicon word is scored exactly once per direction as unseen, by the
adapter that held its fold out (never by one that saw it), with its fold and seed; the control words by every
adapter; the pooled section holds the stratified tests."""

import csv

import pytest
from helpers import FAST_CPU, compose, job_overrides

from tli.data.config import load_lexicons
from tli.data.crossfit import fold_split
from tli.errors import AdapterError
from tli.jobs.evaluate import evaluate_job
from tli.jobs.train import train_job

K = 3


@pytest.fixture(scope="module")
def folds(tmp_path_factory, tiny_dir, small_lexicons):
    """K tiny adapters, one per held-out fold (seed 0), a few steps each."""
    out = []
    for fold in range(K):
        run = tmp_path_factory.mktemp(f"fold{fold}")
        train_job(compose("train", [FAST_CPU, *job_overrides(run, tiny_dir, small_lexicons), "data.batch_size=8",
                                    "data.val_fraction=0.25", "lora.r=4", "trainer.max_steps=3",
                                    "trainer.max_epochs=-1", f"data.crossfit={K}", f"data.fold={fold}",
                                    "optim.lr=5e-3"]))
        out.append(run / "adapter")
    return out


@pytest.mark.slow
def test_every_training_word_is_scored_once_as_unseen_by_the_adapter_that_never_saw_it(folds, eval_cfg, tmp_path):
    summary = evaluate_job(eval_cfg(f"adapter=[{','.join(map(str, folds))}]", "eval.translation=true",
                                    "eval.lm_loss=false", "eval.layers=[32]", "eval.behaviour_quantization=nf4"))
    every = list(csv.DictReader((tmp_path / "eval" / "translation.csv").open(encoding="utf-8")))
    rows = [r for r in every if r["run"] != "nn_shots"]
    nn = [r for r in every if r["run"] == "nn_shots"]  # the prompt-only null: the same queries, fold and seed
    key = ("split", "direction", "source", "fold", "seed", "prediction_before")
    assert sorted(tuple(r[k] for k in key) for r in nn) == sorted(tuple(r[k] for k in key) for r in rows)
    assert summary["nulls"]["nn_shots"]["crossfit"]["unseen"]
    cfg = eval_cfg()
    train = load_lexicons(cfg.data).train
    unseen = [r for r in rows if r["split"] == "unseen"]
    assert not [r for r in rows if r["split"] == "train"]
    for direction, side in ((f"{train.src_lang}->{train.tgt_lang}", "source"),
                            (f"{train.tgt_lang}->{train.src_lang}", "target")):
        words = sorted(r["source"] for r in unseen if r["direction"] == direction)
        assert words == sorted({getattr(p, side) for p in train.pairs})  # each exactly once
        for r in unseen:
            if r["direction"] != direction:
                continue
            run = int(r["run"].removeprefix("run"))
            _, held = fold_split(train, K, run, 0)  # adapter run<i> held out fold i
            assert r["fold"] == str(run) and r["seed"] == "0"
            assert r["source"] in {getattr(p, side) for p in held}  # scored by the adapter that never saw it
    control = [r for r in rows if r["split"] == "control"]
    assert len(control) == K * len({(r["direction"], r["source"]) for r in control})  # every adapter, every word
    pooled = summary["crossfit"]["unseen"]
    for cell in pooled.values():
        assert cell["correct"]["n"] == len(unseen) // 2
        assert set(cell["correct"]["strata"]) == {f"fold {f} seed 0" for f in range(K)}
        assert set(cell["per_seed"]) == {"seed 0"} and "same_sign_everywhere" in cell["seed_signs"]
    pairs = list(csv.DictReader((tmp_path / "eval" / "pairs.csv").open(encoding="utf-8")))
    assert {r["fold"] for r in pairs} == {str(f) for f in range(K)} and {r["seed"] for r in pairs} == {"0"}


def test_cross_fitted_and_plain_adapters_are_not_mixed(folds, tiny_dir, eval_cfg, tmp_path, small_lexicons):
    plain = tmp_path / "plain"
    train_job(compose("train", [FAST_CPU, *job_overrides(plain, tiny_dir, small_lexicons), "data.batch_size=8",
                                "data.val_fraction=0.25", "lora.r=4", "debug=fdr"]))
    with pytest.raises(AdapterError, match="cross-fitted adapters .* and others in one evaluation"):
        evaluate_job(eval_cfg(f"adapter=[{folds[0]},{plain / 'adapter'}]", out=tmp_path / "e"))


def test_the_report_opens_with_the_behaviour_table(folds, eval_cfg, tmp_path):
    summary = evaluate_job(eval_cfg(f"adapter=[{','.join(map(str, folds))}]", "eval.translation=true",
                                    "eval.layers=[32]", "eval.behaviour_quantization=nf4"))
    report = (tmp_path / "eval" / "report.md").read_text()
    behaviour, representations = report.index("## Behaviour"), report.index("## run0")
    assert behaviour < representations
    table = report[behaviour:representations]
    cell = summary["crossfit"]["unseen"]["Swahili->English"]
    assert "| cross-fitted pool | unseen | Swahili->English |" in table
    assert "stratified exact p" in table and "MDE" in table and "| run1 | control |" in table
    acc = f"{cell['accuracy_before']:.3f} → {cell['accuracy_after']:.3f}"
    assert acc in table
    assert cell["accuracy_before"] == pytest.approx(
        sum(r["correct_before"] for r in _rows(tmp_path, "unseen", "Swahili->English")) / cell["correct"]["n"])
    assert "NLL (nats/token)" in table and "quantization nf4" in table


def _rows(tmp_path, split, direction):
    rows = csv.DictReader((tmp_path / "eval" / "translation.csv").open(encoding="utf-8"))
    return [{**r, "correct_before": r["correct_before"] == "True"} for r in rows
            if r["split"] == split and r["direction"] == direction and r["run"] != "nn_shots"]
