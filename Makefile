PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch is pinned in pyproject to the CPU build that lies on disk here; pip takes it offline.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet -e '.[test,mnist1d,report]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/manymodels simulate --nodes 8 --rounds 20 --dataset digits --partition dirichlet:0.5 --report run.json

test: $(STAMP)
	$(PY) -m pytest -q

# The pure and in-process tests (under a minute): leaves out those marked slow or multiprocess.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not multiprocess"

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,mnist1d,bench]'
	$(PY) bench/bench_demo.py
	$(PY) bench/bench_scale.py
	$(PY) bench/bench_aggregation.py
	$(PY) bench/bench_transfer.py
	$(PY) bench/bench_pull.py
	$(PY) bench/bench_daemon.py
	$(PY) bench/bench_many_models.py
	$(PY) bench/bench_robustness.py
	$(PY) bench/bench_fuzz.py
	$(PY) bench/bench_hostile.py

clean:
	rm -rf $(VENV) run.json build *.egg-info
