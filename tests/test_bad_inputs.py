"""Bad inputs to ``cluda-kit``, one table: each gives one line on stderr that names the key, file
or value at fault, a non-zero exit status, no traceback, and leaves earlier output as it was.

Every case runs ``cluda_kit.cli.main(argv)`` in this process, in a scratch folder holding ``RUN``
(a copy of a finished one-iteration ``miniscapes_tiny`` run), and checks after it that every file
of ``RUN`` is byte-for-byte unchanged (``metrics.jsonl`` may only grow) and that a fresh ``--out``
was not created. The table below is the human-readable form of ``CASES``.

==================================  ==================================================  ============================================
case                                input                                               the error line names
==================================  ==================================================  ============================================
unknown-preset                      ``train nosuch``                                    ``unknown preset 'nosuch'``, the presets
yaml-missing                        ``train nothing.yaml``                              ``config file not found: .../nothing.yaml``
yaml-malformed                      ``train bad.yaml`` (unclosed ``[``)                 ``bad.yaml: invalid YAML``
yaml-unknown-key                    ``data: {sorce: ...}`` in a YAML file               the file, ``'sorce'``, the keys expected
set-unknown-key                     ``--set train.max_itres=3``                         ``'max_itres'``, the keys expected
set-without-equals                  ``--set train.max_iters``                           ``expected key=value``
wrong-type-int                      ``train.max_iters=abc``                             ``train.max_iters: expected an integer``
wrong-type-number                   ``optim.lr=[1]``                                    ``optim.lr: expected a number``
wrong-type-section                  ``train=3``                                         ``train: expected a mapping``
lr-negative                         ``optim.lr=-1``                                     ``optim.lr: expected positive``
max-iters-negative                  ``train.max_iters=-2`` (0 is valid: [#]_)           ``train.max_iters: expected a non-negative``
batch-size-zero                     ``data.batch_size=0``                               ``data.batch_size: expected at least 1``
crop-larger-than-images             ``data.crop_size=[512,512]`` (64x128 scenes)        ``data.crop_size``, the image size
pseudo-threshold-above-1            ``uda.pseudo_threshold=1.5``                        ``uda.pseudo_threshold: expected in [0, 1]``
ema-alpha-above-1                   ``uda.ema_alpha=1.2``                               ``uda.ema_alpha: expected in [0, 1)``
temperature-zero                    ``loss.contrastive.temperature=0``                  ``loss.contrastive.temperature``
negative-loss-weight (3)            contrastive source, FD and MIC weights -1           the key, ``non-negative``
negative-schedule (2)               ``optim.warmup_iters=-1``, ``train.eval_every=-1``  the key, ``non-negative``
log-every-zero                      ``train.log_every=0``                               ``train.log_every: expected at least 1``
unknown-decoder / -encoder          ``model.decoder=foo``, ``model.encoder=foo``        the key, the choices
unknown-method / -mode              ``uda.method=foo``, ``uda.mode=foo``                the key, the choices
method-arg-unknown                  ``uda.method=pipa``, ``uda.method_args.wieght``     ``uda.method_args.wieght``, pipa's settings
method-arg-without-settings         ``uda.method_args.unknown=1`` (cluda reads none)    ``uda.method_args.unknown``
device-unknown / -cuda-absent       ``train.device=tpu``, ``=cuda`` on a CPU machine    ``train.device``
pretrained-missing                  ``train gta2cs_daformer`` (no mit_b5.pth)           ``pretrained/mit_b5.pth``
pretrained-of-another-encoder       ``model.encoder=resnet18`` with MiT weights         ``model.pretrained``, ``do not fit``
dataset-root-missing                ``gta2cs_daformer`` without data/gta                ``data.source``, ``data/gta``
class-table-too-small / -missing    ``data.classes=`` a 2-class table / no file         ``model.num_classes`` / ``data.classes``
run-dir-exists                      ``train ... --out RUN`` (no --overwrite)            ``RUN: holds another run``, ``--resume``
config-and-resume                   ``train miniscapes_tiny --resume RUN``              ``not both``
resume-missing-run                  ``train --resume nothing``                          ``nothing: not a run directory``
evaluate-missing-run                ``evaluate nothing``                                ``nothing does not exist``
evaluate/predict/resume-other-ckpt  RUN's last.pt from a model with another encoder     ``last.pt``, ``model.encoder``
evaluate-ckpt-with-other-config     ``evaluate OTHER.pt --config miniscapes_tiny``      ``OTHER.pt``, ``do not fit``
evaluate/predict/resume-corrupt     last.pt and prev.pt cut short                       ``last.pt``, ``unreadable``
evaluate-unknown-split              ``evaluate RUN --split nosuch``                     ``data.val``, ``'nosuch'``
evaluate-unknown-device             ``evaluate RUN --device tpu``                       ``--device``, ``'tpu'``
predict-missing-input               ``predict RUN nothing.png``                         ``nothing.png does not exist``
predict-folder-without-images       ``predict RUN empty/``                              ``folder .../empty holds no image``
predict-batch-size-zero             ``predict ... --batch-size 0``                      ``--batch-size``
disk-full-on-checkpoint             resume; torch.save raises ENOSPC                    ``last.pt: No space left on device``
out-under-a-file                    ``--out FILE/run``                                  ``FILE/run: Not a directory``
out-without-permission              mkdir raises PermissionError (train, predict)       the folder, ``Permission denied``
prepare-interrupted                 Ctrl-C after two files, then a rerun                ``interrupted``; the rerun converts all
==================================  ==================================================  ============================================

.. [#] ``train.max_iters=0`` is no mistake: the run evaluates the initial model.
"""
from __future__ import annotations

import errno
import os
import pathlib
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from cluda_kit.cli import main as cli_main
from cluda_kit.config import load_config
from cluda_kit.data import prepare as prepare_module
from cluda_kit.engine.trainer import Trainer
from fake_data import make_gta_tree

FAST = ["train.max_iters=1", "train.eval_every=0", "train.log_every=1", "train.checkpoint_every=1"]
TINY = "miniscapes_tiny"
PROGRESS = re.compile(r"\d+%\||\d+it \[|it/s\]|s/it\]")  # a tqdm bar on stderr, not a message


def S(*sets: str) -> list[str]:
    """``--set`` pairs."""
    return [x for s in sets for x in ("--set", s)]


# --------------------------------------------------------------------------------- set-ups
# Each prepares the scratch folder ``c`` (a dict of paths, see ``scratch``) before the command runs
# and may return a check to run after it.
def _yaml_malformed(c, mp):
    c["tmp"].joinpath("bad.yaml").write_text("data: [1, 2\n  x: :\n")


def _yaml_unknown_key(c, mp):
    c["tmp"].joinpath("keys.yaml").write_text(f"base: {TINY}\ndata:\n  sorce: {{domain: game}}\n")


def _class_table(c, mp):
    c["tmp"].joinpath("classes.yaml").write_text(
        "classes:\n  - {name: ground, color: [0, 0, 0]}\n  - {name: crop, color: [0, 200, 0]}\n")


def _other_ckpt_in_run(c, mp):
    for name in ("last.pt", "prev.pt"):
        shutil.copy(c["other"], c["run"] / "checkpoints" / name)


def _corrupt_ckpt(c, mp):
    for name in ("last.pt", "prev.pt"):
        path = c["run"] / "checkpoints" / name
        path.write_bytes(path.read_bytes()[:1000])  # cut short, as by a full disk


def _empty_folder(c, mp):
    c["tmp"].joinpath("empty").mkdir()


def _disk_full(c, mp):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    mp.setattr(torch, "save", full)
    config = (c["run"] / "config.yaml").read_text()
    c["rewritten"] = {"config.yaml"}  # a resume records its new train.max_iters first

    def only_max_iters_changed():
        assert (c["run"] / "config.yaml").read_text() == config.replace("max_iters: 1\n", "max_iters: 2\n")

    return only_max_iters_changed


def _no_permission(c, mp):
    mkdir = pathlib.Path.mkdir

    def refuse(self, *args, **kwargs):
        if "ro" in self.parts:  # as root, chmod would not stop the write: refuse it here
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return mkdir(self, *args, **kwargs)

    mp.setattr(pathlib.Path, "mkdir", refuse)


def _prepare_interrupted(c, mp):
    root = c["tmp"] / "gta"
    make_gta_tree(root, n=4)
    convert, calls = prepare_module._convert, []

    def interrupted(job, *args, **kwargs):
        calls.append(job)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C after two files
        return convert(job, *args, **kwargs)

    mp.setattr(prepare_module, "_convert", interrupted)

    def rerun_completes():
        mp.setattr(prepare_module, "_convert", convert)
        assert cli_main(["prepare", "gta", str(root), "--workers", "1"]) == 0
        assert prepare_module.prepare("gta", root, progress=False).up_to_date == 4
        assert len(list((root / "labels").glob("*_labelTrainIds.png"))) == 4

    return rerun_completes


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")

# (case id, set-up or None, argv, substrings of the error line); {run}, {new}, {tmp}, {file},
# {img} and {other} are paths of the scratch folder
CASES = [
    # ---- presets and YAML files
    ("unknown-preset", None, ["train", "nosuch", "--out", "{new}"],
     ["unknown preset 'nosuch'", "miniscapes_tiny"]),
    ("yaml-missing", None, ["train", "{tmp}/nothing.yaml", "--out", "{new}"],
     ["config file not found: {tmp}/nothing.yaml"]),
    ("yaml-malformed", _yaml_malformed, ["train", "{tmp}/bad.yaml", "--out", "{new}"],
     ["{tmp}/bad.yaml: invalid YAML"]),
    ("yaml-unknown-key", _yaml_unknown_key, ["train", "{tmp}/keys.yaml", "--out", "{new}"],
     ["{tmp}/keys.yaml", "unknown key 'sorce'", "expected one of"]),
    # ---- --set: keys and types
    ("set-unknown-key", None, ["train", TINY, *S("train.max_itres=3"), "--out", "{new}"],
     ["unknown key 'max_itres'", "max_iters"]),
    ("set-without-equals", None, ["train", TINY, "--set", "train.max_iters", "--out", "{new}"],
     ["'train.max_iters'", "expected key=value"]),
    ("wrong-type-int", None, ["train", TINY, *S("train.max_iters=abc"), "--out", "{new}"],
     ["train.max_iters: expected an integer, got 'abc'"]),
    ("wrong-type-number", None, ["train", TINY, *S("optim.lr=[1]"), "--out", "{new}"],
     ["optim.lr: expected a number, got [1]"]),
    ("wrong-type-section", None, ["train", TINY, *S("train=3"), "--out", "{new}"],
     ["train: expected a mapping"]),
    # ---- ranges
    ("lr-negative", None, ["train", TINY, *S("optim.lr=-1"), "--out", "{new}"],
     ["optim.lr: expected positive, got -1.0"]),
    # (train.max_iters=0 is no mistake: the run evaluates the initial model)
    ("max-iters-negative", None, ["train", TINY, *S("train.max_iters=-2"), "--out", "{new}"],
     ["train.max_iters: expected a non-negative integer, got -2"]),
    ("batch-size-zero", None, ["train", TINY, *S("data.batch_size=0"), "--out", "{new}"],
     ["data.batch_size: expected at least 1, got 0"]),
    ("crop-larger-than-images", None, ["train", TINY, *S("data.crop_size=[512, 512]"), "--out", "{new}"],
     ["data.crop_size", "(64, 128)", "(512, 512)"]),
    ("pseudo-threshold-above-1", None, ["train", TINY, *S("uda.pseudo_threshold=1.5"), "--out", "{new}"],
     ["uda.pseudo_threshold: expected in [0, 1], got 1.5"]),
    ("ema-alpha-above-1", None, ["train", TINY, *S("uda.ema_alpha=1.2"), "--out", "{new}"],
     ["uda.ema_alpha: expected in [0, 1), got 1.2"]),
    ("temperature-zero", None, ["train", TINY, *S("loss.contrastive.temperature=0"), "--out", "{new}"],
     ["loss.contrastive.temperature: expected positive, got 0.0"]),
    ("negative-contrastive-weight", None,
     ["train", TINY, *S("loss.contrastive.source_weight=-1"), "--out", "{new}"],
     ["loss.contrastive.source_weight: expected non-negative, got -1.0"]),
    ("negative-fd-weight", None, ["train", TINY, *S("uda.fd.weight=-0.1"), "--out", "{new}"],
     ["uda.fd.weight: expected non-negative, got -0.1"]),
    ("negative-mic-weight", None, ["train", TINY, *S("uda.mic.weight=-1"), "--out", "{new}"],
     ["uda.mic.weight: expected non-negative, got -1.0"]),
    ("negative-warmup", None, ["train", TINY, *S("optim.warmup_iters=-1"), "--out", "{new}"],
     ["optim.warmup_iters: expected non-negative, got -1"]),
    ("negative-eval-every", None, ["train", TINY, *S("train.eval_every=-1"), "--out", "{new}"],
     ["train.eval_every: expected non-negative", "got -1"]),
    ("log-every-zero", None, ["train", TINY, *S("train.log_every=0"), "--out", "{new}"],
     ["train.log_every: expected at least 1, got 0"]),
    # ---- choices
    ("unknown-decoder", None, ["train", TINY, *S("model.decoder=foo"), "--out", "{new}"],
     ["model.decoder: expected one of daformer, deeplabv2, segformer, got 'foo'"]),
    ("unknown-encoder", None, ["train", TINY, *S("model.encoder=foo"), "--out", "{new}"],
     ["model.encoder: expected one of mit_b0", "got 'foo'"]),
    ("unknown-method", None, ["train", TINY, *S("uda.method=foo"), "--out", "{new}"],
     ["uda.method: unknown method 'foo'", "cluda"]),
    ("unknown-uda-mode", None, ["train", TINY, *S("uda.mode=foo"), "--out", "{new}"],
     ["uda.mode: expected one of source_only, oracle, self_training, got 'foo'"]),
    ("method-arg-unknown", None,
     ["train", TINY, *S("uda.method=pipa", "uda.method_args.wieght=0.1"), "--out", "{new}"],
     ["uda.method_args.wieght: not a setting of method 'pipa'", "weight"]),
    ("method-arg-without-settings", None, ["train", TINY, *S("uda.method_args.unknown=1"), "--out", "{new}"],
     ["uda.method_args.unknown: method 'cluda' takes no settings"]),
    ("device-unknown", None, ["train", TINY, *S("train.device=tpu"), "--out", "{new}"],
     ["train.device: expected auto, cpu, cuda or cuda:N, got 'tpu'"]),
    pytest.param("device-cuda-absent", None, ["train", TINY, *S("train.device=cuda"), "--out", "{new}"],
                 ["train.device='cuda': CUDA is not available"], marks=NO_CUDA),
    # ---- weights, datasets and class tables
    ("pretrained-missing", None, ["train", "gta2cs_daformer", "--out", "{new}"], ["pretrained/mit_b5.pth"]),
    ("pretrained-of-another-encoder", None, ["train", TINY, *S("model.encoder=resnet18"), "--out", "{new}"],
     ["model.pretrained (for model.encoder=resnet18)", "kit:mit_nano_fractal", "do not fit"]),
    ("dataset-root-missing", None,
     ["train", "gta2cs_daformer", *S("model.pretrained=", "model.encoder=mit_b0"), "--out", "{new}"],
     ["data.source: dataset root data/gta does not exist"]),
    ("class-table-too-small", _class_table, ["train", TINY, *S("data.classes={tmp}/classes.yaml"), "--out", "{new}"],
     ["model.num_classes: 19", "{tmp}/classes.yaml has 2 classes"]),
    ("class-table-missing", None, ["train", TINY, *S("data.classes={tmp}/nope.yaml"), "--out", "{new}"],
     ["data.classes", "{tmp}/nope.yaml does not exist"]),
    # ---- run directories and checkpoints
    ("run-dir-exists", None, ["train", TINY, *S(*FAST), "--out", "{run}"],
     ["{run}: holds another run", "--resume {run}", "--overwrite"]),
    ("config-and-resume", None, ["train", TINY, "--resume", "{run}"], ["CONFIG or --resume RUN_DIR, not both"]),
    ("resume-missing-run", None, ["train", "--resume", "{tmp}/nothing"], ["{tmp}/nothing: not a run directory"]),
    ("evaluate-missing-run", None, ["evaluate", "{tmp}/nothing"], ["{tmp}/nothing does not exist"]),
    ("evaluate-other-ckpt", _other_ckpt_in_run, ["evaluate", "{run}"],
     ["{run}/checkpoints/last.pt", "model.encoder ('mit_b0' vs 'mit_nano')"]),
    ("predict-other-ckpt", _other_ckpt_in_run, ["predict", "{run}", "{img}", "--out", "{tmp}/pred"],
     ["{run}/checkpoints/last.pt", "model.encoder ('mit_b0' vs 'mit_nano')"]),
    ("resume-other-ckpt", _other_ckpt_in_run, ["train", "--resume", "{run}"],
     ["{run}/checkpoints/last.pt", "model.encoder ('mit_b0' vs 'mit_nano')"]),
    ("evaluate-ckpt-with-other-config", None, ["evaluate", "{other}", "--config", TINY],
     ["{other}: kit weights do not fit", "tensors"]),
    ("evaluate-corrupt-ckpt", _corrupt_ckpt, ["evaluate", "{run}"],
     ["checkpoint {run}/checkpoints/last.pt is unreadable", "prev.pt"]),
    ("predict-corrupt-ckpt", _corrupt_ckpt,
     ["predict", "{run}/checkpoints/last.pt", "{img}", "--out", "{tmp}/pred"],
     ["checkpoint {run}/checkpoints/last.pt is unreadable"]),
    ("resume-corrupt-ckpt", _corrupt_ckpt, ["train", "--resume", "{run}"],
     ["checkpoint {run}/checkpoints/last.pt is unreadable"]),
    ("evaluate-unknown-split", None, ["evaluate", "{run}", "--split", "nosuch"],
     ["data.val", "unknown split 'nosuch'"]),
    ("evaluate-unknown-device", None, ["evaluate", "{run}", "--device", "tpu"], ["--device", "'tpu'"]),
    ("predict-missing-input", None, ["predict", "{run}", "{tmp}/nothing.png", "--out", "{tmp}/pred"],
     ["input {tmp}/nothing.png does not exist"]),
    ("predict-folder-without-images", _empty_folder, ["predict", "{run}", "{tmp}/empty", "--out", "{tmp}/pred"],
     ["folder {tmp}/empty holds no image"]),
    ("predict-batch-size-zero", None, ["predict", "{run}", "{img}", "--out", "{tmp}/pred", "--batch-size", "0"],
     ["--batch-size", "got 0"]),
    # ---- the file system
    ("disk-full-on-checkpoint", _disk_full, ["train", "--resume", "{run}", *S("train.max_iters=2")],
     ["{run}/checkpoints/last.pt: No space left on device"]),
    ("out-under-a-file", None, ["train", TINY, *S(*FAST), "--out", "{file}/run"],
     ["{file}/run: Not a directory"]),
    ("out-without-permission", _no_permission, ["train", TINY, *S(*FAST), "--out", "{tmp}/ro/run"],
     ["{tmp}/ro/run: Permission denied"]),
    ("predict-out-without-permission", _no_permission, ["predict", "{run}", "{img}", "--out", "{tmp}/ro/pred"],
     ["{tmp}/ro/pred", "Permission denied"]),
    ("prepare-interrupted", _prepare_interrupted, ["prepare", "gta", "{tmp}/gta", "--workers", "1"],
     ["interrupted"]),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished one-iteration tiny run, and the checkpoint of one whose encoder is mit_b0."""
    root = tmp_path_factory.mktemp("runs")
    Trainer(load_config(TINY, FAST), root / "run", progress=False).fit()
    other = Trainer(load_config(TINY, FAST + ["model.encoder=mit_b0", "model.pretrained="]), root / "other",
                    progress=False)
    return root / "run", other.save()


@pytest.fixture
def scratch(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative defaults (runs/, data/gta) land here
    run = shutil.copytree(runs[0], tmp_path / "run")
    Image.new("RGB", (64, 32), (90, 120, 30)).save(tmp_path / "img.png")
    (tmp_path / "file.txt").write_text("a file, not a folder\n")
    return {"tmp": tmp_path, "run": run, "new": tmp_path / "new", "file": tmp_path / "file.txt",
            "img": tmp_path / "img.png", "other": runs[1]}


def _files(run: Path) -> dict[str, bytes]:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and "tb" not in p.parts}


def _message_lines(err: str) -> list[str]:
    """stderr without progress bars."""
    return [line for line in err.replace("\r", "\n").splitlines()
            if line.strip() and not PROGRESS.search(line)]


@pytest.mark.parametrize("case, setup, argv, expected", CASES, ids=[
    c.values[0] if hasattr(c, "values") else c[0] for c in CASES])
def test_bad_input_gives_one_line_and_changes_nothing(case, setup, argv, expected, scratch, monkeypatch,
                                                      capsys):
    after = setup(scratch, monkeypatch) if setup else None
    before = _files(scratch["run"])
    argv = [a.format(**scratch) for a in argv]
    status = cli_main(argv)
    err = capsys.readouterr().err
    lines = _message_lines(err)
    assert status != 0, err[-2000:]
    assert "Traceback" not in err and 1 <= len(lines) <= 2, err[-2000:]
    message = [line for line in lines if line.startswith("cluda-kit: ")]
    assert len(message) == 1, lines
    for text in expected:
        assert text.format(**scratch) in message[0], message[0]
    now = _files(scratch["run"])
    for name in scratch.get("rewritten", ()):  # checked by the case's own `after`
        now.pop(name), before.pop(name)
    metrics = "metrics.jsonl"
    assert now.pop(metrics, b"").startswith(before.pop(metrics, b"")), "metrics.jsonl was rewritten"
    assert now == before, "the run directory changed"
    assert not scratch["new"].exists()
    if after:
        after()
