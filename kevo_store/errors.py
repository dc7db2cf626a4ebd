"""Errors a user can cause. The root command prints them as one line: ``kevo: error: <message>``."""

from __future__ import annotations


class KevoError(Exception):
    """Base class of every user-facing kevo error; the message names the culprit."""


class StoreError(KevoError):
    """A store is missing, malformed, or cannot be used as asked."""


class StoreNotFoundError(StoreError):
    """The path does not exist or is not a kevo store (no manifest.json)."""


class FormatVersionError(StoreError):
    """The store was written by a newer store format than this kevo can read."""


class StoreLockedError(StoreError):
    """Another writer holds the store's lock."""


class SchemaError(StoreError):
    """A batch handed to the writer does not match the table schemas of schema.py."""


class CorruptStoreError(StoreError):
    """A file named by the manifest is missing, truncated or fails its checksum."""


class QueryError(KevoError):
    """An SQL query failed (syntax, unknown table or column, ...)."""
