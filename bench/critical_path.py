"""Where the demo's CPU time goes, beyond the step itself (bench/README.md, "fourth session").

    python -m bench.critical_path loop      # step statistics and the fit loop's other costs
    python -m bench.critical_path profile   # the main thread's phases with train.overlap on
    python -m bench.critical_path kernels   # two kernel leads, old and rewritten, one thread

Each prints one JSON object. ``loop``: :meth:`Trainer.step` over ``--steps`` steps (mean, median,
p90), then one evaluation, one debug figure, one checkpoint and one logged record, each timed
once. ``profile``: milliseconds per step of each ``step/<phase>`` range on the main thread under
``torch.profiler`` (which records the main thread only), its busy time and the wall time.
``kernels``: ``F.softplus`` against a ``log``-based softplus on a (1024, 1024) block, and the
input gradient of the depthwise 3x3 convolution of the stage-1 Mix-FFN shape (2, 128, 32, 64),
channels-last, through autograd against the flipped-kernel convolution.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from .step import DEMO, build_trainer


def _ms(fn, n: int = 20) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return round(1e3 * (time.perf_counter() - t) / n, 2)


def loop(steps: int = 200) -> dict:
    from cluda_kit.analysis.callbacks import DebugFigures
    from cluda_kit.config import load_config
    from cluda_kit.engine.trainer import Trainer

    trainer = Trainer(load_config(DEMO, ["train.seed=0"]), progress=False, out_dir=Path(tempfile.mkdtemp()))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        res = trainer.step()
        times.append(time.perf_counter() - t)
    ordered = sorted(times)

    def once(fn) -> float:
        t = time.perf_counter()
        fn()
        return round(time.perf_counter() - t, 3)

    return {"steps": steps, "step_mean_s": round(statistics.mean(times), 3),
            "step_median_s": round(ordered[steps // 2], 3), "step_p90_s": round(ordered[int(0.9 * steps)], 3),
            "evaluation_s": once(trainer._eval_record), "debug_figure_s": once(lambda: DebugFigures().save(trainer)),
            "checkpoint_s": once(trainer.save),
            "log_record_s": once(lambda: trainer._log({"iter": trainer.iter, **res.values}))}


def profile(steps: int = 6, warmup: int = 5) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    trainer = build_trainer()
    for _ in range(warmup):
        trainer.step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        wall = time.perf_counter() - t
    events = [e for e in prof.events() if e.device_type.name == "CPU"]
    phases: dict[str, float] = defaultdict(float)
    spans = []
    for e in events:
        if e.name.startswith("step/"):
            phases[e.name] += e.time_range.elapsed_us()
        spans.append((e.time_range.start, e.time_range.end))
    busy, end = 0, None  # union of the recorded ops' intervals
    for a, b in sorted(spans):
        if end is None or a > end:
            busy, end = busy + (b - a), b
        elif b > end:
            busy, end = busy + (b - end), b
    return {"steps": steps, "wall_ms_per_step": round(1e3 * wall / steps, 1),
            "main_thread_busy_ms_per_step": round(busy / 1e3 / steps, 1),
            "phase_ms_per_step": {k: round(v / 1e3 / steps, 1) for k, v in sorted(phases.items())}}


def kernels() -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _kernels()
    finally:
        torch.set_num_threads(threads)


def _kernels() -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 1024, generator=g) * 3 + 2

    def softplus_log():
        return x.abs().neg_().exp_().add_(1.0).log_().add_(x.clamp_min(0))

    c = 128
    w = torch.randn(c, 1, 3, 3, generator=g, requires_grad=True)
    inp = torch.randn(2, c, 32, 64, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    grad_out = torch.randn(2, c, 32, 64, generator=g).contiguous(memory_format=torch.channels_last)
    forward = _ms(lambda: F.conv2d(inp, w, padding=1, groups=c))
    autograd = _ms(lambda: torch.autograd.grad(F.conv2d(inp, w, padding=1, groups=c), inp, grad_out))
    return {"softplus_ms": _ms(lambda: F.softplus(x, threshold=40.0)), "log1p_ms": _ms(lambda: x.abs().log1p()),
            "softplus_via_log_ms": _ms(softplus_log),
            "depthwise_forward_ms": forward, "depthwise_forward_and_input_grad_autograd_ms": autograd,
            "depthwise_input_grad_flipped_conv_ms": _ms(
                lambda: F.conv2d(grad_out, w.detach().flip(-2, -1), padding=1, groups=c))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("loop", "profile", "kernels"))
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args(argv)
    fn = {"loop": loop, "profile": profile, "kernels": kernels}[args.what]
    kwargs = {"steps": args.steps} if args.steps is not None and args.what != "kernels" else {}
    print(json.dumps(fn(**kwargs), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
