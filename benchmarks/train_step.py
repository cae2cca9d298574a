"""Training-step speed: truncated forward (blocks 1..k only) against the full forward, side by side in one run.

    python benchmarks/train_step.py [--target-layer 2] [--batch-size 16] [--steps 10] [--quantization nf4]

Both variants use the same model (the embedded tiny 32-block Llama, 4-bit NF4 on the CPU by default), the same
batch of word pairs, LoRA adapters on blocks 1..k and an AdamW step; they differ only in whether blocks k+1..L run.
Steps alternate between the two variants so that machine noise hits both alike; the median step time is reported.
The last line is the speed-up (full / truncated) as a number followed by `x`.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402

from tli.embed import collate, tokenize_words  # noqa: E402
from tli.lexicon import bundled  # noqa: E402
from tli.losses import InfoNCE  # noqa: E402
from tli.modeling import load_tokenizer  # noqa: E402
from tli.module import TLIModule  # noqa: E402
from tli.tiny import ensure_tiny_model  # noqa: E402


def make_module(path: str, quantization: str, k: int, truncate: bool) -> TLIModule:
    model_cfg = {"name_or_path": path, "quantization": quantization, "target_layer": k, "pooling": "mean"}
    module = TLIModule(model_cfg, {"r": 16, "alpha": 32, "dropout": 0.05}, InfoNCE(0.05), {"lr": 2e-4},
                       truncate=truncate)
    module.configure_model()
    module.backbone.train()
    module.opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=2e-4)
    return module


def step(module: TLIModule, batch: dict) -> float:
    start = time.perf_counter()
    module.opt.zero_grad()
    loss = module.training_step(batch, 0)
    loss.backward()
    module.opt.step()
    return time.perf_counter() - start


def main() -> None:
    warnings.filterwarnings("ignore")  # self.log() outside a Trainer, deprecations: noise for a benchmark
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target-layer", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--quantization", default="nf4")
    args = parser.parse_args()

    path = str(ensure_tiny_model(os.environ.get("TLI_CACHE_DIR", os.path.join(tempfile.gettempdir(), "tli-bench"))))
    pairs = json.loads(bundled("sw_en/train.json").read_text(encoding="utf-8"))[: args.batch_size]
    from tli.modeling import ModelSpec

    tok = load_tokenizer(ModelSpec(name_or_path=path))
    words = [p["swahili"] for p in pairs] + [p["english"] for p in pairs]
    batch = {"words": collate(tokenize_words(tok, words), tok.pad_token_id),
             "src_ids": torch.arange(len(pairs)), "tgt_ids": torch.arange(len(pairs))}
    variants = {name: make_module(path, args.quantization, args.target_layer, truncate=name == "truncated")
                for name in ("truncated", "full")}
    for module in variants.values():  # warm-up: first-call costs (kernels, allocator) paid outside the timing
        step(module, batch)
    times = {name: [] for name in variants}
    for _ in range(args.steps):
        for name, module in variants.items():
            times[name].append(step(module, batch))
    med = {name: statistics.median(t) for name, t in times.items()}
    n_layers = variants["full"].n_layers
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    print(f"model: tiny Llama, {n_layers} blocks, {args.quantization}; LoRA r=16 on q_proj,v_proj of blocks "
          f"1..{args.target_layer}; batch {args.batch_size} pairs; {args.steps} steps per variant, alternating")
    print(f"{'variant':<12}{'blocks run':>12}{'median s/step':>16}{'min s/step':>14}")
    for name in variants:
        blocks = args.target_layer if name == "truncated" else n_layers
        print(f"{name:<12}{blocks:>12}{med[name]:>16.4f}{min(times[name]):>14.4f}")
    print(f"{med['full'] / med['truncated']:.1f}x")


if __name__ == "__main__":
    main()
