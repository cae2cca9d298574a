"""Choose among finished training runs by what their adapters do on validation pairs: translation.

    python -m tli.jobs.val_translate RUN_DIR [RUN_DIR ...] [--max-harm 0.02] [--direction forward] [--shots 5]
                                     [--out DIR]

Each run's kept adapter (`<run>/adapter`) translates the run's own validation pairs (the split its config and seed
carve, `tli.training.val_translation`): the figures `objective.metric=translation` would have logged at its last
validation, for runs trained with another objective, without retraining. The base model is scored once per
distinct set of queries. The rule: among the runs whose validation-text harm (`metrics.json`'s `harm`) is at most
`--max-harm`, the highest validation accuracy, ties broken by the mean gold log-probability. Writes
`<out>/val_translation.md` (a table: before -> after, McNemar p of the change per run, the choice) and `.json` (the
same, with every run's rows). It never reads control pairs or held-out sentences.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from tli.config import TLIConfig
from tli.data.config import load_lexicons
from tli.errors import ConfigError, TLIError
from tli.eval.tables import fmt_p, markdown_table
from tli.eval.translation_stats import mcnemar_exact
from tli.io import atomic_write_json, atomic_write_text
from tli.model.adapter import attach, bare
from tli.model.loading import load_model
from tli.training.val_translation import KEYS, ValidationTranslation, figures


def run_config(run: Path) -> TLIConfig:
    """The typed config a run was trained with (`<run>/.hydra/config.yaml`, keys added since default)."""
    path = run / ".hydra" / "config.yaml"
    if not (run / "metrics.json").is_file() or not path.is_file():
        raise ConfigError(f"{run} is not a finished training run (it needs metrics.json and .hydra/config.yaml)")
    saved = OmegaConf.load(path)
    saved.paths.output_dir = str(run)  # was ${hydra:runtime.output_dir}, which needs a running Hydra
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TLIConfig), saved))


def _recipe(run: Path) -> str:
    overrides = OmegaConf.load(run / ".hydra" / "overrides.yaml") if (run / ".hydra" / "overrides.yaml").is_file() \
        else []
    return " ".join(o for o in overrides if not o.startswith(("callbacks.", "hydra.")))


def score_runs(runs: list[Path], *, direction: str = "forward", shots: int = 5) -> list[dict]:
    """One entry per run: its recipe, harm, base and adapted validation-translation figures and rows."""
    models: dict = {}  # model spec -> (PEFT-wrapped) model, tokenizer
    base_rows: dict = {}  # (spec, queries) -> the base model's rows
    out = []
    for i, run in enumerate(runs):
        cfg, metrics = run_config(run), json.loads((run / "metrics.json").read_text())
        spec = cfg.model.loading()
        if repr(spec) not in models:
            models[repr(spec)] = load_model(spec)  # a GPU when there is one
        model, tokenizer = models[repr(spec)]
        lexicon = load_lexicons(cfg.data, with_control=False).train
        vt = ValidationTranslation.for_run(lexicon, cfg.data, cfg.seed, direction=direction, shots=shots,
                                           tokenizer=tokenizer)
        key = (repr(spec), tuple(q.prompt for q in vt.queries))
        if key not in base_rows:
            with bare(model):
                base_rows[key] = vt.rows(model)
        model = attach(model, run / "adapter", name=f"run{i}")
        models[repr(spec)] = (model, tokenizer)
        after = vt.rows(model)
        before = base_rows[key]
        out.append({"run": str(run), "recipe": _recipe(run), "harm": metrics.get("harm"),
                    "objective_name": metrics.get("objective_name"), "objective": metrics.get("alignment"),
                    "n": len(after), "direction": after[0]["direction"] if after else direction,
                    "before": figures(before), "after": figures(after),
                    "mcnemar": mcnemar_exact([r["correct"] for r in before], [r["correct"] for r in after]),
                    "rows": [{"source": b["source"], "target": b["target"], "before": b["prediction"],
                              "after": a["prediction"]} for b, a in zip(before, after, strict=True)]})
    return out


def choose(scored: list[dict], max_harm: float | None) -> dict | None:
    """The rule: the highest validation accuracy within the harm budget, ties by gold log-probability."""
    within = [s for s in scored if max_harm is None or (s["harm"] is not None and s["harm"] <= max_harm)]
    best = max(within, key=lambda s: (s["after"][KEYS[0]], s["after"][KEYS[1]]), default=None)
    for s in scored:
        s["admissible"], s["chosen"] = s in within, s is best
    return best


def table(scored: list[dict], max_harm: float | None) -> str:
    rows = [{"chosen": "**chosen**" if s["chosen"] else "", "run": s["run"], "recipe": s["recipe"],
             "objective": "" if s["objective"] is None else f"{s['objective']:.3f}",
             "harm": "" if s["harm"] is None else f"{100 * s['harm']:+.2f}%",
             "within": "yes" if s["admissible"] else "**no**",
             "accuracy": f"{s['before'][KEYS[0]]:.3f} -> {s['after'][KEYS[0]]:.3f}",
             "gained / lost (McNemar p)": f"{s['mcnemar']['c']} / {s['mcnemar']['b']} ({fmt_p(s['mcnemar']['p'])})",
             "gold log-prob": f"{s['before'][KEYS[1]]:.3f} -> {s['after'][KEYS[1]]:.3f}"} for s in scored]
    head = scored[0] if scored else {"direction": "", "n": 0}
    budget = "none" if max_harm is None else f"{100 * max_harm:g}%"
    return (f"# Validation translation ({head['direction']}, validation pairs of each run: {head['n']} words)\n\n"
            f"Rule: the highest accuracy among the runs within the harm budget ({budget}; harm: metrics.json, the "
            "validation-text NLL rise), ties by gold log-prob. Before: the base model on the same queries.\n\n"
            + markdown_table(rows, list(rows[0]) if rows else ["run"]) + "\n")


def _budget(text: str) -> float | None:
    if text.lower() in ("none", "null"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a relative NLL rise (e.g. 0.02) or none") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tli.jobs.val_translate", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="training run directories")
    parser.add_argument("--max-harm", type=_budget, default=0.02, help="harm budget of the rule (none: no budget)")
    parser.add_argument("--direction", default="forward", choices=["forward", "backward"])
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    budget = args.max_harm
    try:
        scored = score_runs(args.runs, direction=args.direction, shots=args.shots)
    except TLIError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    best = choose(scored, budget)
    text = table(scored, budget)
    atomic_write_text(args.out / "val_translation.md", text)
    atomic_write_json(args.out / "val_translation.json", {"max_harm": budget, "chosen": best and best["run"],
                                                          "runs": scored})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
