"""The method API (cluda_kit.uda.methods): which method a config trains, the registry and the
import-path form, a method's own settings (uda.method_args), a method written outside the kit
trained through Trainer(cfg, method=...), the example method of docs/extending.md, and the
layering rule that the engine does not import analysis."""
from __future__ import annotations

import copy
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cluda_kit.config import ConfigError, dump_config, load_config, replace
from cluda_kit.engine.trainer import Trainer
from cluda_kit.uda import methods
from cluda_kit.uda.methods import (
    CLUDA, DACS, DAFormer, HRDASegmentation, LossGroup, Method, PlainSegmentation, SourceOnly,
    build_method, method_name, register_method,
)
from cluda_kit.uda.methods.entropy import TargetEntropy, entropy_map

ROOT = Path(__file__).resolve().parents[1]
DETERMINISTIC = ["model.dropout=0.0", "model.drop_path_rate=0.0", "train.max_iters=2"]


@pytest.mark.parametrize("preset, name, cls, passes", [
    ("miniscapes_source_only", "source_only", SourceOnly, 1),
    ("miniscapes_oracle", "source_only", SourceOnly, 1),
    ("miniscapes_dacs", "dacs", DACS, 2),
    ("miniscapes_daformer", "daformer", DAFormer, 2),
    ("miniscapes_cluda", "cluda", CLUDA, 2),
    ("miniscapes_hrda_cluda", "cluda", CLUDA, 2),
    ("gta2cs_daformer_mic", "daformer", DAFormer, 2),
    ("miniscapes_entropy", "cluda_kit.uda.methods.entropy:TargetEntropy", TargetEntropy, 3),
])
def test_each_preset_trains_the_method_its_losses_describe(preset, name, cls, passes):
    cfg = load_config(preset)
    assert method_name(cfg) == name
    m = build_method(cfg)
    assert type(m) is cls and m.passes == passes
    assert m.self_training == (cfg.uda.mode == "self_training")
    assert isinstance(m.seg, HRDASegmentation if cfg.model.hrda.enabled else PlainSegmentation)
    assert (getattr(m, "mic", None) is not None) == cfg.uda.mic.enabled


def test_source_only_mode_runs_a_methods_source_terms_without_a_teacher():
    m = build_method(load_config("miniscapes_cluda", ["uda.mode=source_only"]))
    assert type(m) is CLUDA and not m.self_training and m.passes == 1


def test_unknown_or_unimportable_methods_name_the_problem():
    base = load_config("miniscapes_tiny")
    with pytest.raises(ConfigError, match=r"uda.method: unknown method 'nosuch'.*known: cluda, dacs"):
        build_method(replace(base, ["uda.method=nosuch"]))
    with pytest.raises(ConfigError, match=r"cannot import module 'no_such_pkg.mod'"):
        build_method(replace(base, ["uda.method=no_such_pkg.mod:X"]))
    with pytest.raises(ConfigError, match=r"has no Method subclass named 'entropy_map'"):
        build_method(replace(base, ["uda.method=cluda_kit.uda.methods.entropy:entropy_map"]))
    with pytest.raises(ConfigError, match=r"uda.mic.enabled: .* uda.mode=source_only has no teacher"):
        build_method(replace(base, ["uda.mode=source_only", "uda.mic.enabled=true"]))


def test_register_method_gives_a_short_name_and_refuses_a_taken_one(monkeypatch):
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))

    @register_method("dacs_plus")
    class DACSPlus(DACS):
        name = "dacs_plus"

    assert type(build_method(load_config("miniscapes_tiny", ["uda.method=dacs_plus"]))) is DACSPlus
    with pytest.raises(ValueError, match="a method named 'dacs' exists"):
        register_method("dacs")(DACSPlus)


def test_method_args_defaults_overrides_and_errors():
    cfg = load_config("miniscapes_entropy")
    assert Method.args(cfg, weight=0.5).weight == 0.001  # the preset's value over the default
    assert Method.args(load_config("miniscapes_tiny"), weight=0.5).weight == 0.5
    got = Method.args(replace(cfg, ["uda.method_args.weight=2"]), weight=0.5)
    assert got.weight == 2.0 and isinstance(got.weight, float)
    with pytest.raises(ConfigError, match=r"uda.method_args.wieght: not a setting of method .*\(its settings: weight\)"):
        TargetEntropy(replace(cfg, ["uda.method_args.wieght=0.1"]))
    with pytest.raises(ConfigError, match=r"uda.method_args.weight: expected float, got 'high'"):
        TargetEntropy(replace(cfg, ["uda.method_args.weight=high"]))


def test_method_args_config_values_are_scalars_copied_not_shared():
    cfg = load_config("miniscapes_entropy")
    changed = replace(cfg, ["uda.method_args.weight=0.5", "uda.method_args.extra=true"])
    assert cfg.uda.method_args == {"weight": 0.001}  # the original is untouched
    assert changed.uda.method_args == {"weight": 0.5, "extra": True}
    assert "method_args:\n    weight: 0.001" in dump_config(cfg)
    with pytest.raises(ConfigError, match=r"uda.method_args.w: expected a number, true/false or a string"):
        replace(cfg, ["uda.method_args.w=[1, 2]"])


# ------------------------------------------------------------------------------ the example method
def test_entropy_map_matches_a_loop_reference_and_its_bounds():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64)
    got = entropy_map(logits)
    for b in range(2):
        for i in range(3):
            for j in range(4):
                p = [math.exp(v) for v in logits[b, :, i, j].tolist()]
                p = [v / sum(p) for v in p]
                ref = -sum(v * math.log(v) for v in p) / math.log(5)
                assert got[b, i, j].item() == pytest.approx(ref, abs=1e-6)
    assert entropy_map(torch.zeros(1, 19, 2, 2)).allclose(torch.ones(1, 2, 2))
    sure = torch.full((1, 19, 2, 2), -100.0)
    sure[:, 3] = 100.0
    assert entropy_map(sure).abs().max() < 1e-6


def test_target_entropy_adds_a_third_pass_on_the_same_target_batch():
    cfg = load_config("miniscapes_tiny", DETERMINISTIC + [
        "uda.method=cluda_kit.uda.methods.entropy:TargetEntropy", "uda.method_args.weight=0.5"])
    trainer = Trainer(cfg, progress=False)
    fetched = []
    real_batch = trainer._batch

    def batch(stream):
        b = real_batch(stream)
        if stream is trainer.target:
            fetched.append(b)
        return b

    trainer._batch = batch
    before = copy.deepcopy(trainer.student).train()
    values = trainer.step().values
    assert len(fetched) == 1  # the mixed and the target pass share one target batch
    assert set(values) >= {"ce_src", "fd", "ce_mix", "ent", "q"}
    assert "cl_src" not in values  # the method decides its terms, not the loss switches
    with torch.no_grad():
        expected = 0.5 * entropy_map(trainer.context().forward(before, fetched[0]["image"]).logits).mean()
    assert values["ent"] == pytest.approx(float(expected), rel=1e-4)
    parts = sum(values[k] for k in ("ce_src", "fd", "ce_mix", "ent"))
    assert values["loss"] == pytest.approx(parts, rel=1e-6)
    trainer.step()
    assert len(fetched) == 2


# --------------------------------------------------------------------- a method outside the kit
class SmoothedSource(Method):
    """Source CE with label smoothing: a method defined in a test file, passed as an object."""

    name = "smoothed_source"

    def __init__(self, cfg, smoothing=0.1, extra_groups=0):
        self.smoothing, self.extra_groups = smoothing, extra_groups

    def step(self, ctx, source, target):
        out = ctx.forward(ctx.train_net, source["image"])
        logits = torch.nn.functional.interpolate(out.logits, size=source["label"].shape[-2:],
                                                 mode="bilinear", align_corners=False)
        ce = torch.nn.functional.cross_entropy(logits.float(), source["label"], ignore_index=255,
                                               label_smoothing=self.smoothing)
        for _ in range(1 + self.extra_groups):
            yield LossGroup({"ce_smooth": ce}, outputs=(out,), logs={"smoothing": self.smoothing})


def test_a_method_object_of_your_own_trains_and_resumes(tmp_path):
    cfg = load_config("miniscapes_tiny", ["uda.mode=source_only", "train.max_iters=2", "train.eval_every=0"])
    trainer = Trainer(cfg, tmp_path / "run", method=SmoothedSource(cfg), progress=False)
    assert trainer.teacher is None and trainer.target is None
    first = [p.detach().clone() for p in trainer.student.parameters()]
    summary = trainer.fit()
    assert summary["iter"] == 2 and math.isfinite(summary["miou"])
    logged = [r for r in trainer.history if "ce_smooth" in r]
    assert len(logged) == 2 and all(r["smoothing"] == 0.1 for r in logged)  # a float in logs
    assert any(not torch.equal(a, b) for a, b in zip(first, trainer.student.parameters()))
    resumed = Trainer.resume(tmp_path / "run", ["train.max_iters=3"], method=SmoothedSource(cfg),
                             progress=False)
    assert resumed.iter == 2 and resumed.fit()["iter"] == 3


def test_yielding_more_groups_than_declared_passes_is_an_error():
    cfg = load_config("miniscapes_tiny", ["uda.mode=source_only"])
    trainer = Trainer(cfg, method=SmoothedSource(cfg, extra_groups=1), progress=False)
    with pytest.raises(RuntimeError, match=r"SmoothedSource.step yielded more loss groups than its passes=1"):
        trainer.step()


# ------------------------------------------------------------------------------------ layering
def test_engine_imports_no_analysis():
    code = ("import sys, cluda_kit.engine.trainer, cluda_kit.uda.methods; "
            "bad = sorted(m for m in sys.modules if m.startswith('cluda_kit.analysis')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_debug_figures_are_a_callback_the_caller_attaches(tmp_path):
    from cluda_kit.analysis.callbacks import DebugFigures

    cfg = load_config("miniscapes_tiny", ["train.max_iters=3", "train.eval_every=0", "train.checkpoint_every=0"])
    figs = DebugFigures(every=2)
    Trainer(cfg, tmp_path / "run", callbacks=[figs], progress=False).fit()
    assert [p.name for p in figs.written] == ["iter_000002.png"]
    assert figs.written[0].stat().st_size > 1000
    # the engine alone draws nothing, whatever train.figure_every says
    Trainer(replace(cfg, ["train.figure_every=1"]), tmp_path / "bare", progress=False).fit()
    assert not (tmp_path / "bare" / "figures").exists()


def test_the_guides_code_is_the_example_methods_code():
    guide = (ROOT / "docs" / "extending.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", guide, flags=re.S)
    source = (ROOT / "cluda_kit" / "uda" / "methods" / "entropy.py").read_text()
    assert source in blocks, "docs/extending.md must show cluda_kit/uda/methods/entropy.py verbatim"
    preset = (ROOT / "cluda_kit" / "configs" / "miniscapes_entropy.yaml").read_text()
    assert preset in re.findall(r"```yaml\n(.*?)```", guide, flags=re.S)
