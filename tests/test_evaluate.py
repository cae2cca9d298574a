import csv
import json
import logging
import shutil

import pytest
from conftest import compose
from scipy import stats

from tli.adapter import AdapterError
from tli.evaluate_job import evaluate_job
from tli.modeling import ModelLoadError
from tli.scan_job import scan_job
from tli.train_job import train_job

FAST = ["data.batch_size=8", "data.val_fraction=0.25", "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0",
        "trainer.accelerator=cpu", "callbacks.rich_progress_bar=false", "callbacks.progress_bar=false",
        "logger=none", "optim.warmup_steps=1", "optim.lr=5e-3", "lora.r=4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dir, small_lexicons):
    """Two adapters trained one epoch each (seeds 0 and 1) on the small lexicons."""
    runs = []
    for seed in (0, 1):
        out = tmp_path_factory.mktemp(f"train{seed}")
        cfg = compose("train", [f"paths.output_dir={out}", f"model.name_or_path={tiny_dir}",
                                f"data.train_file={small_lexicons[0]}", f"data.control_file={small_lexicons[1]}",
                                f"seed={seed}", *FAST])
        train_job(cfg)
        runs.append(out / "adapter")
    return runs


def eval_cfg(tmp_path, tiny_dir, small_lexicons, *overrides):
    return compose("evaluate", [f"paths.output_dir={tmp_path}", f"model.name_or_path={tiny_dir}",
                                f"data.train_file={small_lexicons[0]}", f"data.control_file={small_lexicons[1]}",
                                "eval.n_boot=500", *overrides])


def test_statistics_equal_scipy_on_the_written_pairs(trained, tmp_path, tiny_dir, small_lexicons):
    summary = evaluate_job(eval_cfg(tmp_path, tiny_dir, small_lexicons, f"adapter={trained[0]}"))
    rows = list(csv.DictReader((tmp_path / "eval" / "pairs.csv").open(encoding="utf-8")))
    assert {r["layer"] for r in rows} == {"2", "32"}  # the adapter's target layer and the last index by default
    for split in ("train", "control"):
        for layer in ("2", "32"):
            sel = [r for r in rows if r["split"] == split and r["layer"] == layer]
            before = [float(r["cos_before"]) for r in sel]
            after = [float(r["cos_after"]) for r in sel]
            got = summary["runs"]["run"][split][layer]
            ref = stats.ttest_rel(after, before)
            assert got["n"] == len(sel) == {"train": 48, "control": 12}[split]
            assert got["t"] == pytest.approx(ref.statistic, rel=1e-5)
            assert got["p"] == pytest.approx(ref.pvalue, rel=1e-4)
            assert got["wilcoxon_p"] == pytest.approx(stats.wilcoxon(after, before).pvalue, rel=1e-4)
            assert got["delta"] == pytest.approx(sum(after) / len(after) - sum(before) / len(before), abs=1e-6)
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["settings"]["layers"] == [2, 32]
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| train | 32 |" in report and "Targeted? layer 32" in report and "nf4" in report
    for png in ("layers.png", "scatter.png"):
        assert (tmp_path / "eval" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_before_values_equal_the_base_scan(trained, tmp_path, tiny_dir, small_lexicons):
    evaluate_job(eval_cfg(tmp_path / "e", tiny_dir, small_lexicons, f"adapter={trained[0]}"))
    scan_job(compose("scan", [f"paths.output_dir={tmp_path / 's'}", f"model.name_or_path={tiny_dir}",
                              f"data.train_file={small_lexicons[0]}", f"data.control_file={small_lexicons[1]}",
                              "scan.layers=[2,32]", "scan.n_boot=100"]))
    pairs = list(csv.DictReader((tmp_path / "e" / "eval" / "pairs.csv").open(encoding="utf-8")))
    scan = list(csv.DictReader((tmp_path / "s" / "scan" / "layers.csv").open(encoding="utf-8")))
    for split in ("train", "control"):
        for layer in ("2", "32"):
            before = [float(r["cos_before"]) for r in pairs if r["split"] == split and r["layer"] == layer]
            row = next(r for r in scan if r["split"] == split and r["layer"] == layer)
            assert sum(before) / len(before) == pytest.approx(float(row["cosine"]), abs=1e-6)


def test_base_weights_load_once_for_several_runs(trained, tmp_path, tiny_dir, small_lexicons, monkeypatch):
    from transformers import AutoModelForCausalLM

    calls = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        calls.append(args[0])
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(counting))
    summary = evaluate_job(eval_cfg(tmp_path, tiny_dir, small_lexicons, f"adapter=[{trained[0]},{trained[1]}]"))
    assert len(calls) == 1
    assert set(summary["runs"]) == {"run0", "run1"}
    agg = summary["aggregate"]["train"]["32"]["delta"]
    deltas = [summary["runs"][r]["train"]["32"]["delta"] for r in ("run0", "run1")]
    assert agg["n"] == 2 and agg["mean"] == pytest.approx(sum(deltas) / 2)
    assert "did" in summary["aggregate"]["targeted"]["32"]
    assert "Across runs" in (tmp_path / "eval" / "report.md").read_text()


def test_bad_input(trained, tmp_path, tiny_dir, small_lexicons, caplog):
    with pytest.raises(AdapterError, match="adapter='/nope/adapter': no such directory"):
        evaluate_job(eval_cfg(tmp_path, tiny_dir, small_lexicons, "adapter=/nope/adapter"))
    with pytest.raises(AdapterError, match="adapter is required"):
        evaluate_job(eval_cfg(tmp_path, tiny_dir, small_lexicons))
    foreign = tmp_path / "foreign"
    shutil.copytree(trained[0], foreign)
    sidecar = json.loads((foreign / "tli_adapter.json").read_text())
    sidecar["base_model"] = "someone/other-model"
    (foreign / "tli_adapter.json").write_text(json.dumps(sidecar))
    with pytest.raises(AdapterError, match=r"trained on base model 'someone/other-model'.*model.name_or_path="):
        evaluate_job(eval_cfg(tmp_path, tiny_dir, small_lexicons, f"adapter={foreign}"))
    with pytest.raises(ModelLoadError, match=r"eval.layers=40 is outside this model's range 0..32"):
        evaluate_job(eval_cfg(tmp_path, tiny_dir, small_lexicons, f"adapter={trained[0]}", "eval.layers=[2,40]"))
    # Different lexicon files: a warning naming both hashes, and the evaluation still runs.
    other = tmp_path / "other_train.json"
    pairs = json.loads(small_lexicons[0].read_text(encoding="utf-8"))[:30]
    other.write_text(json.dumps(pairs, ensure_ascii=False), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="tli.evaluate_job"):
        evaluate_job(eval_cfg(tmp_path, tiny_dir, small_lexicons, f"adapter={trained[0]}", f"data.train_file={other}",
                              "eval.layers=[32]"))
    trained_hash = sidecar["lexicons"]["train"]["sha256"][:12]
    assert any(trained_hash in r.message and "differs" in r.message for r in caplog.records)


def test_wandb_offline_gets_the_report(trained, tmp_path, tiny_dir, small_lexicons):
    evaluate_job(eval_cfg(tmp_path, tiny_dir, small_lexicons, f"adapter={trained[0]}", "logger=wandb",
                          "logger.offline=true", "eval.layers=[32]"))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    assert len(list(runs[0].glob("files/media/images/**/*.png"))) == 2  # per-layer curves and the scatter plot
    assert list(runs[0].glob("files/media/table/**/*.table.json"))  # the statistics table
