"""Write a grid of miniscapes samples: rows game / sim / real, each image above its labels.

    python data_scripts/miniscapes_figure.py docs/miniscapes.png [--n 4] [--size H W] [--gap G] [--alpha A]

Labels are drawn in the Cityscapes palette (ignore = black) blended over the image with weight
``--alpha`` (1 = labels only, which also keeps the PNG small).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cluda_kit.data.labels import colorize
from cluda_kit.data.miniscapes import DOMAINS, GAP, Miniscapes


def grid(n: int, size: tuple[int, int], gap: float, split: str = "val", alpha: float = 1.0) -> Image.Image:
    """Rows = domains, columns = samples 0..n-1 of ``split``; each cell is the image over its labels."""
    H, W = size
    pad, title = 4, 14
    cell_h = 2 * H + pad
    out = Image.new("RGB", (n * (W + pad) + pad, len(DOMAINS) * (cell_h + title) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for r, domain in enumerate(DOMAINS):
        ds = Miniscapes(domain, split, size=size, gap=gap)
        y = pad + r * (cell_h + title)
        draw.text((pad, y), f"{domain}" + (f" (gap {gap:g})" if domain == "real" else ""), fill=(0, 0, 0))
        for c in range(n):
            image, label = ds.render(c)
            col = colorize(label).astype(np.float32)
            blend = (alpha * col + (1 - alpha) * image.astype(np.float32)).astype(np.uint8)
            x = pad + c * (W + pad)
            out.paste(Image.fromarray(image), (x, y + title))
            out.paste(Image.fromarray(blend), (x, y + title + H + pad))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="output PNG")
    ap.add_argument("--n", type=int, default=4, help="scenes per domain")
    ap.add_argument("--size", type=int, nargs=2, default=(160, 320), metavar=("H", "W"))
    ap.add_argument("--gap", type=float, default=GAP, help="appearance gap of the real domain")
    ap.add_argument("--alpha", type=float, default=1.0, help="label weight over the image (0..1)")
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid(args.n, tuple(args.size), args.gap, alpha=args.alpha).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
