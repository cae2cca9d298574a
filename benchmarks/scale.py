"""Benchmark: time and peak memory of tli's alignment metrics at 1k, 10k and 100k pairs (synthetic vectors).

What it measures: the work the scan (and, on its layers, validation and the evaluation) does for one layer of one
split with `metrics.centre=true`, on the functions they call:

    raw     = tli.eval.metrics.alignment(src, tgt, gold, MetricsConfig())    # every registered metric
    centred = Centring.fit(train vectors) -> apply -> alignment(...) again   # the centred variant

`alignment` computes the gold-pair cosine, the exact mismatched-pair baseline and its spread (margin, margin_z),
retrieval P@1/P@5/MRR both ways and CSLS P@1 (on a seeded sample of `metrics.max_pool` = 5000 pairs once either
side has more unique words: the `retrieval pool` column), and P@1/MRR in 200 random pools of 20.

Data: random unit vectors of dimension `--dim` (default 640, Gemma 3 270M's hidden size). Pair p links target
word p to source word p, except that every 20th pair gives the previous pair's source a second translation (so
5% of the sources are polysemous, as in a real lexicon, and the excluded-pair bookkeeping is exercised); each
target is its source plus a random direction of norm `--noise` (default 8), re-normalised: gold cosine ~0.12, a
few standard deviations (1/sqrt(640) = 0.04) above unrelated pairs, so that retrieval is neither trivial nor
hopeless. Every timed run gets a fresh `GoldPairs` (its cached excluded-pair index is rebuilt, as it is once per
split in a scan).

How: each size runs in a fresh Python process (this script with --child), so that one size's freed memory cannot
hide another's peak. Inside it: an untimed warm-up on 1000 pairs, then `--repeat` timed runs (one run above 10k
pairs, `--repeat-large`); the median is reported. The breakdown times the calls `alignment` itself makes (its
module-level `mismatched_moments`, `retrieval` and `pool_retrieval`, wrapped in timers for the run; both variants
summed) and the centring; `rest` is everything else (normalising, gathering the pairs' rows, sampling).
Peak memory: tracemalloc cannot see torch's CPU tensors (allocated outside Python's allocator), so this reads the
kernel's resident-set high-water mark: VmHWM is reset to the current RSS (`echo 5 > /proc/self/clear_refs`)
right before the timed run, and the peak is VmHWM after it minus VmRSS before it: the extra resident memory the
metrics needed on top of their inputs, allocator effects included. Where that reset is not available, a thread
sampling RSS every millisecond stands in (the output says which). CPU user / sys seconds and minor page faults
(getrusage deltas around the run) show how much of the wall time the process actually ran (other processes
share the cores) and how much went into the kernel handing out fresh memory (first touch of large allocations).

Run (about 1 minute on 2 busy cores, most of it the 100k size; 1 thread):

    python benchmarks/scale.py
    python benchmarks/scale.py --sizes 1000 10000 100000 300000 --dim 4096     # an 8B model's width
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

import _common as bench
import torch

import tli.eval.metrics as metrics
from tli.eval.metrics import Centring, MetricsConfig, alignment
from tli.eval.pairs import GoldPairs

SECOND_TRANSLATION_EVERY = 20  # every 20th pair gives the previous pair's source a second translation


# ---- resident memory -----------------------------------------------------------------------------------------------
def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """Extra resident memory (KiB) during a block, over the RSS at its start: VmHWM after a reset, or sampling."""

    def __enter__(self):
        self.before = _status_kb("VmRSS")
        self.method = "VmHWM" if _reset_hwm() else "sampled"
        if self.method == "sampled":
            self._peak, self._stop = self.before, threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, _status_kb("VmRSS"))
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.method == "VmHWM":
            self.peak = _status_kb("VmHWM")
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._peak, _status_kb("VmRSS"))
        self.extra_kb = self.peak - self.before


# ---- the work ------------------------------------------------------------------------------------------------------
def synthetic(n_pairs: int, dim: int, noise: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, GoldPairs]:
    """(src (Ns, D), tgt (P, D), gold): unit vectors; see the module docstring."""
    g = torch.Generator().manual_seed(seed)
    p = torch.arange(n_pairs)
    second = (p % SECOND_TRANSLATION_EVERY == SECOND_TRANSLATION_EVERY - 1) & (p > 0)
    source_word = (p - second.long()).tolist()  # the source word of each pair (an int key)
    gold = GoldPairs.from_pairs(source_word, p.tolist())
    src = torch.randn(len(gold.src_keys), dim, generator=g)
    src /= src.norm(dim=-1, keepdim=True)
    tgt = torch.randn(n_pairs, dim, generator=g)
    tgt *= noise / tgt.norm(dim=-1, keepdim=True)
    tgt += src[gold.src_index]  # target = its source + a random direction of norm `noise`
    tgt /= tgt.norm(dim=-1, keepdim=True)
    return src, tgt, gold


def scan_cell(src, tgt, gold: GoldPairs, options: MetricsConfig) -> tuple[dict, dict]:
    """One layer of one split as the scan scores it with metrics.centre=true: raw, then centred on these words."""
    raw = alignment(src, tgt, gold, options)
    start = time.perf_counter()
    centring = Centring.fit(src[:, None], tgt[:, None])  # (N, 1 layer, D): the training words' means
    cs, ct = centring.apply(src, "src", 0), centring.apply(tgt, "tgt", 0)
    centring_s = time.perf_counter() - start
    return raw, {"centring": centring_s, "centred": alignment(cs, ct, gold, options)}


class PartTimers:
    """Times the calls alignment() makes to its module-level helpers (wrapped for the duration of a run)."""

    NAMES = ("mismatched_moments", "retrieval", "pool_retrieval")

    def __enter__(self):
        self.seconds = dict.fromkeys(self.NAMES, 0.0)
        self._saved = {name: getattr(metrics, name) for name in self.NAMES}
        for name, fn in self._saved.items():
            setattr(metrics, name, self._wrap(name, fn))
        return self

    def _wrap(self, name, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start

        return timed

    def __exit__(self, *exc):
        for name, fn in self._saved.items():
            setattr(metrics, name, fn)


def child(n_pairs: int, dim: int, noise: float, repeat: int) -> dict:
    options = MetricsConfig()
    warm = synthetic(1000, dim, noise, seed=1)
    scan_cell(*warm, options)  # untimed: first-call costs (thread pools, lazy imports)
    del warm
    src, tgt, gold = synthetic(n_pairs, dim, noise)
    runs = []
    for _ in range(repeat):
        fresh = GoldPairs(gold.src_keys, gold.tgt_keys, gold.src_index, gold.tgt_index)  # no cached exclusions
        with PeakRSS() as mem, PartTimers() as parts:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            raw, extra = scan_cell(src, tgt, fresh, options)
            seconds = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_SELF)
        runs.append({"seconds": seconds, "extra_kb": mem.extra_kb, "method": mem.method,
                     "user": after.ru_utime - usage.ru_utime, "sys": after.ru_stime - usage.ru_stime,
                     "faults": after.ru_minflt - usage.ru_minflt,
                     "parts": {**parts.seconds, "centring": extra["centring"]}})
    best = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]  # the median run (its breakdown)
    return {"n_pairs": n_pairs, "n_src": len(gold.src_keys), "n_tgt": len(gold.tgt_keys), "dim": dim,
            "runs": len(runs), "seconds": statistics.median(r["seconds"] for r in runs),
            "all_seconds": [r["seconds"] for r in runs], "extra_kb": max(r["extra_kb"] for r in runs),
            "method": runs[0]["method"], "parts": best["parts"], "part_total": best["seconds"],
            "user": best["user"], "sys": best["sys"], "faults": best["faults"],
            "input_mb": (src.numel() + tgt.numel()) * 4 / 2**20, "retrieval_pool": raw["retrieval_pool"],
            "raw": {k: raw[k] for k in ("cosine", "baseline_cosine", "margin_z", "p_at_1", "mrr", "csls_p_at_1",
                                        "pool_p_at_1")},
            "centred_p_at_1": extra["centred"]["p_at_1"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000], help="numbers of pairs")
    parser.add_argument("--dim", type=int, default=640, help="vector dimension (default 640: Gemma 3 270M)")
    parser.add_argument("--noise", type=float, default=8.0, help="norm of the noise added to a target's source")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per size up to 10k pairs (median)")
    parser.add_argument("--repeat-large", type=int, default=1, help="timed runs per size above 10k pairs")
    parser.add_argument("--threads", type=int, default=1, help=bench.THREADS_HELP)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    bench.set_threads(args.threads)
    if args.child is not None:
        print(json.dumps(child(args.child, args.dim, args.noise, args.repeat)))
        return 0
    if any(n < 2 * MetricsConfig().pool_size for n in args.sizes):
        parser.error(f"--sizes must be >= {2 * MetricsConfig().pool_size} pairs")
    wall = time.perf_counter()
    header = bench.machine_line()
    results = []
    for n in args.sizes:
        repeat = args.repeat if n <= 10000 else args.repeat_large
        cmd = [sys.executable, os.path.abspath(__file__), "--child", str(n), "--dim", str(args.dim),
               "--noise", str(args.noise), "--repeat", str(repeat), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            print(f"error: the run at {n} pairs failed", file=sys.stderr)
            return 1
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))

    opts = MetricsConfig()
    print(header)
    print(f"work per size: alignment() raw + Centring.fit/apply + alignment() centred (one layer, one split, "
          f"metrics.centre=true), MetricsConfig defaults (max_pool {opts.max_pool}, csls_k {opts.csls_k}, "
          f"{opts.n_pools} pools of {opts.pool_size}, chunk_size {opts.chunk_size}); random unit vectors, dim "
          f"{args.dim}, noise {args.noise:g}; each size in a fresh process; {torch.get_num_threads()} thread(s)")
    print()
    rows = []
    for r in results:
        p = r["n_pairs"]
        linear = r["part_total"] - r["parts"]["retrieval"]
        rows.append([f"{p:,}", f"{r['n_src']:,} / {r['n_tgt']:,}", f"{r['retrieval_pool']:,}", r["runs"],
                     f"{r['seconds']:.2f}", f"{r['user']:.2f} / {r['sys']:.2f}", f"{r['faults']:,}",
                     f"{r['seconds'] / p * 1e6:.0f}", f"{linear / p * 1e6:.0f}", f"{r['extra_kb'] / 1024:.0f}",
                     f"{r['extra_kb'] / p:.1f}", f"{r['input_mb']:.0f}"])
    print(bench.md_table(["pairs", "unique src / tgt", "retrieval pool", "runs", "wall s (median)",
                          "CPU user / sys s", "minor page faults", "us per pair", "us per pair without retrieval",
                          "peak extra memory MiB", "KiB per pair", "inputs MiB"], rows))
    print()
    print(bench.md_table(["pairs", "baseline + spread s", "retrieval + CSLS s", "pool retrieval s", "centring s",
                          "rest s", "total s"],
                         [[f"{r['n_pairs']:,}", *(f"{r['parts'][k]:.2f}" for k in (
                             "mismatched_moments", "retrieval", "pool_retrieval", "centring")),
                           f"{r['part_total'] - sum(r['parts'].values()):.2f}", f"{r['part_total']:.2f}"]
                          for r in results]))
    print()
    print(bench.md_table(["pairs", "cosine", "baseline", "margin_z", "P@1", "MRR", "CSLS P@1", "pool P@1",
                          "centred P@1"],
                         [[f"{r['n_pairs']:,}", *(f"{r['raw'][k]:.3f}" for k in (
                             "cosine", "baseline_cosine", "margin_z", "p_at_1", "mrr", "csls_p_at_1", "pool_p_at_1")),
                           f"{r['centred_p_at_1']:.3f}"] for r in results]))
    print()
    for a, b in zip(results, results[1:], strict=False):
        f = b["n_pairs"] / a["n_pairs"]
        la = a["part_total"] - a["parts"]["retrieval"]
        lb = b["part_total"] - b["parts"]["retrieval"]
        print(f"{a['n_pairs']:,} -> {b['n_pairs']:,} pairs (x{f:g}): time x{b['seconds'] / a['seconds']:.1f}, "
              f"without retrieval x{lb / la:.1f}, peak extra memory x{b['extra_kb'] / max(a['extra_kb'], 1):.1f}")
    method = results[0]["method"]
    print("peak memory: " + ("VmHWM after resetting it (/proc/self/clear_refs) minus VmRSS before the run"
                             if method == "VmHWM" else "RSS sampled every 1 ms minus RSS before the run") +
          "; the largest of the runs")
    print("all timed runs (s): " + "; ".join(f"{r['n_pairs']:,}: " + ", ".join(f"{s:.2f}" for s in r["all_seconds"])
                                               for r in results))
    print(f"load average at the end: {bench.load_average()}; total wall time {time.perf_counter() - wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
