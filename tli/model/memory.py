"""Weight memory of a causal LM under bitsandbytes quantization, from its config alone (no weights loaded).

    python -m tli.model.memory MODEL_DIR_OR_CONFIG_JSON [--quantization nf4] [--no-double-quant]

Linear layers of the decoder blocks are quantized (4 bits a weight for nf4/fp4, 8 for int8); embeddings, the output
head and norms stay in the compute dtype (bf16 on GPU). 4-bit blocks of 64 weights carry an absmax constant: fp32
(0.5 bit a weight) or, with double quantization, 8-bit plus a second-level fp32 per 256 blocks (~0.127 bit a weight).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BITS = {"nf4": 4, "fp4": 4, "int8": 8, "none": 16}


def parameter_counts(config: dict) -> dict[str, int]:
    """Decoder-block linear weights and the rest (embeddings, head, norms) of a Llama-family config."""
    d, n, inter = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or d // heads
    attn = d * heads * head_dim * 2 + d * kv * head_dim * 2  # q, o + k, v
    mlp = 3 * d * inter  # gate, up, down
    embed = config["vocab_size"] * d
    head = 0 if config.get("tie_word_embeddings") else embed
    norms = (2 * n + 1) * d
    return {"linear": n * (attn + mlp), "other": embed + head + norms}


def weight_bytes(config: dict, quantization: str = "nf4", double_quant: bool = True, other_bytes: int = 2) -> float:
    counts = parameter_counts(config)
    if quantization in ("nf4", "fp4"):
        constants = (8 / 64 + 32 / (64 * 256)) if double_quant else 32 / 64  # bits a weight for absmax
        linear = counts["linear"] * (4 + constants) / 8
    elif quantization == "int8":
        linear = counts["linear"] * 1.0 + counts["linear"] / config["hidden_size"] * 4  # row-wise fp32 scales
    else:
        linear = counts["linear"] * other_bytes
    return linear + counts["other"] * other_bytes


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tli.model.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a model directory or its config.json")
    parser.add_argument("--quantization", default="nf4", choices=list(BITS))
    parser.add_argument("--no-double-quant", action="store_true")
    args = parser.parse_args(argv)
    path = Path(args.config)
    config = json.loads((path / "config.json" if path.is_dir() else path).read_text())
    counts = parameter_counts(config)
    total = weight_bytes(config, args.quantization, not args.no_double_quant)
    print(f"decoder linear weights: {counts['linear'] / 1e9:.2f} B params; embeddings, head, norms: "
          f"{counts['other'] / 1e9:.2f} B params")
    print(f"weights in {args.quantization}: {total / 2**30:.2f} GiB (bf16 for the unquantized part)")


if __name__ == "__main__":
    main()
