from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from cluda_kit.analysis.plots import (
    class_legend,
    confidence_map,
    debug_figure,
    image_grid,
    mix_grid,
    overlay,
    pca_rgb,
    plot_confusion_matrix,
    plot_curves,
    present_classes,
    to_rgb_uint8,
    uda_step_diagram,
    value_colorbar,
)
from cluda_kit.data.labels import CLASSES, PALETTE


def _png(fig: Figure) -> np.ndarray:
    assert isinstance(fig, Figure)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    img = np.array(Image.open(io.BytesIO(buf.getvalue())))
    assert img.ndim == 3 and img.shape[0] > 10 and img.shape[1] > 10
    return img


def test_to_rgb_uint8_layouts():
    chw = torch.rand(3, 4, 5)
    hwc = chw.permute(1, 2, 0).numpy()
    a, b = to_rgb_uint8(chw), to_rgb_uint8(hwc)
    assert a.shape == (4, 5, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, np.round(hwc * 255).astype(np.uint8))
    u8 = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(u8), u8.permute(1, 2, 0).numpy())
    with pytest.raises(ValueError, match="RGB"):
        to_rgb_uint8(np.zeros((4, 5)))


def test_overlay_palette_at_labels_and_ignore_uncoloured():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (3, 6, 8), dtype=np.uint8)
    label = rng.integers(0, 19, (6, 8))
    label[0, :] = 255
    out = overlay(image, label, alpha=1.0)
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    hwc = image.transpose(1, 2, 0)
    np.testing.assert_array_equal(out[1:], PALETTE[label[1:]])
    np.testing.assert_array_equal(out[0], hwc[0])  # ignore pixels: the image, unchanged
    half = overlay(torch.from_numpy(image).float() / 255, torch.from_numpy(label), alpha=0.5)
    expected = np.round(0.5 * hwc[3, 4].astype(float) + 0.5 * PALETTE[label[3, 4]].astype(float))
    np.testing.assert_allclose(half[3, 4], expected, atol=1)
    np.testing.assert_allclose(half[0], hwc[0], atol=1)


def test_confidence_map():
    probs = torch.softmax(torch.randn(2, 5, 4, 6), 1)
    conf = confidence_map(probs)
    assert conf.shape == (2, 4, 6) and conf.dtype == np.float32
    np.testing.assert_allclose(conf, probs.max(1).values.numpy())
    rgb = confidence_map(probs[0], as_rgb=True)
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8
    viridis = matplotlib.colormaps["viridis"]
    np.testing.assert_allclose(rgb[1, 2], np.array(viridis(float(conf[0, 1, 2]))[:3]) * 255, atol=1)


def test_pca_rgb_line_maps_to_gradient():
    h, w, d = 5, 7, 16
    g = torch.Generator().manual_seed(0)
    origin, direction = torch.randn(d, generator=g), torch.randn(d, generator=g)
    t = torch.linspace(-2.0, 3.0, h * w).reshape(h, w)
    feats = origin[:, None, None] + direction[:, None, None] * t  # all pixels on one line
    out = pca_rgb(feats)
    assert out.shape == (h, w, 3) and out.dtype == np.float64
    assert out.min() >= 0.0 and out.max() <= 1.0
    red = out[..., 0].ravel()
    tn = ((t - t.min()) / (t.max() - t.min())).numpy().ravel()
    # the first component is the position along the line, scaled to [0, 1] (sign fixed)
    assert np.allclose(red, tn, atol=1e-9) or np.allclose(red, 1 - tn, atol=1e-9)
    np.testing.assert_allclose(out[..., 1:], 0.0, atol=1e-12)  # no variance elsewhere
    np.testing.assert_array_equal(pca_rgb(feats), out)  # deterministic


def test_pca_rgb_three_directions_and_sign():
    # pixels spread along 3 orthogonal axes with decreasing variance -> R, G, B follow them
    h, w = 6, 6
    g = torch.Generator().manual_seed(1)
    raw = torch.randn(h * w, 3, generator=g, dtype=torch.float64)
    q = torch.linalg.qr(raw - raw.mean(0))[0]  # zero-mean, exactly uncorrelated columns
    coords = q.T * torch.tensor([[3.0], [2.0], [1.0]], dtype=torch.float64)
    basis = torch.linalg.qr(torch.randn(8, 3, generator=g, dtype=torch.float64))[0]
    feats = (basis @ coords).reshape(8, h, w) + 5.0
    out = pca_rgb(feats)
    for k in range(3):
        corr = np.corrcoef(out.reshape(-1, 3)[:, k], coords[k].numpy())[0, 1]
        assert abs(corr) == pytest.approx(1.0, abs=1e-9)
    # the sign follows the loadings, not the data: negated features give the reversed gradient
    np.testing.assert_allclose(pca_rgb(-feats), 1.0 - out, atol=1e-9)


def test_image_grid_and_mix_grid_render():
    img = torch.rand(3, 16, 32)
    label = torch.randint(0, 19, (16, 32))
    label[:2] = 255
    fig = image_grid([[img, label], [torch.rand(16, 32), None]], [["a", "b"], ["c", ""]],
                     suptitle="grid")
    axes = fig.get_axes()
    assert len(axes) == 4
    # the label cell is shown as palette colours, ignore black
    shown = axes[1].get_images()[0].get_array()
    np.testing.assert_array_equal(shown[5, 3], PALETTE[label[5, 3]])
    np.testing.assert_array_equal(shown[0, 0], [0, 0, 0])
    assert axes[0].get_title() == "a"
    _png(fig)
    b = 3
    mask = (torch.rand(b, 1, 16, 32) > 0.5).float()
    fig = mix_grid(torch.rand(b, 3, 16, 32), torch.rand(b, 3, 16, 32), mask,
                   torch.rand(b, 3, 16, 32), torch.randint(0, 19, (b, 16, 32)), max_images=2)
    assert len(fig.get_axes()) == 10
    _png(fig)


def test_debug_figure_renders():
    b, h, w = 2, 16, 16
    fig = debug_figure(
        torch.rand(b, 3, h, w), torch.randint(0, 19, (b, h, w)), torch.rand(b, 3, h, w),
        torch.randint(0, 19, (b, h, w)), torch.rand(b, h, w), torch.rand(b, 3, h, w),
        torch.randint(0, 19, (b, h, w)), torch.randn(b, 19, h, w), max_images=2, suptitle="it 10",
    )
    assert len(fig.get_axes()) == 16
    _png(fig)


def test_plot_confusion_matrix_normalised_rows():
    cm = np.zeros((19, 19), dtype=np.int64)
    cm[0, 0], cm[0, 1], cm[2, 2] = 3, 1, 5
    fig = plot_confusion_matrix(cm, CLASSES)
    data = fig.get_axes()[0].get_images()[0].get_array()
    assert data[0, 0] == pytest.approx(0.75) and data[0, 1] == pytest.approx(0.25)
    assert np.ma.is_masked(data[1, 1]) or np.isnan(data[1, 1])  # absent class: blank row
    _png(fig)
    _png(plot_confusion_matrix(torch.from_numpy(cm), CLASSES, normalize=False))
    with pytest.raises(ValueError, match="class names"):
        plot_confusion_matrix(cm[:3, :3], CLASSES)


def test_plot_curves_selects_keys_by_prefix():
    records = [
        {"iter": 0, "loss": 2.0, "loss_src": 1.5, "lr": 1e-4},
        {"iter": 10, "loss": 1.0, "loss_src": 0.8},
        {"iter": 10, "miou": 0.3, "iou": [0.1, 0.5]},
        {"note": "no iter"},
    ]
    fig = plot_curves(records, keys=("loss", "miou", "acc"))
    ax_loss, ax_miou, ax_acc = fig.get_axes()
    lines = {ln.get_label(): ln for ln in ax_loss.get_lines()}
    assert set(lines) == {"loss", "loss_src"}
    np.testing.assert_array_equal(lines["loss"].get_xdata(), [0, 10])
    np.testing.assert_array_equal(lines["loss_src"].get_ydata(), [1.5, 0.8])
    assert [list(ln.get_ydata()) for ln in ax_miou.get_lines()] == [[0.3]]
    assert ax_acc.get_lines() == [] and ax_acc.texts
    _png(fig)


def test_present_classes_in_order_with_ignore_last():
    a = torch.tensor([[13, 0], [255, 2]])
    b = np.array([[2, 18], [7, 0]], dtype=np.uint8)
    assert present_classes(a, b) == [0, 2, 7, 13, 18, 255]
    assert present_classes(a, keep_ignore=False) == [0, 2, 13]


def test_class_legend_below_a_grid_keeps_the_panels():
    label = torch.zeros(16, 32, dtype=torch.long)
    label[:4], label[4:8], label[-2:] = 10, 13, 255
    fig = image_grid([[torch.rand(3, 16, 32), label]], cell_size=1.5)
    width, height = fig.get_size_inches()
    panels = [ax.get_position().height * height for ax in fig.axes]
    handles = class_legend(fig, present_classes(label))
    assert [h.get_label() for h in handles] == ["road", "sky", "car", "ignore (255)"]
    np.testing.assert_allclose(handles[2].get_facecolor()[:3], PALETTE[13] / 255)
    np.testing.assert_allclose(handles[3].get_facecolor()[:3], 0.0)
    assert fig.get_size_inches()[0] == width and fig.get_size_inches()[1] > height
    np.testing.assert_allclose([ax.get_position().height * fig.get_size_inches()[1] for ax in fig.axes], panels)
    fig.draw_without_rendering()  # the legend lies in the new strip, below every panel
    assert fig.legends[0].get_window_extent().y1 <= min(ax.get_window_extent().y0 for ax in fig.axes) + 1
    _png(fig)


def test_class_legend_on_axes_and_unknown_class():
    ax = Figure().subplots()
    handles = class_legend(ax, [5, 11], loc="upper right")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [CLASSES[5], CLASSES[11]] == [h.get_label() for h in handles]
    with pytest.raises(ValueError, match="class 19"):
        class_legend(ax, [19])


def test_value_colorbar_right_of_the_panels():
    fig = image_grid([[torch.rand(16, 32), torch.rand(16, 32)]], cell_size=1.5)
    width = fig.get_size_inches()[0]
    bar = value_colorbar(fig, "confidence p", axes=[fig.axes[1]])
    assert fig.get_size_inches()[0] > width
    assert bar.ax.get_ylabel() == "confidence p" and bar.mappable.get_clim() == (0.0, 1.0)
    assert bar.mappable.get_cmap().name == "viridis"
    assert bar.ax.get_position().x0 > max(ax.get_position().x1 for ax in fig.axes[:2])
    _png(fig)


def test_uda_step_diagram_names_every_loss_and_box_kind():
    fig = uda_step_diagram()
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    for term in ("CE(source)", "contrastive(source)", "feature distance", "CE(mixed)", "contrastive(mixed)",
                 "EMA teacher", "pseudo-labels", "ClassMix", "EMA update"):
        assert term in texts
    assert [t.get_text() for t in fig.legends[0].get_texts()][-1] == "loss term"
    _png(fig)
