"""Benchmark: what an inference-time intervention (`evaluate.py intervention=...`, tli.intervention) costs.

- fit: embedding the training pairs' words at the map's index (`embed_words`, the probe's pooling; every word of
  the training lexicon, as `intervention=` fits on the training pairs less the validation ones: an upper bound) and
  the closed-form solve of each kind (ridge, orthogonal Procrustes, mean difference), timed apart;
- inference: the forward queries `evaluate.py` builds (source word -> English, the direction the intervention acts
  on), generation (`generate_answers`) and the graded scores (`score_gold`), in three states side by side: the bare
  model, the hooks on with alpha 0 (the cost of the machinery alone: position tracking across the KV cache and the
  in-place update; its answers must equal the bare model's, or the script exits non-zero) and the hooks on with
  `--alpha` (the fitted ridge map); then the held-out loss of the source language's sentences (the update on every
  token). Each timed repeat runs the states in a rotated order, so machine noise hits them alike; medians reported.

    python benchmarks/intervention.py                                   # Gemma 3 270M, ko_en, index 15
    python benchmarks/intervention.py --limit 96 --repeat 2 --threads 1 # a short run on a busy machine
    python benchmarks/intervention.py --model tiny --data sw_en --layer 2
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from contextlib import nullcontext  # noqa: E402

import _common as bench  # noqa: E402
import torch  # noqa: E402

from tli.data.config import load_lexicons  # noqa: E402
from tli.eval.graded import score_gold  # noqa: E402
from tli.eval.lm_loss import heldout_sentences, lm_loss  # noqa: E402
from tli.eval.translation import build_queries, direction_label, generate_answers  # noqa: E402
from tli.intervention.hooks import intervened  # noqa: E402
from tli.intervention.maps import Intervention, fit_tensors  # noqa: E402
from tli.intervention.positions import for_queries, for_sentences  # noqa: E402
from tli.model.embed import Probe, embed_words  # noqa: E402
from tli.model.loading import QUANTIZATIONS, ModelSpec, load_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma", help="gemma, tiny or any model.name_or_path (default: gemma)")
    parser.add_argument("--data", choices=bench.DATA_PRESETS, default="ko_en", help="bundled lexicons (default: ko_en)")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="none",
                        help="the behaviour precision (default none, as eval.behaviour_quantization)")
    parser.add_argument("--layer", type=int, default=15, help="hidden-state index of the map (default 15)")
    parser.add_argument("--position", choices=("query", "last"), default="query")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--ridge", type=float, default=1.0)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per generate() call (default: 32)")
    parser.add_argument("--limit", type=int, default=0, help="a seeded sample of N forward queries (0: all)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per state (default 2)")
    parser.add_argument("--warmup", type=int, default=8, help="untimed queries per state first (default 8)")
    parser.add_argument("--threads", type=int, default=1, help=bench.THREADS_HELP)
    parser.add_argument("--cache-dir", default=bench.cache_dir())
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    bench.set_threads(args.threads)
    header = bench.machine_line()
    wall = time.perf_counter()

    start = time.perf_counter()
    model, tok = load_model(ModelSpec(name_or_path=bench.model_name(args.model), quantization=args.quantization,
                                      cache_dir=args.cache_dir))
    load_s = time.perf_counter() - start
    lexicons = load_lexicons(bench.data_preset(args.data))
    train = lexicons.train
    probe = Probe(target_layer=args.layer)

    # fit: embed the training pairs' words once, then each solver on the same vectors
    start = time.perf_counter()
    srcs, tgts = sorted({p.source for p in train.pairs}), sorted({p.target for p in train.pairs})
    src = embed_words(model, tok, srcs, probe, layers=[args.layer]).vectors
    tgt = embed_words(model, tok, tgts, probe, layers=[args.layer]).vectors
    embed_s = time.perf_counter() - start
    s_idx, t_idx = {w: i for i, w in enumerate(srcs)}, {w: i for i, w in enumerate(tgts)}
    X = src[[s_idx[p.source] for p in train.pairs]]  # (N, 1, D)
    Y = tgt[[t_idx[p.target] for p in train.pairs]]  # (N, 1, D)
    fit_rows, maps = [], {}
    for kind, solver in (("linear_map", "ridge"), ("linear_map", "procrustes"), ("mean_shift", "-")):
        start = time.perf_counter()
        maps[(kind, solver)] = fit_tensors(kind, solver, args.ridge, X, Y, [args.layer])
        solve_s = time.perf_counter() - start
        fit_rows.append([kind, solver, len(train.pairs), len(srcs) + len(tgts), f"{embed_s:.2f}", f"{solve_s:.3f}",
                         f"{embed_s + solve_s:.2f}"])

    # inference: the forward queries in three states
    forward = direction_label(train, "forward")
    queries = [q for q in build_queries({"train": train, "control": lexicons.control}, k=args.shots, seed=0)
               if q.direction == forward]
    if args.limit > 0:
        keep = set(random.Random(0).sample(range(len(queries)), min(args.limit, len(queries))))
        queries = [q for i, q in enumerate(queries) if i in keep]
    iv = Intervention("linear_map", maps[("linear_map", "ridge")], args.alpha, position=args.position)
    targets = for_queries(tok, queries, args.position)
    states = {"bare model": None, "hooks on, alpha 0": iv.with_alpha(0.0), f"hooks on, alpha {args.alpha:g}": iv}

    def run(state, qs):
        trial = states[state]
        with torch.no_grad(), intervened(model, trial, targets) if trial else nullcontext():
            t0 = time.perf_counter()
            preds = generate_answers(model, tok, [q.prompt for q in qs], batch_size=args.batch_size,
                                     max_new_tokens=args.max_new_tokens)
            t1 = time.perf_counter()
            gold = score_gold(model, tok, qs, batch_size=args.batch_size)
            return preds, gold, t1 - t0, time.perf_counter() - t1

    names = list(states)
    for name in names:  # warm-up, untimed
        run(name, queries[:args.warmup])
    res = {n: {"gen": [], "score": []} for n in names}
    for r in range(args.repeat):
        for name in names[r % len(names):] + names[:r % len(names)]:
            preds, gold, g, s = run(name, queries)
            res[name].update(preds=preds, gold=gold)
            res[name]["gen"].append(g)
            res[name]["score"].append(s)
    sentences = heldout_sentences(lexicons.train.src_lang)
    lm = {}
    for name in names:
        trial = states[name]
        with torch.no_grad(), intervened(model, trial, for_sentences(tok, sentences)) if trial else nullcontext():
            t0 = time.perf_counter()
            lm[name] = (lm_loss(model, tok, sentences)["nll"], time.perf_counter() - t0)

    rows, failures = [], []
    base_g = statistics.median(res[names[0]]["gen"]) + statistics.median(res[names[0]]["score"])
    for name in names:
        cell = res[name]
        correct = sum(q.correct(p) for q, p in zip(queries, cell["preds"], strict=True))
        lps = [x["gold_logprob"] for x in cell["gold"] if x["gold_logprob"] is not None]
        g, s = statistics.median(cell["gen"]), statistics.median(cell["score"])
        rows.append([name, len(queries), f"{correct / len(queries):.3f}", f"{statistics.fmean(lps):.3f}",
                     f"{g:.1f}", f"{len(queries) / g:.1f}", f"{s:.1f}", f"{len(queries) / s:.1f}",
                     f"{(g + s) / base_g:.2f}", f"{lm[name][0]:.3f}", f"{lm[name][1]:.1f}"])
    if res[names[1]]["preds"] != res[names[0]]["preds"] or lm[names[1]][0] != lm[names[0]][0]:
        failures.append("the hooks with alpha 0 changed the answers or the loss: they must be exactly the bare model")

    print(header)
    print(f"model: {args.model} ({args.quantization}), loaded in {load_s:.1f} s (not timed below); lexicons: "
          f"{args.data} ({len(train)} train / {len(lexicons.control)} control pairs); probe: index {args.layer}, "
          f"pooling {probe.pooling}")
    print()
    print(bench.md_table(["map", "solver", "pairs", "words embedded", "embed s", "solve s", "fit s (embed + solve)"],
                         fit_rows))
    print()
    print(f"inference: {len(queries)} {forward} queries{f' (a seeded sample of {args.limit})' if args.limit else ''}"
          f", {args.shots} shots, greedy, <= {args.max_new_tokens} new tokens, batches of {args.batch_size}; the "
          f"ridge map at index {args.layer} on the {args.position} position(s); median of {args.repeat} timed runs "
          f"per state (rotated order) after {args.warmup} untimed queries; held-out loss: {len(sentences)} "
          f"{lexicons.train.src_lang} sentences, the update on every token but BOS")
    print()
    print(bench.md_table(["state", "queries", "accuracy", "mean gold log-prob", "generation s", "prompts/s",
                          "graded s (score_gold)", "scored prompts/s", "time / bare", "held-out NLL", "NLL s"], rows))
    print()
    print(f"load average at the end: {bench.load_average()}; total benchmark wall time "
          f"{time.perf_counter() - wall:.1f} s")
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
