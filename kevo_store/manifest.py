"""manifest.json: the commit record of a store, and the one object that reads it.

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
      "next_sample_id": int, "next_token_uid": int,
      "partial": absent | {"source": URL, "omitted_tables": [name], "hidden_layers": null | [int]}
    }

:class:`Manifest` is that dict with the rules every part of kevo shares: the strict parse and the
one format-version check, the table files, what a partial pull holds, and the one compatibility
policy (:meth:`Manifest.identity_diff`) that resume, the runner, join and merge all apply.

Identity: two runs may share a store when they computed the same numbers. A model is identified
by what it is, the fingerprint of its config and weights (``model.fingerprint``), not by where it
lies; the path, the name it was given and the revision are provenance. A dataset is identified by
its name, its settings (prompt, task, ...) and the content of its annotation files, not by where
it lies nor by which of its items a run selected. Batch size, process count and device do not
change the numbers and are provenance too (docs/analyses.md, "Store guarantees").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from .errors import FormatVersionError, StoreError, StoreNotFoundError
from .fs import LocalFS, StoreFS
from .schema import FORMAT_VERSION

MANIFEST = "manifest.json"
FORMAT_NAME = "kevo-store"
META_SECTIONS = ("model", "lens", "generation", "dataset", "capture")

# Keys (dotted paths below a section) that record where or how a run happened, not what it
# computed: never a reason to refuse two runs in one store.
PROVENANCE = frozenset({
    # the model's name and location; identity is model.fingerprint (when both runs have one)
    "model.id", "model.path", "model.revision",
    # where the dataset lies, and which of its items a run selected
    "dataset.n_items", "dataset.limit", "dataset.merged_from",
    "dataset.fingerprint.root", "dataset.fingerprint.images", "dataset.fingerprint.path",
    "dataset.fingerprint.questions", "dataset.fingerprint.sha256", "dataset.fingerprint.listing_sha256",
    "dataset.fingerprint.n_files",
    "dataset.settings.ids", "dataset.settings.image_ids", "dataset.settings.warnings",
    # how the work was spread: batch size, processes, nodes, merges
    "capture.batch_size", "capture.world_size", "capture.world", "capture.rank", "capture.shard",
    "capture.parts", "capture.merged_from", "capture.merge_forced", "capture.synthetic_plan",
    # counts of what happened (values stored as inf), and where teacher-forced responses lie
    "capture.float16_overflow", "generation.responses.file", "generation.responses.n",
})
# Without a fingerprint on both sides (stores written before fingerprints), the model's name is
# all there is to tell two models apart.
_MODEL_NAME_KEYS = ("model.id", "model.revision")
# Values compared whole (a file added to or missing from them is a difference).
_WHOLE = frozenset({"dataset.fingerprint.files"})
# The hidden array's shape: no flag can put two shapes in one array.
HIDDEN_SHAPE_KEYS = ("layers", "hidden_size", "logical_dtype")


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def kevo_version() -> str:
    try:
        from importlib.metadata import version

        return version("kevo")
    except Exception:  # running from a source tree that is not installed
        return "0+unknown"


def check_format_version(m: Mapping, where: str) -> int:
    """The store's format version; refused when missing, malformed, or newer than this kevo reads."""
    from .share.safety import UnsafeStoreError

    v = m.get("format_version")
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise UnsafeStoreError(f"{where}: refused: {MANIFEST} has no valid format_version (got {v!r})")
    if v > FORMAT_VERSION:
        raise FormatVersionError(
            f"{where} was written in store format version {v} (kevo {m.get('kevo_version', '?')}); "
            f"this kevo ({kevo_version()}) reads format versions up to {FORMAT_VERSION}: upgrade kevo"
        )
    return v


def layer_ranges(xs: list[int]) -> str:
    if not xs:
        return "none"
    out, start, prev = [], xs[0], xs[0]
    for x in [*xs[1:], None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(f"{start}-{prev}" if prev != start else f"{start}")
        if x is not None:
            start = prev = x
    return ",".join(out)


class Manifest(dict):
    """A store's manifest: the parsed ``manifest.json`` (a dict) and the rules that read it."""

    # ------------------------------------------------------------------ making one
    @classmethod
    def new(cls, meta: Mapping[str, Any] | None) -> Manifest:
        from .schema import TABLES

        extra = set(meta or {}) - set(META_SECTIONS)
        if extra:
            raise StoreError(f"unknown manifest section(s) {sorted(extra)} in meta; expected {list(META_SECTIONS)}")
        t = now_iso()
        m = cls(format=FORMAT_NAME, format_version=FORMAT_VERSION, kevo_version=kevo_version(), created=t,
                updated=t, state="open", commits=0)
        for sec in META_SECTIONS:
            m[sec] = dict((meta or {}).get(sec) or {})
        m["tables"] = {name: {"files": [], "rows": 0} for name in TABLES}
        m["derived"] = {}
        m["hidden"] = None
        m["files"] = {}
        m["next_sample_id"] = 0
        m["next_token_uid"] = 0
        return m

    @classmethod
    def parse(cls, data: bytes, where: str) -> Manifest:
        """Strict parse of untrusted manifest bytes (``safety.parse_manifest``) and the format check."""
        from .share.safety import parse_manifest

        return cls.check(parse_manifest(data, where), where)

    @classmethod
    def check(cls, m: Any, where: str) -> Manifest:
        """Refuse anything that is not a format-v1-readable manifest, naming ``where``."""
        if not isinstance(m, dict) or m.get("format") != FORMAT_NAME:
            raise StoreError(f"{where}: not a kevo store manifest (missing \"format\": \"{FORMAT_NAME}\")")
        check_format_version(m, where)
        for key in ("tables", "files"):
            if not isinstance(m.get(key), dict):
                raise StoreError(f"{where}: manifest is missing its '{key}' section")
        return m if isinstance(m, cls) else cls(m)

    @classmethod
    def load(cls, fs: StoreFS) -> Manifest:
        """Read and check a store's manifest; clear errors for a missing path or a non-store directory."""
        from .share.safety import UnsafeStoreError, check_local_links, check_manifest_paths

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
            m = cls.parse(fs.read_bytes(MANIFEST), fs.root)
        except UnsafeStoreError as e:
            if "not valid JSON" in str(e) or "not a JSON object" in str(e):
                raise StoreError(f"{fs.full(MANIFEST)}: manifest is not valid JSON ({e})") from None
            raise
        # a path that leaves the store (or a link out of it) is refused before anything opens it
        check_manifest_paths(m, fs.root)
        if isinstance(fs, LocalFS):
            check_local_links(fs.root, m, fs.root)
            from .localcheck import refuse_kind
            from .share.safety import ZARR_METAS_V2

            for rel in [*m["files"], *ZARR_METAS_V2]:  # no FIFO, device or directory where a file belongs
                refuse_kind(fs.root, rel)
        return m

    @classmethod
    def peek(cls, path: str) -> Manifest | None:
        """The manifest of the local store at ``path``, or None where there is none (read-only; no lock)."""
        fs = LocalFS(path)
        if not fs.exists(MANIFEST):
            return None
        return cls.load(fs)

    def dump(self) -> bytes:
        import json

        return (json.dumps(self, indent=1, sort_keys=False) + "\n").encode()

    # ------------------------------------------------------------------ sections and tables
    def section(self, name: str) -> dict:
        """One of META_SECTIONS ({} when absent)."""
        return dict(self.get(name) or {})

    @property
    def meta(self) -> dict[str, dict]:
        """The metadata sections, as the writer's ``meta`` argument takes them."""
        return {sec: self.section(sec) for sec in META_SECTIONS}

    def table_files(self) -> dict[str, list[str]]:
        """``{table name: [files]}`` for the tables and the derived tables."""
        out: dict[str, list[str]] = {}
        for sec in ("tables", "derived"):
            for name, t in (self.get(sec) or {}).items():
                out[name] = list((t or {}).get("files", []))
        return out

    def table_rows(self, name: str) -> int | None:
        t = (self.get("tables") or {}).get(name) or (self.get("derived") or {}).get(name)
        return None if t is None else t.get("rows")

    # ------------------------------------------------------------------ partial pulls
    @property
    def partial(self) -> dict | None:
        """What a partial pull left out (None for a whole store)."""
        return self.get("partial") or None

    @property
    def omitted_tables(self) -> set[str]:
        return set((self.partial or {}).get("omitted_tables", []))

    def present_tables(self) -> set[str]:
        """Tables whose files the store holds (all of them unless it is a partial pull)."""
        return {name for name in self.table_files() if name not in self.omitted_tables}

    def hidden_layers_present(self) -> list[int]:
        """Layers whose hidden states the store holds (the captured ones, or the pulled subset)."""
        layers = list((self.get("hidden") or {}).get("layers", []))
        keep = (self.partial or {}).get("hidden_layers")
        return layers if keep is None else [x for x in layers if x in set(keep)]

    def omitted_files(self, declared: Iterable[str]) -> set[str]:
        """The files of ``declared`` that a partial pull leaves out on purpose (empty for a whole store)."""
        partial = self.partial
        if not partial:
            return set()
        out: set[str] = set()
        tf = self.table_files()
        for name in partial.get("omitted_tables", []):
            out.update(tf.get(name, []))
        keep = partial.get("hidden_layers")  # None: all captured layers; []: no hidden states at all
        hidden = self.get("hidden") or {}
        if keep is not None and hidden:
            if not keep:
                out.update(r for r in declared if r.startswith("hidden/"))
            else:
                from .hidden import layer_of_key

                pos_keep = {hidden["layers"].index(x) for x in keep}
                for r in declared:
                    if r.startswith("hidden/") and r.count("/") >= 4:
                        li = layer_of_key(hidden, r[len("hidden/"):])
                        if li is not None and li not in pos_keep:
                            out.add(r)
        return out

    def partial_summary(self) -> str:
        """One line saying what a partial pull left out."""
        partial = self.partial or {}
        keep = partial.get("hidden_layers")
        hidden = ("all hidden layers" if keep is None else f"hidden layers {layer_ranges(sorted(keep))} only"
                  if keep else "no hidden states")
        left = ", ".join(partial.get("omitted_tables") or []) or "none"
        return f"pulled from {partial.get('source', '?')}; tables left out: {left}; {hidden}"

    def check_hidden_layers_present(self, layers: Iterable[int] | None, where: str) -> None:
        """Refuse to read hidden states of layers a partial pull left out (Zarr would fill them with 0)."""
        partial = self.partial
        if not partial or partial.get("hidden_layers") is None:
            return
        have = set(self.hidden_layers_present())
        if not have:
            raise StoreError(f"{where} is a partial pull without hidden states (pulled with --no-hidden)")
        want = list((self.get("hidden") or {}).get("layers", [])) if layers is None else [int(x) for x in layers]
        missing = [x for x in want if x not in have]
        if missing:
            raise StoreError(
                f"{where} is a partial pull holding hidden states for layers {sorted(have)} only; "
                f"layer(s) {missing} were left out (pull them with `kevo store pull … --layers`)"
            )

    def check_table_present(self, name: str, where: str) -> None:
        """Refuse to read a table a partial pull left out."""
        if name in self.omitted_tables:
            raise StoreError(f"{where} is a partial pull without the '{name}' table (left out by "
                             f"`kevo store pull --tables`); pull it with that table")

    # ------------------------------------------------------------------ the compatibility policy
    def identity_diff(self, other: Mapping, *, same_dataset: bool | None = None) -> list[str]:
        """Every difference in what two runs computed, as ``"section.key: mine vs theirs"``.

        ``other`` is another manifest or a writer's ``meta`` (only the sections it has). Provenance
        keys (:data:`PROVENANCE`) are ignored, and so is a key that only one side records (a store
        written before it existed, or a check made before the model is loaded). ``same_dataset``:
        compare the dataset sections (default: when both name the same dataset; a merge of several
        datasets keeps each one's description instead).
        """
        mine, theirs = _meta_of(self), _meta_of(other)
        fp = ("fingerprint" in mine.get("model", {}) and "fingerprint" in theirs.get("model", {}))
        ignore = set(PROVENANCE) if fp else set(PROVENANCE) - set(_MODEL_NAME_KEYS)
        if same_dataset is None:
            a, b = mine.get("dataset", {}).get("name"), theirs.get("dataset", {}).get("name")
            same_dataset = a is None or b is None or a == b
        out: list[str] = []
        for sec in META_SECTIONS:
            if sec == "dataset" and not same_dataset:
                continue
            if sec in mine and sec in theirs:
                out += _diff(mine[sec], theirs[sec], sec, ignore)
        return out

    def hidden_diff(self, other: Mapping | None) -> list[str]:
        """Differences in the hidden array's shape and dtype (``other``: a manifest's hidden section or None)."""
        a, b = self.get("hidden") or None, other or None
        if a is None and b is None:
            return []
        if a is None or b is None:
            return [f"hidden: {'none' if a is None else 'captured'} vs {'none' if b is None else 'captured'}"]
        return [f"hidden.{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in HIDDEN_SHAPE_KEYS if a.get(k) != b.get(k)]


def _meta_of(m: Mapping) -> dict[str, dict]:
    return {sec: dict(m[sec]) for sec in META_SECTIONS if isinstance(m.get(sec), Mapping)}


def _diff(a: Any, b: Any, path: str, ignore: set[str]) -> list[str]:
    if path in ignore:
        return []
    if isinstance(a, Mapping) and isinstance(b, Mapping) and path not in _WHOLE:
        out: list[str] = []
        for k in sorted(set(a) & set(b), key=str):
            out += _diff(a[k], b[k], f"{path}.{k}", ignore)
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        a, b = list(a), list(b)
    return [] if a == b else [f"{path}: {_short(a)} vs {_short(b)}"]


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 120 else s[:117] + "..."
