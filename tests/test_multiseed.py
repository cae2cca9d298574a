import json
import os
import subprocess
import sys

import pytest
from helpers import FAST_CPU, ROOT


@pytest.mark.slow
def test_one_command_trains_seeds_and_writes_the_report_across_them(tmp_path, tiny_dir, small_lexicons):
    sweep = tmp_path / "seeds"
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "model=tiny", "data=sw_en", "multiseed=default", "seed=0,1",
           "hydra.callbacks.seed_report.n_boot=200",
           f"hydra.sweep.dir={sweep}", f"model.name_or_path={tiny_dir}", f"data.train_file={small_lexicons[0]}",
           f"data.control_file={small_lexicons[1]}", "data.batch_size=8", FAST_CPU,
           "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "lora.r=4",
           "optim.lr=5e-3", "optim.warmup_steps=1"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((sweep / "eval" / "summary.json").read_text())
    assert sorted(summary["runs"]) == ["run0", "run1"]
    assert summary["settings"]["adapters"] == [str(sweep / "0" / "adapter"), str(sweep / "1" / "adapter")]
    deltas = [summary["runs"][r]["control"]["32"]["raw"]["paired"]["cosine"]["delta"] for r in ("run0", "run1")]
    agg = summary["aggregate"]["control"]["32"]["raw"]["cosine_paired_delta"]
    assert agg["n"] == 2 and abs(agg["mean"] - sum(deltas) / 2) < 1e-12
    assert deltas[0] != deltas[1]  # the seeds really differ
    report = (sweep / "eval" / "report.md").read_text()
    assert "Across runs" in report and "trained vs control" in report
    assert (sweep / "sweep_summary.csv").exists()
