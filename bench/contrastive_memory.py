"""Time and peak memory of the CLUDA pixel contrastive loss: cluda_kit's row-blocked kernel ("kit",
``impl="blocked"``) vs its plain full-matrix formula ("plain", ``impl="plain"``: what the release
does), forward + backward.

Every measurement runs in a fresh Python subprocess. On the CPU, peak memory is the growth of the
process's resident set size (RSS) from just before the first call to its high-water mark
(bench/memory.py: ``VmHWM``, reset just before; not ``ru_maxrss``, which a subprocess inherits
from a larger parent); on CUDA it is ``torch.cuda.max_memory_allocated`` above what was allocated
before the timed calls (after one warm-up call).

    python bench/contrastive_memory.py                      # N = 1000, 2000, 4000, 8450; D = 256
    python bench/contrastive_memory.py --json bench/results/contrastive_memory.json
    python bench/contrastive_memory.py --device cuda --sizes 8450 16900 33800

8450 = 2 x 65 x 65 is the release's anchor count (batch 2 on the 65 x 65 contrastive grid).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if not __package__:  # run as a file (python bench/contrastive_memory.py): find the bench package
    sys.path.insert(0, str(REPO))

from bench.memory import peak_rss_bytes, reset_peak_rss, rss_bytes  # noqa: E402

IMPLS = ("plain", "kit")


def worker(impl: str, n: int, args) -> dict:
    """One measurement; runs inside a fresh subprocess."""
    import torch

    from cluda_kit.uda.contrastive import pixel_contrastive_loss

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    g = torch.Generator().manual_seed(0)
    # one row of N pixels: the default-mode loss does not depend on the pixel layout
    features = torch.randn(1, args.dim, 1, n, generator=g).to(device)
    labels = torch.randint(0, 19, (1, 1, n), generator=g).to(device)
    weights = torch.rand(1, 1, n, generator=g).to(device)
    temperature = args.temperature

    def step():
        f = features.clone().requires_grad_(True)
        loss = pixel_contrastive_loss(f, labels, weights, temperature=temperature, block_size=args.block_size,
                                      impl="plain" if impl == "plain" else "blocked")
        loss.backward()
        return loss.item(), f.grad.norm().item()  # .item() synchronises CUDA

    times = []
    try:
        if cuda:
            step()  # warm-up: CUDA context, cuBLAS handles
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            reset_peak_rss()
            before = rss_bytes()
        for _ in range(args.repeats):
            start = time.perf_counter()
            loss, grad_norm = step()
            times.append(time.perf_counter() - start)
    except torch.OutOfMemoryError:
        return {"impl": impl, "n": n, "dim": args.dim, "oom": True}
    peak = torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()
    return {
        "impl": impl,
        "n": n,
        "dim": args.dim,
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "threads": args.threads,
        "peak_mb": (peak - before) / 2**20,
        "time_s": statistics.median(times),
        "times_s": times,
        "loss": loss,
        "grad_norm": grad_norm,
    }


def measure(impl: str, n: int, args) -> dict:
    cmd = [
        sys.executable, "-m", "bench.contrastive_memory", "--worker", impl, "--sizes", str(n), "--dim", str(args.dim),
        "--threads", str(args.threads), "--repeats", str(args.repeats), "--block-size", str(args.block_size),
        "--temperature", str(args.temperature), "--device", args.device,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"bench/contrastive_memory.py worker {impl} N={n} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = [
        "| N | D | plain time (s) | kit time (s) | kit/plain time | plain peak (MB) | kit peak (MB) "
        "| kit/plain memory | rel. loss diff | rel. grad-norm diff |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p, k = r["plain"], r["kit"]
        if p.get("oom") or k.get("oom"):
            cells = ["out of memory" if x.get("oom") else f"{x['time_s']:.3f} s, {x['peak_mb']:.0f} MB" for x in (p, k)]
            lines.append(f"| {r['n']} | {p['dim']} | plain: {cells[0]} | kit: {cells[1]} |  |  |  |  |  |  |")
            continue
        lines.append(
            f"| {r['n']} | {p['dim']} | {p['time_s']:.3f} | {k['time_s']:.3f} | {k['time_s'] / p['time_s']:.2f} "
            f"| {p['peak_mb']:.0f} | {k['peak_mb']:.0f} | {k['peak_mb'] / p['peak_mb']:.3f} "
            f"| {abs(k['loss'] - p['loss']) / abs(p['loss']):.1e} "
            f"| {abs(k['grad_norm'] - p['grad_norm']) / p['grad_norm']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000, 8450], help="pixel counts N")
    parser.add_argument("--dim", type=int, default=256, help="feature channels D")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward+backward runs (median reported)")
    parser.add_argument("--block-size", type=int, default=1024, help="anchor rows per block (kit)")
    parser.add_argument("--temperature", type=float, default=1.0, help="tau")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--json", metavar="PATH", help="also write the measurements as JSON")
    parser.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker, args.sizes[0], args)))
        return

    rows = []
    for n in args.sizes:
        row = {"n": n}
        for impl in IMPLS:
            print(f"N={n} {impl} ...", file=sys.stderr, flush=True)
            row[impl] = measure(impl, n, args)
        rows.append(row)
    text = table(rows)
    print(f"device={args.device} ({rows[0]['kit'].get('device', '')}) threads={args.threads} "
          f"block_size={args.block_size} tau={args.temperature} repeats={args.repeats} (median time)")
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": {k: v for k, v in vars(args).items() if k not in ("json", "worker")},
                       "rows": rows, "table": text}, f, indent=2)


if __name__ == "__main__":
    main()
