"""The layout holds: the import contract, and registries that must stay in sync with their tests and CLIs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tools import check_imports

ROOT = Path(__file__).resolve().parents[1]


def test_import_contract_holds_in_this_repository():
    assert check_imports.violations(ROOT) == []


def test_import_contract_check_catches_violations(tmp_path):
    """The checker is not vacuous: a tree that breaks each rule is reported, rule by rule."""
    for pkg in check_imports.PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "kevo_store" / "reader.py").write_text("def f():\n    from queries import library\n")
    (tmp_path / "queries" / "library.py").write_text("from ingest.runner import x\n")
    (tmp_path / "ingest" / "runner.py").write_text("from . import capture\nx = 1\n")
    (tmp_path / "ingest" / "capture.py").write_text("from ingest.runner import x\n")
    problems = check_imports.violations(tmp_path)
    assert any(p.startswith("kevo_store.reader imports queries") for p in problems), problems
    assert any(p.startswith("queries.library imports ingest.runner") for p in problems), problems
    assert "import cycle: ingest.capture <-> ingest.runner" in problems, problems
    assert len(problems) == 3, problems
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "check_imports.py"), str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "3 import-contract violation(s)" in r.stdout


def test_every_adapter_has_a_tiny_test_model():
    """A new family in ingest.models without a tiny model in the test builders fails here."""
    from ingest.models import ADAPTERS
    from tests.model_helpers import BUILDERS, tiny_model_dir

    covered = {}
    for name in BUILDERS:
        model_type = json.loads((tiny_model_dir(name) / "config.json").read_text())["model_type"]
        owners = [a.family for a in ADAPTERS if model_type in a.model_types]
        assert len(owners) == 1, f"tiny model {name!r} (model_type {model_type!r}) is served by {owners}"
        covered.setdefault(owners[0], []).append(name)
    missing = sorted(a.family for a in ADAPTERS if a.family not in covered)
    assert not missing, f"adapters without a tiny test model: {missing}"


def test_plot_kinds_offered_by_the_cli_are_the_figures():
    from queries import plots
    from queries.cli import PLOT_KINDS

    assert sorted(PLOT_KINDS) == sorted(plots.FIGURES)
