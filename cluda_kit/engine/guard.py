"""The non-finite loss guard: stop (naming the term and the iteration) or skip the step.

Without ``train.skip_nonfinite`` the check is deferred and costs no host-device synchronisation:
the first non-finite iteration of every term (and its value) is kept on the device and
:meth:`NonFiniteGuard.raise_if_any` (which the trainer calls on every log, evaluation and
checkpoint step, and at the end) raises :class:`NonFiniteLossError` naming it. With
``skip_nonfinite`` the verdict is needed before the update, so that mode synchronises once per
check. Under DDP the verdict is global (a term non-finite on any rank), so all ranks skip or stop.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["NonFiniteLossError", "NonFiniteGuard"]

HINT = "set train.skip_nonfinite=true to skip such steps"


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; the message names the term and the iteration."""


class NonFiniteGuard:
    """Args:
        skip: ``train.skip_nonfinite``: report a non-finite step (the caller skips it) instead of
            stopping.
        mean_over_ranks: averages a tensor over the DDP ranks in place (identity without DDP).
        distributed: whether DDP is on (the deferred verdict then needs a collective).
    """

    def __init__(self, skip: bool, mean_over_ranks: Callable[[Tensor], Tensor] = lambda t: t,
                 distributed: bool = False) -> None:
        self.skip = skip
        self.mean_over_ranks = mean_over_ranks
        self.distributed = distributed
        self._first: dict[str, tuple[Tensor, Tensor]] = {}  # term -> (first bad iteration or -1, value)

    def check(self, terms: dict[str, Tensor], it: int) -> str | None:
        """None when the step may go on; with ``skip``, the message of a step to skip."""
        if not self.skip:
            self._record(terms, it)
            return None
        flags = torch.stack([~torch.isfinite(v).all() for v in terms.values()]).float()
        self.mean_over_ranks(flags)
        bad = [k for k, f in zip(terms, flags.tolist()) if f > 0]
        if not bad:
            return None
        return (f"non-finite loss {', '.join(bad)} at iteration {it} "
                f"({', '.join(f'{k}={float(terms[k].detach()):g}' for k in bad)})")

    def _record(self, terms: dict[str, Tensor], it: int) -> None:
        """Device-side record of the first iteration (and value) at which each term was non-finite."""
        for k, v in terms.items():
            v = v.detach().float()
            bad = ~torch.isfinite(v)
            if k not in self._first:
                self._first[k] = (torch.full((), -1, dtype=torch.long, device=v.device),
                                  torch.zeros((), device=v.device))
            first, value = self._first[k]
            new = bad & (first < 0)
            self._first[k] = (torch.where(new, torch.full_like(first, it), first),
                              torch.where(new, v, value))

    def raise_if_any(self) -> None:
        """Raise :class:`NonFiniteLossError` if a term was non-finite at any step recorded so
        far; one host synchronisation (a collective under DDP: every rank raises or none)."""
        if not self._first:
            return
        names = list(self._first)
        first = torch.stack([self._first[k][0] for k in names])
        if self.distributed:
            flag = (first >= 0).any().float().reshape(1)
            self.mean_over_ranks(flag)
            if float(flag) == 0:
                return
        values = torch.stack([self._first[k][1] for k in names]).tolist()
        bad = [(k, i, v) for k, i, v in zip(names, first.tolist(), values) if i >= 0]
        if not bad and not self.distributed:
            return
        msg = ", ".join(f"{k}={v:g} at iteration {i}" for k, i, v in bad) or "on another rank"
        raise NonFiniteLossError(f"non-finite loss {msg}; {HINT}")
