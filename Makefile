# kevo — every target sets itself up from nothing (a fresh clone on a fresh machine).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench lint clean

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

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info demo-out
