"""Checkpoints: atomic writes, loading with clear errors, and what resuming checks.

A trainer checkpoint is a dict with at least ``iter``, ``student``, ``optimizer`` and ``config``
(see :meth:`cluda_kit.engine.trainer.Trainer.state_dict`). Files are written through
:mod:`cluda_kit.fileio` (temp file + fsync + atomic rename; the previous checkpoint kept as
prev.pt), so a crash at any moment leaves a complete last.pt or prev.pt.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import warnings
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, to_dict
from ..fileio import UnsafeCheckpointError, atomic_torch_save, atomic_write_text, safe_torch_load

__all__ = ["CheckpointError", "CHECKPOINT_KEYS", "load_checkpoint", "first_readable",
           "config_differences", "check_resumable", "check_world_size", "state_digest", "git_hash",
           "truncate_metrics", "atomic_torch_save", "atomic_write_text"]


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable, truncated or not a cluda-kit checkpoint; names the file."""


CHECKPOINT_KEYS = ("iter", "student", "optimizer", "config")


def load_checkpoint(path: str | Path) -> dict:
    """Load a trainer checkpoint onto the CPU. A truncated, corrupt or foreign file raises
    :class:`CheckpointError` naming it."""
    path = Path(path)
    try:
        state = safe_torch_load(path)  # tensors and plain data only, as any file the kit reads
    except (FileNotFoundError, UnsafeCheckpointError):
        raise
    except Exception as err:  # torch.load raises RuntimeError, EOFError, UnpicklingError, ...
        first = (str(err).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(err).__name__}: {first}); it may have been "
            "cut short (full disk, interrupted copy)"
        ) from None
    if not isinstance(state, dict) or not all(k in state for k in CHECKPOINT_KEYS):
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path}: not a cluda-kit trainer checkpoint (expected the keys "
            f"{', '.join(CHECKPOINT_KEYS)}; found {keys})"
        )
    return state


def first_readable(candidates: list[Path], run_dir: Path) -> tuple[dict, Path]:
    """The first loadable checkpoint of ``candidates`` (last.pt, then prev.pt), with a warning
    when an earlier one had to be passed over."""
    problems = []
    for path in candidates:
        if not path.is_file():
            problems.append(f"{path} is missing")
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        if problems:
            warnings.warn(f"{problems[0]}; resuming from {path} (iteration {state['iter']}) instead",
                          RuntimeWarning, stacklevel=3)
        return state, path
    if any(p.is_file() for p in candidates):
        raise CheckpointError("; ".join(problems))
    raise ConfigError(f"{run_dir}: no checkpoint to resume from ({candidates[0]} is missing)")


def config_differences(a: Any, b: Any, prefix: str) -> list[str]:
    """Dotted keys whose values differ between two config sections, ``key (A vs B)``."""
    da, db = to_dict(a), to_dict(b)
    out = []
    for key in da:
        if isinstance(da[key], dict):
            out += config_differences(getattr(a, key), getattr(b, key), f"{prefix}.{key}")
        elif da[key] != db[key]:
            out.append(f"{prefix}.{key} ({da[key]!r} vs {db[key]!r})")
    return out


def check_resumable(state: dict, cfg: Any, ckpt: Path, cfg_path: Path) -> None:
    """Raise unless the checkpoint ``state`` was trained with ``cfg`` up to the sections a resume
    may change (``train.*`` and ``data.val``); the error names the first differing fields."""
    import dataclasses

    from ..config import from_dict

    try:
        saved = from_dict(state["config"])
    except ConfigError as err:
        raise CheckpointError(f"{ckpt}: its config does not fit this version: {err}") from None
    for section in ("data", "model", "uda", "loss", "optim"):
        a, b = getattr(saved, section), getattr(cfg, section)
        if section == "data":  # the validation set may change (cluda-kit evaluate --split)
            a = dataclasses.replace(a, val=b.val)
        if a != b:
            diff = config_differences(a, b, section)
            raise ConfigError(
                f"{ckpt}: was trained with a different '{section}' section than {cfg_path} "
                f"({', '.join(diff[:3])}: checkpoint vs config); only train.* may change on resume"
            )


def check_world_size(state: dict, world_size: int, ckpt: Path, allow_change: bool) -> None:
    """Raise unless ``world_size`` processes may resume the checkpoint ``state``: the number that
    saved it (absent: 1), or any with ``allow_change`` (``train.allow_world_size_change``). Every
    rank's random streams and data position are saved per rank, so only the same number of
    processes continues bit-identically."""
    saved = int(state.get("world_size", 1))
    if saved != world_size and not allow_change:
        raise ConfigError(
            f"{ckpt}: saved by {saved} process(es), resumed by {world_size}; resume with "
            f"{saved}, or pass --set train.allow_world_size_change=true to continue rank 0's "
            "random streams on every rank (not bit-identical to an uninterrupted run)"
        )


def state_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names and raw bytes (bit-identical tensors <=> equal digests)."""
    h = hashlib.sha256()
    for name, t in tensors.items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def git_hash() -> str | None:
    """The commit of the kit's source checkout, or None (an installed wheel, no git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def truncate_metrics(path: Path, last_iter: int, write: bool = True) -> list[dict]:
    """The records of a metrics.jsonl up to ``last_iter`` (a crashed run may have logged past its
    checkpoint; a line cut by the crash is dropped); with ``write`` the file is rewritten to them."""
    if not path.exists():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("iter", 0) <= last_iter:
            kept.append(rec)
    if write:
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept
