# Two entry points on a fresh machine: `make demo` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-gpu venv clean

venv: $(STAMP)

# torch/torchvision pinned at install time to the builds this machine serves from disk;
# pyproject.toml keeps ranges so other machines can resolve their own builds.
$(STAMP): pyproject.toml
	@echo "make venv: creating $(VENV) (about 2 minutes: torch, Ray and the rest; pip reports each step)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar off --upgrade pip
	$(PY) -m pip install --progress-bar off torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --progress-bar off -e '.[dev,demo]'
	touch $(STAMP)
	@echo "make venv: $(VENV) is ready"

# Two pytest-xdist workers: the tests that share one Ray session run in one of them, in order
# (tests/conftest.py groups them); the other tests go to whichever worker is free. The 20 slowest
# tests are listed at the end, where a suite that grows shows where.
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup --durations=20

# No Ray and no long end-to-end runs: a quick check while editing.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not e2e and not ray"

# The GPU suite (benchmarks/gpu_suite.py: tests/gpu, benchmarks/gpu_throughput.py, cluster.doctor), its
# results and logs in benchmarks/results/gpu/<date>-<gpu>/. Without CUDA every test skips ("no CUDA"),
# nothing is measured or written, and it exits 0. Its Python, the first that applies:
#  1. GPU_PYTHON=<python>: $(GPU_VENV) on top of that Python (its packages on the path: its CUDA torch,
#     matched to the machine's driver, and whatever else it holds), the project installed from WHEELS
#     (a folder of wheels, pip --no-index) when given, else from the package index;
#  2. $(VENV) when it is there (made by make venv, carried along, or VENV=<an installed environment>);
#  3. where nvidia-smi answers and $(PYTHON)'s torch already sees the GPU: as 1. with GPU_PYTHON=$(PYTHON)
#     (no torch download; a machine without a package index needs wheels only for what that Python lacks);
#  4. make venv: torch from PyPI, which on Linux x86-64 is the CUDA build (CUDA libraries as nvidia-* wheels).
# GPU_ARGS: arguments of benchmarks/gpu_suite.py (e.g. GPU_ARGS="--steps tests --pytest-args=-x");
# GPU_PIP_ARGS: more arguments of that pip install (--no-deps: the wheels given need be only the
# packages the code imports that GPU_PYTHON lacks, not every dependency's whole tree).
GPU_PYTHON ?=
GPU_VENV ?= .venv-gpu
WHEELS ?= $(wildcard .whl)
GPU_ARGS ?=
GPU_PIP_ARGS ?=

test-gpu:
	@gpu_python="$(GPU_PYTHON)"; \
	if [ -z "$$gpu_python" ] && [ ! -f $(STAMP) ] && nvidia-smi -L >/dev/null 2>&1 \
	   && $(PYTHON) -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then gpu_python="$(PYTHON)"; fi; \
	if [ -n "$$gpu_python" ]; then \
	  $(MAKE) --no-print-directory $(GPU_VENV)/.installed GPU_PYTHON="$$gpu_python" \
	  && $(GPU_VENV)/bin/python benchmarks/gpu_suite.py $(GPU_ARGS); \
	else \
	  $(MAKE) --no-print-directory $(STAMP) && $(PY) benchmarks/gpu_suite.py $(GPU_ARGS); \
	fi

# GPU_PYTHON's packages reach the new environment through a .pth file: --system-site-packages would
# reach only its base interpreter's, and a Python that holds torch is often itself a venv.
$(GPU_VENV)/.installed: pyproject.toml
	$(GPU_PYTHON) -m venv --without-pip $(GPU_VENV)
	$(GPU_PYTHON) -c "import sys; print('\n'.join(p for p in sys.path if p.endswith('-packages')))" \
	  > "$$($(GPU_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/gpu-python.pth"
	$(GPU_VENV)/bin/python -m pip install -q --no-build-isolation $(if $(WHEELS),--no-index --find-links $(WHEELS)) $(GPU_PIP_ARGS) -e '.[tests]'
	touch $@

demo: $(STAMP)
	$(PY) -m demo

clean:
	rm -rf $(VENV) $(GPU_VENV) runs .pytest_cache
