"""Evaluation speed of the demo model (eval mode, no gradients): whole-image vs sliding-window
inference (``cluda_kit.engine.evaluate.predict_whole`` / ``predict_slide``), images per second."""
from __future__ import annotations

import statistics
import time


def run(quick: bool = False) -> dict:
    import torch

    from cluda_kit.config import load_config
    from cluda_kit.engine.evaluate import predict_slide, predict_whole
    from cluda_kit.models import build_segmentor

    cfg = load_config("miniscapes_cluda")
    torch.manual_seed(0)
    model = build_segmentor(cfg.model).eval()
    val_h, val_w = cfg.data.val.size
    sizes = [(val_h // 2, val_w // 2)] if quick else [(val_h, val_w), (2 * val_h, 2 * val_w)]
    batch, reps = 2, (2 if quick else 5)
    rows = []
    with torch.no_grad():
        for h, w in sizes:
            x = torch.randn(batch, 3, h, w)
            window = (h // 2, w // 2)
            stride = (h // 4, w // 4)
            modes = {"whole": lambda: predict_whole(model, x, cfg.model.num_classes),
                     f"slide {window[0]}x{window[1]} / {stride[0]}x{stride[1]}":
                         lambda: predict_slide(model, x, cfg.model.num_classes, window, stride)}
            for name, fn in modes.items():
                fn()  # warm-up
                times = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t0)
                med = statistics.median(times)
                rows.append({"size": [h, w], "mode": name, "batch": batch, "median_s": med,
                             "images_per_s": batch / med})
    return {"model": f"{cfg.model.encoder} + {cfg.model.decoder}", "threads": torch.get_num_threads(),
            "rows": rows}


def table(r: dict) -> str:
    lines = [f"Model {r['model']}, batch 2, {r['threads']} threads.", "",
             "| input | mode | s / batch | images/s |", "|---|---|---:|---:|"]
    for row in r["rows"]:
        lines.append(f"| {row['size'][0]}x{row['size'][1]} | {row['mode']} | {row['median_s']:.3f} "
                     f"| {row['images_per_s']:.1f} |")
    return "\n".join(lines)
