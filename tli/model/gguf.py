"""GGUF files as Hugging Face model directories: dequantized once, cached by content, then loaded like any other.

    hf_dir_for_gguf("model.gguf", cache_dir)   # -> <cache_dir>/gguf/<sha256[:16]>/ (config, safetensors, tokenizer)

transformers reads GGUF files (`from_pretrained(dir, gguf_file=name)`, needs the `gguf` package) but dequantizes
every tensor on each load (~1 min for 270M parameters on 2 cores), refuses `save_pretrained`, and leaves a
`GgufConfig` in the config that clashes with a later `BitsAndBytesConfig`. So the weights are copied once into a
fresh model of the same config and saved as a plain directory, which then loads in full precision or 4-bit NF4.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import mmap
import os
import shutil
import struct
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path

from filelock import FileLock, Timeout

from tli.errors import ModelError
from tli.io import check_cache_dir, file_sha256, share_like_files

SIDECAR = "tli_gguf.json"  # written last: an entry without it is not complete
FORMAT = 1  # bump when the conversion recipe changes: older entries are then rebuilt
log = logging.getLogger(__name__)

# GGUF metadata value types (gguf.GGUFValueType) with a fixed width; 8 is a string, 9 an array.
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
# llama.cpp's architecture names that transformers spells differently (its GGUF loader renames them the same way).
_ARCH_ALIASES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2"}


def supported_architectures() -> list[str]:
    """The GGUF `general.architecture` values this transformers can dequantize (legacy and newer loader)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    names = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}  # sections of the mapping, not architectures
    try:
        from transformers.integrations.gguf import GGUF_ARCHS  # the newer loader, where this transformers has it
    except ImportError:
        GGUF_ARCHS = ()
    return sorted(names | set(GGUF_ARCHS))


def read_header(path: Path) -> dict:
    """{version, metadata (scalars and strings; arrays as None), n_tensors, data_end} of a GGUF file, tensors unread.

    gguf.GGUFReader turns every vocabulary entry into numpy views: ~20 s for Gemma's 262k tokens on a busy core.
    This walk skips arrays and takes well under a second. Raises ValueError or struct.error on a bad file.
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", buf, 0)
        if magic != b"GGUF" or version not in (2, 3):
            raise ValueError(f"magic {magic!r}, version {version}: transformers reads GGUF versions 2 and 3")
        pos, metadata, data_size = 24, {}, 0
        for _ in range(n_kv):  # key (string), value type (u32), value
            key, pos = _string(buf, pos)
            metadata[key], pos = _value(buf, pos + 4, struct.unpack_from("<I", buf, pos)[0])
        for _ in range(n_tensors):  # name, n_dims (u32), dims (u64 each), ggml type (u32), offset in the data (u64)
            _, pos = _string(buf, pos)
            (n_dims,) = struct.unpack_from("<I", buf, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
            ggml_type, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]  # (elements, bytes) per block
            data_size = max(data_size, offset + math.prod(dims) // block * block_bytes)
        align = metadata.get("general.alignment", 32)
        data_start = (pos + align - 1) // align * align
        return {"version": version, "metadata": metadata, "n_tensors": n_tensors, "data_end": data_start + data_size}


def _string(buf, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", buf, pos)
    if pos + 8 + n > len(buf):
        raise ValueError("a string runs past the end of the file")
    return bytes(buf[pos + 8 : pos + 8 + n]).decode("utf-8", errors="replace"), pos + 8 + n


def _value(buf, pos: int, vtype: int):
    """(value, next position) of a metadata value; an array is skipped and read as None."""
    if vtype in _SCALAR:
        return struct.unpack_from(_SCALAR[vtype], buf, pos)[0], pos + struct.calcsize(_SCALAR[vtype])
    if vtype == 8:
        return _string(buf, pos)
    if vtype != 9:
        raise ValueError(f"unknown metadata value type {vtype}")
    etype, count = struct.unpack_from("<IQ", buf, pos)  # element type (u32), count (u64)
    if etype in _SCALAR:
        return None, pos + 12 + count * struct.calcsize(_SCALAR[etype])
    pos += 12
    for _ in range(count):  # strings (a vocabulary) or nested arrays
        pos = _value(buf, pos, etype)[1]
    return None, pos


def _complete(entry: Path, sha256: str) -> bool:
    try:
        sidecar = json.loads((entry / SIDECAR).read_text())
    except (OSError, ValueError):
        return False
    return sidecar.get("sha256") == sha256 and sidecar.get("format") == FORMAT


def _check_convertible(path: Path) -> str:
    """Everything cheap before the expensive part: gguf installed, header intact and complete, architecture known."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"reading the GGUF file {path} needs the `gguf` package: `pip install gguf`")
    try:
        header = read_header(path)
    except (ValueError, struct.error, OverflowError) as err:
        raise ModelError(f"GGUF file {path} is truncated or corrupt ({err}): download it again") from err
    size = path.stat().st_size
    if header["data_end"] > size:
        raise ModelError(
            f"GGUF file {path} is truncated: its header describes {header['data_end']} bytes, the file has {size}. "
            "Download or assemble it again."
        )
    arch = header["metadata"].get("general.architecture")
    supported = supported_architectures()
    if arch not in supported and _ARCH_ALIASES.get(arch) not in supported:
        raise ModelError(
            f"GGUF file {path} holds a {arch!r} model, an architecture transformers cannot dequantize. Supported: "
            f"{', '.join(supported)}. Give the model's Hugging Face directory or hub id instead."
        )
    return arch


@contextmanager
def _one_parse():
    """transformers parses the whole file once each for the tokenizer, the config and the weights, and parsing a
    262k-token vocabulary is millions of small reads (two thirds of a Gemma 3 270M conversion): inside this block
    the three loads share one `gguf.GGUFReader` per file (it is only read). Without the gguf package: a no-op."""
    try:
        import gguf
    except ImportError:
        yield
        return
    real, readers = gguf.GGUFReader, {}

    def shared(path, *args, **kwargs):
        key = (os.fspath(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = real(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = shared  # transformers imports it from gguf at each call
    try:
        yield
    finally:
        gguf.GGUFReader = real


def _convert(path: Path, work: Path) -> dict:
    """Dequantize `path` into work/model (float32 safetensors, config, tokenizer); returns facts for the sidecar."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s into a Hugging Face model directory (once; about a minute per 300M parameters)", path)
    # Load through a directory holding only a link to the file: a config.json or tokenizer_config.json next to it
    # would otherwise be read as well (a BertTokenizer from a stray tokenizer_config.json, in transformers 5.23).
    source, out = work / "source", work / "model"
    source.mkdir()
    (source / path.name).symlink_to(path)
    kwargs = {"gguf_file": path.name, "local_files_only": True}
    # transformers' newer GGUF loader (qwen35, lfm2) keeps weights packed where it has kernels: ask for dense ones.
    gguf_config = getattr(transformers, "GgufConfig", None)
    dense = {"quantization_config": gguf_config(dequantize=True)} if gguf_config else {}
    try:
        with _one_parse():
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            loaded, info = AutoModelForCausalLM.from_pretrained(
                source, **kwargs, **dense, dtype=torch.float32, output_loading_info=True
            )
    except Exception as err:  # the gguf reader and transformers raise anything from struct.error to KeyError
        raise ModelError(
            f"transformers could not load the GGUF file {path} ({type(err).__name__}: {err}). "
            "Check that it is a complete causal-LM GGUF; or give the model's Hugging Face directory instead."
        ) from err
    absent = sorted(info["missing_keys"]) + sorted(map(str, info["mismatched_keys"]))
    if absent:  # they would be left randomly initialised
        raise ModelError(f"GGUF file {path} lacks weights its {type(loaded).__name__} needs: {absent[:8]}")
    config = loaded.config
    vars(config).pop("quantization_config", None)  # the GgufConfig: it would clash with a later BitsAndBytesConfig
    # float32 holds every dequantized value exactly (a Q4_K/Q6_K weight is an fp16 scale times small integers, which
    # bfloat16 would round), so the directory is the file's weights bit for bit and the precision is chosen at load
    # time. The price is disk: 4 bytes per parameter (1.1 GB for Gemma 3 270M; bfloat16 would halve it).
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)  # same class and config: every key must match
    del loaded
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    saved = json.loads((out / "config.json").read_text())
    saved.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    return {"n_layers": config.get_text_config().num_hidden_layers, "transformers_version": transformers.__version__}


def _remove_stale_temp_dirs(root: Path, own_key: str) -> None:
    """Remove temp dirs of killed conversions: any whose key's lock is free (ours is held by this process)."""
    for tmp in root.glob(".*.tmp-*"):
        key = tmp.name[1:].partition(".tmp-")[0]
        try:
            with nullcontext() if key == own_key else FileLock(root / f"{key}.lock", timeout=0):
                shutil.rmtree(tmp, ignore_errors=True)
        except Timeout:  # a live process is converting that file
            pass


def hf_dir_for_gguf(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """The Hugging Face model directory for a GGUF file, converted on first use into <cache_dir>/gguf/<sha256[:16]>/.

    Atomic and safe under concurrency: the conversion runs under a per-file lock in a temp dir next to the target,
    renamed into place only once complete (its sidecar `tli_gguf.json` written last). A killed conversion leaves only
    a temp dir, removed by the next call. Raises ModelError, naming the file, for anything that cannot work.
    """
    path = Path(gguf_path).expanduser().resolve()
    if not path.is_file():
        raise ModelError(f"GGUF file {path} does not exist: check model.name_or_path")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":  # before hashing: a large file of another kind is not worth reading
            raise ModelError(f"{path} is not a GGUF file (no GGUF magic bytes): give a .gguf file")
    root = check_cache_dir(cache_dir) / "gguf"
    sha256 = file_sha256(path, root / "sha256.json")
    key = sha256[:16]
    entry = root / key
    if _complete(entry, sha256):
        return entry  # read only: a read-only shared cache that holds the conversion is fine
    check_cache_dir(cache_dir, needs_writing=True)
    arch = _check_convertible(path)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / f"{key}.lock"):  # a second process waits here, then finds the entry complete
        if _complete(entry, sha256):
            return entry
        _remove_stale_temp_dirs(root, key)
        tmp = share_like_files(tempfile.mkdtemp(dir=root, prefix=f".{key}.tmp-"))
        try:
            facts = _convert(path, tmp)
            sidecar = {"source": str(path), "sha256": sha256, "architecture": arch, **facts, "format": FORMAT}
            (tmp / "model" / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
            shutil.rmtree(entry, ignore_errors=True)  # an outdated entry (older FORMAT, sidecar removed by hand)
            os.rename(tmp / "model", entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return entry
