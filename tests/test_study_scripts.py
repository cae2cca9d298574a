"""docs/study/matched_rows.py: two runs' committed answers matched query by query and tested as tli.eval.pooled does."""

import csv
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "docs" / "study" / "matched_rows.py"
COLUMNS = ["run", "split", "direction", "source", "target", "prediction_after", "correct_after", "fold", "seed"]


def write_rows(path: Path, run: str, answers: dict[tuple[int, int, str], bool]) -> Path:
    """translation.csv rows of `run` on unseen Korean->English words: {(seed, fold, word): correct}."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for (seed, fold, word), ok in answers.items():
            w.writerow([run, "unseen", "Korean->English", word, "x", "x", ok, fold, seed])
            w.writerow([run, "control", "Korean->English", word, "x", "x", True, fold, seed])  # another split: ignored
    return path


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_matched_rows_counts_and_tests_the_matched_answers(tmp_path):
    words = [f"w{i}" for i in range(12)]
    keys = [(seed, fold, w) for seed in (0, 1) for fold in (0, 1) for w in words]
    before = {k: k[2] in words[:6] for k in keys}                                  # 6 of 12 right in every stratum
    after = {k: k[2] in words[:6] or (k[2] in words[6:9] and k[0] == 0) for k in keys}  # seed 0 gains 3 per fold
    a = write_rows(tmp_path / "a.csv", "nn_shots", before)
    b1 = write_rows(tmp_path / "b1.csv", "rec/0", {k: v for k, v in after.items() if k[1] == 0})
    b2 = write_rows(tmp_path / "b2.csv", "rec/1", {k: v for k, v in after.items() if k[1] == 1})
    out = run_script("--before", "prompting", "nn_shots", str(a), "--after", "recipe", "rec", str(b1), str(b2))
    assert out.returncode == 0, out.stderr
    # by hand: 6 discordant answers, all gains, in any strata: two-sided exact p = 2 * 0.5**6
    line = out.stdout.splitlines()[1]
    assert line.startswith("Korean->English: 0.500 -> 0.625 over 48 queries, 6 gained / 0 lost")
    assert f"stratified exact p = {2 * 0.5**6:.2g}" in line
    assert "seed 0 +25.0, seed 1 +0.0 points" in line and "by word 3 up / 0 down" in line


def test_matched_rows_refuses_runs_that_scored_different_queries(tmp_path):
    a = write_rows(tmp_path / "a.csv", "nn_shots", {(0, 0, "w1"): True, (0, 0, "w2"): False})
    b = write_rows(tmp_path / "b.csv", "rec/0", {(0, 0, "w1"): True})
    out = run_script("--before", "a", "nn_shots", str(a), "--after", "b", "rec", str(b))
    assert out.returncode != 0 and "the runs scored different queries: 2 against 1, 1 shared" in out.stderr
    out = run_script("--before", "a", "nn_shots", str(a), str(a), "--after", "b", "rec", str(b))
    assert out.returncode != 0 and "answers (0, 0, 'Korean->English', 'w1') twice" in out.stderr
