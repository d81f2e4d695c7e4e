"""The linked feature-space explorer: two models' features of the same pixels, side by side.

:class:`LinkedExplorer` takes one :class:`~cluda_kit.analysis.FeatureSet` per model, extracted
from the same images with the same seed (so point i is the same pixel in every set; see
``extract_features``'s provenance), projects each (t-SNE, UMAP or PCA, cached on disk), and shows
them as WebGL scatter plots (jupyter-scatter) with pan, zoom, a hover tooltip (class, domain,
image, pixel, each model's confidence and prediction), a lasso selection linked across the views,
colouring by class, domain, confidence or correctness, a gallery of the image crops the selected
points come from (the pixel marked), per-class counts, and the cluster measures of the classes
and domain shown. The selection exports as CSV, the view as PNG.

A "clear selection" button (CSS class ``cluda-clear``) clears the selection from the kernel, in
every view. A double click into a view clears it too, but only a selection that view holds itself:
a selection set from code (:meth:`LinkedExplorer.select`) while a view is still being drawn, e.g.
in the cell after the one displaying the explorer under Run All, is dropped by jupyter-scatter in
that view (it shows nothing selected while the kernel, the status line and the gallery hold the
points), and there a double click changes nothing.

Everything but the drawing is plain state (``points``, ``select``, ``selection_counts``,
``gallery``, ``measures``, ``export_csv``, ``export_png``), tested without a browser; the widget
(:meth:`LinkedExplorer.widget`) only wires jupyter-scatter and ipywidgets to it.

Displaying the explorer itself (``linked`` as a cell's last line) shows the widget together with
a static PNG of the views in one output: a live front end draws the widget, a stored notebook
whose (megabyte) widget state was left out shows the picture (``notebooks/build.py`` removes the
widget part of such outputs).

The gallery is an ``ipywidgets.HTML`` holding the figure as a PNG, set from the kernel, never an
``ipywidgets.Output`` filled with ``with output: display(...)``: nbclient mirrors such captured
output back to the kernel with a comm message on the shell socket it is at the same time waiting
on for the cell's reply, and with a large output (a gallery PNG) that reply is not seen until the
cell's timeout ends (jupyter/nbclient#312): building notebook 06 stalled 20 minutes on it.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cluda_kit.analysis.features import FeatureSet

__all__ = ["LinkedExplorer", "COLOR_BY"]

COLOR_BY = ("class", "domain", "confidence", "correct")
"""What the points can be coloured by (confidence and correct: of the view's own model)."""


def _hex(rgb: Sequence[float]) -> str:
    r, g, b = (int(round(float(v))) for v in rgb)
    return f"#{r:02x}{g:02x}{b:02x}"


class LinkedExplorer:
    """Linked views of the same points in several models' feature spaces.

    Args:
        feature_sets: model name -> FeatureSet with provenance; every set must hold the same
            points in the same order (same images, pixels and classes), e.g. two runs' features
            extracted with the same seed.
        images: ``images(domain, image_index) -> uint8 (3, H, W)`` for the gallery (e.g. a dict of
            datasets, see :meth:`from_datasets`); None disables the gallery.
        method: projection method ("tsne", "umap" or "pca"); ``seed`` its random state.
        cache_dir: folder for projections (``<model>-<method>-<seed>-<hash>.npy``, the hash of the
            features), so reopening is instant; None keeps them in memory only.
        class_names, palette: names and (C, 3) RGB 0-255 colours indexed by trainId (default the
            Cityscapes 19 names and :data:`cluda_kit.analysis.plots.POINT_PALETTE`, distinct colours).
    """

    def __init__(self, feature_sets: Mapping[str, FeatureSet], images: Callable[[str, int], Any] | None = None, *,
                 method: str = "umap", seed: int = 0, cache_dir: str | Path | None = None,
                 class_names: Sequence[str] | None = None, palette: Any = None,
                 embed_kwargs: Mapping | None = None) -> None:
        from cluda_kit.analysis.embedding import METHODS

        if not feature_sets:
            raise ValueError("LinkedExplorer: feature_sets is empty; expected {model name: FeatureSet}")
        if method not in METHODS:
            raise ValueError(f"LinkedExplorer: method {method!r}, expected one of {METHODS}")
        self.sets = dict(feature_sets)
        self.models = list(self.sets)
        first = self.sets[self.models[0]]
        for name, fs in self.sets.items():
            if not fs.has_provenance:
                raise ValueError(f"LinkedExplorer: the features of {name!r} have no provenance (image, pixel); "
                                 "extract them with this version's extract_features")
            same = (len(fs) == len(first) and fs.domain_names == first.domain_names
                    and np.array_equal(fs.domain_index, first.domain_index)
                    and np.array_equal(fs.image_index, first.image_index)
                    and np.array_equal(fs.pixel, first.pixel) and np.array_equal(fs.labels, first.labels))
            if not same:
                raise ValueError(f"LinkedExplorer: {name!r} and {self.models[0]!r} do not hold the same points; "
                                 "extract both from the same images with the same seed and settings")
        if class_names is None or palette is None:
            from cluda_kit.data import labels as label_table

            class_names = label_table.CLASSES if class_names is None else class_names
            if palette is None:
                from cluda_kit.analysis.plots import POINT_PALETTE

                palette = POINT_PALETTE
        self.class_names = list(class_names)
        self.palette = np.asarray(palette, dtype=np.float64)
        self.images = images
        self.method, self.seed = method, seed
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.embed_kwargs = dict(embed_kwargs or {})
        self.projection_calls = 0
        self._memory: dict[tuple[str, str], np.ndarray] = {}
        self._measured: dict[tuple, dict] = {}  # measures() per (shown classes, shown domains)
        self.selected = np.zeros(0, dtype=np.int64)
        self.color_by = "class"
        self.shown_classes: list[int] = sorted(int(c) for c in np.unique(first.labels))
        self.shown_domains: list[str] = list(first.domain_names)
        self._widget = None
        self._scatters: dict[str, Any] = {}

    @classmethod
    def from_datasets(cls, feature_sets: Mapping[str, FeatureSet], datasets: Mapping[str, Any], **kwargs) -> "LinkedExplorer":
        """Like the constructor, with ``images`` read from ``datasets[domain][image_index]["image"]``."""
        return cls(feature_sets, lambda domain, i: datasets[domain][int(i)]["image"], **kwargs)

    # -------------------------------------------------------------------- projections
    def _key(self, model: str, method: str) -> str:
        fs = self.sets[model]
        h = hashlib.sha256(fs.features.tobytes())
        h.update(f"{method}|{self.seed}|{sorted(self.embed_kwargs.items())}".encode())
        return h.hexdigest()[:16]

    def projection(self, model: str, method: str | None = None) -> np.ndarray:
        """(N, 2) coordinates of ``model``'s points (cached in memory and in ``cache_dir``)."""
        from cluda_kit.analysis.embedding import embed

        method = method or self.method
        if (model, method) in self._memory:
            return self._memory[(model, method)]
        path = None
        if self.cache_dir is not None:
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model)
            path = self.cache_dir / f"{safe}-{method}-{self.seed}-{self._key(model, method)}.npy"
            if path.is_file():
                coords = np.load(path, allow_pickle=False)
                if coords.shape == (len(self.sets[model]), 2):
                    self._memory[(model, method)] = coords
                    return coords
        coords = np.asarray(embed(self.sets[model].features, method=method, seed=self.seed, **self.embed_kwargs),
                            dtype=np.float32)
        self.projection_calls += 1
        if path is not None:
            from cluda_kit.fileio import atomic_write

            atomic_write(path, lambda f: np.save(f, coords))
        self._memory[(model, method)] = coords
        return coords

    # -------------------------------------------------------------------- the table
    def points(self, method: str | None = None):
        """A pandas DataFrame, one row per point: ``domain``, ``image``, ``y``, ``x``, ``class``
        (name, categorical), ``class_id``, and per model ``{m}_x``, ``{m}_y`` (projection),
        ``{m}_confidence``, ``{m}_prediction`` (name) and ``{m}_correct``."""
        import pandas as pd

        first = self.sets[self.models[0]]
        names = np.asarray(self.class_names + ["?"], dtype=object)
        df = pd.DataFrame({
            "domain": pd.Categorical(np.asarray(first.domain_names)[first.domain_index], categories=first.domain_names),
            "image": first.image_index, "y": first.pixel[:, 0], "x": first.pixel[:, 1],
            "class": pd.Categorical(names[first.labels], categories=[self.class_names[c] for c in self.shown_classes_all]),
            "class_id": first.labels,
        })
        for m in self.models:
            fs, xy = self.sets[m], self.projection(m, method)
            pred = np.where((fs.prediction >= 0) & (fs.prediction < len(self.class_names)), fs.prediction, len(self.class_names))
            df[f"{m}_x"], df[f"{m}_y"] = xy[:, 0], xy[:, 1]
            df[f"{m}_confidence"] = fs.confidence.round(3)
            df[f"{m}_prediction"] = names[pred]
            df[f"{m}_correct"] = pd.Categorical(np.where(fs.correct, "right", "wrong"), categories=["right", "wrong"])
        return df

    @property
    def shown_classes_all(self) -> list[int]:
        return sorted(int(c) for c in np.unique(self.sets[self.models[0]].labels))

    def visible(self) -> np.ndarray:
        """Indices of the points of the shown classes and domains."""
        fs = self.sets[self.models[0]]
        keep = np.isin(fs.labels, self.shown_classes) & np.isin(fs.domain, self.shown_domains)
        return np.flatnonzero(keep)

    # -------------------------------------------------------------------- selection
    def select(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Select points (the same in every view); returns the sorted unique ids."""
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        n = len(self.sets[self.models[0]])
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise IndexError(f"LinkedExplorer.select: point ids must lie in [0, {n}), got {ids.min()}..{ids.max()}")
        self.selected = ids
        if self._widget is not None:
            for scatter in self._scatters.values():
                # compared as sets: a lasso's points come in drawing order, and re-sending them sorted
                # would bounce between the views and the browser (jupyter-scatter's compose links them too)
                if not np.array_equal(np.unique(np.asarray(scatter.selection(), dtype=np.int64)), ids):
                    scatter.selection(ids.tolist())
            self._refresh_panel()
        return ids

    def selection_counts(self) -> dict[str, dict[str, int]]:
        """Per domain, the number of selected points of each class (class name -> count)."""
        fs = self.sets[self.models[0]]
        out: dict[str, dict[str, int]] = {}
        for i in self.selected:
            d, c = str(fs.domain[i]), self.class_names[fs.labels[i]]
            out.setdefault(d, {})
            out[d][c] = out[d].get(c, 0) + 1
        return out

    def gallery(self, limit: int = 24, crop: int = 48) -> list[dict]:
        """The first ``limit`` selected points as crops: ``{"point", "domain", "image", "y", "x",
        "class", "crop": uint8 (crop, crop, 3) centred on the pixel (edge-padded), "predictions":
        {model: class name}}``."""
        if self.images is None:
            raise ValueError("LinkedExplorer.gallery: no images given (pass images= or use from_datasets)")
        fs = self.sets[self.models[0]]
        half = crop // 2
        items = []
        for i in self.selected[:limit]:
            image = np.asarray(self.images(fs.domain[i], int(fs.image_index[i])))
            image = image.transpose(1, 2, 0) if image.shape[0] == 3 else image
            y, x = (int(v) for v in fs.pixel[i])
            padded = np.pad(image, ((half, half), (half, half), (0, 0)), mode="edge")
            items.append({"point": int(i), "domain": str(fs.domain[i]), "image": int(fs.image_index[i]), "y": y, "x": x,
                          "class": self.class_names[fs.labels[i]],
                          "crop": padded[y:y + 2 * half, x:x + 2 * half].astype(np.uint8),
                          "predictions": {m: self._name(self.sets[m].prediction[i]) for m in self.models}})
        return items

    def _name(self, c: int) -> str:
        return self.class_names[c] if 0 <= c < len(self.class_names) else "?"

    def gallery_figure(self, limit: int = 24, cols: int = 8):
        """The gallery as a matplotlib figure: each crop with its pixel marked (a cross) and its
        class / each model's prediction in the title."""
        from matplotlib.figure import Figure

        items = self.gallery(limit)
        rows = max(1, -(-len(items) // cols))
        fig = Figure(figsize=(1.5 * cols, 1.7 * rows), dpi=100)
        for k in range(rows * cols):
            ax = fig.add_subplot(rows, cols, k + 1)
            ax.axis("off")
            if k >= len(items):
                continue
            it = items[k]
            ax.imshow(it["crop"])
            h = it["crop"].shape[0] / 2 - 0.5
            ax.plot([h], [h], marker="+", color="white", markersize=10, mew=2)
            ax.plot([h], [h], marker="+", color="black", markersize=7, mew=1)
            preds = " / ".join(it["predictions"][m] for m in self.models)
            ax.set_title(f"{it['class']}\n{preds}", fontsize=6)
        return fig

    def measures(self) -> dict[str, dict]:
        """Per model, :func:`~cluda_kit.analysis.cluster_measures` of the shown classes within the
        shown domains: ``silhouette``, ``ratio`` (intra/inter-class distance), ``mixing`` (domain
        mixing within a class; with two domains shown) and their per-class values. Empty where
        fewer than two classes are shown."""
        from cluda_kit.analysis.embedding import cluster_measures

        key = (tuple(self.shown_classes), tuple(self.shown_domains))
        if key in self._measured:  # a new selection does not change them; only what is shown does
            return self._measured[key]
        out: dict[str, dict] = {}
        for m in self.models:
            fs = self.sets[m].subset(classes=self.shown_classes, domains=self.shown_domains)
            if len(fs) < 3 or len(np.unique(fs.labels)) < 2:
                out[m] = {}
                continue
            out[m] = cluster_measures(fs.features, fs.labels, fs.domain if len(self.shown_domains) > 1 else None)
        self._measured[key] = out
        return out

    # -------------------------------------------------------------------- export
    def export_csv(self, path: str | Path) -> Path:
        """The selection as CSV: point, image, domain, y, x, class, and each model's prediction,
        confidence and projected coordinates."""
        from cluda_kit.fileio import atomic_write_text

        df = self.points().iloc[self.selected]
        cols = ["domain", "image", "y", "x", "class"]
        for m in self.models:
            cols += [f"{m}_prediction", f"{m}_confidence", f"{m}_x", f"{m}_y"]
        return atomic_write_text(path, df[cols].rename_axis("point").to_csv())

    def export_png(self, path: str | Path, dpi: int = 150) -> Path:
        """The current views (shown classes and domains, colour, selection highlighted) as PNG."""
        from cluda_kit.fileio import atomic_write

        png = self.png(dpi)
        return atomic_write(Path(path), lambda f: f.write(png))

    def png(self, dpi: int = 100) -> bytes:
        """The current views as PNG bytes (what :meth:`export_png` writes)."""
        from cluda_kit.analysis.plots import figure_png

        return figure_png(self.figure(dpi), dpi=dpi)

    def figure(self, dpi: int = 100):
        """The current views (shown classes and domains, colour, selection highlighted) as a
        matplotlib figure, one panel per model, with a legend of the colours."""
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D

        df = self.points()
        vis = self.visible()
        fig = Figure(figsize=(5 * len(self.models), 5), dpi=dpi)
        for k, m in enumerate(self.models):
            ax = fig.add_subplot(1, len(self.models), k + 1)
            colours = self._colours(df, m)[vis]
            ax.scatter(df[f"{m}_x"].to_numpy()[vis], df[f"{m}_y"].to_numpy()[vis], c=colours, s=3, linewidths=0)
            sel = np.intersect1d(self.selected, vis)
            if sel.size:
                ax.scatter(df[f"{m}_x"].to_numpy()[sel], df[f"{m}_y"].to_numpy()[sel], s=14, facecolors="none",
                           edgecolors="black", linewidths=0.6)
            ax.set_title(f"{m} ({self.method}, colour: {self.color_by})", fontsize=9)
            ax.set_xticks([]), ax.set_yticks([])
        handles = [Line2D([], [], ls="", marker="o", color=colour, label=label) for label, colour in self._legend()]
        if handles:
            fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=7, frameon=False,
                       bbox_to_anchor=(0.5, -0.02 - 0.035 * ((len(handles) - 1) // 7)))
        return fig

    def _legend(self) -> list[tuple[str, Any]]:
        """(label, colour) pairs of the legend for ``self.color_by`` (empty for confidence)."""
        if self.color_by == "class":
            return [(self.class_names[c], self.palette[c] / 255.0) for c in self.shown_classes]
        if self.color_by == "domain":
            import matplotlib

            names = self.sets[self.models[0]].domain_names
            return [(d, matplotlib.colormaps["tab10"](k % 10)) for k, d in enumerate(names) if d in self.shown_domains]
        if self.color_by == "correct":
            return [("right", (0.2, 0.6, 0.2, 1.0)), ("wrong", (0.85, 0.1, 0.1, 1.0))]
        return []

    def _colours(self, df, model: str) -> np.ndarray:
        """(N, 4) RGBA colours of the points for ``self.color_by`` in ``model``'s view."""
        import matplotlib

        if self.color_by == "class":
            rgb = self.palette[np.asarray(df["class_id"])] / 255.0
            return np.concatenate([rgb, np.ones((len(df), 1))], 1)
        if self.color_by == "domain":
            return matplotlib.colormaps["tab10"](np.asarray(df["domain"].cat.codes) % 10)
        if self.color_by == "confidence":
            return matplotlib.colormaps["viridis"](np.asarray(df[f"{model}_confidence"], dtype=float))
        right = np.asarray(df[f"{model}_correct"]) == "right"
        return np.where(right[:, None], [[0.2, 0.6, 0.2, 1.0]], [[0.85, 0.1, 0.1, 1.0]])

    def color_map(self, df) -> tuple[str, Any]:
        """(column suffix or name, jupyter-scatter colour map) for ``self.color_by``."""
        if self.color_by == "class":
            return "class", {self.class_names[c]: _hex(self.palette[c]) for c in self.shown_classes_all}
        if self.color_by == "domain":
            return "domain", {d: c for d, c in zip(df["domain"].cat.categories, ("#1f77b4", "#ff7f0e", "#2ca02c"))}
        if self.color_by == "confidence":
            return "confidence", "viridis"
        return "correct", {"right": "#33a02c", "wrong": "#e31a1c"}

    # -------------------------------------------------------------------- widget
    def widget(self, height: int = 420):
        """The interactive explorer (jupyter-scatter views + controls + gallery/measures panel)."""
        import ipywidgets as w
        import jscatter

        df = self.points()
        self._df = df
        tooltip = ["class", "domain", "image", "y", "x"]
        for m in self.models:
            tooltip += [f"{m}_prediction", f"{m}_confidence"]
        self._scatters = {}
        for m in self.models:
            s = jscatter.Scatter(data=df, x=f"{m}_x", y=f"{m}_y", height=height)
            s.tooltip(True, properties=tooltip)
            s.legend(True)
            s.size(default=3)
            s.lasso(type="freeform")
            self._scatters[m] = s
        self._apply_colours()
        grid = jscatter.compose([(s, m) for m, s in self._scatters.items()], sync_selection=True, sync_hover=True,
                                row_height=height)
        self._color = w.ToggleButtons(options=list(COLOR_BY), value=self.color_by, description="colour")
        self._method = w.ToggleButtons(options=["tsne", "umap", "pca"], value=self.method, description="method")
        domains = list(self.sets[self.models[0]].domain_names)
        self._domain = w.ToggleButtons(options=domains + ["both"] if len(domains) == 2 else domains,
                                       value="both" if len(domains) == 2 else domains[0], description="domain")
        self._classes = w.SelectMultiple(options=[(self.class_names[c], c) for c in self.shown_classes_all],
                                         value=tuple(self.shown_classes), rows=8, description="classes")
        self._csv = w.Button(description="selection → CSV")
        self._png = w.Button(description="view → PNG")
        self._clear = w.Button(description="clear selection")
        self._panel = w.HTML()  # the gallery, a PNG set from the kernel (not an Output: see the module's doc)
        self._status = w.HTML()
        for widget, css in ((self._color, "cluda-color"), (self._method, "cluda-method"), (self._domain, "cluda-domain"),
                            (self._classes, "cluda-classes"), (self._clear, "cluda-clear"), (self._panel, "cluda-gallery"),
                            (self._status, "cluda-status")):
            widget.add_class(css)
        self._color.observe(lambda ch: self._set(color_by=ch["new"]), names="value")
        self._method.observe(lambda ch: self._set(method=ch["new"]), names="value")
        self._domain.observe(lambda ch: self._set(domains=domains if ch["new"] == "both" else [ch["new"]]), names="value")
        self._classes.observe(lambda ch: self._set(classes=list(ch["new"])), names="value")
        self._csv.on_click(lambda _b: self._status.__setattr__("value", f"wrote {self.export_csv('selection.csv')}"))
        self._png.on_click(lambda _b: self._status.__setattr__("value", f"wrote {self.export_png('feature_view.png')}"))
        self._clear.on_click(lambda _b: self.select([]))
        for s in self._scatters.values():
            s.widget.observe(self._on_selection, names="selection")
        controls = w.HBox([w.VBox([self._color, self._method, self._domain]), self._classes,
                           w.VBox([self._csv, self._png, self._clear])])
        self._widget = w.VBox([controls, grid, self._status, self._panel]).add_class("cluda-linked-explorer")
        self._refresh_panel()
        return self._widget

    def _apply_colours(self) -> None:
        column, cmap = self.color_map(self._df)
        for m, s in self._scatters.items():
            by = f"{m}_{column}" if column in ("confidence", "correct") else column
            s.color(by=by, map=cmap, norm=(0.0, 1.0) if column == "confidence" else None)
            s.filter(self.visible().tolist())

    def _set(self, color_by: str | None = None, method: str | None = None, domains: list[str] | None = None,
             classes: list[int] | None = None) -> None:
        if color_by is not None:
            self.color_by = color_by
        if domains is not None:
            self.shown_domains = domains
        if classes is not None:
            self.shown_classes = sorted(classes)
        if method is not None and method != self.method:
            self.method = method
            self._df = self.points()
            for m, s in self._scatters.items():
                s.xy(x=self._df[f"{m}_x"].to_numpy(), y=self._df[f"{m}_y"].to_numpy())
        self._apply_colours()
        self._refresh_panel()

    def _on_selection(self, change: dict) -> None:
        ids = np.unique(np.asarray(change["new"] if change["new"] is not None else [], dtype=np.int64))
        if not np.array_equal(ids, self.selected):
            self.select(ids)

    def _refresh_panel(self) -> None:
        if self._widget is None:
            return
        rows = []
        for m, values in self.measures().items():
            if values:
                rows.append(f"<tr><td>{m}</td><td>{values['silhouette']:.3f}</td><td>{values['ratio']:.3f}</td>"
                            f"<td>{values.get('mixing', float('nan')):.3f}</td></tr>")
        counts = self.selection_counts()
        text = "; ".join(f"{d}: " + ", ".join(f"{c} {n}" for c, n in sorted(v.items(), key=lambda kv: -kv[1]))
                         for d, v in counts.items())
        self._status.value = (f"<b>{len(self.visible())}</b> points shown, <b>{len(self.selected)}</b> selected"
                              + (f" ({text})" if text else "")
                              + "<table style='border-spacing: 14px 2px'><tr><th>model</th><th>silhouette</th>"
                              + "<th>intra/inter ratio</th><th>domain mixing</th></tr>"
                              + "".join(rows) + "</table>")
        self._panel.value = self._gallery_html() if len(self.selected) and self.images is not None else ""

    def _gallery_html(self, limit: int = 24) -> str:
        from cluda_kit.analysis.plots import figure_png

        fig = self.gallery_figure(limit)
        png = figure_png(fig, dpi=fig.dpi)
        shown = min(limit, len(self.selected))
        return (f"<div>the crops of the first {shown} of {len(self.selected)} selected points (+ = the pixel; "
                f"class, then each model's prediction: {' / '.join(self.models)})</div>"
                f'<img src="data:image/png;base64,{_base64(png)}" '
                f'alt="gallery of the selected points">')

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """The widget (built on first display) and a static PNG of the views in one output: a
        front end with a kernel draws the widget; a notebook stored without the widget's state
        shows the picture."""
        widget = self._widget if self._widget is not None else self.widget()
        bundle = dict(widget._repr_mimebundle_() or {})
        bundle["image/png"] = _base64(self.png())
        bundle["text/plain"] = (f"LinkedExplorer({', '.join(self.models)}; {self.method}; {len(self.visible())} points shown, "
                                f"{len(self.selected)} selected)")
        return bundle


def _base64(png: bytes) -> str:
    """PNG bytes as base64 text (a Jupyter ``image/png`` output, an ``<img>`` data URL)."""
    import base64

    return base64.b64encode(png).decode("ascii")
