"""grootvl: tree-topology state space models (GrootV, GrootL) on CPU and GPU.

Packages, bottom to top (each imports only the ones listed before it; docs/design.md,
"Package layers"): ``errors``; ``ops`` (tree construction and tree scans); ``layers`` (the Tree
SSM layer); ``models`` (GrootV, registered with timm; release weights; dense-prediction
models), ``grootl`` (tree scanning in Hugging Face Mamba language models); ``data`` (data sets);
``engine`` (the training loop, for any model); ``tasks`` (classification, detection and
segmentation plug-ins of the engine, and the typed run config); ``cli`` (the ``grootvl`` command).
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

# ``import grootvl`` stays light: the operators (``import grootvl.ops``) need neither timm nor
# transformers, and importing timm takes seconds. Yet ``import grootvl`` has always made
# ``timm.create_model("grootv_tiny")`` work, so the grootv_* names are registered as soon as
# both packages are loaded: now, if timm already is; otherwise right after timm's own import
# completes, by the one-shot finder below (timm reads no plugin entry points, and no timm
# function can be wrapped before timm is imported). ``grootvl.GrootV`` and
# ``grootvl.load_checkpoint`` are looked up on first use (module ``__getattr__``).
_LAZY = {"GrootV": "grootvl.models", "load_checkpoint": "grootvl.models.weights"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'grootvl' has no attribute {name!r}")


class _RegisterWithTimm(importlib.abc.MetaPathFinder):
    """Finds nothing itself; when ``timm`` is being imported, wraps its loader so that
    ``grootvl.models`` (whose import registers grootv_*) is imported once timm is complete."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from finding us
        spec = importlib.util.find_spec("timm")
        if spec is not None and spec.loader is not None:
            exec_module = spec.loader.exec_module

            def exec_then_register(module):
                exec_module(module)
                _register()

            spec.loader.exec_module = exec_then_register
        return spec


def _register() -> None:
    try:
        importlib.import_module("grootvl.models")
    except Exception as exc:  # a broken grootvl install must not make `import timm` fail
        import warnings

        warnings.warn(f"grootvl could not register its models with timm: {exc!r}",
                      RuntimeWarning, stacklevel=2)


if "timm" in sys.modules:
    _register()
elif not any(isinstance(f, _RegisterWithTimm) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWithTimm())

__all__ = ["GrootV", "load_checkpoint", "__version__"]
