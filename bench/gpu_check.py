"""GPU check: seconds per iteration, peak memory and achieved TFLOP/s of the full UDA step.

Runs a few training iterations of ``gta2cs_daformer_cluda`` (512x512 crops) and
``gta2cs_hrda_cluda`` (1024x1024 crops, 0.5-scale context + 512x512 detail) at the paper's
resolution with random weights, in fp32 and under bf16 autocast, each with and without activation
checkpointing (``model.activation_checkpointing``). No dataset is needed: the presets' datasets are
replaced (config overrides) by small miniscapes sets, and the trainer's source/target streams by a
fixed batch of miniscapes scenes rendered at the crop size and kept on the device, so the numbers
are the model's step, not data loading.

Per setting: ``warmup`` steps, one step under ``torch.utils.flop_counter.FlopCounterMode`` (model
FLOPs per iteration: forward + backward of every pass, the contrastive loss's matrix products
and, with activation checkpointing, the recomputed forwards included), ``iters`` timed steps
(CUDA-synchronised wall clock), the peak of ``torch.cuda.max_memory_allocated``, and one more
step under ``torch.cuda.set_sync_debug_mode("warn")`` that reports whether (and where) the step
synchronised host and device. "fp32" runs with TF32 switched off (true fp32, as the reference's GPUs).

    python bench/gpu_check.py --out bench/results/gpu_check.json          # on a GPU, < 8 min on an H100
    python bench/gpu_check.py --quick --out /tmp/gpu_check.json           # CPU smoke test, tiny sizes
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cluda_kit.config import load_config  # noqa: E402
from cluda_kit.data.miniscapes import Miniscapes  # noqa: E402
from cluda_kit.engine.trainer import Trainer  # noqa: E402

PRESETS = ("gta2cs_daformer_cluda", "gta2cs_hrda_cluda")
AMPS = ("none", "bf16")

# Dense peak throughput (TFLOP/s, no sparsity) from NVIDIA's data sheets, for model FLOPs
# utilisation. "none" is true fp32 (TF32 off), so its peak is the fp32 CUDA-core rate.
PEAK_TFLOPS = {  # substring of torch.cuda.get_device_name -> {amp: peak}
    "H100 80GB HBM3": {"bf16": 989.4, "none": 66.9},  # H100 SXM5
    "H200": {"bf16": 989.4, "none": 66.9},
    "H100 PCIe": {"bf16": 756.0, "none": 51.2},
    "A100": {"bf16": 312.0, "none": 19.5},
}


def peak_tflops(device_name: str, amp: str) -> float | None:
    for key, peaks in PEAK_TFLOPS.items():
        if key in device_name:
            return peaks.get(amp)
    return None


def sync_site(stack: list[traceback.FrameSummary]) -> str:
    """The innermost frame of the kit (else of anything but torch/warnings) that made a sync."""
    def pick(pred):
        for fr in reversed(stack):
            if pred(fr.filename):
                return f"{Path(fr.filename).name}:{fr.lineno} {fr.name}"
        return None
    return (pick(lambda f: "cluda_kit" in f and "sync_audit" not in f)
            or pick(lambda f: "/torch/" not in f and "warnings" not in f and "gpu_check" not in f)
            or "unknown (C++ / autograd thread)")


def count_syncs(step) -> Counter:
    """Run ``step()`` under ``torch.cuda.set_sync_debug_mode("warn")`` and count the synchronising
    CUDA calls by the Python line that made them."""
    sites: Counter = Counter()

    def hook(message, category, filename, lineno, file=None, line=None):
        text = str(message).lower()
        if "synchroniz" in text and "prototype" not in text:
            sites[sync_site(traceback.extract_stack()[:-1])] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = hook
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sites


def matmul_probe(device: torch.device, n: int = 8192, reps: int = 10) -> dict:
    """Measured dense matrix-product rate (TFLOP/s) in bf16 and in fp32 with the current TF32
    settings: what the card gives at best, next to the data-sheet peaks."""
    out = {"fp32_matmul_precision": torch.get_float32_matmul_precision(),
           "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
           "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        out[f"matmul_tflops_{name}"] = 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12
        del a, b
    torch.cuda.empty_cache()
    return out


def profile_step(step, row_limit: int = 12) -> str:
    """torch.profiler of one step: the busiest CUDA kernels, and CPU vs GPU busy time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    # the record_function ranges (step/..., Optimizer.step) span their kernels: count kernels once
    ops = [e for e in events if not getattr(e, "is_user_annotation", False)
           and not e.key.startswith(("step/", "Optimizer."))]
    gpu_us = sum(e.self_device_time_total for e in ops)
    cpu_us = sum(e.self_cpu_time_total for e in ops)
    head = (f"profiled step: GPU kernels busy {gpu_us / 1e3:.1f} ms, CPU ops {cpu_us / 1e3:.1f} ms "
            "(profiler overhead included)")
    return head + "\n" + events.table(sort_by="self_device_time_total", row_limit=row_limit,
                                      max_name_column_width=60)


def overrides(preset: str, quick: bool, amp: str, ckpt: bool, device: str,
              compile_: bool | str = False) -> list[str]:
    """Config overrides: miniscapes stand-ins for the datasets, no evaluation/checkpoints/figures,
    random weights; ``quick`` shrinks the model and the crops to CPU size."""
    base = load_config(preset)
    crop = list(base.data.crop_size)
    if quick:
        crop = [64, 64]
    out = [f"data.{d}.name=miniscapes" for d in ("source", "target", "val")]
    out += [f"data.{d}.size={crop}" for d in ("source", "target", "val")]
    out += [f"data.{d}.length=2" for d in ("source", "target", "val")]
    out += ["data.source.domain=game", "data.target.domain=real", "data.val.domain=real",
            f"data.crop_size={crop}", "data.rcs.enabled=false", "data.num_workers=0",
            "model.pretrained=", f"model.activation_checkpointing={str(ckpt).lower()}",
            f"train.amp={amp}", f"train.device={device}", "train.eval_every=0",
            f"train.compile={str(bool(compile_)).lower()}",
            f"train.compile_mode={'reduce-overhead' if compile_ == 'cudagraphs' else 'default'}",
            "train.checkpoint_every=0", "train.figure_every=0", "train.log_every=1000000"]
    if quick:
        out += ["model.encoder=mit_nano", "model.embed_dim=16", "model.fused_dim=16",
                "loss.contrastive.grid=[16, 16]", "train.threads=1"]
        if base.model.hrda.enabled:
            out += ["model.hrda.detail_crop=[32, 32]", "model.hrda.inference_stride=[16, 16]"]
    return out


class FixedBatches:
    """An endless stream that always yields the same batch (already on the device)."""

    def __init__(self, batch: dict):
        self.batch = batch

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return self.batch


def fixed_batch(domain: str, size: tuple[int, int], batch_size: int, device: torch.device) -> dict:
    ds = Miniscapes(domain, "train", size=size, length=batch_size, seed=0)
    samples = [ds[i] for i in range(batch_size)]
    return {"image": torch.stack([s["image"] for s in samples]).to(device),
            "label": torch.stack([s["label"] for s in samples]).to(device),
            "name": [s["name"] for s in samples]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(preset: str, amp: str, ckpt: bool, *, quick: bool, device: torch.device,
            warmup: int, iters: int, compile_: bool = False, profile: bool = False) -> dict:
    cfg = load_config(preset, overrides(preset, quick, amp, ckpt, str(device), compile_))
    record = {"preset": preset, "amp": amp, "activation_checkpointing": ckpt, "compile": compile_,
              "crop": list(cfg.data.crop_size), "encoder": cfg.model.encoder,
              "hrda": cfg.model.hrda.enabled}
    trainer = None
    try:
        torch.manual_seed(0)
        trainer = Trainer(cfg, progress=False)
        b = cfg.data.batch_size
        trainer.source = FixedBatches(fixed_batch("game", cfg.data.crop_size, b, device))
        trainer.target = FixedBatches(fixed_batch("real", cfg.data.crop_size, b, device))
        t0 = time.perf_counter()
        for _ in range(warmup):
            trainer.step()
        _sync(device)
        record["warmup_s"] = time.perf_counter() - t0
        # model FLOPs of one iteration
        with FlopCounterMode(display=False) as counter:
            trainer.step()
        flops = counter.get_total_flops()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            res = trainer.step()
        _sync(device)
        sec = (time.perf_counter() - t0) / iters
        record.update(sec_per_iter=sec, flops_per_iter=flops,
                      achieved_tflops=flops / sec / 1e12,
                      loss=res.values.get("loss"))
        if device.type == "cuda":
            record["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            # host-device synchronisations inside one step, by the line that made them
            sites = count_syncs(trainer.step)
            record.update(sync_in_step=bool(sites), sync_count=sum(sites.values()),
                          sync_sites=dict(sites.most_common()))
            if profile:
                print(f"== {preset} {amp} ckpt={ckpt} compile={compile_}: " + profile_step(trainer.step),
                      flush=True)
        else:
            record.update(peak_mem_gib=None, sync_in_step=None, sync_count=None, sync_sites={})
    except torch.cuda.OutOfMemoryError as err:  # report and go on with the next setting
        record.update(error=f"out of memory: {str(err).splitlines()[0]}")
    except Exception as err:  # e.g. a torch.compile failure: report it, go on with the next one
        if quick:
            raise
        record.update(error=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    finally:
        del trainer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return record


def markdown(records: list[dict], device_name: str) -> str:
    lines = [f"GPU check on {device_name} (random weights, miniscapes batches at the crop size)", "",
             "| preset | crop | amp | act. ckpt | compile | s/iter | peak GiB | TFLOP/iter | TFLOP/s | MFU "
             "| sync in step |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        crop = "x".join(map(str, r["crop"]))
        if "error" in r:
            lines.append(f"| {r['preset']} | {crop} | {r['amp']} | {r['activation_checkpointing']} "
                         f"| {r.get('compile', False)} | {r['error']} | | | | | |")
            continue
        mem = "-" if r["peak_mem_gib"] is None else f"{r['peak_mem_gib']:.1f}"
        sync = "-" if r["sync_in_step"] is None else (f"yes ({r['sync_count']})" if r["sync_in_step"] else "no")
        mfu = "-" if r.get("mfu") is None else f"{100 * r['mfu']:.1f} %"
        lines.append(f"| {r['preset']} | {crop} | {r['amp']} | {r['activation_checkpointing']} "
                     f"| {r.get('compile', False)} | {r['sec_per_iter']:.3f} | {mem} "
                     f"| {r['flops_per_iter'] / 1e12:.2f} | {r['achieved_tflops']:.1f} | {mfu} | {sync} |")
    return "\n".join(lines)


def write(out: Path, device_name: str, quick: bool, records: list[dict], probe: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device_name, "torch": torch.__version__, "quick": quick,
                               "matmul_probe": probe, "records": records}, indent=2))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="write the records as JSON here")
    ap.add_argument("--quick", action="store_true", help="CPU smoke test at tiny sizes")
    ap.add_argument("--presets", nargs="+", default=list(PRESETS))
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3; quick 0)")
    ap.add_argument("--iters", type=int, default=None, help="timed steps (default 5; quick 1)")
    ap.add_argument("--amps", nargs="+", default=list(AMPS), choices=AMPS)
    ap.add_argument("--ckpt", nargs="+", default=["off", "on"], choices=["off", "on"],
                    help="activation checkpointing settings to run")
    ap.add_argument("--profile", action="store_true",
                    help="print a torch.profiler kernel table of one step per setting (GPU)")
    ap.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on", "cudagraphs"],
                    help="train.compile settings to run (torch.compile of the student's segmentor; "
                         "cudagraphs: with train.compile_mode=reduce-overhead)")
    args = ap.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else (0 if args.quick else 3)
    iters = args.iters if args.iters is not None else (1 if args.quick else 5)
    probe: dict = {}
    if args.quick:
        device = torch.device("cpu")
        device_name = f"CPU ({platform.processor() or platform.machine()})"
    elif torch.cuda.is_available():
        device = torch.device("cuda", 0)
        device_name = torch.cuda.get_device_name(device)
        # "fp32" means true fp32 (no TF32 tensor cores), as the reference's GPUs ran it
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        probe = matmul_probe(device)
        print(json.dumps(probe), flush=True)
    else:
        ap.error("no CUDA device: run on a GPU, or pass --quick for the CPU smoke test")
    settings = [(p, amp, ck == "on", {"off": False, "on": True}.get(co, co)) for p in args.presets
                for amp in args.amps for ck in args.ckpt for co in args.compile]
    records = []
    for preset, amp, ckpt, compile_ in settings:
        rec = measure(preset, amp, ckpt, quick=args.quick, device=device, warmup=warmup,
                      iters=iters, compile_=compile_, profile=args.profile)
        rec["device"] = device_name
        peak = peak_tflops(device_name, amp)
        rec["peak_tflops"] = peak
        rec["mfu"] = rec["achieved_tflops"] / peak if peak and "achieved_tflops" in rec else None
        records.append(rec)
        print(json.dumps({k: v for k, v in rec.items() if k != "sync_sites"}), flush=True)
        if args.out is not None:  # after every setting, so a cut-short run keeps what it measured
            write(args.out, device_name, args.quick, records, probe)
    table = markdown(records, device_name)
    print(table)
    for r in records:
        if r.get("sync_sites"):
            print(f"syncs in {r['preset']} {r['amp']} ckpt={r['activation_checkpointing']} "
                  f"compile={r['compile']}: "
                  + "; ".join(f"{site} x{n}" for site, n in r["sync_sites"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
