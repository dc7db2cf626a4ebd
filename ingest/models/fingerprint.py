"""A model identified by what it is: the sha256 of its config, weights and tokenizer files.

The fingerprint goes into the manifest's ``model`` section (``model.fingerprint``) and is what
resume, join and merge compare (``kevo_store.manifest.Manifest.identity_diff``): the same weights
in another directory, or spelled as another path, are the same model; weights retrained at the
same path are not. It is computed from the files alone, before any weights are loaded, so a run
that cannot share a store is refused in seconds rather than after minutes of loading.

Hashing a 7B checkpoint takes about a minute, so each file's sha256 is cached, keyed by its
resolved path, size and modification time (``$KEVO_CACHE_DIR``, else ``$XDG_CACHE_HOME/kevo``,
else ``~/.cache/kevo``: ``file-sha256.json``). A cache that cannot be read or written is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

# the files that decide what the model computes (weights, config, tokenizer, processor)
_PATTERNS = ("config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json",
             "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt", "*.model",
             "preprocessor_config.json", "processor_config.json", "chat_template*")
_BLOCK = 4 << 20
CACHE_NAME = "file-sha256.json"


def cache_dir() -> Path:
    d = os.environ.get("KEVO_CACHE_DIR")
    if d:
        return Path(d)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kevo"


def model_files(path: str | os.PathLike) -> list[Path]:
    """The files of a model directory that the fingerprint covers, sorted by name."""
    root = Path(path)
    found = {p for pat in _PATTERNS for p in root.glob(pat) if p.is_file()}
    return sorted(found, key=lambda p: p.name)


def _load_cache(f: Path) -> dict:
    try:
        data = json.loads(f.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(f: Path, cache: dict) -> None:
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f"{f.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=0, sort_keys=True))
        os.replace(tmp, f)
    except OSError:
        pass  # a read-only home: hash again next time


def file_sha256(p: Path, cache: dict) -> str:
    real = p.resolve()  # hub snapshots link into blobs/
    st = real.stat()
    key = f"{real}\t{st.st_size}\t{st.st_mtime_ns}"
    hit = cache.get(key)
    if isinstance(hit, str):
        return hit
    h = hashlib.sha256()
    with open(real, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    for old in [k for k in cache if k.startswith(f"{real}\t")]:
        del cache[old]  # the file changed since: its old hash is of no further use
    cache[key] = h.hexdigest()
    return cache[key]


def fingerprint(path: str | os.PathLike) -> dict:
    """``{"sha256": hex over the files' names and hashes, "files": {name: sha256}}`` of a model directory."""
    cf = cache_dir() / CACHE_NAME
    cache = _load_cache(cf)
    before = len(cache)
    files = {p.name: file_sha256(p, cache) for p in model_files(path)}
    if len(cache) != before:
        _save_cache(cf, cache)
    h = hashlib.sha256()
    for name, sha in files.items():
        h.update(f"{name}\t{sha}\n".encode())
    return {"sha256": h.hexdigest(), "files": files}
