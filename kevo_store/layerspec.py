"""Layer lists as users type them: ``"20-26,30"`` -> ``[20, 21, ..., 26, 30]``.

One parser for every option that takes layers (``kevo ingest --hidden/--skip-layers``,
``kevo store pull --layers``, ``kevo embed --layers``), so they all accept the same syntax and
fail with the same kind of message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import KevoError

_PART = re.compile(r"(-?\d+)(?:\s*-\s*(-?\d+))?")


def parse_layer_list(spec: str, *, n: int | None = None, option: str = "layers",
                     error: type[Exception] = KevoError) -> list[int]:
    """Parse a comma-separated list of layers and inclusive ranges into sorted unique ints.

    ``n``: when given, every layer must lie in 0..n-1. ``option`` names the flag in messages;
    ``error`` is the exception class raised (a KevoError subclass of the calling package).
    """
    out: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        m = _PART.fullmatch(part)
        if m is None:
            raise error(f"{option} {spec!r}: {part!r} is not a layer number or a range like 16-32")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise error(f"{option} {spec!r}: range {part!r} is reversed")
        bad = lo if lo < 0 else (max(lo, n) if n is not None and hi >= n else None)
        if bad is not None:
            have = f"the model has layers 0..{n - 1}" if n is not None else "layers start at 0"
            raise error(f"{option} {spec!r}: layer {bad} is out of range ({have})")
        out.update(range(lo, hi + 1))
    if not out:
        raise error(f"{option} {spec!r}: no layers given")
    return sorted(out)


def parse_layers(spec: str | Iterable[int] | None, *, n: int | None = None, option: str = "--layers",
                 error: type[Exception] = KevoError) -> list[int] | None:
    """:func:`parse_layer_list` for an option that may be absent (None or blank: None) or already a list of ints."""
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return None
    if not isinstance(spec, str):
        return sorted({int(x) for x in spec})
    return parse_layer_list(spec, n=n, option=option, error=error)
