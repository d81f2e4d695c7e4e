"""Find host-device synchronisations in a piece of PyTorch code without a GPU.

On CUDA an operation forces the host to wait for the device when the host needs a value or a
size that only the device knows: reading a scalar (``.item()``, ``int(t)``, ``bool(t)``,
``.tolist()``), or an output whose shape depends on the data (``nonzero``, boolean-mask indexing,
``unique``, ``masked_select``, ``bincount``, ``repeat_interleave`` without ``output_size``).
``torch.cuda.set_sync_debug_mode`` reports them on a GPU (``bench/gpu_check.py`` does);
:class:`HostSyncAudit` records the same operations at the dispatcher on any device, so a CPU
test can hold the training step to "no synchronisation" (``tests/test_sync_audit.py``).

    with HostSyncAudit() as audit:
        trainer.step()
    print(audit.report())     # one line per (op, where) with a count

Copies between devices cannot be seen on a CPU (they are no-ops there) and are not recorded.
Work that legitimately runs on the host (the data pipeline) can be excluded with
:meth:`HostSyncAudit.paused`.
"""
from __future__ import annotations

import collections
import contextlib
import traceback
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostSyncAudit", "SYNC_OPS"]

_aten = torch.ops.aten
#: Operators whose CUDA implementation waits for the device (scalar reads, data-dependent sizes).
SYNC_OPS = frozenset({
    _aten._local_scalar_dense.default,  # .item(), int(), float(), bool(), .tolist()
    _aten.nonzero.default,
    _aten._unique2.default,
    _aten.unique_dim.default,
    _aten.unique_consecutive.default,
    _aten.masked_select.default,
    _aten.bincount.default,
    _aten.repeat_interleave.Tensor,
})
_INDEX_OPS = frozenset({_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default,
                        _aten._index_put_impl_.default})
_PACKAGE = str(Path(__file__).resolve().parents[1])
_THIS = str(Path(__file__).resolve())


def _has_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def _where() -> str:
    """The innermost cluda_kit frame (outside this module) that led to the op, as file:line (fn)."""
    for frame in reversed(traceback.extract_stack()):
        if frame.filename.startswith(_PACKAGE) and frame.filename != _THIS:
            return f"{Path(frame.filename).relative_to(Path(_PACKAGE).parent)}:{frame.lineno} ({frame.name})"
    return "<outside cluda_kit>"


class HostSyncAudit(TorchDispatchMode):
    """Dispatch mode that records every operation that would synchronise a CUDA host.

    Attributes:
        events: list of (op name, where) in call order; ``where`` is the innermost ``cluda_kit``
            source line that called it (``"<outside cluda_kit>"`` otherwise).
    """

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str]] = []
        self._paused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self._paused and (func in SYNC_OPS or (func in _INDEX_OPS and _has_bool_index(args))):
            self.events.append((str(func.overloadpacket.__name__), _where()))
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Do not record inside this block (host-side work such as data loading)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def counts(self) -> collections.Counter:
        """Counter of (op, where) pairs."""
        return collections.Counter(self.events)

    def report(self) -> str:
        """One line per (op, where), most frequent first; ``"no host synchronisation"`` if none."""
        if not self.events:
            return "no host synchronisation"
        return "\n".join(f"{n:4d} x {op:<22s} {where}" for (op, where), n in self.counts().most_common())
