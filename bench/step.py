"""Training-step benchmark: time per step and per phase of the UDA step, and the loss-trajectory
check that guards the optimisations of the demo step.

    python -m bench.step --record-baseline   # once, before optimising: bench/results/step_baseline.json
    python -m bench.step --check             # now: old vs new time, do the losses match?

Both modes build ``Trainer(load_config("miniscapes_cluda"))`` with ``train.seed=0``, run
``--loss-steps`` steps (whose losses are recorded / compared within ``--rtol`` relative), then time
``--time-steps`` more steps (median wall and CPU seconds). ``--check`` compares the losses with the
recorded baseline and, with ``--baseline-src DIR`` (a copy of the ``cluda_kit`` package taken before
optimising: DIR/cluda_kit), also times that old code in the same run, alternating old and new
subprocesses ``--repeats`` times, so that old and new see the same machine load. With
``--against-old`` the old code runs in the new code's environment and the new losses are compared
with the old code's of the same run (for a change whose baseline predates the current preset).

:func:`phase_breakdown` aggregates the ``torch.profiler.record_function`` ranges ("step/<phase>")
that :meth:`Trainer.step` opens over a profiled run of N steps; ``python -m bench --only step``
calls it for each preset family. :func:`overlap_waits` times how long the main thread waits for
each kind of ``train.overlap`` task (``python -c "from bench.step import overlap_waits;
print(overlap_waits())"``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BASELINE = RESULTS / "step_baseline.json"
DEMO = "miniscapes_cluda"
REPO = Path(__file__).resolve().parent.parent
PHASES = ("data", "ema", "student_source", "fd", "contrastive", "backward", "teacher",
          "mix_augment", "student_mix", "optimizer")


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def build_trainer(preset: str = DEMO, seed: int = 0, overrides: tuple[str, ...] = ()):
    """A trainer of ``preset`` without a run directory or progress bars."""
    from cluda_kit.config import load_config
    from cluda_kit.engine.trainer import Trainer

    cfg = load_config(preset, [f"train.seed={seed}", *overrides])
    return Trainer(cfg, progress=False)


def _floats(res) -> dict[str, float]:
    return {k: float(v) for k, v in res.values.items()}


def loss_trajectory_and_time(preset: str = DEMO, loss_steps: int = 5, time_steps: int = 10,
                             seed: int = 0, overrides: tuple[str, ...] = ()) -> dict:
    """Losses of the first ``loss_steps`` steps (seed ``seed``) and the wall / CPU time of the
    next ``time_steps`` steps (seconds; each step's values are converted to floats, as a log step
    would)."""
    import torch

    trainer = build_trainer(preset, seed, overrides)
    losses = [_floats(trainer.step()) for _ in range(loss_steps)]
    wall, cpu = [], []
    for _ in range(time_steps):
        t0, c0 = time.perf_counter(), time.process_time()
        _floats(trainer.step())
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"preset": preset, "seed": seed, "overrides": list(overrides), "losses": losses,
            "step_times_s": wall, "step_cpu_s": cpu,
            "median_step_s": statistics.median(wall) if wall else None,
            "median_cpu_s": statistics.median(cpu) if cpu else None,
            "threads": torch.get_num_threads(), "loadavg": loadavg(), "torch": torch.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def run_in_subprocess(src: Path | None, env_extra: dict[str, str], overrides: tuple[str, ...] = (),
                      loss_steps: int = 5, time_steps: int = 10, preset: str = DEMO) -> dict:
    """:func:`loss_trajectory_and_time` in a fresh interpreter whose ``cluda_kit`` comes from
    ``src`` (None: this checkout)."""
    env = dict(os.environ)
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    # ``src`` goes first on sys.path, before the working directory that ``python -c`` puts there
    # (and before the editable install): PYTHONPATH alone loses to both
    first = str(src.resolve()) if src is not None else str(REPO)
    code = (f"import json, sys; sys.path.insert(0, {first!r}); import cluda_kit; "
            "from bench.step import loss_trajectory_and_time as f; "
            f"r = f({preset!r}, {loss_steps}, {time_steps}, 0, {tuple(overrides)!r}); "
            "r['cluda_kit'] = cluda_kit.__file__; print('@@' + json.dumps(r))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=str(REPO))
    if out.returncode != 0:
        raise RuntimeError(f"bench/step.py worker failed:\n{out.stderr[-3000:]}")
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("@@")][-1]
    result = json.loads(line[2:])
    expected = Path(first) / "cluda_kit"
    if Path(result["cluda_kit"]).resolve().parent != expected.resolve():
        raise RuntimeError(f"bench/step.py worker imported {result['cluda_kit']}, not the package "
                           f"in {expected}")
    return result


def overlap_waits(preset: str = DEMO, steps: int = 30, warmup: int = 5) -> dict:
    """How long the main thread waits, per step, for each kind of ``train.overlap`` task (the
    frozen encoder's features, the teacher's pass, a pass's backward), in milliseconds, over
    ``steps`` steps after ``warmup``: every waiter that :meth:`Overlap.submit` hands out is timed.
    A wait near 0 means the task had ended before its result was asked for."""
    from collections import defaultdict

    from cluda_kit.engine import overlap

    waits: dict[str, float] = defaultdict(float)
    submit = overlap.Overlap.submit

    def timed_submit(self, fn, *args, **kwargs):
        get = submit(self, fn, *args, **kwargs)
        name = getattr(fn, "__name__", type(fn).__name__)

        def wait():
            t = time.perf_counter()
            try:
                return get()
            finally:
                waits[name] += time.perf_counter() - t
        return wait

    overlap.Overlap.submit = timed_submit
    try:
        trainer = build_trainer(preset)
        for _ in range(warmup):
            trainer.step()
        waits.clear()
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        step_s = (time.perf_counter() - t0) / steps
    finally:
        overlap.Overlap.submit = submit
    return {"preset": preset, "steps": steps, "mean_step_s": step_s,
            "wait_ms_per_step": {k: round(1e3 * v / steps, 1) for k, v in waits.items()}}


def compare_losses(old: list[dict], new: list[dict], rtol: float = 1e-4, atol: float = 1e-6) -> list[str]:
    """Mismatches between two loss trajectories (empty: identical within ``rtol``)."""
    problems = []
    if len(old) != len(new):
        problems.append(f"{len(old)} vs {len(new)} steps")
    for i, (a, b) in enumerate(zip(old, new)):
        for k, va in a.items():
            if k == "lr":
                continue
            if k not in b:
                problems.append(f"step {i}: '{k}' missing now")
            elif abs(va - b[k]) > atol + rtol * abs(va):
                problems.append(f"step {i}: {k} {va:.8g} -> {b[k]:.8g}")
    return problems


def phase_breakdown(preset: str, steps: int = 5, warmup: int = 2,
                    overrides: tuple[str, ...] = ()) -> dict:
    """Mean milliseconds per step of each ``step/<phase>`` range (and of the whole step) over a
    ``torch.profiler`` run of ``steps`` steps after ``warmup`` unprofiled ones. The phases run
    one after another (``train.overlap=false``: the profiler does not follow the overlap's second
    thread, and the breakdown is of the work, not of the wall time)."""
    from torch.profiler import ProfilerActivity, profile

    trainer = build_trainer(preset, 0, (*overrides, "train.overlap=false"))
    for _ in range(warmup):
        trainer.step()
    wall = []
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            t0 = time.perf_counter()
            trainer.step()
            wall.append(time.perf_counter() - t0)
    totals: dict[str, float] = {}
    for evt in prof.events():
        if evt.name.startswith("step/"):
            key = evt.name[len("step/"):]
            totals[key] = totals.get(key, 0.0) + evt.cpu_time_total / 1000.0  # us -> ms
    phases = {k: totals.get(k, 0.0) / steps for k in PHASES if k in totals}
    step_ms = 1000.0 * statistics.median(wall)
    phases["other"] = max(step_ms - sum(phases.values()), 0.0)
    return {"preset": preset, "steps": steps, "step_ms_median": step_ms,
            "step_ms_profiled": [1000.0 * w for w in wall], "phases_ms": phases,
            "data_fraction": phases.get("data", 0.0) / step_ms}


def check(args) -> int:
    new_env = {"OMP_WAIT_POLICY": "PASSIVE"}
    if args.against_old and args.baseline_src is None:
        raise SystemExit("--against-old needs --baseline-src")
    base = None if args.against_old else json.loads(args.baseline.read_text())
    runs: dict[str, list[dict]] = {"new": []}
    if args.baseline_src is not None:
        runs["old"] = []
    for _ in range(args.repeats):
        if args.baseline_src is not None:  # the old code exactly as the baseline was measured
            runs["old"].append(run_in_subprocess(args.baseline_src, new_env if args.against_old else {}, (),
                                                 args.loss_steps, args.time_steps))
        runs["new"].append(run_in_subprocess(None, new_env, (), args.loss_steps, args.time_steps))
    reference = runs["old"][0]["losses"] if args.against_old else base["losses"]
    problems = compare_losses(reference, runs["new"][0]["losses"], rtol=args.rtol)
    summary = {"baseline_recorded": None if base is None else {"median_step_s": base["median_step_s"],
                                                               "loadavg": base["loadavg"]},
               "loss_check": {"rtol": args.rtol, "steps": len(reference), "mismatches": problems,
                              "against": "old" if args.against_old else "recorded baseline"},
               "loadavg_after": loadavg()}
    for name, rs in runs.items():
        summary[name] = {"median_step_s": statistics.median(t for r in rs for t in r["step_times_s"]),
                         "median_cpu_s": statistics.median(t for r in rs for t in r["step_cpu_s"]),
                         "per_run_median_s": [r["median_step_s"] for r in rs],
                         "cluda_kit": rs[0]["cluda_kit"],
                         "loadavg": [r["loadavg"] for r in rs]}
    if base is not None:
        print(f"step time: recorded baseline {base['median_step_s']:.3f} s (load {base['loadavg']})")
    for name in runs:
        print(f"  {name}: median {summary[name]['median_step_s']:.3f} s wall, "
              f"{summary[name]['median_cpu_s']:.3f} s CPU (per run {summary[name]['per_run_median_s']})")
    if "old" in runs:
        summary["speedup_same_run"] = summary["old"]["median_step_s"] / summary["new"]["median_step_s"]
        print(f"  same-run speedup old/new: {summary['speedup_same_run']:.2f}x")
    print(f"losses match the {summary['loss_check']['against']}" if not problems else "LOSS MISMATCH:\n  " + "\n  ".join(problems))
    if args.out is not None:
        args.out.write_text(json.dumps(summary, indent=2))
    return 0 if not problems else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record-baseline", action="store_true")
    mode.add_argument("--check", action="store_true")
    p.add_argument("--loss-steps", type=int, default=5)
    p.add_argument("--time-steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--baseline", type=Path, default=BASELINE)
    p.add_argument("--baseline-src", type=Path, default=None,
                   help="directory holding the pre-optimisation cluda_kit package")
    p.add_argument("--out", type=Path, default=None, help="write the comparison as JSON")
    p.add_argument("--against-old", action="store_true",
                   help="compare the losses with the old code's (same run) instead of the recorded "
                        "baseline, and run the old code with the new code's environment")
    args = p.parse_args(argv)
    if args.record_baseline:
        run = loss_trajectory_and_time(DEMO, args.loss_steps, args.time_steps)
        args.baseline.parent.mkdir(parents=True, exist_ok=True)
        args.baseline.write_text(json.dumps(run, indent=2))
        print(f"baseline: median step {run['median_step_s']:.3f} s (load {run['loadavg']}) -> {args.baseline}")
        return 0
    return check(args)


if __name__ == "__main__":
    raise SystemExit(main())
