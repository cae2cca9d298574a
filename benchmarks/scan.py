"""Benchmark: tli's layer scan against the paper's pilot loop (one forward pass per word per layer).

What it measures, in one run on the same model and the same translation pairs:

- ours: the real scan path, `tli.embed.embed_words` on every source and target word (batched: one forward pass per
  batch yields the pooled vectors at all hidden-state indices 0..L), then the per-layer mean gold-pair cosine. A second,
  labelled row times `tli.scan.run_scan` with all its metrics (bootstrap CI, mismatched-pair baseline, retrieval,
  CSLS) for reference.
- baseline: the pilot's loop, written out below: for each layer, for each pair, for each of its two words, tokenise
  the word alone, run a full forward pass with `output_hidden_states=True` (batch of 1, no padding), mean-pool the
  word's tokens at that layer (BOS excluded, the same pooling as ours), L2-normalise, take the cosine with the
  partner word; then average over pairs.

Both must give the same per-layer mean cosine (to 1e-4) on every layer the baseline ran; the script exits non-zero
otherwise. The last printed line is the speedup (baseline time / our time, both for all L+1 hidden-state indices) as a
number followed by `x`.

"Extrapolated": the baseline costs the same for every layer (each layer re-runs every word through the whole model),
so it is timed on a stated subset of layers (`--layers`, default 2 and 31) with all pairs, and its time for all L+1
indices is the measured time per layer times L+1. Ours is timed for all L+1 indices directly (median of `--repeat`
runs). Both are preceded by an untimed warm-up forward pass and run under `torch.no_grad()` with torch's default
thread count.

Run (CPU, the embedded tiny 32-block Llama in 4-bit NF4, all 648 pairs of the bundled Swahili-English training
lexicon; about 1.5 minutes on 2 idle cores, the baseline's two layers taking most of it. On a machine whose cores
other processes keep busy, torch's threads wait on each other and both methods can run several times slower):

    python benchmarks/scan.py
    python benchmarks/scan.py --layers 16 --pairs 600 --quantization none

The tiny model is built on first use into `$TLI_CACHE_DIR` (default `~/.cache/tli`).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # the tiny model is built locally: never touch the network

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tli.embed import PoolingSpec, embed_words  # noqa: E402
from tli.lexicon import Lexicon, read_lexicon  # noqa: E402
from tli.metrics import gold_matrix, pair_cosines  # noqa: E402
from tli.modeling import QUANTIZATIONS, ModelSpec, load_model, num_layers  # noqa: E402
from tli.scan import ScanSettings, run_scan  # noqa: E402
from tli.tiny import ensure_tiny_model  # noqa: E402

LEXICON = "bundled:sw_en/train.json"
TOLERANCE = 1e-4


def ours_mean_cosine(model, tokenizer, src_words, tgt_words, batch_size: int) -> torch.Tensor:
    """The scan path: embed the unique words at all hidden-state indices, then mean gold-pair cosine per layer."""
    src_unique, tgt_unique, _, pair_s, pair_t = gold_matrix(src_words, tgt_words)
    emb = embed_words(model, tokenizer, src_unique + tgt_unique, PoolingSpec("mean"), batch_size=batch_size)
    src, tgt = emb.vectors[: len(src_unique)], emb.vectors[len(src_unique):]  # (Ns, L+1, D), (Nt, L+1, D)
    return pair_cosines(src[pair_s].transpose(0, 1), tgt[pair_t].transpose(0, 1)).mean(-1)  # (L+1,)


@torch.no_grad()
def pilot_word_vector(model, tokenizer, word: str, layer: int) -> torch.Tensor:
    """The pilot: one full forward pass for one word, its tokens mean-pooled at one layer (BOS excluded)."""
    inputs = tokenizer(word, return_tensors="pt", return_special_tokens_mask=True)
    special = inputs.pop("special_tokens_mask")[0].bool()  # (T,)
    hidden = model(**inputs, output_hidden_states=True).hidden_states[layer][0]  # (T, D)
    return F.normalize(hidden[~special].float().mean(0), dim=-1)  # (D,)


@torch.no_grad()
def pilot_mean_cosine(model, tokenizer, src_words, tgt_words, layer: int) -> float:
    """The pilot's per-layer loop: for each pair, embed both words (one forward pass each), cosine, mean over pairs."""
    total = 0.0
    for s, t in zip(src_words, tgt_words, strict=True):
        vs = pilot_word_vector(model, tokenizer, s, layer)
        vt = pilot_word_vector(model, tokenizer, t, layer)
        total += float(vs @ vt)
    return total / len(src_words)


def median_time(fn, repeat: int):
    """(median seconds over `repeat` calls, last result)."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 31],
                        help="hidden-state indices the baseline loop is timed on (default: 2 31)")
    parser.add_argument("--pairs", type=int, default=None, help="use the first N pairs of the lexicon (default: all)")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="nf4")
    parser.add_argument("--batch-size", type=int, default=64, help="our scan's batch size (default: 64)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of ours; the median is reported")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-run-scan", action="store_true", help="skip the reference row timing run_scan")
    parser.add_argument("--cache-dir", default=os.environ.get("TLI_CACHE_DIR", "~/.cache/tli"),
                        help="where the tiny model is built (default: $TLI_CACHE_DIR or ~/.cache/tli)")
    args = parser.parse_args(argv)
    wall_start = time.perf_counter()

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tiny_dir = ensure_tiny_model(args.cache_dir)
    model, tok = load_model(ModelSpec(name_or_path=str(tiny_dir), quantization=args.quantization), device=args.device)
    n_states = num_layers(model.config) + 1
    bad = [j for j in args.layers if not 0 <= j < n_states]
    if bad:
        parser.error(f"--layers {bad} outside this model's hidden-state indices 0..{n_states - 1}")
    layers = sorted(set(args.layers))

    lexicon = read_lexicon(LEXICON, src_field="swahili", tgt_field="english")
    if args.pairs is not None:
        if not 1 <= args.pairs <= len(lexicon):
            parser.error(f"--pairs {args.pairs} outside 1..{len(lexicon)}")
        lexicon = Lexicon(lexicon.path, lexicon.pairs[: args.pairs], lexicon.src_lang, lexicon.tgt_lang)
    src_words, tgt_words = lexicon.sources, lexicon.targets
    n_pairs = len(lexicon)
    n_unique = len(set(src_words)) + len(set(tgt_words))

    # Warm-up (untimed): one batched and one single-word forward pass, so neither method pays first-call costs.
    embed_words(model, tok, src_words[:8] + tgt_words[:8], PoolingSpec("mean"), batch_size=args.batch_size)
    pilot_word_vector(model, tok, src_words[0], layers[0])

    ours_s, ours_cos = median_time(lambda: ours_mean_cosine(model, tok, src_words, tgt_words, args.batch_size),
                                   args.repeat)
    scan_s = None
    if not args.no_run_scan:
        settings = ScanSettings(batch_size=args.batch_size)
        scan_s, _ = median_time(lambda: run_scan(model, tok, {"train": lexicon}, PoolingSpec("mean"), settings),
                                args.repeat)

    pilot_cos, start = {}, time.perf_counter()
    for layer in layers:
        pilot_cos[layer] = pilot_mean_cosine(model, tok, src_words, tgt_words, layer)
    pilot_s = time.perf_counter() - start
    pilot_all_s = pilot_s / len(layers) * n_states  # every layer costs the same: 2 * pairs full forward passes

    diffs = {j: abs(float(ours_cos[j]) - pilot_cos[j]) for j in layers}
    max_diff = max(diffs.values())
    ok = max_diff <= TOLERANCE
    speedup = pilot_all_s / ours_s

    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"device {args.device}, python {platform.python_version()}")
    print(f"model: tiny {n_states - 1}-block Llama ({tiny_dir.name}), quantization {args.quantization}")
    print(f"pairs: {n_pairs} from {LEXICON} (swahili -> english), {n_unique} unique words; pooling: mean, BOS excluded")
    print()
    all_layers = f"0..{n_states - 1}"
    layer_list = ",".join(map(str, layers))
    passes = -(-n_unique // args.batch_size)  # embed_words: the unique src+tgt words in batches of batch_size
    batched = f"{passes} x <={args.batch_size} words"
    rows = [
        ["ours: embed_words + mean cosine", all_layers, n_pairs, batched, f"{ours_s:.2f}",
         f"{ours_s:.2f}", f"max |diff| {max_diff:.1e} on {layer_list}"],
    ]
    if scan_s is not None:
        rows.append(["(ref) run_scan, all metrics", all_layers, n_pairs, batched, f"{scan_s:.2f}",
                     f"{scan_s:.2f}", "-"])
    rows.append(["baseline: pilot loop", layer_list, n_pairs, f"{2 * n_pairs * len(layers)} x 1 word",
                 f"{pilot_s:.2f}", f"{pilot_all_s:.1f} (extrapolated)", "reference"])
    print(table(["method", "layers timed", "pairs", "forward passes", "measured s", f"s for all {n_states} layers",
                 "agreement"], rows))
    print()
    print(table(["layer", "ours mean cos", "baseline mean cos", "|diff|"],
                [[j, f"{float(ours_cos[j]):.6f}", f"{pilot_cos[j]:.6f}", f"{diffs[j]:.1e}"] for j in layers]))
    print()
    print(f"baseline time for all {n_states} layers = {pilot_s:.2f} s / {len(layers)} layer(s) timed x {n_states}; "
          f"ours timed as median of {args.repeat} run(s) over all layers")
    print(f"agreement: {'OK' if ok else 'FAILED'} (max |diff| {max_diff:.2e}, tolerance {TOLERANCE:g})")
    print(f"total benchmark wall time: {time.perf_counter() - wall_start:.1f} s")
    if scan_s is not None:
        print(f"speedup with full run_scan instead: {pilot_all_s / scan_s:.1f}x")
    print(f"speedup (baseline / ours, all {n_states} layers, embedding + mean cosine):")
    if not ok:
        print(f"error: per-layer mean cosines differ by {max_diff:.2e} > {TOLERANCE:g}", file=sys.stderr)
        return 1
    print(f"{speedup:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
