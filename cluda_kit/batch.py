"""Batch work that survives bad items: run over files (images to segment, labels to convert),
report each failure in one line naming the item, go on with the rest, and summarise.

    report = run_batch(convert, jobs, name=lambda job: job.source, desc="prepare gta")
    print(report.summary())       # 3 written, 1 skipped (already done), 1 failed
    sys.exit(report.exit_code)    # 1 when any item failed

``work(item)`` returns :data:`WRITTEN` or :data:`SKIPPED` (or ``(status, value)`` to hand a value
back, collected in ``report.values``) and raises for a bad item. A failure prints
``failed: NAME: what is wrong`` on stderr at once: an :class:`ItemError` (or any error whose
message already names the item) as it is, any other error as :func:`describe` words it, never a
traceback or a library-internal source path. Callers that batch items themselves (``predict``
forwards several images at once) use :meth:`BatchReport.guard` around each item's steps.

Like :mod:`cluda_kit.fileio`, this module imports nothing of the kit.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["WRITTEN", "SKIPPED", "ItemError", "BatchReport", "run_batch", "describe", "summary"]

WRITTEN, SKIPPED = "written", "skipped"

# a C/C++/Cython source location inside a library's build tree, e.g. torchvision's
# "decode_image, /__w/vision/.../decode_image.cpp:67, " in front of its real message
_SOURCE_PATH = re.compile(r"(?:\w+, )?\S*/\S+\.(?:cpp|cc|cxx|c|h|hpp|cu|pyx)(?::\d+)?,?\s*")


class ItemError(Exception):
    """One bad item; the message is the whole report line and names the file itself."""


def describe(err: BaseException) -> str:
    """What went wrong, in words fit for one line: the first line of the message, without
    library-internal source paths; for an OS error its reason and file."""
    if isinstance(err, IsADirectoryError):
        return "a folder, not a file"
    if isinstance(err, PermissionError):
        return "permission denied"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror + (f" ({err.filename})" if err.filename else "")
    lines = str(err).strip().splitlines()
    text = _SOURCE_PATH.sub("", " ".join(lines[0].split())) if lines else ""
    return text or type(err).__name__


def summary(written: int, skipped: int, failed: int) -> str:
    """The closing line of a batch: "3 written, 1 skipped (already done), 1 failed"."""
    return f"{written} written, {skipped} skipped (already done), {failed} failed"


def _line(name: Any, err: BaseException) -> str:
    text = str(err)
    system = isinstance(err, OSError) and err.strerror  # "[Errno 13] Permission denied: 'x.png'"
    if isinstance(err, ItemError) or (not system and str(name) in text and "\n" not in text.strip()):
        return " ".join(text.split())
    return f"{name}: {describe(err)}"


@dataclass
class BatchReport:
    """Counts of a batch, the failure lines, and the values ``work`` handed back, with a
    progress bar over ``total`` items (tqdm.auto; ``progress=False`` hides it)."""

    total: int | None = None
    desc: str = ""
    progress: bool = True
    written: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=self.total, desc=self.desc, disable=not self.progress or self.total == 0)

    def add(self, status: str, value: Any = None) -> None:
        """Count one item done: :data:`WRITTEN` or :data:`SKIPPED` (and keep ``value`` if given)."""
        if status not in (WRITTEN, SKIPPED):
            raise ValueError(f"BatchReport.add: status {status!r}; expected {WRITTEN!r} or {SKIPPED!r}")
        if status == WRITTEN:
            self.written += 1
        else:
            self.skipped += 1
        if value is not None:
            self.values.append(value)
        self._bar.update(1)

    def fail(self, name: Any, err: BaseException | str) -> None:
        """Count one item failed and print its line (``err``: an exception or the line itself)."""
        from tqdm.auto import tqdm

        line = err if isinstance(err, str) else _line(name, err)
        self.failed.append(line)
        tqdm.write(f"failed: {line}", file=sys.stderr)
        self._bar.update(1)

    @contextmanager
    def guard(self, name: Any) -> Iterator[None]:
        """Run the block for item ``name``; an ``Exception`` in it counts the item failed and is
        not raised (KeyboardInterrupt is). The caller sees the failure in ``len(report.failed)``."""
        try:
            yield
        except Exception as err:  # noqa: BLE001 - one bad item must not stop the batch
            self.fail(name, err)

    def close(self) -> None:
        self._bar.close()

    def summary(self) -> str:
        return summary(self.written, self.skipped, len(self.failed))

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def exit_code(self) -> int:
        """0 when every item was written or skipped, 1 when any failed."""
        return 0 if self.ok else 1


def _attempt(work: Callable[[Any], Any], item: Any, name: Any) -> tuple[str, Any]:
    """``work(item)`` as (status, value), or ("failed", the report line): in a worker process too,
    where only plain values travel back."""
    try:
        result = work(item)
    except Exception as err:  # noqa: BLE001 - reported by the caller, one line
        return "failed", _line(name, err)
    return result if isinstance(result, tuple) else (result, None)


def run_batch(work: Callable[[Any], Any], items: Sequence[Any], *, name: Callable[[Any], Any] = str,
              desc: str = "", progress: bool = True, workers: int = 1,
              report: BatchReport | None = None) -> BatchReport:
    """Apply ``work`` to every item (in ``workers`` processes when > 1; ``work`` must then be
    picklable), reporting failures as they come; returns the (closed) report.

    ``name(item)`` names an item in its failure line; ``report`` continues an existing report
    (one that already counts failures found before the work started)."""
    from concurrent.futures import ProcessPoolExecutor

    report = report if report is not None else BatchReport(len(items), desc, progress)
    names = [name(item) for item in items]
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 and len(items) > 1 else None
    try:
        results = (pool.map(_attempt, [work] * len(items), items, names,
                            chunksize=max(1, min(32, len(items) // (4 * workers))))
                   if pool is not None else map(_attempt, [work] * len(items), items, names))
        for (status, value), item_name in zip(results, names):
            if status == "failed":
                report.fail(item_name, value)
            else:
                report.add(status, value)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        report.close()
    return report
