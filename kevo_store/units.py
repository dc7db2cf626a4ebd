"""How kevo prints sizes and serialises values it did not make: one convention for every command."""

from __future__ import annotations

from typing import Any


def human_bytes(n: float) -> str:
    """Bytes in decimal units, as ``du --si`` and disk vendors count them: ``512 B``, ``327.7 KB``, ``1.2 GB``."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def json_default(v: Any) -> Any:
    """``json.dumps(default=...)`` for what DuckDB, numpy and pathlib hand back.

    DuckDB's sum() of integers is a HUGEINT, which arrives as a Decimal; dates and times become ISO
    text; numpy scalars and arrays become numbers and lists; anything else its ``str``.
    """
    from decimal import Decimal

    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if hasattr(v, "tolist") and hasattr(v, "dtype"):  # numpy scalar or array
        return v.tolist()
    return str(v)
