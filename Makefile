# The two README commands: `make demo` (set up, then run the main job on the embedded default) and
# `make test` (set up, then run the test suite). Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# the one place the torch version is written is constraints.txt
TORCH := $(shell grep '^torch==' constraints.txt)

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch on a machine without one pulls a multi-GB CUDA build
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

.PHONY: setup demo test unit slow
setup: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/mosaic demo --out demo_report

# the unit suite (fast), then the tests marked slow (subprocesses, torchrun, whole pipelines, the demo)
test: unit slow

unit: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow"

slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m slow
