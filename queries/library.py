"""The named-query library: parameterised SQL files in ``queries/sql/`` that a user can read and copy.

Every file starts with a header of comment lines::

    -- name: critical-layers
    -- description: one line
    -- stores: 2                      (optional: a two-store query; its tables are a.<t> and b.<t>)
    -- param tau: float = 0.5        -- what it means
    -- param token_uid: int          -- no default: required
    -- param definition: str = 'top1' in (top1, emitted)  -- 'in (...)': the only values it accepts

and uses ``$name`` where a parameter goes. Binding substitutes each parameter as an SQL literal
(validated by its declared type), so the bound text is plain SQL that runs unchanged in DuckDB, in
Polars' SQL engine, or in a user's own shell (``kevo query NAME --show-sql``).
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
_HEADER = re.compile(r"^--\s*(name|description|stores):\s*(.*?)\s*$")
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
    """The file's text, header included."""
    path: Path
    stores: int = 1
    """How many stores the query reads (2: tables are a.<table> and b.<table>)."""

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


def parse(text: str, path: Path) -> NamedQuery:
    meta: dict[str, str] = {}
    params: list[Param] = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        m = _PARAM.match(line)
        if m:
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
            params.append(Param(name, typ, default, (desc or "").strip(), choices))
            continue
        m = _HEADER.match(line)
        if m:
            meta[m.group(1)] = m.group(2)
    if "name" not in meta:
        raise ValueError(f"{path}: missing '-- name:' header")
    declared = {p.name for p in params}
    used = set(_PLACEHOLDER.findall(text))
    if used - declared:
        raise ValueError(f"{path}: undeclared parameters {sorted(used - declared)}")
    return NamedQuery(meta["name"], meta.get("description", ""), tuple(params), text, path,
                      int(meta.get("stores", "1")))


_CACHE: dict[str, NamedQuery] = {}


def list_queries() -> list[NamedQuery]:
    """Every named query, by name."""
    out = []
    for p in sorted(SQL_DIR.glob("*.sql")):
        out.append(load(p.stem))
    return out


def load(name: str) -> NamedQuery:
    path = SQL_DIR / f"{name}.sql"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in SQL_DIR.glob("*.sql")))
        raise KevoError(f"no named query {name!r}; known: {names} (kevo query --list)")
    key = f"{path}:{os.path.getmtime(path)}"
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
