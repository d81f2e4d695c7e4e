"""Why a pixel-contrastive loss does or does not move the features: where CLUDA's loss sits between
a random and a perfectly clustered embedding, and which classes own each loss's gradient.

    r = diagnose("runs/notebooks/cluda", batches=2, last_only=True)
    r["students"]["750"]["range"]["1.0"]      # {"value", "random", "clustered"} of CLUDA's loss at τ = 1
    r["students"]["750"]["gradient_share"]    # per class: its share of Σ‖∂L/∂feature‖

1. **Where the loss sits between its floor and its start**, for CLUDA's formula on the contrastive
   grid at τ = 1 and at τ = 0.1: the value with the student's fused features, with random
   features (what an untrained network is close to) and with a perfectly clustered embedding
   (every class one vertex of a regular simplex: same-class cosine 1, other-class cosine
   −1/(K−1)). At τ = 1 the two ends lie close together, so the loss has little room to fall and
   carries a weak, nearly constant gradient; at τ = 0.1 they lie far apart.
2. **Who owns the gradient**: the share of the loss's gradient (the sum over pixels of
   ‖∂L/∂feature‖) that each class's pixels receive, beside that class's share of the pixels, for
   the run's own contrastive loss (CLUDA: its loss on the fused feature; PiPa and SePiCo: theirs
   on their projection head, sampled and weighted as in training). Measured in eval mode on the
   run's source stream with a fixed seed. ``python -m bench.contrastive_diagnosis`` writes both
   for several runs as a record.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from cluda_kit.data.labels import IGNORE_INDEX
from cluda_kit.uda.contrastive import pixel_contrastive_loss, resize_for_contrast

__all__ = ["simplex_features", "loss_range", "class_shares", "method_loss", "students", "diagnose",
           "logged_curve", "room", "CURVE_ITERS", "SOURCE_TERMS"]


def room(r: dict) -> float:
    """How far a loss value has fallen from a random embedding's towards the clustered floor:
    (random − value) / (random − clustered) of a :func:`loss_range` result."""
    return (r["random"] - r["value"]) / max(r["random"] - r["clustered"], 1e-12)


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


def students(run: Path, last_only: bool = False):
    """(label, trainer) for iteration 0 (the run's config, freshly built) and each checkpoint;
    ``last_only``: only the last checkpoint."""
    from cluda_kit.config import load_config
    from cluda_kit.engine.trainer import Trainer

    if not last_only:
        yield "0", Trainer(load_config(run / "config.yaml"), progress=False)
    seen = set()
    for name in (("last.pt",) if last_only else ("prev.pt", "last.pt")):  # the final save repeats the last scheduled one: once each
        ckpt = run / "checkpoints" / name
        if ckpt.is_file():
            trainer = Trainer.resume(ckpt, read_only=True, progress=False)
            if trainer.iter not in seen:
                seen.add(trainer.iter)
                yield str(trainer.iter), trainer


def diagnose(run: str | Path, batches: int = 4, *, last_only: bool = False) -> dict:
    """Both measures of the module docstring for the run directory ``run``, on ``batches`` source
    batches of its source stream: ``{"run", "method", "classes", "students": {iteration: {"loss",
    "range": {"1.0"|"0.1": {"value", "random", "clustered"}}, "gradient_share", "pixel_share"}}}``
    (shares per class, summing to 1), for iteration 0 and each checkpoint (``last_only``: the
    last checkpoint only)."""
    from cluda_kit.engine import data as engine_data

    run = Path(run)
    out: dict = {"run": str(run), "students": {}}
    for it, trainer in students(run, last_only):
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
