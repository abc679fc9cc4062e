"""The package layers (docs/design.md, "Package layers"): no package imports one above it,
the engine knows no model family, ``import grootvl.ops`` stays light, and ``import grootvl``
still registers the GrootV models with timm whichever of the two is imported first."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "grootvl"

# what each package (or top-level module) of grootvl may import, besides itself
ALLOWED = {
    "errors": set(),
    "files": {"errors"},
    "ops": {"errors"},
    "layers": {"ops", "errors"},
    "models": {"layers", "ops", "files", "errors"},
    "grootl": {"ops", "errors"},
    "visualize": {"ops", "files", "errors"},
    "flops": {"models", "layers", "ops", "errors"},
    "data": {"files", "errors"},
    "engine": {"files", "errors"},
    "tasks": {"engine", "data", "models", "visualize", "flops", "files", "errors"},
    "cli": {"tasks", "engine", "data", "models", "grootl", "visualize", "flops", "layers", "ops",
            "files", "errors"},
}
# third-party packages a layer must not use
FORBIDDEN = {"ops": {"timm", "transformers"}, "layers": {"timm", "transformers"},
             "engine": {"transformers"}, "data": {"transformers"},
             "files": {"timm", "transformers"}}


def _component(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return parts[0]


def _imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in ``path``, function-level ones too."""
    package = ".".join(("grootvl", *path.relative_to(SRC).with_suffix("").parts))
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module
            if module != "grootvl":
                found.append((module, node.lineno))
            # "from . import x" / "from grootvl import models": the names may be modules
            found += [(f"{module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _modules():
    return [p for p in sorted(SRC.rglob("*.py")) if _component(p) in ALLOWED]


def test_every_package_has_a_place_in_the_layers():
    components = {_component(p) for p in SRC.rglob("*.py")}
    assert components - set(ALLOWED) <= {"__init__", "__main__"}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_package_imports_one_above_it(path):
    own = _component(path)
    bad = []
    for module, line in _imports(path):
        top = module.split(".")[0]
        if top == "grootvl" and module.count("."):
            target = module.split(".")[1]
            if target in ALLOWED and target != own and target not in ALLOWED[own]:
                bad.append(f"line {line}: {module}")
            elif target not in ALLOWED and module.count(".") == 1:
                bad.append(f"line {line}: {module} (an attribute of the package root)")
        elif module == "grootvl":
            bad.append(f"line {line}: grootvl (the package root)")
        elif top in FORBIDDEN.get(own, ()):
            bad.append(f"line {line}: {module}")
    assert not bad, f"{own} may import only {sorted(ALLOWED[own])}: {bad}"


def test_ops_hold_no_modules():
    for path in (SRC / "ops").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(b) for b in node.bases]
                assert not any("Module" in b for b in bases), f"{path.name}: {node.name}{bases}"
        for module, line in _imports(path):
            if module.startswith("torch.nn"):
                assert module.startswith("torch.nn.functional"), f"{path.name}:{line} {module}"


def test_engine_knows_no_model_family():
    pattern = re.compile(r"grootv(?!l)", re.IGNORECASE)
    for path in (SRC / "engine").rglob("*.py"):
        hits = [i + 1 for i, line in enumerate(path.read_text().splitlines()) if pattern.search(line)]
        assert not hits, f"engine/{path.name} names GrootV on lines {hits}"


def _python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(SRC.parent),
                                            "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_import_ops_pulls_in_neither_timm_nor_transformers():
    out = _python("import sys, grootvl.ops; "
                  "print(sorted(m for m in ('timm', 'transformers') if m in sys.modules))")
    assert out == "[]"


@pytest.mark.parametrize("order", ["import grootvl, timm", "import timm, grootvl"])
def test_import_grootvl_registers_the_models_with_timm_in_either_order(order):
    out = _python(f"{order}; m = timm.create_model('grootv_tiny', channels=8, depths=(1, 1, 1, 1)); "
                  "print(type(m).__name__, grootvl.GrootV is type(m), callable(grootvl.load_checkpoint))")
    assert out == "GrootV True True"
