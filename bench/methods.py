"""Method comparison on miniscapes: train presets x seeds and tabulate target mIoU (mean +- std).

Each run is a fresh ``python -m cluda_kit train`` process writing its own run directory; finished
runs (summary.json present) are reused, so an interrupted table resumes where it stopped.

    python -m bench.methods                                   # the README table (5 methods x 3 seeds)
    python -m bench.methods --presets miniscapes_source_only miniscapes_cluda --seeds 0 \
        --set train.max_iters=300 --runs runs/table_short --jobs 2

Writes ``<out>.json`` (every run's summary) and ``<out>.md`` (the table with the command).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PRESETS = ("miniscapes_source_only", "miniscapes_source_only_aug", "miniscapes_dacs",
                   "miniscapes_daformer", "miniscapes_cluda", "miniscapes_oracle")


def read_curve(run: Path) -> list[list[float]]:
    """[[iteration, mIoU], ...] of every evaluation in a run directory's metrics.jsonl."""
    metrics = run / "metrics.jsonl"
    if not metrics.exists():
        return []
    return [[r["iter"], r["miou"]] for r in map(json.loads, metrics.read_text().splitlines()) if "miou" in r]


def run_one(preset: str, seed: int, overrides: list[str], runs: Path, threads: int) -> dict:
    """Train one (preset, seed) unless its summary exists; return the summary."""
    out = runs / f"{preset}-seed{seed}"
    summary = out / "summary.json"
    if not summary.exists():
        cmd = [sys.executable, "-m", "cluda_kit", "train", preset, "--out", str(out), "--overwrite",
               "--set", f"train.seed={seed}", "--set", f"train.threads={threads}"]
        for o in overrides:
            cmd += ["--set", o]
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(threads))
        t0 = time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)
        log = out.parent / f"{out.name}.log"  # a file, not a pipe: the run outlives this process
        with open(log, "w") as fh:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise RuntimeError(f"{preset} seed {seed} failed, see {log}:\n"
                               f"{log.read_text()[-2000:]}")
        print(f"  {preset} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    data = json.loads(summary.read_text())
    data.update(preset=preset, seed=seed, curve=read_curve(out))
    return data


def table(results: list[dict], command: str) -> str:
    by_preset: dict[str, list[dict]] = {}
    for r in results:
        by_preset.setdefault(r["preset"], []).append(r)
    lines = [f"Command: `{command}`", "",
             "| method (preset) | seeds | mIoU on miniscapes real val (mean ± std) | per seed | wall s/run (shared CPU) |",
             "|---|---|---|---|---|"]
    for preset, rs in by_preset.items():
        m = [r["miou"] for r in rs]
        std = statistics.stdev(m) if len(m) > 1 else 0.0
        per = ", ".join(f"{v:.1f}" for v in m)
        wall = statistics.mean(r["wall_time_s"] for r in rs)
        lines.append(f"| {preset} | {len(rs)} | {statistics.mean(m):.1f} ± {std:.1f} | {per} | "
                     f"{wall:.0f} |")
    return "\n".join(lines) + "\n" + curves(by_preset)


def curves(by_preset: dict[str, list[dict]]) -> str:
    """mIoU at every evaluation during training, mean over the seeds (from metrics.jsonl)."""
    iters = sorted({it for rs in by_preset.values() for r in rs for it, _ in r.get("curve", [])})
    if not iters:
        return ""
    lines = ["", "mIoU during training (evaluations in each run's metrics.jsonl, mean over seeds):", "",
             "| method (preset) | " + " | ".join(str(i) for i in iters) + " |",
             "|---|" + "---:|" * len(iters)]
    for preset, rs in by_preset.items():
        cells = []
        for it in iters:
            vals = [m for r in rs for i, m in r.get("curve", []) if i == it]
            cells.append(f"{statistics.mean(vals):.1f}" if vals else "–")
        lines.append(f"| {preset} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=list(DEFAULT_PRESETS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "table")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "methods_miniscapes")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel (threads split evenly)")
    args = ap.parse_args(argv)
    command = "python -m bench.methods " + shlex.join(argv if argv is not None else sys.argv[1:])
    threads = max(1, (os.cpu_count() or 2) // args.jobs)
    jobs = [(p, s) for p in args.presets for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda ps: run_one(ps[0], ps[1], args.set, args.runs, threads),
                                jobs))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "machine": f"{os.cpu_count()} CPU cores", "runs": results}, indent=1))
    md = table(results, command)
    args.out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
