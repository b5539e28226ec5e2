# Two entry points on a fresh machine: `make explore` (the main job) and `make test`.
# Both create .venv and install everything they need; re-running skips what is done.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: explore render test bench chromium clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $@

# Debian's chromium for the real-browser tests (never `playwright install`: no download here).
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

explore: $(VENV)/.installed
	$(VENV)/bin/zfwidgets explore $(ARGS)

# The overview figures as PNG files, in a new temporary folder it prints (ARGS="--out DIR": there).
render: $(VENV)/.installed
	$(VENV)/bin/zfwidgets render $(ARGS)

test: $(VENV)/.installed chromium
	$(PY) -m pytest $(ARGS)

bench: $(VENV)/.installed
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
