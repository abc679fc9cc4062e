"""Draw the README's "Why a tree" figure: S(p, .) of the tree, raster and cross variants
trained by `grootvl ablate`, on one held-out Pathfinder image, p at one of its markers.

    python tools/why_tree_figure.py --ablation runs/ablate --output docs/images/why_tree.png

Runs `grootvl visualize` once per variant (the seed-0 checkpoint of the pathfinder task)
and stacks the three figures, one row per variant.
"""
from __future__ import annotations

import argparse
import json
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
    from grootvl.data.pathfinder import DIFFICULTY_DEFAULTS
    from grootvl.tasks.ablation import SETTINGS_FILE

    runs = Path(args.ablation) / "runs" / "pathfinder"
    missing = [v for v in VARIANTS if not (runs / v / "seed0" / "last.pth").is_file()]
    if missing:
        raise SystemExit(f"{runs}: no finished seed-0 run of {', '.join(missing)}; run "
                         f"grootvl ablate --tasks pathfinder --variants {','.join(VARIANTS)} "
                         f"--output {args.ablation} first")
    settings = json.loads((runs / VARIANTS[0] / "seed0" / SETTINGS_FILE).read_text())
    gen, size = settings["generated"], settings["data"]["img_size"]
    # held-out images: the validation stream starts after the training images
    images, labels = pathfinder(64, size, gen["seed"], start=gen["train_images"],
                                **gen["options"])
    image = images[np.flatnonzero(labels.numpy() == 1)[args.index]].numpy()
    marker = gen["options"].get("marker_intensity", DIFFICULTY_DEFAULTS["marker_intensity"])
    rows, cols = np.nonzero(image == marker)
    pixel = (str(rows[0] / (size - 1)), str(cols[0] / (size - 1)))  # a corner of a marker
    with tempfile.TemporaryDirectory() as tmp:
        panels = []
        for variant in VARIANTS:
            src = Path(tmp) / f"pathfinder_{variant}.png"  # the file name titles the panel
            Image.fromarray(image, mode="L").save(src)
            ckpt = runs / variant / "seed0" / "last.pth"
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
