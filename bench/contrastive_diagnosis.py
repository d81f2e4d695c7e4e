"""Why CLUDA's τ = 1 loss stays flat, and which classes own each contrastive loss's gradient.

    python -m bench.contrastive_diagnosis RUN_DIR [RUN_DIR ...] [--batches 4] \
        [--out bench/results/contrastive_diagnosis]

For each run (a CLUDA, PiPa or SePiCo run directory) and each of its students (iteration 0 =
the pretrained start, rebuilt from the run's config; ``checkpoints/prev.pt``; ``last.pt``), on the
same ``--batches`` source batches (the run's source stream, fixed seed), in eval mode:

1. **Where the loss sits between its floor and its start**, for CLUDA's formula on the
   contrastive grid at τ = 1 and at τ = 0.1: the value with the student's fused features, with
   random features (what an untrained network is close to) and with a perfectly clustered
   embedding (every class one vertex of a regular simplex: same-class cosine 1, other-class
   cosine −1/(K−1)). At τ = 1 the two ends lie close together, so the loss has little room
   to fall and carries a weak, nearly constant gradient; at τ = 0.1 they lie far apart.
2. **Who owns the gradient**: the share of the loss's gradient (the sum over pixels of
   ‖∂L/∂feature‖) that each class's pixels receive, beside that class's share of the pixels,
   for the run's own contrastive loss (CLUDA: its loss on the fused feature; PiPa and SePiCo:
   theirs on their projection head, sampled and weighted as in training).

Writes OUT.json, OUT.md and OUT.png (both measures over training, per run).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from cluda_kit.data.labels import IGNORE_INDEX

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ the floor and the start
def simplex_features(labels: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) features putting every class present in ``labels`` (B, h, w) on its own
    vertex of a regular simplex (K classes: cosine 1 within a class, −1/(K−1) across); ignore
    pixels get a zero vector."""
    classes = [c for c in labels.unique().tolist() if c != IGNORE_INDEX]
    k = max(len(classes), 2)
    vertices = torch.eye(k) - 1.0 / k
    f = torch.zeros(*labels.shape, k)
    for i, c in enumerate(classes):
        f[labels == c] = vertices[i]
    return f.permute(0, 3, 1, 2)


def loss_range(features: torch.Tensor, labels: torch.Tensor, temperature: float,
               generator: torch.Generator) -> dict[str, float]:
    """CLUDA's loss (docs/method.md §5) at τ = τ_b = ``temperature`` on grid features (B, D, h, w)
    and labels (B, h, w): the features' value, a random embedding's and a clustered one's."""
    from cluda_kit.uda.contrastive import pixel_contrastive_loss

    def loss(f: torch.Tensor) -> float:
        return float(pixel_contrastive_loss(f, labels, temperature=temperature,
                                            base_temperature=temperature))

    random = torch.randn(features.shape, generator=generator)
    return {"value": loss(features), "random": loss(random), "clustered": loss(simplex_features(labels))}


# ------------------------------------------------------------------ the gradient per class
def class_shares(grad: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[list, list]:
    """Per class: its share of Σ_pixels ‖grad‖ and its share of the valid pixels, for a
    (B, D, h, w) gradient and (B, h, w) labels."""
    norm = grad.norm(dim=1).flatten()
    y = labels.flatten()
    valid = y != IGNORE_INDEX
    mass = torch.zeros(num_classes).index_add_(0, y[valid], norm[valid].float())
    pixels = torch.zeros(num_classes).index_add_(0, y[valid], torch.ones(int(valid.sum())))
    return (mass / mass.sum().clamp_min(1e-12)).tolist(), (pixels / pixels.sum().clamp_min(1)).tolist()


def method_loss(trainer, out, ys: torch.Tensor, generator: torch.Generator):
    """(loss, the tensor it is differentiated at, that tensor's labels) of the run's own
    contrastive loss on a source batch's student output."""
    from cluda_kit.uda.contrastive import pixel_contrastive_loss, resize_for_contrast
    from cluda_kit.uda.methods.pipa import pipa_loss

    method, c = trainer.method, trainer.cfg.loss.contrastive
    if method.name == "pipa":
        z = method.head(out.stages)
        z.retain_grad()
        lab = F.interpolate(ys[:, None].float(), size=z.shape[-2:], mode="nearest")[:, 0].long()
        pred = F.interpolate(out.logits.float(), size=z.shape[-2:], mode="bilinear").argmax(1)
        a = method.a
        return pipa_loss(z, lab, pred, temperature=a.temperature, base_temperature=a.base_temperature,
                         max_samples=a.max_samples, max_views=a.max_views, generator=generator), z, lab
    if method.name == "sepico":
        z = method.head(out.stages)
        z.retain_grad()
        lab = method.labels_at(ys, z.shape[-2:])
        return method.contrast(z, lab) / method.a.weight, z, lab
    f, lab, _ = resize_for_contrast(out.fused.float(), ys, None, size=tuple(c.grid))
    f.retain_grad()
    return pixel_contrastive_loss(f, lab, temperature=c.temperature, base_temperature=c.base_temperature,
                                  max_anchors=c.max_anchors), f, lab


def students(run: Path):
    """(label, trainer) for iteration 0 (the run's config, freshly built) and each checkpoint."""
    from cluda_kit.config import load_config
    from cluda_kit.engine.trainer import Trainer

    yield "0", Trainer(load_config(run / "config.yaml"), progress=False)
    seen = set()
    for name in ("prev.pt", "last.pt"):  # the final save repeats the last scheduled one: once each
        ckpt = run / "checkpoints" / name
        if ckpt.is_file():
            trainer = Trainer.resume(ckpt, read_only=True, progress=False)
            if trainer.iter not in seen:
                seen.add(trainer.iter)
                yield str(trainer.iter), trainer


def diagnose(run: Path, batches: int = 4) -> dict:
    from cluda_kit.engine import data as engine_data

    out: dict = {"run": str(run), "students": {}}
    for it, trainer in students(run):
        cfg = trainer.cfg
        out["method"], out["classes"] = trainer.method.name, list(trainer.class_table.names)
        stream = engine_data.train_stream(cfg, domain="source", rank=0, world_size=1)
        gen = torch.Generator().manual_seed(0)
        trainer.student.eval()
        if trainer.method_state is not None:
            trainer.method_state.eval()
        ranges = {1.0: [], 0.1: []}
        mass, pixels, losses = [], [], []
        for _ in range(batches):
            batch = trainer._batch(stream)
            xs, ys = batch["image"], batch["label"]
            out_s = trainer.context().forward(trainer.student, xs, return_stages=True)
            from cluda_kit.uda.contrastive import resize_for_contrast

            f, lab, _ = resize_for_contrast(out_s.fused.detach().float(), ys, None,
                                            size=tuple(cfg.loss.contrastive.grid))
            for tau in ranges:
                ranges[tau].append(loss_range(f, lab, tau, gen))
            loss, at, at_labels = method_loss(trainer, out_s, ys, gen)
            loss.backward()
            m, p = class_shares(at.grad, at_labels, cfg.model.num_classes)
            mass.append(m)
            pixels.append(p)
            losses.append(float(loss.detach()))
            trainer.student.zero_grad(set_to_none=True)
        mean = lambda rows: [sum(col) / len(col) for col in zip(*rows)]  # noqa: E731
        out["students"][it] = {
            "loss": sum(losses) / len(losses),
            "range": {str(t): {k: sum(r[k] for r in rs) / len(rs) for k in rs[0]} for t, rs in ranges.items()},
            "gradient_share": mean(mass), "pixel_share": mean(pixels)}
    return out


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
                room = (g["random"] - g["value"]) / max(g["random"] - g["clustered"], 1e-12)
                cells += [f"{g['value']:.2f} / {g['random']:.2f} / {g['clustered']:.2f}", f"{room:.2f}"]
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


CURVE_ITERS = (10, 100, 250, 500, 750)
SOURCE_TERMS = ("cl_src", "pipa", "sepico_src")


def logged_curve(run: Path) -> tuple[str | None, list[float | None]]:
    """(the run's contrastive source term, its logged value at each of CURVE_ITERS or None)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None, []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    term = next((t for t in SOURCE_TERMS if any(t in r for r in records)), None)
    if term is None:
        return None, []
    by_iter = {r["iter"]: r[term] for r in records if term in r}
    return term, [by_iter.get(i) for i in CURVE_ITERS]


def figure(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.5))
    for r in results:
        its = sorted(r["students"], key=int)
        for t, style in (("1.0", "-"), ("0.1", "--")):
            room = [(s["range"][t]["random"] - s["range"][t]["value"]) /
                    max(s["range"][t]["random"] - s["range"][t]["clustered"], 1e-12)
                    for s in (r["students"][i] for i in its)]
            a.plot([int(i) for i in its], room, style, marker="o", label=f"{Path(r['run']).name}, τ = {t}")
    a.set(xlabel="iteration", ylabel="(random − value) / (random − clustered)",
          title="How far CLUDA's loss has fallen towards its floor")
    a.legend(fontsize=8)
    last = [r["students"][max(r["students"], key=int)] for r in results]
    classes = results[0]["classes"]
    order = sorted(range(len(classes)), key=lambda k: -last[0]["pixel_share"][k])
    width = 0.8 / (len(results) + 1)
    xs = range(len(order))
    b.bar([x - 0.4 + width / 2 for x in xs], [100 * last[0]["pixel_share"][k] for k in order], width,
          color="lightgray", label="share of pixels")
    for j, (r, s) in enumerate(zip(results, last)):
        b.bar([x - 0.4 + width * (j + 1.5) for x in xs], [100 * s["gradient_share"][k] for k in order],
              width, label=f"{Path(r['run']).name} ({r['method']}) gradient")
    b.set_xticks(list(xs), [classes[k] for k in order], rotation=60, ha="right", fontsize=8)
    b.set(ylabel="%", title="Who owns the gradient (last checkpoint)")
    b.legend(fontsize=8)
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
