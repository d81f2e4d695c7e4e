"""``train.compile``: the student's encoder under torch.compile (inductor on the CPU here) trains
the HRDA + CLUDA step to the eager step's losses.

HRDA feeds the encoder two input layouts (the context batch and a strided detail crop); with
dynamic shapes inductor once failed on them (``InductorError: cannot determine truth value of
Relational``), so the encoder is compiled with ``dynamic=False``: one graph per layout."""
from __future__ import annotations

import pytest
import torch

from cluda_kit.config import load_config
from cluda_kit.engine.trainer import Trainer
from test_hrda import SHRINK


@pytest.mark.slow
def test_compiled_encoder_matches_eager_hrda_cluda():
    losses = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        cfg = load_config("miniscapes_hrda_cluda", SHRINK + [f"train.compile={str(compiled).lower()}",
                                                     "train.compile_scope=encoder"])
        trainer = Trainer(cfg, progress=False)
        assert (getattr(trainer.student.encoder, "_compiled_call_impl", None) is not None) == compiled
        losses[compiled] = [trainer.step().values["loss"] for _ in range(3)]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-5)


TINY = ["train.max_iters=3", "train.eval_every=0", "train.checkpoint_every=0", "train.log_every=1",
        "train.threads=2", "model.embed_dim=16", "model.fused_dim=16"]


@pytest.mark.slow
def test_compiled_student_step_equals_eager_on_miniscapes_tiny():
    """train.compile (the whole segmentor, encoder + decoder) trains 3 steps of miniscapes_tiny to
    the eager steps' losses and parameters; the summary times the compiling first step apart."""
    losses, params, summaries = {}, {}, {}
    for compiled in (False, True):
        cfg = load_config("miniscapes_tiny", TINY + [f"train.compile={str(compiled).lower()}"])
        trainer = Trainer(cfg, progress=False)
        assert trainer.compiled == compiled
        assert (getattr(trainer.student, "_compiled_call_impl", None) is not None) == compiled
        losses[compiled] = [trainer.step().values["loss"] for _ in range(3)]
        params[compiled] = {k: v.detach().clone() for k, v in trainer.student.state_dict().items()}
        summaries[compiled] = Trainer(cfg, progress=False).fit(2)
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-5)
    for k, v in params[False].items():
        assert torch.allclose(params[True][k].float(), v.float(), rtol=1e-3, atol=1e-5), k
    assert summaries[True]["compiled"] and summaries[True]["first_step_s"] > 0
    assert not summaries[False]["compiled"] and summaries[False]["first_step_s"] is None
    # it/s of the compiled run leaves the compiling step out
    wall, first = summaries[True]["wall_time_s"], summaries[True]["first_step_s"]
    assert summaries[True]["iters_per_s"] == pytest.approx(1 / (wall - first))


def test_compile_falls_back_to_eager_with_a_clear_message(monkeypatch):
    import cluda_kit.engine.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "compile_unavailable", lambda device: "no C++ compiler (test)")
    cfg = load_config("miniscapes_tiny", TINY + ["train.compile=true"])
    with pytest.warns(RuntimeWarning, match=r"train.compile=true: no C\+\+ compiler \(test\); training eagerly"):
        trainer = Trainer(cfg, progress=False)
    assert not trainer.compiled and getattr(trainer.student, "_compiled_call_impl", None) is None
    assert trainer.fit(1)["compiled"] is False


def test_compile_unavailable_names_the_reason(monkeypatch):
    import shutil

    from cluda_kit.runtime import compile_unavailable

    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "C++ compiler" in compile_unavailable(torch.device("cpu"))
    assert compile_unavailable(torch.device("cuda")) is None or "Dynamo" in compile_unavailable(torch.device("cuda"))


def test_compile_scope_and_mode_reach_torch_compile(monkeypatch):
    """train.compile_scope picks the module, train.compile_mode (reduce-overhead: CUDA graphs) is
    passed to torch.compile with static shapes."""
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: calls.append((type(self).__name__, kw)))
    for scope, mode, name in (("student", "reduce-overhead", "Segmentor"), ("encoder", "default", "MixTransformer")):
        calls.clear()
        cfg = load_config("miniscapes_tiny", TINY + ["train.compile=true", f"train.compile_scope={scope}",
                                                     f"train.compile_mode={mode}"])
        trainer = Trainer(cfg, progress=False)
        assert trainer.compiled and calls == [(name, {"dynamic": False, "mode": mode})]
