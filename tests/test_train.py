import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import FAST_CPU, ROOT, CrashAt, SimulatedCrash, compose
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from tli.errors import TrainingError
from tli.jobs.train import train_job
from tli.model.embed import Probe, collate, hidden_states, pool, tokenize_words
from tli.model.lora import LoraConfig
from tli.training.losses import InfoNCE
from tli.training.module import TLIModule
from tli.training.optim import OptimConfig
from tli.training.run_config import TrainConfig


def _adapter(out: Path, name: str = "adapter") -> dict[str, torch.Tensor]:
    return load_file(out / name / "adapter_model.safetensors")


@pytest.mark.slow
def test_fast_dev_run_exports_a_peft_adapter(train_cfg, tmp_path, tiny_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = train_job(train_cfg("debug=fdr"))
    assert json.loads((tmp_path / "metrics.json").read_text())["global_step"] == result["global_step"] == 1
    sidecar = json.loads((tmp_path / "adapter" / "tli_adapter.json").read_text())
    assert sidecar["base_model"] == str(tiny_dir) and sidecar["target_layer"] == 2 and sidecar["pooling"] == "mean"
    assert len(sidecar["lexicons"]["train"]["sha256"]) == 64
    audit = json.loads((tmp_path / "audit.json").read_text())  # the lexicon audit is saved with the run
    assert audit["train"]["sha256"] == sidecar["lexicons"]["train"]["sha256"]
    # Loadable by plain peft on a plain transformers model.
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), tmp_path / "adapter")
    names = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert names and all(".layers.0." in n or ".layers.1." in n for n in names)  # blocks 1..k for k = 2


def make_module(spec, target_layer: int, **options) -> TLIModule:
    module = TLIModule(spec, Probe(target_layer=target_layer), LoraConfig(r=4, alpha=8, dropout=0.0), InfoNCE(0.1),
                       OptimConfig(lr=1e-3), TrainConfig(**options))
    module.configure_model()
    return module


def test_truncated_forward_gives_identical_loss_and_gradients(tiny_spec, tiny_nf4):
    module = make_module(tiny_spec, 3)
    torch.manual_seed(0)
    for n, p in module.backbone.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.2)  # B = 0 at init would hide A's gradient
    words = ["maji", "kitabu", "mwalimu", "nyumba", "water", "book", "teacher", "house"]
    from tli.model.embed import collate, tokenize_words

    tok = tiny_nf4[1]
    batch = {"words": collate(tokenize_words(tok, words), tok.pad_token_id),
             "src_ids": torch.arange(4), "tgt_ids": torch.arange(4)}
    calls = []
    hook = module.backbone.get_base_model().model.layers[3].register_forward_hook(lambda *a: calls.append(1))
    results = {}
    for truncate in (True, False):
        module.options.truncate = truncate
        module.zero_grad()
        calls.clear()
        loss = module.training_step(batch, 0)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}
        results[truncate] = (loss.detach(), grads, len(calls))
    hook.remove()
    assert results[True][2] == 0 and results[False][2] == 1  # block 4 skipped only when truncating
    torch.testing.assert_close(results[True][0], results[False][0])
    assert len(results[True][1]) == 12  # q, v x A, B x blocks 1..3
    for n, g in results[True][1].items():
        assert g.abs().sum() > 0, n
        torch.testing.assert_close(g, results[False][1][n], msg=n)


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 31, 32])
def test_training_reads_exactly_what_validation_scores(tiny_spec, tiny_nf4, k):
    """The truncated training representation at k equals the full model's index k, the one validation and
    evaluation score; at k = L that is the final-normed state (a truncated forward there would skip the norm)."""
    module = make_module(tiny_spec, k)
    tok = tiny_nf4[1]
    words = collate(tokenize_words(tok, ["maji", "kitabu", "water", "book"]), tok.pad_token_id)
    module.eval()
    with torch.no_grad():
        trained = module.layer_k(words)  # (B, D), truncated
        full = module.embed(words, [k])[0]  # validation's view
        states = hidden_states(module.backbone, words)
    torch.testing.assert_close(trained, full)
    assert len(states) == 33
    if k == 32:  # index L is the final norm's output; block L's raw output (what a cut-off forward returns) is not
        config = module.backbone.get_base_model().config
        saved = getattr(config, "tie_last_hidden_states", True)
        config.tie_last_hidden_states = False
        try:
            with torch.no_grad():
                raw_block = pool(hidden_states(module.backbone, words)[32], words, "mean")
        finally:
            config.tie_last_hidden_states = saved
        assert not torch.allclose(trained, raw_block, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("stop_at", [3, 5])  # mid-epoch, and at the end of epoch 0 (4 batches per epoch)
def test_resume_is_exact(train_cfg, tmp_path, stop_at):
    settings = ["trainer.max_steps=7", "trainer.max_epochs=-1", "callbacks.every_n_train_steps=1", "lora.dropout=0.1"]
    straight = tmp_path / "straight"
    train_job(train_cfg(*settings, out=straight))
    resumed = tmp_path / "resumed"
    with pytest.raises(SimulatedCrash):
        train_job(train_cfg(*settings, out=resumed), extra_callbacks=[CrashAt(stop_at)])
    ckpt = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == stop_at
    result = train_job(train_cfg(*settings, "ckpt_path=last", out=resumed))
    assert result["global_step"] == 7
    a, b = _adapter(straight), _adapter(resumed)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_checkpoints_hold_only_trainable_tensors(train_cfg, tmp_path, tiny_dir):
    train_job(train_cfg("trainer.max_steps=2", "callbacks.every_n_train_steps=1"))
    path = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, weights_only=True)  # plain containers only: loads under torch's safe unpickler
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])
    assert len(ckpt["state_dict"]) == 8  # q, v x A, B x blocks 1..2
    assert {"optimizer_states", "lr_schedulers", "loops", "rng"} <= ckpt.keys()
    base_size = (tiny_dir / "model.safetensors").stat().st_size
    assert path.stat().st_size < 0.1 * base_size  # for the 8B: megabytes instead of gigabytes
    assert not list((tmp_path / "checkpoints").glob(".*tmp"))  # atomic writes leave no temp files


BAD_SETTINGS = [
    ("model.target_layer=0", r"model.target_layer=0 is outside this model's range 1..32"),
    ("model.target_layer=33", r"model.target_layer=33 is outside this model's range 1..32"),
    ("loss.temperature=0", r"loss.temperature=0.* must be > 0"),
    ("lora.r=0", r"lora.r=0 must be a positive integer"),
    ("loss.name=focal", r"loss.name='focal' is not a loss; valid: infonce, triplet"),
    ("model.pooling=max", r"model.pooling='max' is not a pooling mode; valid: mean, mean_all, last"),
    ("data.batch_size=1", r"data.batch_size=1 must be >= 2"),
    ("optim.lr=0", r"optim.lr=0.* must be > 0"),
    ("ckpt_path=/nonexistent/x.ckpt", r"ckpt_path='/nonexistent/x.ckpt': no such checkpoint file"),
]


@pytest.mark.parametrize("override,message", BAD_SETTINGS)
def test_bad_settings_fail_before_weights_load(train_cfg, monkeypatch, override, message):
    import tli.training.module

    def no_weights(*args, **kwargs):
        raise AssertionError("model weights were loaded before the settings were checked")

    monkeypatch.setattr(tli.training.module, "load_model", no_weights)
    with pytest.raises(ValueError, match=message):
        train_job(train_cfg(override))


class PoisonAt(Callback):
    """Puts a NaN into one adapter weight at the start of step `step` (after the last good checkpoint)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, *args):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(p for n, p in pl_module.named_parameters() if "lora_A" in n).fill_(float("nan"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(train_cfg, tmp_path):
    with pytest.raises(TrainingError, match=r"non-finite training loss \(nan\) at global step 2"):
        train_job(train_cfg("trainer.max_steps=5", "callbacks.every_n_train_steps=1"), extra_callbacks=[PoisonAt(2)])
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def _cli(tmp_path, tiny_dir, small_lexicons, *overrides, multirun=False):
    return [sys.executable, str(ROOT / "train.py"), *(["-m"] if multirun else []), "model=tiny", "data=sw_en",
            f"model.name_or_path={tiny_dir}",
            f"data.train_file={small_lexicons[0]}", f"data.control_file={small_lexicons[1]}", "data.batch_size=8",
            FAST_CPU, "lora.r=4", *overrides]


@pytest.mark.slow
def test_sigkill_then_resume_from_last_checkpoint(tmp_path, tiny_dir, small_lexicons):
    run_dir = tmp_path / "run"
    cmd = _cli(tmp_path, tiny_dir, small_lexicons, f"hydra.run.dir={run_dir}", "trainer.max_steps=40",
               "trainer.max_epochs=-1", "callbacks.every_n_train_steps=1", "logger=csv")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and torch.load(last, weights_only=True)["global_step"] >= 3:
            break
        time.sleep(0.5)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(last, weights_only=True)["global_step"]  # the last checkpoint is intact and loadable
    assert 3 <= killed_at < 40
    res = subprocess.run(cmd + ["ckpt_path=last"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 40


@pytest.mark.slow
def test_multirun_sweep_writes_summary_table(tmp_path, tiny_dir, small_lexicons):
    sweep = tmp_path / "sweep"
    cmd = _cli(tmp_path, tiny_dir, small_lexicons, "lora.r=2,4", "loss.temperature=0.05,0.1",
               f"hydra.sweep.dir={sweep}", "trainer.max_epochs=5", "trainer.limit_train_batches=2", "logger=none",
               "trainer.limit_val_batches=1",
               multirun=True)
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    import csv

    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert len(rows) == 4
    assert sorted((r["lora.r"], r["loss.temperature"]) for r in rows) == [
        ("2", "0.05"), ("2", "0.1"), ("4", "0.05"), ("4", "0.1")]
    best = [r for r in rows if r["best"] == "*"]
    assert len(best) == 1 and float(best[0]["objective"]) == max(float(r["objective"]) for r in rows)
    assert "val/mrr@32" in (sweep / "sweep_summary.md").read_text()


def test_wandb_offline_run_files(train_cfg, tmp_path):
    train_job(train_cfg("logger=wandb", "logger.offline=true", "trainer.limit_train_batches=2",
                        "trainer.limit_val_batches=1"))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    log = list(runs[0].glob("run-*.wandb"))
    assert log, "no .wandb transaction log to `wandb sync` later"
    # Read the records back with wandb's own reader: metrics and the full config were logged.
    wandb_cli = Path(sys.executable).with_name("wandb")
    res = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(log[0])], capture_output=True, text=True,
                         timeout=120)
    records = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    text = json.dumps(records)
    assert records and "val/mrr@32" in text and "train/loss" in text
    assert "target_layer" in text and "temperature" in text


@pytest.mark.parametrize("experiment,loss", [("paper", "triplet"), ("tli", "infonce")])
def test_experiments_compose_and_run_a_step(train_cfg, experiment, loss):
    cfg = train_cfg(f"experiment={experiment}", "debug=fdr")
    assert cfg.loss["name"] == loss
    result = train_job(cfg)
    assert result["global_step"] == 1 and result["settings"]["loss"]["name"] == loss


def test_gradient_checkpointing_gives_identical_loss_and_gradients(tiny_spec, tiny_nf4):
    from tli.model.embed import collate, tokenize_words

    tok = tiny_nf4[1]
    words = ["maji", "kitabu", "mwalimu", "water", "book", "teacher"]
    batch = {"words": collate(tokenize_words(tok, words), tok.pad_token_id),
             "src_ids": torch.arange(3), "tgt_ids": torch.arange(3)}
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # same LoRA init in both modules
        module = make_module(tiny_spec, 2, gradient_checkpointing=checkpointing)
        assert module.backbone.get_base_model().is_gradient_checkpointing == checkpointing
        torch.manual_seed(1)
        for n, p in module.backbone.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.2)
        loss = module.training_step(batch, 0)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in module.named_parameters() if p.requires_grad}))
    torch.testing.assert_close(results[0][0], results[1][0])
    for n, g in results[0][1].items():
        torch.testing.assert_close(g, results[1][1][n], msg=n)


def test_the_run_ends_with_a_summary_whose_command_evaluates_it(train_cfg, tmp_path, capsys):
    from tli.jobs.evaluate import evaluate_job

    result = train_job(train_cfg("trainer.max_steps=3", "trainer.max_epochs=-1", "trainer.num_sanity_val_steps=-1",
                                 "trainer.val_check_interval=3"))
    out = capsys.readouterr().out
    assert f"finished: {tmp_path} (3 steps" in out and f"adapter      {tmp_path / 'adapter'}" in out
    assert f"metrics      {tmp_path / 'metrics.json'}" in out
    before, after = result["validation_before"]["val/mrr@32"], result["metrics"]["val/mrr@32"]
    assert f"mrr@32 {before:.3f} -> {after:.3f}" in out  # the base model's figures, then the run's
    command = next(line for line in out.splitlines() if "evaluate it" in line).split("python evaluate.py ")[1]
    summary = evaluate_job(compose("evaluate", [*command.split(), f"paths.output_dir={tmp_path / 'e'}",
                                                "eval.n_boot=200"]))
    assert summary["settings"]["adapters"] == [str(tmp_path / "adapter")]


@pytest.mark.slow
def test_evaluate_true_evaluates_the_finished_run(train_cfg, tmp_path, capsys):
    result = train_job(train_cfg("debug=fdr", "evaluate=true", "eval.n_boot=200", "eval.layers=[2,32]",
                                 "eval.translation=true", "eval.shots=2"))
    assert result["evaluation"] == str(tmp_path / "eval")
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["settings"]["adapters"] == [str(tmp_path / "adapter")]
    out = capsys.readouterr().out
    assert "evaluate it" not in out and "unseen (control) pairs, index 32" in out
    # the few lines at the end: alignment at the trained index, translation, held-out NLL, as summary.json has them
    run = summary["runs"]["run"]
    rr = run["control"]["2"]["centred"]["paired"]["pool_mrr"]
    assert f"centred pool-matched MRR at index 2: {rr['mean_before']:.3f} -> {rr['mean_after']:.3f}" in out
    for direction, st in run["translation"]["control"].items():
        assert f"{direction}: {st['correct_before']}/{st['n']} -> {st['correct_after']}/{st['n']}" in out
    for lang, c in run["lm_loss"].items():
        assert f"held-out NLL {lang}: {c['nll_before']:.3f} -> {c['nll_after']:.3f}" in out
