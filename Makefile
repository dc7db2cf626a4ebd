# kevo — every target sets itself up from nothing (a fresh clone on a fresh machine).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench lint clean report-check

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(BIN)/python -m pytest -q tests

demo: setup
	$(BIN)/kevo demo --out demo-out

bench: setup
	$(BIN)/python bench/run.py

# The HTML report rendered in a real headless browser (needs Debian's chromium:
# apt-get update && apt-get install -y chromium); without chromium that one test is skipped.
report-check: setup
	$(BIN)/python -m pytest -q tests/test_report_html.py -rs

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info demo-out
