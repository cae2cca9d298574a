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
import csv

from tli.eval.pooled import pooled_translation


def rows_of(run: str, paths: list[str], split: str) -> dict[tuple, dict]:
    """{(seed, fold, direction, word): row} of `run`'s queries of `split` in the given translation.csv files."""
    out = {}
    for path in paths:
        with open(path, encoding="utf-8", newline="") as f:
            for r in csv.DictReader(f):
                if r["split"] == split and (r["run"] == run or r["run"].split("/")[0] == run):
                    key = r["seed"], r["fold"], r["direction"], r["source"]
                    if key in out:
                        raise SystemExit(f"{path}: {run} answers {key} twice")
                    out[key] = r
    return out


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
for side in ("--before", "--after"):
    parser.add_argument(side, nargs="+", required=True, metavar="LABEL RUN CSV",
                        help="a label, a run, its translation.csv files")
parser.add_argument("--split", default="unseen", help="unseen (default) or control")
args = parser.parse_args()
(lb, rb, *pb), (la, ra, *pa) = args.before, args.after
before, after = rows_of(rb, pb, args.split), rows_of(ra, pa, args.split)
if not before or before.keys() != after.keys():
    raise SystemExit(f"the runs scored different queries: {len(before)} against {len(after)}, "
                     f"{len(before.keys() & after.keys())} shared")
rows = [{"source": k[3], "direction": k[2], "split": args.split, "fold": k[1], "seed": k[0],
         "correct_before": before[k]["correct_after"] == "True", "correct_after": after[k]["correct_after"] == "True"}
        for k in after]
print(f"{lb} (before) against {la} (after), {args.split} words")
for direction, cell in pooled_translation(rows)[args.split].items():
    c, w = cell["correct"], cell["by_word"]
    seeds = ", ".join(f"{k} {100 * v['effect']:+.1f}" for k, v in sorted(cell["per_seed"].items()))
    print(f"{direction}: {cell['accuracy_before']:.3f} -> {cell['accuracy_after']:.3f} over {c['n']} queries, "
          f"{c['c']} gained / {c['b']} lost, stratified exact p = {c['exact_p']:.2g} ({seeds} points); "
          f"by word {w['n_up']} up / {w['n_down']} down, p = {w['p']:.2g}")
