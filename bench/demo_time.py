"""Wall time of ``make demo`` (install excluded: the venv must exist), with the machine's load.

    python -m bench.demo_time                     # in this checkout
    python -m bench.demo_time --repo /tmp/k       # in a fresh clone (after its `make install`)

Runs ``make demo`` once, times it from the shell's start to its end, reads the final mIoU from the
run's summary.json, and writes ``bench/results/demo_time.{json,md}`` of THIS checkout (the one
running the script) with the command, git hash of the measured checkout, CPU count and the 1-minute
load average before and after. Goal (issue: "make demo in at most 5 minutes on an idle 2-core
machine"): <= 300 s.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=ROOT, help="checkout to run `make demo` in")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "demo_time")
    args = ap.parse_args(argv)
    repo = args.repo.resolve()
    if not (repo / ".venv" / ".installed").exists():
        print(f"{repo}: run `make install` there first (the install is not part of the timing)",
              file=sys.stderr)
        return 2
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                         text=True).stdout.strip()
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(["make", "demo"], cwd=repo, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()[0]
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        return proc.returncode
    summary = json.loads((repo / "runs" / "demo" / "summary.json").read_text())
    tail = proc.stdout.strip().splitlines()[-26:]
    record = {"command": "make demo", "measured_with": "python -m bench.demo_time"
              + (f" --repo {args.repo}" if args.repo != ROOT else ""),
              "git": git, "wall_s": round(wall, 1), "train_wall_s": round(summary["wall_time_s"], 1),
              "iters": summary["iter"], "miou": round(summary["miou"], 2), "cpu_count": os.cpu_count(),
              "loadavg_1min_before": round(load_before, 2), "loadavg_1min_after": round(load_after, 2),
              "goal_s": 300, "output_tail": tail}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    md = (f"`make demo` (install excluded), measured with `{record['measured_with']}` on commit "
          f"{git}: **{wall:.0f} s** wall ({summary['iter']} iterations, training loop "
          f"{summary['wall_time_s']:.0f} s), mIoU {summary['miou']:.2f}; {os.cpu_count()} CPU cores, "
          f"1-minute load {load_before:.2f} before / {load_after:.2f} after. Goal: ≤ 300 s.\n\n"
          "```\n" + "\n".join(tail) + "\n```\n")
    args.out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
