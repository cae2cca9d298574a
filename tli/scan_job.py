"""The scan job behind `scan.py`: validate settings, load once, scan base (and adapted) model, write the outputs."""

from __future__ import annotations

import logging
from pathlib import Path

from tli import __version__
from tli.adapter import check_base_model, load_adapter, read_sidecar
from tli.audit import format_audit, write_audit
from tli.config import lexicon_info, load_lexicons, model_spec, pooling_spec
from tli.io import atomic_write_json
from tli.modeling import load_config, load_model, num_layers
from tli.plots import plot_layer_curves
from tli.scan import ScanError, ScanSettings, check_layers, recommend, run_scan
from tli.tables import print_table, write_csv
from tli.tracking import init_wandb

log = logging.getLogger(__name__)

CSV_COLUMNS = ["model", "split", "layer", "cosine", "baseline_cosine", "margin", "p_at_1", "mrr"]
CONSOLE_COLUMNS = ["layer", "cosine", "cosine_ci_low", "cosine_ci_high", "baseline_cosine", "margin", "p_at_1",
                   "mrr", "csls_p_at_1", "bos_norm_ratio"]
INDEXING = ("hidden-state index i as in Hugging Face output_hidden_states: 0 = token embeddings, i = output of "
            "decoder block i; the last index has the model's final norm applied")


def scan_job(cfg: dict) -> dict:
    """Run a scan from a plain config dict (see conf/scan.yaml); returns the summary written to scan/summary.json."""
    out = Path(cfg["paths"]["output_dir"]) / "scan"
    spec, pooling = model_spec(cfg["model"]), pooling_spec(cfg["model"])
    scan_cfg = cfg["scan"]
    lexicons = load_lexicons(cfg["data"])  # bad files fail here, before any weights load
    print(format_audit(lexicons))
    _, config = load_config(spec)
    settings = ScanSettings(
        layers=check_layers(scan_cfg.get("layers"), num_layers(config)), batch_size=scan_cfg["batch_size"],
        csls_k=scan_cfg["csls_k"], n_boot=scan_cfg["n_boot"], seed=cfg["seed"], criterion=scan_cfg["criterion"],
        criterion_split=scan_cfg["criterion_split"],
    )
    split_names = ["train"] + (["control"] if lexicons.control is not None else [])
    if settings.criterion_split not in split_names:  # else it would only fail after the whole scan
        raise ScanError(f"scan.criterion_split={settings.criterion_split!r} is not a scanned split; "
                        f"choose one of {', '.join(split_names)}")
    adapter = cfg.get("adapter")
    if adapter:
        check_base_model(read_sidecar(adapter), spec, adapter)
    model, tokenizer = load_model(spec)
    splits = {"train": lexicons.train}
    if lexicons.control is not None:
        splits["control"] = lexicons.control
    rows = run_scan(model, tokenizer, splits, pooling, settings, tag="base")
    summary = {"base": recommend(rows, settings, "base")}
    if adapter:
        model, sidecar = load_adapter(model, adapter, spec)
        rows += run_scan(model, tokenizer, splits, pooling, settings, tag="adapted")
        summary["adapted"] = recommend(rows, settings, "adapted")
        summary["adapter"] = {"path": str(adapter), **sidecar}
    scanned = sorted({r["layer"] for r in rows})
    summary["settings"] = {
        "model": spec.name_or_path, "revision": spec.revision, "quantization": spec.quantization,
        "pooling": pooling.mode, "template": pooling.template, "layers": scanned,
        "indexing": INDEXING, "csls_k": settings.csls_k, "n_boot": settings.n_boot, "seed": settings.seed,
        "lexicons": lexicon_info(lexicons), "tli_version": __version__,
    }
    write_csv(rows, out / "layers.csv", CSV_COLUMNS)
    write_audit(lexicons, out / "audit.json")
    title = f"{spec.name_or_path} ({spec.quantization}), pooling={pooling.mode}"
    plot_layer_curves(rows, out / "layers.png", title)
    atomic_write_json(out / "summary.json", summary)
    for tag in ("base", "adapted") if adapter else ("base",):
        for split in splits:
            sel = [r for r in rows if r["model"] == tag and r["split"] == split]
            print_table(sel, CONSOLE_COLUMNS, title=f"{tag} model, {split} pairs: {title}")
        rec = summary[tag]
        print(f"[{tag}] recommended target layer {rec['recommended_layer']} by {rec['criterion']} "
              f"({rec['recommended_value']:.4f} on {rec['criterion_split']}); raw-cosine argmax is layer "
              f"{rec['raw_cosine_argmax_layer']} (cosine {rec['raw_cosine_max']:.4f}, "
              f"mismatched baseline {rec['baseline_at_raw_argmax']:.4f})")
    if (cfg.get("logger") or {}).get("type") == "wandb":
        _log_wandb(cfg, rows, summary, out)
    print(f"wrote {out}")
    return summary


def _log_wandb(cfg: dict, rows: list[dict], summary: dict, out: Path) -> None:
    import wandb

    run = init_wandb(cfg["logger"], cfg, cfg["paths"]["output_dir"], name="scan", job_type="scan")
    try:
        columns = list(rows[0])
        run.log({"scan/layers": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows]),
                 "scan/plot": wandb.Image(str(out / "layers.png"))})
        run.summary.update({f"scan/{tag}/{k}": v for tag in ("base", "adapted") if tag in summary
                            for k, v in summary[tag].items()})
    finally:
        run.finish()
