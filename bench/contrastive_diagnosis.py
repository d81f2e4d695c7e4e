"""Why CLUDA's τ = 1 loss stays flat, and which classes own each contrastive loss's gradient.

    python -m bench.contrastive_diagnosis RUN_DIR [RUN_DIR ...] [--batches 4] \
        [--out bench/results/contrastive_diagnosis]

For each run (a CLUDA, PiPa or SePiCo run directory) and each of its students (iteration 0 =
the pretrained start, rebuilt from the run's config; ``checkpoints/prev.pt``; ``last.pt``), on the
same ``--batches`` source batches (the run's source stream, fixed seed), in eval mode:

the two measures of :mod:`cluda_kit.analysis.contrastive`: where CLUDA's loss sits between a
random and a perfectly clustered embedding (τ = 1 and τ = 0.1), and each class's share of the
run's own contrastive loss's gradient beside its share of the pixels.

Writes OUT.json, OUT.md and OUT.png (both measures over training, per run).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from cluda_kit.analysis.contrastive import CURVE_ITERS, diagnose, logged_curve, room
from cluda_kit.analysis.plots import gradient_share_bars

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ report
def markdown(results: list[dict], command: str) -> str:
    lines = [f"Command: `{command}`", "",
             "**Where CLUDA's loss sits** (its formula on the contrastive grid, mean over the "
             "batches): the student's fused features, a random embedding and a perfectly "
             "clustered one; *room* = (random − value) / (random − clustered).", "",
             "| run | method | iteration | τ = 1: value / random / clustered | room | "
             "τ = 0.1: value / random / clustered | room |", "|---|---|---:|---|---:|---|---:|"]
    for r in results:
        for it, s in r["students"].items():
            cells = []
            for t in ("1.0", "0.1"):
                g = s["range"][t]
                cells += [f"{g['value']:.2f} / {g['random']:.2f} / {g['clustered']:.2f}", f"{room(g):.2f}"]
            lines.append(f"| {Path(r['run']).name} | {r['method']} | {it} | " + " | ".join(cells) + " |")
    lines += ["", "**Who owns the gradient** at the last checkpoint: each class's share of "
              "Σ‖∂L/∂feature‖ of the run's own contrastive loss (%), and of the pixels (%).", ""]
    classes = results[0]["classes"]
    head = " | ".join(f"{Path(r['run']).name} grad" for r in results)
    lines += [f"| class | pixels | {head} |", "|---|---:|" + "---:|" * len(results)]
    last = [r["students"][max(r["students"], key=int)] for r in results]
    for k, name in enumerate(classes):
        if all(s["pixel_share"][k] == 0 for s in last):
            continue
        lines.append(f"| {name} | {100 * last[0]['pixel_share'][k]:.1f} | "
                     + " | ".join(f"{100 * s['gradient_share'][k]:.1f}" for s in last) + " |")
    lines += ["", "**The source term as logged in training** (the weighted loss term of each run's "
              "metrics.jsonl at a few iterations; CLUDA's `cl_src` is its τ = 1 loss):", "",
              "| run | term | " + " | ".join(f"it {i}" for i in CURVE_ITERS) + " |",
              "|---|---|" + "---:|" * len(CURVE_ITERS)]
    for r in results:
        term, values = logged_curve(Path(r["run"]))
        if term is not None:
            lines.append(f"| {Path(r['run']).name} | `{term}` | "
                         + " | ".join("–" if v is None else f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def figure(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5))
    for r in results:
        its = sorted(r["students"], key=int)
        for t, style in (("1.0", "-"), ("0.1", "--")):
            a.plot([int(i) for i in its], [room(r["students"][i]["range"][t]) for i in its], style,
                   marker="o", label=f"{Path(r['run']).name}, τ = {t}")
    a.set(xlabel="iteration", ylabel="(random − value) / (random − clustered)",
          title="How far CLUDA's loss has fallen towards its floor")
    a.legend(fontsize=8)
    last = [r["students"][max(r["students"], key=int)] for r in results]
    gradient_share_bars(results[0]["classes"], last[0]["pixel_share"],
                        {f"{Path(r['run']).name} ({r['method']})": s["gradient_share"] for r, s in zip(results, last)},
                        title="Who owns the gradient (last checkpoint)", ax=b)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import shlex
    import sys

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "contrastive_diagnosis")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    results = [diagnose(run, args.batches) for run in args.runs]
    command = "python -m bench.contrastive_diagnosis " + shlex.join(argv if argv is not None else sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "results": results}, indent=1))
    md = markdown(results, command)
    args.out.with_suffix(".md").write_text(md)
    figure(results, args.out.with_suffix(".png"))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
