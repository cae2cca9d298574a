"""The nearest-neighbour-shots null at index 12 against index 18, on the same unseen queries.

The null picks its shots by the base model's centred word vectors at the probe's target index, which is the scored
adapters' own k: 12 in the middle-layer families' evaluations, 18 in KL 30's. Both ran on the same three seeds' folds
0-2, so the two nulls answered the same 387 queries per direction. Run from the repository root:
    python docs/study/nn_shots_layer.py
"""
import csv
from pathlib import Path

from tli.eval.pooled import pooled_translation

ROOT = Path(__file__).parent / "families_crossfit"


def nn_rows(family: str) -> dict[tuple, dict]:
    """{(seed, fold, direction, word): row} of the nn_shots null's unseen queries over the family's three seeds."""
    out = {}
    for ev in (f"eval_{family}", f"eval_{family}-s1", f"eval_{family}-s2"):
        for r in csv.DictReader(open(ROOT / ev / "eval" / "translation.csv", encoding="utf-8")):
            if r["run"] == "nn_shots" and r["split"] == "unseen":
                out[r["seed"], r["fold"], r["direction"], r["source"]] = r
    return out


at12, at18 = nn_rows("k12"), nn_rows("kl30")
assert at12.keys() == at18.keys(), "the two evaluations scored different queries"
rows = [{"source": k[3], "direction": k[2], "split": "unseen", "fold": k[1], "seed": k[0],
         "correct_before": at18[k]["correct_after"] == "True", "correct_after": at12[k]["correct_after"] == "True"}
        for k in at12]
print("nearest-neighbour shots at index 18 (before) against index 12 (after), unseen words, three seeds")
for direction, cell in pooled_translation(rows)["unseen"].items():
    c = cell["correct"]
    seeds = ", ".join(f"{k} {100 * v['effect']:+.1f}" for k, v in sorted(cell["per_seed"].items()))
    print(f"{direction}: {cell['accuracy_before']:.3f} -> {cell['accuracy_after']:.3f} over {c['n']} queries, "
          f"{c['c']} gained / {c['b']} lost, stratified exact p = {c['exact_p']:.2g} ({seeds} points)")
