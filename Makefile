# kevo — every target sets itself up from nothing (a fresh clone on a fresh machine).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser test demo bench lint clean report-check

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# Headless Chromium renders the HTML report in one test. Installed from Debian's packages where we
# can (root + apt-get, as on CI); elsewhere that single test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "note: chromium not installed; the report's browser test will be skipped"; }

test: setup browser
	$(BIN)/python -m pytest -q tests

demo: setup
	$(BIN)/kevo demo --out demo-out

bench: setup
	$(BIN)/python bench/run.py

# The HTML report rendered in a real headless browser (needs Debian's chromium:
# apt-get update && apt-get install -y chromium); without chromium that one test is skipped.
report-check: setup
	$(BIN)/python -m pytest -q tests/test_report_html.py -rs

# ruff, then the import contract (ingest -> kevo_store <- queries, no cycles); .ci/run runs both
lint: setup
	$(BIN)/ruff check .
	$(BIN)/python tools/check_imports.py

clean:
	rm -rf $(VENV) build *.egg-info demo-out
