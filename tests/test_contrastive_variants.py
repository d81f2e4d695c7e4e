"""The contrastive variants (PiPa, SePiCo) against slow loops of their formulas, and the
stateful-method API they use: a method's own head and buffers train, checkpoint and resume
bit for bit."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cluda_kit.config import ConfigError, load_config
from cluda_kit.engine.trainer import Trainer
from cluda_kit.uda.anchor_sampling import hard_easy_anchor_indices
from cluda_kit.uda.methods.pipa import pipa_loss
from cluda_kit.uda.prototypes import (ClassStatistics, dist_contrastive_loss, proto_contrastive_loss,
                                      proto_regularizer)


# ------------------------------------------------------------------------------ the PiPa sampler
def _groups(labels, max_views):
    out = []
    for b in range(labels.shape[0]):
        for c in sorted(set(labels[b].flatten().tolist())):
            if c != 255 and int((labels[b] == c).sum()) > max_views:
                out.append((b, c))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_hard_easy_sampler_follows_the_release_rule(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 5, (2, 12, 16), generator=g)
    labels[0, :4] = 255
    labels[1, labels[1] == 3] = 4  # class 3 absent in image 1
    pred = torch.where(torch.rand(2, 12, 16, generator=g) < 0.3, torch.randint(0, 5, (2, 12, 16), generator=g), labels)
    pred[0, labels[0] == 1] = 1   # class 1 of image 0: no hard pixel
    pred[1, labels[1] == 2] = 0   # class 2 of image 1: no easy pixel
    max_views, max_samples = 20, 150
    idx = hard_easy_anchor_indices(labels, pred, max_samples=max_samples, max_views=max_views, generator=g)
    groups = _groups(labels, max_views)
    views = min(max_samples // len(groups), max_views)
    assert idx.numel() == len(groups) * views and idx.unique().numel() == idx.numel()
    flat_y, flat_p = labels.flatten(), pred.flatten()
    n = labels[0].numel()
    for k, (b, c) in enumerate(groups):
        chunk = idx[k * views:(k + 1) * views]
        assert ((chunk // n) == b).all() and (flat_y[chunk] == c).all()
        hard = int((flat_p[chunk] != c).sum())
        n_hard = int(((labels[b] == c) & (pred[b] != c)).sum())
        n_easy = int(((labels[b] == c) & (pred[b] == c)).sum())
        if n_hard >= views / 2 and n_easy >= views / 2:
            assert hard == views // 2
        elif n_hard >= views / 2:
            assert views - hard == n_easy
        else:
            assert hard == n_hard
    assert hard_easy_anchor_indices(labels, pred, max_views=10_000).numel() == 0


def _pipa_loop(z, y, tau, tau_b):
    """-(tau/tau_b) mean_a mean_{p in P(a)} [s_ap - log(e^s_ap + sum_n e^s_an)], one pair at a time."""
    total = 0.0
    for a in range(len(y)):
        pos = [p for p in range(len(y)) if p != a and y[p] == y[a]]
        neg = [j for j in range(len(y)) if y[j] != y[a]]
        acc = 0.0
        for p in pos:
            s_ap = float(z[a] @ z[p]) / tau
            acc += s_ap - math.log(math.exp(s_ap) + sum(math.exp(float(z[a] @ z[j]) / tau) for j in neg))
        total += -(tau / tau_b) * acc / max(1, len(pos))
    return total / len(y)


def test_pipa_loss_equals_the_loop_on_the_sampled_pixels():
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(2, 6, 8, 10, generator=g), dim=1)
    labels = torch.randint(0, 3, (2, 8, 10), generator=g)
    pred = torch.randint(0, 3, (2, 8, 10), generator=g)
    kw = dict(max_samples=60, max_views=10)
    idx = hard_easy_anchor_indices(labels, pred, generator=torch.Generator().manual_seed(1), **kw)
    loss = pipa_loss(z, labels, pred, temperature=0.1, base_temperature=0.07,
                     generator=torch.Generator().manual_seed(1), **kw)
    feats = z.permute(0, 2, 3, 1).reshape(-1, 6)[idx].double()
    expected = _pipa_loop(feats, labels.flatten()[idx].tolist(), 0.1, 0.07)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------ SePiCo
def test_class_statistics_are_the_mean_and_variance_of_everything_seen():
    g = torch.Generator().manual_seed(0)
    stats = ClassStatistics(4, 3)
    feats, labels = [], []
    for n in (7, 1, 12):
        f = torch.randn(n, 3, generator=g).double()
        y = torch.randint(0, 3, (n,), generator=g)  # class 3 never occurs
        stats.double()
        stats.update(f, y)
        feats.append(f)
        labels.append(y)
    f, y = torch.cat(feats), torch.cat(labels)
    for c in range(4):
        sel = f[y == c]
        assert stats.count[c].item() == len(sel)
        if len(sel) == 0:
            assert not stats.mean[c].any() and not stats.var[c].any()
            continue
        torch.testing.assert_close(stats.mean[c], sel.mean(0))
        torch.testing.assert_close(stats.var[c], sel.var(0, unbiased=False))


def test_proto_and_dist_losses_and_the_regulariser_equal_loops():
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(9, 5, generator=g), dim=1).double()
    y = torch.randint(0, 4, (9,), generator=g)
    mean = torch.randn(4, 5, generator=g).double() * 0.5
    var = torch.rand(4, 5, generator=g).double()
    tau = 0.7  # a small tau makes every term count
    proto, dist = 0.0, 0.0
    for i in range(9):
        logits = [float(z[i] @ mean[c]) / tau for c in range(4)]
        proto += -(logits[y[i]] - math.log(sum(math.exp(v) for v in logits)))
        spread = [float((z[i] ** 2) @ var[c]) / (2 * tau ** 2) for c in range(4)]
        dl = [logits[c] + spread[c] for c in range(4)]
        dist += -(dl[y[i]] - math.log(sum(math.exp(v) for v in dl))) + spread[y[i]]
    assert proto_contrastive_loss(z, y, mean, tau).item() == pytest.approx(proto / 9)
    assert dist_contrastive_loss(z, y, mean, var, tau).item() == pytest.approx(dist / 9)
    zbar = z.mean(0)
    sims = [float(zbar @ mean[c]) / tau for c in range(4)]
    lse = math.log(sum(math.exp(v) for v in sims))
    assert proto_regularizer(z, mean, tau).item() == pytest.approx(sum(v - lse for v in sims) / (4 * math.log(4)))


# ------------------------------------------------------------------------------ stateful methods
TINY = ["train.max_iters=4", "train.eval_every=0", "train.checkpoint_every=2", "train.log_every=1"]
VARIANTS = {"pipa": ["uda.method=pipa", "uda.method_args={max_samples: 40, max_views: 4}"],
            "sepico": ["uda.method=sepico", "uda.method_args={start_iter: 1, proj_dim: 16}"]}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_stateful_method_trains_checkpoints_and_resumes_bit_for_bit(variant, tmp_path):
    cfg = load_config("miniscapes_tiny", TINY + VARIANTS[variant])
    straight = Trainer(cfg, tmp_path / "a", progress=False)
    state = straight.method_state
    method_ids = {id(p) for p in state.parameters() if p.requires_grad}
    groups = [g for g in straight.optimizer.param_groups if {id(p) for p in g["params"]} <= method_ids]
    assert groups and all(g["lr_mult"] == cfg.optim.head_lr_mult for g in groups)
    assert sum(len(g["params"]) for g in groups) == len(method_ids)
    assert "method" in straight.lr_group_names
    before = {k: v.clone() for k, v in state.state_dict().items()}
    straight.fit()
    after = state.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in after if "hidden.conv.weight" in k)  # the head trained
    terms = {"pipa"} if variant == "pipa" else {"sepico_src", "sepico_tgt"}
    logged = [r for r in straight.history if "loss" in r]
    assert terms <= set(logged[-1])
    if variant == "sepico":  # the statistics grew from the teacher's source embedding
        assert after["stats.count"].sum() > 0 and after["stats.mean"].abs().sum() > 0

    interrupted = Trainer(cfg, tmp_path / "b", progress=False)
    interrupted.fit(max_iters=2)
    ckpt = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)
    assert set(ckpt["method"]) == set(interrupted.method_state.state_dict())
    del interrupted
    resumed = Trainer.resume(tmp_path / "b", progress=False)
    resumed.fit()
    for name, a, b in [("student", straight.student, resumed.student),
                       ("method", straight.method_state, resumed.method_state)]:
        for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), (name, k)
    assert [r["loss"] for r in logged] == [r["loss"] for r in resumed.history if "loss" in r]


def test_a_checkpoint_without_the_methods_state_is_refused(tmp_path):
    cfg = load_config("miniscapes_tiny", TINY + VARIANTS["pipa"])
    trainer = Trainer(cfg, progress=False)
    state = trainer.state_dict()
    state["method"] = None
    with pytest.raises(ConfigError, match="state of method 'pipa'.*no method state"):
        Trainer(cfg, progress=False).load_state_dict(state, where="old.pt")


def test_the_variants_refuse_hrda():
    for name in VARIANTS:
        cfg = load_config("miniscapes_tiny", [f"uda.method={name}", "model.hrda.enabled=true"])
        with pytest.raises(ConfigError, match=f"uda.method={name}"):
            Trainer(cfg, progress=False)
