# make demo / make test work on a fresh clone: they build .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

# torch==2.13.0 first: on this machine it is the local CPU build; a bare
# "torch" requirement on a clean machine would pull a multi-GB CUDA build.
# Then the sub-cluster sampler's numba kernels are compiled into their on-disk
# cache (about 45 s), so that the first fit does not pay for it.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	$(PY) -c 'from bnpdeep.inference.subcluster import compile_kernels as c; print(f"compiled sub-cluster kernels ready in {c():.1f} s")'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/bnpdeep demo

# one test process per core (pytest-xdist), each on one thread (tests/conftest.py)
test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist worksteal --durations=25

lint: $(STAMP)
	$(VENV)/bin/ruff check bnpdeep models inference tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/run_benchmarks.py   # every run of the report, then benchmarks/README.md

clean:
	rm -rf $(VENV) build *.egg-info
