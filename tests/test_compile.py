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
        cfg = load_config("miniscapes_hrda_cluda", SHRINK + [f"train.compile={str(compiled).lower()}"])
        trainer = Trainer(cfg, progress=False)
        assert (getattr(trainer.student.encoder, "_compiled_call_impl", None) is not None) == compiled
        losses[compiled] = [trainer.step().values["loss"] for _ in range(3)]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-5)
