"""The scan job behind `scan.py`: validate settings, load once, scan the base (and adapted) model, write outputs."""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path

from tli.data.audit import format_audit, write_audit
from tli.data.config import load_lexicons
from tli.errors import ConfigError
from tli.eval.metrics import COUNTS, HEADLINE
from tli.eval.plots import plot_layer_curves
from tli.eval.scan import recommend, run_scan
from tli.eval.tables import print_table, write_csv
from tli.io import atomic_write_json
from tli.jobs.common import provenance, run_dir_lock
from tli.jobs.tracking import init_wandb
from tli.model.adapter import attach, open_adapters
from tli.model.loading import check_layers, load_config, load_model, num_layers

log = logging.getLogger(__name__)

CSV_COLUMNS = ["model", "split", "vectors", "layer", *COUNTS, *HEADLINE]
CONSOLE_COLUMNS = ["layer", "cosine", "baseline_cosine", "margin", "margin_z", "p_at_1", "mrr", "pool_p_at_1",
                   "csls_p_at_1", "bos_norm_ratio"]


def scan_job(cfg) -> dict:
    """Run a scan from a typed config (`tli.config.TLIConfig`); returns the summary written to scan/summary.json."""
    with run_dir_lock(cfg.paths.output_dir):
        return _scan(cfg)


def _scan(cfg) -> dict:
    out = Path(cfg.paths.output_dir) / "scan"
    spec, probe, options = cfg.model.loading(), cfg.model.probe(), cfg.scan
    lexicons = load_lexicons(cfg.data)  # bad files fail here, before any weights load
    print(format_audit(lexicons))
    _, config = load_config(spec)
    if options.layers is not None:
        options = replace(options, layers=check_layers(options.layers, num_layers(config), "scan.layers"))
    splits = {"train": lexicons.train, **({"control": lexicons.control} if lexicons.control is not None else {})}
    if options.criterion_split not in splits:  # else it would only fail after the whole scan
        raise ConfigError(f"scan.criterion_split={options.criterion_split!r} is not a scanned split; choose one "
                          f"of {', '.join(splits)}")
    adapter = cfg.adapter
    if adapter:  # read and checked once, before any weights load
        opened = open_adapters([str(adapter)], spec, probe)
        probe = opened.probe
    model, tokenizer = load_model(spec)
    rows = run_scan(model, tokenizer, splits, probe, options, cfg.metrics, tag="base")
    summary = {"base": recommend(rows, options, "base")}
    if adapter:
        model = attach(model, adapter)
        rows += run_scan(model, tokenizer, splits, probe, options, cfg.metrics, tag="adapted")
        summary["adapted"] = recommend(rows, options, "adapted")
        summary["adapter"] = {"path": str(adapter), **opened.cards[0].to_dict()}
    summary["settings"] = {**provenance(cfg, lexicons), "pooling": probe.pooling, "template": probe.template,
                           "layers": sorted({r["layer"] for r in rows}), "scan": asdict(options)}
    write_csv(rows, out / "layers.csv", CSV_COLUMNS)
    write_audit(lexicons, out / "audit.json")
    title = f"{spec.name_or_path} ({spec.quantization}), pooling={probe.pooling}"
    plot_layer_curves(rows, out / "layers.png", title)
    atomic_write_json(out / "summary.json", summary)
    for tag in ("base", "adapted") if adapter else ("base",):
        for split in splits:
            sel = [r for r in rows if r["model"] == tag and r["split"] == split and r["vectors"] == "raw"]
            print_table(sel, CONSOLE_COLUMNS, title=f"{tag} model, {split} pairs ({sel[0]['n_pairs']} pairs, "
                                                    f"{sel[0]['retrieval_pool']} candidates): {title}")
        print(f"[{tag}] recommended target layer {summary[tag]['recommended_layer']}: {summary[tag]['why']}")
    if cfg.logger.type == "wandb":
        _log_wandb(cfg, rows, summary, out)
    print(f"wrote {out}")
    return summary


def _log_wandb(cfg, rows: list[dict], summary: dict, out: Path) -> None:
    import wandb

    run = init_wandb(cfg.logger, asdict(cfg), cfg.paths.output_dir, job_type="scan")
    try:
        columns = list(rows[0])
        run.log({"scan/layers": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows]),
                 "scan/plot": wandb.Image(str(out / "layers.png"))})
        run.summary.update({f"scan/{tag}/{k}": v for tag in ("base", "adapted") if tag in summary
                            for k, v in summary[tag].items()})
    finally:
        run.finish()
