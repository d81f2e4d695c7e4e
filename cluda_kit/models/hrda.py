"""HRDA multi-resolution wrapper around any :class:`Segmentor` (docs/method.md §6).

Training (``forward`` with the module in train mode, or ``inference=False``), input crop x (B, 3, H, W):

- context: the whole crop resized by ``context_scale`` (0.5) -> the segmentor -> context logits
  (B, C, hc, wc), context fused feature (B, D, hc, wc) and stage maps (FD uses them);
- detail: one window of ``detail_crop`` (512x512) at full scale, corners multiples of
  ``detail_divisible`` (8), the same box for the whole batch (HRDA's choice); a random box from the
  passed ``generator``, a given ``box``, or (``window="entropy"``) the box of highest mean prediction
  entropy of the context logits (CLUDA, after iteration 12 000 on the mixed batch);
- scale attention a = sigmoid(attention head(context stages)) (B, C, hc, wc), an extra DAFormer-style
  head (per-level embeddings + 1x1 fusion, C outputs);
- fused logits on the full-resolution grid (B, C, gh, gw), gh x gw = ceil(H/s) x ceil(W/s) with s the
  segmentor's output stride (4 for DAFormer)::

      A     = up(a) * window_mask                   (zero outside the detail window)
      fused = A * canvas(detail logits) + (1 - A) * up(context logits)

  ``canvas`` places the detail logits into a zero map at the window's grid position and ``up`` is a
  bilinear resize (align_corners=False) to the grid. Outside the window fused == up(context) exactly.
  This is ``context_fusion="fused_grid"`` (the default), the formula of docs/method.md §6 and, up to
  where the window mask is applied, of CLUDA's release (which masks a on the context grid before
  upsampling: the two differ only on a one-cell band along the window's edges).
  ``context_fusion="context_grid"`` is the HRDA and MIC releases' order: a is masked on the context
  grid and (1 - a) multiplies the context logits there, before upsampling::

      fused = up(a * m) * canvas(detail logits) + up((1 - a * m) * context logits)

  (m: the window on the context grid; no mask in inference). Bilinear upsampling of a product is not
  the product of the upsampled maps, so checkpoints of the HRDA / MIC code reproduce their fused
  logits only in this order (bench/results/release_compare.md).
- ``feat_weighter`` (optional, CLUDA): the same kind of head with one output channel and a sigmoid,
  giving the per-pixel weight map w (B, 1, hc, wc) of the learned-weighted contrastive loss; it
  is only used by that loss, so only that loss trains it.

The loss, 0.9 * CE(fused) + 0.1 * CE(detail logits vs the label cropped to the window), is computed by
the trainer with :func:`crop_to_box` for the detail label (``models`` knows no losses).

Inference (eval mode, or ``inference=True`` e.g. for the train-mode EMA teacher): context on the
whole input at ``context_scale``; detail as overlapping ``detail_crop`` windows every
``inference_stride`` (256) pixels, their logits summed on the grid and averaged; attention not masked
(except where no window reached); the same fusion. At test time the trainer's sliding 1024x1024
windows (``train.eval_mode=slide``) each go through this inference.

Boxes are ``(y0, x0, y1, x1)`` in input pixels, [y0, y1) x [x0, x1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..runtime import generator_device, host_tensor
from .heads import DAFormerHead, init_conv_modules
from .segmentor import SegOutput, Segmentor
from .sliding import window_starts

__all__ = [
    "Box", "Boxes", "CONTEXT_FUSIONS", "HRDAOutput", "HRDASegmentor", "crop_to_box", "fuse_scales",
    "max_entropy_window", "place_in_canvas", "random_window", "window_starts",
]

Box = tuple[int, int, int, int]
#: a detail window shared by the batch, or one per image (a list of B boxes of the same size)
Boxes = Box | list[Box]


def _per_image(box: Boxes) -> bool:
    return isinstance(box, list)


@dataclass
class HRDAOutput(SegOutput):
    """What :class:`HRDASegmentor` returns (a :class:`SegOutput`, so it plugs in everywhere).

    Attributes:
        logits: (B, C, gh, gw) fused logits (pre-softmax) on the full-resolution grid of the input,
            gh x gw = ceil(H/s) x ceil(W/s), s = ``stride``.
        fused: (B, D, hc, wc) the context fused feature (the CLUDA "LR" feature).
        stages: the context pass's 4 encoder maps when asked for (FD uses them), else None.
        embedding: projection of the context fused feature (projection_dim > 0), else None.
        context_logits: (B, C, hc, wc) context logits.
        detail_logits: (B, C, hd, wd) detail logits of the window (training); in inference the
            averaged detail logits of all windows on the full grid (B, C, gh, gw).
        detail_fused: (B, D, hd, wd) detail fused feature of the window (training), else None.
        detail_embedding: projection of ``detail_fused`` (projection_dim > 0), else None.
        attention: (B, C, gh, gw) the scale attention A used in the fusion (masked, upsampled).
        weight_map: (B, 1, hc, wc) feat_weighter output w in (0, 1), or None.
        box: (y0, x0, y1, x1) detail window in input pixels (training), or a list of B such
            boxes, one per image (the max-entropy window, as the release picks it); None in
            inference.
        stride: s, the segmentor's output stride (grid cell side in input pixels).
    """

    context_logits: Tensor | None = None
    detail_logits: Tensor | None = None
    detail_fused: Tensor | None = None
    detail_embedding: Tensor | None = None
    attention: Tensor | None = None
    weight_map: Tensor | None = None
    box: Boxes | None = None
    stride: int = 4

    def grid_box(self) -> Boxes:
        """The detail window(s) on the logits grid (input pixels / stride)."""
        if self.box is None:
            raise ValueError("hrda.py: this output has no detail window (inference output)")
        if _per_image(self.box):
            return [_grid_box(b, self.stride) for b in self.box]
        return _grid_box(self.box, self.stride)

    def window_mask(self) -> Tensor:
        """(1, 1, gh, gw) float mask, 1 inside the detail window on the logits grid; (B, 1, gh, gw)
        with one window per image."""
        gh, gw = self.logits.shape[-2:]
        boxes = self.grid_box()
        boxes = boxes if _per_image(boxes) else [boxes]
        mask = self.logits.new_zeros((len(boxes), 1, gh, gw))
        for i, (y0, x0, y1, x1) in enumerate(boxes):
            mask[i, :, y0:y1, x0:x1] = 1
        return mask

    def detail_canvas(self, t: Tensor) -> Tensor:
        """Place a detail-window map t (B, K, hd, wd) into a zero (B, K, gh, gw) canvas."""
        return place_in_canvas(t, self.grid_box(), self.logits.shape[-2:])


# --------------------------------------------------------------------------------- pure helpers
def _grid_box(box: Box, stride: int) -> Box:
    y0, x0, y1, x1 = box
    if y0 % stride or x0 % stride:
        raise ValueError(
            f"hrda.py: detail window corner ({y0}, {x0}) is not a multiple of the output stride "
            f"{stride}; use a model.hrda.detail_divisible that is a multiple of it"
        )
    return y0 // stride, x0 // stride, math.ceil(y1 / stride), math.ceil(x1 / stride)


def random_window(size: tuple[int, int], crop: tuple[int, int], divisible: int = 8,
                  generator: torch.Generator | None = None) -> Box:
    """A random window of ``crop`` = (h, w) (clipped to the image) inside an image of ``size`` =
    (H, W), corners uniform over the multiples of ``divisible`` that keep it inside.

    Returns (y0, x0, y1, x1). Two integers are drawn from ``generator`` (CPU) every call.
    """
    (height, width), (ch, cw) = size, crop
    ch, cw = min(ch, height), min(cw, width)
    high = torch.tensor([(height - ch) // divisible + 1, (width - cw) // divisible + 1])
    draws = (torch.rand(2, generator=generator, device=generator_device(generator)).cpu() * high).long().clamp_max(high - 1)
    y0, x0 = (int(v) * divisible for v in draws)
    return y0, x0, y0 + ch, x0 + cw


def crop_to_box(t: Tensor, box: Boxes) -> Tensor:
    """t (B, ..., H, W) -> t[..., y0:y1, x0:x1] (labels, weights or images); with a list of B
    boxes, image i is cut at box i (the boxes have one size)."""
    if _per_image(box):
        return torch.stack([crop_to_box(t[i], b) for i, b in enumerate(box)])
    y0, x0, y1, x1 = box
    return t[..., y0:y1, x0:x1]


def place_in_canvas(t: Tensor, grid_box: Boxes, size: Sequence[int]) -> Tensor:
    """Place t (B, K, hd, wd) into a zero canvas (B, K, *size) at ``grid_box`` = (y0, x0, y1, x1)
    in canvas cells (t is cut where it would stick out of the canvas); with a list of B boxes,
    image i at box i. Differentiable in t."""
    if _per_image(grid_box):
        return torch.cat([place_in_canvas(t[i : i + 1], b, size) for i, b in enumerate(grid_box)])
    gh, gw = int(size[0]), int(size[1])
    y0, x0, y1, x1 = grid_box
    y1, x1 = min(y1, gh, y0 + t.shape[-2]), min(x1, gw, x0 + t.shape[-1])
    return F.pad(t[..., : y1 - y0, : x1 - x0], (x0, gw - x1, y0, gh - y1))


CONTEXT_FUSIONS = ("fused_grid", "context_grid")


def fuse_scales(context_logits: Tensor, detail_canvas: Tensor, attention: Tensor,
                valid: Tensor, *, context_fusion: str = "fused_grid",
                context_valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """HRDA's scale fusion on the full-resolution grid.

    Args:
        context_logits: (B, C, hc, wc) context logits.
        detail_canvas: (B, C, gh, gw) detail logits placed on the grid (0 where no detail).
        attention: (B, C, hc, wc) scale attention a in (0, 1) (sigmoid already applied).
        valid: (B or 1, 1, gh, gw) 1 where detail logits exist (the window), 0 elsewhere.
        context_fusion: "fused_grid" (CLUDA's release, docs/method.md §6): the attention is
            upsampled, masked and both terms weighted on the fused grid; "context_grid" (the
            HRDA and MIC releases): the attention is masked and ``1 - a`` weights the context
            logits on the context grid, both are upsampled afterwards.
        context_valid: ("context_grid") (B or 1, 1, hc, wc) the window on the context grid,
            None = everywhere (inference).

    Returns:
        ``fused_grid``: fused (B, C, gh, gw) = A * detail_canvas + (1 - A) * up(context_logits),
        A = up(attention) * valid; ``context_grid``: fused = A * detail_canvas +
        up((1 - a') * context_logits), A = up(a'), a' = attention * context_valid. ``up`` is
        bilinear (align_corners=False) to gh x gw. Returns (fused, A).
    """
    size = detail_canvas.shape[-2:]
    if context_fusion == "context_grid":
        a = attention if context_valid is None else attention * context_valid.to(attention.dtype)
        ctx = F.interpolate((1 - a) * context_logits, size=size, mode="bilinear", align_corners=False)
        a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
        return a * detail_canvas + ctx, a
    if context_fusion != "fused_grid":
        raise ValueError(f"hrda.py: context_fusion={context_fusion!r}, expected one of {CONTEXT_FUSIONS}")
    ctx = F.interpolate(context_logits, size=size, mode="bilinear", align_corners=False)
    a = F.interpolate(attention, size=size, mode="bilinear", align_corners=False) * valid.to(attention.dtype)
    return a * detail_canvas + (1 - a) * ctx, a


@torch.no_grad()
def max_entropy_window(context_logits: Tensor, image_size: tuple[int, int], window: tuple[int, int],
                       stride: tuple[int, int], divisible: int = 8, per_image: bool = False,
                       compat: bool = False) -> Boxes:
    """The window of the batch with the highest mean prediction entropy (CLUDA's choice of the mixed
    batch's detail window after iteration 12 000).

    Args:
        context_logits: (B, C, hc, wc) logits (pre-softmax) of the context pass over the image.
        image_size: (H, W) of the input the windows live in.
        window: (h, w) window size (512, 512); clipped to the image.
        stride: (sh, sw) between candidate starts (256, 256), see :func:`window_starts`.
        divisible: candidate corners are multiples of this (8).
        per_image: one window per image (the release) instead of one for the batch.
        compat: the release's search (:func:`_release_entropy_search`) instead of the argmax.

    The per-pixel entropy -sum_c p_c log p_c of softmax(logits) is bilinearly resized to H x W;
    the score of a window is its mean over the window and the batch, or, with ``per_image`` (the
    release), over the window in each image, giving each image its own window. Ties go to the
    first candidate in row-major order. With ``compat`` (``model.hrda.entropy_window_compat``) the
    release's procedure instead: its entropy map resized by nearest neighbour and its in-place
    search (:func:`_release_entropy_search`), whose window differs from the argmax's for about a
    fifth of images (docs/method.md §9). Returns (y0, x0, y1, x1), or a list of B of them with
    ``per_image``. One host sync (the argmaxes).
    """
    (height, width), (wh, ww) = image_size, window
    wh, ww = min(wh, height), min(ww, width)
    starts_y = window_starts(height, wh, stride[0], divisible)
    starts_x = window_starts(width, ww, stride[1], divisible)
    ys = host_tensor(starts_y, context_logits.device)
    xs = host_tensor(starts_x, context_logits.device)
    if compat:
        ent = _release_entropy(context_logits, image_size)
        if not per_image:
            ent = ent.mean(dim=0, keepdim=True)
        best = _release_entropy_search(ent, [(y, x) for y in starts_y for x in starts_x], (wh, ww))
    else:
        logp = F.log_softmax(context_logits.float(), dim=1)
        ent = -(logp.exp() * logp).sum(dim=1, keepdim=True)
        ent = F.interpolate(ent, size=tuple(image_size), mode="bilinear", align_corners=False)[:, 0]
        if not per_image:
            ent = ent.mean(dim=0, keepdim=True)
        # integral images (one per image, or one for the batch): every window sum in one gather
        integral = F.pad(ent.double().cumsum(1).cumsum(2), (1, 0, 1, 0))
        y0, x0 = ys[:, None], xs[None, :]
        sums = (integral[:, y0 + wh, x0 + ww] - integral[:, y0, x0 + ww] - integral[:, y0 + wh, x0]
                + integral[:, y0, x0])
        best = sums.flatten(1).argmax(dim=1)
    host = torch.stack([ys[best // xs.numel()], xs[best % xs.numel()]], dim=1).flatten().cpu()  # the one sync
    flat = []
    for v in host:  # int() of host values: visible to the CPU sync audit (tolist() is not)
        flat.append(int(v))
    boxes = [(by, bx, by + wh, bx + ww) for by, bx in zip(flat[0::2], flat[1::2])]
    return boxes if per_image else boxes[0]


def _release_entropy(context_logits: Tensor, image_size: tuple[int, int]) -> Tensor:
    """The release's entropy map (its ``get_entropy``, then a nearest resize): softmax
    probabilities, a probability of exactly 0 replaced by 1e-8, -sum_c p_c log p_c / (C log C),
    resized to ``image_size`` by nearest neighbour. (B, C, hc, wc) logits -> (B, H, W) float32."""
    p = F.softmax(context_logits.float(), dim=1)
    p = torch.where(p == 0, torch.full_like(p, 1e-8), p)
    k = float(p.shape[1])  # the release writes 19, the number of classes of its presets
    ent = -(p * p.log()).sum(dim=1, keepdim=True) / (k * math.log(k))
    return F.interpolate(ent, size=tuple(image_size), mode="nearest")[:, 0]


def _release_entropy_search(ent: Tensor, starts: list[tuple[int, int]], window: tuple[int, int]) -> Tensor:
    """The release's max-entropy search (``max_entropy_crop`` of CLUDA's
    ``hrda_encoder_decoder.py``) on maps ``ent`` (B, H, W) over the windows of size ``window`` at
    ``starts`` (row-major): (B,) the index in ``starts`` of the window each image ends on.

    The release keeps its best window as a *view* of the entropy map at the first candidate and
    assigns a better candidate into that view, so the map's first window is overwritten with the
    best values so far, and every later candidate that overlaps the first window is scored on the
    overwritten values. Each comparison is strict (``>``) against the mean of the first window's
    current contents. The copy reads the candidate before writing, as the release's sequential copy
    does (the first window lies at the origin, so no element is written before it is read). The
    release handles exactly two images; this does any B. Sync-free: the decisions stay on the
    device.
    """
    ent = ent.double().clone()  # the map is overwritten, as in the release, but not the caller's
    wh, ww = window
    (fy, fx), rest = starts[0], starts[1:]
    first = ent[:, fy:fy + wh, fx:fx + ww]  # the release's `e_max`: a view of the map
    first_mean = first.mean(dim=(1, 2))
    best = torch.zeros(ent.shape[0], dtype=torch.long, device=ent.device)
    for k, (y, x) in enumerate(rest, 1):
        cand = ent[:, y:y + wh, x:x + ww]
        mean = cand.mean(dim=(1, 2))
        better = mean > first_mean
        first.copy_(torch.where(better[:, None, None], cand, first))  # `e_max[b] = ecp[b]`
        first_mean = torch.where(better, mean, first_mean)
        best = torch.where(better, torch.full_like(best, k), best)
    return best


# --------------------------------------------------------------------------------------- module
class HRDASegmentor(nn.Module):
    """Multi-resolution (context + detail) training and inference around a :class:`Segmentor`.

    Args:
        segmentor: the shared encoder + decoder (any encoder/head pair).
        num_classes: C.
        context_scale: the context input is the whole crop resized by this (0.5).
        detail_crop: (h, w) detail window at full scale (512, 512).
        detail_divisible: detail window corners are multiples of this (8); must be a multiple of
            the segmentor's output stride.
        detail_loss_weight: weight of the detail CE (0.1; the fused CE gets 1 - this). Stored for
            the trainer.
        inference_stride: (sh, sw) between detail windows in inference (256, 256).
        feat_weighter: add CLUDA's one-channel weight head.
        embed_dim, fused_dim, dropout: of the attention and weight heads (DAFormer-style per-level
            embeddings to ``embed_dim``, 1x1 conv-BN-ReLU fusion to ``fused_dim``).
        entropy_per_image: the max-entropy window is chosen per image (the release) or one for
            the batch.
        entropy_compat: choose it by the release's in-place search (:func:`max_entropy_window`).
        attention_dim: if given, both widths of those two heads (the release's
            ``attention_embed_dim`` = 256, whatever the decoder's width); None = the two above.
        inference_batch: detail windows forwarded together in inference (0 = all at once).
        context_fusion: "fused_grid" (default; CLUDA's release) or "context_grid" (the HRDA and
            MIC releases), see :func:`fuse_scales`. Checkpoints of the HRDA / MIC code compute
            their outputs only with "context_grid" (bench/results/release_compare.md).

    ``.encoder`` / ``.decoder`` are the wrapped segmentor's (parameter groups, FD's ImageNet copy).
    """

    def __init__(self, segmentor: Segmentor, num_classes: int, *, context_scale: float = 0.5,
                 detail_crop: tuple[int, int] = (512, 512), detail_divisible: int = 8,
                 detail_loss_weight: float = 0.1, inference_stride: tuple[int, int] = (256, 256),
                 feat_weighter: bool = False, embed_dim: int = 256, fused_dim: int = 256,
                 attention_dim: int | None = None, dropout: float = 0.1,
                 inference_batch: int = 0, entropy_per_image: bool = True,
                 entropy_compat: bool = False, context_fusion: str = "fused_grid") -> None:
        super().__init__()
        if context_fusion not in CONTEXT_FUSIONS:
            raise ValueError(f"model.hrda.context_fusion={context_fusion!r}, expected one of "
                             f"{CONTEXT_FUSIONS}")
        self.context_fusion = context_fusion
        stride = int(segmentor.output_stride)
        if detail_divisible % stride:
            raise ValueError(
                f"model.hrda.detail_divisible={detail_divisible} must be a multiple of the "
                f"segmentor's output stride {stride}"
            )
        if not 0.0 < context_scale <= 1.0:
            raise ValueError(f"model.hrda.context_scale={context_scale} must be in (0, 1]")
        self.segmentor = segmentor
        self.num_classes = num_classes
        self.context_scale = float(context_scale)
        self.detail_crop = (int(detail_crop[0]), int(detail_crop[1]))
        self.detail_divisible = int(detail_divisible)
        self.detail_loss_weight = float(detail_loss_weight)
        self.inference_stride = (int(inference_stride[0]), int(inference_stride[1]))
        self.inference_batch = int(inference_batch)
        self.entropy_per_image = bool(entropy_per_image)
        self.entropy_compat = bool(entropy_compat)
        self.output_stride = stride
        channels = tuple(segmentor.encoder.out_channels)
        # the release builds both heads at attention_embed_dim (256) whatever the decoder's width
        head_embed, head_fused = (embed_dim, fused_dim) if attention_dim is None else (attention_dim,) * 2
        self.scale_attention = DAFormerHead(channels, num_classes, head_embed, head_fused,
                                            dropout=dropout, fusion="conv1x1")
        self.feat_weighter = (DAFormerHead(channels, 1, head_embed, head_fused, dropout=dropout,
                                           fusion="conv1x1") if feat_weighter else None)

    @classmethod
    def from_config(cls, segmentor: Segmentor, model_cfg: Any) -> HRDASegmentor:
        """Wrap ``segmentor`` with the settings of a ``ModelConfig`` (its ``hrda`` section,
        ``num_classes``, ``embed_dim``, ``fused_dim``, ``dropout``; ``hrda.attention_dim`` sets the
        width of the scale-attention and feat_weighter heads; ``hrda.context_fusion`` the order of
        the scale fusion)."""
        h = model_cfg.hrda
        net = cls(segmentor, model_cfg.num_classes, context_scale=h.context_scale,
                  detail_crop=tuple(h.detail_crop), detail_divisible=h.detail_divisible,
                  detail_loss_weight=h.detail_loss_weight,
                  inference_stride=tuple(h.inference_stride), feat_weighter=h.feat_weighter,
                  embed_dim=model_cfg.embed_dim, fused_dim=model_cfg.fused_dim,
                  attention_dim=h.attention_dim, dropout=model_cfg.dropout,
                  entropy_per_image=h.entropy_window_per_image,
                  entropy_compat=h.entropy_window_compat, context_fusion=h.context_fusion)
        if getattr(model_cfg, "decoder_init", "torch") == "mmcv":  # the release's ConvModule init
            init_conv_modules(net.scale_attention)
            if net.feat_weighter is not None:
                init_conv_modules(net.feat_weighter)
        return net

    @property
    def encoder(self) -> nn.Module:
        return self.segmentor.encoder

    @property
    def decoder(self) -> nn.Module:
        return self.segmentor.decoder

    # ------------------------------------------------------------------ pieces
    def context_input(self, x: Tensor) -> Tensor:
        """x (B, 3, H, W) -> the context input (B, 3, round(H*scale), round(W*scale)), bilinear."""
        if self.context_scale == 1.0:
            return x
        size = (round(x.shape[-2] * self.context_scale), round(x.shape[-1] * self.context_scale))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def _context(self, x: Tensor) -> tuple[SegOutput, Tensor, Tensor | None]:
        ctx = self.segmentor(self.context_input(x), return_stages=True)
        att = torch.sigmoid(self.scale_attention(ctx.stages)[0])
        wmap = torch.sigmoid(self.feat_weighter(ctx.stages)[0]) if self.feat_weighter is not None else None
        return ctx, att, wmap

    def _grid(self, x: Tensor) -> tuple[int, int]:
        return math.ceil(x.shape[-2] / self.output_stride), math.ceil(x.shape[-1] / self.output_stride)

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, *, return_stages: bool = False, inference: bool | None = None,
                box: Boxes | None = None, window: str = "random",
                generator: torch.Generator | None = None) -> HRDAOutput:
        """x (B, 3, H, W) normalised images -> :class:`HRDAOutput`.

        ``inference`` (default: ``not self.training``) selects :meth:`predict`. In training the
        detail window is ``box`` when given, else ``window="random"`` (drawn from ``generator``) or
        ``window="entropy"`` (:func:`max_entropy_window` of the context logits).
        """
        if inference is None:
            inference = not self.training
        if inference:
            return self.predict(x, return_stages=return_stages)
        size = (x.shape[-2], x.shape[-1])
        ctx, att, wmap = self._context(x)
        if box is None:
            if window == "random":
                box = random_window(size, self.detail_crop, self.detail_divisible, generator)
            elif window == "entropy":
                box = max_entropy_window(ctx.logits.detach(), size, self.detail_crop,
                                         self.inference_stride, self.detail_divisible,
                                         per_image=self.entropy_per_image,
                                         compat=self.entropy_compat)
            else:
                raise ValueError(f"hrda.py: window={window!r}, expected 'random' or 'entropy'")
        det = self.segmentor(crop_to_box(x, box))
        out = HRDAOutput(ctx.logits, ctx.fused, ctx.stages if return_stages else None, ctx.embedding,
                         context_logits=ctx.logits, detail_logits=det.logits, detail_fused=det.fused,
                         detail_embedding=det.embedding, weight_map=wmap, box=box,
                         stride=self.output_stride)
        grid = self._grid(x)
        canvas = place_in_canvas(det.logits, out.grid_box(), grid)
        ones = det.logits.new_ones(((x.shape[0] if _per_image(box) else 1), 1) + det.logits.shape[-2:])
        valid = place_in_canvas(ones, out.grid_box(), grid)
        cvalid = None
        if self.context_fusion == "context_grid":  # the window on the context grid, as the release cuts it
            cstride = self.output_stride / self.context_scale
            cbox = ([self._context_box(b, cstride) for b in box] if _per_image(box)
                    else self._context_box(box, cstride))
            y0, x0, y1, x1 = cbox[0] if _per_image(cbox) else cbox  # per-image boxes share a size
            cones = att.new_ones(((x.shape[0] if _per_image(box) else 1), 1, y1 - y0, x1 - x0))
            cvalid = place_in_canvas(cones, cbox, att.shape[-2:])
        out.logits, out.attention = fuse_scales(ctx.logits, canvas, att, valid,
                                                context_fusion=self.context_fusion, context_valid=cvalid)
        return out

    @staticmethod
    def _context_box(box: Box, stride: float) -> Box:
        """A detail window in input pixels -> context-grid cells (truncated, as the release's
        ``scale_box``), for the "context_grid" fusion."""
        return tuple(int(v / stride) for v in box)  # type: ignore[return-value]

    def predict(self, x: Tensor, *, return_stages: bool = False) -> HRDAOutput:
        """HRDA inference on x (B, 3, H, W): whole context + overlapping detail windows, averaged.

        Works in either module mode (the train-mode EMA teacher uses it for pseudo-labels).
        """
        ctx, att, wmap = self._context(x)
        height, width = x.shape[-2:]
        s = self.output_stride
        boxes = [(y0, x0, y0 + min(self.detail_crop[0], height), x0 + min(self.detail_crop[1], width))
                 for y0 in window_starts(height, self.detail_crop[0], self.inference_stride[0], s)
                 for x0 in window_starts(width, self.detail_crop[1], self.inference_stride[1], s)]
        grid = self._grid(x)
        summed = count = None
        chunk = self.inference_batch or len(boxes)
        for start in range(0, len(boxes), chunk):
            part = boxes[start : start + chunk]
            logits = self.segmentor(torch.cat([crop_to_box(x, b) for b in part])).logits
            if summed is None:
                summed = logits.new_zeros((x.shape[0], logits.shape[1]) + grid)
                count = logits.new_zeros((1, 1) + grid)
            ones = logits.new_ones((1, 1) + logits.shape[-2:])
            for k, b in enumerate(part):
                gb = _grid_box(b, s)
                summed = summed + place_in_canvas(logits[k * x.shape[0] : (k + 1) * x.shape[0]], gb, grid)
                count = count + place_in_canvas(ones, gb, grid)
        detail = summed / count.clamp_min(1)
        fused, a = fuse_scales(ctx.logits, detail, att, (count > 0).to(att.dtype),
                               context_fusion=self.context_fusion)
        return HRDAOutput(fused, ctx.fused, ctx.stages if return_stages else None, ctx.embedding,
                          context_logits=ctx.logits, detail_logits=detail, attention=a,
                          weight_map=wmap, stride=s)
