"""DDP on the CPU (gloo, 2 processes): one step on 2 ranks x batch 1 equals one process on the joint
batch of 2; replicas (student, teacher) stay identical; evaluation is sharded and summed; and a
2-process ``torchrun -m cluda_kit train`` writes one run directory.

Why the comparison holds, and its tolerance. The samplers hand rank r the sample the single process
takes at batch position r (same index, same per-sample crop/flip seed). The configuration has no
coupling between samples inside a rank's batch: MiT encoder (LayerNorm) + DeepLabV2 head (no
BatchNorm), dropout and drop-path 0, no photometric augmentation, a deterministic class-based mix
mask (ClassMix draws from each rank's own generator, so it is replaced), no FD and no RCS. CE uses
``loss.ce_mean_over_all`` (a mean over all pixels: the mean of the per-rank means is the mean over
the joint batch; the default mean over *labelled* pixels differs when the ranks' labelled pixel
counts differ). The contrastive losses use ``loss.contrastive.gather_negatives`` (the loss of the
global batch on every rank). q is averaged over the ranks. DDP averages the rank gradients, so the
synchronised gradient equals the joint-batch gradient up to float32 summation order (two half-batch
sums + an all-reduce instead of one sum): we allow rtol 1e-4 / atol 1e-6 (observed: at most 4e-7
absolute for gradients up to 0.7; small entries differ more in relative terms through
cancellation, hence the absolute floor).
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from cluda_kit.config import load_config
from cluda_kit.uda.methods import dacs as dacs_module
from cluda_kit.engine.trainer import Trainer, _digest

EXACT = ["model.encoder=mit_nano", "model.decoder=deeplabv2", "model.dropout=0.0",
         "model.drop_path_rate=0.0", "data.rcs.enabled=false", "uda.fd.enabled=false",
         "uda.aug.color_jitter_p=0.0", "uda.aug.blur_p=0.0", "loss.ce_mean_over_all=true",
         "loss.contrastive.gather_negatives=true", "train.threads=1"]
SCENARIOS = {
    "source_only": EXACT + ["uda.mode=source_only"],
    "self_training": EXACT + ["uda.mode=self_training", "uda.pseudo_threshold=0.1"],  # q > 0
}


UNUSED_HEADS = ["model.hrda.enabled=true", "model.hrda.feat_weighter=true",
                "model.hrda.detail_crop=[32, 64]", "model.hrda.inference_stride=[16, 32]",
                "model.projection_dim=8", "loss.contrastive.enabled=false", "uda.fd.enabled=false",
                "data.batch_size=1"]


def _even_class_mask(labels, per_image=True, generator=None, ignore_index=255):
    """A deterministic class-based mix mask (even trainIds pasted), (B, 1, H, W) float."""
    return ((labels % 2 == 0) & (labels != ignore_index)).unsqueeze(1).float()


def _steps(trainer: Trainer, n: int = 2) -> list[dict]:
    """Run ``n`` steps; per step the gradients that reached the optimizer and the logged values.
    (The second step exercises gradients reset to None, DDP's bucket views and the no_sync
    accumulation on top of an optimizer state; its warm-up learning rate is ~1e-9, so both runs
    start it from the same weights up to rounding.)"""
    out: list[dict] = []
    real_step = trainer.optimizer.step

    def capture(*args, **kwargs):
        out[-1]["grads"] = {name: p.grad.detach().clone()
                            for name, p in trainer.student.named_parameters() if p.grad is not None}
        return real_step(*args, **kwargs)

    trainer.optimizer.step = capture
    for _ in range(n):
        out.append({})
        out[-1]["values"] = trainer.step().values
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dacs_module.class_mix_masks = _even_class_mask
    import torch.distributed as dist

    results = {}
    for name, overrides in SCENARIOS.items():
        trainer = Trainer(load_config("miniscapes_tiny", overrides + ["data.batch_size=1"]),
                          progress=False)
        init = trainer.replica_digests()
        results[name] = {"steps": _steps(trainer), "init": init,
                         "after": trainer.replica_digests()}
    # heads that no loss uses (projection head, HRDA's feat_weighter without the contrastive
    # loss) must not stall DDP's gradient reduction
    unused = Trainer(load_config("miniscapes_tiny", UNUSED_HEADS), progress=False)
    unused.step()
    unused.step()  # DDP reports an unfinished reduction at the next forward
    results["unused_heads"] = unused.replica_digests()
    # fewer val images than ranks: rank 1's shard is empty and still joins the all-reduce
    trainer.cfg = dataclasses.replace(trainer.cfg, data=dataclasses.replace(trainer.cfg.data,
                                                                            val_length=1))
    results["eval_one_image"] = trainer.evaluate(progress=False)["cm"]
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def _spawn(world: int, out: Path, timeout: float = 240.0) -> None:
    ctx = mp.start_processes(_worker, args=(world, _free_port(), str(out)), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"DDP workers did not finish within {timeout} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _spawn(2, out)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_two_ranks_match_one_process_on_the_joint_batch(scenario, ddp_results, monkeypatch):
    monkeypatch.setattr(dacs_module, "class_mix_masks", _even_class_mask)
    cfg = load_config("miniscapes_tiny", SCENARIOS[scenario] + ["data.batch_size=2"])
    singles = _steps(Trainer(cfg, progress=False))
    expected = {"ce_src", "cl_src", "loss"} | ({"ce_mix", "cl_mix", "q"}
                                                if scenario == "self_training" else set())
    for step, single in enumerate(singles):
        ranks = [r[scenario]["steps"][step] for r in ddp_results]
        # DDP hands every rank the same averaged gradient
        assert ranks[0]["grads"].keys() == ranks[1]["grads"].keys() == single["grads"].keys()
        for name, g in ranks[0]["grads"].items():
            assert torch.equal(g, ranks[1]["grads"][name]), name
            torch.testing.assert_close(g, single["grads"][name], rtol=1e-4, atol=1e-6,
                                       msg=f"step {step}: {name}")
        # the logged values are the means over the ranks: those of the joint batch
        assert expected <= set(single["values"])
        for key in expected:
            assert ranks[0]["values"][key] == ranks[1]["values"][key]
            assert ranks[0]["values"][key] == pytest.approx(single["values"][key], rel=1e-5), key


def test_replicas_start_and_stay_identical(ddp_results):
    for scenario in SCENARIOS:
        for stage in ("init", "after"):
            digests = ddp_results[0][scenario][stage]
            assert digests == ddp_results[1][scenario][stage]
            for name, per_rank in digests.items():
                assert len(per_rank) == 2 and per_rank[0] == per_rank[1], (scenario, stage, name)
    assert ddp_results[0]["unused_heads"] == ddp_results[1]["unused_heads"]
    assert len(set(ddp_results[0]["unused_heads"]["student"])) == 1
    # the step changed the student (the check compares something that moves)
    st = ddp_results[0]["self_training"]
    assert st["init"]["student"] != st["after"]["student"]
    assert "teacher" in st["after"]


def test_sharded_evaluation_with_an_empty_shard(ddp_results):
    cm0, cm1 = ddp_results[0]["eval_one_image"], ddp_results[1]["eval_one_image"]
    assert torch.equal(cm0, cm1)
    h, w = load_config("miniscapes_tiny").data.val.size
    assert int(cm0.sum()) <= h * w and int(cm0.sum()) > 0.5 * h * w  # one image, not two


def test_torchrun_two_processes_end_to_end(tmp_path):
    run = tmp_path / "run"
    port = _free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "cluda_kit", "train",
           "miniscapes_tiny", "--out", str(run), "--set", "train.max_iters=2",
           "--set", "train.eval_every=2", "--set", "train.checkpoint_every=1",
           "--set", "loss.contrastive.gather_negatives=true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("run directory:") == 1  # rank 0 prints, rank 1 does not
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "loss" in r] == [1, 2]  # written once, by rank 0
    assert [r["iter"] for r in records if "miou" in r] == [2]
    assert len(list((run / "tb").glob("events.*"))) == 1
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)  # kit checkpoints need no unpickling
    assert ckpt["iter"] == 2 and ckpt["world_size"] == 2 and len(ckpt["rng_per_rank"]) == 2
    assert ckpt["rng_per_rank"][0]["uda"].tolist() != ckpt["rng_per_rank"][1]["uda"].tolist()
    for name in ("student", "teacher"):
        per_rank = ckpt["replicas"][name]
        assert per_rank[0] == per_rank[1] == _digest(ckpt[name]), name
    # the sharded, all-reduced evaluation equals one process evaluating every val image
    summary = json.loads((run / "summary.json").read_text())
    single = Trainer.resume(run, read_only=True, progress=False)
    assert 100.0 * single.evaluate(progress=False)["miou"] == pytest.approx(summary["miou"],
                                                                          abs=1e-9)


# ------------------------------------------------------------------ a method's own state under DDP
STATEFUL = EXACT + ["uda.mode=self_training", "uda.pseudo_threshold=0.1", "uda.method=sepico",
                    "uda.teacher_mode=eval", "uda.method_args={start_iter: 1, proj_dim: 8}"]
# teacher_mode=eval: the teacher's embedding (its head's BatchNorm on running statistics) is a
# per-image function, so the class statistics of 2 ranks x 1 image can equal those of 1 x 2


def _stateful_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dacs_module.class_mix_masks = _even_class_mask
    import torch.distributed as dist

    trainer = Trainer(load_config("miniscapes_tiny", STATEFUL + ["data.batch_size=1"]), progress=False)
    trainer.step()
    trainer.step()
    result = {"digests": trainer.replica_digests(),
              "stats": {k: v.clone() for k, v in trainer.method.stats.state_dict().items()},
              "head_grads": [p.grad.clone() for p in trainer.method.head.parameters()]}
    torch.save(result, Path(out) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_a_methods_state_stays_equal_across_ranks_and_equals_the_joint_batch(tmp_path, monkeypatch):
    ctx = mp.start_processes(_stateful_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + 240
    try:
        while not ctx.join(timeout=1.0):
            assert time.monotonic() < deadline, "DDP workers did not finish in 240 s"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    # the head's gradients are averaged, the statistics updated from the gathered global batch
    for a, b in zip(ranks[0]["head_grads"], ranks[1]["head_grads"]):
        assert torch.equal(a, b)
    assert len(set(ranks[0]["digests"]["method"])) == 1
    monkeypatch.setattr(dacs_module, "class_mix_masks", _even_class_mask)
    single = Trainer(load_config("miniscapes_tiny", STATEFUL + ["data.batch_size=2"]), progress=False)
    single.step()
    single.step()
    assert single.method.stats.count.sum() > 0
    for key, value in single.method.stats.state_dict().items():
        assert torch.equal(ranks[0]["stats"][key], ranks[1]["stats"][key]), key
        torch.testing.assert_close(ranks[0]["stats"][key], value, rtol=1e-4, atol=1e-6, msg=key)
