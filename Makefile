# Two commands on a fresh machine:  `make app` (train the default model if needed, open the app)
# and `make test`. Both create .venv first if it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch by default. A GPU user picks a CUDA build, e.g.
#   make TORCH_INSTALL="torch --index-url https://download.pytorch.org/whl/cu128" app
TORCH_INSTALL ?= torch==2.13.0
RUNS ?= runs
PORT ?= 8501

.PHONY: venv app train test test-fast lint format benchmarks gpu-check clean-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(TORCH_INSTALL)
	$(PY) -m pip install -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

train: venv
	@test -f $(RUNS)/induction/config.json || $(PY) -m blocks.train --task induction --out $(RUNS)/induction

app: train
	$(PY) -m streamlit run app.py --server.address 127.0.0.1 --server.port $(PORT) -- --runs $(RUNS)

# everything CI checks: lint, format, and the whole suite (slow tests included)
test: venv lint
	@$(PY) scripts/ensure_chromium.py
	$(PY) -m pytest -q -n 2

# the suite without the tests marked slow (compile, DDP, kernel builds, notebooks, the browser)
test-fast: venv
	$(PY) -m pytest -q -n 2 -m "not slow"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

benchmarks: venv
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

gpu-check: venv
	$(PY) scripts/gpu_check.py

clean-venv:
	rm -rf $(VENV)
