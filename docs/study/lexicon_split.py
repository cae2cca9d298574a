"""The training lexicon's translation rows split into the words a run trained on and its validation words.

An evaluation's "train" split is the whole training lexicon (the paper's convention), validation words included; a
run never trains on its validation words (`data.val_fraction`, drawn by seed). This prints, per run and direction,
the trained and the validation words' accuracy before -> after with the exact McNemar test, from a committed
translation.csv. Run from the repository root, e.g.
    python docs/study/lexicon_split.py docs/study/swahili_translation/translation/translation.csv \
        --lexicon bundled:sw_en/train.json --val-fraction 0.1 --seed 0
"""
import argparse
import csv

from scipy.stats import binomtest

from tli.data.lexicon import read_lexicon
from tli.data.splits import split_validation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("translation_csv")
    parser.add_argument("--lexicon", required=True, help="the training lexicon (bundled:NAME or a path)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="data.val_fraction of the runs")
    parser.add_argument("--seed", type=int, required=True, help="the runs' seed (it draws the validation words)")
    args = parser.parse_args()
    _, val = split_validation(read_lexicon(args.lexicon), args.val_fraction, args.seed)
    val_words = {p.source for p in val}  # the lexicon's source-language words held out for validation
    with open(args.translation_csv, encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train" and r["seed"] in ("", str(args.seed))]
    src_lang = rows[0]["direction"].split("->")[0] if rows else ""
    print(f"{len(val)} validation pairs ({len(val_words)} words) of seed {args.seed}")
    for run in dict.fromkeys(r["run"] for r in rows):
        for direction in dict.fromkeys(r["direction"] for r in rows):
            # the source-language word of a row: the query in src->tgt, the gold answer in tgt->src
            word = "source" if direction.startswith(src_lang + "->") else "target"
            for part, held in (("trained", False), ("validation", True)):
                cell = [r for r in rows if r["run"] == run and r["direction"] == direction
                        and (r[word] in val_words) == held]
                b = sum(r["correct_before"] == "True" and r["correct_after"] == "False" for r in cell)
                c = sum(r["correct_before"] == "False" and r["correct_after"] == "True" for r in cell)
                p = binomtest(c, b + c).pvalue if b + c else 1.0
                before = sum(r["correct_before"] == "True" for r in cell)
                after = sum(r["correct_after"] == "True" for r in cell)
                print(f"{run:12s} {part:10s} {direction:18s} {len(cell):4d} words: {before} -> {after} "
                      f"({b} lost, {c} gained; exact McNemar p = {p:.2g})")


if __name__ == "__main__":
    main()
