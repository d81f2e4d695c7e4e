"""Using a trained model: cluda_kit.load_model / predict, `cluda-kit predict` on images, folders and
videos, and the public API of `import cluda_kit`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cluda_kit
from cluda_kit.cli import main
from cluda_kit.config import load_config
from cluda_kit.data.labels import CLASSES, colorize, train_ids_to_cityscapes
from cluda_kit.data.transforms import normalize, resize_image
from cluda_kit.inference import InputError, SegmentationModel, collect_inputs, load_model, predict


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 2-iteration miniscapes_tiny CLUDA run (student and teacher)."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    cfg = load_config("miniscapes_tiny", ["train.max_iters=2", "train.eval_every=0"])
    cluda_kit.Trainer(cfg, out, progress=False).fit()
    return out


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _reference(model: SegmentationModel, image: np.ndarray) -> torch.Tensor:
    """The prediction written out by hand: resize to fit, normalise, student logits, upsample, argmax."""
    x = torch.from_numpy(image).permute(2, 0, 1).contiguous()  # the layout decides the conv kernel
    if model.resize:
        x = resize_image(x, model.resize)
    with torch.no_grad():
        logits = model.net(normalize(x[None].float() / 255)).logits
        logits = torch.nn.functional.interpolate(logits, size=image.shape[:2], mode="bilinear",
                                                 align_corners=False)
    return logits.argmax(1)[0]


def test_load_model_gives_the_run_weights_and_protocol(run):
    from cluda_kit.engine.checkpoint import load_checkpoint

    model = load_model(run)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert not model.training and model.cfg.name == "miniscapes_tiny"
    assert model.mode == model.cfg.train.eval_mode and model.resize == model.cfg.data.val.resize
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, state["student"][k]), k
    teacher = load_model(run / "checkpoints" / "last.pt", teacher=True)
    assert any(not torch.equal(v, state["student"][k]) for k, v in teacher.net.state_dict().items())
    for k, v in teacher.net.state_dict().items():
        assert torch.equal(v, state["teacher"][k]), k


def test_predict_matches_a_hand_written_forward_at_every_input_size(run):
    model = load_model(run)
    images = [_image(64, 128, 0), _image(64, 128, 1), _image(50, 90, 2)]
    preds, confs = predict(model, images, batch_size=2, return_confidence=True)
    assert [tuple(p.shape) for p in preds] == [(64, 128), (64, 128), (50, 90)]
    for image, pred, conf in zip(images, preds, confs):
        assert pred.dtype == torch.int64 and torch.equal(pred, _reference(model, image))
        assert conf.dtype == torch.float32 and bool(((conf > 1 / 19 - 1e-6) & (conf <= 1)).all())
    # one image in, one map out; every input kind gives the same answer
    one = predict(model, images[2])
    assert torch.equal(one, preds[2])
    as_tensor = torch.from_numpy(images[2]).permute(2, 0, 1)
    assert torch.equal(predict(model, as_tensor), one)
    assert torch.equal(predict(model, as_tensor.float() / 255), one)
    assert torch.equal(predict(model, Image.fromarray(images[2])), one)
    batch = predict(model, torch.stack([as_tensor, as_tensor]))
    assert len(batch) == 2 and all(torch.equal(b, one) for b in batch)


def test_predict_uses_the_sliding_window_of_the_config(run):
    model = load_model(run)
    slide = SegmentationModel.from_config(
        model.net, load_config(run / "config.yaml", ["train.eval_mode=slide", "train.eval_window=[32,64]",
                                                    "train.eval_stride=[16,32]", "model.pretrained="]))
    image = _image(64, 128, 3)
    from cluda_kit.engine.evaluate import predict_slide

    x = normalize(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    with torch.no_grad():
        ref = predict_slide(lambda t: model.net(t).logits, x, 19, (32, 64), (16, 32)).argmax(1)[0]
    assert torch.equal(predict(slide, image), ref)
    assert not torch.equal(ref, predict(model, image))  # the window changes the answer


def test_predict_errors_name_the_input(run, tmp_path):
    model = load_model(run)
    with pytest.raises(InputError, match=r"\(H, W, 3\) uint8"):
        predict(model, np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match="int64"):
        predict(model, torch.zeros(3, 4, 4, dtype=torch.int64))
    with pytest.raises(InputError, match="no teacher weights"):
        source_only = tmp_path / "so"
        cluda_kit.Trainer(load_config("miniscapes_tiny", ["train.max_iters=1", "train.eval_every=0",
                                                          "uda.mode=source_only", "uda.fd.enabled=false",
                                                          "loss.contrastive.enabled=false",
                                                          "data.rcs.enabled=false"]),
                          source_only, progress=False).fit()
        load_model(source_only, teacher=True)
    with pytest.raises(FileNotFoundError, match="no checkpoints/last.pt"):
        load_model(tmp_path)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    from cluda_kit.data.datasets import DatasetError

    with pytest.raises(DatasetError, match="broken.png"):
        predict(model, bad)


def test_collect_inputs_walks_folders_and_refuses_unknown_files(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for rel in ("a/x.png", "a/b/y.JPG", "a/b/z.webp", "a/clip.mp4", "a/notes.txt"):
        (tmp_path / rel).write_bytes(b"")
    found = collect_inputs([tmp_path / "a", tmp_path / "a" / "x.png"])
    assert [str(n) for _, n in found.images] == ["b/y", "b/z", "x", "x"]
    assert [str(n) for _, n in found.videos] == ["clip"]
    with pytest.raises(InputError, match="notes.txt is neither an image"):
        collect_inputs([tmp_path / "a" / "notes.txt"])
    with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
        collect_inputs([tmp_path / "missing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty holds no image"):
        collect_inputs([tmp_path / "empty"])


def _write_video(path: Path, frames: list[np.ndarray], rate: int = 5) -> None:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "0"}  # lossless, so the decoded frames are what was written
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_cli_predict_writes_masks_overlays_and_label_ids(run, tmp_path, capsys):
    src = tmp_path / "in"
    (src / "street").mkdir(parents=True)
    images = {"street/one": _image(64, 128, 4), "two": _image(48, 96, 5)}
    for name, arr in images.items():
        Image.fromarray(arr).save(src / f"{name}.png")
    out = tmp_path / "out"
    assert main(["predict", str(run), str(src), "--out", str(out), "--batch-size", "2"]) == 0
    assert "wrote 2 image(s)" in capsys.readouterr().out
    model = load_model(run)
    for name, arr in images.items():
        pred = _reference(model, arr).numpy().astype(np.uint8)
        color = np.asarray(Image.open(out / f"{name}_color.png"))
        label_ids = np.asarray(Image.open(out / f"{name}_labelIds.png"))
        blend = np.asarray(Image.open(out / f"{name}_overlay.png")).astype(int)
        assert np.array_equal(color, colorize(pred))
        assert np.array_equal(label_ids, train_ids_to_cityscapes(pred))
        assert np.abs(blend - (arr.astype(int) + color.astype(int)) / 2).max() <= 1


def test_cli_predict_segments_every_kth_video_frame(run, tmp_path, capsys):
    av = pytest.importorskip("av")
    frames = [_image(64, 128, 10 + i) for i in range(5)]
    video = tmp_path / "clip.mp4"
    _write_video(video, frames)
    out = tmp_path / "out"
    assert main(["predict", str(run), str(video), "--out", str(out), "--every", "2"]) == 0
    assert "1 video(s) (3 frames)" in capsys.readouterr().out
    written = sorted(p.name for p in (out / "clip").iterdir())
    assert written == ["frame_000000_labelIds.png", "frame_000002_labelIds.png", "frame_000004_labelIds.png"]
    model = load_model(run)
    with av.open(str(video)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    for i in (0, 2, 4):
        expected = train_ids_to_cityscapes(_reference(model, decoded[i]).numpy().astype(np.uint8))
        assert np.array_equal(np.asarray(Image.open(out / "clip" / f"frame_{i:06d}_labelIds.png")), expected)
    with av.open(str(out / "clip_overlay.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 3


def test_cli_predict_errors_are_one_line(run, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    assert main(["predict", str(run), str(tmp_path / "notes.txt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cluda-kit: error: predict:") and "notes.txt" in err and "\n" not in err
    assert main(["predict", str(tmp_path), str(tmp_path / "notes.txt"), "--out", str(tmp_path / "o")]) == 2
    broken = tmp_path / "bad.mp4"
    broken.write_bytes(b"not a video")
    assert main(["predict", str(run), str(broken), "--out", str(tmp_path / "o")]) == 1  # a bad item
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("cluda-kit:", "failed:"))]
    assert len(err) == 2 and err[-1].startswith(f"failed: {broken}: not a readable video")


def test_public_api_is_lazy_typed_and_listed():
    assert set(cluda_kit.__all__) >= {"load_model", "predict", "load_config", "Trainer"}
    for name in cluda_kit.__all__:
        assert getattr(cluda_kit, name) is not None, name
    assert cluda_kit.load_model is load_model and cluda_kit.predict is predict
    for fn in (cluda_kit.load_model, cluda_kit.predict, cluda_kit.load_config):
        assert fn.__doc__ and fn.__annotations__, fn
    # importing the package alone does not import torch (`cluda-kit presets` stays fast)
    code = "import sys, cluda_kit; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cluda_kit.nope  # noqa: B018
    assert len(CLASSES) == 19


def _readme_section(title: str) -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_readme_use_section_runs_as_written(run, tmp_path, monkeypatch, capsys):
    """Every `cluda-kit` line and Python block of README "Use a trained model" runs, in a folder
    where runs/demo is a trained run and photos/ and drive.mp4 exist."""
    import re
    import shlex
    import shutil

    section = _readme_section("Use a trained model")
    monkeypatch.chdir(tmp_path)
    shutil.copytree(run, tmp_path / "runs" / "demo")
    (tmp_path / "photos").mkdir()
    Image.fromarray(_image(64, 128, 20)).save(tmp_path / "photos" / "street.png")
    if "drive.mp4" in section:
        _write_video(tmp_path / "drive.mp4", [_image(64, 128, 30 + i) for i in range(6)])
    commands = [line.split("  #")[0].strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)
                for line in block.splitlines() if line.startswith("cluda-kit ")]
    assert len(commands) >= 2
    for line in commands:
        assert main(shlex.split(line)[1:]) == 0, line
    assert (tmp_path / "predictions" / "street_overlay.png").is_file()
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) >= 2
    for block in blocks:
        assert len(block.strip().splitlines()) <= 6, "README examples stay about five lines"
        exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert re.search(r"^2 iterations, mIoU \d+\.\d$", out, re.M)
    assert any(line.strip() in CLASSES for line in out.splitlines())


# ------------------------------------------------------------------------------- evaluate
def test_evaluate_saves_the_predictions_of_a_miniscapes_run(run, tmp_path, capsys):
    """`--save-predictions` on a demo-like run (miniscapes names are no Cityscapes names)."""
    from cluda_kit.engine.data import val_loader

    out = tmp_path / "preds"
    assert main(["evaluate", str(run), "--save-predictions", str(out)]) == 0
    model = load_model(run)
    batch = next(iter(val_loader(model.cfg)))
    n = len(val_loader(model.cfg).dataset)
    assert f"wrote {2 * n} prediction files" in capsys.readouterr().out
    name = Path(batch["name"][0])
    label_ids = np.asarray(Image.open(out / name.parent / f"{name.name}_labelIds.png"))
    expected = train_ids_to_cityscapes(predict(model, batch["image"][0]).numpy().astype(np.uint8))
    assert np.array_equal(label_ids, expected)


def test_evaluate_a_released_checkpoint_on_a_cityscapes_tree_needs_only_the_val_data(run, tmp_path, capsys):
    """A checkpoint in the release's mmseg UDA layout, built by --config, scored on a fake
    Cityscapes val tree given on the command line, with no training data anywhere: the same
    numbers as the kit run it was converted from, and official-evaluator prediction files."""
    import re

    from fake_data import make_cityscapes_tree
    from test_weights import ours_to_mmseg

    from cluda_kit.data.prepare import prepare
    from cluda_kit.engine.checkpoint import load_checkpoint

    make_cityscapes_tree(tmp_path / "cs", "val", n=2, h=64, w=128)
    prepare("cityscapes", tmp_path / "cs", progress=False)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    released = {f"model.{k}": v for k, v in ours_to_mmseg(state["student"]).items()}
    released.update({f"ema_model.{k}": v for k, v in ours_to_mmseg(state["teacher"]).items()})
    torch.save({"state_dict": released, "meta": {"iter": 40000}}, tmp_path / "iter_40000.pth")
    val = ["--dataset", "cityscapes", "--root", str(tmp_path / "cs"), "--split", "val"]
    nowhere = ["--set", "data.source.name=gta", "--set", f"data.source.root={tmp_path / 'no_gta'}",
               "--set", "data.target.name=cityscapes", "--set", f"data.target.root={tmp_path / 'no_cs'}"]

    def miou(argv) -> str:
        assert main(argv) == 0, argv
        text = capsys.readouterr().out
        return re.search(r"^mIoU\s+(\S+)", text, re.M).group(1)

    kit = miou(["evaluate", str(run), *val])
    for teacher in ([], ["--teacher"]):
        ref = miou(["evaluate", str(run), *val, *teacher])
        got = miou(["evaluate", str(tmp_path / "iter_40000.pth"), "--config", str(run / "config.yaml"),
                    *val, *nowhere, *teacher, "--save-predictions", str(tmp_path / f"p{len(teacher)}")])
        assert got == ref
    assert kit != "nan"
    files = sorted(p.name for p in (tmp_path / "p0").iterdir())
    assert len(files) == 2 and all(re.match(r"^\w+_\d{6}_\d{6}_pred_labelIds\.png$", f) for f in files)


def test_evaluate_errors_name_the_problem(run, tmp_path, capsys):
    (tmp_path / "junk.pth").write_bytes(b"junk")
    for argv, needle in (
        (["evaluate", str(tmp_path / "junk.pth")], "junk.pth"),
        (["evaluate", str(tmp_path / "junk.pth"), "--config", "miniscapes_tiny"], "junk.pth"),
        (["evaluate", str(run), "--dataset", "cityscapes", "--root", str(tmp_path / "none")], "none"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (argv, err)


def test_evaluate_refuses_a_checkpoint_that_would_run_code(run, tmp_path, capsys):
    import argparse

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "meta": argparse.Namespace(x=1)}, path)
    assert main(["evaluate", str(path), "--config", str(run / "config.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "evil.pth holds Python objects" in err[0] and "argparse.Namespace" in err[0]
