"""A controlled study with arms declared in a YAML file before any run (bench/study_cluda.yaml).

    python -m bench.study bench/study_cluda.yaml                 # train what is missing, tabulate
    python -m bench.study bench/study_cluda.yaml --arms daformer cluda --seeds 0 1   # a part
    python -m bench.study bench/study_cluda.yaml --render        # tables from finished runs only
    python -m bench.study bench/study_cluda.yaml --reuse bench/results/study_cluda.json
        # (arm, seed)s without a run directory take their recorded results from an earlier OUT.json

Every (arm, seed) is one ``python -m cluda_kit train`` process (bench.methods.run_one) writing
``RUNS/<arm>/<preset>-seed<k>``; finished runs are reused, so the study runs in parts, each
committing its results. After training, each run's fused features are measured
(cluda_kit.analysis.runs.run_feature_measures, cached in the run directory). Writes ``OUT.json``
(every run's summary and measures) and ``OUT.md``:

1. mIoU per arm (mean ± std over seeds, per seed) and, paired by seed, the difference to the
   baseline arm (mean ± std, wins, two-sided paired t-test p-value);
2. per-class IoU, mean over seeds, per arm;
3. cluster measures of the target (``real`` val) fused features per arm, mean over seeds: mean
   silhouette, mean intra/inter-class distance ratio, and domain mixing of game vs real features
   within a class; then per-class silhouette.

The file fixes the arms, seeds and baseline; the tables report whatever the runs give.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from bench.methods import ROOT, run_one


def load_study(path: Path) -> dict:
    spec = yaml.safe_load(path.read_text())
    spec.setdefault("set", [])
    for key in ("arms", "seeds", "baseline", "runs", "out"):
        if key not in spec:
            raise SystemExit(f"{path}: missing key {key!r}")
    if spec["baseline"] not in spec["arms"]:
        raise SystemExit(f"{path}: baseline {spec['baseline']!r} is not one of the arms {list(spec['arms'])}")
    for name, arm in spec["arms"].items():
        if "preset" not in arm:
            raise SystemExit(f"{path}: arm {name!r} has no preset")
        arm.setdefault("set", [])
    return spec


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.mean(values) if values else math.nan


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def paired(diffs: list[float]) -> dict:
    """Mean, std, wins and the two-sided paired t-test p-value of per-seed differences."""
    out = {"mean": _mean(diffs), "std": _std(diffs), "wins": sum(d > 0 for d in diffs), "n": len(diffs)}
    if len(diffs) > 1 and _std(diffs) > 0:
        from scipy import stats

        out["p"] = float(stats.ttest_1samp(diffs, 0.0).pvalue)
    else:
        out["p"] = math.nan
    return out


def load_reuse(path: Path | None) -> dict[str, dict[int, dict]]:
    """{arm: {seed: record}} of an earlier study's OUT.json, each record marked ``reused_from``."""
    if path is None:
        return {}
    try:
        runs = json.loads(path.read_text())["runs"]
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"--reuse {path}: not a study result file ({e})") from None
    import subprocess

    commit = subprocess.run(["git", "log", "-1", "--format=%h", "--", str(path)], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    origin = f"{path} at {commit}" if commit else str(path)
    return {arm: {int(s): {**r, "reused_from": r.get("reused_from", origin)} for s, r in by_seed.items()}
            for arm, by_seed in runs.items()}


def collect(spec: dict, arms: list[str], seeds: list[int], *, train: bool, jobs: int,
            threads: int, reuse: dict[str, dict[int, dict]] | None = None) -> dict[str, dict[int, dict]]:
    """{arm: {seed: summary + measures}} for the finished (or, with ``train``, trained) runs.

    An (arm, seed) with no finished run directory takes its record from ``reuse`` when that has
    one (and is then not trained)."""
    reuse = reuse or {}
    from cluda_kit.analysis.runs import run_feature_measures

    runs_root = ROOT / spec["runs"]
    todo = [(a, s) for s in seeds for a in arms]  # seed-major: every arm has seed 0 early

    def one(job: tuple[str, int]) -> tuple[str, int, dict | None]:
        arm, seed = job
        cfg = spec["arms"][arm]
        out = runs_root / arm / f"{cfg['preset']}-seed{seed}"
        if not (out / "summary.json").exists() and seed in reuse.get(arm, {}):
            return arm, seed, reuse[arm][seed]
        if not train and not (out / "summary.json").exists():
            return arm, seed, None
        data = run_one(cfg["preset"], seed, list(spec["set"]) + list(cfg["set"]),
                       runs_root / arm, threads)
        data["measures"] = run_feature_measures(out)
        return arm, seed, data

    results: dict[str, dict[int, dict]] = {a: {} for a in arms}
    with ThreadPoolExecutor(jobs) as pool:
        for arm, seed, data in pool.map(one, todo):
            if data is not None:
                results[arm][seed] = data
    return results


def _f(v: float, digits: int = 1, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def tables(spec: dict, results: dict[str, dict[int, dict]], command: str) -> tuple[str, dict]:
    from cluda_kit.data.labels import CLASSES

    base = spec["baseline"]
    lines = [f"Command: `{command}`", "", f"Arms, seeds and baseline declared in `{spec['file']}` before the runs.", "",
             "**mIoU on miniscapes real val** (paired differences are per seed against the baseline "
             f"`{base}`; p: two-sided paired t-test):", "",
             "| arm | overrides | seeds | mIoU (mean ± std) | per seed | Δ vs baseline (mean ± std) | wins | p |",
             "|---|---|---:|---:|---|---:|---:|---:|"]
    reused = sorted({(a, s, r["reused_from"]) for a, rs in results.items() for s, r in rs.items()
                     if r.get("reused_from")})
    if reused:
        by_file: dict[str, list[str]] = {}
        for a, s, f in reused:
            by_file.setdefault(f, []).append(f"{a} seed {s}")
        lines[4:4] = ["Results taken from an earlier run of this study (its run directories not kept): "
                      + "; ".join(f"{', '.join(v)} from `{f}`" for f, v in by_file.items()) + ".", ""]
    stats: dict = {}
    for arm, by_seed in results.items():
        if not by_seed:
            continue
        seeds = sorted(by_seed)
        m = [by_seed[s]["miou"] for s in seeds]
        row = {"seeds": seeds, "miou": m, "mean": _mean(m), "std": _std(m)}
        shared = [s for s in seeds if s in results.get(base, {})]
        if arm != base and shared:
            row["paired"] = paired([by_seed[s]["miou"] - results[base][s]["miou"] for s in shared])
        stats[arm] = row
        p = row.get("paired")
        overrides = ", ".join(f"`{o}`" for o in spec["arms"][arm]["set"]) or f"`{spec['arms'][arm]['preset']}`"
        lines.append(f"| {arm} | {overrides} | {len(seeds)} | {row['mean']:.1f} ± {row['std']:.1f} | "
                     + ", ".join(f"{v:.1f}" for v in m) + " | "
                     + (f"{_f(p['mean'], 2, True)} ± {p['std']:.2f} | {p['wins']}/{p['n']} | {_f(p['p'], 3)}"
                        if p else "– | – | –") + " |")
    pairs = [(a, b) for a, b in spec.get("pairs", []) if results.get(a) and results.get(b)]
    if pairs:
        lines += ["", "**Pairs** (per-seed differences, seeds both arms have):", "",
                  "| arm | minus | Δ mIoU (mean ± std) | wins | p |", "|---|---|---:|---:|---:|"]
        for a, b in pairs:
            shared = sorted(set(results[a]) & set(results[b]))
            p = paired([results[a][s]["miou"] - results[b][s]["miou"] for s in shared])
            stats.setdefault("pairs", {})[f"{a} - {b}"] = p
            lines.append(f"| {a} | {b} | {_f(p['mean'], 2, True)} ± {p['std']:.2f} | {p['wins']}/{p['n']} | "
                         f"{_f(p['p'], 3)} |")
    arms = [a for a in results if results[a]]
    lines += ["", "**Per-class IoU**, mean over seeds:", "",
              "| class | " + " | ".join(arms) + " |", "|---|" + "---:|" * len(arms)]
    for c, name in enumerate(CLASSES):
        cells = [_f(_mean([r["iou"][name] for r in results[a].values()])) for a in arms]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "**Cluster measures of the fused features** (student after training, 40 val scenes "
              "per domain, ≤ 150 purity-filtered cells per class and domain; mean over seeds). "
              "Silhouette (cosine, higher = tighter, better separated classes) and intra/inter-class "
              "distance ratio (lower = tighter) on the target `real` features; domain mixing of "
              "`game` vs `real` features within a class (1 = mixed as at random, 0 = separated):", "",
              "| arm | target silhouette | target intra/inter ratio | domain mixing |", "|---|---:|---:|---:|"]
    for a in arms:
        rs = list(results[a].values())
        sil = [r["measures"]["target"]["silhouette"] for r in rs]
        ratio = [r["measures"]["target"]["ratio"] for r in rs]
        mixing = [r["measures"]["both"]["mixing"] for r in rs]
        stats[a]["measures"] = {"silhouette": _mean(sil), "ratio": _mean(ratio), "mixing": _mean(mixing),
                                "silhouette_per_seed": sil, "ratio_per_seed": ratio, "mixing_per_seed": mixing}
        lines.append(f"| {a} | {_f(_mean(sil), 3)} ± {_std([v for v in sil if v is not None]):.3f} | "
                     f"{_f(_mean(ratio), 3)} ± {_std([v for v in ratio if v is not None]):.3f} | "
                     f"{_f(_mean(mixing), 3)} ± {_std([v for v in mixing if v is not None]):.3f} |")
    lines += ["", "Per-class silhouette of the target features, mean over seeds (– = too few cells):", "",
              "| class | " + " | ".join(arms) + " |", "|---|" + "---:|" * len(arms)]
    for c, name in enumerate(CLASSES):
        cells = [_f(_mean([r["measures"]["target"]["per_class_silhouette"].get(str(c)) for r in results[a].values()]), 3)
                 for a in arms]
        if any(x != "–" for x in cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n", stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path, help="the study's YAML file (arms, seeds, baseline, runs, out)")
    ap.add_argument("--arms", nargs="+", help="train only these arms (the tables use every finished run)")
    ap.add_argument("--seeds", nargs="+", type=int, help="train only these seeds")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (threads split evenly)")
    ap.add_argument("--threads", type=int, help="torch threads per run (default: the CPUs split "
                    "evenly between the jobs; 1 for one job of a preset with train.overlap)")
    ap.add_argument("--render", action="store_true", help="no training: tables from finished runs")
    ap.add_argument("--reuse", type=Path, help="an earlier OUT.json: (arm, seed)s without a run "
                    "directory take their results from it instead of training")
    args = ap.parse_args(argv)
    command = "python -m bench.study " + shlex.join(argv if argv is not None else sys.argv[1:])
    spec = load_study(args.study)
    spec["file"] = str(args.study)
    all_arms, all_seeds = list(spec["arms"]), list(spec["seeds"])
    threads = args.threads or max(1, (os.cpu_count() or 2) // args.jobs)
    reuse = load_reuse(args.reuse)
    if not args.render:
        collect(spec, args.arms or all_arms, args.seeds or all_seeds, train=True, jobs=args.jobs,
                threads=threads, reuse=reuse)
    results = collect(spec, all_arms, all_seeds, train=False, jobs=1, threads=threads, reuse=reuse)
    md, stats = tables(spec, results, command)
    out = ROOT / spec["out"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "study": spec, "stats": stats,
         "runs": {a: {str(s): r for s, r in rs.items()} for a, rs in results.items()}}, indent=1, default=str))
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
