"""The named-query library: parameterised SQL files in ``queries/sql/`` that a user can read and copy.

Every file starts with a header of comment lines::

    -- name: critical-layers
    -- description: one line
    -- stores: 2                      (optional: a two-store query; its tables are a.<t> and b.<t>)
    -- tables: traces, trace_runs     (optional: derived tables it reads, written by another command)
    -- param token_uid: int          -- a parameter; no default: required
    -- include: critical_layer       (a shared definition, see below)

and uses ``$name`` where a parameter goes.

A definition that several queries share (the critical layer, mutation events, the stages) lives in
one *fragment*, ``queries/sql/_<fragment>.sql``: a header (``-- fragment: NAME``, ``-- description:``,
its own ``-- param`` lines, ``-- reads: cte, ...`` for the CTEs it expects the query to define,
``-- include:`` for the fragments it builds on) and a list of CTEs. A line ``-- include: NAME`` in a
query (inside its ``WITH`` list) is replaced by the fragment's CTEs, each fragment at most once;
``-- include: NAME as a`` renames every CTE of the fragment (and the ones it reads) with the suffix
``_a``, so a two-store query can use a definition once per store. The fragment's parameters
become the query's: each parameter and its default is declared once, in the one fragment that
defines it. A parameter line reads::

    -- param top_n: int = 10         -- what it means
    -- param definition: str = 'top1' in (top1, emitted)  -- 'in (...)': the only values it accepts

Binding substitutes each parameter as an SQL literal (validated by its declared type), so the bound
text is plain SQL that runs unchanged in DuckDB, in Polars' SQL engine, or in a user's own shell
(``kevo query NAME --show-sql``). Fragments are not named queries (``--list`` does not show them).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kevo_store.errors import KevoError

SQL_DIR = Path(__file__).parent / "sql"
_HEADER = re.compile(r"^--\s*(name|fragment|description|stores|reads|tables):\s*(.*?)\s*$")
_INCLUDE = re.compile(r"^--\s*include:\s*([A-Za-z_]\w*)(?:\s+as\s+([A-Za-z]\w*))?\s*$")
_CTE = re.compile(r"^(?:WITH\s+)?([A-Za-z_]\w*)\s+AS\s*\(", re.IGNORECASE | re.MULTILINE)
_END = "\x00"  # marks the comma after an included block: dropped when the main SELECT follows
FRAGMENT_PREFIX = "_"
_PARAM = re.compile(r"^--\s*param\s+([A-Za-z_]\w*)\s*:\s*(int|float|str)\s*(?:=\s*(.*?))?\s*"
                    r"(?:\bin\s*\(([^)]*)\))?\s*(?:--\s*(.*))?$")
_PLACEHOLDER = re.compile(r"\$([A-Za-z_]\w*)")
_TYPES = {"int": int, "float": float, "str": str}


class QueryParamError(KevoError):
    """A named query was given an unknown parameter or a value of the wrong type."""


@dataclass(frozen=True)
class Param:
    name: str
    """Parameter name, used as ``$name`` in the SQL."""
    type: str
    """'int' | 'float' | 'str'."""
    default: Any
    """Default value; None when the parameter is required."""
    description: str = ""
    """One line from the header."""
    choices: tuple = ()
    """The only values accepted (``in (a, b)`` in the header); empty = any value of the type."""

    @property
    def required(self) -> bool:
        return self.default is None

    def convert(self, value: Any, query: str) -> Any:
        """Coerce a Python or command-line value to the declared type, or raise naming the parameter."""
        try:
            if self.type == "int":
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                return int(value)
            if self.type == "float":
                v = float(value)
                if not math.isfinite(v):
                    raise ValueError
                return v
            value = str(value)
        except (TypeError, ValueError):
            raise QueryParamError(f"query {query}: parameter {self.name} must be {self.type}, got {value!r}") from None
        if self.choices and value not in self.choices:
            raise QueryParamError(f"query {query}: parameter {self.name} must be one of "
                                  f"{', '.join(self.choices)}; got {value!r}")
        return value


@dataclass(frozen=True)
class NamedQuery:
    name: str
    description: str
    params: tuple[Param, ...]
    sql: str
    """The file's text, header included, with every ``-- include:`` replaced by the fragment's SQL."""
    path: Path
    stores: int = 1
    """How many stores the query reads (2: tables are a.<table> and b.<table>)."""
    source: str = ""
    """The file's text as written (includes not expanded)."""
    fragments: tuple[str, ...] = ()
    """The fragments the query includes (directly or through other fragments), in order."""
    tables: tuple[str, ...] = ()
    """Derived tables the query reads (``-- tables: traces, trace_runs``): a store has them only after
    the command that writes them (e.g. ``kevo trace``)."""

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.params) or "none"
        raise QueryParamError(f"query {self.name} has no parameter {name!r} (parameters: {known})")


@dataclass(frozen=True)
class BoundQuery:
    """A named query with every parameter's value (defaults filled in) and the literal SQL."""

    query: NamedQuery
    params: dict = field(default_factory=dict)
    sql: str = ""

    @property
    def name(self) -> str:
        return self.query.name


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if "e" not in repr(value) else f"{value:.17f}"
    return "'" + str(value).replace("'", "''") + "'"


def _parse_param(line: str, path: Path) -> Param | None:
    m = _PARAM.match(line)
    if not m:
        return None
    name, typ, default, choices, desc = m.groups()
    choices = tuple(c.strip() for c in choices.split(",") if c.strip()) if choices else ()
    if default is not None:
        default = default.strip()
        if typ == "str":
            if not (default.startswith("'") and default.endswith("'")):
                raise ValueError(f"{path}: default of {name} must be a quoted string")
            default = default[1:-1].replace("''", "'")
        else:
            default = _TYPES[typ](default)
    if choices and typ != "str":
        raise ValueError(f"{path}: 'in (...)' is for str parameters ({name})")
    if choices and default is not None and default not in choices:
        raise ValueError(f"{path}: default of {name} is not one of {choices}")
    return Param(name, typ, default, (desc or "").strip(), choices)


def _header(text: str, path: Path) -> tuple[dict[str, str], list[Param]]:
    """The leading comment lines: meta keys and the parameters declared in this file."""
    meta: dict[str, str] = {}
    params: list[Param] = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        p = _parse_param(line, path)
        if p is not None:
            if any(q.name == p.name for q in params):
                raise ValueError(f"{path}: parameter {p.name} declared twice")
            params.append(p)
            continue
        m = _HEADER.match(line)
        if m:
            meta[m.group(1)] = m.group(2)
    return meta, params


@dataclass(frozen=True)
class Fragment:
    """A shared definition: CTEs that queries include (``queries/sql/_<name>.sql``)."""

    name: str
    description: str
    params: tuple[Param, ...]
    """The parameters this fragment declares (not those of the fragments it includes)."""
    reads: tuple[str, ...]
    """CTEs the including query (or an earlier fragment) must define."""
    text: str
    path: Path


def _fragment_path(name: str) -> Path:
    return SQL_DIR / f"{FRAGMENT_PREFIX}{name}.sql"


def list_fragments() -> list[Fragment]:
    """Every fragment, by name."""
    return [load_fragment(p.stem[len(FRAGMENT_PREFIX):]) for p in sorted(SQL_DIR.glob(f"{FRAGMENT_PREFIX}*.sql"))]


def load_fragment(name: str) -> Fragment:
    path = _fragment_path(name)
    if not path.is_file():
        known = ", ".join(sorted(p.stem[len(FRAGMENT_PREFIX):] for p in SQL_DIR.glob(f"{FRAGMENT_PREFIX}*.sql")))
        raise ValueError(f"no fragment {name!r} ({path.name}); fragments: {known}")
    text = path.read_text()
    meta, params = _header(text, path)
    if meta.get("fragment") != name:
        raise ValueError(f"{path}: its header must say '-- fragment: {name}'")
    reads = tuple(r.strip() for r in meta.get("reads", "").split(",") if r.strip())
    return Fragment(name, meta.get("description", ""), tuple(params), reads, text, path)


def definition_defaults() -> dict[str, Any]:
    """Every shared definition's parameters with their defaults, from the fragments (the one place they are written)."""
    out: dict[str, Any] = {}
    for f in list_fragments():
        for p in f.params:
            out[p.name] = p.default
    return out


class _Expansion:
    """Inlines ``-- include:`` lines, recursively, each (fragment, suffix) once; collects the parameters."""

    def __init__(self, path: Path):
        self.path = path
        self.params: list[Param] = []
        self.owner: dict[str, str] = {}
        self.done: set[tuple[str, str]] = set()
        self.fragments: list[str] = []

    def add_params(self, params, owner: str) -> None:
        for p in params:
            if p.name in self.owner:
                if self.owner[p.name] == owner:
                    continue
                raise ValueError(f"{self.path}: parameter {p.name} is declared by both {self.owner[p.name]} "
                                 f"and {owner}: a parameter has one definition")
            self.owner[p.name] = owner
            self.params.append(p)

    def text(self, text: str, suffix: str, stack: tuple[str, ...], in_fragment: bool) -> str:
        out = []
        for line in text.splitlines():
            m = _INCLUDE.match(line)
            if not m:
                out.append(line)
                continue
            name, alias = m.groups()
            if alias and (in_fragment or suffix):
                raise ValueError(f"{self.path}: 'include: {name} as {alias}' only in a query, not in a fragment")
            block = self.fragment(name, alias or suffix, stack, rename=not in_fragment)
            if block:  # a fragment already included, or one of parameters only, leaves no line behind
                out.append(block)
        return "\n".join(out)

    def fragment(self, name: str, suffix: str, stack: tuple[str, ...], rename: bool) -> str:
        """The fragment's CTEs (and those of the fragments it includes, first), once per suffix; renamed
        with the suffix where a query included it (``rename``), which covers the nested ones too."""
        if name in stack:
            raise ValueError(f"{self.path}: fragments include each other: {' -> '.join(stack + (name,))}")
        f = load_fragment(name)
        key = (name, suffix)
        if key in self.done:
            return ""
        self.done.add(key)
        self.fragments.append(name if not suffix else f"{name} as {suffix}")
        first, lines, free = [], [], []  # the fragments it builds on, its own SQL, its explanation
        in_header = True
        for line in f.text.splitlines():
            if in_header and line.startswith("--"):
                if _INCLUDE.match(line):
                    first.append(line)
                elif not (_PARAM.match(line) or _HEADER.match(line)):
                    free.append(line)  # the fragment's explanation stays with its SQL
                continue
            in_header = False
            lines.append(line)
        nested = self.text("\n".join(first), suffix, stack + (name,), True)
        own = self.text("\n".join(lines), suffix, stack + (name,), True)
        self.add_params(f.params, f.path.name)  # after the fragments it builds on: their parameters come first
        if _body_sql(own):
            used = set(_PLACEHOLDER.findall(_body_sql(own)))
            declared = {p.name for p in f.params} | self._included_params(f)
            if used - declared:
                raise ValueError(f"{f.path}: undeclared parameters {sorted(used - declared)}")
            own = "\n".join([f"-- {name} ({f.path.name}): {f.description}", *free, own])
        body = "\n".join(x for x in (nested, own) if x)
        if suffix and rename:
            # with the CTEs of the fragments it builds on, even those already included under this suffix
            names = set(_CTE.findall(body)) | set(f.reads) | self._reads(f) | self._nested_ctes(f)
            body = re.sub(r"(?<![$.\w])(" + "|".join(sorted(names, key=len, reverse=True)) + r")\b",
                          lambda m: f"{m.group(1)}_{suffix}", body)
        return body.rstrip() + "," + _END if _body_sql(body) else body.rstrip()

    def _included_params(self, f: Fragment) -> set[str]:
        out: set[str] = set()
        for line in f.text.splitlines():
            m = _INCLUDE.match(line)
            if m:
                g = load_fragment(m.group(1))
                out |= {p.name for p in g.params} | self._included_params(g)
        return out

    def _nested_ctes(self, f: Fragment) -> set[str]:
        out: set[str] = set()
        for line in f.text.splitlines():
            m = _INCLUDE.match(line)
            if m:
                g = load_fragment(m.group(1))
                out |= set(_CTE.findall(g.text)) | self._nested_ctes(g)
        return out

    def _reads(self, f: Fragment) -> set[str]:
        out: set[str] = set()
        for line in f.text.splitlines():
            m = _INCLUDE.match(line)
            if m:
                g = load_fragment(m.group(1))
                out |= set(g.reads) | self._reads(g)
        return out


def _body_sql(text: str) -> str:
    """The text without comment lines and blank lines (what is left of SQL)."""
    lines = text.replace(_END, "").splitlines()
    return "\n".join(ln for ln in lines if ln.strip() and not ln.lstrip().startswith("--"))


def expand(text: str, path: Path) -> tuple[str, list[Param], list[str]]:
    """(query text with every fragment inlined, the fragments' parameters, the fragments included)."""
    e = _Expansion(path)
    sql = e.text(text, "", (), False)
    sql = re.sub(r",\x00(?=(?:\s|--[^\n]*\n)*SELECT\b)", "", sql).replace(_END, "")
    if text.endswith("\n"):
        sql += "\n"
    return sql, e.params, e.fragments


def parse(text: str, path: Path) -> NamedQuery:
    meta, params = _header(text, path)
    if "name" not in meta:
        raise ValueError(f"{path}: missing '-- name:' header")
    sql, shared, fragments = expand(text, path)
    for p in shared:
        if any(q.name == p.name for q in params):
            raise ValueError(f"{path}: parameter {p.name} is declared here and by a fragment it includes "
                             "(a parameter has one definition)")
    params = params + shared
    ctes = _CTE.findall(sql)
    dup = sorted({c for c in ctes if ctes.count(c) > 1})
    if dup:
        raise ValueError(f"{path}: CTE names defined twice (the query and an included fragment?): {dup}")
    declared = {p.name for p in params}
    used = set(_PLACEHOLDER.findall(sql))
    if used - declared:
        raise ValueError(f"{path}: undeclared parameters {sorted(used - declared)}")
    return NamedQuery(meta["name"], meta.get("description", ""), tuple(params), sql, path,
                      int(meta.get("stores", "1")), text, tuple(fragments),
                      tuple(t.strip() for t in meta.get("tables", "").split(",") if t.strip()))


_CACHE: dict[str, NamedQuery] = {}


def _query_files() -> list[Path]:
    return [p for p in sorted(SQL_DIR.glob("*.sql")) if not p.name.startswith(FRAGMENT_PREFIX)]


def list_queries() -> list[NamedQuery]:
    """Every named query, by name (fragments are not queries)."""
    return [load(p.stem) for p in _query_files()]


def load(name: str) -> NamedQuery:
    path = SQL_DIR / f"{name}.sql"
    if name.startswith(FRAGMENT_PREFIX) or not path.is_file():
        names = ", ".join(p.stem for p in _query_files())
        raise KevoError(f"no named query {name!r}; known: {names} (kevo query --list)")
    stamp = ",".join(str(os.path.getmtime(p)) for p in sorted(SQL_DIR.glob(f"{FRAGMENT_PREFIX}*.sql")))
    key = f"{path}:{os.path.getmtime(path)}:{stamp}"
    if key not in _CACHE:
        q = parse(path.read_text(), path)
        if q.name != name:
            raise ValueError(f"{path}: header names it {q.name!r}")
        _CACHE[key] = q
    return _CACHE[key]


def bind(name: str | NamedQuery, **params: Any) -> BoundQuery:
    """Fill defaults, check types, substitute literals."""
    q = load(name) if isinstance(name, str) else name
    values: dict[str, Any] = {}
    for k, v in params.items():
        values[k] = q.param(k).convert(v, q.name)
    for p in q.params:
        if p.name not in values:
            if p.required:
                raise QueryParamError(f"query {q.name} needs the parameter {p.name} "
                                      f"(--param {p.name}=<{p.type}>)")
            values[p.name] = p.default
    ordered = {p.name: values[p.name] for p in q.params}
    sql = _PLACEHOLDER.sub(lambda m: _literal(ordered[m.group(1)]), q.sql)
    return BoundQuery(q, ordered, sql)
