"""Several evaluations read as one: the pooled behaviour and unseen-word figures of evaluations run separately (one
per seed, say) on the same model, lexicons, held-out text and settings, exactly as one `evaluate.py` call on all
their adapters would give them (the same functions on the union of their rows; the Holm family is the comparisons
of the combined report).

    python -m tli.eval.combine <eval dir> <eval dir> [...] --out <dir>

An eval dir is `<run or sweep dir>/eval` (or the directory above it). Each source's runs keep their recipe
("<recipe>/<i>" becomes "<recipe>/<source>.<i>"); rows are matched by (split, direction, word, fold, seed) as in
`tli.eval.recipes`, so the sources must score different (fold, seed) strata: the same stratum of one recipe in two
sources is an error, and so is a setting that differs. Writes <dir>/summary.json and <dir>/report.md.

Evaluations that scored different hidden-state indices (`eval.layers`; by default the adapter's target layer and the
last, so recipes of different k) are refused unless `--shared-layers` is given: then only the indices every source
scored are pooled, and the combined settings say so ("layers" the shared ones, "layers_by_source" each source's).

A recipe named differently in two evaluations (`kl30` in one seed's, `kl30-s1` in the next) pools under one name
with `--rename kl30-s1=kl30 --rename kl30-s1-deranged=kl30-deranged`: the renaming is applied to every source before
the rows are matched.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tli.errors import TLIError
from tli.eval.headline import behaviour_table
from tli.eval.recipe_alignment import compare_alignment, recipe_alignment_section
from tli.eval.recipes import behaviour_summary, recipe_of
from tli.eval.saved import Evaluation, EvaluationError, read_evaluation
from tli.eval.sections import unseen_alignment_section
from tli.eval.unseen import pooled_alignment
from tli.io import atomic_write_json, atomic_write_text

# settings that must agree for rows to pool (file paths may differ; their checksums may not)
SAME = ("model", "revision", "quantization", "behaviour_quantization", "pooling", "template", "metrics", "layers")


def _checksums(settings: dict) -> dict:
    """What a setting's files contain, not where they were: the lexicons' and held-out texts' sha256."""
    lexicons = {split: info.get("sha256") for split, info in (settings.get("lexicons") or {}).items()}
    heldout = {lang: info.get("sha256") for lang, info in (settings.get("lm_loss") or {}).items()}
    t = dict(settings.get("translation") or {})
    t.pop("words", None)  # which words were scored follows from the lexicons and folds
    t.pop("generation_batch_size", None)  # batching changes no answer
    return {"lexicons": lexicons, "lm_loss": heldout, "translation": t}


def check_compatible(evaluations: Sequence[Evaluation], shared_layers: bool = False) -> None:
    """Every setting of SAME (but "layers" with `shared_layers`) and every file checksum agrees with the first's."""
    keys = [k for k in SAME if not (shared_layers and k == "layers")]
    first = evaluations[0]
    ref = {**{k: first.summary["settings"].get(k) for k in keys}, **_checksums(first.summary["settings"])}
    for e in evaluations[1:]:
        own = {**{k: e.summary["settings"].get(k) for k in keys}, **_checksums(e.summary["settings"])}
        for key, value in own.items():
            if value != ref[key]:
                hint = " (or pool the indices they share with --shared-layers)" if key == "layers" else ""
                raise EvaluationError(f"{e.path}: settings.{key} = {value!r} differs from {first.path} "
                                      f"({ref[key]!r}); only evaluations of the same model, lexicons, held-out text "
                                      f"and settings combine{hint}")


def shared_layers_of(evaluations: Sequence[Evaluation]) -> list[int]:
    """The hidden-state indices every source scored, in order; an error when they share none."""
    layers = [set(e.summary["settings"].get("layers") or ()) for e in evaluations]
    shared = sorted(set.intersection(*layers))
    if not shared:
        raise EvaluationError("--shared-layers: the evaluations share no scored index: " + ", ".join(
            f"{e.path} {sorted(ls)}" for e, ls in zip(evaluations, layers, strict=True)))
    return shared


def _renamed(run: str, source: int, recipes: bool) -> str:
    """A run's name in the combined summary: "<recipe>/<source>.<i>" (the recipe kept), or "<source>.<run>"."""
    if run == "nn_shots":  # the prompt-only null: one per (fold, seed) stratum, like a recipe
        return run
    if not recipes:
        return f"{source}.{run}"
    recipe, _, rest = run.rpartition("/")
    return f"{recipe}/{source}.{rest}"


def _recipe_renamed(run: str, rename: Mapping[str, str]) -> str:
    """"<recipe>/<i>" with its recipe renamed by `rename` (other runs as they are)."""
    recipe, sep, rest = run.rpartition("/")
    return f"{rename[recipe]}/{rest}" if sep and recipe in rename else run


def check_rename(evaluations: Sequence[Evaluation], rename: Mapping[str, str]) -> None:
    """Every recipe to rename is a recipe of some source; "nn_shots" keeps its name; no two recipes of one source
    become one."""
    own = {e.path: {recipe_of(run) for run in e.summary["runs"]} if e.summary.get("recipes") else set()
           for e in evaluations}
    known = set().union(*own.values())
    for old, new in rename.items():
        if old not in known:
            raise EvaluationError(f"--rename {old}={new}: no evaluation has a recipe {old!r} (recipes: "
                                  f"{', '.join(sorted(known)) or 'none: plain adapter lists are not renamed'})")
        if "nn_shots" in (old, new) or not new or "/" in new:
            raise EvaluationError(f"--rename {old}={new}: give a recipe's name (not nn_shots, no '/')")
    for path, recipes in own.items():
        if len({rename.get(r, r) for r in recipes}) < len(recipes):
            raise EvaluationError(f"{path}: --rename would merge two of its recipes ({', '.join(sorted(recipes))})")


def combine(evaluations: Sequence[Evaluation], n_boot: int | None = None, seed: int | None = None,
            rename: Mapping[str, str] | None = None, shared_layers: bool = False) -> dict[str, Any]:
    """The combined summary: "settings" (the first source's, with "sources"), "runs" (every source's, renamed),
    and, from the union of the rows, what `evaluate.py` computes across runs: "recipes", "comparisons",
    "nulls", "crossfit" (`behaviour_summary`), "unseen_alignment" (`pooled_alignment`) and "recipe_alignment"
    (`compare_alignment`). `rename` maps a recipe's name in the sources to its name in the combined summary;
    `shared_layers` pools sources of different `eval.layers` on the indices they all scored ("runs" keep their own)."""
    if len(evaluations) < 2:
        raise EvaluationError("give at least two evaluation directories to combine")
    check_compatible(evaluations, shared_layers)
    layers = shared_layers_of(evaluations) if shared_layers else None
    rename = dict(rename or {})
    check_rename(evaluations, rename)
    kinds = {bool(e.summary.get("recipes")) for e in evaluations}
    if len(kinds) > 1:
        kind = {True: "recipes", False: "adapters"}
        raise EvaluationError("evaluations of recipes (+adapters.<recipe>=[...]) and of plain adapter lists do not "
                              "combine: " + ", ".join(f"{e.path} ({kind[bool(e.summary.get('recipes'))]})"
                                                      for e in evaluations))
    recipes = kinds.pop()
    settings = dict(evaluations[0].summary["settings"])
    n_boot = settings["n_boot"] if n_boot is None else n_boot
    seed = settings["seed"] if seed is None else seed
    translation, pairs, runs, seen = [], [], {}, {}

    def name_of(run: str, source: int) -> str:  # a source's run under its combined name
        return _renamed(_recipe_renamed(run, rename), source, recipes)

    for i, e in enumerate(evaluations):
        names = list(e.summary["runs"])
        for r in e.translation:
            r = {**r, "run": name_of(r.get("run") or names[0], i)}
            who = r["run"] if r["run"] == "nn_shots" else recipe_of(r["run"]) if recipes else "adapters"
            key = (who, r["split"], r["direction"], r["source"], r["fold"], r["seed"])
            if key in seen and seen[key][0] != i:
                kept = seen[key][1]
                if who == "nn_shots" and kept["prediction_after"] == r["prediction_after"]:
                    continue  # the same prompt-only null on the same stratum (evaluations of other recipes): once
                raise EvaluationError(f"{e.path}: {who!r} scored {key[3]!r} ({key[2]}, split {key[1]}) in fold "
                                      f"{key[4]}, seed {key[5]} as {evaluations[seen[key][0]].path} did"
                                      + (" with another answer" if who == "nn_shots" else "")
                                      + ": combine evaluations of different seeds, folds or recipes")
            seen[key] = (i, r)
            translation.append(r)
        pairs += [{**r, "run": name_of(r.get("run") or names[0], i)} for r in e.pairs
                  if layers is None or int(r["layer"]) in layers]
        for name, run in e.summary["runs"].items():
            runs[name_of(name, i)] = run
    crossfit = any(r.get("fold") is not None for r in translation if r["run"] != "nn_shots")
    out: dict[str, Any] = {"settings": {**settings, "sources": [str(e.path) for e in evaluations], "n_boot": n_boot,
                                        "seed": seed, "adapters": [a for e in evaluations
                                                                   for a in e.summary["settings"]["adapters"]]},
                           "runs": runs}
    if layers is not None:
        out["settings"].update(layers=layers, layers_by_source=[e.summary["settings"]["layers"] for e in evaluations])
    out.update(behaviour_summary(translation, recipes, crossfit, n_boot, seed, runs=list(runs) if recipes else ()))
    if any(r["split"] == "unseen" for r in pairs):
        out["unseen_alignment"] = pooled_alignment(pairs, recipes, n_boot, seed)
    if recipes:
        out["recipe_alignment"] = compare_alignment(pairs, n_boot, seed)
    return out


def render(summary: dict) -> str:
    s = summary["settings"]
    lines = ["# Combined TLI evaluations", "",
             f"Model `{s['model']}` (quantization {s['quantization']}), pooling `{s['pooling']}`, layers "
             f"{s['layers']} (Hugging Face hidden-state indices"
             + (f"; the indices all sources scored, of {s['layers_by_source']}" if s.get("layers_by_source") else "")
             + f"), {len(s['adapters'])} adapters from "
             f"{len(s['sources'])} evaluations, pooled as one; bootstrap {s['n_boot']} resamples, seed {s['seed']}.",
             "", *[f"- `{src}`" for src in s["sources"]], ""]
    table = behaviour_table(summary)
    if table:
        lines.append(table)
    if summary.get("unseen_alignment"):
        lines.append(unseen_alignment_section(summary["unseen_alignment"]))
    if summary.get("recipe_alignment"):
        lines.append(recipe_alignment_section(summary["recipe_alignment"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tli.eval.combine", description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_dirs", nargs="+", help="evaluation directories (<run or sweep dir>/eval)")
    parser.add_argument("--out", required=True, help="the directory to write summary.json and report.md to")
    parser.add_argument("--n-boot", type=int, help="bootstrap resamples (default: the sources' eval.n_boot)")
    parser.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                        help="pool recipe OLD of any source under the name NEW (repeatable)")
    parser.add_argument("--shared-layers", action="store_true",
                        help="pool evaluations of different eval.layers on the indices they all scored")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        bad = [r for r in args.rename if r.count("=") != 1]
        if bad:
            raise EvaluationError(f"--rename {bad[0]}: give OLD=NEW (a recipe's name in a source, its name combined)")
        rename = dict(r.split("=") for r in args.rename)
        evaluations = [read_evaluation(d) for d in args.eval_dirs]
        if any(out.resolve() == e.path.resolve() for e in evaluations):
            raise EvaluationError(f"--out {out} is one of the sources: give a new directory")
        summary = combine(evaluations, n_boot=args.n_boot, rename=rename, shared_layers=args.shared_layers)
    except TLIError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "report.md", render(summary) + "\n")
    print(render(summary))
    print(f"wrote {out / 'summary.json'} and {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
