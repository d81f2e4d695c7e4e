"""Trainer callbacks that draw: attach them to a :class:`~cluda_kit.engine.trainer.Trainer`
(``Trainer(cfg, out, callbacks=[DebugFigures()])``; ``cluda-kit train`` attaches DebugFigures).
The engine itself never imports this package."""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["DebugFigures"]


class DebugFigures:
    """Every ``every`` iterations (default: the run's ``train.figure_every``; 0 = never), one
    figure of the step's pipeline on a fresh batch (source, target, pseudo-label, mix,
    prediction: :meth:`Trainer.debug_batch`) written to ``RUN_DIR/figures/iter_XXXXXX.png`` and,
    when the trainer has a TensorBoard writer, added to it as an image (tag ``debug/figure``).

    Args:
        every: the interval in iterations, or None for ``train.figure_every``.
        dpi: of the PNG files.
    """

    TAG = "debug/figure"

    def __init__(self, every: int | None = None, dpi: int = 80) -> None:
        self.every = every
        self.dpi = dpi
        self.written: list[Path] = []

    def on_step_end(self, trainer: Any) -> None:
        every = trainer.cfg.train.figure_every if self.every is None else self.every
        if every and trainer.iter % every == 0:
            path = self.save(trainer)
            if path is not None:
                self.written.append(path)

    def save(self, trainer: Any) -> Path | None:
        """Write the figure of the trainer's current state now; None without a run directory
        (or on a DDP rank other than 0)."""
        if trainer.out_dir is None or not trainer.dist.is_main:
            return None
        import torch

        from .plots import debug_figure

        with torch.no_grad():
            fig = debug_figure(**trainer.debug_batch())
        path = trainer.out_dir / "figures" / f"iter_{trainer.iter:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=self.dpi)
        writer = getattr(trainer, "tensorboard", None)
        if writer is not None:  # the same figure as an image in TensorBoard
            writer.add_image(self.TAG, self.render(fig), trainer.iter, dataformats="HWC")
        return path

    def render(self, fig: Any) -> Any:
        """The figure as an (H, W, 3) uint8 array at this callback's dpi (Agg, no pyplot)."""
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(fig)
        fig.set_dpi(self.dpi)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()
