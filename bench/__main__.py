"""The benchmark suite: ``python -m bench [--only a,b,...] [--quick] [--out bench/results]``
(also ``cluda-kit bench ...``).

Sections (``--only`` takes their names):

- ``step``: training-step time per preset family on this CPU with the demo model, split into the
  phases of :meth:`cluda_kit.engine.trainer.Trainer.step` (``torch.profiler.record_function``
  ranges aggregated over N profiled steps; bench/step.py);
- ``contrastive``: the CLUDA contrastive loss from 1k to 16k anchors, the kit's row-blocked loss vs a
  plain full-matrix one, time and peak memory (bench/contrastive_memory.py);
- ``data``: miniscapes scenes/s, prepared-dataset samples/s with 0 / 2 workers (bench/data.py);
- ``evaluation``: whole-image vs sliding-window inference speed (bench/evaluation.py);
- ``analysis``: feature extraction, t-SNE and UMAP time at 5k / 20k points (bench/analysis.py).

Every section writes ``OUT/<section>.json``; ``OUT/bench.md`` collects the markdown tables with the
command, the machine (CPU count, load average) and the torch version. ``--quick`` runs tiny sizes
(the test suite uses it). OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE``, as the
``cluda-kit`` command sets it): spinning threads slow a shared 2-core machine down many times over.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see the docstring)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

SECTIONS = ("step", "contrastive", "data", "evaluation", "analysis")
FAMILIES = ("miniscapes_source_only", "miniscapes_dacs", "miniscapes_daformer", "miniscapes_cluda")
QUICK_OVERRIDES = ("data.crop_size=[64,128]", "data.source.size=[80,160]", "data.target.size=[80,160]",
                   "data.source.length=40", "data.target.length=40", "loss.contrastive.grid=[16,32]")


def _machine() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def section_step(quick: bool) -> tuple[dict, str]:
    from bench.step import PHASES, phase_breakdown

    steps, warmup = (2, 1) if quick else (8, 2)
    overrides = QUICK_OVERRIDES if quick else ()
    rows = [phase_breakdown(p, steps=steps, warmup=warmup, overrides=overrides) for p in FAMILIES]
    cols = [c for c in (*PHASES, "other") if any(c in r["phases_ms"] for r in rows)]
    lines = [f"Median step (ms) and mean ms per phase over {steps} profiled steps after {warmup} "
             f"warm-up steps, demo model{' (quick sizes)' if quick else ''}:", "",
             "| preset | step | " + " | ".join(cols) + " | data share |",
             "|---|---:|" + "---:|" * len(cols) + "---:|"]
    for r in rows:
        cells = [f"{r['phases_ms'][c]:.0f}" if c in r["phases_ms"] else "-" for c in cols]
        lines.append(f"| {r['preset']} | {r['step_ms_median']:.0f} | " + " | ".join(cells)
                     + f" | {100 * r['data_fraction']:.1f} % |")
    return {"rows": rows, "overrides": list(overrides)}, "\n".join(lines)


def section_contrastive(quick: bool, out: Path) -> tuple[dict, str]:
    from bench import contrastive_memory

    sizes = ["500", "1000"] if quick else ["1000", "2000", "4000", "8450", "16000"]
    path = out / "contrastive.json"
    argv = ["--sizes", *sizes, "--dim", "64" if quick else "256", "--repeats", "1" if quick else "3",
            "--json", str(path)]
    contrastive_memory.main(argv)
    data = json.loads(path.read_text())
    return data, (f"`python bench/contrastive_memory.py {' '.join(argv[:-2])}` (each point in a fresh "
                  "process; CPU peak = RSS growth):\n\n" + data["table"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections out of {','.join(SECTIONS)}")
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds; for tests)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        p.error(f"--only: unknown section(s) {unknown}; expected some of {list(SECTIONS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    from bench import analysis, data, evaluation

    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    parts = [f"# cluda_kit benchmarks\n\nCommand: `{command.strip()}`"]
    for name in chosen:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        before = _machine()
        if name == "step":
            result, text = section_step(args.quick)
        elif name == "contrastive":
            result, text = section_contrastive(args.quick, args.out)
        else:
            mod = {"data": data, "evaluation": evaluation, "analysis": analysis}[name]
            result = mod.run(quick=args.quick)
            text = mod.table(result)
        record = {"section": name, "quick": args.quick, "machine_before": before,
                  "machine_after": _machine(), "seconds": time.perf_counter() - t0, "result": result}
        (args.out / f"{name}.json").write_text(json.dumps(record, indent=2))
        m = record["machine_after"]
        parts.append(f"## {name}\n\nMachine: {m['cpu_count']} CPUs ({m['processor']}), torch {m['torch']}, "
                     f"{m['threads']} threads, load average before {before['loadavg']} / after "
                     f"{m['loadavg']}; {record['seconds']:.0f} s.\n\n{text}\n")
    (args.out / "bench.md").write_text("\n".join(parts))
    print("\n".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
