# The two commands a newcomer needs: `make demo` and `make test` (each sets itself up).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint format prometheus clean bench bench-smoke

$(STAMP): pyproject.toml
	@echo ">> creating $(VENV) and installing torch 2.13.0 (CPU) and the project"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 numpy
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

# The frameworks the hook tests train with (TensorFlow CPU, Keras, Lightning, transformers).
$(TEST_STAMP): $(STAMP)
	@echo ">> installing the training frameworks the hook tests use (CPU builds)"
	$(BIN)/pip install -q -e '.[dev,test-frameworks]'
	@touch $@

# Debian's prometheus package gives the real `prometheus` and `promtool` the tests run.
prometheus:
	@command -v promtool >/dev/null 2>&1 || { \
	  echo ">> installing Prometheus (Debian package) for the tests"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root for apt-get: run 'sudo apt-get install -y prometheus' first"; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }

demo: $(STAMP)
	$(BIN)/profiler demo

test: $(TEST_STAMP) prometheus
	PROFILER_REQUIRE_PROMTOOL=1 $(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

# Benchmarks (bench/README.md): the peers (CodeCarbon from test-frameworks; Zeus if it installs,
# else its column reads n/a) and Keras for the callback's overhead come with the test set-up.
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(TEST_STAMP)
	@echo ">> installing Zeus 0.16 (a peer in the benchmarks)"
	$(BIN)/pip install -q 'zeus==0.16.0' || echo ">> Zeus did not install: its figures show n/a"
	@touch $@

# All six, one table, JSON in bench/results/ (about 10 minutes).
bench: $(BENCH_STAMP)
	$(BIN)/python bench/run_all.py

# The same, tiny and all at once (about a minute): they run and give numbers; no timing is judged.
bench-smoke: $(TEST_STAMP)
	$(BIN)/python bench/run_all.py --smoke
