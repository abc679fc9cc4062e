"""How much does a trained ablation model rely on its scan topology?

    python tools/topology_swap.py --ablation runs/ablate [--task pathfinder] [--variant tree]

Loads the seed-N checkpoints of one variant from a `grootvl ablate` folder, evaluates them on
the task's held-out images as trained, then with every Tree SSM layer switched to each other
topology at test time (same weights), and prints the accuracies. For each Tree SSM layer it
also prints the size of the layer's output next to its input's (standard deviations, on
the first held-out batch), how much switching the layer to `raster` changes its output, and
the median decay per tree edge (near 1: every pixel weighs alike, whatever the graph).
A model whose accuracy survives the switch does not depend on the graph it was trained with.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

TOPOLOGIES = ("tree", "raster", "cross", "random")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ablation", required=True, help="output folder of grootvl ablate")
    parser.add_argument("--task", default="pathfinder")
    parser.add_argument("--variant", default="tree")
    args = parser.parse_args()

    from grootvl.data import generated_datasets
    from grootvl.engine.config import config_from_dict
    from grootvl.layers import TreeSSM
    from grootvl.models.factory import create_model
    from grootvl.models.weights import load_weights
    from grootvl.tasks.ablation import SETTINGS_FILE
    from grootvl.tasks.config import RunConfig

    runs = sorted((Path(args.ablation) / "runs" / args.task / args.variant).glob("seed*"))
    if not runs:
        raise SystemExit(f"no runs under {args.ablation}/runs/{args.task}/{args.variant}")
    torch.set_num_threads(1)
    rows = []
    for run in runs:
        settings = run / SETTINGS_FILE
        cfg = config_from_dict(RunConfig, json.loads(settings.read_text()), str(settings))
        g = cfg.generated
        _, val, classes = generated_datasets(
            g.name, cfg.data.img_size, g.train_images, g.val_images, seed=g.seed,
            options=g.options, mean=cfg.data.mean, std=cfg.data.std, in_chans=cfg.data.in_chans)
        model = create_model(cfg.model.name, len(classes), cfg.data.in_chans,
                             **cfg.model.kwargs)
        load_weights(model, run / "last.pth", model_name=cfg.model.name)
        model.eval()
        x = torch.stack([val[i][0] for i in range(len(val))])
        y = torch.tensor([val[i][1] for i in range(len(val))])
        layers = [m for m in model.modules() if isinstance(m, TreeSSM)]
        accuracy = {}
        with torch.no_grad():
            for topology in TOPOLOGIES:
                for layer in layers:
                    layer.topology = topology
                logits = torch.cat([model(x[i:i + 256]) for i in range(0, len(x), 256)])
                accuracy[topology] = 100.0 * float((logits.argmax(1) == y).float().mean())
            for layer in layers:
                layer.topology = cfg.model.kwargs.get("topology", "tree")
            sizes = _layer_sizes(model, layers, x[:64])
        rows.append((run.name, accuracy, sizes))
    print(f"{args.task}, variant {args.variant}: held-out top-1 with the Tree SSM layers "
          "switched at test time")
    print(f"{'run':8s}" + "".join(f"{t:>9s}" for t in TOPOLOGIES))
    for name, accuracy, _ in rows:
        print(f"{name:8s}" + "".join(f"{accuracy[t]:9.1f}" for t in TOPOLOGIES))
    print("per Tree SSM layer (first run): std(input), std(output), std(output change when "
          "switched to raster) / std(output), median edge decay exp(delta * A)")
    for i, (s_in, s_out, change, decay) in enumerate(rows[0][2]):
        print(f"  layer {i}: {s_in:.3f} {s_out:.4f} {change:.3f} {decay:.3f}")
    return 0


def _layer_sizes(model, layers, x) -> list[tuple[float, float, float]]:
    from grootvl.visualize import block_decay

    captured, convs = {}, {}

    def hook(layer, inputs, output):
        captured[layer] = (inputs[0], output[0])

    handles = [layer.register_forward_hook(hook) for layer in layers]
    handles += [layer.conv2d.register_forward_hook(
        lambda m, i, o, layer=layer: convs.__setitem__(layer, o)) for layer in layers]
    model(x)
    for h in handles:
        h.remove()
    sizes = []
    for layer in layers:
        inp, out = captured[layer]
        own = layer.topology
        layer.topology = "raster"
        changed = layer(inp)[0]
        layer.topology = own
        guide = torch.nn.functional.silu(convs[layer].float())        # (B, D, H, W)
        decay = block_decay(layer, guide.permute(0, 2, 3, 1).reshape(-1, guide.shape[1]))
        sizes.append((float(inp.std()), float(out.std()),
                      float((changed - out).std() / out.std()), float(decay.median())))
    return sizes


if __name__ == "__main__":
    raise SystemExit(main())
