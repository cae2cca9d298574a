"""Benchmark: one optimizer step with the truncated forward (blocks 1..k only) against the full forward, for several k.

What it measures: for each target layer k (`--ks`, default 3 6 12 18 on Gemma 3 270M's 18 blocks) one
`tli.training.module.TLIModule` is built exactly as `train.py` builds it (`configure_model`: the model loaded by
tli, 4-bit NF4 by default, LoRA r 16 / alpha 32 / dropout 0.05 on q_proj and v_proj of blocks 1..k; InfoNCE at
temperature 0.05 on the mean-pooled layer-k embeddings; AdamW with the default warmup + linear schedule). One step
is `training_step` (the LightningModule's own code: with `train.truncate=true` it runs the decoder inside
`tli.model.loading.truncated(model, k)`, so only blocks 1..k execute), `backward()`, `optimizer.step()`,
`scheduler.step()` and `zero_grad()`. The same module, batch and optimizer serve both variants; only
`module.options.truncate` is switched between them. After `--warmup` untimed steps per variant, `--repeat` timed
steps per variant alternate (truncated/full, then full/truncated, ...) so that machine noise hits both alike; the
table gives the median (and min) seconds per step. A forward hook on every decoder block checks, on the first
timed step, that the truncated step ran exactly k blocks and the full one all L.

The batch is the first `--batch-size` pairs (default 16 = data.batch_size) of the audited Korean-English training
lexicon, tokenised as the DataModule does (template {word}); equal words get equal ids, as in training.

Ideal speedup: the full step runs L blocks forward and, since the loss sits at layer k, backward through blocks
1..k only; with backward = 2 x forward per block, full / truncated = (L + 2k) / 3k. With frozen (quantized) base
weights the backward computes input gradients only (no weight gradients, beyond the small LoRA ones), closer to
1 x forward, which gives (L + k) / 2k; both are printed. Per-step costs outside the blocks (embedding lookup,
pooling, loss, optimizer, Python) are the same for both variants and pull the measured ratio towards 1.

Run (default: Gemma 3 270M in NF4 on the CPU, 1 thread; about 1.5 minutes on 2 busy cores, a third of it loading
the model once per k):

    python benchmarks/train_step.py
    python benchmarks/train_step.py --ks 2 8 16 32 --model tiny      # the embedded tiny 32-block Llama

`--compare-quantization nf4 none` measures something else: one TLIModule per quantization at one target layer
(`--k`, default 18 = experiment=gemma_ko's index; `train.truncate=true` as train.py runs it), built the same way,
with its own AdamW and schedule, on the same batch; after `--warmup` untimed steps each, `--repeat` timed steps per
quantization alternate (A/B, then B/A, ...). The table gives the median (min) seconds per step, the ratio of the
medians, the weights' bytes (parameters + buffers) of each model, and the process's resident high-water mark
(ru_maxrss) after building each module (cumulative: the second figure includes the first model):

    python benchmarks/train_step.py --compare-quantization nf4 none   # NF4 against full precision at k = 18

`--compare-preservation` measures the behaviour-preserving terms (benchmarks/_preserve.py): the contrastive step
alone against + KL (live or cached reference), + KL + retain, and + translation LM, one module at `--k`, in
`--quantization` (experiment=gemma_ko trains in full precision: pass --quantization none), step time and peak
memory side by side:

    python benchmarks/train_step.py --compare-preservation --quantization none
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import replace  # noqa: E402

import _common as bench  # noqa: E402
import torch  # noqa: E402

from tli.data.config import load_lexicons  # noqa: E402
from tli.model.embed import Probe, collate, decoder_of, tokenize_words  # noqa: E402
from tli.model.loading import (  # noqa: E402
    QUANTIZATIONS,
    ModelSpec,
    find_decoder_layers,
    load_config,
    load_tokenizer,
    num_layers,  # noqa: E402
)
from tli.model.lora import LoraConfig  # noqa: E402
from tli.training.losses import build_loss  # noqa: E402
from tli.training.module import TLIModule  # noqa: E402
from tli.training.optim import OptimConfig  # noqa: E402
from tli.training.run_config import TrainConfig  # noqa: E402


def make_batch(tok, sources: list[str], targets: list[str], template: str) -> dict:
    """A training batch as the DataModule collates it: sources then targets, word ids equal for equal strings."""
    ids: dict[tuple[str, str], int] = {}
    src_ids = [ids.setdefault(("src", w), len(ids)) for w in sources]
    tgt_ids = [ids.setdefault(("tgt", w), len(ids)) for w in targets]
    words = collate(tokenize_words(tok, sources + targets, template), tok.pad_token_id)
    return {"words": words, "src_ids": torch.tensor(src_ids), "tgt_ids": torch.tensor(tgt_ids)}


class BlockCounter:
    """Counts decoder-block forward calls (to show that the truncated step runs blocks 1..k only)."""

    def __init__(self, module: TLIModule):
        _, layers = find_decoder_layers(decoder_of(module.backbone))
        self.calls = 0
        self.handles = [layer.register_forward_hook(self._hook) for layer in layers]

    def _hook(self, *args):
        self.calls += 1

    def remove(self):
        for h in self.handles:
            h.remove()


def step(module: TLIModule, optimizer, scheduler, batch: dict) -> float:
    start = time.perf_counter()
    loss = module.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def weight_bytes(model) -> int:
    """Parameters + buffers as stored (NF4: packed 4-bit weights as uint8 plus the float32 embedding and norms)."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def compare_quantization(args, spec, L, lora, optim, loss_settings, batch, n_tokens, header, wall) -> int:
    """One module per quantization at target layer args.k; optimizer steps timed alternating between them."""
    import resource

    quants = list(args.compare_quantization)
    runs, built_s, weights, rss = {}, {}, {}, {}
    for quant in quants:
        start = time.perf_counter()
        qspec = replace(spec, quantization=quant)
        module = TLIModule(qspec, Probe(target_layer=args.k), lora, build_loss(loss_settings), optim,
                           TrainConfig(truncate=True))
        module.configure_model()
        built_s[quant] = time.perf_counter() - start
        params = [p for p in module.parameters() if p.requires_grad]
        built = optim.build(params, total_steps=1000)
        runs[quant] = (module, built["optimizer"], built["lr_scheduler"]["scheduler"])
        weights[quant] = weight_bytes(module.backbone)
        rss[quant] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for _ in range(args.warmup):
        for quant in quants:
            step(*runs[quant], batch)
    times: dict[str, list[float]] = {q: [] for q in quants}
    for i in range(args.repeat):
        for quant in (quants if i % 2 == 0 else list(reversed(quants))):
            times[quant].append(step(*runs[quant], batch))
    med = {q: statistics.median(t) for q, t in times.items()}
    rows = [[q, args.k, f"{med[q]:.3f} ({min(times[q]):.3f})", f"{med[q] / med[quants[1]]:.2f}",
             f"{weights[q] / 2**20:.0f}", f"{rss[q]:.0f}", f"{built_s[q]:.0f}"] for q in quants]
    print(header)
    print(f"model: {spec.name_or_path} ({L} blocks); LoRA r {lora.r}, alpha {lora.alpha:g}, dropout {lora.dropout} on "
          f"{'/'.join(lora.target_modules)} of blocks 1..{args.k}; truncated forward; InfoNCE (temperature 0.05) on "
          f"mean-pooled layer-{args.k} vectors; AdamW lr {optim.lr:g} + {optim.scheduler} schedule; nf4 = 4-bit NF4 "
          "(bitsandbytes, double quantization, float32 compute), none = float32 weights")
    B, T = batch["words"]["input_ids"].shape
    print(f"batch: {args.batch_size} {args.data} training pairs = {B} words, {n_tokens} tokens ({B} x {T} padded); "
          f"{args.warmup} warm-up + {args.repeat} timed steps per quantization, alternating")
    print()
    print(bench.md_table(["quantization", "k", "s/step median (min)", f"median / {quants[1]}'s",
                          "weights MiB (parameters + buffers)", "process peak RSS MiB after building it (cumulative)",
                          "build s (not timed)"], rows))
    print()
    print("all timed steps (s): " + "; ".join(f"{q}: " + ", ".join(f"{t:.3f}" for t in times[q]) for q in quants))
    print(f"load average at the end: {bench.load_average()}; total wall time {time.perf_counter() - wall:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=bench.GEMMA,
                        help=f"gemma (= {bench.GEMMA}, default), tiny, or a model.name_or_path")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="nf4", help="default nf4, as tli loads it")
    parser.add_argument("--ks", type=int, nargs="+", default=[3, 6, 12, 18], help="target layers (default 3 6 12 18)")
    parser.add_argument("--data", choices=bench.DATA_PRESETS, default="ko_en", help="bundled lexicon (default ko_en)")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per step (default 16, data.batch_size)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant and k (default 2)")
    parser.add_argument("--repeat", type=int, default=9, help="timed steps per variant and k; median reported")
    parser.add_argument("--threads", type=int, default=1, help=bench.THREADS_HELP)
    parser.add_argument("--compare-quantization", choices=QUANTIZATIONS, nargs=2, default=None, metavar="Q",
                        help="time optimizer steps of two modules, one per quantization (e.g. nf4 none), at --k")
    parser.add_argument("--compare-preservation", action="store_true",
                        help="time the contrastive step alone against + KL, + retain, + translation LM at --k")
    parser.add_argument("--text-batch-size", type=int, default=4, help="preservation sentences per step (default 4, "
                        "preserve.text_batch_size)")
    parser.add_argument("--langs", nargs=2, default=["Korean", "English"], help="the preservation text's languages")
    parser.add_argument("--k", type=int, default=18, help="target layer for --compare-quantization (default 18, "
                        "experiment=gemma_ko's index)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")  # self.log() outside a Trainer, deprecations: noise for a benchmark
    bench.set_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    wall = time.perf_counter()
    header = bench.machine_line()

    spec = ModelSpec(name_or_path=bench.model_name(args.model), quantization=args.quantization,
                     cache_dir=bench.cache_dir())
    _, config = load_config(spec)
    L = num_layers(config)
    bad = [k for k in args.ks if not 1 <= k <= L]
    if bad:
        parser.error(f"--ks {bad} outside this model's blocks 1..{L}")
    lexicon = load_lexicons(bench.data_preset(args.data), with_control=False).train
    if not 2 <= args.batch_size <= len(lexicon):
        parser.error(f"--batch-size {args.batch_size} outside 2..{len(lexicon)}")
    pairs = lexicon.pairs[: args.batch_size]
    tok = load_tokenizer(spec)
    loss_settings = {"name": "infonce", "temperature": 0.05}  # conf/loss/infonce.yaml's defaults that matter here
    lora, optim = LoraConfig(), OptimConfig()
    batch = make_batch(tok, [p.source for p in pairs], [p.target for p in pairs], Probe().template)
    n_tokens = int(batch["words"]["attention_mask"].sum())
    B, T = batch["words"]["input_ids"].shape
    if args.compare_preservation:
        from _preserve import compare_preservation

        return compare_preservation(args, spec, L, lora, optim, batch, pairs, tok, step, header, wall)
    if args.compare_quantization:
        if not 1 <= args.k <= L:
            parser.error(f"--k {args.k} outside this model's blocks 1..{L}")
        return compare_quantization(args, spec, L, lora, optim, loss_settings, batch, n_tokens, header, wall)

    rows, failures, load_times = [], [], []
    for k in sorted(set(args.ks)):
        start = time.perf_counter()
        module = TLIModule(spec, Probe(target_layer=k), lora, build_loss(loss_settings), optim,
                           TrainConfig(truncate=True))
        module.configure_model()  # what Lightning calls: tli's loader, LoRA on blocks 1..k, train mode
        load_times.append(time.perf_counter() - start)
        params = [p for p in module.parameters() if p.requires_grad]
        built = optim.build(params, total_steps=1000)  # what configure_optimizers returns (interval: step)
        optimizer, scheduler = built["optimizer"], built["lr_scheduler"]["scheduler"]
        variants = {"truncated": True, "full": False}
        for _ in range(args.warmup):
            for truncate in variants.values():
                module.options.truncate = truncate
                step(module, optimizer, scheduler, batch)
        times: dict[str, list[float]] = {name: [] for name in variants}
        blocks: dict[str, int] = {}
        for i in range(args.repeat):
            order = list(variants) if i % 2 == 0 else list(reversed(variants))
            for name in order:
                module.options.truncate = variants[name]
                counter = BlockCounter(module) if i < 2 else None
                times[name].append(step(module, optimizer, scheduler, batch))
                if counter is not None:
                    blocks[name] = counter.calls
                    counter.remove()
        if blocks != {"truncated": k, "full": L}:
            failures.append(f"k={k}: blocks run per step {blocks}, expected truncated {k}, full {L}")
        med = {name: statistics.median(t) for name, t in times.items()}
        ratio = med["full"] / med["truncated"]
        ideal, ideal_frozen = (L + 2 * k) / (3 * k), (L + k) / (2 * k)
        rows.append([k, f"{blocks.get('truncated')} / {blocks.get('full')}", len(params),
                     f"{med['truncated']:.3f} ({min(times['truncated']):.3f})",
                     f"{med['full']:.3f} ({min(times['full']):.3f})", f"{ratio:.2f}", f"{ideal:.2f}",
                     f"{ideal_frozen:.2f}", f"{ratio / ideal:.0%}"])
        del module, optimizer, scheduler, built, params
        gc.collect()

    quant = ("4-bit NF4 (bitsandbytes, double quantization, float32 compute)" if args.quantization == "nf4"
             else args.quantization)
    print(header)
    print(f"model: {spec.name_or_path} ({L} blocks), {quant}; LoRA r {lora.r}, alpha {lora.alpha:g}, dropout "
          f"{lora.dropout} on {'/'.join(lora.target_modules)} of blocks 1..k; InfoNCE (temperature 0.05, symmetric, "
          f"false negatives masked) on mean-pooled layer-k vectors; AdamW lr {optim.lr:g} + {optim.scheduler} schedule")
    print(f"batch: {args.batch_size} {args.data} training pairs = {B} words, {n_tokens} tokens ({B} x {T} padded); "
          f"{args.warmup} warm-up + {args.repeat} timed steps per variant and k, alternating; model loaded once per k "
          f"({', '.join(f'{s:.0f}' for s in load_times)} s, not timed)")
    print()
    print(bench.md_table(["k", "blocks run (trunc / full)", "LoRA tensors", "truncated s/step median (min)",
                          "full s/step median (min)", "measured full/trunc", "ideal (L+2k)/3k",
                          "ideal, frozen base (L+k)/2k", "measured / ideal"], rows))
    print()
    print(f"load average at the end: {bench.load_average()}; total wall time {time.perf_counter() - wall:.0f} s")
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
