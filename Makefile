# Two commands do everything on a fresh machine:
#   make demo   -- train a small GrootV on scikit-learn's digits, write runs/demo/
#   make test   -- run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test demo bench gpu-check venv clean

venv: $(STAMP)

# torch/torchvision are pinned here (not in pyproject) because the package itself works
# with any torch >= 2.4; this is the exact build the project is developed and tested with.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test,lm,dense]"
	touch $(STAMP)

# numba's on-disk cache checks only the time stamp of the file that defines a kernel, not of
# the helpers it inlines from other files: after a pull or an edit that changed only a helper,
# a cached kernel would keep the old code. Drop the whole cache when any kernel source changed.
NUMBA_SOURCES := $(wildcard src/grootvl/ops/*.py src/grootvl/data/*.py)
NUMBA_STAMP   := src/grootvl/__pycache__/numba-sources.stamp

$(NUMBA_STAMP): $(NUMBA_SOURCES)
	find src tests -name '*.nbi' -delete -o -name '*.nbc' -delete
	mkdir -p $(@D) && touch $@

test: $(STAMP) $(NUMBA_STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP) $(NUMBA_STAMP)
	$(PY) -m grootvl demo --output runs/demo --overwrite

bench: $(STAMP) $(NUMBA_STAMP)
	$(PY) benchmarks/bench_ops.py
	$(PY) benchmarks/bench_models.py

# Needs a CUDA GPU: Triton kernel correctness, then the GPU speed figures (about 5 min on an
# H100). Dry run of every code path on CPU (tiny shapes, Triton interpreter):
#   make gpu-check GPU_CHECK_ARGS="--device cpu --interpret"
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
