"""kevo_store: the activation store (format v1), its writer and its reader. Knows nothing of models."""

from .errors import (
    CorruptStoreError,
    FormatVersionError,
    KevoError,
    QueryError,
    SchemaError,
    StoreError,
    StoreLockedError,
    StoreNotFoundError,
)
from .reader import Store, Stores, open_store, open_stores
from .schema import DERIVED_TABLES, FORMAT_VERSION, KEYS, TABLES
from .writer import StoreWriter, write_derived_table

__all__ = [
    "CorruptStoreError", "FormatVersionError", "KevoError", "QueryError", "SchemaError", "StoreError",
    "StoreLockedError", "StoreNotFoundError", "Store", "Stores", "open_store", "open_stores", "DERIVED_TABLES",
    "FORMAT_VERSION", "KEYS", "TABLES", "StoreWriter", "write_derived_table",
]
