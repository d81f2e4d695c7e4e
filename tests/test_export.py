"""cluda-kit export (safetensors with the config as metadata, ONNX checked with onnxruntime against
PyTorch) and safe loading (every torch file the kit reads is loaded with weights_only=True)."""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import cluda_kit
from cluda_kit import export
from cluda_kit.config import load_config
from cluda_kit.data.transforms import normalize
from cluda_kit.export import (ONNX_OPSET, check_onnx, export_onnx, export_safetensors, load_exported,
                              model_for_export, read_export_metadata)
from cluda_kit.fileio import UnsafeCheckpointError
from cluda_kit.inference import InputError, load_model, predict
from test_inference import run  # noqa: F401  (fixture: a 2-iteration miniscapes_tiny CLUDA run)


def cli(argv: list[str]) -> int:
    """``cluda-kit export ...`` through the subcommand's own parser (add_parser + main)."""
    parser = argparse.ArgumentParser(prog="cluda-kit")
    export.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _images(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return normalize(torch.randint(0, 256, (n, 3, h, w), generator=g).float() / 255)


def _tiny_hrda():
    """(random HRDA network, its config): miniscapes HRDA at the tiny preset's widths."""
    from cluda_kit.export import _network_of

    cfg = load_config("miniscapes_hrda_cluda", ["model.pretrained=", "model.embed_dim=32", "model.fused_dim=32"])
    torch.manual_seed(0)
    return _network_of(cfg).eval(), cfg


# ------------------------------------------------------------------------------- safetensors
def test_safetensors_round_trip_restores_weights_config_and_logits(run, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    assert cli(["export", str(run), "--format", "safetensors", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    original = load_model(run)
    net, cfg = load_exported(out)
    assert cfg == original.cfg and cfg.name == "miniscapes_tiny" and cfg.model.pretrained == ""
    assert not net.training and next(net.parameters()).device.type == "cpu"
    for h, w in ((64, 128), (40, 72)):
        x = _images(2, h, w, h)
        with torch.no_grad():
            assert torch.equal(net(x).logits, original.net(x).logits)
    # a JSON header and raw tensors: nothing in the file is executable
    raw = out.read_bytes()
    meta = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])["__metadata__"]
    assert meta == read_export_metadata(out)
    assert meta["format"] == "cluda_kit.export" and meta["kit_version"] == cluda_kit.__version__
    assert meta["weights"] == "student" and str(run) in meta["producer"]
    assert json.loads(meta["class_names"])[0] == "road" and len(json.loads(meta["class_colors"])) == 19
    # load_model / predict take the export like the run
    image = torch.randint(0, 256, (3, 48, 96), dtype=torch.uint8)
    assert torch.equal(predict(load_model(out), image), predict(original, image))


def test_teacher_export_and_the_api_take_a_checkpoint_file(run, tmp_path):
    ckpt = run / "checkpoints" / "last.pt"
    net, cfg = model_for_export(ckpt, teacher=True)
    teacher = load_model(run, teacher=True).net.state_dict()
    student = load_model(run).net.state_dict()
    assert any(not torch.equal(v, student[k]) for k, v in teacher.items())
    export_safetensors(net, cfg, tmp_path / "t.safetensors", weights="teacher")
    assert read_export_metadata(tmp_path / "t.safetensors")["weights"] == "teacher"
    for k, v in load_exported(tmp_path / "t.safetensors")[0].state_dict().items():
        assert torch.equal(v, teacher[k]), k
    assert cli(["export", str(ckpt), "--teacher", "--out", str(tmp_path / "t2.safetensors")]) == 0  # format from suffix
    again = load_exported(tmp_path / "t2.safetensors")[0].state_dict()
    assert all(torch.equal(v, teacher[k]) for k, v in again.items())


# ---------------------------------------------------------------------------------------- ONNX
def test_onnx_has_dynamic_height_width_and_matches_pytorch(run, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "m.onnx"
    assert cli(["export", str(run), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"opset {ONNX_OPSET}" in printed and "dynamic height and width" in printed
    assert "checked with onnxruntime against PyTorch" in printed
    proto = onnx.load(str(out))
    assert {o.domain: o.version for o in proto.opset_import}[""] == ONNX_OPSET
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["input_size"] == "dynamic" and meta["exporter"] == "torchscript" and meta["inference"] == "whole"
    assert load_config("miniscapes_tiny").name in meta["config"] and json.loads(meta["class_names"])[1] == "sidewalk"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model = load_model(run)
    for n, h, w in ((2, 64, 128), (1, 96, 160), (3, 45, 77)):  # the export's size, larger, odd
        x = _images(n, h, w, n)
        (logits,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            ref = model(x).numpy()
        assert logits.shape == ref.shape == (n, 19, h, w)
        assert np.abs(logits - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
        assert (logits.argmax(1) == ref.argmax(1)).mean() > 0.999


def test_sliding_window_inference_exports_at_one_size(run, tmp_path):
    pytest.importorskip("onnxruntime")
    model = load_model(run, overrides=["train.eval_mode=slide", "train.eval_window=[64,96]",
                                       "train.eval_stride=[64,32]"])  # two overlapping windows
    with pytest.raises(InputError, match=r"s.onnx: cannot export with a dynamic height and width: "
                                         r"sliding-window inference"):
        export_onnx(model, tmp_path / "s.onnx", (64, 128), dynamic=True)
    model.train()  # recorded in eval mode (no dropout), the caller's mode restored
    out = export_onnx(model, tmp_path / "s.onnx", (64, 128))
    assert model.training and read_export_metadata(out)["input_size"] == "64x128"
    assert max(check_onnx(out, model, [(64, 128)], batch=2).values()) < 1e-5  # B stays dynamic
    assert model.training
    with pytest.raises(InputError, match=r"s.onnx: onnxruntime cannot run it at 72x128"):
        check_onnx(out, model, [(72, 128)])


@pytest.mark.slow
def test_hrda_exports_at_one_size_through_the_dynamo_exporter(tmp_path):
    """HRDA (context at half scale + detail windows + scale attention) as one fixed-size graph
    (the dynamo exporter: ~20-40 s on 2 CPU cores)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    net, cfg = _tiny_hrda()
    out = export_onnx(net, tmp_path / "h.onnx", (64, 128), cfg=cfg)
    meta = read_export_metadata(out)
    assert (meta["input_size"], meta["exporter"], meta["inference"]) == ("64x128", "dynamo", "hrda+whole")
    assert max(check_onnx(out, net, [(64, 128)], cfg=cfg, batch=2).values()) < 1e-5


# ----------------------------------------------------------------------------------- safe loading
def test_kit_checkpoints_load_with_weights_only(run, monkeypatch):
    """Every torch.load the kit makes on its own files passes weights_only=True, and a kit
    checkpoint loads with plain torch.load(weights_only=True) (no allow-list needed)."""
    ckpt = run / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    assert {"student", "teacher", "optimizer", "rng", "config"} <= set(state)
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    from cluda_kit.analysis.runs import load_run_model

    load_model(run)
    load_model(ckpt, teacher=True)
    model_for_export(run)
    load_run_model(run, "teacher")
    cluda_kit.Trainer.resume(run, read_only=True, progress=False)
    assert len(calls) >= 5 and all(w is True for w in calls), calls


def test_a_checkpoint_written_before_the_change_still_resumes_exactly(run, tmp_path):
    """Older kit checkpoints hold numpy's RNG state as numpy's own tuple (an ndarray inside): plain
    data, which the kit's loader allows; the resumed numpy stream is the saved one."""
    from cluda_kit.engine.checkpoint import load_checkpoint

    old = tmp_path / "old_run"
    shutil.copytree(run, old)
    state = torch.load(old / "checkpoints" / "last.pt", weights_only=True)
    np.random.seed(1234)
    state["rng"]["numpy"] = np.random.get_state()
    expected = np.random.rand(5)
    torch.save(state, old / "checkpoints" / "last.pt")
    with pytest.raises(Exception):  # plain weights_only=True refuses the numpy array
        torch.load(old / "checkpoints" / "last.pt", weights_only=True)
    assert isinstance(load_checkpoint(old / "checkpoints" / "last.pt")["rng"]["numpy"], tuple)
    np.random.seed(0)
    cluda_kit.Trainer.resume(old, read_only=True, progress=False)
    assert np.array_equal(np.random.rand(5), expected)


class _Evil:
    """Unpickling this would create a folder (standing for any code a pickle can run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (str(self.marker),)


def test_a_pickle_with_other_objects_is_refused_and_nothing_runs(run, tmp_path):
    from cluda_kit.engine.checkpoint import load_checkpoint
    from cluda_kit.models.weights import load_pretrained, read_checkpoint

    marker = tmp_path / "ran"
    third = tmp_path / "release.pth"
    torch.save({"state_dict": load_model(run).net.state_dict(), "meta": _Evil(marker)}, third)
    with pytest.raises(UnsafeCheckpointError, match=r"^weights file .*release.pth holds Python objects "
                                                    r"that loading would execute \(.*os.makedirs"):
        read_checkpoint(third)
    with pytest.raises(UnsafeCheckpointError, match="release.pth"):
        load_pretrained(load_model(run).net, third)
    with pytest.raises(UnsafeCheckpointError, match="release.pth"):
        load_model(third, config=str(run / "config.yaml"))
    # the kit's own checkpoint format with an object slipped in: refused too, not unpickled
    kit = tmp_path / "run2" / "checkpoints" / "last.pt"
    kit.parent.mkdir(parents=True)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["extra"] = argparse.Namespace(lr=1.0)
    torch.save(state, kit)
    with pytest.raises(UnsafeCheckpointError, match=r"checkpoint .*last.pt holds Python objects .*argparse.Namespace"):
        load_checkpoint(kit)
    with pytest.raises(UnsafeCheckpointError, match="last.pt"):
        cli(["export", str(kit), "--out", str(tmp_path / "x.safetensors")])
    assert not marker.exists()


# ----------------------------------------------------------------------------------------- errors
def test_export_file_errors_name_the_file(run, tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(FileNotFoundError, match="none.safetensors does not exist"):
        load_exported(tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(InputError, match="bad.safetensors: not a safetensors file"):
        load_exported(bad)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(InputError, match="plain.safetensors: not a cluda-kit export"):
        load_exported(tmp_path / "plain.safetensors")
    good = export_safetensors(load_model(run), None, tmp_path / "good.safetensors")
    from safetensors.torch import load_file

    tensors, meta = load_file(str(good)), read_export_metadata(good)
    for name, change, needle in (
        ("newer", {"format_version": "99"}, "written by a newer cluda-kit"),
        ("badcfg", {"config": "model: {encoder: mit_b9}"}, "its config does not fit this version of the kit"),
        ("listcfg", {"config": "[1, 2]"}, "its config does not fit"),
    ):
        save_file(tensors, str(tmp_path / f"{name}.safetensors"), metadata={**meta, **change})
        with pytest.raises(InputError, match=f"{name}.safetensors: {needle}"):
            load_exported(tmp_path / f"{name}.safetensors")
    tensors.pop("decoder.conv_seg.weight")
    save_file(tensors, str(tmp_path / "short.safetensors"), metadata=meta)
    with pytest.raises(InputError, match="short.safetensors: its weights do not fit its config"):
        load_exported(tmp_path / "short.safetensors")
    (tmp_path / "junk.onnx").write_bytes(b"\xff\xff junk")
    with pytest.raises(InputError, match="junk.onnx: not an ONNX model"):
        read_export_metadata(tmp_path / "junk.onnx")
    with pytest.raises(InputError, match="good.onnx: not a cluda-kit safetensors export"):
        shutil.copy(good, tmp_path / "good.onnx")
        export_onnx(load_model(run), tmp_path / "good.onnx", (64, 128))
        load_exported(tmp_path / "good.onnx")


def test_export_api_errors_name_the_problem(run, tmp_path, monkeypatch):
    import sys

    model = load_model(run)
    other = load_config("miniscapes_tiny", ["model.embed_dim=16"])
    with pytest.raises(InputError, match=r"export_safetensors\(.*m.safetensors\): the model does not match its config"):
        export_safetensors(model.net, other, tmp_path / "m.safetensors")
    with pytest.raises(InputError, match=r"m.safetensors\): the model's config is needed"):
        export_safetensors(model.net, None, tmp_path / "m.safetensors")
    net, cfg = _tiny_hrda()
    with pytest.raises(InputError, match="h.onnx: the TorchScript exporter cannot trace HRDA"):
        export_onnx(net, tmp_path / "h.onnx", (64, 128), cfg=cfg, exporter="torchscript")
    with pytest.raises(InputError, match="h.onnx: cannot export with a dynamic height and width: HRDA"):
        export_onnx(net, tmp_path / "h.onnx", (64, 128), cfg=cfg, dynamic=True)
    with pytest.raises(InputError, match="exporter='jit'"):
        export_onnx(model, tmp_path / "m.onnx", (64, 128), exporter="jit")
    with pytest.raises(InputError, match="example size 0x128 and opset 18 must be positive"):
        export_onnx(model, tmp_path / "m.onnx", (0, 128))
    with pytest.raises(InputError, match="m.onnx: ONNX export failed at opset 5 with the torchscript exporter"):
        export_onnx(model, tmp_path / "m.onnx", (64, 128), opset=5)
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.safetensors").exists()
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if not installed
    with pytest.raises(InputError, match=r"ONNX export needs the 'onnx' package \(pip install 'cluda_kit\[export\]'\)"):
        export_onnx(model, tmp_path / "m.onnx", (64, 128))


def test_cli_export_errors(run, tmp_path, monkeypatch, capsys):
    x = str(tmp_path / "x.onnx")
    for argv, error, needle in (
        ([str(run), "--out", str(tmp_path / "x.pt")], InputError, "x.pt: give --format or a .safetensors / .onnx"),
        ([str(run), "--format", "onnx", "--out", str(tmp_path / "x.safetensors")], InputError,
         "a onnx file must end in .onnx"),
        ([str(run), "--out", str(tmp_path / "x.safetensors"), "--size", "64", "128"], InputError, "--size is for ONNX"),
        ([str(run), "--out", x, "--size", "0", "128"], InputError, "--size 0 128: expected two positive integers"),
        ([str(tmp_path), "--out", x], FileNotFoundError, "not a trained run directory"),
        ([str(tmp_path / "nothing.pt"), "--out", x], FileNotFoundError, "nothing.pt does not exist"),
    ):
        with pytest.raises(error, match=needle.replace(".", r"\.").replace("(", r"\(")):
            cli(["export", *argv])
    st = tmp_path / "m.safetensors"
    export_safetensors(load_model(run), None, st)
    with pytest.raises(InputError, match="m.safetensors: an exported model holds one set of weights"):
        cli(["export", str(st), "--teacher", "--out", x])
    with pytest.raises(InputError, match="would overwrite the model it reads"):
        cli(["export", str(st), "--out", str(st)])
    net, cfg = _tiny_hrda()  # HRDA (or sliding-window) models need an explicit size
    monkeypatch.setattr(export, "model_for_export", lambda path, teacher=False: (net, cfg))
    with pytest.raises(InputError, match="HRDA inference places its detail windows by the input size, so its "
                                         "ONNX graph holds one input size: give --size H W"):
        cli(["export", str(run), "--out", x])


def test_cli_reports_the_onnx_check(run, tmp_path, monkeypatch, capsys):
    import sys

    pytest.importorskip("onnxruntime")
    out = str(tmp_path / "m.onnx")
    monkeypatch.setattr(export, "check_onnx", lambda path, model, sizes, **kw: {tuple(s): 0.5 for s in sizes})
    assert cli(["export", str(run), "--out", out, "--size", "64", "96"]) == 1
    printed = capsys.readouterr().out
    assert "warning: onnxruntime differs from PyTorch" in printed and "64x96: 5.0e-01" in printed
    assert "44x68" in printed  # a dynamic graph is checked at a second, odd size
    assert cli(["export", str(run), "--out", out, "--no-check"]) == 0
    assert "checked" not in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert cli(["export", str(run), "--out", out]) == 0
    assert "not checked against PyTorch: onnxruntime is not installed" in capsys.readouterr().out


def test_cli_wiring_gives_one_line_errors(run, tmp_path, capsys):
    """Once cluda_kit.cli registers the subcommand: its errors print one line (status 2)."""
    from cluda_kit.cli import build_parser, main

    if "export" not in build_parser()._subparsers._group_actions[0].choices:
        pytest.skip("cluda_kit.cli does not register `export` yet (export.add_parser)")
    assert main(["export", str(run), "--out", str(tmp_path / "m.safetensors")]) == 0
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a trained run directory" in err[0], err
