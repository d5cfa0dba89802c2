# Two entry points on a fresh machine: `make demo` and `make test`. Both create .venv when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast venv clean

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

test: $(STAMP)
	$(PY) -m pytest

# No Ray and no long end-to-end runs: a quick check while editing.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not e2e and not ray"

demo: $(STAMP)
	$(PY) -m demo

clean:
	rm -rf $(VENV) runs .pytest_cache
