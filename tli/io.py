"""Atomic file writes: a crash never leaves a half-written output behind, and no temporary file stays."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from tli.errors import RunDirError

log = logging.getLogger(__name__)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(file)` on a temp file in the target directory, fsync, then rename it over `path`.

    The file gets the permissions a plain `open()` would give (0666 minus the umask), not mkstemp's 0600."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise RunDirError(f"could not write {path} ({err.strerror or err}): is the directory read-only?") from err
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise RunDirError(f"could not write {path} ({err.strerror or err}): is the disk full? Nothing was "
                              "half-written") from err
        raise
    return path


def share_like_files(directory: str | os.PathLike, tree: bool = False) -> Path:
    """Give a directory made by mkdtemp (0700) the permissions a plain mkdir would (0777 minus the umask); with
    `tree`, also every directory and file below it (files: 0666 minus the umask; libraries that write through their
    own temp files leave 0600)."""
    mask = current_umask()
    os.chmod(directory, 0o777 & ~mask)
    if tree:
        for path in Path(directory).rglob("*"):
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
    return Path(directory)


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Remove `.<name>.*.tmp` files that a killed process left behind in `directory` (atomic_write's temp files)."""
    stale = [p for p in Path(directory).glob(".*.tmp") if p.is_file()] if Path(directory).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_dir(out_dir: str | os.PathLike, write: Callable[[Path], None], what: str, hint: str = "") -> Path:
    """Call `write(tmp_dir)` on a fresh directory beside `out_dir`, then rename it over `out_dir` (an earlier one is
    replaced only once the new one is complete): a crash or a full disk leaves the previous directory intact and no
    partial directory behind. `what` names the content in errors ("the adapter"); `hint` is added to them."""
    out = Path(out_dir)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = share_like_files(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    except OSError as err:
        raise RunDirError(f"could not write {what} to {out} ({err.strerror or err})") from err
    try:
        try:
            write(Path(tmp))
            share_like_files(tmp, tree=True)
        except (OSError, RunDirError) as err:
            raise RunDirError(f"could not write {what} to {out} ({getattr(err, 'strerror', None) or err}): is the "
                              f"disk full? Nothing was half-written{hint}") from err
        except Exception as err:  # safetensors reports a full disk as its own SafetensorError
            if type(err).__name__ != "SafetensorError":
                raise
            raise RunDirError(f"could not write {what} to {out} ({err}): is the disk full? Nothing was "
                              f"half-written{hint}") from err
        old = out.with_name(f".{out.name}.old") if out.exists() else None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def check_cache_dir(cache_dir: str | os.PathLike, needs_writing: bool = False) -> Path:
    """The model cache (`paths.cache_dir`, from `TLI_CACHE_DIR`), checked before anything is read from it or built
    into it: a ConfigError naming it when it is a file, or when something must be written and it cannot be. A
    read-only cache that already holds what a run needs is fine (nothing is written to it)."""
    from tli.errors import ConfigError

    path = Path(cache_dir).expanduser()
    where = f"the model cache {path} (paths.cache_dir, set by TLI_CACHE_DIR)"
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"{where} is not a directory ({existing} is a file): set TLI_CACHE_DIR to a directory")
    if needs_writing and existing is not None and not writable_dir(existing):
        raise ConfigError(f"{where} is read-only and does not hold this model yet: set TLI_CACHE_DIR to a writable "
                          "directory, or build the model into it once where it is writable")
    return path


def writable_dir(path: str | os.PathLike) -> bool:
    """Whether files can be created in `path` (tried, not guessed from the mode bits: root ignores them, a read-only
    mount does not)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".tli-write-check-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(tmp)
    return True


_read_only_indexes: set[str] = set()


def file_sha256(path: Path, index: Path) -> str:
    """SHA-256 of a file, memoised in `index` (JSON) by (resolved path, size, mtime_ns); a changed file is rehashed.
    Where `index` cannot be written (a read-only shared cache) the hash is computed in memory each time (said once).
    The index follows the umask, like any other output."""
    path, stat = path.resolve(), path.stat()
    stamp = [stat.st_size, stat.st_mtime_ns]
    try:
        entries = json.loads(index.read_text())
    except (OSError, ValueError):
        entries = {}
    if not isinstance(entries, dict):
        entries = {}
    if entries.get(str(path), {}).get("stamp") == stamp:
        return entries[str(path)]["sha256"]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    entries[str(path)] = {"stamp": stamp, "sha256": digest.hexdigest()}
    # Atomic replace: a concurrent writer may drop another's entry (it is rehashed later) but never corrupts the file.
    tmp = None
    try:
        index.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=index.parent, prefix=".index-", delete=False) as f:
            tmp = f.name
            json.dump(entries, f, indent=1)
        os.chmod(tmp, 0o666 & ~current_umask())  # NamedTemporaryFile makes it 0600
        os.replace(tmp, index)
    except OSError as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if str(index) not in _read_only_indexes:
            _read_only_indexes.add(str(index))
            log.info("%s cannot be written (%s): SHA-256 hashes are computed in memory, not memoised", index,
                     err.strerror or err)
    return digest.hexdigest()
