"""Forward + backward time and peak memory of the kit's segmentors, one training-style step each.

Each (variant, device) runs in a fresh Python subprocess. A step is ``model(x)`` in train mode and
``backward()`` of the mean squared logits (+ fused), batch B of random images, fp32.

- CPU: wall time and process CPU time per step (the machine may be shared; CPU time / threads is
  the better estimate of an idle machine's wall time), peak memory = growth of the resident set
  size from before building the model to its high-water mark (bench/memory.py, so it includes the
  weights, gradients and the autograd graph).
- ``OMP_WAIT_POLICY`` defaults to PASSIVE in the subprocesses (see ``main``).
- CUDA (when available): synchronised wall time (median of ``--reps`` after 2 warm-ups) and
  ``torch.cuda.max_memory_allocated``.

On CPU the first step is timed; further ``--reps`` are timed (median reported) only if that step
took under 3 s, so big models are measured once. The CPU default is a subset (``CPU_DEFAULT``:
B0, B5, ResNet-101 + DeepLabV2, the demo model), about 3 minutes on a shared 2-core machine;
``--variants all`` adds B1..B4 (each ~27 s of CPU time at 512x512, like B0: on a CPU the
DAFormer decoder's 256-channel stride-4 fusion costs more than the encoder).

    python bench/models.py                                  # 512 x 512, batch 2
    python bench/models.py --size 128 256 --variants mit_nano_demo --reps 5
    python bench/models.py --variants mit_b5 --set activation_checkpointing=true
    python bench/models.py --json bench/results/models.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

if not __package__:  # run as a file (python bench/models.py): find the bench package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.memory import peak_rss_bytes, reset_peak_rss, rss_bytes  # noqa: E402

# name -> ModelConfig fields (the rest are ModelConfig defaults)
VARIANTS: dict[str, dict] = {
    **{f"mit_b{i}": dict(encoder=f"mit_b{i}", decoder="daformer") for i in range(6)},
    "resnet101_deeplabv2": dict(encoder="resnet101", decoder="deeplabv2", output_stride=8),
    "mit_nano_demo": dict(encoder="mit_nano", decoder="daformer", embed_dim=32, fused_dim=64),
}


#: default CPU subset (B1..B4 cost as much as B0 on a CPU: the 256-channel decoder dominates)
CPU_DEFAULT = ("mit_b0", "mit_b5", "resnet101_deeplabv2", "mit_nano_demo")


def parse_sets(items: list[str]) -> dict:
    """``["activation_checkpointing=true", "embed_dim=64"]`` -> ModelConfig overrides."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE (a ModelConfig field)")
        out[key] = yaml.safe_load(value)
    return out


def run_one(variant: str, device: str, size: tuple[int, int], batch: int, reps: int,
            threads: int, overrides: dict | None = None) -> dict:
    """Measure one variant in this process (called in a subprocess)."""
    import torch

    from cluda_kit.config import ModelConfig
    from cluda_kit.models import build_segmentor

    torch.set_num_threads(threads)
    reset_peak_rss()
    base_rss = rss_bytes()
    torch.manual_seed(0)
    fields = {**VARIANTS[variant], **(overrides or {})}
    model = build_segmentor(ModelConfig(**fields)).to(device).train()
    x = torch.randn(batch, 3, *size, device=device)
    params = sum(p.numel() for p in model.parameters())

    def step() -> tuple[float, float]:
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        out = model(x)
        (out.logits.square().mean() + out.fused.square().mean()).backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.process_time() - c0

    result = dict(variant=variant, device=device, params=params, size=list(size), batch=batch,
                  threads=threads if device == "cpu" else None, overrides=overrides or {})
    if device == "cuda":
        for _ in range(2):
            step()
        torch.cuda.reset_peak_memory_stats()
        walls = [step()[0] for _ in range(max(reps, 1))]
        result.update(wall_s=statistics.median(walls), cpu_s=None, timed_steps=len(walls),
                      peak_mem_mb=torch.cuda.max_memory_allocated() / 2**20,
                      gpu=torch.cuda.get_device_name())
    else:
        wall, cpu = step()
        walls, cpus = [wall], [cpu]
        if wall < 3.0 and reps > 1:
            pairs = [step() for _ in range(reps)]
            walls, cpus = [p[0] for p in pairs], [p[1] for p in pairs]
        peak = peak_rss_bytes()
        result.update(wall_s=statistics.median(walls), wall_min_s=min(walls),
                      cpu_s=statistics.median(cpus), timed_steps=len(walls),
                      peak_mem_mb=(peak - base_rss) / 2**20)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=None, choices=[*VARIANTS, "all"],
                    help=f"default: all on CUDA, {' '.join(CPU_DEFAULT)} on CPU")
    ap.add_argument("--reps", type=int, default=3, help="timed steps (CPU: only for steps < 3 s)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--devices", nargs="+", default=None,
                    help="cpu and/or cuda (default: cpu, plus cuda when available)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="ModelConfig overrides for every variant, e.g. activation_checkpointing=true")
    ap.add_argument("--json", default=None, help="write the results to this JSON file")
    ap.add_argument("--_one", nargs=2, metavar=("VARIANT", "DEVICE"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._one:
        res = run_one(args._one[0], args._one[1], tuple(args.size), args.batch, args.reps,
                      args.threads, parse_sets(args.set))
        print("RESULT " + json.dumps(res))
        return

    devices = args.devices
    if devices is None:
        import torch

        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    # Spinning OpenMP workers collapse on a shared CPU (a 0.4 s step took 7 s with 2 threads);
    # sleeping workers cost little on an idle one.
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    results = []
    header = (f"{'variant':22s} {'device':6s} {'params':>8s} {'wall s':>8s} {'cpu s':>8s} "
              f"{'steps':>5s} {'peak MiB':>9s}")
    print(f"forward+backward, batch {args.batch} x {args.size[0]}x{args.size[1]}, fp32, "
          f"{args.threads} CPU threads, OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}"
          + (f", overrides {parse_sets(args.set)}" if args.set else ""))
    print(header)
    for device in devices:
        if args.variants is None:
            variants = list(VARIANTS) if device == "cuda" else list(CPU_DEFAULT)
        else:
            variants = list(VARIANTS) if "all" in args.variants else args.variants
        for variant in variants:
            cmd = [sys.executable, __file__, "--_one", variant, device, "--size",
                   *map(str, args.size), "--batch", str(args.batch), "--reps", str(args.reps),
                   "--threads", str(args.threads)] + (["--set", *args.set] if args.set else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                print(f"{variant:22s} {device:6s} FAILED: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(line[len("RESULT "):])
            results.append(r)
            cpu = f"{r['cpu_s']:8.3f}" if r["cpu_s"] is not None else f"{'-':>8s}"
            print(f"{variant:22s} {device:6s} {r['params'] / 1e6:7.2f}M {r['wall_s']:8.3f} {cpu} "
                  f"{r['timed_steps']:5d} {r['peak_mem_mb']:9.0f}", flush=True)
    if args.json:
        meta = dict(python=platform.python_version(), machine=platform.machine(),
                    processor=platform.processor(), omp_wait_policy=env["OMP_WAIT_POLICY"],
                    loadavg=os.getloadavg())
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, results=results), f, indent=1)


if __name__ == "__main__":
    main()
