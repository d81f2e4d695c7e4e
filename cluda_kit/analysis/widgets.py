"""Interactive explorer of projected feature spaces (ipywidgets + matplotlib).

:class:`FeatureExplorer` shows t-SNE / UMAP / PCA projections of fused features coloured by class,
with the domain shown by marker and opacity, switchable by model, method, domain and classes.
Projections are cached per (model, method, domains, classes), so going back to a selection is
instant. Every control carries a CSS class (``cluda-model``, ``cluda-method``, ``cluda-domain``,
``cluda-classes``, ``cluda-plot``, ``cluda-status``, all inside ``cluda-explorer``) so browser tests
can find them; the status line names the shown selection once it is drawn.

The notebooks' smaller widgets follow the same pattern (controls with CSS classes, the figure as a
PNG in ``cluda-plot``, a ``cluda-status`` line that shows errors, a pure ``figure`` method):
:class:`MixingExplorer` (01), :class:`PseudoLabelExplorer` (02), :class:`FeatureMapExplorer` (03),
:class:`TemperatureExplorer` (04) and :class:`EntropyWindowExplorer` (07).
"""
from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Mapping, Sequence

import ipywidgets as w
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from cluda_kit.analysis.embedding import METHODS, embed
from cluda_kit.analysis.features import FeatureSet
from cluda_kit.analysis.plots import figure_png

_MARKERS = ("o", "^", "s", "D", "v", "P")
_ALPHAS = (0.45, 0.85, 0.65, 0.65, 0.65, 0.65)


class _BoxedWidget:
    """Shared display plumbing: the explorer's top-level ipywidgets box is ``self._box``, its
    figure goes into ``self.plot`` and its status line is ``self.status``; ``update`` redraws."""

    _box: w.VBox
    plot: w.Output
    status: w.HTML

    @property
    def widget(self) -> w.VBox:
        """The top-level box (controls, plot, status)."""
        return self._box

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self._box)

    def update(self) -> None:
        raise NotImplementedError

    def _show(self, fig: Figure, name: str) -> None:
        """Put ``fig`` into the plot output as a PNG."""
        png = base64.b64encode(figure_png(fig)).decode("ascii")
        self.plot.outputs = ({"output_type": "display_data", "metadata": {},
                              "data": {"image/png": png, "text/plain": f"<Figure {name}>"}},)

    def _assemble(self, controls: Sequence[tuple[w.Widget, str]], box_css: str) -> None:
        """Give each (control, CSS class) its class and stack the controls over the plot output and
        the status line in a box of class ``box_css``; a change of any control's value redraws.
        Then draw."""
        self.status = w.HTML(value="").add_class("cluda-status")
        self.plot = w.Output().add_class("cluda-plot")
        for widget, css in controls:
            widget.add_class(css)
            widget.observe(self._on_change, names="value")
        self._box = w.VBox([*(c for c, _ in controls), self.plot, self.status]).add_class(box_css)
        self.update()

    def _on_change(self, _change) -> None:
        try:
            self.update()
        except Exception as exc:  # shown in the UI: widget callbacks otherwise fail silently
            self.status.value = html.escape(f"error: {type(exc).__name__}: {exc}")


class FeatureExplorer(_BoxedWidget):
    """Projected features of one or more models, coloured by class, switchable in a notebook.

    Args:
        feature_sets: model name -> :class:`FeatureSet` (typically source and target features of
            that model concatenated with ``FeatureSet.concat``).
        class_names: names indexed by trainId; default ``cluda_kit.data.labels.CLASSES``.
        palette: (C, 3) colours indexed by trainId, uint8 0-255 or float 0-1; default
            :data:`cluda_kit.analysis.plots.POINT_PALETTE` (distinct colours).
        methods: projection methods offered (subset of ``"tsne"``, ``"umap"``, ``"pca"``).
        cache: keep computed projections (keyed by model, method, domains, classes).
        seed: random state of the projections.
        embed_kwargs: extra keyword arguments for :func:`cluda_kit.analysis.embed`.

    Attributes:
        projection_calls: number of projections computed so far (cache misses).
    """

    def __init__(self, feature_sets: Mapping[str, FeatureSet], class_names: Sequence[str] | None = None,
                 palette: np.ndarray | Sequence | None = None, *, methods: Sequence[str] = ("tsne", "umap"),
                 cache: bool = True, seed: int = 0, embed_kwargs: Mapping | None = None) -> None:
        if not feature_sets:
            raise ValueError("FeatureExplorer: feature_sets is empty; expected {model name: FeatureSet}")
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            raise ValueError(f"FeatureExplorer: methods must be a non-empty subset of {METHODS}, got {list(methods)}")
        if class_names is None or palette is None:
            from cluda_kit.data import labels as label_table

            class_names = label_table.CLASSES if class_names is None else class_names
            if palette is None:
                from cluda_kit.analysis.plots import POINT_PALETTE

                palette = POINT_PALETTE
        self.feature_sets = dict(feature_sets)
        self.class_names = list(class_names)
        colours = np.asarray(palette, dtype=np.float64)
        self.palette = colours / 255.0 if colours.max() > 1.0 else colours
        self.methods = tuple(methods)
        self.cache = cache
        self.seed = seed
        self.embed_kwargs = dict(embed_kwargs or {})
        self.projection_calls = 0
        self._cache: dict[tuple, np.ndarray] = {}

        self.domain_names: list[str] = []
        for fs in self.feature_sets.values():
            self.domain_names += [d for d in fs.domain_names if d not in self.domain_names]
        self.all_domains = "both" if len(self.domain_names) == 2 else "all"
        classes = sorted({c for fs in self.feature_sets.values() for c in fs.classes})
        missing = [c for c in classes if c >= len(self.class_names) or c >= len(self.palette)]
        if missing:
            raise ValueError(f"FeatureExplorer: classes {missing} have no name/colour "
                             f"({len(self.class_names)} class_names, {len(self.palette)} palette rows)")

        self.model_select = w.Dropdown(options=list(self.feature_sets), description="model")
        self.method_select = w.Dropdown(options=list(self.methods), description="method")
        domain_options = self.domain_names + ([self.all_domains] if len(self.domain_names) > 1 else [])
        self.domain_select = w.ToggleButtons(options=domain_options, value=domain_options[-1],
                                             description="domain")
        self.class_select = w.SelectMultiple(options=[(self.class_names[c], c) for c in classes],
                                             value=tuple(classes), rows=min(10, max(len(classes), 1)),
                                             description="classes")
        self.status = w.HTML(value="")
        self.plot = w.Output()
        for widget, css in ((self.model_select, "cluda-model"), (self.method_select, "cluda-method"),
                            (self.domain_select, "cluda-domain"), (self.class_select, "cluda-classes"),
                            (self.status, "cluda-status"), (self.plot, "cluda-plot")):
            widget.add_class(css)
        controls = w.VBox([self.model_select, self.method_select, self.domain_select, self.class_select])
        self._box = w.VBox([w.HBox([controls, self.plot]), self.status]).add_class("cluda-explorer")
        for widget in (self.model_select, self.method_select, self.domain_select, self.class_select):
            widget.observe(self._on_change, names="value")
        self.update()

    def _domains(self, model: str, domains: str | Iterable[str] | None) -> tuple[str, ...]:
        names = self.feature_sets[model].domain_names
        if domains is None or domains == self.all_domains:
            return tuple(names)
        wanted = (domains,) if isinstance(domains, str) else tuple(domains)
        return tuple(d for d in names if d in wanted)

    def projection(self, model: str, method: str, domains: str | Iterable[str] | None = None,
                   classes: Iterable[int] | None = None) -> tuple[FeatureSet, np.ndarray]:
        """The selected points of ``model`` and their 2-D projection (N, 2) (cached).

        ``domains``: a domain name, several, or None / ``"both"`` / ``"all"`` for every domain;
        ``classes``: trainIds or None for all.
        """
        if model not in self.feature_sets:
            raise ValueError(f"FeatureExplorer: unknown model {model!r}; expected one of {list(self.feature_sets)}")
        if method not in self.methods:
            raise ValueError(f"FeatureExplorer: method {method!r} not offered; expected one of {self.methods}")
        doms = self._domains(model, domains)
        fs = self.feature_sets[model]
        cls = tuple(sorted(set(fs.classes if classes is None else classes)))
        points = fs.subset(classes=cls, domains=doms)
        if len(points) < 3:
            return points, np.zeros((len(points), 2), np.float32)
        key = (model, method, doms, cls)
        if key not in self._cache:
            self.projection_calls += 1
            coords = embed(points.features, method, seed=self.seed, **self.embed_kwargs)
            if not self.cache:
                return points, coords
            self._cache[key] = coords
        return points, self._cache[key]

    def figure(self, model: str, method: str, domains: str | Iterable[str] | None = None,
               classes: Iterable[int] | None = None) -> Figure:
        """Scatter plot of the projection: colour = class, marker and opacity = domain."""
        points, coords = self.projection(model, method, domains, classes)
        return self._draw(points, coords, model, method, self._domains(model, domains))

    def _draw(self, points: FeatureSet, coords: np.ndarray, model: str, method: str,
              doms: tuple[str, ...]) -> Figure:
        fig = Figure(figsize=(7.5, 5.5))
        ax = fig.add_subplot()
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{method} · {model} · {', '.join(doms)}")
        if len(points) < 3:
            ax.text(0.5, 0.5, f"{len(points)} points selected: too few to project", ha="center",
                    va="center", transform=ax.transAxes)
            return fig
        present = points.classes
        for d_idx, d in enumerate(points.domain_names):
            if d not in doms:
                continue
            k = self.domain_names.index(d) % len(_MARKERS)
            for c in present:
                sel = (points.labels == c) & (points.domain_index == d_idx)
                if sel.any():
                    ax.scatter(coords[sel, 0], coords[sel, 1], s=7, marker=_MARKERS[k], alpha=_ALPHAS[k],
                               color=self.palette[c], linewidths=0)
        handles = [Line2D([], [], ls="", marker="o", color=self.palette[c], label=self.class_names[c])
                   for c in present]
        handles += [Line2D([], [], ls="", marker=_MARKERS[self.domain_names.index(d) % len(_MARKERS)],
                           color="0.4", label=d) for d in doms]
        ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        return fig

    def status_text(self, model: str, method: str, domain: str, classes: Sequence[int], n_points: int) -> str:
        """The status line shown after an update, e.g. ``"tsne · source_only · both · 7 classes · 1400 points"``."""
        return f"{method} · {model} · {domain} · {len(classes)} classes · {n_points} points"

    def update(self) -> None:
        """Recompute (or fetch from the cache) and draw the current selection."""
        model, method = self.model_select.value, self.method_select.value
        domain, classes = self.domain_select.value, tuple(self.class_select.value)
        self.status.value = "computing…"
        points, coords = self.projection(model, method, domain, classes)
        self._show(self._draw(points, coords, model, method, self._domains(model, domain)), f"{method} {model}")
        self.status.value = html.escape(self.status_text(model, method, domain, classes, len(points)))


class MixingExplorer(_BoxedWidget):
    """ClassMix at a glance, resampled on demand (notebook 01).

    Args:
        draw: ``draw(seed, per_image, augment) -> dict`` with ``source``, ``target``, ``mask``,
            ``mixed`` and ``mixed_label`` batches as :func:`cluda_kit.analysis.plots.mix_grid` takes
            them (images (B, 3, H, W) float [0, 1], mask (B, 1, H, W), labels (B, H, W) trainIds),
            and optionally ``"status"``, a line of text naming the chosen classes. The notebook builds
            it from ``cluda_kit.uda.mixing`` (analysis does not import the method itself).
        seed: the first seed; "resample" increments it.
        max_images: rows of the grid.

    Controls (CSS classes): ``cluda-resample`` button, ``cluda-mix-mode`` toggle (per image / batch-wide),
    ``cluda-augment`` checkbox, ``cluda-plot`` output, ``cluda-status`` line, all in ``cluda-mixing``.
    """

    def __init__(self, draw, *, seed: int = 0, max_images: int = 2) -> None:
        self.draw = draw
        self.seed = int(seed)
        self.max_images = max_images
        self.resample_button = w.Button(description="resample", icon="refresh")
        self.mode_select = w.ToggleButtons(options=["per image", "batch-wide"], value="per image",
                                           description="classes")
        self.augment_box = w.Checkbox(value=False, description="strong augmentation")
        self.status = w.HTML(value="")
        self.plot = w.Output()
        for widget, css in ((self.resample_button, "cluda-resample"), (self.mode_select, "cluda-mix-mode"),
                            (self.augment_box, "cluda-augment"), (self.status, "cluda-status"),
                            (self.plot, "cluda-plot")):
            widget.add_class(css)
        controls = w.HBox([self.resample_button, self.mode_select, self.augment_box])
        self._box = w.VBox([controls, self.plot, self.status]).add_class("cluda-mixing")
        self.resample_button.on_click(self._on_resample)
        for widget in (self.mode_select, self.augment_box):
            widget.observe(self._on_change, names="value")
        self.update()

    def figure(self) -> tuple[Figure, dict]:
        """The grid of the current seed and mode, with a legend of the classes in the mixed labels
        it shows; and ``draw``'s output."""
        from cluda_kit.analysis.plots import class_legend, mix_grid, present_classes

        per_image = self.mode_select.value == "per image"
        out = self.draw(self.seed, per_image, self.augment_box.value)
        fig = mix_grid(out["source"], out["target"], out["mask"], out["mixed"], out["mixed_label"],
                       max_images=self.max_images, cell_size=2.0)
        class_legend(fig, present_classes(out["mixed_label"][: self.max_images]), title="mixed label")
        return fig, out

    def update(self) -> None:
        """Draw the mix of the current seed and mode."""
        fig, out = self.figure()
        self._show(fig, "ClassMix")
        text = f"seed {self.seed} · {self.mode_select.value}"
        if out.get("status"):
            text += f" · {out['status']}"
        self.status.value = html.escape(text)

    def _on_resample(self, _button) -> None:
        self.seed += 1
        self._on_change(None)


class PseudoLabelExplorer(_BoxedWidget):
    """Teacher confidence against the pseudo-label threshold τ (notebook 02).

    Args:
        probs: (B, C, H, W) teacher softmax probabilities (not logits) of a target batch.
        images: (B, 3, H, W) float [0, 1] (or uint8) target images.
        threshold: the initial τ (0.968).
        image_index: which image of the batch is shown.

    A slider sets τ; the figure shows the image, the pseudo-label ŷ = argmax, the confidence
    p = max prob and the pixels with p ≥ τ; the status line gives q = fraction of the *batch's*
    pixels with p ≥ τ (the weight every target pixel gets). CSS classes: ``cluda-threshold``,
    ``cluda-plot``, ``cluda-status`` inside ``cluda-pseudo``.
    """

    def __init__(self, probs, images, *, threshold: float = 0.968, image_index: int = 0) -> None:
        import torch

        probs = torch.as_tensor(probs, dtype=torch.float32)
        if probs.dim() != 4:
            raise ValueError(f"PseudoLabelExplorer: probs must be (B, C, H, W), got {tuple(probs.shape)}")
        self.confidence, self.labels = probs.max(dim=1)
        self.images = images
        self.image_index = image_index
        self.slider = w.FloatSlider(value=threshold, min=0.5, max=0.999, step=0.001, readout_format=".3f",
                                    description="τ", continuous_update=False)
        self._assemble([(self.slider, "cluda-threshold")], "cluda-pseudo")

    def q(self, threshold: float) -> float:
        """Fraction of the batch's pixels with p ≥ threshold."""
        return float((self.confidence >= threshold).float().mean())

    def figure(self, tau: float | None = None) -> Figure:
        """Image, pseudo-label, confidence and the p ≥ τ mask at ``tau`` (default: the slider's),
        with a legend of the pseudo-label's classes and a colourbar of the confidence."""
        from cluda_kit.analysis.plots import class_legend, image_grid, present_classes, value_colorbar

        tau = self.slider.value if tau is None else tau
        i = self.image_index
        conf = self.confidence[i]
        rows = [[self.images[i], self.labels[i].numpy(), conf.numpy(), (conf >= tau).float().numpy()]]
        titles = [["target", "pseudo-label ŷ", "confidence p", f"p ≥ {tau:.3f} (yellow)"]]
        fig = image_grid(rows, titles, cell_size=2.0)
        value_colorbar(fig, "confidence p / mask", axes=fig.axes[2:4])
        class_legend(fig, present_classes(self.labels[i]), title="pseudo-label ŷ")
        return fig

    def update(self) -> None:
        """Redraw for the slider's τ."""
        tau = self.slider.value
        self._show(self.figure(tau), "pseudo-labels")
        self.status.value = html.escape(f"τ = {tau:.3f} · q = {self.q(tau):.4f} "
                                        f"(fraction of the batch's pixels with p ≥ τ)")


def _batch(name: str, arg: str, x, dims: str):
    """``x`` as a tensor of the rank that ``dims`` (e.g. ``"(B, 3, H, W)"``) names, else a ValueError
    naming the argument."""
    import torch

    t = torch.as_tensor(x)
    if t.dim() != dims.count(",") + 1:
        raise ValueError(f"{name}: {arg} must be {dims}, got shape {tuple(t.shape)}")
    return t


TEMPERATURES = (0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0)


class TemperatureExplorer(_BoxedWidget):
    """How much room CLUDA's contrastive loss has at each temperature τ (notebook 04).

    Args:
        features: (B, D, h, w) features on the contrastive grid.
        labels: (B, h, w) trainIds of the grid cells (255 = ignore).
        temperatures: the τ values the slider offers (τ_b = τ), positive and ascending.
        temperature: the initial τ, one of ``temperatures``.
        seed: seed of the random embedding (the same draw at every τ).

    For every τ, :func:`cluda_kit.analysis.contrastive.loss_range` gives the loss of the features,
    of a random embedding (the start) and of a perfectly clustered one (the floor: each class on a
    vertex of a regular simplex). The figure draws the three against τ with the slider's τ marked;
    the status line gives the span random − clustered in nats: how far the loss can fall. CSS
    classes: ``cluda-temperature``, ``cluda-plot``, ``cluda-status`` inside ``cluda-temperatures``.
    """

    def __init__(self, features, labels, *, temperatures=TEMPERATURES, temperature: float = 1.0,
                 seed: int = 0) -> None:
        features = _batch("TemperatureExplorer", "features", features, "(B, D, h, w)").detach()
        labels = _batch("TemperatureExplorer", "labels", labels, "(B, h, w)")
        if labels.shape != (features.shape[0], *features.shape[2:]):
            raise ValueError(f"TemperatureExplorer: labels must be (B, h, w) = "
                             f"{(features.shape[0], *features.shape[2:])} to match features, got {tuple(labels.shape)}")
        temps = tuple(float(t) for t in temperatures)
        if not temps or min(temps) <= 0 or list(temps) != sorted(set(temps)):
            raise ValueError(f"TemperatureExplorer: temperatures must be positive and ascending, got {temps}")
        if float(temperature) not in temps:
            raise ValueError(f"TemperatureExplorer: temperature {temperature} is not one of temperatures {temps}")
        self.features = features if features.is_floating_point() else features.float()
        self.labels = labels.long()
        self.temperatures = temps
        self.seed = int(seed)
        self.ranges: dict[float, dict[str, float]] = {}
        for t in temps:
            self.loss_range(t)
        self.slider = w.SelectionSlider(options=[(f"{t:g}", t) for t in temps], value=float(temperature),
                                        description="τ", continuous_update=False)
        self._assemble([(self.slider, "cluda-temperature")], "cluda-temperatures")

    def loss_range(self, tau: float) -> dict[str, float]:
        """``{"value", "random", "clustered"}`` at τ = τ_b = ``tau`` (cached for the offered τ)."""
        import torch

        from cluda_kit.analysis.contrastive import loss_range

        if tau in self.ranges:
            return self.ranges[tau]
        if not tau > 0:
            raise ValueError(f"TemperatureExplorer: tau must be positive, got {tau}")
        r = loss_range(self.features, self.labels, tau, torch.Generator().manual_seed(self.seed))
        if tau in self.temperatures:
            self.ranges[tau] = r
        return r

    def span(self, tau: float) -> float:
        """random − clustered at ``tau``, in nats: the most the loss can fall."""
        r = self.loss_range(tau)
        return r["random"] - r["clustered"]

    def figure(self, tau: float | None = None) -> Figure:
        """The three losses against τ (log scale) and the span at ``tau`` (default: the slider's)."""
        tau = self.slider.value if tau is None else float(tau)
        r = self.loss_range(tau)
        fig = Figure(figsize=(6.5, 3.4), layout="constrained")
        ax = fig.subplots()
        for key, label, style in (("random", "random embedding (the start)", "o-"),
                                  ("value", "these features", "s-"),
                                  ("clustered", "perfectly clustered (the floor)", "^-")):
            ax.plot(self.temperatures, [self.ranges[t][key] for t in self.temperatures], style, ms=4, label=label)
        ax.axvline(tau, color="0.5", ls=":", lw=1)
        ax.annotate("", xy=(tau, r["clustered"]), xytext=(tau, r["random"]),
                    arrowprops={"arrowstyle": "<->", "color": "black", "lw": 1.2})
        ax.set(xscale="log", xlabel="temperature τ (τ_b = τ)", ylabel="loss (nats)",
               title=f"τ = {tau:g}: span (random − clustered) {self.span(tau):.2f} nats")
        ax.set_xticks(self.temperatures, [f"{t:g}" for t in self.temperatures], fontsize=7)
        ax.minorticks_off()
        ax.legend(fontsize=8, loc="upper right")
        return fig

    def status_text(self, tau: float) -> str:
        r = self.loss_range(tau)
        return (f"τ = {tau:g} · random {r['random']:.2f} · these features {r['value']:.2f} · clustered "
                f"{r['clustered']:.2f} · span (random − clustered) {self.span(tau):.2f} nats")

    def update(self) -> None:
        """Redraw for the slider's τ."""
        tau = self.slider.value
        self._show(self.figure(tau), f"loss range at tau {tau:g}")
        self.status.value = html.escape(self.status_text(tau))


class FeatureMapExplorer(_BoxedWidget):
    """One feature map of one image as PCA-to-RGB, beside the image (notebook 03).

    Args:
        images: (B, 3, H, W) float [0, 1] or uint8 images.
        maps: map name -> (B, D, h, w) features of those images (e.g. the encoder stages and the
            fused map; :meth:`from_output` builds it from a ``SegOutput``).
        labels: optional (B, H, W) trainIds, drawn between image and map with a class legend.
        map_name: the map shown first (default: the last).
        image_index: the image shown first.

    :func:`cluda_kit.analysis.plots.pca_rgb` colours each pixel by the map's three principal
    components on that image (cached). CSS classes: ``cluda-map``, ``cluda-image``, ``cluda-plot``,
    ``cluda-status`` inside ``cluda-feature-maps``.
    """

    def __init__(self, images, maps, *, labels=None, map_name: str | None = None, image_index: int = 0) -> None:
        images = _batch("FeatureMapExplorer", "images", images, "(B, 3, H, W)")
        if images.shape[1] != 3:
            raise ValueError(f"FeatureMapExplorer: images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        if not maps:
            raise ValueError("FeatureMapExplorer: maps is empty; expected {name: (B, D, h, w) features}")
        self.maps = {}
        for name, fmap in maps.items():
            fmap = _batch("FeatureMapExplorer", f"maps[{name!r}]", fmap, "(B, D, h, w)").detach()
            if len(fmap) != len(images):
                raise ValueError(f"FeatureMapExplorer: maps[{name!r}] holds {len(fmap)} images, images {len(images)}")
            self.maps[name] = fmap
        if labels is not None:
            labels = _batch("FeatureMapExplorer", "labels", labels, "(B, H, W)")
            if labels.shape != (images.shape[0], *images.shape[2:]):
                raise ValueError(f"FeatureMapExplorer: labels must be (B, H, W) = "
                                 f"{(images.shape[0], *images.shape[2:])}, got {tuple(labels.shape)}")
        map_name = list(self.maps)[-1] if map_name is None else map_name
        if map_name not in self.maps:
            raise ValueError(f"FeatureMapExplorer: map_name {map_name!r} is not one of {list(self.maps)}")
        if not 0 <= image_index < len(images):
            raise ValueError(f"FeatureMapExplorer: image_index {image_index} outside 0..{len(images) - 1}")
        self.images, self.labels = images, labels
        self._rgb: dict[tuple[str, int], np.ndarray] = {}
        self.map_select = w.ToggleButtons(options=list(self.maps), value=map_name, description="map")
        self.image_select = w.Dropdown(options=[(f"image {i}", i) for i in range(len(images))], value=image_index,
                                       description="image")
        self._assemble([(self.map_select, "cluda-map"), (self.image_select, "cluda-image")], "cluda-feature-maps")

    @classmethod
    def from_output(cls, images, output, **kwargs) -> FeatureMapExplorer:
        """The encoder stages (``stage 1`` …) and the fused map of a ``SegOutput`` computed with
        ``return_stages=True`` on ``images``."""
        maps = {f"stage {i + 1}": s for i, s in enumerate(output.stages)}
        maps["fused"] = output.fused
        return cls(images, maps, **kwargs)

    def rgb(self, name: str, index: int) -> np.ndarray:
        """(h, w, 3) PCA-to-RGB of map ``name`` on image ``index`` (cached)."""
        from cluda_kit.analysis.plots import pca_rgb

        if name not in self.maps:
            raise ValueError(f"FeatureMapExplorer: unknown map {name!r}; expected one of {list(self.maps)}")
        if not 0 <= index < len(self.images):
            raise ValueError(f"FeatureMapExplorer: image index {index} outside 0..{len(self.images) - 1}")
        key = (name, int(index))
        if key not in self._rgb:
            self._rgb[key] = pca_rgb(self.maps[name][index])
        return self._rgb[key]

    def _shape(self, name: str) -> str:
        d, h, w_ = self.maps[name].shape[1:]
        return f"{d} ch, {h}×{w_}"

    def figure(self, name: str | None = None, index: int | None = None) -> Figure:
        """Image (and labels) beside the PCA-to-RGB of map ``name`` on image ``index`` (default: the
        controls')."""
        from cluda_kit.analysis.plots import class_legend, image_grid, present_classes

        name = self.map_select.value if name is None else name
        index = self.image_select.value if index is None else index
        rgb = self.rgb(name, index)
        row, titles = [self.images[index]], [f"image {index}"]
        if self.labels is not None:
            row.append(self.labels[index].numpy())
            titles.append("ground truth")
        row.append(rgb)
        titles.append(f"{name}: {self._shape(name)} (PCA → RGB)")
        fig = image_grid([row], [titles], cell_size=2.4)
        if self.labels is not None:
            class_legend(fig, present_classes(self.labels[index]))
        return fig

    def status_text(self, name: str, index: int) -> str:
        stride = self.images.shape[-2] / self.maps[name].shape[-2]
        return f"{name} · image {index} · {self._shape(name)} (stride {stride:g})"

    def update(self) -> None:
        """Redraw the selected map and image."""
        name, index = self.map_select.value, self.image_select.value
        self._show(self.figure(name, index), f"{name} image {index}")
        self.status.value = html.escape(self.status_text(name, index))


class EntropyWindowExplorer(_BoxedWidget):
    """Where CLUDA on HRDA puts an image's detail window: the max-entropy window (notebook 07).

    Args:
        images: (B, 3, H, W) float [0, 1] or uint8 crops the windows live in.
        context_logits: (B, C, hc, wc) logits (pre-softmax) of the context pass over those crops.
        window: (h, w) detail window (``model.detail_crop``).
        stride: (sh, sw) between candidate windows (``model.inference_stride``).
        divisible: candidate corners are multiples of this (``model.detail_divisible``).
        labels: optional (B, H, W) trainIds, drawn with the window and a class legend.
        image_index: the image shown first.

    The windows are :func:`cluda_kit.models.hrda.max_entropy_window` with one window per image (the
    release's default), and the entropy map is the one it scores: −Σ_c p_c log p_c of the context
    logits, bilinearly resized to H × W. CSS classes: ``cluda-image``, ``cluda-plot``,
    ``cluda-status`` inside ``cluda-entropy-window``.
    """

    def __init__(self, images, context_logits, *, window: Sequence[int], stride: Sequence[int], divisible: int = 8,
                 labels=None, image_index: int = 0) -> None:
        import torch
        import torch.nn.functional as F

        from cluda_kit.models.hrda import max_entropy_window

        images = _batch("EntropyWindowExplorer", "images", images, "(B, 3, H, W)")
        logits = _batch("EntropyWindowExplorer", "context_logits", context_logits, "(B, C, hc, wc)").detach().float()
        if images.shape[1] != 3:
            raise ValueError(f"EntropyWindowExplorer: images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        if len(logits) != len(images):
            raise ValueError(f"EntropyWindowExplorer: context_logits holds {len(logits)} images, images {len(images)}")
        for arg, pair in (("window", window), ("stride", stride)):
            if len(tuple(pair)) != 2 or min(pair) <= 0:
                raise ValueError(f"EntropyWindowExplorer: {arg} must be two positive sizes (h, w), got {pair}")
        if labels is not None:
            labels = _batch("EntropyWindowExplorer", "labels", labels, "(B, H, W)")
            if labels.shape != (images.shape[0], *images.shape[2:]):
                raise ValueError(f"EntropyWindowExplorer: labels must be (B, H, W) = "
                                 f"{(images.shape[0], *images.shape[2:])}, got {tuple(labels.shape)}")
        if not 0 <= image_index < len(images):
            raise ValueError(f"EntropyWindowExplorer: image_index {image_index} outside 0..{len(images) - 1}")
        size = tuple(images.shape[-2:])
        self.images, self.labels, self.num_classes = images, labels, logits.shape[1]
        self.boxes = max_entropy_window(logits, size, tuple(window), tuple(stride), divisible, per_image=True)
        logp = F.log_softmax(logits, dim=1)
        with torch.no_grad():
            self.entropy = F.interpolate(-(logp.exp() * logp).sum(1, keepdim=True), size=size, mode="bilinear",
                                         align_corners=False)[:, 0]  # (B, H, W), what the windows are scored on
        self.image_select = w.Dropdown(options=[(f"image {i}", i) for i in range(len(images))], value=image_index,
                                       description="image")
        self._assemble([(self.image_select, "cluda-image")], "cluda-entropy-window")

    def window_entropy(self, index: int) -> float:
        """Mean entropy inside image ``index``'s window (the score that chose it)."""
        y0, x0, y1, x1 = self.boxes[index]
        return float(self.entropy[index, y0:y1, x0:x1].mean())

    def figure(self, index: int | None = None) -> Figure:
        """Image, entropy map (and labels) of image ``index`` (default: the selector's), each with
        its max-entropy window in red."""
        import math

        from matplotlib.patches import Rectangle

        from cluda_kit.analysis.plots import class_legend, present_classes, to_rgb_uint8
        from cluda_kit.data.labels import colorize

        index = self.image_select.value if index is None else index
        if not 0 <= index < len(self.images):
            raise ValueError(f"EntropyWindowExplorer: image index {index} outside 0..{len(self.images) - 1}")
        panels = [(to_rgb_uint8(self.images[index]), {}, f"image {index}"),
                  (self.entropy[index].numpy(), {"cmap": "viridis", "vmin": 0, "vmax": math.log(self.num_classes)},
                   "prediction entropy of the context logits")]
        if self.labels is not None:
            panels.append((colorize(self.labels[index].numpy()), {}, "ground truth"))
        height, width = self.images.shape[-2:]
        fig = Figure(figsize=(2.6 * len(panels) * width / height + 0.8, 2.9), layout="constrained")
        axes = fig.subplots(1, len(panels))
        y0, x0, y1, x1 = self.boxes[index]
        for ax, (arr, kwargs, title) in zip(axes, panels):
            im = ax.imshow(arr, interpolation="nearest", **kwargs)
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="red", lw=2,
                                   label="max-entropy window"))
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
            if kwargs:
                fig.colorbar(im, ax=ax, shrink=0.8, label=f"entropy (0 to log {self.num_classes})")
        axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=7, frameon=False)
        if self.labels is not None:
            class_legend(fig, present_classes(self.labels[index]))
        return fig

    def status_text(self, index: int) -> str:
        import math

        ent = self.entropy[index]
        return (f"image {index} · max-entropy window (y0, x0, y1, x1) = {tuple(self.boxes[index])} · mean entropy "
                f"in it {self.window_entropy(index):.3f} (the image: {float(ent.min()):.3f} to {float(ent.max()):.3f};"
                f" uniform: log {self.num_classes} = {math.log(self.num_classes):.3f})")

    def update(self) -> None:
        """Redraw the selected image."""
        index = self.image_select.value
        self._show(self.figure(index), f"entropy window image {index}")
        self.status.value = html.escape(self.status_text(index))
