"""Draw the README's "Why a tree" figure: S(p, .) of the tree, raster and cross variants
trained by `grootvl ablate`, on one held-out Pathfinder image, p at one of its markers.

    python tools/why_tree_figure.py --ablation runs/ablate --output docs/images/why_tree.png

Runs `grootvl visualize` once per variant (the seed-0 checkpoint of the pathfinder task)
and stacks the three figures, one row per variant.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

VARIANTS = ("tree", "raster", "cross")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ablation", required=True, help="output folder of grootvl ablate")
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--index", type=int, default=1, help="which held-out connected image")
    parser.add_argument("--stage", type=int, default=0)
    args = parser.parse_args()

    from grootvl.data import pathfinder

    first_val = 4000  # ablate_pathfinder: 4000 training images, validation follows
    images, labels = pathfinder(64, 32, 0, start=first_val)
    image = images[np.flatnonzero(labels.numpy() == 1)[args.index]].numpy()
    rows, cols = np.nonzero(image == 255)  # marker pixels (marker_intensity)
    pixel = (str(rows[0] / 31), str(cols[0] / 31))  # a corner of the first marker
    with tempfile.TemporaryDirectory() as tmp:
        panels = []
        for variant in VARIANTS:
            src = Path(tmp) / f"pathfinder_{variant}.png"  # the file name titles the panel
            Image.fromarray(image, mode="L").save(src)
            ckpt = Path(args.ablation) / "runs" / "pathfinder" / variant / "seed0" / "last.pth"
            out = Path(tmp) / variant
            subprocess.run([sys.executable, "-m", "grootvl", "visualize", "--checkpoint",
                            str(ckpt), "--image", str(src), "--output", str(out),
                            "--stage", str(args.stage), "--pixel", *pixel], check=True)
            panels.append(Image.open(next(out.glob("*.png"))).convert("RGB"))
    width = max(p.width for p in panels)
    figure = Image.new("RGB", (width, sum(p.height for p in panels)), "white")
    top = 0
    for panel in panels:
        figure.paste(panel, (0, top))
        top += panel.height
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    figure.save(args.output)
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
