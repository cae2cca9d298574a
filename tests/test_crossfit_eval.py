"""A cross-fitted evaluation: every training-lexicon word is scored exactly once per direction as unseen, by the
adapter that held its fold out (never by one that saw it), with its fold and seed; the control words by every
adapter; the pooled section holds the stratified tests."""

import csv
import json

import numpy as np
import pytest
from helpers import FAST_CPU, compose, job_overrides

from tli.data.config import load_lexicons
from tli.data.crossfit import fold_split
from tli.errors import AdapterError, ConfigError
from tli.eval.combine import combine
from tli.eval.combine import main as combine_main
from tli.eval.front import points_from_summary
from tli.eval.saved import EvaluationError, read_evaluation
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


@pytest.fixture(scope="module")
def pooled(folds, tmp_path_factory, tiny_dir, small_lexicons):
    """(summary, output dir) of one evaluation of the K adapters, translation and held-out loss in NF4."""
    out = tmp_path_factory.mktemp("pooled")
    summary = evaluate_job(compose("evaluate", [*job_overrides(out, tiny_dir, small_lexicons), "eval.n_boot=500",
                                                f"adapter=[{','.join(map(str, folds))}]", "eval.translation=true",
                                                "eval.layers=[32]"]))
    return summary, out


@pytest.mark.slow
def test_every_training_word_is_scored_once_as_unseen_by_the_adapter_that_never_saw_it(pooled, eval_cfg):
    summary, tmp_path = pooled
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
        assert cell["by_word"]["n_words"] == cell["correct"]["n"]  # each unseen word scored once in one seed
    for direction, cell in summary["crossfit"]["control"].items():  # every adapter scores the control words
        ctl = [r for r in control if r["direction"] == direction and r["run"] != "nn_shots"]
        by = cell["by_word"]
        assert by["n_words"] == len({r["source"] for r in ctl}) and cell["correct"]["n"] == len(ctl)
        change = {}
        for r in ctl:
            change.setdefault(r["source"], []).append((r["correct_after"] == "True") - (r["correct_before"] == "True"))
        assert by["mean_change"] == pytest.approx(np.mean([np.mean(v) for v in change.values()]))
    pairs = list(csv.DictReader((tmp_path / "eval" / "pairs.csv").open(encoding="utf-8")))
    assert {r["fold"] for r in pairs} == {str(f) for f in range(K)} and {r["seed"] for r in pairs} == {"0"}


def test_cross_fitted_and_plain_adapters_are_not_mixed(folds, tiny_dir, eval_cfg, tmp_path, small_lexicons):
    plain = tmp_path / "plain"
    train_job(compose("train", [FAST_CPU, *job_overrides(plain, tiny_dir, small_lexicons), "data.batch_size=8",
                                "data.val_fraction=0.25", "lora.r=4", "debug=fdr"]))
    with pytest.raises(AdapterError, match="cross-fitted adapters .* and others in one evaluation"):
        evaluate_job(eval_cfg(f"adapter=[{folds[0]},{plain / 'adapter'}]", out=tmp_path / "e"))


@pytest.mark.slow
def test_the_report_opens_with_the_behaviour_table(pooled):
    summary, tmp_path = pooled
    report = (tmp_path / "eval" / "report.md").read_text()
    behaviour, representations = report.index("## Behaviour"), report.index("## run0")
    assert behaviour < representations
    table = report[behaviour:representations]
    cell = summary["crossfit"]["unseen"]["Swahili->English"]
    assert "| cross-fitted pool | unseen | Swahili->English |" in table
    assert "stratified exact p" in table and "MDE" in table and "| cross-fitted pool | control |" in table
    w = cell["by_word"]
    assert f"{w['n_up']} / {w['n_down']} of {w['n_words']} (p = " in table and "word-level p" in table
    assert "| nearest-neighbour shots, no training | unseen |" in table and "| run1 |" not in table.split("NLL")[0]
    acc = f"{cell['accuracy_before']:.3f} → {cell['accuracy_after']:.3f}"
    assert acc in table
    assert cell["accuracy_before"] == pytest.approx(
        sum(r["correct_before"] for r in _rows(tmp_path, "unseen", "Swahili->English")) / cell["correct"]["n"])
    assert "NLL (nats/token)" in table and "Scored in quantization none." in table  # the default: full precision


def _rows(tmp_path, split, direction):
    rows = csv.DictReader((tmp_path / "eval" / "translation.csv").open(encoding="utf-8"))
    return [{**r, "correct_before": r["correct_before"] == "True"} for r in rows
            if r["split"] == split and r["direction"] == direction and r["run"] != "nn_shots"]


@pytest.mark.slow
def test_recipes_are_compared_on_the_same_queries(folds, tiny_dir, small_lexicons, eval_cfg, tmp_path):
    """Two recipes (the cross-fitted adapters and a deranged null of them) in one evaluation: each recipe pooled,
    every two recipes (nn_shots included) compared on matched queries, Holm over the family."""
    nulls = []
    for fold in range(K):
        run = tmp_path / f"null{fold}"
        train_job(compose("train", [FAST_CPU, *job_overrides(run, tiny_dir, small_lexicons), "data.batch_size=8",
                                    "data.val_fraction=0.25", "lora.r=4", "trainer.max_steps=3",
                                    "trainer.max_epochs=-1", f"data.crossfit={K}", f"data.fold={fold}",
                                    "data.derange=true", "optim.lr=5e-3"]))
        nulls.append(run / "adapter")
    summary = evaluate_job(eval_cfg(f"+adapters.tli=[{','.join(map(str, folds))}]",
                                    f"+adapters.deranged=[{','.join(map(str, nulls))}]", "eval.translation=true",
                                    "eval.lm_loss=false", "eval.layers=[32]",
                                    out=tmp_path / "e"))
    assert set(summary["recipes"]) == {"tli", "deranged"} and "crossfit" not in summary
    assert summary["recipes"]["tli"]["runs"] == ["tli/0", "tli/1", "tli/2"]
    pairs = summary["comparisons"]["pairs"]
    assert list(pairs) == ["tli vs deranged", "tli vs nn_shots", "deranged vs nn_shots"]
    rows = list(csv.DictReader((tmp_path / "e" / "eval" / "translation.csv").open(encoding="utf-8")))
    tli = {(r["split"], r["direction"], r["source"], r["fold"]): r for r in rows if r["run"].startswith("tli/")}
    der = {(r["split"], r["direction"], r["source"], r["fold"]): r for r in rows if r["run"].startswith("deranged/")}
    assert tli.keys() == der.keys()
    cell = pairs["tli vs deranged"]["translation"]["unseen"]["Swahili->English"]["correct"]
    unseen = [k for k in tli if k[0] == "unseen" and k[1] == "Swahili->English"]
    # "tli vs deranged": the null's answers are "before", tli's "after" (b: right -> wrong, c: wrong -> right)
    b = sum(der[k]["correct_after"] == "True" and tli[k]["correct_after"] == "False" for k in unseen)
    c = sum(der[k]["correct_after"] == "False" and tli[k]["correct_after"] == "True" for k in unseen)
    assert (cell["n"], cell["b"], cell["c"]) == (len(unseen), b, c)
    family = summary["comparisons"]["family_size"]
    assert family == 3 * 4 and cell["holm_p"] >= cell["exact_p"]
    # the representations: each unseen pair's score after the null's adapter (before) and after tli's (after)
    aligned = summary["recipe_alignment"]["pairs"]["tli vs deranged"]["splits"]
    pair_rows = list(csv.DictReader((tmp_path / "e" / "eval" / "pairs.csv").open(encoding="utf-8")))
    for split in ("unseen", "control"):
        scores = {who: {(r["source"], r["target"], r["fold"]): float(r["centred_pool_mrr_after"]) for r in pair_rows
                        if r["split"] == split and r["run"].startswith(f"{who}/")} for who in ("tli", "deranged")}
        assert scores["tli"].keys() == scores["deranged"].keys()
        cell = aligned[split][32]["centred"]["pool_mrr"]
        assert cell["n"] == len(scores["tli"]) and set(cell["strata"]) == {f"fold {f} seed 0" for f in range(K)}
        assert cell["mean_before"] == pytest.approx(np.mean(list(scores["deranged"].values())))
        gains = [scores["tli"][k] - scores["deranged"][k] for k in scores["tli"]]
        assert cell["delta"] == pytest.approx(np.mean(gains))
        assert cell["holm_p"] >= cell["wilcoxon_p"]
    assert summary["recipe_alignment"]["family_size"] == 2
    assert "## Recipes against each other: representations" in (tmp_path / "e" / "eval" / "report.md").read_text()
    # without translation (a language the model cannot translate): the same recipes and representation comparison
    quiet = evaluate_job(eval_cfg(f"+adapters.tli=[{','.join(map(str, folds))}]",
                                  f"+adapters.deranged=[{','.join(map(str, nulls))}]", "eval.translation=false",
                                  "eval.lm_loss=false", "eval.layers=[32]", out=tmp_path / "q"))
    assert quiet["recipes"] == {"tli": {"runs": ["tli/0", "tli/1", "tli/2"]},
                                "deranged": {"runs": ["deranged/0", "deranged/1", "deranged/2"]}}
    assert quiet["recipe_alignment"] == summary["recipe_alignment"]
    # fold 0 evaluated as "tli", folds 1-2 under other names (a second seed's batch, say): --rename pools them
    src = tmp_path / "e" / "eval"
    a = _split_evaluation(src, tmp_path / "a", {"tli/0", "deranged/0"})
    b = _split_evaluation(src, tmp_path / "b", {"tli/1", "tli/2", "deranged/1", "deranged/2"},
                          rename={"tli": "tli-b", "deranged": "tli-b-deranged"})
    assert combine_main([str(a), str(b), "--out", str(tmp_path / "both"),
                         "--rename", "tli-b=tli", "--rename", "tli-b-deranged=deranged"]) == 0
    combined = json.loads((tmp_path / "both" / "summary.json").read_text())
    one = json.loads(json.dumps(summary))
    assert list(combined["comparisons"]["pairs"]) == list(pairs)
    assert combined["recipe_alignment"] == one["recipe_alignment"]
    for name, comparison in one["comparisons"]["pairs"].items():
        assert combined["comparisons"]["pairs"][name]["translation"] == comparison["translation"], name
    assert set(combined["runs"]) == {"tli/0.0", "deranged/0.0", "tli/1.1", "tli/1.2", "deranged/1.1", "deranged/1.2"}
    unnamed = tmp_path / "unnamed"
    assert combine_main([str(a), str(b), "--out", str(unnamed)]) == 0  # without it: four recipes, none pooled
    assert "tli-b vs tli-b-deranged" in json.loads((unnamed / "summary.json").read_text())["comparisons"]["pairs"]
    with pytest.raises(EvaluationError, match="no evaluation has a recipe 'tlx'"):
        combine([read_evaluation(a), read_evaluation(b)], rename={"tlx": "tli"})
    with pytest.raises(EvaluationError, match="would merge two of its recipes"):
        combine([read_evaluation(a), read_evaluation(b)], rename={"tli-b-deranged": "tli-b"})
    assert combine_main([str(a), str(b), "--out", str(tmp_path / "x"), "--rename", "tli-b"]) == 2
    with pytest.raises(ConfigError, match="not both"):
        evaluate_job(eval_cfg(f"adapter={folds[0]}", f"+adapters.tli=[{folds[1]}]", out=tmp_path / "f"))


@pytest.mark.slow
def test_representations_on_unseen_words_are_the_held_out_folds_pairs_pooled(pooled, eval_cfg):
    """Each adapter's "unseen" split is its held-out fold's training pairs; a pair's cosines there equal its cosines in
    the training split (the same vectors and centring; only the retrieval pools differ); the pooled test runs over
    every training pair once, in (fold, seed) strata, and the study figure reads it."""
    summary, tmp_path = pooled
    train = load_lexicons(eval_cfg().data).train
    for i in range(K):
        _, held = fold_split(train, K, i, 0)
        for variant in ("raw", "centred"):
            assert summary["runs"][f"run{i}"]["unseen"][32][variant]["paired"]["pool_mrr"]["n"] == len(held)
        assert any(line.startswith("unseen (held-out fold) pairs, index 32, centred vectors")
                   for line in summary["runs"][f"run{i}"]["reading"][32])
        assert any(t["claim"].startswith("unseen, index 32") for t in summary["runs"][f"run{i}"]["claims"]["tests"])
    rows = list(csv.DictReader((tmp_path / "eval" / "pairs.csv").open(encoding="utf-8")))
    unseen = [r for r in rows if r["split"] == "unseen"]
    assert sorted((r["source"], r["target"]) for r in unseen) == sorted((p.source, p.target) for p in train.pairs)
    same = {(r["run"], r["source"], r["target"]): r for r in rows if r["split"] == "train"}
    for r in unseen:
        t = same[(r["run"], r["source"], r["target"])]
        for column in ("cos_before", "cos_after", "centred_cos_before", "centred_cos_after"):
            assert float(r[column]) == pytest.approx(float(t[column]), abs=1e-6)
    cell = summary["unseen_alignment"]["crossfit"][32]["centred"]["pool_mrr"]
    assert cell["n"] == len(train.pairs) and set(cell["strata"]) == {f"fold {f} seed 0" for f in range(K)}
    assert cell["mean_before"] == pytest.approx(sum(float(r["centred_pool_mrr_before"]) for r in unseen) / len(unseen))
    assert cell["mean_after"] == pytest.approx(sum(float(r["centred_pool_mrr_after"]) for r in unseen) / len(unseen))
    assert "## Representations on unseen words (cross-fitted)" in (tmp_path / "eval" / "report.md").read_text()
    point = points_from_summary(json.loads((tmp_path / "eval" / "summary.json").read_text()), layer=32)[0]
    gains = [summary["runs"][f"run{i}"]["unseen"][32]["centred"]["after"]["pool_p_at_1"]
             - summary["runs"][f"run{i}"]["unseen"][32]["centred"]["before"]["pool_p_at_1"] for i in range(K)]
    assert point.alignment_split == "unseen" and point.alignment == pytest.approx(sum(gains) / K)


def _split_evaluation(src, out, runs: set[str], rename: dict[str, str] | None = None):
    """A copy of evaluation `src` that holds only `runs` (and the nn_shots rows of their folds): what evaluate.py
    would have written for those adapters alone (with the recipes named as `rename` says)."""
    rename = rename or {}

    def renamed(run):
        recipe, sep, i = run.rpartition("/")
        return f"{rename[recipe]}/{i}" if sep and recipe in rename else run

    summary = json.loads((src / "summary.json").read_text())
    kept = {renamed(name): run for name, run in summary["runs"].items() if name in runs}
    with (src / "translation.csv").open(encoding="utf-8") as f:
        folds = {r["fold"] for r in csv.DictReader(f) if r["run"] in runs}
    summary.update(runs=kept)
    summary["settings"]["adapters"] = [run["adapter"] for run in kept.values()]
    if summary.get("recipes"):
        summary["recipes"] = {rename.get(r, r): cell for r, cell in summary["recipes"].items()}
    out.mkdir()
    (out / "summary.json").write_text(json.dumps(summary))
    for table in ("translation.csv", "pairs.csv"):
        with (src / table).open(encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = [{**r, "run": renamed(r["run"])} for r in reader
                    if r["run"] in runs or (r["run"] == "nn_shots" and r["fold"] in folds)]
        with (out / table).open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, reader.fieldnames, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    return out


def test_separate_evaluations_combine_as_one(pooled, tmp_path):
    """`python -m tli.eval.combine` on the evaluation of fold 0's adapter and that of folds 1-2's gives the pooled
    behaviour, null and unseen-word sections of the one evaluation of all three; overlapping or unlike evaluations
    are refused with the culprit named."""
    summary, out = pooled
    src = out / "eval"
    a = _split_evaluation(src, tmp_path / "a", {"run0"})
    b = _split_evaluation(src, tmp_path / "b", {"run1", "run2"})
    assert combine_main([str(a), str(b), "--out", str(tmp_path / "both")]) == 0
    combined = json.loads((tmp_path / "both" / "summary.json").read_text())
    one = json.loads(json.dumps(summary))  # the evaluation of all three, with JSON's keys
    for section in ("crossfit", "nulls", "unseen_alignment"):
        assert combined[section] == one[section], section
    assert set(combined["runs"]) == {"0.run0", "1.run1", "1.run2"}
    assert combined["settings"]["sources"] == [str(a), str(b)]
    report = (tmp_path / "both" / "report.md").read_text()
    assert "| cross-fitted pool | unseen | Swahili->English |" in report and "3 adapters from 2 evaluations" in report
    with pytest.raises(EvaluationError, match="fold 0, seed 0 as .* did"):
        combine([read_evaluation(a), read_evaluation(a)])
    unlike = json.loads((b / "summary.json").read_text())
    unlike["settings"]["pooling"] = "last"
    (b / "summary.json").write_text(json.dumps(unlike))
    with pytest.raises(EvaluationError, match="settings.pooling = 'last' differs"):
        combine([read_evaluation(a), read_evaluation(b)])
    assert combine_main([str(a), str(a), "--out", str(a)]) == 2  # the output over a source
    assert combine_main([str(tmp_path / "none"), str(a), "--out", str(tmp_path / "x")]) == 2


def test_evaluations_of_different_layers_combine_on_the_indices_they_share(pooled, tmp_path):
    """Sources that scored different hidden-state indices (recipes of different k) are refused, with the option named;
    with --shared-layers they pool on the shared indices only: the same figures as the one evaluation of all three,
    the source's extra index left out, and the settings say which indices each source scored."""
    summary, out = pooled
    src = out / "eval"
    a = _split_evaluation(src, tmp_path / "a", {"run0"})
    b = _split_evaluation(src, tmp_path / "b", {"run1", "run2"})
    layers = summary["settings"]["layers"]
    extra = max(layers) + 7  # an index only b scored: its rows must not reach the pooled figures
    moved = json.loads((b / "summary.json").read_text())
    moved["settings"]["layers"] = [*layers, extra]
    (b / "summary.json").write_text(json.dumps(moved))
    with (b / "pairs.csv").open(encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    with (b / "pairs.csv").open("a", encoding="utf-8", newline="") as f:
        csv.DictWriter(f, reader.fieldnames, lineterminator="\n").writerows(
            {**r, "layer": extra, "centred_pool_mrr_after": 0.0} for r in rows if int(r["layer"]) == layers[0])
    with pytest.raises(EvaluationError, match="settings.layers = .* differs .*--shared-layers"):
        combine([read_evaluation(a), read_evaluation(b)])
    assert combine_main([str(a), str(b), "--out", str(tmp_path / "both"), "--shared-layers"]) == 0
    combined = json.loads((tmp_path / "both" / "summary.json").read_text())
    one = json.loads(json.dumps(summary))
    assert combined["unseen_alignment"] == one["unseen_alignment"]
    assert all(str(extra) not in by_layer for by_layer in combined["unseen_alignment"].values())
    assert combined["settings"]["layers"] == layers
    assert combined["settings"]["layers_by_source"] == [layers, [*layers, extra]]
    report = (tmp_path / "both" / "report.md").read_text()
    assert f"the indices all sources scored, of {[layers, [*layers, extra]]}" in report
    for unshared in ([extra], None):  # no index in common; an older summary without settings.layers
        moved["settings"]["layers"] = unshared
        (b / "summary.json").write_text(json.dumps(moved))
        with pytest.raises(EvaluationError, match="share no scored index"):
            combine([read_evaluation(a), read_evaluation(b)], shared_layers=True)
