"""kevo_store: the activation store (format v1), its writer and its reader. Knows nothing of models.

Names are imported on first use (PEP 562), so ``kevo --help`` and the error classes do not pay for
duckdb, pyarrow and zarr.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_WHERE = {
    "CorruptStoreError": "errors", "FormatVersionError": "errors", "KevoError": "errors", "QueryError": "errors",
    "SchemaError": "errors", "StoreError": "errors", "StoreLockedError": "errors", "StoreNotFoundError": "errors",
    "Store": "reader", "Stores": "reader", "open_store": "reader", "open_stores": "reader",
    "DERIVED_TABLES": "schema", "FORMAT_VERSION": "schema", "KEYS": "schema", "TABLES": "schema",
    "VerifyReport": "verify", "verify_store": "verify",
    "StoreWriter": "writer", "write_derived_table": "writer", "write_derived_tables": "writer", "replace_run": "writer",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'kevo_store' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs
    from .errors import (  # noqa: F401
        CorruptStoreError,
        FormatVersionError,
        KevoError,
        QueryError,
        SchemaError,
        StoreError,
        StoreLockedError,
        StoreNotFoundError,
    )
    from .reader import Store, Stores, open_store, open_stores  # noqa: F401
    from .schema import DERIVED_TABLES, FORMAT_VERSION, KEYS, TABLES  # noqa: F401
    from .verify import VerifyReport, verify_store  # noqa: F401
    from .writer import StoreWriter, replace_run, write_derived_table, write_derived_tables  # noqa: F401
