"""Validation translation as the objective (tli.training.val_translation) on the tiny model: the figures logged are
the validation pairs' translation by the kept adapter, shots never leak a validation, held-out or deranged pair, and
bad settings fail before any weights load."""

import json
import os
import subprocess
import sys
from dataclasses import asdict, replace

import pytest
import torch
from helpers import FAST_CPU, HARM_TEXT, ROOT, compose
from safetensors.torch import load_file

from tli.data.config import DataConfig, load_lexicons
from tli.data.splits import split_pairs
from tli.errors import ConfigError
from tli.eval.translation import ShotsError, build_queries, evaluate_translation
from tli.jobs.train import train_job
from tli.jobs.val_translate import main
from tli.model.adapter import attach
from tli.model.loading import load_model
from tli.training.val_translation import KEYS, ValidationTranslation


def data_config(small_lexicons, **changes) -> DataConfig:
    train, _ = small_lexicons
    return DataConfig(train_file=str(train), src_field="swahili", tgt_field="english", src_lang="Swahili",
                      tgt_lang="English", val_fraction=0.25, **changes)


def figures(model, tokenizer, lexicon, data, seed, direction="forward", shots=2) -> dict:
    """The validation pairs' accuracy and mean gold log-prob, with the queries built here from the split itself."""
    train, val, _ = split_pairs(lexicon, replace(data, derange=False), seed)
    splits = {"val": replace(lexicon, pairs=val), "train": replace(lexicon, pairs=train)}
    queries = [q for q in build_queries(splits, k=shots, seed=seed, directions=[direction]) if q.split == "val"]
    rows = evaluate_translation(model, tokenizer, queries)
    return {"accuracy": sum(r["correct"] for r in rows) / len(rows),
            "gold_logprob": sum(r["gold_logprob"] for r in rows) / len(rows), "n": len(rows)}


def test_the_translation_objective_is_the_kept_adapters_validation_translation(train_cfg, tmp_path, tiny_spec,
                                                                              small_lexicons, capsys):
    result = train_job(train_cfg("objective.metric=translation", "objective.translation_shots=2",
                                 "objective.max_harm=null", "optim.lr=0.05", "seed=3",
                                 "trainer.num_sanity_val_steps=-1"))  # the base model's figures too
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["objective_name"] == "val/translation/accuracy"
    assert result["objective"] == metrics["metrics"]["val/translation/accuracy"]
    lexicon = load_lexicons(data_config(small_lexicons), with_control=False).train
    model, tokenizer = load_model(tiny_spec, device="cpu")
    base = figures(model, tokenizer, lexicon, data_config(small_lexicons), seed=3)
    assert base["n"] == metrics["n_val_pairs"] == 12  # one query per validation word (no repeated words here)
    before = metrics["validation_before"]
    assert before["val/translation/accuracy"] == pytest.approx(base["accuracy"])
    assert before["val/translation/gold_logprob"] == pytest.approx(base["gold_logprob"], abs=1e-4)
    after = figures(attach(model, tmp_path / "adapter"), tokenizer, lexicon, data_config(small_lexicons), seed=3)
    assert metrics["metrics"]["val/translation/accuracy"] == pytest.approx(after["accuracy"])
    assert metrics["metrics"]["val/translation/gold_logprob"] == pytest.approx(after["gold_logprob"], abs=1e-4)
    assert after["gold_logprob"] != pytest.approx(base["gold_logprob"], abs=1e-4)  # the adapter moved it
    assert (f"translation  (forward, 2 shots, validation pairs) accuracy {base['accuracy']:.3f} -> "
            f"{after['accuracy']:.3f}; gold log-prob {base['gold_logprob']:.3f} -> ") in capsys.readouterr().out


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_shots_are_true_training_pairs_never_validation_or_held_out(small_lexicons, tiny_nf4, direction):
    data = data_config(small_lexicons, crossfit=3, fold=1, derange=True)
    lexicon = load_lexicons(data, with_control=False).train
    vt = ValidationTranslation.for_run(lexicon, data, seed=0, direction=direction, shots=3, tokenizer=tiny_nf4[1])
    true_train, val, heldout = split_pairs(lexicon, replace(data, derange=False), 0)
    deranged, _, _ = split_pairs(lexicon, data, 0)
    side = (lambda p: (p.source, p.target)) if direction == "forward" else (lambda p: (p.target, p.source))
    allowed = {side(p) for p in true_train}
    assert {side(p) for p in deranged} - allowed  # the derangement did change the training pairs' targets
    assert [q.source for q in vt.queries] == list(dict.fromkeys(side(p)[0] for p in val))
    for q in vt.queries:
        assert len(q.shots) == 3 and set(q.shots) <= allowed, q
    assert not {w for q in vt.queries for s in q.shots for w in s} & {w for p in val + heldout for w in side(p)}


def test_score_returns_both_keys_in_range(small_lexicons, tiny_nf4):
    data = data_config(small_lexicons)
    lexicon = load_lexicons(data, with_control=False).train
    model, tokenizer = tiny_nf4
    scores = ValidationTranslation.for_run(lexicon, data, 0, direction="forward", shots=2,
                                           tokenizer=tokenizer).score(model)
    assert set(scores) == set(KEYS) and 0 <= scores[KEYS[0]] <= 1 and scores[KEYS[1]] < 0
    assert scores == pytest.approx({f"val/translation/{k}": v for k, v in
                                    figures(model, tokenizer, lexicon, data, 0).items() if k != "n"})


@pytest.mark.parametrize("override, error, message", [
    ("objective.translation_direction=sideways", ConfigError,
     r"objective.translation_direction='sideways' is not one of forward, backward"),
    ("objective.metric=bleu", ConfigError, r"objective.metric='bleu' is not an objective; valid: .* translation, "
                                           r"translation_logprob"),
    ("objective.translation_shots=-1", ConfigError, r"objective.translation_shots=-1 must be an integer >= 0"),
    ("objective.translation_shots=40", ShotsError, r"only \d+ shot pairs usable .* need k=40"),
])
def test_bad_translation_objectives_fail_before_weights_load(train_cfg, monkeypatch, override, error, message):
    import tli.training.module

    def no_weights(*args, **kwargs):
        raise AssertionError("model weights were loaded before the settings were checked")

    monkeypatch.setattr(tli.training.module, "load_model", no_weights)
    with pytest.raises(error, match=message):
        train_job(train_cfg("objective.metric=translation", override))


def test_no_validation_pairs_no_translation_objective(train_cfg, monkeypatch):
    with pytest.raises(ConfigError, match=r"validation translation needs validation pairs; data.val_fraction=0"):
        train_job(train_cfg("objective.score_translation=true", "data.val_fraction=0", "objective.max_harm=null"))


@pytest.mark.slow
def test_rescoring_finished_runs_reproduces_what_training_logged_and_applies_the_rule(tmp_path, tiny_dir,
                                                                                     small_lexicons):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "model=tiny", "data=sw_en", f"model.name_or_path={tiny_dir}",
           f"data.train_file={small_lexicons[0]}", f"data.control_file={small_lexicons[1]}", "data.batch_size=8",
           "data.val_fraction=0.25", FAST_CPU, "lora.r=4", "logger=none", "objective.score_translation=true",
           "objective.translation_shots=2", "optim.lr=0.05,0.0001", f"hydra.sweep.dir={sweep}", *HARM_TEXT]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    runs = [sweep / "0", sweep / "1"]
    logged = [json.loads((r / "metrics.json").read_text()) for r in runs]
    assert main([*map(str, runs), "--shots", "2", "--max-harm", "none", "--out", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "val_translation.json").read_text())
    for run, metrics in zip(out["runs"], logged, strict=True):
        assert run["n"] == metrics["n_val_pairs"] == 12
        for key in KEYS:
            assert run["after"][key] == pytest.approx(metrics["metrics"][key], abs=1e-4), key
        flips = [(r["before"] != r["after"]) for r in run["rows"]]
        assert run["mcnemar"]["b"] + run["mcnemar"]["c"] <= sum(flips)
    best = max(out["runs"], key=lambda r: (r["after"][KEYS[0]], r["after"][KEYS[1]]))
    assert out["chosen"] == best["run"] and [r["chosen"] for r in out["runs"]].count(True) == 1
    assert out["runs"][0]["before"] == out["runs"][1]["before"]  # the same split: the base model scored once
    assert "**chosen**" in (tmp_path / "val_translation.md").read_text()
    # the budget decides: at the lower harm only that run is admissible
    low = min(out["runs"], key=lambda r: r["harm"])
    assert main([*map(str, runs), "--shots", "2", f"--max-harm={low['harm']!r}", "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "val_translation.json").read_text())
    assert again["chosen"] == low["run"] and again["max_harm"] == low["harm"]
    assert [r["admissible"] for r in again["runs"]] == [r["harm"] <= low["harm"] for r in out["runs"]]


def test_rescoring_refuses_a_directory_that_is_not_a_finished_run(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert f"{tmp_path} is not a finished training run" in capsys.readouterr().err


def test_scoring_translation_at_validation_leaves_training_unchanged(train_cfg, tmp_path):
    """Greedy generation between epochs draws no random numbers: the same adapter with and without it (dropout on)."""
    settings = ["trainer.max_epochs=2", "lora.dropout=0.1", "optim.lr=0.05", "objective.max_harm=null"]
    train_job(train_cfg(*settings, out=tmp_path / "plain"))
    train_job(train_cfg(*settings, "objective.score_translation=true", "objective.translation_shots=2",
                        out=tmp_path / "scored"))
    a, b = (load_file(tmp_path / d / "adapter" / "adapter_model.safetensors") for d in ("plain", "scored"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    assert "val/translation/accuracy" in json.loads((tmp_path / "scored" / "metrics.json").read_text())["metrics"]


def test_the_translation_preset_is_gemma_ko_with_the_translation_term_and_objective():
    base, chosen = (asdict(compose("train", [f"experiment={e}", "paths.output_dir=unused"]))
                    for e in ("gemma_ko", "gemma_ko_translation"))
    assert chosen["loss"]["translation_lm"] == 1 and chosen["loss"]["centred"] is False
    assert chosen["objective"]["metric"] == "translation" and chosen["objective"]["max_harm"] == 0.02
    for section in ("model", "preserve", "optim", "data", "lora", "trainer"):
        assert chosen[section] == base[section], section
    differ = {k for k in base["loss"] if base["loss"][k] != chosen["loss"][k]}
    assert differ == {"translation_lm", "centred"}
