"""The training step has no host-device synchronisation (issue #7): checked on the CPU with
HostSyncAudit, which records the operations that would synchronise a CUDA host."""
from __future__ import annotations

import pytest
import torch

from cluda_kit.config import load_config
from cluda_kit.engine.sync_audit import HostSyncAudit
from cluda_kit.engine.trainer import Trainer

SHRINK = ["data.source.size=[64, 128]", "data.source.length=6", "data.target.size=[64, 128]",
          "data.target.length=6", "data.val.size=[64, 128]", "data.val.length=1",
          "data.crop_size=[64, 128]", "data.rcs.min_pixels=20", "model.embed_dim=16",
          "model.fused_dim=16", "loss.contrastive.grid=[16, 32]", "train.max_iters=4",
          "train.eval_every=0", "train.checkpoint_every=0", "train.log_every=1",
          "train.figure_every=0", "train.threads=1"]
HRDA = ["model.hrda.detail_crop=[32, 64]", "model.hrda.inference_stride=[16, 32]",
        "model.hrda.entropy_window_after=0"]  # the audited step (iteration 1) uses the max-entropy window

# Reads of host tensors, which the CPU audit cannot tell from device tensors. Each is by design:
#   strong_augment       the on/off draws come from the CPU generator (a Python float per draw)
#   color_jitter         the per-image order of the four operations is grouped on the CPU
#   random_window        HRDA's random detail window: two integers from the CPU generator
#   downscale_label_ratio  the label-range check runs on the CPU only
HOST_SIDE = {("_local_scalar_dense", "strong_augment"), ("nonzero", "color_jitter"),
             ("_local_scalar_dense", "<genexpr>"),  # random_window's int(v) for its two draws
             ("_local_scalar_dense", "downscale_label_ratio")}
# The one real synchronisation left, HRDA only and only after entropy_window_after: the corner
# of the max-entropy detail window is needed on the host to crop.
KNOWN = {("_local_scalar_dense", "max_entropy_window")}


def _fn(where: str) -> str:
    return where.rsplit("(", 1)[-1].rstrip(")")


class _Paused:
    """The data stream: host-side work (decoding, cropping, sampling) is not audited."""

    def __init__(self, it, audit):
        self.it, self.audit = it, audit

    def __iter__(self):
        return self

    def __next__(self):
        with self.audit.paused():
            return next(self.it)


def test_audit_records_syncing_operations_only():
    x = torch.arange(12.0).reshape(3, 4)
    with HostSyncAudit() as audit:
        x.sum().item()
        x[x > 3]
        torch.unique(x)
        (x > 5).nonzero()
        x.masked_fill(x > 3, 0.0).argsort(dim=1)  # static shapes: not recorded
        torch.zeros(10).scatter_add_(0, torch.tensor([1, 1, 2]), torch.ones(3))
        with audit.paused():
            x.max().item()
    assert [op for op, _ in audit.events] == ["_local_scalar_dense", "index", "_unique2", "nonzero"]
    assert audit.events[0][1] == "<outside cluda_kit>"
    assert "_unique2" in audit.report()


@pytest.mark.parametrize("preset,extra", [
    ("miniscapes_source_only", []), ("miniscapes_dacs", []), ("miniscapes_daformer", []),
    ("miniscapes_cluda", []), ("miniscapes_hrda_cluda", HRDA),
])
def test_training_step_has_no_host_sync(preset, extra):
    trainer = Trainer(load_config(preset, SHRINK + extra), progress=False)
    trainer.step()  # first step: EMA copy, lazy state
    audit = HostSyncAudit()
    trainer.source = _Paused(trainer.source, audit)
    if trainer.self_training:
        trainer.target = _Paused(trainer.target, audit)
    step = trainer.optimizer.step

    def optimizer_step(*a, **k):  # AdamW keeps its step counters on the host (capturable=False)
        with audit.paused():
            return step(*a, **k)

    trainer.optimizer.step = optimizer_step
    with audit:
        result = trainer.step()
    assert set(result.values) >= {"loss", "ce_src"}
    found = {(op, _fn(where)) for op, where in audit.events}
    assert found - HOST_SIDE - KNOWN == set(), audit.report()
    if preset == "miniscapes_hrda_cluda":
        # one synchronisation for the windows: their corners (one per image) are copied to the host
        # once (CUDA: one copy) and read with int(), which the CPU audit sees as scalar reads
        lines = {w for _, w in audit.events if _fn(w) == "max_entropy_window"}
        assert len(lines) == 1, audit.report()
