"""Data-parallel training (`trainer=ddp`) on the CPU with 2 gloo processes: sliced global batches, InfoNCE negatives
gathered across processes with gradients, and training that matches one process with the same global batch."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import FAST_CPU, ROOT, compose, dup_ids
from safetensors.torch import load_file

import tli.jobs.train
from tli.data.datamodule import ResumableLoader, UniqueBatchSampler
from tli.errors import ConfigError
from tli.jobs.train import check_distributed
from tli.training.losses import InfoNCE, gather_with_grad

# ---- the sampler: per-process slices of global batches ---------------------------------------------------------


@pytest.mark.parametrize("world,batch_size", [(2, 4), (2, 3), (3, 2)])
def test_sampler_slices_the_single_process_plan(world, batch_size):
    src_ids, tgt_ids = dup_ids()
    single = UniqueBatchSampler(src_ids, tgt_ids, batch_size * world, seed=3)
    ranks = [UniqueBatchSampler(src_ids, tgt_ids, batch_size, seed=3, num_replicas=world, rank=r) for r in range(world)]
    uneven = dropped = 0
    for epoch in range(3):
        single.set_epoch(epoch)
        for s in ranks:
            s.set_epoch(epoch)
        expected = [b for b in single if len(b) >= world]  # leftovers smaller than the world are dropped
        uneven += sum(len(b) % world != 0 for b in expected)
        dropped += len(single) - len(expected)
        plans = [list(s) for s in ranks]
        assert all(len(p) == len(expected) == len(s) for p, s in zip(plans, ranks, strict=True))  # same length
        for i, global_batch in enumerate(expected):
            parts = [p[i] for p in plans]
            assert sum(parts, []) == global_batch  # rank order, contiguous: the union is the single-process batch
            assert all(parts) and max(map(len, parts)) - min(map(len, parts)) <= 1
            assert all(len(part) <= batch_size for part in parts)
    assert uneven and dropped  # the data exercises global batches that do not split evenly, and dropped leftovers


def test_sampler_drops_a_leftover_smaller_than_the_world():
    # 9 distinct pairs, 4 per process, 2 processes: global batches [0..7] and [8]; [8] cannot be split.
    n = 9
    single = UniqueBatchSampler(list(range(n)), list(range(n)), 8, seed=0, shuffle=False)
    assert list(single) == [list(range(8)), [8]]
    ranks = [UniqueBatchSampler(list(range(n)), list(range(n)), 4, seed=0, shuffle=False, num_replicas=2, rank=r)
             for r in range(2)]
    assert [list(s) for s in ranks] == [[[0, 1, 2, 3]], [[4, 5, 6, 7]]]
    assert ranks[0].global_plan() == [list(range(8))]
    # a 10th pair makes the leftover splittable: [8] and [9]
    ranks = [UniqueBatchSampler(list(range(10)), list(range(10)), 4, seed=0, shuffle=False, num_replicas=2, rank=r)
             for r in range(2)]
    assert [list(s) for s in ranks] == [[[0, 1, 2, 3], [8]], [[4, 5, 6, 7], [9]]]
    with pytest.raises(ValueError, match="rank=2"):
        UniqueBatchSampler([0], [0], 4, seed=0, num_replicas=2, rank=2)


@pytest.mark.parametrize("processed", [0, 2])
def test_resumable_loader_per_rank_skips_the_same_global_batches(processed):
    src_ids, tgt_ids = dup_ids(n=60, n_src=12, n_tgt=14, seed=2)
    data = list(range(60))
    for rank in range(2):
        def loader(done, rank=rank):
            sampler = UniqueBatchSampler(src_ids, tgt_ids, 4, seed=5, num_replicas=2, rank=rank)
            return ResumableLoader(data, batch_sampler=sampler, collate_fn=list, progress=lambda: done)

        full = loader(0)
        full.batch_sampler.set_epoch(1)
        full = list(full)
        state = {"epoch": 1, "processed": processed}  # rank 0's state, loaded by every process
        resumed = loader(0)
        resumed.load_state_dict(state)
        assert list(resumed) == full[processed:]


# ---- the gathered loss ------------------------------------------------------------------------------------------


def test_gather_with_grad_without_a_process_group_is_the_identity():
    assert not dist.is_initialized()
    x = torch.randn(3, 4, requires_grad=True)
    out, offset = gather_with_grad(x)
    assert out is x and offset == 0
    ids = torch.tensor([3, 1, 2])
    assert gather_with_grad(ids) == (ids, 0)
    src, tgt = torch.randn(4, 8), torch.randn(4, 8)
    ids = (torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 2, 3]))
    torch.testing.assert_close(InfoNCE(0.1, gather=True)(src, tgt, *ids), InfoNCE(0.1)(src, tgt, *ids), rtol=0, atol=0)


def _global_batch(n=6, d=8):
    g = torch.Generator().manual_seed(0)
    src, tgt = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    src_ids = torch.tensor([0, 1, 1, 2, 3, 4, 5, 6][:n])  # a repeated source string across the rank boundary
    tgt_ids = torch.tensor([0, 1, 2, 3, 3, 4, 5, 6][:n])  # and a repeated target string
    return src, tgt, src_ids, tgt_ids


def _loss_worker(rank, world, init_file, out_dir, cases):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {}
        for name, sizes in cases:
            src, tgt, src_ids, tgt_ids = _global_batch(sum(sizes))
            lo, hi = sum(sizes[:rank]), sum(sizes[:rank + 1])
            s, t = src[lo:hi].clone().requires_grad_(), tgt[lo:hi].clone().requires_grad_()
            loss_fn = InfoNCE(0.1, learnable_temperature=True, gather=True)
            loss = loss_fn(s, t, src_ids[lo:hi], tgt_ids[lo:hi])
            loss.backward()
            loss_fn.eval()  # validation: no gather, this process's rows only
            local = loss_fn(s.detach(), t.detach(), src_ids[lo:hi], tgt_ids[lo:hi])
            results[name] = {"loss": loss.detach(), "src_grad": s.grad, "tgt_grad": t.grad,
                             "temp_grad": loss_fn.log_scale.grad, "eval_loss": local}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gathered_infonce_equals_single_process_over_the_global_batch(tmp_path):
    """What DDP does with the 2 processes' losses (average the gradients, log the mean) equals one process on the
    global batch: the same loss and the same gradients, also when the processes hold different row counts."""
    cases = [("even", [3, 3]), ("uneven", [3, 2]), ("one_row", [2, 1])]
    mp.spawn(_loss_worker, args=(2, str(tmp_path / "pg"), str(tmp_path), cases), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, sizes in cases:
        src, tgt, src_ids, tgt_ids = (x.clone() for x in _global_batch(sum(sizes)))
        src.requires_grad_()
        tgt.requires_grad_()
        loss_fn = InfoNCE(0.1, learnable_temperature=True)
        loss = loss_fn(src, tgt, src_ids, tgt_ids)
        loss.backward()
        r0, r1 = ranks[0][name], ranks[1][name]

        def mean(key, r0=r0, r1=r1):  # DDP's gradient all-reduce average, and the sync_dist mean of train/loss
            return (r0[key] + r1[key]) / 2

        torch.testing.assert_close(mean("loss"), loss.detach(), rtol=1e-6, atol=1e-6, msg=name)
        # A row's embedding lives on one process: its gradient there, averaged by DDP over 2 processes.
        for key, ref in (("src_grad", src.grad), ("tgt_grad", tgt.grad)):
            torch.testing.assert_close(torch.cat([r0[key], r1[key]]) / 2, ref, rtol=1e-5, atol=1e-7, msg=name)
        torch.testing.assert_close(mean("temp_grad"), loss_fn.log_scale.grad, rtol=1e-5, atol=1e-7, msg=name)
        # eval mode does not gather: each process's loss over its own rows
        for rank, r in enumerate((r0, r1)):
            lo, hi = sum(sizes[:rank]), sum(sizes[:rank + 1])
            expected = InfoNCE(0.1)(src[lo:hi].detach(), tgt[lo:hi].detach(), src_ids[lo:hi], tgt_ids[lo:hi])
            torch.testing.assert_close(r["eval_loss"], expected, msg=name)


# ---- the trainer config and the launch checks -------------------------------------------------------------------


def test_trainer_ddp_config(tmp_path):
    cfg = compose("train", [f"paths.output_dir={tmp_path}", "trainer=ddp"]).trainer
    assert (cfg["strategy"], cfg["devices"], cfg["accelerator"], cfg["precision"]) == ("ddp", 2, "auto", "auto")
    assert compose("train", [f"paths.output_dir={tmp_path}", "trainer=ddp", "trainer.devices=4"]).trainer[
        "devices"] == 4


def test_ddp_inside_a_multirun_is_refused_and_gather_off_warns(monkeypatch, caplog):
    trainer = L.Trainer(strategy="ddp", devices=2, accelerator="cpu", logger=False, enable_checkpointing=False)
    monkeypatch.setattr(tli.jobs.train, "in_multirun", lambda: True)
    with pytest.raises(ConfigError, match="inside a Hydra multirun"):
        check_distributed(trainer, InfoNCE(gather=True))
    monkeypatch.setattr(tli.jobs.train, "in_multirun", lambda: False)
    with caplog.at_level("WARNING", logger="tli.jobs.train"):
        check_distributed(trainer, InfoNCE(gather=True))
        assert "loss.gather is off" not in caplog.text
        check_distributed(trainer, InfoNCE(gather=False))
        assert "loss.gather is off" in caplog.text
    one = L.Trainer(devices=1, accelerator="cpu", logger=False, enable_checkpointing=False)
    monkeypatch.setattr(tli.jobs.train, "in_multirun", lambda: True)
    check_distributed(one, InfoNCE(gather=False))  # one device per job in a sweep is fine


# ---- end to end: python train.py trainer=ddp vs one process -----------------------------------------------------


def _train(run_dir, tiny_dir, small_lexicons, *overrides):
    cmd = [sys.executable, str(ROOT / "train.py"), "model=tiny", "data=sw_en", f"model.name_or_path={tiny_dir}",
           f"data.train_file={small_lexicons[0]}", f"data.control_file={small_lexicons[1]}", f"hydra.run.dir={run_dir}",
           FAST_CPU, "logger=csv", "lora.r=4", "lora.dropout=0", "loss.gather=true", "optim.lr=5e-3",
           "optim.warmup_steps=0", "optim.scheduler=constant", *overrides]
    res = subprocess.run(cmd, cwd=run_dir.parent, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    with (run_dir / "csv" / "metrics.csv").open() as f:
        losses = {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r["train/loss"]}
    return losses, load_file(run_dir / "adapter" / "adapter_model.safetensors"), res.stdout + res.stderr


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_with_the_global_batch(tmp_path, tiny_dir, small_lexicons):
    """`python train.py trainer=ddp` with 2 gloo processes x 4 pairs = one process x 8 pairs: the logged loss of
    every step, the validation metrics and the adapter. One epoch of the 43 training pairs (48 minus the validation
    split): five global batches of 8 and a last one of 3, which DDP splits 2 + 1; then one validation (5 pairs, on
    every process). The DDP run stops after 4 steps and resumes from its last checkpoint (finite max_epochs: the path
    where Lightning drops the loader state, see PairDataModule)."""
    # A constant learning rate: the DDP run's stop (max_steps=4) and its resume with the full length (a change of
    # trainer.max_steps, allowed) then follow the single run's schedule step for step.
    single_loss, single, _ = _train(tmp_path / "single", tiny_dir, small_lexicons, "data.batch_size=8",
                                    "optim.scheduler=constant")
    ddp = ["trainer=ddp", "trainer.devices=2", "data.batch_size=4", "callbacks.every_n_train_steps=1",
           "optim.scheduler=constant"]
    ddp_loss, _, log = _train(tmp_path / "ddp", tiny_dir, small_lexicons, *ddp, "trainer.max_steps=4")
    assert "All distributed processes registered. Starting with 2 processes" in log
    assert "loss.gather is off" not in log
    resumed_loss, resumed, log = _train(tmp_path / "ddp", tiny_dir, small_lexicons, *ddp, "ckpt_path=last",
                                        "train.allow_changes=true")
    assert "Restored all states from the checkpoint" in log
    assert sorted(single_loss) == list(range(6)) and sorted(ddp_loss) == list(range(4))
    assert sorted(resumed_loss) == list(range(6))  # the resumed run keeps the history logged before the stop
    assert all(resumed_loss[i] == ddp_loss[i] for i in range(4))
    ddp_loss = resumed_loss
    torch.testing.assert_close(torch.tensor([ddp_loss[i] for i in range(6)]),
                               torch.tensor([single_loss[i] for i in range(6)]), rtol=1e-5, atol=0)
    assert single.keys() == resumed.keys()
    for name in single:
        assert single[name].abs().max() > 1e-2, name  # the adapters moved far beyond the tolerance
        torch.testing.assert_close(resumed[name], single[name], rtol=0, atol=1e-5, msg=name)
    one, two = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("single", "ddp"))
    assert one["global_step"] == two["global_step"] == 6
    val = sorted(k for k in one["metrics"] if k.startswith("val/"))
    assert {"val/mrr@32", "val/loss"} <= set(val) and val == sorted(k for k in two["metrics"] if k.startswith("val/"))
    torch.testing.assert_close(torch.tensor([two["metrics"][k] for k in val]),
                               torch.tensor([one["metrics"][k] for k in val]), rtol=0, atol=1e-5)
    # rank 0 alone wrote the outputs
    assert (tmp_path / "ddp" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "ddp" / "checkpoints" / "last.ckpt").is_file()
    assert not list((tmp_path / "ddp").glob("**/.*.tmp"))
