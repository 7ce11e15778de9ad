# make tiny   -> the main job on the embedded tiny profile (installs first if needed)
# make test   -> the test suite (what CI runs)
PY ?= python3
DEPS_HASH := $(shell cat pyproject.toml | sha256sum | cut -c1-16)
VENV ?= $(HOME)/.cache/gsco/venv-$(DEPS_HASH)
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/gsco/torch_extensions
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DS_BUILD_OPS := 0
export DS_ACCELERATOR ?= cpu
export TOKENIZERS_PARALLELISM := false
PYTEST_ARGS ?=

.PHONY: install tiny test clean

# The environment is keyed on the dependency pins and shared between checkouts; the project itself is re-pointed
# at this checkout (editable, no deps) on every call, which takes a few seconds.
$(VENV)/.deps-installed:  # keyed on the pins through $(VENV) itself (a fresh clone's newer mtime must not rebuild)
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip setuptools wheel
	$(VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install -q --no-build-isolation -e ".[dev]"
	touch $@

install: $(VENV)/.deps-installed
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e .

tiny: install
	$(VENV)/bin/gsco run --profile tiny

test: install
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

clean:
	rm -rf outputs .pytest_cache
