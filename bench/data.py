"""Data throughput: miniscapes scenes/s (rendering, 256x512 and the demo's source size) and
samples/s of a prepared dataset (GTA5 layout written by ``write_miniscapes`` + ``prepare``) read
through the trainer's DataLoader with 0 and 2 workers.

The paper-size part (``paper``) answers whether the loader keeps up with the GPU step goals of
the paper presets: fake GTA5 (1914x1052) and Cityscapes (2048x1024) trees, rendered by miniscapes
and given a pixel noise (sigma 6) so that their PNGs are as large as real ones (about 3-4 MB; a
flat-shaded render compresses to 20 kB and would decode unrealistically fast), are read through
the presets' own data path (``train_stream``: resize, RCS-free crop, flip, pinned memory) with
0 and 2 workers; decoders (Pillow, torchvision.io, OpenCV when installed) are timed on the same
files. The per-worker rate gives the workers one GPU step needs."""
from __future__ import annotations

import math
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


#: s/it goals of issue #18 on one H100/H200, and the samples each step reads per domain
STEP_GOALS = {"gta2cs_daformer_cluda": 0.27, "gta2cs_hrda_cluda": 0.72}


def textured_tree(root: Path, domain: str, num: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """A miniscapes tree in ``domain``'s raw layout whose images carry N(0, 6) pixel noise (real
    photo-like PNG sizes), prepared like a download; returns the image files."""
    import numpy as np
    from PIL import Image

    from cluda_kit.data.prepare import prepare, write_miniscapes

    write_miniscapes(root, domain, num=num, size=size, progress=False, polygons=False)
    folder = {"game": "images", "real": "leftImg8bit"}[domain]
    files = sorted((root / folder).rglob("*.png"))
    rng = np.random.default_rng(seed)
    for f in files:
        a = np.asarray(Image.open(f).convert("RGB")).astype(np.float32)
        Image.fromarray(np.clip(a + rng.normal(0, 6, a.shape), 0, 255).astype(np.uint8)).save(f)
    prepare({"game": "gta", "real": "cityscapes"}[domain], root, progress=False)
    return files


def decoder_times(files: list[Path], repeats: int = 3) -> dict:
    """Milliseconds per image of each available decoder (one thread), and whether its pixels
    equal Pillow's."""
    import numpy as np
    import torch
    from PIL import Image

    from cluda_kit.data.datasets import _torchvision_decoder

    def pillow(p):
        with Image.open(p) as im:
            return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)

    decoders = {"Pillow": pillow}
    tv = _torchvision_decoder()
    if tv is not None:
        decoders["torchvision.io"] = tv
    try:
        import cv2

        cv2.setNumThreads(1)
        decoders["OpenCV"] = lambda p: torch.from_numpy(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)).permute(2, 0, 1)
    except ImportError:
        pass
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for name, fn in decoders.items():
            same = bool(torch.equal(fn(files[0]), pillow(files[0])))
            t0 = time.perf_counter()
            for _ in range(repeats):
                for f in files:
                    fn(f)
            out[name] = {"ms": 1e3 * (time.perf_counter() - t0) / (repeats * len(files)), "same_as_pillow": same}
    finally:
        torch.set_num_threads(threads)
    return out


def stream_rate(cfg, domain: str, n_batches: int) -> float:
    """Samples/s of the trainer's ``train_stream`` for ``domain`` (first batch not counted)."""
    from cluda_kit.engine.data import train_stream

    stream = train_stream(cfg, domain)
    next(stream)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(stream)
    return n_batches * cfg.data.batch_size / (time.perf_counter() - t0)


def paper_rates(quick: bool = False) -> dict:
    """Decoders and the paper presets' loaders on textured fake GTA5 / Cityscapes trees."""
    from cluda_kit.config import load_config

    num = 3 if quick else 8
    gta_size, cs_size = ((263, 478), (256, 512)) if quick else ((1052, 1914), (1024, 2048))
    out: dict = {"images": num, "gta_size": list(gta_size), "cityscapes_size": list(cs_size), "presets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        gta, cs = Path(tmp) / "gta", Path(tmp) / "cityscapes"
        gta_files = textured_tree(gta, "game", num, gta_size)
        cs_files = textured_tree(cs, "real", num, cs_size)
        out["png_mb"] = {"gta": sum(f.stat().st_size for f in gta_files) / num / 2**20,
                         "cityscapes": sum(f.stat().st_size for f in cs_files) / num / 2**20}
        out["decoders"] = {"gta": decoder_times(gta_files, 1 if quick else 3),
                           "cityscapes": decoder_times(cs_files, 1 if quick else 3)}
        for preset, goal in STEP_GOALS.items():
            rows = {}
            for workers in (0, 2):
                sets = [f"data.source.root={gta}", f"data.target.root={cs}", "data.rcs.enabled=false",
                        f"data.num_workers={workers}", "data.target.split=train"]
                if quick:
                    sets += ["data.source.resize=[180,320]", "data.target.resize=[128,256]", "data.crop_size=[128,128]",
                             "data.frame_margins=[0,0,0,0]"]
                cfg = load_config(preset, sets)
                rows[f"{workers} workers"] = {d: stream_rate(cfg, d, 2 if quick else 6) for d in ("source", "target")}
            cfg = load_config(preset)
            need = cfg.data.batch_size / goal  # samples/s per domain at the goal's step time
            single = rows["0 workers"]
            out["presets"][preset] = {
                "goal_s_per_it": goal, "batch_per_domain": cfg.data.batch_size,
                "source_resize": list(cfg.data.source.resize), "target_resize": list(cfg.data.target.resize),
                "crop": list(cfg.data.crop_size), "rates": rows, "needed_per_domain": need,
                "workers_needed": {d: math.ceil(need / single[d]) for d in ("source", "target")},
                "preset_workers_per_domain": cfg.data.num_workers}
    return out


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
    result["paper"] = paper_rates(quick)
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
    if "paper" in r:
        lines += ["", *paper_table(r["paper"])]
    return "\n".join(lines)


def paper_table(q: dict) -> list[str]:
    g, c = q["gta_size"], q["cityscapes_size"]
    lines = [f"Paper-size fake trees ({q['images']} textured images each: GTA5 {g[1]}x{g[0]}, "
             f"{q['png_mb']['gta']:.1f} MB per PNG; Cityscapes {c[1]}x{c[0]}, {q['png_mb']['cityscapes']:.1f} MB). "
             "Decoding, one thread, ms per image:", "",
             "| decoder | GTA5 | Cityscapes | same pixels as Pillow |", "|---|---:|---:|---|"]
    for name, v in q["decoders"]["gta"].items():
        cs = q["decoders"]["cityscapes"][name]
        lines.append(f"| {name} | {v['ms']:.1f} | {cs['ms']:.1f} | {v['same_as_pillow'] and cs['same_as_pillow']} |")
    lines += ["", "The presets' training streams (decode, resize, crop, flip; RCS off), samples/s per domain, "
              "and the workers per domain one GPU step at the goal needs (from the 0-worker rate):", "",
              "| preset | goal s/it | source resize → crop | 0 workers src / tgt | 2 workers src / tgt | "
              "needed per domain | workers needed src / tgt (preset has) |", "|---|---:|---|---:|---:|---:|---:|"]
    for preset, v in q["presets"].items():
        r0, r2 = v["rates"]["0 workers"], v["rates"]["2 workers"]
        sr, cr = v["source_resize"], v["crop"]
        lines.append(f"| {preset} | {v['goal_s_per_it']} | {sr[1]}x{sr[0]} → {cr[1]}x{cr[0]} | "
                     f"{r0['source']:.1f} / {r0['target']:.1f} | {r2['source']:.1f} / {r2['target']:.1f} | "
                     f"{v['needed_per_domain']:.1f} | {v['workers_needed']['source']} / "
                     f"{v['workers_needed']['target']} ({v['preset_workers_per_domain']}) |")
    return lines
