"""The paper-preset table of README: each paper preset's published number, its training and
evaluation settings (read from the preset itself), the step time and memory the kit measured on a
GPU where it did, and what is verified here (no preset has been trained to its published number).

    python -m bench.presets            # prints the table (README "Paper presets" holds this output)

tests/test_bench.py checks that README's table is what this prints, so the two cannot drift.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from cluda_kit.presets import PUBLISHED

RESULTS = Path(__file__).resolve().parent / "results"

#: mIoU (%) published for each preset's method (the package's table, which `cluda-kit presets` prints)
PAPER = PUBLISHED

_CHECKED = ("settings read against the release's configs (its differences: docs/method.md §9); a "
            "checkpoint in the release's layout (random weights) loads to the same logits")
#: what is verified here for each preset; no preset has been trained to its published number here
STATUS = {
    "gta2cs_daformer": _CHECKED,
    "gta2cs_daformer_cluda": "**reconstructed**: the release has no training path for DAFormer + CLUDA "
                             "(docs/method.md §9); its checkpoint layout loads; one GPU step measured",
    "gta2cs_daformer_mic": _CHECKED,
    "gta2cs_daformer_pipa": "variant: PiPa's pixel contrast at its release's settings, without its patch term "
                            "(`uda/methods/pipa.py`)",
    "gta2cs_daformer_sepico": "variant: SePiCo's DistCL, without its source augmentation and class-balanced "
                              "target crops (`uda/methods/sepico.py`)",
    "gta2cs_deeplabv2_cluda": "settings against the release; its checkpoints are not mapped (ResNetV1c stem)",
    "gta2cs_hrda": _CHECKED,
    "gta2cs_hrda_cluda": _CHECKED + "; one GPU step measured",
    "gta2cs_hrda_cluda_reference": "the release's quirks switched on (docs/method.md §9)",
    "gta2cs_hrda_mic": _CHECKED,
    "synthia2cs_daformer_cluda": "**reconstructed**, as `gta2cs_daformer_cluda`",
    "synthia2cs_hrda_cluda": "settings against the release; the network of `gta2cs_hrda_cluda`",
}

#: GPU measurements (bench/gpu_check.py on an H100, random weights): the one record that timed bf16
#: and fp32 on the same code, so that the two precisions in a row compare like for like.
MEASURED = ("gpu_check_H100_before_sync_fixes.json",)


def measured() -> dict[tuple[str, str], dict]:
    """(preset, amp) -> the newest record without activation checkpointing or compile."""
    out: dict[tuple[str, str], dict] = {}
    for name in reversed(MEASURED):  # the first file (newest) wins
        path = RESULTS / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        for r in data["records"]:
            if r.get("activation_checkpointing") or r.get("compile") or "sec_per_iter" not in r:
                continue
            out[(r["preset"], r["amp"])] = {**r, "device": data["device"], "file": name}
    return out


def rows() -> list[dict]:
    from cluda_kit.config import load_config

    gpu = measured()
    out = []
    for preset, (miou, source) in PAPER.items():
        cfg = load_config(preset)
        d, t = cfg.data, cfg.train
        val = f"{d.val.resize[1]}×{d.val.resize[0]}" if d.val.resize else "as stored"
        window = f" {t.eval_window[1]}×{t.eval_window[0]}" if t.eval_mode == "slide" and t.eval_window else ""
        amp = "fp32" if t.amp == "none" else "bf16"
        times = []
        for key, label in (("bf16", "bf16"), ("none", "fp32")):
            r = gpu.get((preset, key))
            if r is not None:
                times.append(f"{label} {r['sec_per_iter']:.2f} s/it, {r['peak_mem_gib']:.1f} GiB")
        out.append({
            "preset": preset, "paper": f"{miou} ({source})" if miou else "–",
            "training": f"{d.crop_size[1]}×{d.crop_size[0]}, {d.batch_size} + {d.batch_size}, "
                        f"{t.max_iters // 1000}k, {amp}",
            "protocol": f"{t.eval_mode}{window} on {val}",
            "measured": "; ".join(times) if times else "–",
            "status": STATUS[preset],
        })
    return out


def table() -> str:
    lines = ["| preset | paper mIoU | crop, batch (src + tgt), iterations, precision | evaluation | "
             "H100 step (random weights) | verified here |",
             "|---|---|---|---|---|---|"]
    for r in rows():
        lines.append(f"| `{r['preset']}` | {r['paper']} | {r['training']} | {r['protocol']} | "
                     f"{r['measured']} | {r['status']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    print(table())
