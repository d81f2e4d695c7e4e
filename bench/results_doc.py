"""docs/results.md, generated from bench/results: every study and benchmark the kit reports, each
with its command, its declared arms file (bench/*.yaml) where it has one, and its tables.

    python -m bench.results_doc            # writes docs/results.md
    python -m bench.results_doc --check    # exit status 1 when docs/results.md is not what this writes

tests/test_docs.py regenerates the page in memory and compares it with the committed file, so a
new or re-run result reaches the page by running this. A record's own file keeps everything it
says (its history, machine and load, the commit it ran at); the page keeps its tables and the
reading written here, without commit hashes or dates. bench/results/study_contrastive.md is
included when it exists.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "results.md"

#: a short commit hash or a full one (hex with a letter and a digit), and a date
HASH = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")


@dataclass(frozen=True)
class Entry:
    title: str
    file: str  # under bench/results
    about: str  # what it measures, in a sentence or two
    command: str = ""  # when the record has no "Command:" line of its own
    arms: str = ""  # the declared arms file, bench/*.yaml
    reading: str = ""  # what it shows
    whole: bool = True  # the record's text (generated records) or only its tables and commands


STUDY_CLUDA_750 = """\
CLUDA is below DAFormer on every seed (−0.56 ± 0.31 mIoU, 0/5 wins, p = 0.016), while on every
seed its target features are tighter relative to the distance between classes (intra/inter ratio
0.440–0.464 against 0.478–0.487) and its source and target features of a class more interleaved
(domain mixing 0.236–0.263 against 0.182–0.204), and its mean silhouette lower (per-seed values
in `bench/results/study_cluda_750.json`). The frequent classes gain tightness (silhouette of road
0.58 → 0.81, sky 0.56 → 0.78, vegetation −0.01 → 0.55) and the thin ones lose it (traffic light
0.22 → −0.50, traffic sign 0.25 → −0.19, pole −0.08 → −0.34), and so does the IoU: vegetation
+2.6, road +0.9 against traffic sign −3.8, sky −2.7, pole −2.4. With one term alone, or at τ =
0.1, the loss costs less or nothing, but it does not help either (−0.15, +0.07 and −0.22 against
DAFormer, p ≥ 0.26). No arm beats DAFormer, so no preset changed. The CLUDA run of seed 0 is the
demo run, to the last digit (23.63). Source-only at this budget is 18.2 ± 1.3, so the demo's
adaptation gain is +5.7 on average (+4.2 to +7.0 by seed; +6.4 on seed 0)."""

STUDY_CONTRASTIVE = """\
No variant meets the declared rule, so none is recommended and no preset changed. PiPa is +0.49 ±
0.60 mIoU against DAFormer (3/5 wins, p = 0.14) and SePiCo +0.30 ± 0.68 (4/5, p = 0.39): both are
above CLUDA (−0.45 ± 0.21, 0/5, p = 0.009), but their gains are within the seed-to-seed spread.
What moved and what did not: CLUDA moves every cluster measure by 0.03 to 0.05 (target silhouette
0.038 against DAFormer's 0.077, intra/inter ratio 0.451 against 0.483, domain mixing 0.249 against
0.201); PiPa and SePiCo stay within 0.012 of DAFormer on each (silhouette 0.078 and 0.069, ratio
0.484 and 0.480, mixing 0.189 and 0.198). Per class, CLUDA loses most on traffic sign (−3.5 IoU),
sky (−2.8) and pole (−2.5) and gains on vegetation (+3.3) and road (+1.0); PiPa gains most on
traffic sign (+5.2), rider (+2.2) and fence (+1.9), SePiCo on fence (+2.6) and motorcycle (+1.3).
At this scale no design turns tighter clusters into accuracy: the one that tightens them (CLUDA)
loses accuracy, and the two that do not lose it leave the clusters where DAFormer's are. Notebook
08 reads these runs."""

STUDY_CLUDA = """\
The same comparison at the earlier 400-iteration budget, with the same declared ablation and
temperature arms: CLUDA −0.31 ± 0.40 against DAFormer (1/5 wins). Two of the paper's claims on the
feature space hold (target classes tighter relative to their distance, ratio 0.435 against 0.465,
and source and target of a class more interleaved, 0.285 against 0.230, each on all 5 seeds), but
the tightening goes to the frequent classes and the mean silhouette drops (0.025 → 0.006); the
per-class IoU moves the same way (vegetation +4.9, road +1.1; wall −3.4, traffic sign −2.5). With
τ = 1 and every pixel an anchor the loss is dominated by the classes with the most pixels. This
agrees with the release's issue #5 (67.88 for DAFormer + CLUDA, below DAFormer's 68.3) rather than
with the +1.8 that the Papers with Code listing's 70.1 implies over DAFormer's 68.3. At this scale (2 M parameters, a synthetic gap) the contrastive terms
reshape the fused features as the paper describes and do not turn that into accuracy; whether they
do with MiT-B5, 40 000 iterations and the real GTA → Cityscapes gap is what this CPU study cannot
test."""

STUDY_INIT = """\
The fractal-pretrained encoder (`kit:mit_nano_fractal`, `cluda-kit pretrain`; 92.4 % held-out
top-1 on 100 fractal categories, chance 1 %) is better than random initialisation for
source-only (+2.08 ± 1.39), DAFormer (+1.78 ± 0.36) and CLUDA (+1.21 ± 0.19), each on all 3
seeds, at the 400-iteration budget of the time. It is the demo default; `--set
model.pretrained=` trains from random weights."""

ENTRIES: list[tuple[str, list[Entry]]] = [
    ("miniscapes: the demo and what the methods give", [
        Entry("The demo (`make demo`)", "demo_time.md",
              "Wall time of `make demo` (install excluded) in a fresh clone with an empty class-"
              "statistics cache, and the table it prints.",
              command="CLUDA_KIT_CACHE=$(mktemp -d) python -m bench.demo_time --repo FRESH_CLONE",
              reading="750 iterations in about 4.3 minutes on a 2-core CPU; the goal is 5 minutes. "
                      "What pays for it (the CPU overlap of `train.overlap`, two evaluations) is in "
                      "bench/README.md and CHANGELOG.md.", whole=False),
        Entry("What CLUDA adds, at the demo's 750 iterations", "study_cluda_750.md",
              "DAFormer against DAFormer + CLUDA at the same model, data and budget, paired by seed, "
              "in the paper's conditions (pretrained encoder, feature distance, the release's loss "
              "weights, τ = τ_b = 1), with source-only as the reference and the declared ablation "
              "and temperature arms. The command below trained the study's last part (three arms, "
              "seed 4); `python -m bench.study bench/study_cluda_750.yaml --jobs 2 --threads 1` runs "
              "the whole study, and its arms file pins the settings it ran with (750 iterations, "
              "evaluations every 250 where today's presets evaluate every 375).",
              arms="bench/study_cluda_750.yaml", reading=STUDY_CLUDA_750),
        Entry("What CLUDA adds, at 400 iterations", "study_cluda.md",
              "The same study at the demo's earlier budget. The command below trained its last two "
              "arms and reused the other runs' records; `python -m bench.study bench/study_cluda.yaml "
              "--jobs 2` runs the whole study, and its arms file pins the budget it ran at "
              "(`train.max_iters=400`, `train.eval_every=100`, `train.checkpoint_every=100`), where "
              "today's presets train 750 iterations and evaluate every 375.",
              arms="bench/study_cluda.yaml",
              reading=STUDY_CLUDA),
        Entry("Contrastive variants: PiPa and SePiCo", "study_contrastive.md",
              "The field's two answers to CLUDA's saturated loss, each at its release's settings: "
              "PiPa's class-balanced hard/easy anchors at τ 0.1 (`miniscapes_pipa`) and SePiCo's "
              "pixels against class statistics of the teacher (`miniscapes_sepico`), against "
              "DAFormer and CLUDA at 750 iterations, 5 paired seeds, with a decision rule declared "
              "in the arms file, which pins every setting. It ran seed by seed (`--seeds K`), on "
              "an Intel Xeon; the command below runs it whole.", arms="bench/study_contrastive.yaml",
              command="python -m bench.study bench/study_contrastive.yaml --jobs 2 --threads 1",
              reading=STUDY_CONTRASTIVE),
        Entry("Why CLUDA's τ = 1 loss stays flat, and who owns each loss's gradient",
              "contrastive_diagnosis.md",
              "On the contrastive study's seed-0 runs: CLUDA's formula on the student's fused "
              "features against a random and a perfectly clustered embedding at τ = 1 and 0.1, each "
              "class's share of each contrastive loss's gradient beside its share of the pixels, "
              "and the logged source term (figure: `bench/results/contrastive_diagnosis.png`).",
              reading="At τ = 1 the whole range of CLUDA's loss is 1.1 nats (6.65 random, 5.56 "
                      "clustered; 7.4 at τ = 0.1), so the logged term stays near 6 for all 750 "
                      "iterations; its gradient follows the pixels (road, vegetation, building and "
                      "sky: 76 % of it), SePiCo's too, while PiPa's sampler gives thin classes many "
                      "times their pixel share."),
        Entry("A stand-in for ImageNet: the fractal-pretrained encoder", "study_init.md",
              "Random against fractal-pretrained initialisation, the same presets, budget and "
              "seeds. It ran at the presets' budget of the time, 400 iterations with evaluations "
              "every 100; its arms file does not pin the budget, so on today's presets (750 "
              "iterations, evaluations every 375) the same command trains longer. To rerun it as "
              "recorded, add `train.max_iters=400`, `train.eval_every=100` and "
              "`train.checkpoint_every=100` to each arm's `set:`, as bench/study_cluda.yaml pins "
              "them.", arms="bench/study_init.yaml", reading=STUDY_INIT),
        Entry("Target entropy minimisation (the example method)", "study_entropy.md",
              "DAFormer against DAFormer + MinEnt, the complete example method of "
              "docs/extending.md (`miniscapes_entropy`). It ran at the presets' budget of the time, "
              "400 iterations with evaluations every 100, reusing the daformer seeds of the "
              "400-iteration CLUDA study; its arms file pins only `model.pretrained`, so on today's "
              "presets (750 iterations, evaluations every 375) the same command trains longer. To "
              "rerun it as recorded, add `train.max_iters=400`, `train.eval_every=100` and "
              "`train.checkpoint_every=100` to its `set:` list, as bench/study_cluda.yaml does.",
              arms="bench/study_entropy.yaml",
              reading="A tie: +0.08 ± 0.41 mIoU, 2/3 wins, p = 0.77."),
        Entry("Methods at 1000 iterations from random weights", "methods_miniscapes.md",
              "The five demo presets, 3 seeds each, before the fractal-pretrained encoder "
              "(1000 iterations, random initialisation, evaluations every 250; gap 1.5 and learning "
              "rate 1.5e-3 as today). Today's presets start from the fractal encoder and train 750 "
              "iterations, so the command below now trains something else; the record's settings "
              "on today's presets are `python -m bench.methods --presets miniscapes_source_only "
              "miniscapes_dacs miniscapes_daformer miniscapes_cluda miniscapes_oracle --set "
              "model.pretrained= --set train.max_iters=1000 --set train.eval_every=250 --set "
              "train.checkpoint_every=250 --runs runs/table --jobs 2`.",
              reading="Source-only 17.9, DACS 24.1, DAFormer 24.5, CLUDA 23.9, target oracle 35.8: "
                      "there too CLUDA's contrastive terms added nothing over DAFormer."),
        Entry("Methods at the first calibration (gap 1.0, 600 iterations)", "methods_miniscapes_600.md",
              "The presets at the first, weaker appearance gap; source-only with strong "
              "augmentation (`miniscapes_source_only_aug`) beside plain source-only. The presets of "
              "the time differ from today's in four settings: the appearance gap of `real` "
              "(1.0, today 1.5), `optim.lr` (6e-4, today 1.5e-3), `model.pretrained` (random "
              "weights, today the fractal encoder) and the budget (`train.max_iters` 600 with "
              "`train.eval_every` 200, today 750 and 375). The record's settings on today's "
              "presets: `python -m bench.methods --set data.target.gap=1.0 --set data.val.gap=1.0 "
              "--set optim.lr=6e-4 --set model.pretrained= --set train.max_iters=600 --set "
              "train.eval_every=200 --set train.checkpoint_every=200 --runs runs/calib_gap1 --jobs 2`.",
              reading="At this gap self-training did not beat source-only, which is why the gap "
                      "was made stronger (next section)."),
        Entry("A long run (2400 iterations)", "methods_miniscapes_2400.md",
              "CLUDA and source-only trained 2400 iterations, one seed, at the first calibration's "
              "setting (previous section: gap 1.0, learning rate 6e-4, random weights). It asked "
              "why self-training did not beat source-only there: whether the 600-iteration budget "
              "was too short for the teacher's pseudo-labels to help. The record's command sets "
              "only the budget, so on today's presets (gap 1.5, learning rate 1.5e-3, the fractal "
              "encoder) it trains something else; its settings on today's presets add `--set "
              "data.target.gap=1.0 --set data.val.gap=1.0 --set optim.lr=6e-4 --set "
              "model.pretrained=`.",
              reading="With 4× the budget CLUDA ends 3.4 mIoU above source-only (one seed), so the "
                      "gain needed a longer schedule or a stronger gap; the calibration below chose "
                      "both (gap 1.5, 1000 iterations) for the random-initialisation demo.",
              whole=True),
        Entry("Calibration of the gap, learning rate and budget", "calibration_miniscapes.md",
              "Single seed-0 runs that set the frozen appearance gap (1.5), the learning rate "
              "(1.5e-3) and the budget of the random-initialisation demo. Each run was `cluda-kit "
              "train PRESET --set optim.lr=LR --set data.source.gap=G --set data.target.gap=G --set "
              "data.val.gap=G [--set train.max_iters=1000 --set train.eval_every=250]` on the "
              "presets of the time, which trained from random weights for 600 iterations with "
              "evaluations every 200; on today's presets add `--set model.pretrained=` and, for the "
              "600-iteration rows, `--set train.max_iters=600 --set train.eval_every=200`. The "
              "command below only tabulates the runs.",
              command="python -m bench.calibration runs/cal2 --default-gap 1.0", whole=False),
        Entry("The demo budget with the fractal-pretrained encoder", "calibration_demo_pretrained.md",
              "Single seed-0 runs: how many iterations the pretrained demo needs for +5 mIoU over "
              "source-only. The first table's 128×256 runs used the presets' budget of the time, "
              "400 iterations with evaluations every 100 (today 750 and 375): on today's presets "
              "their commands need `--set train.max_iters=400 --set train.eval_every=100`. The "
              "other commands set their budget themselves.",
              reading="The gain passes +5 between 500 and 750 iterations (+4.5 at 500, +6.3 at 750, "
                      "+8.4 at 1000), while source-only falls from 19.3 at 250 to 16.9 at 1000; "
                      "750 iterations were chosen from this curve before any DAFormer run at 750.",
              whole=False),
    ]),
    ("Speed and memory", [
        Entry("Training step on the CPU", "step.md",
              "Median step and mean time per phase of `Trainer.step` for each method family on the "
              "demo model (bench/README.md describes the phases and the same-run comparisons)."),
        Entry("Contrastive loss: time and memory", "contrastive.md",
              "The kit's row-blocked loss with exact gradients against a plain full-matrix "
              "implementation, 1 000 to 16 000 anchors.",
              reading="At the release's 8450 anchors the kit needs 18 % of the plain loss's peak "
                      "memory and half its time, with the same value and gradients."),
        Entry("The release's own contrastive loss: peak memory", "release_contrastive_memory.md",
              "The CLUDA release's `contrastive_loss`, run from a checkout of the release as an "
              "oracle on the CPU, beside the kit's plain formula and blocked kernel on the same "
              "inputs, at the release's 8450 anchors.",
              reading="The release's loss and the kit's give the same value (relative difference "
                      "below 2e-5); the release's peaks at about 2.6 GB (2.8 GB with pixel weights), "
                      "the kit's blocked kernel at about 0.35 GB."),
        Entry("Data", "data.md",
              "miniscapes rendering, prepared GTA-layout trees and paper-size fake GTA5 / "
              "Cityscapes trees against the paper presets' step goals."),
        Entry("Evaluation", "evaluation.md", "Whole-image against sliding-window inference."),
        Entry("Feature-space analysis", "analysis.md",
              "Feature extraction, t-SNE (scikit-learn, openTSNE) and UMAP of 5 000 to 50 000 "
              "points."),
        Entry("torch.compile of the demo step", "compile_demo.md",
              "Eager against compiled steps on the CPU, with a cold and a warm compiler cache.",
              reading="1.5× faster per step once compiled, but the first compilation costs about "
                      "130 s, so `make demo` stays eager.", whole=False),
        Entry("The linked explorer in the browser", "explorer_browser.md",
              "Frames per second of the two-view `LinkedExplorer` at 20 000 points per view in "
              "headless Chromium without a GPU.",
              whole=False),
    ]),
]

GPU_ABOUT = """\
One training step of the paper presets at paper resolution on one NVIDIA H100 80GB, random
weights, on miniscapes batches rendered at the crop size; FLOPs counted with
`torch.utils.flop_counter`; host-device synchronisations per step counted with
`torch.cuda.set_sync_debug_mode`. Each record is `bench/results/gpu_check_H100_*.json` (the log
beside it), made with torch 2.11 (`make install` pins 2.14.1; no GPU record was made with it) on
three versions of the code: `gta2cs_daformer_cluda` and `gta2cs_hrda_cluda` the first,
`before_sync_fixes` the second, `sync_free` the newest. Eager mode; compiled steps have not been
measured on a GPU yet."""

GPU_READING = """\
The step times and memory the other pages quote each come from one record, named beside them.
bf16 is from `sync_free`, the newest code, which has no host-device synchronisation in the step:
DAFormer + CLUDA 0.533 s per step in 6.4 GiB, HRDA + CLUDA 1.292 s in 10.2 GiB, so 40 000
iterations are about 5.9 h and 14.4 h of one H100 (docs/reproducing.md). `sync_free` measured no
fp32 step and no activation checkpointing. In `before_sync_fixes`, the one record that timed both
precisions on the same code, fp32 was the faster DAFormer + CLUDA step (0.525 against 0.598 s) and
the slower HRDA + CLUDA step (1.186 against 1.042 s), and took more memory (7.8 against 6.4 GiB,
13.9 against 10.2 GiB): bf16 saves memory at both sizes, and time only at HRDA's. Activation checkpointing
was measured only on the first code (`gta2cs_daformer_cluda`, `gta2cs_hrda_cluda`): bf16 peaks of
4.7 and 7.3 GiB at 0.726 and 1.809 s per step. Each record times a few steps, and the HRDA + CLUDA
bf16 step took 1.137, 1.042 and 1.292 s in the three versions' records, so a difference of that
size between two records cannot be credited to the code. The release needed a 32 GB V100 for HRDA + CLUDA (its
issue #4). In `sync_free` the GPU kernels are busy about 165 ms of the 533 ms DAFormer + CLUDA
step (its log), so the step is bound by Python and kernel launches (model FLOPs utilisation below
5 % of the dense-bf16 peak): CUDA graphs and `torch.compile` are the next GPU gains
(bench/README.md, "GPU path")."""

RELEASE_ABOUT = """\
The releases' own model classes (CLUDA's HRDA and DAFormer models, HRDA, DAFormer, MIC; student
and EMA teacher, random weights, saved in the release's checkpoint layout) against the kit's
`load_model` with the matching preset: logits, encoder stages and fused features on the same
input, fp32. `bench/release_compare.py` says how to build the releases' environment."""


def _read(name: str) -> str | None:
    path = RESULTS / name
    return path.read_text() if path.is_file() else None


def _command(text: str) -> str:
    m = re.search(r"^Command: `([^`]+)`", text, re.M)
    return m.group(1) if m else ""


def _drop_commit_columns(table: list[str]) -> list[str]:
    cells = [row.strip().strip("|").split("|") for row in table]
    drop = {i for i, c in enumerate(cells[0]) if c.strip().lower() == "commit"}
    if not drop:
        return table
    return ["| " + " | ".join(c.strip() for i, c in enumerate(row) if i not in drop) + " |"
            if not set(row[0].strip()) <= set("-:") else
            "|" + "|".join(c for i, c in enumerate(row) if i not in drop) + "|"
            for row in cells]


def _blocks(text: str) -> list[tuple[str, list[str]]]:
    """The record's blocks: ("table", rows), ("code", lines), ("text", lines) separated by blank
    lines, fenced code kept whole."""
    out: list[tuple[str, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append(("code", lines[i:j + 1]))
            i = j + 1
            continue
        if not line.strip():
            i += 1
            continue
        j = i
        while j < len(lines) and lines[j].strip() and not lines[j].startswith("```"):
            j += 1
        block = lines[i:j]
        kind = ("table" if all(b.startswith("|") for b in block)
                else "code" if all(b.startswith("    ") for b in block) else "text")
        out.append((kind, block))
        i = j
    return out


def _body(text: str, whole: bool, code: bool = True) -> str:
    parts = []
    for kind, block in _blocks(text):
        if kind == "code" and not code:
            continue
        first = block[0]
        if kind == "text" and (first.startswith(("Command:", "Arms, seeds and baseline declared",
                                                  "Results taken from"))):
            continue
        if kind == "text" and first.startswith("#"):
            continue  # the page gives each record its own heading
        if kind == "table":
            block = _drop_commit_columns(block)
        elif kind == "text" and not whole and not first.startswith("**"):
            continue
        parts.append("\n".join(block))
    body = "\n\n".join(parts)
    return DATE.sub("", HASH.sub("", body))


def _gpu_section() -> str:
    rows = ["| record | preset | precision | act. ckpt | s/iter | peak GiB | TFLOP/iter | TFLOP/s | "
            "host syncs per step |",
            "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for path in sorted(RESULTS.glob("gpu_check_H100_*.json")):
        data = json.loads(path.read_text())
        label = path.stem.removeprefix("gpu_check_H100_")
        for r in data["records"]:
            if "sec_per_iter" not in r:
                continue
            prec = "fp32" if r["amp"] == "none" else r["amp"]
            rows.append(
                f"| `{label}` | {r['preset']} | {prec} | {'✓' if r.get('activation_checkpointing') else '–'} | "
                f"{r['sec_per_iter']:.3f} | {r['peak_mem_gib']:.1f} | {r['flops_per_iter'] / 1e12:.1f} | "
                f"{r['achieved_tflops']:.1f} | {r.get('sync_count', '–')} |")
    return "\n".join([
        "### GPU checks (one H100)", "",
        "Command: `python bench/gpu_check.py --presets PRESET --warmup 2 --iters 3` "
        "(`bash bench/gpu_run.sh check` adds `--profile`).", "",
        GPU_ABOUT, "", "\n".join(rows), "", GPU_READING])


def render() -> str:
    out = [
        "# Results",
        "",
        "Every study and benchmark the kit reports, generated from `bench/results` by "
        "`python -m bench.results_doc` (do not edit by hand; `tests/test_docs.py` checks that this "
        "page is what the script writes). Each section gives the command that made the record, "
        "the arms file where a study declared its arms, seeds and baseline before any of its runs, "
        "and the record's tables (for a study run in parts, the command of its last part; the "
        "arms file holds the whole setting); the benchmark records (`bench/results/NAME.md` and "
        "`.json`) also hold the machine, its load and the code, while a study's runs keep theirs "
        "in their run directories (meta.json). Numbers differ at rounding level between CPU kinds "
        "(the demo: 23.63 on an AMD EPYC, 23.75 on an Intel Xeon). mIoU is on the 100 `real` "
        "validation scenes of miniscapes unless said otherwise; ± is the standard deviation over "
        "seeds; Δ and p compare runs paired by seed (two-sided paired t-test).",
        "",
    ]
    for part, entries in ENTRIES:
        out += [f"## {part}", ""]
        for e in entries:
            text = _read(e.file)
            out += [f"### {e.title}", ""]
            if text is None:
                out += [e.about, "",
                        f"Declared in `{e.arms}`; not run yet. Its record, `bench/results/{e.file}`, "
                        "appears here when it exists (`python -m bench.results_doc`).", ""]
                continue
            command = _command(text) or e.command
            meta = [f"Command: `{command}`."] if command else []
            if e.arms:
                meta.append(f"Arms, seeds and baseline declared in `{e.arms}` before the runs.")
            meta.append(f"Record: `bench/results/{e.file}`.")
            out += [e.about, "", " ".join(meta), "", _body(text, e.whole), ""]
            if e.reading:
                out += [e.reading, ""]
        if part == "Speed and memory":
            out += [_gpu_section(), ""]
    text = _read("release_compare.md")
    if text is not None:
        out += ["## Fidelity: released checkpoints through the kit", "", RELEASE_ABOUT, "",
                "Command: `python bench/release_compare.py` (in the releases' environment). "
                "Record: `bench/results/release_compare.md`.", "", _body(text, whole=False, code=False), ""]
    page = "\n".join(out)
    page = re.sub(r"\n{3,}", "\n\n", page).rstrip() + "\n"
    return page


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/results.md is stale")
    args = ap.parse_args(argv)
    page = render()
    if args.check:
        if not DOC.is_file() or DOC.read_text() != page:
            print(f"{DOC.relative_to(ROOT)} is stale: run python -m bench.results_doc", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(page)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
