
"""The embedded tiny model: a Llama-shaped causal LM built locally, so tests and the default run need no download.

    python -m tli.tiny OUT_DIR        # writes config, safetensors weights and tokenizer files

It is shaped like Lugha-Llama-8B-wura where it matters for TLI: Llama architecture, 32 decoder blocks, grouped-query
attention (4 query heads per KV head), untied output head, a BOS token prepended by default and no pad token. Its
byte-level BPE tokenizer is trained with the `tokenizers` library on the bundled lexicons (Swahili, Korean, English),
so words split into one to several tokens. Weights are random (seeded), with one deliberate feature: the BOS
embedding has a large norm, imitating the "massive activation" of the BOS position in real LLMs, which makes
BOS-inclusive mean pooling report every word as alike. The output is byte-identical for the same inputs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from tli.io import check_cache_dir, share_like_files

TINY_VERSION = 1  # bump when the architecture or the recipe below changes: it renames the cache entry
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
VOCAB_SIZE = 768
SEED = 0
BOS_NORM_SCALE = 40.0  # BOS embedding norm relative to an ordinary token's

ARCH = dict(
    hidden_size=64,  # widths are multiples of 64, the bitsandbytes 4-bit block size
    intermediate_size=128,
    num_hidden_layers=32,
    num_attention_heads=4,
    num_key_value_heads=1,  # GQA: 4 query heads per KV head
    head_dim=16,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    tie_word_embeddings=False,
    initializer_range=0.02,
)


def lexicon_words() -> list[str]:
    """Every string of every bundled lexicon (all languages), in a fixed order: the tokenizer's corpus."""
    root = resources.files("tli") / "lexicons"
    words: list[str] = []
    for path in sorted(Path(str(root)).glob("*/*.json")):
        for entry in json.loads(path.read_text(encoding="utf-8")):
            words.extend(v for k, v in sorted(entry.items()) if k != "pos" and isinstance(v, str))
    if not words:
        raise FileNotFoundError(f"no bundled lexicons found under {root}: the tiny tokenizer is trained on them")
    return words


def recipe_hash() -> str:
    """Hash of everything the tiny model depends on: names its cache entry."""
    h = hashlib.sha256(json.dumps([TINY_VERSION, ARCH, VOCAB_SIZE, SEED, BOS_NORM_SCALE]).encode())
    h.update("\n".join(lexicon_words()).encode("utf-8"))
    return h.hexdigest()[:12]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    words = lexicon_words()
    # Words appear alone and after a space (as inside a prompt template), like in running text.
    tok.train_from_iterator(words + [" " + w for w in words], trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # Without this post-processor a `tokenizers` tokenizer adds no BOS (unlike the real Llama 3 tokenizer).
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, model_max_length=256)


def build_model(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,  # like Llama 3: the loader must set one
        **ARCH,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        emb = model.get_input_embeddings().weight  # (V, D)
        typical = emb.norm(dim=-1).median()
        bos = emb[tokenizer.bos_token_id]
        emb[tokenizer.bos_token_id] = bos / bos.norm() * typical * BOS_NORM_SCALE
    return model


def write_tiny_model(out_dir: str | os.PathLike) -> Path:
    """Write the tiny model directory (config, model.safetensors, tokenizer files) to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "TLI_TINY.json").write_text(json.dumps({"version": TINY_VERSION, "recipe": recipe_hash()}, indent=2) + "\n")
    return out


def ensure_tiny_model(cache_dir: str | os.PathLike) -> Path:
    """Path of the cached tiny model, building it on first use (atomically: concurrent jobs are safe)."""
    cache_dir = check_cache_dir(cache_dir)
    target = cache_dir / f"tiny-llama-{recipe_hash()}"
    if (target / "TLI_TINY.json").is_file():
        return target  # read only: a read-only shared cache that holds it is fine
    check_cache_dir(cache_dir, needs_writing=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = share_like_files(tempfile.mkdtemp(dir=cache_dir, prefix=".building-"))
    try:
        write_tiny_model(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first: its copy is identical
            if not (target / "TLI_TINY.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tli.tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="directory to write the Hugging Face model into")
    out = write_tiny_model(parser.parse_args(argv).out_dir)
    print(f"wrote tiny model to {out}")


if __name__ == "__main__":
    main()
