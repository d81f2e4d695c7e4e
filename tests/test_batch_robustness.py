"""Batch work that survives bad items: `cluda-kit predict` over folders and videos and dataset
preparation write every good item, report each bad one in one line naming the file, summarise,
exit 1 when any failed, and skip on a rerun what a previous run wrote (--overwrite redoes it)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cluda_kit.batch import BatchReport, ItemError, describe, run_batch
from cluda_kit.cli import main
from cluda_kit.data.labels import train_ids_to_cityscapes
from cluda_kit.inference import load_model, predict
from fake_data import encode_png16_rgb, make_cityscapes_tree, make_gta_tree, make_synthia_tree, truncate
from test_inference import _image, _write_video, run  # noqa: F401 - `run`: the tiny trained run fixture

H, W = 64, 128


def _label_ids(model, image) -> np.ndarray:
    """What a single-image predict writes as labelIds for ``image`` (a path or an RGB array)."""
    return train_ids_to_cityscapes(predict(model, image).numpy().astype(np.uint8))


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _lines(text: str, prefix: str = "failed: ") -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def _clean(text: str) -> None:
    assert "/__w/" not in text and "Traceback" not in text and ".cpp" not in text, text


def _photo_folder(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Good images of every mode the reader converts (name -> the RGB it must be read as) and bad
    files (name -> the reason its line must give), all in ``folder``."""
    folder.mkdir(parents=True)
    rgb = _image(H, W, 1)
    good = {}
    Image.fromarray(rgb).save(folder / "rgb.png")
    good["rgb.png"] = rgb
    for name, mode in (("grey.png", "L"), ("palette.png", "P"), ("alpha.png", "RGBA"), ("cmyk.jpg", "CMYK")):
        img = Image.fromarray(_image(H, W, len(good) + 1)).convert(mode)
        img.save(folder / name)
        with Image.open(folder / name) as back:  # the pixels as stored (JPEG is lossy)
            good[name] = np.asarray(back.convert("RGB"))
    deep = np.random.default_rng(7).integers(0, 65536, (H, W, 3)).astype(np.uint16)
    (folder / "rgb16.png").write_bytes(encode_png16_rgb(deep))
    good["rgb16.png"] = (deep >> 8).astype(np.uint8)  # 16-bit colour keeps its top 8 bits
    (folder / "sub").mkdir()
    Image.fromarray(rgb).save(folder / "sub" / "x.jpg")
    with Image.open(folder / "sub" / "x.jpg") as back:
        good["sub/x.jpg"] = np.asarray(back.convert("RGB"))

    bad = {}
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is no image")
    bad["broken.png"] = "not a readable image (unknown format or corrupt data)"
    (folder / "empty.jpg").write_bytes(b"")
    bad["empty.jpg"] = "empty file (0 bytes)"
    for name in ("cut.png", "cut.jpg"):
        Image.fromarray(_image(H, W, 9)).save(folder / name)
        truncate(folder / name, keep=0.5)
        bad[name] = "not a readable image (corrupt or truncated data)"
    Image.fromarray(np.random.default_rng(8).integers(0, 65536, (H, W)).astype(np.uint16)).save(folder / "depth16.png")
    bad["depth16.png"] = ("16-bit single-channel image (PIL mode I;16: a depth or label map?); expected an "
                          "8-bit RGB, greyscale or palette image, or 16-bit RGB")
    Image.fromarray(rgb).save(folder / "locked.png")
    bad["locked.png"] = "permission denied"
    return good, bad


@pytest.fixture
def locked(monkeypatch):
    """Make files named locked.png unreadable: chmod 000, or where that does not stop a reader
    (root), an open that raises PermissionError as the OS would."""
    if os.geteuid() != 0:
        def lock(path: Path) -> None:
            path.chmod(0)
        yield lock
        return
    import PIL.Image

    from cluda_kit.data import datasets

    real_open, real_decoder = PIL.Image.open, datasets._torchvision_decoder()

    def fake_open(fp, *args, **kwargs):
        if Path(str(fp)).name == "locked.png":
            raise PermissionError(13, "Permission denied", str(fp))
        return real_open(fp, *args, **kwargs)

    def fake_decode(path):
        if Path(path).name == "locked.png":
            raise RuntimeError("read_file, /__w/vision/.../read_write_file.cpp:60, Permission denied")
        return real_decoder(path)

    monkeypatch.setattr(PIL.Image, "open", fake_open)
    monkeypatch.setattr(datasets, "_torchvision_decoder", lambda: fake_decode)
    yield lambda path: None


def test_predict_writes_every_good_image_and_names_each_bad_one(run, tmp_path, capsys, locked):
    good, bad = _photo_folder(tmp_path / "photos")
    locked(tmp_path / "photos" / "locked.png")
    out = tmp_path / "out"
    argv = ["predict", str(run), str(tmp_path / "photos"), "--out", str(out), "--batch-size", "3"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    _clean(captured.out + captured.err)
    lines = _lines(captured.err)
    assert sorted(lines) == sorted(f"failed: {tmp_path / 'photos' / name}: {why}" for name, why in bad.items())
    # nothing else on stderr but the progress bar: no decoder's own complaint
    assert [line for line in captured.err.splitlines() if line.strip() and "predict:" not in line] == lines
    assert f"predict: {len(good)} written, 0 skipped (already done), {len(bad)} failed" in captured.out

    model = load_model(run)
    for name, rgb in good.items():
        stem = out / Path(name).with_suffix("")
        written = _read(Path(f"{stem}_labelIds.png"))
        assert np.array_equal(written, _label_ids(model, tmp_path / "photos" / name)), name
        assert np.array_equal(written, _label_ids(model, rgb)), name  # read as documented
        assert Path(f"{stem}_color.png").is_file() and Path(f"{stem}_overlay.png").is_file()
    for name in bad:
        assert not list(out.glob(f"{Path(name).stem}_*")), name
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]

    # a rerun skips what is written and reports the bad files again; --overwrite redoes the rest
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert f"predict: 0 written, {len(good)} skipped (already done), {len(bad)} failed" in captured.out
    assert len(_lines(captured.err)) == len(bad)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before
    for p in before:
        os.utime(p, ns=(0, 0))
    assert main([*argv, "--overwrite"]) == 1
    captured = capsys.readouterr()
    assert f"predict: {len(good)} written, 0 skipped (already done), {len(bad)} failed" in captured.out
    assert all(p.stat().st_mtime_ns > 0 for p in before)

    # only good files: every one skipped, exit 0
    for name in bad:
        (tmp_path / "photos" / name).unlink()
    assert main(argv) == 0
    assert f"0 written, {len(good)} skipped (already done), 0 failed" in capsys.readouterr().out


def test_a_crash_mid_item_leaves_nothing_a_rerun_would_skip(run, tmp_path, capsys, monkeypatch):
    """Each output is written atomically and an image counts as done only with all three: a write
    that dies leaves no partial file, and the rerun redoes that image."""
    from cluda_kit import inference

    (tmp_path / "in").mkdir()
    Image.fromarray(_image(H, W, 3)).save(tmp_path / "in" / "a.png")
    real = inference.atomic_write

    def dying(path, write, **kw):
        if path.name.endswith("_overlay.png"):
            def write(fh, write=write):
                fh.write(b"\x89PNG half")
                raise KeyboardInterrupt  # a kill mid-write, not an error of the item
        return real(path, write, **kw)

    monkeypatch.setattr(inference, "atomic_write", dying)
    assert main(["predict", str(run), str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 130
    left = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert left == ["a_color.png"]  # no half-written overlay, no temporary file
    monkeypatch.setattr(inference, "atomic_write", real)
    capsys.readouterr()
    assert main(["predict", str(run), str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 0
    assert "1 written, 0 skipped" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_color.png", "a_labelIds.png", "a_overlay.png"]


def test_predict_videos_survive_a_corrupt_one(run, tmp_path, capsys):
    pytest.importorskip("av")
    (tmp_path / "clips").mkdir()
    frames = [_image(H, W, 20 + i) for i in range(3)]
    _write_video(tmp_path / "clips" / "good.mp4", frames)
    _write_video(tmp_path / "clips" / "cut.mp4", frames)
    truncate(tmp_path / "clips" / "cut.mp4", keep=0.5)
    (tmp_path / "clips" / "junk.mkv").write_bytes(os.urandom(2000))
    Image.fromarray(_image(H, W, 5)).save(tmp_path / "clips" / "still.png")
    out = tmp_path / "out"
    argv = ["predict", str(run), str(tmp_path / "clips"), "--out", str(out)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    _clean(captured.out + captured.err)
    lines = _lines(captured.err)
    assert len(lines) == 2, lines
    for name in ("cut.mp4", "junk.mkv"):
        assert any(line.startswith(f"failed: {tmp_path / 'clips' / name}: ") and "video" in line for line in lines)
        assert not (out / f"{Path(name).stem}_overlay.mp4").exists()
    assert "2 written, 0 skipped (already done), 2 failed" in captured.out
    assert "1 video(s) (3 frames)" in captured.out
    assert (out / "good_overlay.mp4").is_file() and (out / "still_labelIds.png").is_file()
    assert len(list((out / "good").glob("frame_*_labelIds.png"))) == 3
    assert main(argv) == 1
    assert "0 written, 2 skipped (already done), 2 failed" in capsys.readouterr().out


# --------------------------------------------------------------------------------- prepare
def _prepare(dataset: str, root: Path, capsys, *extra: str) -> tuple[int, str, str]:
    code = main(["prepare", dataset, str(root), "--workers", "1", *extra])
    captured = capsys.readouterr()
    _clean(captured.out + captured.err)
    return code, captured.out, captured.err


def test_prepare_gta_names_each_bad_file_converts_the_rest_and_skips_on_rerun(tmp_path, capsys):
    make_gta_tree(tmp_path, n=6)
    (tmp_path / "labels" / "00001.png").write_bytes(b"corrupt")
    (tmp_path / "labels" / "00002.png").write_bytes(b"")
    Image.fromarray(np.zeros((32, 64), np.uint16)).save(tmp_path / "images" / "00003.png")
    truncate(tmp_path / "images" / "00004.png", keep=0.3)
    code, out, err = _prepare("gta", tmp_path, capsys)
    assert code == 1
    assert sorted(_lines(err)) == sorted([
        f"failed: {tmp_path / 'labels' / '00001.png'}: not a readable label (unknown format or corrupt data)",
        f"failed: {tmp_path / 'labels' / '00002.png'}: empty file (0 bytes)",
        f"failed: {tmp_path / 'images' / '00003.png'}: 16-bit single-channel image (PIL mode I;16: a depth or "
        "label map?); expected an 8-bit RGB, greyscale or palette image, or 16-bit RGB",
        f"failed: {tmp_path / 'images' / '00004.png'}: not a readable image (corrupt or truncated data)",
    ])
    assert "2 written, 0 skipped (already done), 4 failed" in out
    done = sorted(p.name for p in (tmp_path / "labels").glob("*_labelTrainIds.png"))
    assert done == ["00005_labelTrainIds.png", "00006_labelTrainIds.png"]
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "labels").glob("*_labelTrainIds.png")}
    code, out, err = _prepare("gta", tmp_path, capsys)
    assert code == 1 and "0 written, 2 skipped (already done), 4 failed" in out and len(_lines(err)) == 4
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    code, out, _ = _prepare("gta", tmp_path, capsys, "--overwrite")
    assert code == 1 and "2 written, 0 skipped (already done), 4 failed" in out


def test_prepare_synthia_and_cityscapes_bad_files(tmp_path, capsys):
    make_synthia_tree(tmp_path / "syn", n=3)
    truncate(tmp_path / "syn" / "GT" / "LABELS" / "0000001.png", keep=0.5)
    code, out, err = _prepare("synthia", tmp_path / "syn", capsys, "--workers", "2")
    assert code == 1 and "2 written, 0 skipped (already done), 1 failed" in out
    [line] = _lines(err)
    assert line.startswith(f"failed: {tmp_path / 'syn' / 'GT' / 'LABELS' / '0000001.png'}: ")
    code, out, _ = _prepare("synthia", tmp_path / "syn", capsys)
    assert code == 1 and "0 written, 2 skipped (already done), 1 failed" in out

    cs = tmp_path / "cs"
    make_cityscapes_tree(cs, "train", n=3)
    city = cs / "gtFine" / "train" / "aachen"
    (city / "aachen_000001_000019_gtFine_labelIds.png").unlink()
    (city / "aachen_000001_000019_gtFine_polygons.json").write_text('{"imgHeight": 32, "objects": [')
    (cs / "leftImg8bit" / "train" / "aachen" / "aachen_000002_000019_leftImg8bit.png").write_bytes(b"no png")
    code, out, err = _prepare("cityscapes", cs, capsys)
    assert code == 1 and "1 written, 0 skipped (already done), 2 failed" in out
    lines = _lines(err)
    assert len(lines) == 2
    assert any(line.startswith(f"failed: {city / 'aachen_000001_000019_gtFine_polygons.json'}: not a readable "
                               "polygons file") for line in lines)
    assert any(line.startswith(f"failed: {cs / 'leftImg8bit' / 'train' / 'aachen'}/aachen_000002_000019_"
                               "leftImg8bit.png: not a readable image") for line in lines)


# ----------------------------------------------------------------------------------- helper
def _work(item):
    if item == "bad":
        raise ValueError("decode_image, /__w/vision/torchvision/csrc/io/decode_image.cpp:61, Unsupported image")
    if item == "named":
        raise ItemError("named.png: 16-bit image; expected 8-bit RGB")
    return ("written", item) if item != "old" else "skipped"


def test_run_batch_reports_one_line_per_bad_item_and_goes_on(capsys):
    for workers in (1, 2):
        report = run_batch(_work, ["a", "bad", "old", "named", "b"], workers=workers, progress=False)
        assert (report.written, report.skipped, report.values) == (2, 1, ["a", "b"])
        assert report.failed == ["bad: Unsupported image", "named.png: 16-bit image; expected 8-bit RGB"]
        assert report.summary() == "2 written, 1 skipped (already done), 2 failed" and report.exit_code == 1
        assert _lines(capsys.readouterr().err) == [f"failed: {line}" for line in report.failed]
    guarded = BatchReport(1, progress=False)
    with guarded.guard("x.png"):
        raise PermissionError(13, "Permission denied", "x.png")
    assert guarded.failed == ["x.png: permission denied"] and guarded.exit_code == 1
    assert describe(IsADirectoryError(21, "Is a directory", "d.png")) == "a folder, not a file"
