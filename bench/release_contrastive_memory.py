"""Peak CPU memory of the CLUDA release's own contrastive loss, forward + backward, at the release's
anchor count, beside the kit's plain formula and its blocked kernel on the same inputs.

The release's loss is read from a checkout of it (nothing of it is part of the kit) and run as an
oracle: its ``mmseg/models/losses/contrastive_loss.py`` is executed with its one package import
(the mmseg registry) left out and ``Tensor.cuda`` made a no-op, so its ``.cuda()`` calls stay on the
CPU. Each measurement runs in a fresh subprocess; the peak is the growth of the process's resident
set from just before the call to its high-water mark (bench/memory.py).

    python -m bench.release_contrastive_memory --release /path/to/CLUDA \\
        --json bench/results/release_contrastive_memory.json

Inputs: a batch of 2 feature maps of 65 x 65 pixels and D = 256 channels (the release's grid and
fused width: 8450 anchors), labels in 19 classes, as the release's source term calls it
(``contrastive_loss(feats, labels)``, τ = τ_b = 1) and with a pixel weight (``pseudo_weight``, the
pair weight w_i w_j of its weighted form).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if not __package__:
    sys.path.insert(0, str(REPO))

from bench.memory import peak_rss_bytes, reset_peak_rss, rss_bytes  # noqa: E402

RELEASE_FILE = "mmseg/models/losses/contrastive_loss.py"
IMPLS = ("release", "kit_plain", "kit_blocked")
FORMS = ("source", "weighted")


def load_release(checkout: Path) -> types.ModuleType:
    """The release's contrastive-loss module, runnable on a CPU (see the module docstring)."""
    import torch

    path = checkout / RELEASE_FILE
    try:
        text = path.read_text()
    except OSError as e:
        raise SystemExit(f"--release {checkout}: cannot read {RELEASE_FILE} ({e.strerror})") from None
    text = text.replace("from ..builder import LOSSES", "")
    torch.Tensor.cuda = lambda self, *a, **k: self  # the oracle's .cuda() calls stay on the CPU
    module = types.ModuleType("cluda_release_contrastive_loss")
    exec(compile(text, str(path), "exec"), module.__dict__)
    return module


def worker(impl: str, form: str, args) -> dict:
    """One measurement in this (fresh) process."""
    import torch

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, args.dim, args.grid, args.grid, generator=g)
    labels = torch.randint(0, 19, (2, 1, args.grid, args.grid), generator=g)
    weight = torch.rand(2, 1, args.grid, args.grid, generator=g) if form == "weighted" else None
    if impl == "release":
        release = load_release(Path(args.release))

        def loss_fn(f):
            return release.contrastive_loss(f, labels, pseudo_weight=weight)
    else:
        from cluda_kit.uda.contrastive import pixel_contrastive_loss

        def loss_fn(f):
            return pixel_contrastive_loss(f, labels[:, 0], weight[:, 0] if weight is not None else None,
                                          impl=impl.removeprefix("kit_"))
    f = feats.clone().requires_grad_(True)
    reset_peak_rss()
    before = rss_bytes()
    start = time.perf_counter()
    loss = loss_fn(f)
    loss.backward()
    seconds = time.perf_counter() - start
    return {"impl": impl, "form": form, "n": 2 * args.grid ** 2, "dim": args.dim, "threads": args.threads,
            "device": platform.processor() or "cpu", "peak_mb": (peak_rss_bytes() - before) / 2**20,
            "time_s": seconds, "loss": loss.item(), "grad_norm": f.grad.norm().item()}


def measure(impl: str, form: str, args) -> dict:
    cmd = [sys.executable, "-m", "bench.release_contrastive_memory", "--worker", impl, "--form", form,
           "--release", str(args.release), "--grid", str(args.grid), "--dim", str(args.dim),
           "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"bench/release_contrastive_memory.py: {impl} ({form}) failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = ["| form | implementation | peak (MB) | time (s) | loss | rel. loss diff to the release |",
             "|---|---|---:|---:|---:|---:|"]
    for form in FORMS:
        ref = next(r for r in rows if r["form"] == form and r["impl"] == "release")
        for r in (r for r in rows if r["form"] == form):
            lines.append(f"| {form} | {r['impl']} | {r['peak_mb']:.0f} | {r['time_s']:.2f} | {r['loss']:.4f} "
                         f"| {abs(r['loss'] - ref['loss']) / abs(ref['loss']):.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--release", required=True, help="a checkout of the CLUDA release (github.com/user0407/CLUDA)")
    ap.add_argument("--grid", type=int, default=65, help="contrastive grid side (the release: 65)")
    ap.add_argument("--dim", type=int, default=256, help="feature channels D")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--json", metavar="PATH", help="also write the measurements as JSON")
    ap.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    ap.add_argument("--form", choices=FORMS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.form, args)))
        return
    rows = []
    for form in FORMS:
        for impl in IMPLS:
            print(f"{form} {impl} ...", file=sys.stderr, flush=True)
            rows.append(measure(impl, form, args))
    text = table(rows)
    print(f"N = 2 x {args.grid} x {args.grid} = {2 * args.grid ** 2} anchors, D = {args.dim}, "
          f"{args.threads} thread(s), one forward + backward in a fresh process each")
    print(text)
    if args.json:
        command = "python -m bench.release_contrastive_memory --release CLUDA_CHECKOUT --json " + args.json
        Path(args.json).with_suffix(".md").write_text(
            f"## The release's contrastive loss: peak memory\n\nCommand: `{command}`. Machine: "
            f"{rows[0]['device'] or 'cpu'}, torch threads {args.threads}.\n\n"
            f"N = 2 × {args.grid} × {args.grid} = {2 * args.grid ** 2} anchors, D = {args.dim}; one forward + "
            f"backward in a fresh process each; peak = growth of the resident set.\n\n{text}\n")
        Path(args.json).write_text(json.dumps({"config": {k: v for k, v in vars(args).items()
                                                          if k not in ("json", "worker", "form", "release")},
                                               "rows": rows, "table": text}, indent=2))


if __name__ == "__main__":
    main()
