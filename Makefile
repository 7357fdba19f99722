PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Debian packages the tests use: Fashion-MNIST (a dataset test), chromium (renders the HTML
# report), iproute2 and iptables (the NAT test network, tests/nat_network.py). Installed where
# apt-get can (root, Debian); elsewhere those tests skip and say why.
DEBS := dataset-fashion-mnist chromium iproute2 iptables
DEBS_STAMP := $(VENV)/.debs

# constraints.txt pins torch to the CPU build that lies on disk here (pip takes it offline), flwr and ray.
$(STAMP): $(PY) pyproject.toml constraints.txt $(DEBS_STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,mnist1d,report,dp,ray]'
	touch $(STAMP)

$(DEBS_STAMP): $(PY)
	@if [ -d /usr/share/datasets/fashion-mnist ] && command -v chromium >/dev/null && command -v iptables >/dev/null && command -v ip >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -qq --no-install-recommends $(DEBS) || \
		 (apt-get update -qq && apt-get install -y -qq --no-install-recommends $(DEBS))) >/dev/null \
		|| echo "could not install $(DEBS): the tests that need them will skip"; \
	else echo "no apt-get (or not root): $(DEBS) not installed; the tests that need them will skip"; fi
	touch $(DEBS_STAMP)

# The js-libp2p peer of the interop test (tests/test_interop_js.py), pinned by its package-lock.json,
# where node and npm exist (the registry is needed here only; the test runs offline). Elsewhere, or
# if npm fails, that test skips and says why.
JS_PEER  := tests/interop/js
JS_STAMP := $(JS_PEER)/node_modules/.installed

$(JS_STAMP): $(JS_PEER)/package-lock.json
	@if command -v node >/dev/null && command -v npm >/dev/null; then \
		(npm ci --prefix $(JS_PEER) --no-audit --no-fund --loglevel=error && touch $(JS_STAMP)) \
		|| echo "npm ci failed: the js-libp2p interop test will skip"; \
	else echo "no node or npm: the js-libp2p interop test will skip"; fi

demo: $(STAMP)
	$(VENV)/bin/manymodels simulate --nodes 8 --rounds 20 --dataset digits --partition dirichlet:0.5 --report run.json

test: $(STAMP) $(JS_STAMP)
	$(PY) -m pytest -q --durations=25

# The pure and in-process tests (under a minute): leaves out those marked slow or multiprocess.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not multiprocess"

bench: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,mnist1d,bench,dp]'
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
	$(PY) bench/bench_compression.py
	$(PY) bench/bench_privacy.py

clean:
	rm -rf $(VENV) run.json build *.egg-info $(JS_PEER)/node_modules
