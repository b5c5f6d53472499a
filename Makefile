# Two commands do all the set-up: `make lab` (the main job) and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
ROOTFLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
PYTEST_ARGS ?=

.PHONY: setup lab test bench demo chromium clean

setup: $(STAMP)

# Re-install only when the package metadata changes.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,fast]"
	touch $(STAMP)

# Debian's chromium for the browser tests (never `playwright install`).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

lab: setup
	$(BIN)/jupyter lab --ip=127.0.0.1 $(ROOTFLAG) notebooks/quickstart.ipynb

test: setup chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: setup
	$(BIN)/ivisit-nb demo

bench: setup
	$(BIN)/python bench/rooms.py
	$(BIN)/python bench/transfer.py

clean:
	rm -rf $(VENV) build dist *.egg-info
