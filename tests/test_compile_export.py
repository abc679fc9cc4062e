"""torch.compile (default arguments, dynamic shapes, training) and torch.export of GrootV.

Inductor compiles C++ on first use (about a minute on a small machine, cached in the inductor
cache afterwards), so only ``test_compiled_training_and_inference_match_eager`` uses it; the
graph-break checks use Dynamo alone (``explain``) or the ``aot_eager`` backend.
"""
from __future__ import annotations

import copy

import pytest
import timm
import torch

import grootvl  # noqa: F401  registers grootv_*
from grootvl.models.compile import compile_model
from grootvl.models import GrootVBlock
from grootvl.layers.tree_ssm import TOPOLOGIES, TreeSSM
from grootvl.ops import grid_tree, random_grid_tree, tree_scan
from grootvl.ops.tree_scan import _drop_padded_levels

TINY = dict(channels=8, depths=(1, 2), num_classes=4, drop_path_rate=0.0)


def tiny(**kwargs):
    torch.manual_seed(0)
    return timm.create_model("grootv_tiny", **{**TINY, **kwargs})


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("train", [True, False])
def test_no_graph_break_in_a_model(train):
    model = tiny(tree_sharing="stage").train(train)
    with torch.set_grad_enabled(train):
        explained = torch._dynamo.explain(model)(torch.randn(2, 3, 32, 32))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_block_compiles_as_one_graph_with_gradients_equal_to_eager():
    block = GrootVBlock(8).train()
    compiled = copy.deepcopy(block)
    compiled.compile(fullgraph=True, backend="aot_eager")  # fullgraph: a break would raise
    x = torch.randn(2, 5, 6, 8)
    results = []
    for module in (block, compiled):
        xi = x.clone().requires_grad_(True)
        y, tree = module(xi)
        y.square().mean().backward()
        results.append((y, xi.grad, [p.grad for p in module.parameters()], tree))
    (y0, g0, p0, t0), (y1, g1, p1, t1) = results
    torch.testing.assert_close(y1, y0)
    torch.testing.assert_close(g1, g0)
    for a, b in zip(p1, p0):
        torch.testing.assert_close(a, b)
    assert torch.equal(t1.order, t0.order) and torch.equal(t1.parent, t0.parent)


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_every_scan_topology_and_root_compiles_as_one_graph(topology):
    """Chains, random trees and feature trees from every root: no graph break in a block
    (fullgraph=True raises on one), outputs and gradients equal to eager. ("first" takes the
    path of "last" with another root vertex.)"""
    for root in ("all", "last"):
        torch.manual_seed(0)
        block = GrootVBlock(8, topology=topology, root=root).train()
        compiled = copy.deepcopy(block)
        compiled.compile(fullgraph=True, backend="aot_eager")
        x = torch.randn(2, 3, 4, 8)
        results = []
        for module in (block, compiled):
            torch.manual_seed(1)  # the random topology draws its trees from the global generator
            xi = x.clone().requires_grad_(True)
            y, _ = module(xi)
            y.square().mean().backward()
            results.append((y, xi.grad))
        (y0, g0), (y1, g1) = results
        torch.testing.assert_close(y1, y0, msg=f"root={root}")
        torch.testing.assert_close(g1, g0, msg=f"root={root}")


def test_trees_built_while_compiling_have_static_level_width():
    """level_offsets comes padded with L to L + 1 columns; tree_scan gives the same result."""
    guide = torch.randn(3, 4, 5, 6)
    x, decay = torch.randn(3, 30, 7), torch.rand(3, 30, 7)

    def scan(g, a, d, impl):
        tree = grid_tree(g, root=29)
        return tree_scan(a, d, tree, impl=impl), tree.level_offsets, random_grid_tree(3, 5, 6).level_offsets

    compiled = torch.compile(scan, fullgraph=True, backend="aot_eager")
    for impl in ("numba", "torch", "reference"):
        torch.manual_seed(0)
        want, offsets, random_offsets = scan(guide, x, decay, impl)
        torch.manual_seed(0)
        got, padded, random_padded = compiled(guide, x, decay, impl)
        torch.testing.assert_close(got, want)
        assert padded.shape == random_padded.shape == (3, 31)
        assert torch.equal(_drop_padded_levels(padded, 30), offsets)
        assert torch.equal(_drop_padded_levels(random_padded, 30), random_offsets)


def test_compile_model_keeps_state_dict_names_and_rejects_non_grootv():
    model = compile_model(tiny())
    assert list(model.state_dict()) == list(tiny().state_dict())
    with pytest.raises(ValueError, match="has none; use regional=False"):
        compile_model(torch.nn.Linear(2, 2), regional=True)


def test_inductor_options_are_only_those_the_installed_torch_knows(monkeypatch):
    """PyTorch 2.11's Inductor has no strict_output_strides, and torch.compile refuses an
    unknown option (seen on the lent GPU machine): compile_model must not pass it there."""
    from grootvl.models import compile as compile_module

    kwargs = {"mode": "max-autotune-no-cudagraphs", "dynamic": True}
    compile_module._require_exact_view_strides(kwargs)
    assert kwargs["options"]["strict_output_strides"] is True and "mode" not in kwargs
    monkeypatch.setattr(compile_module, "_inductor_has_option", lambda name: False)
    kwargs = {"mode": "max-autotune-no-cudagraphs", "dynamic": True}
    compile_module._require_exact_view_strides(kwargs)
    assert kwargs == {"mode": "max-autotune-no-cudagraphs", "dynamic": True}


def test_regional_compilation_trains_blocks_of_every_size():
    """compile_model(regional=True): Inductor, one dynamic graph for blocks of any spatial size
    (the case that failed before Inductor was asked for exact view strides), gradients equal
    to eager."""
    torch.manual_seed(0)
    block = GrootVBlock(8).train()
    compiled = compile_model(copy.deepcopy(block), regional=True)
    for shape in ((2, 4, 5, 8), (3, 3, 2, 8)):
        x = torch.randn(shape)
        results = []
        for module in (block, compiled):
            xi = x.clone().requires_grad_(True)
            y, _ = module(xi)
            y.square().mean().backward()
            results.append((y, xi.grad, [p.grad.clone() for p in module.parameters()]))
            module.zero_grad()
        (y0, g0, p0), (y1, g1, p1) = results
        torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-5)
        for (name, _), a, b in zip(block.named_parameters(), p1, p0):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("lean", [True, False])
def test_compiled_training_keeps_the_memory_lean_op(lean):
    """With autograd, a compiled Tree SSM layer calls selective_tree_scan as one opaque op
    (four saved (B, L, D) tensors per layer, as in eager mode); lean_backward=False traces
    the plain composition instead."""
    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    layer = TreeSSM(8)
    layer.lean_backward = lean
    out, _ = torch.compile(layer, backend=recording_backend)(torch.randn(2, 4, 5, 8))
    out.sum().backward()
    targets = {str(n.target) for gm in graphs for n in gm.graph.nodes}
    assert any("selective_tree_scan" in t for t in targets) == lean


@pytest.mark.slow
def test_compiled_training_and_inference_match_eager():
    """Default torch.compile (Inductor, dynamic shapes): several optimizer steps with a
    changing batch size give the losses, gradients and weights of eager mode; then inference.
    (SGD: Adam divides by the gradient's magnitude, which turns float rounding in near-zero
    gradients into lr-sized weight differences.)"""
    eager = tiny(depths=(1, 1)).train()  # two blocks: Inductor's compile time grows with the code
    model = compile_model(copy.deepcopy(eager))
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (eager, model)]
    gen = torch.Generator().manual_seed(1)
    for batch in (2, 3, 4):
        x = torch.randn(batch, 3, 16, 16, generator=gen)
        target = torch.randint(0, 4, (batch,), generator=gen)
        losses = []
        for m, opt in zip((eager, model), opts):
            loss = torch.nn.functional.cross_entropy(m(x), target)
            loss.backward()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
        for (name, p0), p1 in zip(eager.named_parameters(), model.parameters()):
            torch.testing.assert_close(p1.grad, p0.grad, rtol=1e-4, atol=1e-5, msg=name)
        for opt in opts:
            opt.step()
            opt.zero_grad()
    for (name, p0), p1 in zip(eager.named_parameters(), model.parameters()):
        torch.testing.assert_close(p1, p0, rtol=1e-4, atol=1e-5, msg=name)
    # another image size: compile_model asks Inductor for exact view strides, without which
    # the dynamic spatial sizes fail ("cannot determine truth value of Relational")
    x = torch.randn(2, 3, 24, 24, generator=gen)
    for m in (eager, model):
        m(x).square().mean().backward()
    for (name, p0), p1 in zip(eager.named_parameters(), model.parameters()):
        torch.testing.assert_close(p1.grad, p0.grad, rtol=1e-4, atol=1e-5, msg=name)
    eager.eval(), model.eval()
    with torch.inference_mode():
        for batch in (2, 5):
            x = torch.randn(batch, 3, 16, 16, generator=gen)
            torch.testing.assert_close(model(x), eager(x), rtol=1e-4, atol=1e-5)


def test_torch_export_with_dynamic_batch(tmp_path):
    model = tiny().eval()
    x = torch.randn(2, 3, 32, 32)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    # the scan runs with autocast off, which export keeps as a submodule (wrap_with_autocast)
    targets = {str(n.target) for g in program.graph_module.modules() if isinstance(g, torch.fx.GraphModule)
               for n in g.graph.nodes if n.op == "call_function"}
    # with autograd on, the layer's core is the memory-lean op; either way the tree is built
    # and scanned by grootvl's custom ops, not traced into
    assert "grootvl.grid_tree.default" in targets
    assert targets & {"grootvl.tree_scan.default", "grootvl.selective_tree_scan_v2.default"}
    torch.export.save(program, tmp_path / "grootv.pt2")
    loaded = torch.export.load(tmp_path / "grootv.pt2").module()
    with torch.inference_mode():
        for b in (1, 3):
            xb = torch.randn(b, 3, 32, 32)
            torch.testing.assert_close(loaded(xb), model(xb), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- grootvl train --compile

# batches of 2 from 3 classes x 2 images: every batch is full (one compiled graph for training, one for
# evaluation); evaluation after the second epoch only
_TRAIN = ["--img-size", "16", "--batch-size", "2", "--epochs", "2", "--warmup-epochs", "1",
          "--workers", "0", "--progress", "none", "--limit-train-steps", "2", "--device", "cpu",
          "--seed", "5", "--drop-path", "0", "--set", "model.kwargs={channels: 8, depths: [1, 1]}",
          "--set", "optim.name=sgd", "--set", "aug.auto_augment=null",
          "--set", "train.epochs_between_eval=2"]


def _last(out):
    return torch.load(out / "last.pth", weights_only=True)


def test_train_compile_resumes_and_matches_eager(tmp_path, monkeypatch):
    """``grootvl train --compile``, interrupted after its first epoch and resumed, ends with
    the weights, EMA weights, losses and metrics of an uninterrupted eager run within float
    rounding (SGD, see above; no drop path: compiled code draws its own random numbers), and
    its snapshots keep the plain parameter names."""
    from grootvl.cli.main import main
    from grootvl.engine import loop
    from grootvl.engine.progress import read_jsonl

    from test_cli_train import make_image_folder

    data = make_image_folder(tmp_path / "data", n_train=4, n_val=2)
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert main(["train", "--data", str(data), "--output", str(eager), *_TRAIN]) == 0

    class Preempted(Exception):
        pass

    real_epoch = loop._train_epoch

    def stop_at_second_epoch(parts, loader, epoch, *args):
        if epoch == 1:
            raise Preempted
        return real_epoch(parts, loader, epoch, *args)

    args = ["train", "--data", str(data), "--output", str(compiled), *_TRAIN, "--compile"]
    with monkeypatch.context() as patch:
        patch.setattr(loop, "_train_epoch", stop_at_second_epoch)
        with pytest.raises(Preempted):
            main(args)
    assert _last(compiled)["epoch"] == 0
    assert main([*args, "--resume", "auto"]) == 0

    want, got = _last(eager), _last(compiled)
    assert got["config"]["train"]["compile"] and not want["config"]["train"]["compile"]
    for entry in ("model", "model_ema"):
        assert list(got[entry]) == list(want[entry])  # no _orig_mod. prefixes
        for key, value in want[entry].items():
            torch.testing.assert_close(got[entry][key], value, rtol=1e-4, atol=1e-5, msg=key)
    logs = [[r for r in read_jsonl(out / "log.jsonl") if r["event"] == "epoch"]
            for out in (eager, compiled)]
    assert [r["epoch"] for r in logs[1]] == [0, 1]
    for e, c in zip(*logs):
        assert c["train_loss"] == pytest.approx(e["train_loss"], rel=1e-5)
    assert logs[1][1]["val_loss"] == pytest.approx(logs[0][1]["val_loss"], rel=1e-4)
    assert logs[1][1]["ema_val_loss"] == pytest.approx(logs[0][1]["ema_val_loss"], rel=1e-4)


@pytest.mark.parametrize("command", ["train", "det-train", "seg-train"])
def test_every_training_command_has_the_compile_flag(command, tmp_path, capsys):
    from grootvl.cli.main import main

    assert main([command, "--compile", "--print-config", "--output", str(tmp_path)]) == 0
    assert "  compile: true" in capsys.readouterr().out
