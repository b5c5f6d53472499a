# Two commands do all the set-up: `make lab` (the main job) and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
ROOTFLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
PYTEST_ARGS ?=
# The JupyterLab extension (labextension/): rebuilt only when its sources change.
LABEXT_SRC   := $(wildcard labextension/src/*.ts labextension/style/*) labextension/package.json labextension/yarn.lock labextension/tsconfig.json
LABEXT_STAMP := $(VENV)/.labextension
LABEXT_DEST  := $(VENV)/share/jupyter/labextensions/ivisit-nb

.PHONY: setup lab test bench demo system-packages chromium clean

setup: $(STAMP) $(LABEXT_STAMP)

# Re-install only when the package metadata changes (this also builds the extension).
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,fast]"
	touch $(STAMP) $(LABEXT_STAMP)

# Rebuild the extension after its sources change, and copy it where JupyterLab looks.
$(LABEXT_STAMP): $(LABEXT_SRC) | $(STAMP)
	cd labextension && PATH="$(abspath $(BIN)):$$PATH" jlpm install && PATH="$(abspath $(BIN)):$$PATH" jlpm build:prod
	rm -rf $(LABEXT_DEST) && mkdir -p $(LABEXT_DEST) && cp -r ivisit_nb/labextension/. $(LABEXT_DEST)/ && cp install.json $(LABEXT_DEST)/
	touch $(LABEXT_STAMP)

# Debian packages the tests need, installed with apt when missing (never `playwright install`):
# chromium (browser tests), redis-server (tests/test_cluster.py), coturn (TURN tests).
SYSTEM_PACKAGES := chromium:chromium redis-server:redis-server turnserver:coturn
system-packages:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for the tests:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; fi

chromium: system-packages

lab: setup
	$(BIN)/jupyter lab --ip=127.0.0.1 $(ROOTFLAG) notebooks/01-quickstart.ipynb

test: setup system-packages
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: setup
	$(BIN)/ivisit-nb demo

bench: setup
	$(BIN)/python bench/rooms.py
	$(BIN)/python bench/transfer.py --uvloop

clean:
	rm -rf $(VENV) build dist *.egg-info
