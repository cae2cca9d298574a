"""The evaluation job behind `evaluate.py`: one base model, every adapter toggled on and off, paired statistics."""

from __future__ import annotations

import logging
from pathlib import Path

from tli import __version__
from tli.adapter import AdapterError, check_base_model, read_sidecar
from tli.config import lexicon_info, load_lexicons, model_spec, pooling_spec
from tli.eval_report import plot_layers, plot_scatter, write_report
from tli.evaluation import aggregate, baseline_curve, evaluate_run, split_embeddings
from tli.io import atomic_write_json
from tli.modeling import check_layer, load_config, load_model, num_layers
from tli.scan_job import INDEXING
from tli.tables import print_table, write_csv
from tli.tracking import init_wandb

log = logging.getLogger(__name__)


def _adapters(cfg: dict) -> list[str]:
    adapter = cfg.get("adapter")
    if not adapter:
        raise AdapterError("adapter is required: evaluate.py adapter=PATH (or adapter=[RUN1,RUN2] for several seeds)")
    return [str(a) for a in (adapter if isinstance(adapter, list) else [adapter])]


def check_lexicon_hashes(sidecar: dict, info: dict, adapter: str) -> None:
    """Warn when the lexicons differ from those the adapter was trained on (naming both hashes)."""
    for split in ("train", "control"):
        trained = (sidecar.get("lexicons") or {}).get(split)
        now = info.get(split)
        if trained and now and trained["sha256"] != now["sha256"]:
            log.warning("%s lexicon %s (sha256 %s) differs from the one adapter %s was trained with: %s (sha256 %s)",
                        split, now["file"], now["sha256"][:12], adapter, trained["file"], trained["sha256"][:12])


def evaluate_job(cfg: dict) -> dict:
    """Evaluate adapters from a plain config dict (see conf/evaluate.yaml); returns eval/summary.json's content."""
    out = Path(cfg["paths"]["output_dir"]) / "eval"
    spec, pooling = model_spec(cfg["model"]), pooling_spec(cfg["model"])
    adapters = _adapters(cfg)
    sidecars = [read_sidecar(a) for a in adapters]  # missing or foreign adapters fail before any weights load
    for a, sc in zip(adapters, sidecars, strict=True):
        check_base_model(sc, spec, a)
    lexicons = load_lexicons(cfg["data"])
    info = lexicon_info(lexicons)
    for a, sc in zip(adapters, sidecars, strict=True):
        check_lexicon_hashes(sc, info, a)
    _, config = load_config(spec)
    n_layers = num_layers(config)
    target = sidecars[0]["target_layer"]
    layers = cfg["eval"].get("layers") or [target, n_layers]
    layers = sorted({check_layer(config, int(j), "eval.layers", low=0) for j in layers})
    base, tokenizer = load_model(spec)  # loaded once: every adapter is attached to this one model
    splits = {"train": lexicons.train, **({"control": lexicons.control} if lexicons.control is not None else {})}
    bs = cfg["eval"]["batch_size"]
    # "before" on the bare base model; the adapters are attached to the same model afterwards.
    before = {s: split_embeddings(base, tokenizer, lex, pooling, bs) for s, lex in splits.items()}
    from peft import PeftModel

    model, runs, rows, curves, points = None, {}, [], {}, {}
    for i, adapter in enumerate(adapters):
        name = f"run{i}" if len(adapters) > 1 else "run"
        if model is None:
            model = PeftModel.from_pretrained(base, adapter, adapter_name=name, is_trainable=False)
        else:
            model.load_adapter(adapter, adapter_name=name, is_trainable=False)
        model.set_adapter(name)
        model.eval()
        after = {s: split_embeddings(model, tokenizer, lex, pooling, bs) for s, lex in splits.items()}
        runs[name] = evaluate_run(before, after, layers, cfg["eval"]["n_boot"], cfg["seed"])
        runs[name]["adapter"] = adapter
        for split, lex in splits.items():
            cb, ca = before[split]["pair_cos"], after[split]["pair_cos"]  # (n_layers, P), every index 0..L
            for layer in layers:
                for p, pair in enumerate(lex.pairs):
                    rows.append({"run": name, "split": split, "source": pair.source, "target": pair.target,
                                 "layer": layer, "cos_before": float(cb[layer, p]), "cos_after": float(ca[layer, p])})
            if i == 0:
                curves[split] = (list(range(cb.shape[0])), cb.mean(1).tolist(), ca.mean(1).tolist(),
                                 baseline_curve(before[split]), baseline_curve(after[split]))
                points[split] = (cb[n_layers].tolist(), ca[n_layers].tolist())
    summary = {
        "settings": {"model": spec.name_or_path, "revision": spec.revision, "quantization": spec.quantization,
                     "pooling": pooling.mode, "template": pooling.template, "adapters": adapters,
                     "target_layer": target, "layers": layers, "indexing": INDEXING, "n_boot": cfg["eval"]["n_boot"],
                     "seed": cfg["seed"], "lexicons": info, "tli_version": __version__},
        "runs": runs,
        "aggregate": aggregate(list(runs.values()), layers) if len(runs) > 1 else {},
    }
    write_csv(rows, out / "pairs.csv", ["run", "split", "source", "target", "layer", "cos_before", "cos_after"])
    atomic_write_json(out / "summary.json", summary)
    write_report(summary, out / "report.md")
    title = f"{spec.name_or_path} ({spec.quantization}), pooling={pooling.mode}"
    plot_layers(curves, out / "layers.png", title)
    plot_scatter(points, out / "scatter.png", f"per-pair cosine at layer {n_layers}: {title}")
    for name, run in runs.items():
        table = [{"split": s, "layer": int(layer), **r} for s in splits for layer, r in run[s].items()]
        print_table(table, ["split", "layer", "n", "mean_before", "mean_after", "delta", "p", "margin_before",
                            "margin_after", "p_at_1_before", "p_at_1_after"], title=f"{name}: {run['adapter']}")
        for layer, d in run.get("targeted", {}).items():
            print(f"[{name}] layer {layer}: {d['reading']}")
    if (cfg.get("logger") or {}).get("type") == "wandb":
        _log_wandb(cfg, summary, out)
    print(f"wrote {out}")
    return summary


def _log_wandb(cfg: dict, summary: dict, out: Path) -> None:
    import wandb

    run = init_wandb(cfg["logger"], cfg, cfg["paths"]["output_dir"], name="evaluate", job_type="evaluate")
    try:
        flat = {f"eval/{split}/{k}@{layer}": v for r in summary["runs"].values() for split in ("train", "control")
                for layer, stats in r.get(split, {}).items() for k, v in stats.items() if isinstance(v, (int, float))}
        run.summary.update(flat)
        rows = [{"run": name, "split": split, "layer": int(layer), **{k: v for k, v in stats.items()
                                                                      if isinstance(v, (int, float))}}
                for name, r in summary["runs"].items() for split in ("train", "control")
                for layer, stats in r.get(split, {}).items()]
        columns = sorted({k for row in rows for k in row}, key=lambda k: (k not in ("run", "split", "layer"), k))
        run.log({"eval/table": wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows]),
                 "eval/report": wandb.Html("<pre>" + (out / "report.md").read_text() + "</pre>"),
                 "eval/layers": wandb.Image(str(out / "layers.png")),
                 "eval/scatter": wandb.Image(str(out / "scatter.png"))})
    finally:
        run.finish()
