"""``train.overlap``: the teacher's pass and the source backward on a second CPU thread give the
same training step, bit for bit, as the sequential step, for every self-training branch; the work
really runs on that thread; errors surface; nothing is left running after a step."""
from __future__ import annotations

import threading

import pytest
import torch

from cluda_kit.config import load_config
from cluda_kit.engine.overlap import Overlap, backward_beside, overlap_unavailable
from cluda_kit.engine.trainer import Trainer

from test_step_golden import CASES

STEPS = 3
SELF_TRAINING = ["dacs", "daformer", "cluda", "cluda_release_quirks", "hrda_cluda", "mic", "hrda_mic"]


def _trainer(overrides: list[str], overlap: bool) -> Trainer:
    cfg = load_config("miniscapes_tiny", [*overrides, "train.seed=0", "optim.warmup_iters=0",
                                          "uda.pseudo_threshold=0.06", f"train.overlap={str(overlap).lower()}"])
    return Trainer(cfg, progress=False)


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"student.{k}": v for k, v in trainer.student.state_dict().items()}
    out.update({f"teacher.{k}": v for k, v in trainer.teacher.model.state_dict().items()})
    out.update({f"grad.{n}": p.grad for n, p in trainer.student.named_parameters() if p.grad is not None})
    return out


@pytest.mark.parametrize("case", SELF_TRAINING)
def test_overlap_equals_the_sequential_step_bit_for_bit(case):
    runs = {}
    for overlap in (False, True):
        trainer = _trainer(CASES[case], overlap)
        assert trainer.overlap.enabled == overlap
        logs = [{k: float(v) for k, v in trainer.step().values.items()} for _ in range(STEPS)]
        runs[overlap] = logs, _state(trainer), trainer.generator.get_state(), torch.get_rng_state()
    (logs0, state0, gen0, rng0), (logs1, state1, gen1, rng1) = runs[False], runs[True]
    assert logs0 == logs1
    assert logs0[-1]["q"] > 0  # the pseudo-labels were used
    assert state0.keys() == state1.keys()
    differ = [k for k in state0 if not torch.equal(state0[k], state1[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"
    assert torch.equal(gen0, gen1) and torch.equal(rng0, rng1)  # the same random draws


def test_entropy_method_three_passes_overlap_equal():
    cfg = lambda o: load_config("miniscapes_entropy", [  # noqa: E731
        "data.source.size=[64,128]", "data.target.size=[64,128]", "data.crop_size=[64,128]",
        "data.source.length=8", "data.target.length=8", "data.rcs.min_pixels=20",
        "loss.contrastive.grid=[8,16]", "train.threads=1", f"train.overlap={o}"])
    states = []
    for o in ("false", "true"):
        trainer = Trainer(cfg(o), progress=False)
        for _ in range(2):
            trainer.step()
        states.append(_state(trainer))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_the_teacher_pass_the_frozen_encoder_and_the_source_backward_run_on_the_second_thread():
    where: dict[str, list[str]] = {"teacher": [], "backward": [], "imnet": []}
    for overlap in (False, True):
        trainer = _trainer(CASES["cluda"], overlap)
        trainer.teacher.model.register_forward_hook(
            lambda *_: where["teacher"].append(threading.current_thread().name))
        trainer.imnet.register_forward_hook(lambda *_: where["imnet"].append(threading.current_thread().name))
        head = next(p for p in trainer.student.parameters() if p.requires_grad)
        head.register_hook(lambda g: where["backward"].append(threading.current_thread().name) or g)
        threads_seen = []
        trainer.overlap.submit(lambda: threads_seen.append(torch.get_num_threads()))()
        trainer.step()
        main = threading.current_thread().name
        if overlap:
            assert where["teacher"] == where["imnet"] == ["cluda-overlap_0"]
            assert where["backward"] == ["cluda-overlap_0", main]  # source pass, then mixed pass
            assert threads_seen == [1]  # train.threads holds on the second thread too
        else:
            assert where["teacher"] == where["imnet"] == [main] and where["backward"] == [main, main]
        where = {"teacher": [], "backward": [], "imnet": []}


def test_overlap_runs_tasks_in_order_reraises_errors_and_drains():
    ov = Overlap(enabled=True)
    order = []
    a = ov.submit(lambda: order.append("a") or 1)
    b = ov.submit(lambda: 1 / 0)
    c = ov.submit(lambda: order.append("c") or 3)
    assert a() == 1
    with pytest.raises(ZeroDivisionError):
        b()
    with pytest.raises(ZeroDivisionError):  # drain waits for all and re-raises the first error
        ov.drain()
    assert order == ["a", "c"] and c() == 3
    ov.drain()  # nothing pending any more
    ov.close()
    assert not ov.enabled


def test_disabled_overlap_defers_work_to_the_first_request():
    ov = Overlap(enabled=False)
    calls = []
    get = ov.submit(lambda x: calls.append(x) or x * 2, 21)
    assert calls == []  # nothing ran yet: the sequential order is kept
    assert get() == 42 and get() == 42 and calls == [21]


def test_an_error_in_the_backward_thread_surfaces_from_the_step(monkeypatch):
    trainer = _trainer(CASES["daformer"], True)
    import cluda_kit.engine.trainer as T
    calls = []

    def failing(loss):
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            raise RuntimeError("backward failed")
        loss.backward()

    monkeypatch.setattr(T, "_backward", failing)
    with pytest.raises(RuntimeError, match="backward failed"):
        trainer.step()
    # the mixed pass's backward (backward_beside, into buffers of its own) never called
    # _backward, and the error surfaced when it waited for the source backward
    assert calls == ["cluda-overlap_0"]
    assert trainer.overlap._pending == []


def test_where_overlap_is_unavailable():
    assert overlap_unavailable("cpu", False, False) is None
    assert "CPU only" in overlap_unavailable("cuda", False, False)
    assert "DDP" in overlap_unavailable("cpu", True, False)
    assert "compile" in overlap_unavailable("cpu", False, True)


def test_the_mixed_backward_runs_while_the_source_backward_still_runs():
    """The source backward on the second thread waits inside a gradient hook until the mixed
    backward on the main thread has reached the same parameter; a mixed backward that waited for
    the source backward to end first would leave it waiting until the timeout."""
    trainer = _trainer(CASES["cluda"], True)
    reached, in_time = threading.Event(), []
    main = threading.current_thread().name

    def hook(g):
        if threading.current_thread().name == main:
            reached.set()
        else:
            in_time.append(reached.wait(timeout=20))
        return g

    head = next(p for p in trainer.student.parameters() if p.requires_grad)
    head.register_hook(hook)
    trainer.step()
    assert in_time == [True]


def test_backward_beside_equals_sequential_accumulation():
    """backward_beside against plain backward calls in pass order (a loop reference): three passes,
    a parameter only the first pass reaches, one only the last pass reaches, one none reaches (its
    stale .grad stays), and a channels-last convolution weight (its layout is kept)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1).to(memory_format=torch.channels_last)
    first_only, last_only, unused = (torch.randn(5, requires_grad=True) for _ in range(3))
    leaves = [*conv.parameters(), first_only, last_only, unused]
    x = [torch.randn(2, 3, 6, 6).contiguous(memory_format=torch.channels_last) for _ in range(3)]

    def losses():
        return [conv(x[0]).square().mean() + first_only.exp().sum(),
                conv(x[1]).sin().sum(),
                conv(x[2]).tanh().mean() * 3 + (last_only * 2).square().sum()]

    def fresh():
        for p in leaves:
            p.grad = None
        unused.grad = torch.full_like(unused, 7.0)

    fresh()
    for loss in losses():
        loss.backward()
    reference = [p.grad.clone() for p in leaves]
    fresh()
    l0, l1, l2 = losses()
    l0.backward()
    order = []
    backward_beside(l2, leaves, lambda: order.append("previous") or l1.backward())
    assert order == ["previous"]
    for p, ref in zip(leaves, reference):
        assert torch.equal(p.grad, ref)
    assert conv.weight.grad.stride() == conv.weight.stride()
    assert torch.equal(unused.grad, torch.full_like(unused, 7.0))
