"""Nearest-neighbour shots: the k pool pairs whose query-side word is nearest to the query word in the base model's
(centred) vectors, never a pair sharing a string with the query, the nearest right before the query; and the null
'nn_shots' scores the same queries as the adapters."""

import csv

import torch

from tli.data.lexicon import Pair
from tli.eval.nn_shots import nn_queries
from tli.eval.translation import Query, format_prompt


def _vecs(words, dims):
    return {w: torch.nn.functional.normalize(torch.tensor(d, dtype=torch.float32), dim=0)
            for w, d in zip(words, dims, strict=True)}


def test_nearest_pairs_become_the_shots():
    pool = [Pair("a", "A", "t"), Pair("b", "B", "t"), Pair("c", "C", "t"), Pair("d", "D", "t"), Pair("q", "Q2", "t")]
    vecs = {"src": _vecs(["q", "a", "b", "c", "d"], [[1, 0], [0.9, 0.1], [0.1, 0.9], [0.99, 0.01], [-1, 0]]),
            "tgt": _vecs(["Q", "A", "B", "C", "D", "Q2"], [[0, 1]] * 6)}
    query = Query("control", "X->Y", "q", ("Q",), "Y", (("z", "Z"),), format_prompt([("z", "Z")], "q", "X", "Y"))
    (got,) = nn_queries([query], pool, vecs, "X->Y", ("X", "Y"), k=2)
    # c (0.99) and a (0.9) are nearest; q's own pair is never a shot; the nearest sits right before the query
    assert got.shots == (("a", "A"), ("c", "C"))
    assert got.prompt == format_prompt([("a", "A"), ("c", "C")], "q", "X", "Y")
    assert (got.split, got.direction, got.source, got.targets) == (query.split, query.direction, "q", ("Q",))
    back = Query("control", "Y->X", "Q", ("q",), "X", (), format_prompt([], "Q", "Y", "X"))
    vecs["tgt"] = _vecs(["Q", "A", "B", "C", "D", "Q2"], [[1, 0], [0, 1], [0.8, 0.2], [0.5, 0.5], [1, 0.1], [1, 0]])
    (got,) = nn_queries([back], pool, vecs, "X->Y", ("X", "Y"), k=2)
    assert got.shots == (("B", "b"), ("D", "d"))  # Q2 -> q shares the answer q: skipped; D is then the nearest


def test_the_null_scores_the_adapters_queries(tmp_path, tiny_dir, small_lexicons, eval_cfg):
    from helpers import FAST_CPU, compose, job_overrides

    from tli.jobs.evaluate import evaluate_job
    from tli.jobs.train import train_job

    run = tmp_path / "run"
    train_job(compose("train", [FAST_CPU, *job_overrides(run, tiny_dir, small_lexicons), "data.batch_size=8",
                                "data.val_fraction=0.25", "lora.r=4", "debug=fdr"]))
    summary = evaluate_job(eval_cfg(f"adapter={run / 'adapter'}", "eval.translation=true", "eval.lm_loss=false",
                                    "eval.layers=[32]", out=tmp_path / "e"))
    rows = list(csv.DictReader((tmp_path / "e" / "eval" / "translation.csv").open(encoding="utf-8")))
    by_run = {name: [(r["split"], r["direction"], r["source"], r["prediction_before"]) for r in rows
                     if r["run"] == name] for name in ("nn_shots", "run")}
    assert by_run["nn_shots"] == by_run["run"] and by_run["run"]  # same queries, same random-shot "before"
    nn = summary["nulls"]["nn_shots"]["translation"]
    assert set(nn) >= {"train", "control"}
    report = (tmp_path / "e" / "eval" / "report.md").read_text()
    assert "| nearest-neighbour shots, no training | control |" in report
    assert (tmp_path / "e" / "eval" / "gold_logprob.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from tli.eval.plots import gold_logprob_points

    points = gold_logprob_points([{**r, "gold_logprob_before": float(r["gold_logprob_before"]),
                                   "gold_logprob_after": float(r["gold_logprob_after"])} for r in rows])
    assert set(points) == {"train", "control"}  # the adapter's queries, trained and control apart; not the null
    assert len(points["train"][0]) == sum(r["run"] == "run" and r["split"] == "train" for r in rows)


def test_a_null_scored_once_matches_every_adapters_rows():
    from tli.eval.recipes import compare_recipes, matched_rows

    def row(run, source, ok, fold=None, seed=None):
        return {"run": run, "split": "control", "direction": "X->Y", "source": source, "fold": fold, "seed": seed,
                "correct_after": ok, "correct_before": False}

    recipe = [row("r/0", "a", True, seed=0), row("r/0", "b", False, seed=0), row("r/1", "a", True, seed=1)]
    null = [row("nn_shots", "a", False), row("nn_shots", "b", True)]
    matched = matched_rows(recipe, null)
    assert [(m["source"], m["correct_before"], m["correct_after"]) for m in matched] == \
        [("a", False, True), ("b", True, False), ("a", False, True)]
    cell = compare_recipes(recipe + null, n_boot=200)["pairs"]["r vs nn_shots"]["translation"]["control"]["X->Y"]
    assert (cell["correct"]["n"], cell["correct"]["b"], cell["correct"]["c"]) == (3, 1, 2)
