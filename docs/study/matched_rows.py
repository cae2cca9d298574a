"""Two runs' answers on the same queries, from committed translation.csv files, pooled as tli.eval.combine would.

For two evaluations that tli.eval.combine cannot pool (their nearest-neighbour nulls differ, or one lacks its
summary.json): the rows of run A ("before") and run B ("after") are matched by (seed, fold, direction, word) and
tested with tli.eval.pooled (stratified exact test over the fold-seed strata, per seed, by word). A run is a recipe's
name (every adapter of it, "<recipe>/<i>") or nn_shots. Run from the repository root, e.g.
    F=docs/study/families_crossfit
    python docs/study/matched_rows.py --before "nn shots at 18" nn_shots $F/eval_kl30{,-s1,-s2}/eval/translation.csv \
        --after "nn shots at 12" nn_shots $F/eval_k12{,-s1,-s2}/eval/translation.csv
"""
import argparse

from tli.eval.pooled import pooled_translation
from tli.eval.recipes import matched_rows, recipe_of
from tli.eval.saved import read_translation_csv


def rows_of(run: str, paths: list[str], split: str) -> list[dict]:
    """`run`'s rows of `split` in the given translation.csv files; a query answered twice is an error."""
    out, seen = [], set()
    for path in paths:
        for r in read_translation_csv(path):
            if r["split"] == split and recipe_of(r["run"]) == run:
                key = r["seed"], r["fold"], r["direction"], r["source"]
                if key in seen:
                    raise SystemExit(f"{path}: {run} answers {key} twice")
                seen.add(key)
                out.append(r)
    return out


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
for side in ("--before", "--after"):
    parser.add_argument(side, nargs="+", required=True, metavar="LABEL RUN CSV",
                        help="a label, a run, its translation.csv files")
parser.add_argument("--split", default="unseen", help="unseen (default) or control")
args = parser.parse_args()
(lb, rb, *pb), (la, ra, *pa) = args.before, args.after
before, after = rows_of(rb, pb, args.split), rows_of(ra, pa, args.split)
rows = matched_rows(after, before)  # "after vs before": before's answers as before, after's as after
if not before or len(rows) != len(before) or len(rows) != len(after):
    raise SystemExit(f"the runs scored different queries: {len(before)} against {len(after)}, {len(rows)} shared")
print(f"{lb} (before) against {la} (after), {args.split} words")
for direction, cell in pooled_translation(rows)[args.split].items():
    c, w = cell["correct"], cell["by_word"]
    seeds = ", ".join(f"{k} {100 * v['effect']:+.1f}" for k, v in sorted(cell["per_seed"].items()))
    print(f"{direction}: {cell['accuracy_before']:.3f} -> {cell['accuracy_after']:.3f} over {c['n']} queries, "
          f"{c['c']} gained / {c['b']} lost, stratified exact p = {c['exact_p']:.2g} ({seeds} points); "
          f"by word {w['n_up']} up / {w['n_down']} down, p = {w['p']:.2g}")
