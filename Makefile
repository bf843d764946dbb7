# Quickstart: `make demo` (train the tiny A3 model on the stdlib corpus, then infill) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TORCH_STAMP := $(VENV)/.installed-torch-stamp
WORKDIR ?= runs/demo

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "a3jax needs Python 3.11+, found " + sys.version'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The tests also cover HF conversion, which needs the optional torch extra (a pinned CPU build).
$(TORCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,torch]'
	touch $(TORCH_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/a3jax demo --workdir=$(WORKDIR)

test: $(TORCH_STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

clean:
	rm -rf $(VENV) runs
