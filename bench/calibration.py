"""Tabulate the miniscapes gap / budget calibration runs (issue #4): one row per run directory.

    python -m bench.calibration runs/cal2 --out bench/results/calibration_miniscapes.md

Each run directory is a ``cluda-kit train`` output (config.yaml, metrics.jsonl, summary.json,
meta.json); the table lists the resolved gap, learning rate and budget, the mIoU curve and the
commit the run was made from.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from bench.methods import read_curve
from cluda_kit.data.miniscapes import GAP


def row(run: Path) -> dict | None:
    summary = run / "summary.json"
    if not summary.exists():
        return None
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    meta = json.loads((run / "meta.json").read_text())
    s = json.loads(summary.read_text())
    data = cfg["data"]
    gap = data["target"].get("gap")
    if cfg["uda"]["mode"] == "oracle":  # the oracle trains on real: its source gap is the gap
        gap = data["source"].get("gap")
    return {"run": run.name, "preset": meta["preset"], "gap": gap, "lr": cfg["optim"]["lr"],
            "iters": cfg["train"]["max_iters"], "miou": s["miou"],
            "curve": read_curve(run), "wall_s": s["wall_time_s"],
            "git": meta.get("git", "")[:7]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--default-gap", type=float, default=None,
                    help="gap of runs that did not set one (default: the generator's GAP)")
    args = ap.parse_args(argv)
    default_gap = GAP if args.default_gap is None else args.default_gap
    rows = [r for r in (row(p) for p in sorted(args.runs.iterdir()) if p.is_dir()) if r]
    rows.sort(key=lambda r: (r["gap"] if r["gap"] is not None else default_gap, r["iters"], r["lr"], r["preset"]))
    lines = ["| run | preset | gap | lr | iterations | mIoU | mIoU curve (iteration: mIoU) | wall s | commit |",
             "|---|---|---:|---:|---:|---:|---|---:|---|"]
    for r in rows:
        gap = r["gap"] if r["gap"] is not None else default_gap
        curve = ", ".join(f"{i}: {m:.1f}" for i, m in r["curve"])
        lines.append(f"| {r['run']} | {r['preset']} | {gap:g} | {r['lr']:g} | {r['iters']} | {r['miou']:.1f} | "
                     f"{curve} | {r['wall_s']:.0f} | {r['git']} |")
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
