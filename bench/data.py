"""Data throughput: miniscapes scenes/s (rendering, 256x512 and the demo's source size) and
samples/s of a prepared dataset (GTA5 layout written by ``write_miniscapes`` + ``prepare``) read
through the trainer's DataLoader with 0 and 2 workers."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path


def miniscapes_rate(size: tuple[int, int], n: int, domains=("game", "real")) -> dict:
    """Scenes per second of ``Miniscapes(domain)[i]`` (render + tensors) for i < n."""
    from cluda_kit.data.miniscapes import Miniscapes

    out = {}
    for domain in domains:
        ds = Miniscapes(domain, "train", size=size, length=max(n, 1))
        ds[0]  # warm the layout caches
        t0 = time.perf_counter()
        for i in range(1, n + 1):
            ds[i % len(ds)]
        out[domain] = n / (time.perf_counter() - t0)
    return out


def prepared_rate(root: Path, n_batches: int, workers: int, crop: tuple[int, int], batch: int = 2) -> float:
    """Samples/s of GTA5(root) with the trainer's source transform (crop, flip) through a DataLoader."""
    import torch
    from torch.utils.data import DataLoader

    from cluda_kit.data.datasets import GTA5
    from cluda_kit.data.sampling import InfiniteSampler, TransformedDataset
    from cluda_kit.data.transforms import PairedTransform

    ds = TransformedDataset(GTA5(root), PairedTransform(crop=crop, flip=0.5))
    loader = DataLoader(ds, batch_size=batch, sampler=InfiniteSampler(len(ds), seed=0),
                        num_workers=workers, drop_last=True, generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    next(it)  # start-up (worker processes) not counted
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    rate = n_batches * batch / (time.perf_counter() - t0)
    del it
    return rate


def run(quick: bool = False) -> dict:
    from cluda_kit.config import load_config
    from cluda_kit.data.prepare import prepare, write_miniscapes

    cfg = load_config("miniscapes_cluda")
    demo_size = tuple(cfg.data.source.size)
    n = 8 if quick else 60
    result = {"miniscapes_scenes_per_s": {
        "256x512": miniscapes_rate((256, 512), n),
        f"{demo_size[0]}x{demo_size[1]} (demo source)": miniscapes_rate(demo_size, n),
    }}
    size = (128, 256) if quick else (256, 512)
    crop = (64, 128) if quick else tuple(cfg.data.crop_size)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "gta"
        num = 8 if quick else 60
        t0 = time.perf_counter()
        write_miniscapes(root, "game", num=num, size=size, progress=False)
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        prepare("gta", root, progress=False)
        t_prep = time.perf_counter() - t0
        rates = {f"{w} workers": prepared_rate(root, 4 if quick else 40, w, crop) for w in (0, 2)}
    result["prepared_gta_layout"] = {"image_size": list(size), "crop": list(crop), "images": num,
                                     "write_s": t_write, "prepare_s": t_prep, "samples_per_s": rates}
    return result


def table(r: dict) -> str:
    lines = ["| data | game | real |", "|---|---:|---:|"]
    for size, v in r["miniscapes_scenes_per_s"].items():
        lines.append(f"| miniscapes scenes/s at {size} | {v['game']:.1f} | {v['real']:.1f} |")
    p = r["prepared_gta_layout"]
    lines += ["", f"Prepared GTA-layout tree ({p['images']} images {p['image_size'][0]}x{p['image_size'][1]}, "
              f"written in {p['write_s']:.1f} s, prepared in {p['prepare_s']:.1f} s), crop "
              f"{p['crop'][0]}x{p['crop'][1]}, batch 2:", "", "| loader | samples/s |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in p["samples_per_s"].items()]
    return "\n".join(lines)
