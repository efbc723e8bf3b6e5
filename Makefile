# Two commands for a fresh machine: `make demo` (install + train the default OMGD run) and
# `make test` (install + run the test suite). Both install into .venv from requirements.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/omgd_demo

.PHONY: install install-export demo test lint stats bench clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# The optional export converters (requirements-export.txt says why --no-deps).
install-export: install
	$(PY) -m pip install -q --no-deps -r requirements-export.txt

demo: install
	$(PY) -m gankd_jax.main --config=configs/omgd.py --workdir=$(WORKDIR)

# The suite in two parts: single-process tests in parallel, then the multi-process ones
# (each starts its own JAX processes, so they run one at a time).
test: install
	$(PY) -m pytest -q -n 2 -m "not multiprocess" tests
	$(PY) -m pytest -q -m multiprocess tests

# Style checks configured in pyproject.toml [tool.pylint]: 2-space indents, no unused imports/variables.
lint: install
	$(PY) -m pylint gankd_jax configs tests benchmarks launch

stats: install
	$(PY) -m gankd_jax.model_stats --config=configs/omgd.py:unet_s16

bench: install
	$(PY) benchmarks/omgd_step.py --config=configs/omgd.py:unet_s16 --batch_size=4

clean:
	rm -rf $(VENV) runs
