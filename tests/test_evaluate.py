from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cluda_kit.engine.evaluate import (
    ConfusionMeter,
    confusion_matrix,
    evaluate,
    format_iou_table,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
    predict_slide,
    predict_whole,
    run_cityscapes_evaluator,
    save_cityscapes_predictions,
)


def _random_maps(c: int, shape: tuple[int, ...], seed: int, ignore_frac: float = 0.2):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, c, size=shape)
    target[rng.random(shape) < ignore_frac] = 255
    pred = np.where(rng.random(shape) < 0.5, target, rng.integers(0, c, size=shape))
    pred[target == 255] = rng.integers(0, c, size=int((target == 255).sum()))
    return pred, target


def _loop_scores(pred: np.ndarray, target: np.ndarray, c: int):
    """Slow reference: cm by a pixel loop, IoU per class by counting TP/FP/FN masks."""
    cm = np.zeros((c, c), dtype=np.int64)
    for p, t in zip(pred.ravel().tolist(), target.ravel().tolist()):
        if t != 255:
            cm[t, p] += 1
    valid = target != 255
    iou = []
    for k in range(c):
        tp = np.sum((pred == k) & (target == k) & valid)
        fp = np.sum((pred == k) & (target != k) & valid)
        fn = np.sum((pred != k) & (target == k) & valid)
        iou.append(tp / (tp + fp + fn) if tp + fp + fn > 0 else math.nan)
    return cm, np.array(iou)


def test_confusion_matrix_and_iou_match_loop_reference():
    c = 5
    pred, target = _random_maps(c, (2, 7, 9), seed=0)
    cm = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), c)
    ref_cm, ref_iou = _loop_scores(pred, target, c)
    assert cm.dtype == torch.int64 and cm.shape == (c, c)
    np.testing.assert_array_equal(cm.numpy(), ref_cm)
    iou = iou_per_class(cm)
    assert iou.dtype == np.float64
    np.testing.assert_allclose(iou, ref_iou, rtol=0, atol=1e-12)
    assert mean_iou(cm) == pytest.approx(float(np.mean(ref_iou)), abs=1e-12)
    valid = target != 255
    assert pixel_accuracy(cm) == pytest.approx(np.mean(pred[valid] == target[valid]))
    # numpy input gives the same scores
    np.testing.assert_allclose(iou_per_class(cm.numpy()), iou)


def test_golden_small_case():
    pred = torch.tensor([0, 0, 1, 1, 2])
    target = torch.tensor([0, 1, 1, 255, 255])
    cm = confusion_matrix(pred, target, 3)
    np.testing.assert_array_equal(cm.numpy(), [[1, 0, 0], [1, 1, 0], [0, 0, 0]])
    iou = iou_per_class(cm)
    # class 0: tp 1, fp 1 -> 1/2; class 1: tp 1, fn 1 -> 1/2;
    # class 2 only predicted at an ignored pixel -> nan
    np.testing.assert_allclose(iou[:2], [0.5, 0.5])
    assert math.isnan(iou[2])
    assert mean_iou(cm) == pytest.approx(0.5)
    assert pixel_accuracy(cm) == pytest.approx(2 / 3)


def test_nan_for_absent_class_and_zero_for_false_positive_only():
    c = 4
    target = torch.tensor([[0, 0, 1, 1], [0, 1, 255, 255]])
    pred = torch.tensor([[0, 3, 1, 1], [0, 1, 255, 0]])  # 255 only at an ignored pixel
    cm = confusion_matrix(pred, target, c)
    iou = iou_per_class(cm)
    assert math.isnan(iou[2])  # never in GT nor predicted
    assert iou[3] == 0.0  # predicted once, never in GT
    np.testing.assert_allclose(iou[:2], [2 / 3, 1.0])
    assert mean_iou(cm) == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    assert mean_iou(cm, classes=[1, 2]) == pytest.approx(1.0)
    assert math.isnan(mean_iou(cm, classes=[2]))
    assert math.isnan(mean_iou(torch.zeros(3, 3, dtype=torch.long)))


def test_subset_miou_equals_mean_over_subset():
    c = 19
    pred, target = _random_maps(c, (3, 16, 16), seed=1)
    cm = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), c)
    _, ref_iou = _loop_scores(pred, target, c)
    synthia16 = [k for k in range(c) if k not in (9, 14, 16)]
    synthia13 = [k for k in synthia16 if k not in (3, 4, 5)]
    assert mean_iou(cm, synthia16) == pytest.approx(float(np.mean(ref_iou[synthia16])))
    assert mean_iou(cm, synthia13) == pytest.approx(float(np.mean(ref_iou[synthia13])))
    assert mean_iou(cm, synthia13) != pytest.approx(mean_iou(cm))


def test_confusion_matrix_rejects_out_of_range_values():
    target = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        confusion_matrix(torch.tensor([0, 255, 1]), target, 3)
    with pytest.raises(ValueError, match="target values"):
        confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 7, 1]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.tensor([0, 1]), target, 3)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(torch.tensor([0.0, 1.0, 1.0]), target, 3)


def test_confusion_meter_accumulation_equals_one_shot():
    c = 6
    pred, target = _random_maps(c, (4, 10, 11), seed=2)
    pred_t, target_t = torch.from_numpy(pred), torch.from_numpy(target)
    one_shot = confusion_matrix(pred_t, target_t, c)
    meter = ConfusionMeter(c)
    assert meter.cm.sum() == 0
    for i in range(4):
        meter.update(pred_t[i], target_t[i])
        if i == 1:
            meter.sync()
    meter.sync()
    meter.sync()  # idempotent: nothing pending
    assert torch.equal(meter.cm, one_shot)
    np.testing.assert_allclose(meter.iou(), iou_per_class(one_shot))
    assert meter.miou([0, 2]) == pytest.approx(mean_iou(one_shot, [0, 2]))
    assert meter.pixel_accuracy() == pytest.approx(pixel_accuracy(one_shot))
    meter.reset()
    assert meter.cm.sum() == 0


# ---------------------------------------------------------------------------- inference


@dataclass
class _Out:
    logits: torch.Tensor


class _Strided(nn.Module):
    """Not translation-equivariant: stride-4 conv plus a global-mean term."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 4, stride=4)

    def forward(self, x):
        y = self.conv(x)
        return _Out(y + y.mean((2, 3), keepdim=True))


def test_whole_inference_upsamples_stride4_logits():
    torch.manual_seed(0)
    model = _Strided(5)
    x = torch.randn(2, 3, 16, 24)
    out = predict_whole(model, x, 5)
    assert out.shape == (2, 5, 16, 24)
    ref = nn.functional.interpolate(
        model(x).logits, size=(16, 24), mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match="num_classes=4"):
        predict_whole(model, x, 4)


def test_slide_with_window_covering_image_equals_whole():
    torch.manual_seed(0)
    model = _Strided(5)
    x = torch.randn(2, 3, 16, 24)
    whole = predict_whole(model, x, 5)
    for window in [(16, 24), (32, 40)]:  # exact size, and larger than the image (clipped)
        torch.testing.assert_close(predict_slide(model, x, 5, window, (8, 8)), whole)


def test_slide_of_pointwise_model_equals_whole_with_overlap():
    torch.manual_seed(0)
    model = nn.Conv2d(3, 7, 1)  # translation-equivariant, no context
    x = torch.randn(2, 3, 19, 29)
    whole = predict_whole(model, x, 7)
    for batch_windows in (1, 4):
        out = predict_slide(model, x, 7, (8, 12), (5, 7), batch_windows=batch_windows)
        torch.testing.assert_close(out, whole, rtol=1e-5, atol=1e-6)


def test_slide_count_normalisation_at_borders():
    # H=10, window 6, stride 3 -> rows [0,6), [3,9), [4,10) (last aligned to the border);
    # W=7, window 4, stride 3 -> cols [0,4), [3,7). Row-major order, 6 windows.
    rows = [(0, 6), (3, 9), (4, 10)]
    cols = [(0, 4), (3, 7)]
    calls = []

    def forward(x):
        k = len(calls)
        calls.append(tuple(x.shape[-2:]))
        return torch.full((x.shape[0], 1, x.shape[2], x.shape[3]), float(2**k))

    out = predict_slide(forward, torch.zeros(1, 3, 10, 7), 1, (6, 4), (3, 3))[0, 0]
    assert calls == [(6, 4)] * 6
    expected = torch.zeros(10, 7)
    count = torch.zeros(10, 7)
    for k, ((y0, y1), (x0, x1)) in enumerate([(r, c) for r in rows for c in cols]):
        expected[y0:y1, x0:x1] += 2**k
        count[y0:y1, x0:x1] += 1
    torch.testing.assert_close(out, expected / count)
    assert out[0, 0] == 1.0  # only window 0
    assert out[9, 6] == 32.0  # only the last, border-aligned window
    assert out[4, 3] == pytest.approx(sum(2**k for k in range(6)) / 6)  # all six overlap


def _loader(n_batches: int, b: int, h: int, w: int, c: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(n_batches):
        label = torch.randint(0, c, (b, h, w), generator=g)
        label[torch.rand(b, h, w, generator=g) < 0.1] = 255
        image = torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)
        batches.append({"image": image, "label": label, "name": [f"img{i}_{j}" for j in range(b)]})
    return batches


def test_evaluate_matches_manual_confusion_and_restores_mode():
    torch.manual_seed(0)
    c = 4
    model = nn.Sequential(nn.Conv2d(3, c, 1), nn.Dropout(0.5))
    model.train()
    loader = _loader(2, 2, 12, 20, c, seed=3)
    norm = lambda x: (x - 0.5) / 0.25  # noqa: E731
    seen = []
    result = evaluate(model, loader, c, normalize=norm, progress=False,
                      callback=lambda batch, pred: seen.append(pred))
    assert model.training
    model.eval()
    with torch.no_grad():
        ref = sum(
            confusion_matrix(model(norm(bt["image"].float() / 255)).argmax(1), bt["label"], c)
            for bt in loader
        )
    assert torch.equal(result["cm"], ref)
    assert result["miou"] == pytest.approx(mean_iou(ref))
    np.testing.assert_allclose(result["iou"], iou_per_class(ref))
    assert result["pixel_accuracy"] == pytest.approx(pixel_accuracy(ref))
    assert len(seen) == 2 and seen[0].shape == (2, 12, 20)
    slide = evaluate(model, loader, c, mode="slide", window=(8, 8), stride=(4, 6),
                     normalize=norm, progress=False, classes=[0, 1])
    assert torch.equal(slide["cm"], ref)
    assert slide["miou"] == pytest.approx(mean_iou(ref, [0, 1]))
    with pytest.raises(ValueError, match="window"):
        evaluate(model, loader, c, mode="slide", normalize=norm, progress=False)


def test_evaluate_default_normalize_and_label_resize():
    from cluda_kit.data.transforms import normalize

    torch.manual_seed(0)
    c = 3
    model = nn.Conv2d(3, c, 1)
    batch = _loader(1, 1, 8, 8, c, seed=4)[0]
    big_label = batch["label"].repeat_interleave(2, 1).repeat_interleave(2, 2)  # (1, 16, 16)
    result = evaluate(model, [{"image": batch["image"], "label": big_label}], c, progress=False)
    with torch.no_grad():
        logits = model(normalize(batch["image"].float() / 255))
    logits = nn.functional.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.equal(result["cm"], confusion_matrix(logits.argmax(1), big_label, c))


def test_format_iou_table():
    iou = [0.5, 0.25, math.nan, 1.0]
    names = ["road", "sidewalk", "building", "wall"]
    table = format_iou_table(iou, names, subsets={"mIoU2": [0, 1]})
    lines = table.splitlines()
    assert any(ln.startswith("road") and ln.endswith("50.00") for ln in lines)
    assert any(ln.startswith("building") and ln.endswith("-") for ln in lines)
    assert any(ln.startswith("mIoU ") and ln.endswith("58.33") for ln in lines)  # (50+25+100)/3
    assert any(ln.startswith("mIoU2") and ln.endswith("37.50") for ln in lines)
    sub = format_iou_table(iou, names, classes=[1, 3])
    assert "road" not in sub and sub.splitlines()[-1].endswith("62.50")
    with pytest.raises(ValueError, match="4 class names"):
        format_iou_table(iou[:3], names)


# ---------------------------------------------------------------------------- official evaluator


def test_official_cityscapes_evaluator_agrees(tmp_path):
    from cityscapesscripts.helpers.labels import labels as cs_labels

    id_to_train = np.full(256, 255, dtype=np.int64)
    for lab in cs_labels:
        if lab.id >= 0 and 0 <= lab.trainId < 255:
            id_to_train[lab.id] = lab.trainId
    rng = np.random.default_rng(5)
    # every labelId 0..33 (ignored ones included) except train (31): train is then absent in GT
    # and never predicted -> nan in both; bus (28) never in GT but predicted -> IoU 0 in both.
    gt_ids = np.array([i for i in range(34) if i not in (31, 28)])
    names = ["frankfurt_000000_000019", "lindau_000001_000019"]
    preds, targets = [], []
    for name in names:
        city = name.split("_")[0]
        gt = rng.choice(gt_ids, size=(64, 128)).astype(np.uint8)
        folder = tmp_path / "gtFine" / "val" / city
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gt).save(folder / f"{name}_gtFine_labelIds.png")
        target = id_to_train[gt]
        noise = rng.choice([k for k in range(19) if k != 16], size=gt.shape)
        pred = np.where((rng.random(gt.shape) < 0.6) & (target != 255), target, noise)
        preds.append(pred)
        targets.append(target)
    preds_t = torch.from_numpy(np.stack(preds))
    paths = save_cityscapes_predictions(preds_t, [f"{city}/{n}_leftImg8bit" for city, n in
                                                  zip(["frankfurt", "lindau"], names)],
                                        tmp_path / "results")
    assert [p.name for p in paths] == [f"{n}_pred_labelIds.png" for n in names]
    official = run_cityscapes_evaluator(tmp_path, tmp_path / "results")
    cm = confusion_matrix(preds_t, torch.from_numpy(np.stack(targets)), 19)
    kit_iou = iou_per_class(cm)
    assert official["num_images"] == 2
    assert math.isnan(official["iou"][16]) and math.isnan(kit_iou[16])
    assert official["iou"][15] == 0.0 == kit_iou[15]
    np.testing.assert_allclose(official["iou"], kit_iou, atol=1e-12)
    assert official["miou"] == pytest.approx(mean_iou(cm), abs=1e-12)


def test_save_cityscapes_predictions_validates(tmp_path):
    with pytest.raises(ValueError, match="<city>"):
        save_cityscapes_predictions([np.zeros((2, 2), dtype=np.int64)], ["img0"], tmp_path)
    with pytest.raises(ValueError, match="1 predictions for 2 names"):
        save_cityscapes_predictions([np.zeros((2, 2), dtype=np.int64)],
                                    ["a_000000_000001", "a_000000_000002"], tmp_path)
    path = save_cityscapes_predictions(
        [np.array([[0, 18], [255, 13]])], ["aachen_000000_000001_leftImg8bit.png"], tmp_path
    )[0]
    np.testing.assert_array_equal(np.array(Image.open(path)), [[7, 33], [0, 26]])
    with pytest.raises(FileNotFoundError, match="no ground truth"):
        run_cityscapes_evaluator(tmp_path, tmp_path)


def test_one_window_grid_for_evaluation_and_hrda():
    """models/sliding.py is the one window grid: every pixel covered (stride <= window), the last window flush with
    the border, a window larger than the axis clipped to it, and the same spans the evaluation's
    own formula gave before (mmseg slide_inference: n = ceil((size - window) / stride) + 1)."""
    from cluda_kit.models.hrda import window_starts as hrda_starts
    from cluda_kit.models.sliding import window_spans, window_starts

    assert hrda_starts is window_starts
    for size in (1, 5, 64, 100, 511, 512, 1024, 2048):
        for window in (1, 3, 64, 512, 1024, 4096):
            for stride in (1, 2, 48, 256, 341, 512):
                spans = window_spans(size, window, stride)
                old = [(max(min(i * stride + window, size) - window, 0), min(i * stride + window, size))
                       for i in range(max(size - window + stride - 1, 0) // stride + 1)]
                assert spans == old, (size, window, stride)
                covered = set()
                for a, b in spans:
                    assert b - a == min(window, size) and 0 <= a < b <= size
                    covered.update(range(a, b))
                assert spans[-1][1] == size
                if stride <= window:  # overlapping or touching windows leave no gap
                    assert covered == set(range(size))


def test_synthia_runs_report_miou16_and_miou13_beside_miou19():
    """Synthia->Cityscapes is reported on 16 and 13 classes: the evaluation record, summary.json,
    TensorBoard (every numeric record key) and the printed table carry mIoU16 / mIoU13 for a
    SYNTHIA source, and nothing extra for others."""
    import dataclasses

    from cluda_kit.config import load_config
    from cluda_kit.data.labels import SYNTHIA13, SYNTHIA16
    from cluda_kit.engine.evaluate import mean_iou, subset_mious
    from cluda_kit.engine.trainer import Trainer, print_summary

    g = torch.Generator().manual_seed(0)
    cm = torch.randint(0, 50, (19, 19), generator=g) + torch.diag(torch.randint(50, 200, (19,), generator=g))
    got = subset_mious(cm, "synthia")
    iou = (cm.diag() / (cm.sum(0) + cm.sum(1) - cm.diag())).double()
    assert got["miou16"] == pytest.approx(iou[list(SYNTHIA16)].mean().item())
    assert got["miou13"] == pytest.approx(iou[list(SYNTHIA13)].mean().item())
    assert len(SYNTHIA16) == 16 and len(SYNTHIA13) == 13 and subset_mious(cm, "gta") == {}
    assert mean_iou(cm) == pytest.approx(iou.mean().item())

    cfg = load_config("miniscapes_tiny", ["train.max_iters=1", "train.eval_every=1"])
    trainer = Trainer(cfg, progress=False)
    plain = trainer._eval_record()
    assert "miou16" not in plain
    trainer.cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, source=dataclasses.replace(cfg.data.source, name="synthia")))
    record = trainer._eval_record()
    ious = [record["iou"][c] for c in record["iou"]]
    for key, ids in (("miou16", SYNTHIA16), ("miou13", SYNTHIA13)):
        vals = [ious[i] for i in ids if ious[i] is not None]
        assert record[key] == pytest.approx(sum(vals) / len(vals))
    table = print_summary(record).splitlines()
    assert table[-2].split()[0] == "mIoU16" and float(table[-2].split()[1]) == pytest.approx(record["miou16"], abs=0.006)
    assert table[-1].split()[0] == "mIoU13"


def test_paper_protocol_scores_upsampled_predictions_against_full_resolution_labels(tmp_path, capsys):
    """data.val.resize_label=false (the 512-scale paper presets): the network sees the resized
    image, its prediction is upsampled to the full-resolution label; `cluda-kit evaluate` prints
    that mIoU and also the one against labels resized with the image."""
    import re

    from fake_data import make_cityscapes_tree

    from cluda_kit.cli import main as cli_main
    from cluda_kit.config import load_config
    from cluda_kit.data.datasets import build_dataset

    assert load_config("gta2cs_daformer_cluda").data.val.resize_label is False
    from cluda_kit.data.prepare import prepare

    make_cityscapes_tree(tmp_path / "cs", "val", n=2, h=128, w=256)
    prepare("cityscapes", tmp_path / "cs", progress=False)
    spec = {"name": "cityscapes", "root": str(tmp_path / "cs"), "split": "val", "size": (64, 128)}
    full = build_dataset({**spec, "resize_label": False})[0]
    small = build_dataset(spec)[0]
    assert tuple(full["image"].shape) == (3, 64, 128) and tuple(full["label"].shape) == (128, 256)
    assert tuple(small["label"].shape) == (64, 128) and torch.equal(small["image"], full["image"])

    run = tmp_path / "run"
    val = [f"data.val.name=cityscapes", f"data.val.root={tmp_path / 'cs'}", "data.val.split=val",
           "data.val.resize=[64,128]", "data.val.resize_label=false", "data.val_length=null"]
    args = ["train", "miniscapes_tiny", "--out", str(run), "--set", "train.max_iters=1",
            "--set", "train.eval_every=0", "--set", "train.checkpoint_every=0"]
    for v in val:
        args += ["--set", v]
    assert cli_main(args) == 0
    capsys.readouterr()
    assert cli_main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    m = re.search(r"mIoU (\d+\.\d\d) against the full-resolution labels .*; (\d+\.\d\d) against labels "
                  r"resized with the image to fit \(64, 128\)", out)
    assert m, out[-500:]
    table_miou = float(re.search(r"^mIoU\s+(\d+\.\d\d)", out, flags=re.M).group(1))
    assert float(m.group(1)) == table_miou
