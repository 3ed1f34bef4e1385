# The two commands of the README: `make demo` (the main job) and `make test` (the suite CI runs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test install readme-table bench clean browser-deps

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,serve]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m cnnzoo demo

test: $(STAMP) browser-deps
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --durations=15 -q

# Debian's chromium for tests/test_browser.py (driven by Playwright); nothing to do when it is already there.
browser-deps:
	@test -x /usr/bin/chromium || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

readme-table: $(STAMP)
	$(PY) -m cnnzoo models --markdown --update-readme README.md

clean:
	rm -rf $(VENV) runs
