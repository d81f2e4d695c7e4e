"""Two CPU threads for one training step (``train.overlap``).

On a CPU each op of the demo model runs best on one thread (``train.threads: 1``: its convs are
too small to split), which leaves the second core of a laptop idle. Two pieces of a UDA step do
not depend on what runs beside them, so they can run on that core:

- the EMA teacher's pseudo-labels of the target batch (the teacher was updated at the start of the
  step; the student's source pass does not touch it), and
- the backward of the source pass, while the mixed pass's forward runs (the parameters change
  only in the optimiser step; the mixed forward only reads them) and then beside the mixed
  pass's own backward, which writes its gradients to buffers of its own and adds them to
  ``.grad`` once the source backward has ended (:func:`backward_beside`).

Gradients still sum in the sequential order (source, then mixed), the random draws stay on the
main thread, and BatchNorm statistics are updated by forwards in the same order, so a step with
overlap equals one without, bit for bit (tests/test_overlap.py). Only for the CPU without DDP or
torch.compile: on a GPU kernels already run asynchronously.

    overlap = Overlap(enabled=True)
    labels = overlap.submit(teacher_pass, ctx, target)  # starts now, on the second thread
    ...                                                 # the main thread goes on
    pl, pw = labels()                                   # waits for it
    overlap.drain()                                     # end of step: nothing left running
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor
from torch.profiler import record_function

from ..uda.methods.base import deferred

__all__ = ["Overlap", "backward_beside", "overlap_unavailable"]


def overlap_unavailable(device_type: str, ddp: bool, compiled: bool) -> str | None:
    """Why ``train.overlap`` cannot be used here (None: it can)."""
    if device_type != "cpu":
        return f"CPU only (the run is on {device_type}, whose kernels already run asynchronously)"
    if ddp:
        return "not under DDP"
    if compiled:
        return "not with train.compile"
    return None


def backward_beside(loss: Tensor, leaves: Sequence[Tensor], previous: Callable[[], Any]) -> None:
    """The last pass's backward, run while the previous pass's backward still runs on the second
    thread, with the gradients accumulated as the sequential step accumulates them.

    The gradients of ``loss`` with respect to ``leaves`` (the trainable parameters) go to buffers
    of their own (``torch.autograd.grad``), so nothing is written to ``.grad`` while the other
    backward accumulates there. ``previous()`` then waits for that backward, and each buffer is
    added to ``.grad`` in place, as autograd's own accumulation does: ``.grad`` holds the earlier
    passes' sum g_prev, and g_prev + g is the sequential result bit for bit (float addition is
    commutative but not associative, so g is added last, to that sum, as in the sequential step).
    A leaf without an earlier gradient receives g itself, in its parameter's memory layout; a leaf
    that ``loss`` does not reach keeps its ``.grad``.
    """
    with record_function("step/backward"):
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    previous()
    with torch.no_grad():
        for p, g in zip(leaves, grads):
            if g is None:
                continue
            if p.grad is None:
                p.grad = g if g.stride() == p.stride() else torch.empty_like(p).copy_(g)
            else:
                p.grad += g


class Overlap:
    """One background thread for work of the current step; disabled, :meth:`submit` defers the
    work to the moment its result is asked for (the sequential order)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._pool = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="cluda-overlap")
                      if enabled else None)
        self._pending: list[Future] = []

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[], Any]:
        """Start ``fn(*args, **kwargs)`` on the background thread (tasks run one after another, in
        submission order); returns a zero-argument callable that waits for its result (and
        re-raises its error). Disabled: ``fn`` runs on the first call of that callable."""
        if self._pool is None:
            return deferred(fn, *args, **kwargs)
        future = self._pool.submit(fn, *args, **kwargs)
        self._pending.append(future)
        return future.result

    def drain(self) -> None:
        """Wait until every submitted task has finished; re-raise the first error among them."""
        pending, self._pending = self._pending, []
        error: BaseException | None = None
        for future in pending:
            try:
                future.result()
            except BaseException as err:  # noqa: BLE001 - the first one is re-raised below
                error = error or err
        if error is not None:
            raise error

    def close(self) -> None:
        """Drain and stop the thread."""
        try:
            self.drain()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
                self.enabled = False
