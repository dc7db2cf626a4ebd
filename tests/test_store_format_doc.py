"""FORMAT.md documents every column of schema.py (it is generated from it and must be regenerated)."""

from pathlib import Path

from kevo_store import DERIVED_TABLES, TABLES
from kevo_store.format_doc import render


def test_format_md_is_current():
    md = (Path(__file__).parents[1] / "kevo_store" / "FORMAT.md").read_text()
    assert md == render(), "kevo_store/FORMAT.md is stale: python -m kevo_store.format_doc > kevo_store/FORMAT.md"


def test_every_column_documented():
    for tables in (TABLES, DERIVED_TABLES):
        for name, sch in tables.items():
            for f in sch:
                assert (f.metadata or {}).get(b"doc"), f"{name}.{f.name} has no doc in schema.py"
