"""manifest.json: the commit record of a store.

A store's committed state is exactly what its manifest names: a file that the manifest does not
name is the leftover of a batch that crashed before its commit, and the next writer removes it.
The manifest is always replaced atomically (written to a temporary file, then renamed), so a
reader sees either the previous commit or the next one.

Layout (format v1)::

    {
      "format": "kevo-store", "format_version": 1, "kevo_version": "0.1.0",
      "created": ISO time, "updated": ISO time, "state": "open" | "closed", "commits": int,
      "model": {...}, "lens": {...}, "generation": {...}, "dataset": {...}, "capture": {...},
      "tables": {"<table>": {"files": [rel path, ...], "rows": int}},
      "derived": {"<name>": {"files": [...], "rows": int, "params": {...}, "created": ISO time}},
      "hidden": null | {"path": "hidden", "dtype": "float16"|"uint16", "logical_dtype": "float16"|"bfloat16",
                        "layers": [int], "hidden_size": int, "chunk_tokens": 64, "rows": int,
                        "zarr_rows": int, "tail": rel path | null, "index": [rel path, ...]},
      "files": {"<rel path>": {"sha256": hex, "size": bytes, "rows": int (Parquet only)}},
      "next_sample_id": int, "next_token_uid": int
    }
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from .errors import FormatVersionError, StoreError, StoreNotFoundError
from .fs import LocalFS, StoreFS
from .schema import FORMAT_VERSION

MANIFEST = "manifest.json"
FORMAT_NAME = "kevo-store"
META_SECTIONS = ("model", "lens", "generation", "dataset", "capture")


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def kevo_version() -> str:
    try:
        from importlib.metadata import version

        return version("kevo")
    except Exception:  # running from a source tree that is not installed
        return "0+unknown"


def new_manifest(meta: dict[str, Any] | None) -> dict[str, Any]:
    from .schema import TABLES

    t = now_iso()
    m: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "kevo_version": kevo_version(),
        "created": t,
        "updated": t,
        "state": "open",
        "commits": 0,
    }
    for sec in META_SECTIONS:
        m[sec] = dict((meta or {}).get(sec) or {})
    extra = set(meta or {}) - set(META_SECTIONS)
    if extra:
        raise StoreError(f"unknown manifest section(s) {sorted(extra)} in meta; expected {list(META_SECTIONS)}")
    m["tables"] = {name: {"files": [], "rows": 0} for name in TABLES}
    m["derived"] = {}
    m["hidden"] = None
    m["files"] = {}
    m["next_sample_id"] = 0
    m["next_token_uid"] = 0
    return m


def check_format(m: Any, where: str) -> dict[str, Any]:
    """Refuse anything that is not a format-v1-readable manifest, naming ``where``."""
    if not isinstance(m, dict) or m.get("format") != FORMAT_NAME:
        raise StoreError(f"{where}: not a kevo store manifest (missing \"format\": \"{FORMAT_NAME}\")")
    v = m.get("format_version")
    if not isinstance(v, int):
        raise StoreError(f"{where}: manifest has no integer format_version")
    if v > FORMAT_VERSION:
        raise FormatVersionError(
            f"{where} was written by store format version {v} (kevo {m.get('kevo_version', '?')}); "
            f"this kevo ({kevo_version()}) reads format versions up to {FORMAT_VERSION}: upgrade kevo"
        )
    for key in ("tables", "files"):
        if not isinstance(m.get(key), dict):
            raise StoreError(f"{where}: manifest is missing its '{key}' section")
    return m


def load_manifest(fs: StoreFS) -> dict[str, Any]:
    """Read and check a store's manifest; clear errors for a missing path or a non-store directory."""
    where = fs.full(MANIFEST)
    if not fs.exists(""):
        raise StoreNotFoundError(f"store not found: {fs.root} does not exist")
    if not fs.exists(MANIFEST):
        if fs.isdir(""):
            raise StoreNotFoundError(f"{fs.root} is not a kevo store (no manifest.json)")
        raise StoreNotFoundError(f"{fs.root} is not a kevo store (not a directory)")
    if isinstance(fs, LocalFS):  # a FIFO would block the read below, a link would read outside the store
        from .localcheck import refuse_kind

        refuse_kind(fs.root, MANIFEST)
    try:
        m = json.loads(fs.read_bytes(MANIFEST))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise StoreError(f"{where}: manifest is not valid JSON ({e})") from None
    m = check_format(m, fs.root)
    # sharing helper: a path that leaves the store (or a link out of it) is refused
    from .safety import check_local_links, check_manifest_paths

    check_manifest_paths(m, fs.root)
    if isinstance(fs, LocalFS):
        check_local_links(fs.root, m, fs.root)
        from .localcheck import refuse_kind

        for rel in [*m["files"], "hidden/zarr.json"]:  # no FIFO, device or directory where a file belongs
            refuse_kind(fs.root, rel)
    return m


def dump_manifest(m: dict[str, Any]) -> bytes:
    return (json.dumps(m, indent=1, sort_keys=False) + "\n").encode()
