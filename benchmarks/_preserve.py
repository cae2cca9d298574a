"""`train_step.py --compare-preservation`: the cost of the behaviour-preserving terms (not a benchmark itself).

One TLIModule at `--k` (built as train.py builds it, in `--quantization`), its own AdamW; the variants switch only the
term weights on that module, on the same word batch and the same preservation text (the base model's own samples,
tli.eval.base_text, cached after the first run):

    align                 the contrastive loss alone (truncated forward, blocks 1..k)
    align+kl (live)       + preserve.kl with the base distribution from an adapters-disabled forward each step
    align+kl (cached)     + preserve.kl against the top-k base log-probabilities computed once
    ... (32 positions)    the same with preserve.kl_positions=32: the LM head and KL on 32 of the step's positions
    align+kl+retain       + preserve.retain (mse above k) on the same text, live
    align+translation_lm  + loss.translation_lm on the batch's few-shot prompts

After `--warmup` untimed steps per variant, `--repeat` timed steps alternate between the variants (rotating the order)
so that machine noise hits them alike; the median (min) seconds per step and the ratio to `align` are printed. Peak
memory: before each variant's first timed step the process's resident high-water mark is reset (Linux:
`/proc/self/clear_refs` = 5) and read back after it (VmHWM), minus the resident size before the step: the extra
memory the step needed (MiB).
"""

from __future__ import annotations

import statistics
import time

import _common as bench

from tli.model.embed import Probe
from tli.model.loading import weights_fingerprint
from tli.training.losses import build_loss
from tli.training.module import TLIModule
from tli.training.preserve import PreserveConfig
from tli.training.run_config import TrainConfig
from tli.training.text import PreservationText, TextSource
from tli.training.translation_lm import translation_batch

VARIANTS = {  # name -> (preserve.kl, preserve.retain, reference, loss.translation_lm, preserve.kl_positions)
    "align": (0, 0, "live", 0, 0),
    "align+kl (live)": (1, 0, "live", 0, 0),
    "align+kl (cached)": (1, 0, "cached", 0, 0),
    "align+kl (live, 32 positions)": (1, 0, "live", 0, 32),
    "align+kl (cached, 32 positions)": (1, 0, "cached", 0, 32),
    "align+kl+retain": (1, 1, "live", 0, 0),
    "align+translation_lm": (0, 0, "live", 1, 0),
}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def peak_extra_mib(run) -> tuple[float, float]:
    """(seconds, extra resident MiB at the peak) of one call of `run`."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident size
    except OSError:
        pass
    before = _status_kib("VmRSS:")
    seconds = run()
    return seconds, (_status_kib("VmHWM:") - before) / 1024


def compare_preservation(args, spec, L, lora, optim, batch, pairs, tok, step, header, wall) -> int:
    k = args.k
    preserve = PreserveConfig(text_batch_size=args.text_batch_size)
    module = TLIModule(spec, Probe(target_layer=k), lora, build_loss({"name": "infonce", "temperature": 0.05}),
                       optim, TrainConfig(truncate=True), preserve=preserve)
    module.configure_model()
    src_lang, tgt_lang = args.langs
    source = TextSource(langs=(src_lang, tgt_lang), seed=0, n_train=preserve.n_text, n_val=0,
                        max_new_tokens=preserve.max_new_tokens, fingerprint=weights_fingerprint(spec),
                        cache_dir=spec.cache_dir)
    started = time.perf_counter()
    with module.backbone.disable_adapter():
        text = PreservationText(module.backbone, tok, source, need_train=True)
        sampled = time.perf_counter() - started
        started = time.perf_counter()
        text.cache_reference(module.backbone, preserve.top_k)
        cached_s = time.perf_counter() - started
    module.text = text
    batch = dict(batch, translation=translation_batch([(p.source, p.target) for p in pairs], tok, src_lang, tgt_lang,
                                                       module.align.translation_shots))
    built = optim.build([p for p in module.parameters() if p.requires_grad], total_steps=1000)
    optimizer, scheduler = built["optimizer"], built["lr_scheduler"]["scheduler"]

    def use(name: str) -> None:
        kl, retain, reference, tlm, positions = VARIANTS[name]
        module.preserve.kl, module.preserve.retain, module.preserve.reference = kl, retain, reference
        module.preserve.kl_positions = positions
        module.align.translation_lm = tlm

    names = list(VARIANTS)
    for _ in range(args.warmup):
        for name in names:
            use(name)
            step(module, optimizer, scheduler, batch)
    times: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, float] = {}
    for i in range(args.repeat):
        order = names[i % len(names):] + names[:i % len(names)]
        for name in order:
            use(name)
            if name not in peaks:
                seconds, peaks[name] = peak_extra_mib(lambda: step(module, optimizer, scheduler, batch))
            else:
                seconds = step(module, optimizer, scheduler, batch)
            times[name].append(seconds)
    med = {n: statistics.median(t) for n, t in times.items()}
    rows = [[n, f"{med[n]:.3f} ({min(times[n]):.3f})", f"{med[n] / med['align']:.2f}", f"{peaks[n]:.0f}"]
            for n in names]
    tokens = int(text.train["attention_mask"][: args.text_batch_size].sum())
    print(header)
    print(f"model: {spec.name_or_path} ({L} blocks), quantization {spec.quantization}; LoRA r {lora.r} on "
          f"{'/'.join(lora.target_modules)} of blocks 1..{k}; InfoNCE at index {k} (truncated); KL / retain on "
          f"{args.text_batch_size} base-model sentences per step ({tokens} tokens), retain at indices "
          f"{module.retain_layers} (mse), cached reference top-{preserve.top_k}; translation LM on "
          f"{2 * len(pairs)} few-shot prompts ({module.align.translation_shots} shots)")
    print(f"batch: {len(pairs)} {args.data} pairs; {args.warmup} warm-up + {args.repeat} timed steps per variant, "
          f"rotating; preservation text: {len(text.rows)} samples ({sampled:.0f} s to sample or read from the cache, "
          f"not timed), cached reference {cached_s:.1f} s once")
    print()
    print(bench.md_table(["variant", "s/step median (min)", "median / align's", "extra peak RSS MiB (first step)"],
                         rows))
    print()
    print("all timed steps (s): " + "; ".join(f"{n}: " + ", ".join(f"{t:.3f}" for t in times[n]) for n in names))
    print(f"load average at the end: {bench.load_average()}; total wall time {time.perf_counter() - wall:.0f} s")
    return 0
