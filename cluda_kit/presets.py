"""What each shipped preset trains, in one line: ``cluda-kit presets``.

    gta2cs_hrda_cluda   cluda (HRDA)   gta -> cityscapes   crop 1024x1024   40000 it   paper 74.4 ± 0.3 (CLUDA)

Read from the presets themselves, plus :data:`PUBLISHED`, the mIoU (%) the papers report for
each GTA / SYNTHIA -> Cityscapes preset's method on Cityscapes val (SYNTHIA: 16 classes). No torch
import: listing presets is instant.
"""
from __future__ import annotations

from typing import Any

__all__ = ["PUBLISHED", "preset_line", "preset_lines"]

#: preset -> (published mIoU, its source), or (None, "") where no paper reports that combination or
#: the preset is a variant of a method (the PiPa and SePiCo presets)
PUBLISHED: dict[str, tuple[str | None, str]] = {
    "gta2cs_daformer": ("68.3", "DAFormer"),
    "gta2cs_daformer_cluda": ("70.1", "Papers with Code listing, not the paper"),
    "gta2cs_daformer_mic": (None, ""),
    "gta2cs_daformer_pipa": (None, ""),
    "gta2cs_daformer_sepico": (None, ""),
    "gta2cs_deeplabv2_cluda": (None, ""),
    "gta2cs_hrda": ("73.8", "HRDA"),
    "gta2cs_hrda_cluda": ("74.4 ± 0.3", "CLUDA"),
    "gta2cs_hrda_cluda_reference": ("74.4 ± 0.3", "CLUDA, release settings"),
    "gta2cs_hrda_mic": ("75.9", "MIC"),
    "synthia2cs_daformer_cluda": (None, ""),
    "synthia2cs_hrda_cluda": ("66.8 ± 0.4", "CLUDA v2; 67.2 in v1"),
}


def preset_line(name: str, cfg: Any) -> list[str]:
    """The columns of one preset: name, method, data, crop, iterations, published number."""
    from .config import method_of

    method = method_of(cfg).rsplit(":", 1)[-1]
    if cfg.uda.mic.enabled:
        method += " + MIC"
    if cfg.model.hrda.enabled:
        method += " (HRDA)"
    data = f"{cfg.data.source.name}"
    if cfg.data.source.name == "miniscapes":
        data = f"miniscapes {cfg.data.source.domain}"
    target = cfg.data.target.name if cfg.data.target.name != "miniscapes" else cfg.data.target.domain
    data += f" -> {target}" if cfg.uda.mode == "self_training" else f" ({cfg.uda.mode})"
    crop = "x".join(str(v) for v in cfg.data.crop_size)
    miou, source = PUBLISHED.get(name, (None, ""))
    paper = f"paper {miou} ({source})" if miou else ""
    return [name, method, data, f"crop {crop}", f"{cfg.train.max_iters} it", paper]


def preset_lines() -> list[str]:
    """One aligned line per shipped preset (``cluda-kit presets``)."""
    from .config import load_config, preset_names

    rows = [preset_line(name, load_config(name)) for name in preset_names()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
