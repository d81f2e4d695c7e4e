"""Formula-driven pretraining: fractal categories, their renderer, the pretraining command and the
shipped stand-in encoder with its provenance record."""
from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from cluda_kit.data.fractals import chaos_game, fill_ratio, ifs_categories, render_fractals
from cluda_kit.engine.pretrain import PretrainConfig, pretrain_encoder, save_encoder
from cluda_kit.models.segmentor import build_segmentor
from cluda_kit.models.weights import KIT_WEIGHTS, kit_weights_path, load_pretrained


def _sierpinski() -> tuple[torch.Tensor, torch.Tensor]:
    """The Sierpinski triangle: three maps x -> x/2 + corner/2 with corners (0,0), (1,0), (0,1)."""
    maps = [[0.5, 0, 0, 0.5, 0.0, 0.0], [0.5, 0, 0, 0.5, 0.5, 0.0], [0.5, 0, 0, 0.5, 0.0, 0.5]]
    return torch.tensor([maps]), torch.full((1, 3), 1 / 3)


def test_chaos_game_stays_on_the_sierpinski_attractor():
    params, probs = _sierpinski()
    pts = chaos_game(params, probs, chains=16, steps=60, burn_in=20,
                     generator=torch.Generator().manual_seed(0))
    assert pts.shape == (1, 16 * 40, 2)
    x, y = pts[0].unbind(-1)
    # after 20 halvings every point is within 2^-20 of the triangle x, y >= 0, x + y <= 1
    assert (x > -1e-5).all() and (y > -1e-5).all() and (x + y < 1 + 1e-5).all()
    # and of the attractor itself: no point in the removed middle triangle (x, y < 1/2 < x + y)
    middle = (x < 0.5 - 1e-3) & (y < 0.5 - 1e-3) & (x + y > 0.5 + 1e-3)
    assert not middle.any()


def test_fill_ratio_tells_a_line_from_a_triangle():
    params, probs = _sierpinski()
    line = torch.tensor([[[0.5, 0, 0, 0.0, 0.0, 0.0], [0.5, 0, 0, 0.0, 0.5, 0.0]]])  # y -> 0
    g = torch.Generator().manual_seed(0)
    tri = float(fill_ratio(params, probs, generator=g))
    flat = float(fill_ratio(line, torch.full((1, 2), 0.5), generator=g))
    assert flat <= 1 / 32 + 1e-6  # one row of the 32 x 32 raster
    assert 0.15 < tri < 0.5  # (3/4)^log2(32) = 0.24 of the raster at this resolution


def test_ifs_categories_are_deterministic_contractive_and_filled():
    params, probs = ifs_categories(12, seed=3)
    again, _ = ifs_categories(12, seed=3)
    other, _ = ifs_categories(12, seed=4)
    assert params.shape == (12, 4, 6) and probs.shape == (12, 4)
    assert torch.equal(params, again) and not torch.equal(params, other)
    assert torch.allclose(probs.sum(1), torch.ones(12))
    used = probs > 0
    assert ((used.sum(1) >= 2) & (used.sum(1) <= 4)).all()
    lin = params[..., :4].reshape(12, 4, 2, 2)
    assert (torch.linalg.matrix_norm(lin, ord=2)[used] < 1).all()
    assert (params[~used] == 0).all()
    assert (fill_ratio(params, probs, generator=torch.Generator().manual_seed(9)) >= 0.1).all()


def test_render_fractals_draws_the_shape_over_the_background():
    params, probs = ifs_categories(5, seed=0)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    g = torch.Generator().manual_seed(1)
    images = render_fractals(params, probs, labels, 48, generator=g)
    assert images.shape == (6, 3, 48, 48) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    # two instances of a category differ (pose, colours), and each image shows a shape: its
    # pixels are not all the background's colour
    assert not torch.allclose(images[0], images[5])
    spread = images.flatten(2).std(2).mean(1)
    assert (spread > 0.02).all()
    again = render_fractals(params, probs, labels, 48, generator=torch.Generator().manual_seed(1))
    assert torch.equal(images, again)


@pytest.mark.slow
def test_pretrain_learns_and_writes_weights_with_provenance(tmp_path):
    cfg = PretrainConfig(num_classes=4, iters=150, batch_size=32, size=48, lr=1e-3, warmup_iters=10,
                         eval_per_class=25, seed=0)
    encoder, record = pretrain_encoder(cfg, progress=False)
    # 4 categories: chance is 25 %; 150 small steps reached 80 % here (a random encoder: ~25 %)
    assert record["heldout_top1_accuracy"] > 0.5
    assert record["chance_accuracy"] == 0.25
    out = save_encoder(encoder, tmp_path / "enc.pt", record, command="cluda-kit pretrain --iters 60")
    data = (tmp_path / "enc.pt").read_bytes()
    meta = json.loads((tmp_path / "enc.pt.json").read_text())
    assert meta == out
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    for key in ("command", "torch", "train_wall_s", "heldout_top1_accuracy", "config"):
        assert key in meta
    sd = torch.load(tmp_path / "enc.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in sd.values())
    assert "patch_embed1.proj.weight" in sd  # SegFormer's mit_b*.pth layout

    # it loads into the demo segmentor's encoder like a SegFormer file
    from cluda_kit.config import load_config

    model = build_segmentor(load_config("miniscapes_tiny", ["model.pretrained="]).model)
    report = load_pretrained(model, tmp_path / "enc.pt")
    assert report.target == "encoder" and report.loaded == len(sd)
    w = model.encoder.patch_embed1.proj.weight
    assert w.dtype == torch.float32 and torch.equal(w, sd["patch_embed1.proj.weight"].float())


def test_shipped_encoder_matches_its_record():
    path = kit_weights_path("kit:mit_nano_fractal")
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert path.parent == KIT_WEIGHTS
    assert hashlib.sha256(path.read_bytes()).hexdigest() == meta["sha256"]
    assert path.stat().st_size <= 10 * 2**20
    assert meta["heldout_top1_accuracy"] > 5 * meta["chance_accuracy"]
    assert meta["command"].startswith("cluda-kit pretrain")
    assert not math.isnan(meta["train_wall_s"])


def test_unknown_kit_weights_name_lists_what_ships():
    with pytest.raises(FileNotFoundError, match="mit_nano_fractal"):
        kit_weights_path("kit:nope")


def test_demo_presets_start_from_the_shipped_encoder_and_fd_uses_it(tmp_path):
    """The miniscapes presets load kit:mit_nano_fractal into the student's encoder, and the
    feature distance's frozen reference network holds the same weights (as the paper's ImageNet
    encoder), not a random network."""
    from cluda_kit.config import load_config
    from cluda_kit.engine.trainer import Trainer

    cfg = load_config("miniscapes_tiny")
    assert cfg.model.pretrained == "kit:mit_nano_fractal"
    for preset in ("miniscapes_source_only", "miniscapes_daformer", "miniscapes_cluda", "miniscapes_oracle"):
        assert load_config(preset).model.pretrained == "kit:mit_nano_fractal", preset
    shipped = torch.load(kit_weights_path("mit_nano_fractal"), weights_only=True)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert trainer.imnet is not None
    student = trainer.student.encoder.state_dict()
    reference = trainer.imnet.state_dict()
    for key, value in shipped.items():
        assert torch.equal(student[key], value.float()), key
        assert torch.equal(reference[key], value.float()), key
    assert not any(p.requires_grad for p in trainer.imnet.parameters())
