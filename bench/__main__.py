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
- ``analysis``: feature extraction, t-SNE and UMAP time at 5k / 20k / 50k points (bench/analysis.py).

Every section writes ``OUT/<section>.json`` (the measurements, the command, the machine: CPU count,
load average, torch version) and ``OUT/<section>.md`` (its table, rendered from that JSON), so a
run of some sections leaves the others' results alone; ``OUT/bench.md`` collects the tables of the
latest result of every section in OUT. ``--render`` rewrites the markdown from the JSON already in
OUT. ``--quick`` runs tiny sizes (the test suite uses it). OpenMP threads wait passively
(``OMP_WAIT_POLICY=PASSIVE``, as the ``cluda-kit`` command sets it): spinning threads slow a
shared 2-core machine down many times over.
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


def section_step(quick: bool) -> dict:
    from bench.step import phase_breakdown

    steps, warmup = (2, 1) if quick else (8, 2)
    overrides = QUICK_OVERRIDES if quick else ()
    rows = [phase_breakdown(p, steps=steps, warmup=warmup, overrides=overrides) for p in FAMILIES]
    return {"rows": rows, "overrides": list(overrides), "steps": steps, "warmup": warmup}


def step_table(result: dict) -> str:
    from bench.step import PHASES

    rows = result["rows"]
    steps, warmup = result.get("steps", 8), result.get("warmup", 2)
    quick = bool(result["overrides"])
    cols = [c for c in (*PHASES, "other") if any(c in r["phases_ms"] for r in rows)]
    lines = [f"Median step (ms) and mean ms per phase over {steps} profiled steps after {warmup} "
             f"warm-up steps, demo model{' (quick sizes)' if quick else ''}, the phases one after "
             "another (train.overlap off):", "",
             "| preset | step | " + " | ".join(cols) + " | data share |",
             "|---|---:|" + "---:|" * len(cols) + "---:|"]
    for r in rows:
        cells = [f"{r['phases_ms'][c]:.0f}" if c in r["phases_ms"] else "-" for c in cols]
        lines.append(f"| {r['preset']} | {r['step_ms_median']:.0f} | " + " | ".join(cells)
                     + f" | {100 * r['data_fraction']:.1f} % |")
    return "\n".join(lines)


def section_contrastive(quick: bool, out: Path) -> dict:
    from bench import contrastive_memory

    sizes = ["500", "1000"] if quick else ["1000", "2000", "4000", "8450", "16000"]
    path = out / "contrastive.json"
    argv = ["--sizes", *sizes, "--dim", "64" if quick else "256", "--repeats", "1" if quick else "3",
            "--json", str(path)]
    contrastive_memory.main(argv)
    data = json.loads(path.read_text())
    data["command"] = f"python bench/contrastive_memory.py {' '.join(argv[:-2])}"
    return data


def contrastive_table(result: dict) -> str:
    command = result.get("command", "python bench/contrastive_memory.py")
    return f"`{command}` (each point in a fresh process; CPU peak = RSS growth):\n\n" + result["table"]


def section_markdown(record: dict) -> str:
    """The markdown of one section's JSON record: header with the machine, then its table."""
    from bench import analysis, data, evaluation

    name, result = record["section"], record["result"]
    tables = {"step": step_table, "contrastive": contrastive_table, "data": data.table,
              "evaluation": evaluation.table, "analysis": analysis.table}
    before, m = record["machine_before"], record["machine_after"]
    command = record.get("command", "python -m bench")
    return (f"## {name}\n\nCommand: `{command}`. Machine: {m['cpu_count']} CPUs ({m['processor']}), "
            f"torch {m['torch']}, torch threads {m['threads']}, load average before {before['loadavg']} / "
            f"after {m['loadavg']}; {record['seconds']:.0f} s.\n\n{tables[name](result)}\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections out of {','.join(SECTIONS)}")
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds; for tests)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--render", action="store_true",
                   help="only rewrite OUT/<section>.md from the OUT/<section>.json already there")
    args = p.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        p.error(f"--only: unknown section(s) {unknown}; expected some of {list(SECTIONS)}")
    if args.render:
        for name in chosen:
            path = args.out / f"{name}.json"
            if path.exists():
                (args.out / f"{name}.md").write_text(section_markdown(json.loads(path.read_text())))
                print(f"[bench] wrote {args.out / f'{name}.md'}", file=sys.stderr)
            else:
                print(f"[bench] {path} not found; skipped", file=sys.stderr)
        write_index(args.out)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    from bench import analysis, data, evaluation

    command = ("python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    for name in chosen:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        before = _machine()
        if name == "step":
            result = section_step(args.quick)
        elif name == "contrastive":
            result = section_contrastive(args.quick, args.out)
        else:
            result = {"data": data, "evaluation": evaluation, "analysis": analysis}[name].run(quick=args.quick)
        record = {"section": name, "quick": args.quick, "command": command, "machine_before": before,
                  "machine_after": _machine(), "seconds": time.perf_counter() - t0, "result": result}
        (args.out / f"{name}.json").write_text(json.dumps(record, indent=2))
        text = section_markdown(record)
        (args.out / f"{name}.md").write_text(text)
        print(text)
    write_index(args.out)
    return 0


def write_index(out: Path) -> None:
    """``OUT/bench.md``: every section's markdown found in OUT, in the suite's order."""
    parts = ["# cluda_kit benchmarks\n\nThe latest result of each section (`python -m bench --only "
             "SECTION`); the command and the machine of each are in its header.\n"]
    parts += [(out / f"{name}.md").read_text() for name in SECTIONS if (out / f"{name}.md").exists()]
    (out / "bench.md").write_text("\n".join(parts))


if __name__ == "__main__":
    raise SystemExit(main())
