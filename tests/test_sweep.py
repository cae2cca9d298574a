"""The sweep summary with a harm budget (issue 16): disqualified jobs (harm above objective.max_harm) are marked and
never best, the Pareto front of (alignment higher, harm lower) matches a brute-force computation, metrics.json files
from before the budget summarise exactly as they did; and train.py returns the objective, or (alignment, harm) to a
multi-objective sweeper (hparams_search=optuna_harm)."""

import csv
import itertools
import json
import os
import random
import subprocess
import sys

import pytest
from helpers import FAST_CPU, HARM_TEXT, ROOT

from tli.errors import ConfigError
from tli.jobs.sweep import collect, pareto_front, sweep_value, sweeper_directions, write_summary

NAME = "val/centred/pool_mrr@18"


def _job(sweep, job: str, overrides: list[str], metrics: dict | None = None, error: str = "") -> None:
    (sweep / job / ".hydra").mkdir(parents=True)
    (sweep / job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is None:
        (sweep / job / "failed.json").write_text(json.dumps({"job": job, "overrides": overrides, "error": error}))
    else:
        (sweep / job / "metrics.json").write_text(json.dumps(metrics))


def _metrics(alignment: float, harm: float, budget: float | None = 0.02, **more) -> dict:
    """A metrics.json of the contract: objective null when the harm is above the budget."""
    admissible = budget is None or harm <= budget
    return {"objective_name": NAME, "objective": alignment if admissible else None, "alignment": alignment,
            "harm": harm, "max_harm": budget, "admissible": admissible,
            "metrics": {NAME: alignment, "val/harm": harm, "val/nll/Swahili": 4.0, "val/nll/English": 3.0,
                        "val/nll_change/Swahili": harm, "val/nll_change/English": harm / 2}, **more}


def _csv(sweep) -> list[dict]:
    return list(csv.DictReader((sweep / "sweep_summary.csv").open()))


def test_the_best_skips_disqualified_jobs(tmp_path):
    text_used = {"val_text": {"Swahili": "24 written sentences", "English": "24 written sentences"}}
    _job(tmp_path, "0", ["optim.lr=1e-3"], _metrics(0.80, 0.010, **text_used))
    _job(tmp_path, "1", ["optim.lr=2e-3"], _metrics(0.95, 0.050))  # the highest alignment, above the budget
    _job(tmp_path, "2", ["optim.lr=5e-4"], _metrics(0.70, 0.001))
    # Against the contract (an objective despite admissible false): still never best.
    _job(tmp_path, "3", ["optim.lr=3e-3"], {**_metrics(0.99, 0.030), "objective": 0.99})
    _job(tmp_path, "4", ["optim.lr=9"], error="loss is NaN")
    rows = write_summary(tmp_path)
    assert [r["best"] for r in rows] == ["*", "", "", "", ""]
    assert [r.get("admissible") for r in rows] == [True, False, True, False, None]
    table = _csv(tmp_path)
    assert list(table[0])[:11] == ["best", "pareto", "job", "status", "overrides", "objective_name", "objective",
                                   "alignment", "harm", "max_harm", "admissible"]
    assert [(r["job"], r["best"], r["objective"], r["harm"]) for r in table][:2] == [("0", "*", "0.8", "0.01"),
                                                                                     ("1", "", "", "0.05")]
    text = (tmp_path / "sweep_summary.md").read_text()
    assert "budget (objective.max_harm): 2%" in text
    assert "validation text (Swahili: 24 written sentences; English: 24 written sentences) over" in text
    assert "Disqualified (harm above the budget, admissible = no, never best): job(s) 1, 3." in text
    assert f"The alignment column is the objective's value ({NAME}) whatever the harm" in text
    assert "| * | 0 | optim.lr=1e-3 | 0.8000 | 0.8000 | +1.00% | yes | * |" in text
    assert "|  | 1 | optim.lr=2e-3 |  | 0.9500 | +5.00% | **no** |" in text
    assert "## Failed jobs (1 of 5)" in text and "loss is NaN" in text

    # Every job above the budget: no best at all.
    for job in ("0", "2"):
        (tmp_path / job / "metrics.json").write_text(json.dumps(_metrics(0.8, 0.03)))
    assert not any(r["best"] for r in write_summary(tmp_path))


def test_admissible_follows_the_budget_when_the_file_does_not_say(tmp_path):
    harmful = {k: v for k, v in _metrics(0.9, 0.05).items() if k != "admissible"}
    _job(tmp_path, "0", ["a=1"], harmful)
    _job(tmp_path, "1", ["a=2"], {k: v for k, v in _metrics(0.5, 0.05, budget=None).items() if k != "admissible"})
    rows = collect(tmp_path)
    assert [r["admissible"] for r in rows] == [False, True]  # no budget: nothing is disqualified


def test_with_a_translation_objective_the_summary_says_what_the_alignment_column_holds(tmp_path):
    accuracy = "val/translation/accuracy"
    _job(tmp_path, "0", ["a=1"], {**_metrics(0.6, 0.01), "objective_name": accuracy})
    write_summary(tmp_path)
    assert (f"The alignment column is the objective's value ({accuracy}: validation translation, not an alignment "
            "metric) whatever the harm") in (tmp_path / "sweep_summary.md").read_text()


def _brute_front(points):
    return [i for i, (a, h) in enumerate(points)
            if not any(b >= a and g <= h and (b > a or g < h) for j, (b, g) in enumerate(points) if j != i)]


@pytest.mark.parametrize("seed", range(20))
def test_the_pareto_front_matches_brute_force(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 40)
    grid = rng.choice([3, 10, 1000])  # coarse grids make ties in alignment, harm or both
    points = [(rng.randint(0, grid) / grid, rng.randint(0, grid) / grid) for _ in range(n)]
    assert pareto_front(points) == _brute_front(points)


def test_the_pareto_front_of_a_sweep(tmp_path):
    rng = random.Random(0)
    points = [(round(rng.random(), 2), round(rng.random() * 0.05, 3)) for _ in range(12)] + [(0.5, 0.01)] * 2
    for i, (a, h) in enumerate(points):
        _job(tmp_path, str(i), [f"seed={i}"], _metrics(a, h))
    _job(tmp_path, str(len(points)), ["seed=99"], error="boom")
    _job(tmp_path, str(len(points) + 1), ["seed=98"], _metrics(0.1, 0.001) | {"harm": None, "metrics": {}})
    front = {str(i) for i in _brute_front(points)}
    rows = write_summary(tmp_path)
    assert {r["job"] for r in rows if r.get("pareto") == "*"} == front
    assert {r["job"] for r in _csv(tmp_path) if r["pareto"] == "*"} == front
    text = (tmp_path / "sweep_summary.md").read_text()
    section = text.split("## Pareto front", 1)[1].split("## Failed jobs", 1)[0]
    assert f"({len(front)} job(s))" in section
    listed = [line.split("|")[1].strip() for line in section.splitlines()
              if line.startswith("| ") and "job" not in line]
    harms = [points[int(j)][1] for j in listed]
    assert set(listed) == front and harms == sorted(harms)  # by harm


OLD_MD = """# Sweep summary: {sweep}

Objective: val/mrr@2 (higher is better; * = best)

| best | job | overrides | objective | val/mrr@2 | val/p_at_1@2 |
|---|---|---|---|---|---|
|  | 0 | model.target_layer=2 lora.r=4 | 0.5000 | 0.5000 | 0.2500 |
| * | 1 | model.target_layer=2 lora.r=8 | 0.7000 | 0.7000 | 0.5000 |

## Failed jobs (1 of 3)

| job | overrides | error |
|---|---|---|
| 2 | model.target_layer=3 lora.r=8 | boom |
"""

OLD_CSV = """best,job,status,overrides,objective_name,objective,model.target_layer,lora.r,val/mrr@2,val/p_at_1@2,error
,0,finished,model.target_layer=2 lora.r=4,val/mrr@2,0.5,2,4,0.5,0.25,
*,1,finished,model.target_layer=2 lora.r=8,val/mrr@2,0.7,2,8,0.7,0.5,
,2,failed,model.target_layer=3 lora.r=8,,,3,8,,,boom
"""


def test_metrics_files_from_before_the_budget_summarise_as_before(tmp_path):
    """The expected files are what the summary wrote before issue 16, byte for byte."""
    _job(tmp_path, "0", ["model.target_layer=2", "lora.r=4"],
         {"objective_name": "val/mrr@2", "objective": 0.5,
          "metrics": {"val/mrr@2": 0.5, "val/p_at_1@2": 0.25, "train/loss": 1.0}})
    _job(tmp_path, "1", ["model.target_layer=2", "lora.r=8"],
         {"objective_name": "val/mrr@2", "objective": 0.7, "metrics": {"val/mrr@2": 0.7, "val/p_at_1@2": 0.5}})
    _job(tmp_path, "2", ["model.target_layer=3", "lora.r=8"], error="boom")
    write_summary(tmp_path)
    assert (tmp_path / "sweep_summary.md").read_text() == OLD_MD.format(sweep=tmp_path)
    assert (tmp_path / "sweep_summary.csv").read_text() == OLD_CSV

    # An old job beside new ones: no harm, so not on the front, and still the best when its objective is highest.
    _job(tmp_path, "3", ["model.target_layer=2", "lora.r=16"], _metrics(0.6, 0.01) | {"objective_name": "val/mrr@2"})
    rows = write_summary(tmp_path)
    assert [(r["job"], r["best"], r.get("pareto")) for r in rows] == [("0", "", ""), ("1", "*", ""), ("2", "", ""),
                                                                       ("3", "", "*")]


def _sweeper(hparams_search: str | None, *overrides: str):
    """hydra.sweeper of conf/train.yaml composed with Hydra's compose API (as Hydra gives it to the job)."""
    from hydra import compose, initialize_config_dir

    from tli.config import register

    register()
    search = [f"hparams_search={hparams_search}"] if hparams_search else []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", ["model=tiny", *search, *overrides], return_hydra_config=True).hydra.sweeper


def test_train_returns_the_objective_to_a_single_objective_sweeper():
    result = {"objective": 0.8, **_metrics(0.8, 0.01)}
    for search in (None, "optuna", "optuna_triplet"):  # the basic grid sweeper has no direction
        directions = sweeper_directions(_sweeper(search))
        assert directions == ["maximize"]
        assert sweep_value(result, directions) == 0.8
        assert sweep_value(_metrics(0.95, 0.05), directions) is None  # disqualified: Optuna records a failed trial
        assert sweep_value({"failed": "boom", "objective": None}, directions) is None
    old = {"objective_name": "val/mrr@2", "objective": 0.5, "metrics": {"val/mrr@2": 0.5}}
    assert sweep_value(old, ["maximize"]) == 0.5
    assert sweeper_directions() == ["maximize"]  # outside Hydra (train_job called from Python)


def test_train_returns_alignment_and_harm_to_a_multi_objective_sweeper():
    sweeper = _sweeper("optuna_harm")
    directions = sweeper_directions(sweeper)
    assert directions == ["maximize", "minimize"] and sweeper.sampler["_target_"] == "optuna.samplers.TPESampler"
    assert dict(sweeper.params) == dict(_sweeper("optuna").params)  # the single-objective search's space
    assert sweep_value(_metrics(0.8, 0.01), directions) == (0.8, 0.01)
    assert sweep_value(_metrics(0.95, 0.05), directions) == (0.95, 0.05)  # disqualified jobs still map the front
    only_in_metrics = {"objective_name": NAME, "objective": 0.7, "metrics": {NAME: 0.7, "val/harm": 0.004}}
    assert sweep_value(only_in_metrics, directions) == (0.7, 0.004)
    assert sweep_value({"objective_name": "val/mrr@2", "objective": 0.5, "metrics": {}}, directions) is None
    assert sweep_value(_metrics(0.8, float("nan")), directions) is None
    assert sweep_value({"failed": "boom", "objective": None}, directions) is None


def test_the_tuple_is_what_optuna_takes():
    """The pair goes into an Optuna study with the search's directions as the sweeper tells it (values in order)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = sweeper_directions(_sweeper("optuna_harm"))
    study = optuna.create_study(directions=directions)
    for a, h in [(0.8, 0.01), (0.95, 0.05), (0.7, 0.02)]:
        trial = study.ask()
        study.tell(trial, values=[float(v) for v in sweep_value(_metrics(a, h), directions)])
    assert sorted(t.values for t in study.best_trials) == [[0.8, 0.01], [0.95, 0.05]]


@pytest.mark.parametrize("direction", ["minimize", "[maximize,maximize]", "[minimize,maximize]",
                                       "[maximize,minimize,minimize]"])
def test_other_directions_are_refused_before_training(direction):
    sweeper = _sweeper("optuna_harm", f"hydra.sweeper.direction={direction}")
    with pytest.raises(ConfigError, match=r"hydra.sweeper.direction=.*\[maximize, minimize\]"):
        sweeper_directions(sweeper)


def test_the_pareto_front_of_nothing_and_of_one():
    assert pareto_front([]) == [] and pareto_front([(0.1, 0.2)]) == [0]
    assert pareto_front([(0.5, 0.1)] * 3) == [0, 1, 2]
    assert all(pareto_front(list(p)) == _brute_front(list(p))
               for p in itertools.permutations([(0.5, 0.1), (0.6, 0.1), (0.6, 0.2), (0.4, 0.0)]))


@pytest.mark.slow
def test_a_two_trial_multi_objective_search_on_the_tiny_model(tmp_path, tiny_dir, small_lexicons):
    """hparams_search=optuna_harm end to end (about 15 s): train.py returns (alignment, harm) to the sweeper, Optuna
    records each trial's pair as its metrics.json has it, and its Pareto front is the summary's."""
    from omegaconf import OmegaConf

    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason='needs pip install -e ".[cluster]"')
    sweep = tmp_path / "search"
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "model=tiny", "data=sw_en", f"model.name_or_path={tiny_dir}",
           f"data.train_file={small_lexicons[0]}", f"data.control_file={small_lexicons[1]}", "data.batch_size=8",
           FAST_CPU, "hparams_search=optuna_harm", "hydra.sweeper.n_trials=2", "trainer.limit_train_batches=2",
           *HARM_TEXT,
           "trainer.limit_val_batches=1", f"hydra.sweep.dir={sweep}"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = {j.name: json.loads((j / "metrics.json").read_text()) for j in sorted(sweep.glob("*/"))
               if (j / "metrics.json").is_file()}
    assert list(metrics) == ["0", "1"]
    pairs = {job: (m["alignment"], m["harm"]) for job, m in metrics.items()}
    solutions = OmegaConf.to_container(OmegaConf.load(sweep / "optimization_results.yaml"))["solutions"]
    front = {sorted(pairs)[i] for i in pareto_front([pairs[j] for j in sorted(pairs)])}
    assert sorted(tuple(s["values"]) for s in solutions) == sorted(pairs[j] for j in front)
    assert {r["job"] for r in _csv(sweep) if r["pareto"] == "*"} == front
    assert "## Pareto front" in (sweep / "sweep_summary.md").read_text()
