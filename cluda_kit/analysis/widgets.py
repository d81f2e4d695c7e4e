"""Interactive explorer of projected feature spaces (ipywidgets + matplotlib).

:class:`FeatureExplorer` shows t-SNE / UMAP / PCA projections of fused features coloured by class,
with the domain shown by marker and opacity, switchable by model, method, domain and classes.
Projections are cached per (model, method, domains, classes), so going back to a selection is
instant. Every control carries a CSS class (``cluda-model``, ``cluda-method``, ``cluda-domain``,
``cluda-classes``, ``cluda-plot``, ``cluda-status``, all inside ``cluda-explorer``) so browser tests
can find them; the status line names the shown selection once it is drawn.
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
    """Shared display plumbing: the explorer's top-level ipywidgets box is ``self._box``."""

    _box: w.VBox

    @property
    def widget(self) -> w.VBox:
        """The top-level box (controls, plot, status)."""
        return self._box

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self._box)


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
        fig = self._draw(points, coords, model, method, self._domains(model, domain))
        png = base64.b64encode(figure_png(fig)).decode("ascii")
        self.plot.outputs = ({"output_type": "display_data", "metadata": {},
                              "data": {"image/png": png, "text/plain": f"<Figure {method} {model}>"}},)
        self.status.value = html.escape(self.status_text(model, method, domain, classes, len(points)))

    def _on_change(self, _change: dict) -> None:
        try:
            self.update()
        except Exception as exc:  # shown in the UI: widget callbacks otherwise fail silently
            self.status.value = html.escape(f"error: {type(exc).__name__}: {exc}")


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
        png = base64.b64encode(figure_png(fig)).decode("ascii")
        self.plot.outputs = ({"output_type": "display_data", "metadata": {},
                              "data": {"image/png": png, "text/plain": "<Figure ClassMix>"}},)
        text = f"seed {self.seed} · {self.mode_select.value}"
        if out.get("status"):
            text += f" · {out['status']}"
        self.status.value = html.escape(text)

    def _on_resample(self, _button) -> None:
        self.seed += 1
        self._on_change(None)

    def _on_change(self, _change) -> None:
        try:
            self.update()
        except Exception as exc:  # shown in the UI: widget callbacks otherwise fail silently
            self.status.value = html.escape(f"error: {type(exc).__name__}: {exc}")


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
        self.status = w.HTML(value="")
        self.plot = w.Output()
        for widget, css in ((self.slider, "cluda-threshold"), (self.status, "cluda-status"),
                            (self.plot, "cluda-plot")):
            widget.add_class(css)
        self._box = w.VBox([self.slider, self.plot, self.status]).add_class("cluda-pseudo")
        self.slider.observe(self._on_change, names="value")
        self.update()

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
        fig = self.figure(tau)
        png = base64.b64encode(figure_png(fig)).decode("ascii")
        self.plot.outputs = ({"output_type": "display_data", "metadata": {},
                              "data": {"image/png": png, "text/plain": "<Figure pseudo-labels>"}},)
        self.status.value = html.escape(f"τ = {tau:.3f} · q = {self.q(tau):.4f} "
                                        f"(fraction of the batch's pixels with p ≥ τ)")

    def _on_change(self, _change) -> None:
        try:
            self.update()
        except Exception as exc:  # shown in the UI: widget callbacks otherwise fail silently
            self.status.value = html.escape(f"error: {type(exc).__name__}: {exc}")
