"""The notebooks' small widgets (cluda_kit.analysis.widgets): each control redraws the figure and the
status line with the value computed independently here, and a bad input names its argument."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cluda_kit.analysis.contrastive import loss_range
from cluda_kit.analysis.plots import pca_rgb, to_rgb_uint8
from cluda_kit.models.hrda import max_entropy_window

# ----------------------------------------------------------------------------- τ (notebook 04)


def _grid_batch():
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 3, (1, 6, 8), generator=g)
    features = torch.randn(3, 8, generator=g)[labels].permute(0, 3, 1, 2) + 0.3 * torch.randn(1, 8, 6, 8, generator=g)
    return features, labels


def _span(features, labels, tau, seed=0):
    r = loss_range(features, labels, tau, torch.Generator().manual_seed(seed))
    return r["random"] - r["clustered"]


def test_temperature_explorer_status_is_the_span_of_loss_range():
    from cluda_kit.analysis.widgets import TemperatureExplorer

    f, y = _grid_batch()
    ex = TemperatureExplorer(f, y, temperatures=(0.1, 0.5, 1.0), temperature=1.0)
    assert "cluda-temperatures" in ex.widget._dom_classes
    for widget, css in ((ex.slider, "cluda-temperature"), (ex.plot, "cluda-plot"), (ex.status, "cluda-status")):
        assert css in widget._dom_classes
    at_1 = _span(f, y, 1.0)
    assert ex.span(1.0) == pytest.approx(at_1)
    assert f"span (random − clustered) {at_1:.2f} nats" in ex.status.value
    png_1 = ex.plot.outputs[0]["data"]["image/png"]

    ex.slider.value = 0.1
    at_01 = _span(f, y, 0.1)
    assert ex.status.value.startswith("τ = 0.1 ·")
    assert f"span (random − clustered) {at_01:.2f} nats" in ex.status.value
    assert at_01 > 2 * at_1  # the notebook's lesson: at τ = 1 the loss has little room to fall
    assert ex.plot.outputs[0]["data"]["image/png"] != png_1

    fig = ex.figure()
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    expected = [loss_range(f, y, t, torch.Generator().manual_seed(0))["random"] for t in (0.1, 0.5, 1.0)]
    assert np.allclose(lines["random embedding (the start)"].get_ydata(), expected)
    marker = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == ":"]
    assert len(marker) == 1 and list(marker[0].get_xdata()) == [0.1, 0.1]


def test_temperature_explorer_rejects_bad_inputs_and_reports_errors():
    from cluda_kit.analysis.widgets import TemperatureExplorer

    f, y = _grid_batch()
    with pytest.raises(ValueError, match="features must be"):
        TemperatureExplorer(f[0], y)
    with pytest.raises(ValueError, match="labels must be"):
        TemperatureExplorer(f, y[:, :5])
    with pytest.raises(ValueError, match="temperatures must be positive"):
        TemperatureExplorer(f, y, temperatures=(0.0, 1.0))
    with pytest.raises(ValueError, match="temperature 0.3 is not one of"):
        TemperatureExplorer(f, y, temperatures=(0.1, 1.0), temperature=0.3)
    ex = TemperatureExplorer(f, y, temperatures=(0.1, 1.0))
    with pytest.raises(ValueError, match="tau must be positive"):
        ex.loss_range(-1.0)
    ex.ranges.clear()
    ex.features = torch.zeros(1, 8, 2, 2)  # no longer matches the labels
    ex.slider.value = 0.1
    assert ex.status.value.startswith("error: ")


# ----------------------------------------------------------------------------- feature maps (notebook 03)


def _maps():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 16, 32, generator=g)
    maps = {"stage 1": torch.randn(2, 4, 4, 8, generator=g), "fused": torch.randn(2, 5, 8, 16, generator=g)}
    labels = torch.randint(0, 19, (2, 16, 32), generator=g)
    return images, maps, labels


def test_feature_map_explorer_draws_the_pca_of_the_selected_map_and_image():
    from cluda_kit.analysis.widgets import FeatureMapExplorer

    images, maps, labels = _maps()
    ex = FeatureMapExplorer(images, maps, labels=labels)
    assert "cluda-feature-maps" in ex.widget._dom_classes
    for widget, css in ((ex.map_select, "cluda-map"), (ex.image_select, "cluda-image"), (ex.plot, "cluda-plot"),
                        (ex.status, "cluda-status")):
        assert css in widget._dom_classes
    assert ex.status.value == "fused · image 0 · 5 ch, 8×16 (stride 2)"
    shown = lambda fig: fig.axes[2].images[0].get_array()  # noqa: E731  image | ground truth | PCA map
    assert np.array_equal(shown(ex.figure()), to_rgb_uint8(pca_rgb(maps["fused"][0])))

    ex.map_select.value = "stage 1"
    ex.image_select.value = 1
    assert ex.status.value == "stage 1 · image 1 · 4 ch, 4×8 (stride 4)"
    fig = ex.figure()
    assert np.array_equal(shown(fig), to_rgb_uint8(pca_rgb(maps["stage 1"][1])))
    assert np.array_equal(fig.axes[0].images[0].get_array(), to_rgb_uint8(images[1]))
    assert fig.axes[2].get_title() == "stage 1: 4 ch, 4×8 (PCA → RGB)"

    out = SimpleNamespace(stages=[maps["stage 1"], maps["stage 1"]], fused=maps["fused"])
    assert list(FeatureMapExplorer.from_output(images, out).maps) == ["stage 1", "stage 2", "fused"]


def test_feature_map_explorer_rejects_bad_inputs():
    from cluda_kit.analysis.widgets import FeatureMapExplorer

    images, maps, labels = _maps()
    with pytest.raises(ValueError, match="images must be"):
        FeatureMapExplorer(images[0], maps)
    with pytest.raises(ValueError, match=r"maps\['fused'\] holds 1 images"):
        FeatureMapExplorer(images, {**maps, "fused": maps["fused"][:1]})
    with pytest.raises(ValueError, match="maps is empty"):
        FeatureMapExplorer(images, {})
    with pytest.raises(ValueError, match="labels must be"):
        FeatureMapExplorer(images, maps, labels=labels[:, :8])
    with pytest.raises(ValueError, match="map_name 'stage 9'"):
        FeatureMapExplorer(images, maps, map_name="stage 9")
    ex = FeatureMapExplorer(images, maps)
    with pytest.raises(ValueError, match="image index 2"):
        ex.rgb("fused", 2)


# ----------------------------------------------------------------------------- HRDA window (notebook 07)

WINDOW, STRIDE, DIVISIBLE = (16, 32), (8, 16), 8


def _context():
    """Two 32×64 crops whose context logits are confident except in one quarter each: the top right
    of image 0, the bottom left of image 1."""
    logits = torch.zeros(2, 4, 8, 16)
    logits[:, 0] = 10.0
    logits[0, :, :4, 8:] = 0.0
    logits[1, :, 4:, :8] = 0.0
    images = torch.rand(2, 3, 32, 64, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(2, 32, 64, dtype=torch.long)
    return images, logits, labels


def test_entropy_window_explorer_shows_each_images_max_entropy_window():
    from cluda_kit.analysis.widgets import EntropyWindowExplorer

    images, logits, labels = _context()
    boxes = max_entropy_window(logits, (32, 64), WINDOW, STRIDE, DIVISIBLE, per_image=True)
    assert boxes == [(0, 32, 16, 64), (16, 0, 32, 32)]  # over the uncertain quarter of each image
    ex = EntropyWindowExplorer(images, logits, window=WINDOW, stride=STRIDE, divisible=DIVISIBLE, labels=labels)
    assert "cluda-entropy-window" in ex.widget._dom_classes
    for widget, css in ((ex.image_select, "cluda-image"), (ex.plot, "cluda-plot"), (ex.status, "cluda-status")):
        assert css in widget._dom_classes
    assert "max-entropy window (y0, x0, y1, x1) = (0, 32, 16, 64)" in ex.status.value
    assert ex.window_entropy(0) > 0.9 * np.log(4)  # nearly uniform inside the window

    ex.image_select.value = 1
    assert ex.status.value.startswith("image 1 · max-entropy window (y0, x0, y1, x1) = (16, 0, 32, 32)")
    panels = [ax for ax in ex.figure().axes if ax.images]  # image, entropy, ground truth (not the colourbar)
    assert [ax.get_title() for ax in panels] == ["image 1", "prediction entropy of the context logits", "ground truth"]
    for ax in panels:
        (rect,) = ax.patches
        assert (rect.get_x(), rect.get_y(), rect.get_width(), rect.get_height()) == (-0.5, 15.5, 32, 16)
    assert np.allclose(panels[1].images[0].get_array(), ex.entropy[1].numpy())


def test_entropy_window_explorer_rejects_bad_inputs():
    from cluda_kit.analysis.widgets import EntropyWindowExplorer

    images, logits, labels = _context()
    kw = dict(window=WINDOW, stride=STRIDE, divisible=DIVISIBLE)
    with pytest.raises(ValueError, match="context_logits holds 1 images"):
        EntropyWindowExplorer(images, logits[:1], **kw)
    with pytest.raises(ValueError, match="context_logits must be"):
        EntropyWindowExplorer(images, logits[0], **kw)
    with pytest.raises(ValueError, match="window must be two positive sizes"):
        EntropyWindowExplorer(images, logits, window=(16,), stride=STRIDE)
    with pytest.raises(ValueError, match="labels must be"):
        EntropyWindowExplorer(images, logits, labels=labels[0], **kw)
    with pytest.raises(ValueError, match="image_index 5"):
        EntropyWindowExplorer(images, logits, image_index=5, **kw)
