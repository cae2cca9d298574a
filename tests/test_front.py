"""The study figure (tli.eval.front): recipe points from a real evaluation of several recipes match its summary.json,
the PNG is written atomically, and the CLI prints the table."""

import json
import math

import pytest
from helpers import FAST_CPU, compose, job_overrides

from tli.eval.front import (
    RecipePoint,
    SummaryError,
    front_figure,
    load_points,
    main,
    mean_ci,
    plot_front,
    points_from_summary,
    translation_counts,
)
from tli.jobs.evaluate import evaluate_job
from tli.jobs.train import train_job

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def recipes(tmp_path_factory, tiny_dir, small_lexicons):
    """(summary.json, eval dir): recipe "a" of two tiny adapters (seeds 0, 1) and "b" of one (seed 2), evaluated
    together with translation and the held-out loss (about 20 s, shared by the module's tests)."""
    runs = []
    for seed in range(3):
        run = tmp_path_factory.mktemp(f"seed{seed}")
        train_job(compose("train", [FAST_CPU, *job_overrides(run, tiny_dir, small_lexicons), "data.batch_size=8",
                                    "data.val_fraction=0.25", "lora.r=4", "trainer.max_steps=3",
                                    "trainer.max_epochs=-1", f"seed={seed}", "optim.lr=5e-3"]))
        runs.append(run / "adapter")
    out = tmp_path_factory.mktemp("recipes")
    evaluate_job(compose("evaluate", [*job_overrides(out, tiny_dir, small_lexicons), "eval.n_boot=200",
                                      f"+adapters.a=[{runs[0]},{runs[1]}]", f"+adapters.b=[{runs[2]}]",
                                      "eval.translation=true", "eval.nn_shots=false", "eval.layers=[32]"]))
    return json.loads((out / "eval" / "summary.json").read_text()), out / "eval"


def _expected(summary, runs):
    """The figures of a recipe, straight from summary.json: per run, centred control pool P@1 after - before at
    index 32, the larger relative NLL change of the two languages, and the control translation cells."""
    align = [r["control"]["32"]["centred"]["after"]["pool_p_at_1"] - r["control"]["32"]["centred"]["before"][
        "pool_p_at_1"] for r in (summary["runs"][n] for n in runs)]
    harm = [max(c["relative_change"] for c in summary["runs"][n]["lm_loss"].values()) for n in runs]
    cells = [c for n in runs for c in summary["runs"][n]["translation"]["control"].values()]
    translation = 100 * sum((c["accuracy_after"] - c["accuracy_before"]) * c["n"] for c in cells) / sum(
        c["n"] for c in cells)
    return align, harm, translation


@pytest.mark.slow
def test_points_match_the_summary(recipes, tmp_path):
    summary, eval_dir = recipes
    points = load_points(eval_dir)
    assert [p.name for p in points] == ["a", "b"] and [p.n_runs for p in points] == [2, 1]
    assert load_points(eval_dir.parent) == points  # the run directory above eval/ works too
    for p, runs in zip(points, (["a/0", "a/1"], ["b/0"]), strict=True):
        align, harm, translation = _expected(summary, runs)
        assert p.layer == 32 and p.translation_split == "control" and p.source == str(eval_dir)
        assert math.isclose(p.alignment, sum(align) / len(align), abs_tol=1e-12)
        assert math.isclose(p.harm, sum(harm) / len(harm), abs_tol=1e-12)
        assert math.isclose(p.translation, translation, abs_tol=1e-9)
    a, b = points
    assert (b.alignment_low, b.alignment_high, b.harm_low, b.harm_high) == (None,) * 4  # one run: no interval
    _, low, high = mean_ci(_expected(summary, ["a/0", "a/1"])[1])
    assert math.isclose(a.harm_low, low) and math.isclose(a.harm_high, high) and low <= a.harm <= high

    out = tmp_path / "fig" / "front.png"
    assert main([str(eval_dir), "--out", str(out)]) == 0
    assert out.read_bytes().startswith(PNG) and not list(out.parent.glob(".*.tmp"))
    # An evaluation without recipes: one point for all its runs, named after its directory.
    plain = {**summary, "recipes": None}
    (point,) = points_from_summary(plain, str(eval_dir), name="sweep")
    assert point.name == "sweep" and point.n_runs == 3
    with pytest.raises(SummaryError, match="index 5 was not reported"):
        load_points(eval_dir, layer=5)


@pytest.mark.slow
def test_the_cli_prints_the_table_and_refuses_a_directory_without_a_summary(recipes, tmp_path, capsys):
    _, eval_dir = recipes
    assert main([str(eval_dir), str(eval_dir), "--out", str(tmp_path / "f.png"), "--budget", "none"]) == 0
    text = capsys.readouterr().out
    assert "alignment gain (P@1 points)" in text and "(control)" in text and f"wrote {tmp_path / 'f.png'}" in text
    assert main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "g.png")]) == 2
    assert "error: cannot read" in capsys.readouterr().err and not (tmp_path / "g.png").exists()


def test_the_figure_is_written_for_any_mix_of_points(tmp_path):
    points = [RecipePoint("tli", 0.55, 0.50, 0.60, 2.55, 2.4, 2.7, -44.1, "unseen", 3, 18, alignment_split="unseen"),
              RecipePoint("tli + KL", 0.30, 0.20, 0.40, 0.015, 0.01, 0.02, 1.5, "unseen", 3, 18,
                          alignment_split="unseen"),
              RecipePoint("one run", 0.05, None, None, 0.001, None, None, None, None, 1, 18),
              RecipePoint("no harm", 0.05, None, None, None, None, None, 0.0, "control", 1, 18)]
    for budget in (0.02, None):
        path = plot_front(points, tmp_path / f"front_{budget}.png", budget=budget)
        assert path.read_bytes().startswith(PNG)
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_colour_bar_is_drawn_only_where_translation_was_scored():
    import matplotlib.pyplot as plt

    scored = RecipePoint("tli", 0.3, 0.2, 0.4, 0.01, 0.0, 0.02, 1.5, "unseen", 3, 18, alignment_split="unseen")
    unscored = RecipePoint("sw", 0.07, 0.03, 0.11, 0.003, 0.001, 0.004, None, None, 3, 18)
    for points, n_axes in (([scored, unscored], 2), ([unscored], 1)):
        fig = front_figure(points)
        assert len(fig.axes) == n_axes  # the plot, and its colour bar where a point has a colour
        plt.close(fig)


def test_translation_counts_on_unseen_words_when_cross_fitted():
    cell = {"n": 10, "accuracy_before": 0.5, "accuracy_after": 0.3}
    run = {"translation": {"unseen": {"x->y": cell, "y->x": {**cell, "n": 30, "accuracy_after": 0.5}},
                           "control": {"x->y": {**cell, "accuracy_after": 0.9}}}}
    split, weighted, n = translation_counts(run)
    assert (split, n) == ("unseen", 40) and math.isclose(weighted, -0.2 * 10)
    assert translation_counts({"translation": {}}) is None and translation_counts({}) is None


def test_mean_ci():
    assert mean_ci([]) == (None, None, None) and mean_ci([0.3]) == (0.3, None, None)
    mean, low, high = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and math.isclose(high - mean, 4.302652729911275 * 1.0 / math.sqrt(3))  # t(0.975, 2)
    assert json.dumps(mean_ci([1.0, float("nan"), 3.0])[0]) == "2.0"  # non-finite values left out


def test_labels_of_points_at_one_place_are_stacked_not_overlapping():
    from tli.eval.front import label_offsets

    anchors, sizes = [(100, 50), (100, 50), (101, 50), (400, 50)], [(60, 10)] * 4
    offsets = label_offsets(anchors, sizes, gap=5)
    assert sorted(offsets[:3], reverse=True) == [5, -5, -15] and offsets[3] == 5  # the far one keeps its place
    boxes = [(x + 5, y + o, x + 65, y + o + 10) for (x, y), o in zip(anchors, offsets, strict=True)]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])
