# The README's commands. Each target sets up what it needs, idempotently:
#   make setup   system packages, .venv with torch==2.13.0, the editable build (with C++ tests)
#   make demo    the main job on the embedded default data: three base models, then EnStack
#   make test    every test: C++ (ctest) and Python (pytest)
#   make build   incremental rebuild of the C++ core into the editable install
#   make bench   benchmarks (ratios against references measured in the same run)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
BUILD := build/dev
STAMPS := .stamps
TORCH_SPEC ?= torch==2.13.0
JOBS ?= $(shell nproc)

.PHONY: help setup build demo test test-cpp test-python bench clean FORCE

help:
	@sed -n '2,7p' Makefile | sed 's/^# *//'

$(STAMPS)/system: scripts/system-packages.txt scripts/install-system-packages.sh
	@mkdir -p $(STAMPS)
	./scripts/install-system-packages.sh
	@touch $@

$(STAMPS)/venv: $(STAMPS)/system
	@mkdir -p $(STAMPS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@touch $@

# The editable install records the file of each Python module it saw: after a module is added,
# moved or removed it must be reinstalled (a pip run reusing build/dev), so the list of modules
# is a prerequisite of the install, rewritten only when it changes.
$(STAMPS)/python-modules: FORCE
	@mkdir -p $(STAMPS); find python/enstack -name '*.py' | LC_ALL=C sort > $@.new; \
	if cmp -s $@.new $@; then rm $@.new; else mv $@.new $@; fi

# torch is installed on its own, pinned, before anything can pull another build of it.
$(STAMPS)/python-deps: $(STAMPS)/venv pyproject.toml $(STAMPS)/python-modules
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q "scikit-build-core>=0.10" "cmake>=3.26" ninja
	$(PIP) install -q --no-build-isolation \
	  -C build-dir=$(BUILD) -C cmake.define.ENSTACK_BUILD_TESTS=ON \
	  -e ".[test]"
	@touch $@

# After the first editable install, rebuilds go straight through CMake (seconds, not a pip run).
build: $(STAMPS)/python-deps
	@site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])'); \
	$(VENV)/bin/cmake --build $(BUILD) -j $(JOBS) && $(VENV)/bin/cmake --install $(BUILD) --component enstack --prefix "$$site/enstack" > /dev/null

setup: build

demo: setup
	$(VENV)/bin/enstack doctor
	$(VENV)/bin/enstack data prepare configs/demo.yaml
	$(VENV)/bin/enstack data stats runs/demo/data/train.tokens
	$(VENV)/bin/enstack train configs/demo.yaml
	$(VENV)/bin/enstack train configs/demo-sp2000.yaml
	$(VENV)/bin/enstack train configs/demo-deep.yaml
	$(VENV)/bin/enstack stack configs/demo-stack.yaml

test-cpp: setup
	$(VENV)/bin/ctest --test-dir $(BUILD) --output-on-failure --no-tests=error -j $(JOBS)

test-python: setup
	$(PY) -m pytest

test: test-cpp test-python

bench: setup
	$(PY) benchmarks/encoder.py
	$(PY) benchmarks/tokenizer_speed.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/resume.py
	$(PY) benchmarks/checkpoint.py
	$(PY) benchmarks/ddp.py

clean:
	rm -rf build $(STAMPS) runs
