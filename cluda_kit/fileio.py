"""Atomic file writes: the one helper every part of the kit writes files through; and
:func:`safe_torch_load`, the one way it reads torch files.

A crash (or a kill, or a full disk) at any moment leaves either the old complete file or the new
complete file at ``path``, never a partial one: the data goes to a temporary file next to
``path`` (same folder, so the same file system), is flushed and fsynced, and then
``os.replace``-d into place (atomic on POSIX and Windows). Temporary files are named
``.NAME.tmp<pid>``; the ones a killed writer left behind are removed by the next write.

This module sits below every layer (``data``, ``engine``, ``analysis`` and ``cli`` use it) and
imports nothing of the kit.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_bytes", "atomic_torch_save", "safe_torch_load",
           "UnsafeCheckpointError"]


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _remove_stale_temps(path: Path) -> None:
    """Delete the temp files of ``path`` that a writer killed mid-write left behind."""
    for stale in path.parent.glob(f".{path.name}.tmp*"):
        stale.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    """Make renames inside ``directory`` durable (POSIX; silently skipped where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None], *,
                 previous: str | Path | None = None, mode: int | None = 0o644,
                 durable: bool = True, sweep: bool = True) -> Path:
    """Write ``path`` atomically: ``write(fh)`` fills a binary file handle.

    Args:
        path: the file to (re)write; its folder is created.
        write: called once with a binary file handle open on the temporary file.
        previous: if given and ``path`` exists, the old ``path`` is first hard-linked (or, where
            links are unsupported, copied) to ``previous``, atomically as well, so that at every
            moment both names hold complete files (a checkpoint and the one before it).
        mode: permission bits of the new file (None: the temporary file's, 0o600).
        durable: fsync the file and the folder, so that the new content also survives a power
            loss. Bulk writers (dataset conversion: thousands of files, each checked again by a
            re-run) pass False: still atomic against a crash or kill of the writer.
        sweep: remove the temporary files of ``path`` that a killed writer left behind. It scans
            the folder, so a bulk writer into a large folder passes False.

    Returns:
        ``path`` as a :class:`~pathlib.Path`. On any exception the temporary files are removed
        and the exception propagates (an OSError that names no file, such as a full disk's, gets
        ``filename=path``); ``path`` is unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if sweep:
        _remove_stale_temps(path)
    tmp = _temp_path(path)
    temps = [tmp]
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        if previous is not None and path.exists():
            previous = Path(previous)
            _remove_stale_temps(previous)
            prev_tmp = _temp_path(previous)
            temps.append(prev_tmp)
            try:
                os.link(path, prev_tmp)
            except OSError:
                shutil.copyfile(path, prev_tmp)
            os.replace(prev_tmp, previous)
        os.replace(tmp, path)
    except BaseException as err:
        for t in temps:
            t.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None and err.filename is None:
            err.filename = str(path)  # a write into a full disk names no file
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda fh: fh.write(text.encode(encoding)))


def atomic_torch_save(obj: Any, path: str | Path, previous: str | Path | None = None) -> Path:
    """``torch.save(obj)`` to ``path`` atomically, the old file kept as ``previous`` if given."""
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh), previous=previous)


class UnsafeCheckpointError(ValueError):
    """A torch file holds Python objects that loading would have to execute; names the file."""


def _numpy_array_globals() -> list:
    """The numpy callables and types that rebuild plain arrays and scalars (no user code): what
    older kit checkpoints (numpy RNG state) and some released checkpoints hold beside tensors."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    found = [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype]
    found += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType") and n != "ObjectDType"]
    return found


def safe_torch_load(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU, numpy arrays and scalars allowed.

    Nothing in the file is executed: a file that holds other Python objects (a pickled class, a
    function) raises :class:`UnsafeCheckpointError` naming the file and the objects, and what to
    do instead. FileNotFoundError for a missing file; other read errors propagate.
    """
    import pickle

    import torch

    path = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # a cut or corrupt file: the original error says so
            names = []
        if not names:
            raise
        objects = ", ".join(names[:5])
        raise UnsafeCheckpointError(
            f"{what} {path} holds Python objects that loading would execute ({objects}); the kit "
            "loads only tensors and plain data (torch.load weights_only=True). If you trust it, "
            "re-save its weights elsewhere: torch.save(torch.load(f, weights_only=False)"
            "['state_dict'], 'weights.pt'), or convert it to .safetensors") from None
