from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.ops import StochasticDepth

from cluda_kit.uda.ema import EMATeacher, ema_alpha


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout2d(0.5)
        self.sd = StochasticDepth(0.5, "row")
        self.head = nn.Conv2d(4, 2, 1)
        self.scale = nn.Parameter(torch.tensor(1.5))  # a 0-dim parameter

    def forward(self, x):
        y = self.bn(self.conv(x))
        y = y + self.sd(self.drop(y))
        return self.head(y) * self.scale


def _perturb(model, gen):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen))
        for name, b in model.named_buffers():
            if b.is_floating_point():
                b.add_(torch.rand(b.shape, generator=gen))
            else:
                b.add_(3)


def test_ema_alpha_values():
    assert ema_alpha(0) == 0.0
    assert ema_alpha(1) == 0.5
    assert math.isclose(ema_alpha(10), 1 - 1 / 11)
    assert ema_alpha(10**4) == 0.999
    assert ema_alpha(998) == pytest.approx(0.998998998)
    assert ema_alpha(5, alpha=0.5) == 0.5
    with pytest.raises(ValueError):
        ema_alpha(-1)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_update_matches_manual_formula(mode):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    student = TinyNet()
    teacher = EMATeacher(student, alpha=0.9, mode=mode)
    assert all(not p.requires_grad for p in teacher.model.parameters())
    assert all(p.requires_grad for p in student.parameters())
    _perturb(student, gen)
    ref_p = {k: v.clone() for k, v in teacher.model.named_parameters()}
    ref_b = {k: v.clone() for k, v in teacher.model.named_buffers()}
    for step in range(6):
        if step > 0:
            _perturb(student, gen)
        teacher.update(student, step)
        a = min(1 - 1 / (step + 1), 0.9)
        for k, v in student.named_parameters():
            ref_p[k] = v.detach().clone() if step == 0 else a * ref_p[k] + (1 - a) * v.detach()
        if mode == "eval":
            for k, v in student.named_buffers():
                if v.is_floating_point() and step > 0:
                    ref_b[k] = a * ref_b[k] + (1 - a) * v
                else:
                    ref_b[k] = v.clone()
        for k, v in teacher.model.named_parameters():
            assert torch.allclose(v, ref_p[k], atol=1e-6), (step, k)
        for k, v in teacher.model.named_buffers():
            assert torch.allclose(v.double(), ref_b[k].double(), atol=1e-6), (mode, step, k)
    if mode == "train":  # buffers untouched by update in the reference mode
        assert teacher.model.bn.num_batches_tracked.item() == 0
        assert torch.all(teacher.model.bn.running_var == 1)
    else:
        assert teacher.model.bn.num_batches_tracked.item() == student.bn.num_batches_tracked.item() == 18


def test_deep_copy_independent_of_student():
    student = TinyNet()
    teacher = EMATeacher(student)
    with torch.no_grad():
        student.conv.weight.add_(1.0)
    assert not torch.allclose(teacher.model.conv.weight, student.conv.weight)
    teacher.update(student, 0)
    assert torch.equal(teacher.model.conv.weight, student.conv.weight)
    assert teacher.model.conv.weight.data_ptr() != student.conv.weight.data_ptr()


def _bn_batch_stats_forward(model, x):
    """Manual forward with BatchNorm on batch statistics and no dropout / stochastic depth."""
    y = model.conv(x)
    mean = y.mean(dim=(0, 2, 3), keepdim=True)
    var = y.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    y = (y - mean) / torch.sqrt(var + model.bn.eps)
    y = y * model.bn.weight.view(1, -1, 1, 1) + model.bn.bias.view(1, -1, 1, 1)
    return model.head(y + y) * model.scale


def test_train_mode_teacher_dropout_off_bn_batch_stats():
    torch.manual_seed(0)
    student = TinyNet()
    teacher = EMATeacher(student, mode="train")
    x = torch.randn(4, 3, 5, 5) * 3 + 2
    out1, out2 = teacher(x), teacher(x)
    assert torch.equal(out1, out2)  # dropout / stochastic depth are off
    with torch.no_grad():
        ref = _bn_batch_stats_forward(teacher.model, x)
    assert torch.allclose(out1, ref, atol=1e-5)
    assert teacher.model.training and teacher.model.bn.training
    assert not teacher.model.drop.training and not teacher.model.sd.training
    # BN with batch statistics: each image's output depends on the rest of the batch
    assert not torch.allclose(teacher(x[:2]), out1[:2], atol=1e-4)
    # the mode is restored at each call even if someone switched the model
    teacher.model.eval()
    assert torch.allclose(teacher(x), ref, atol=1e-5)
    # a student in train mode does apply dropout
    student.train()
    assert not torch.allclose(student(x), student(x))


def test_eval_mode_teacher_uses_running_stats():
    torch.manual_seed(0)
    student = TinyNet()
    student.train()
    for _ in range(3):
        student(torch.randn(4, 3, 5, 5) * 2 + 1)  # moves the running statistics
    teacher = EMATeacher(student, mode="eval")
    x = torch.randn(4, 3, 5, 5)
    out = teacher(x)
    assert not teacher.model.training
    student.eval()
    with torch.no_grad():
        assert torch.allclose(out, student(x), atol=1e-6)
        assert torch.allclose(teacher(x[:2]), out[:2], atol=1e-6)  # batch-independent


def test_state_dict_roundtrip_and_output_without_grad():
    torch.manual_seed(0)
    student = TinyNet()
    teacher = EMATeacher(student, alpha=0.99)
    gen = torch.Generator().manual_seed(3)
    _perturb(student, gen)
    teacher.update(student, 5)
    sd = teacher.state_dict()
    other = EMATeacher(TinyNet(), alpha=0.99)
    other.load_state_dict(sd)
    for k, v in other.state_dict().items():
        assert torch.equal(v, sd[k]), k
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    assert not teacher(x).requires_grad


def test_unwraps_data_parallel_and_checks_structure():
    student = TinyNet()
    teacher = EMATeacher(nn.DataParallel(student))
    assert isinstance(teacher.model, TinyNet)
    teacher.update(nn.DataParallel(student), 1)
    with pytest.raises(ValueError, match="does not match"):
        teacher.update(nn.Linear(2, 2), 1)
    with pytest.raises(ValueError, match="mode"):
        EMATeacher(student, mode="bogus")
