"""Several processes (``torchrun``/``accelerate launch``): which items a rank runs, where its part
goes, and the join of the parts into one store.

Item i (in dataset order) goes to rank ``i % WORLD_SIZE``. Rank K writes the part store
``OUT.parts/rank-K`` (next to the store, so the store directory itself stays a plain store). After
all ranks finish, rank 0 joins the parts with :func:`kevo_store.join.join_parts` in dataset order
and removes them, so the result equals a one-process run: same sample_id, token_uid and hidden bytes.
The ranks exchange only a barrier and one "ok" flag, over gloo (CPU), whatever device the model is on.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kevo_store.errors import KevoError


class RankError(KevoError):
    """A multi-process run cannot proceed (bad RANK/WORLD_SIZE, a rank failed): the message says why."""


@dataclass
class RankContext:
    """This process's place in a multi-process run (``torchrun``/``accelerate launch`` set the env)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> RankContext:
        def geti(name: str, default: int) -> int:
            v = os.environ.get(name)
            try:
                return int(v) if v not in (None, "") else default
            except ValueError:
                raise RankError(f"environment variable {name}={v!r} is not an integer") from None

        ctx = cls(geti("RANK", 0), geti("WORLD_SIZE", 1), geti("LOCAL_RANK", geti("RANK", 0)))
        if not 0 <= ctx.rank < ctx.world_size:
            raise RankError(f"RANK={ctx.rank} is outside WORLD_SIZE={ctx.world_size}")
        return ctx

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def owns(self, index: int) -> bool:
        """Item ``index`` (in dataset order) goes to rank ``index % world_size``."""
        return index % self.world_size == self.rank

    def init(self, backend: str) -> None:
        import datetime as _dt

        import torch.distributed as dist

        if self.distributed and not dist.is_initialized():
            # ranks finish at different times; the barrier before the join must not time out
            dist.init_process_group(backend=backend, timeout=_dt.timedelta(hours=48))

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.distributed and dist.is_initialized():
            dist.barrier()

    def all_ok(self, ok: bool) -> bool:
        """True only if every rank reports ok (so rank 0 never joins an unfinished part)."""
        import torch
        import torch.distributed as dist

        if not (self.distributed and dist.is_initialized()):
            return ok
        t = torch.tensor([0 if ok else 1], dtype=torch.int64)
        dist.all_reduce(t)
        return int(t.item()) == 0

    def shutdown(self) -> None:
        import torch.distributed as dist

        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def parts_dir(out: str | os.PathLike) -> str:
    """Where the ranks of a multi-process run keep their parts: next to the store, removed after the join."""
    return str(out).rstrip("/\\") + ".parts"


def part_path(out: str | os.PathLike, rank: int) -> str:
    return os.path.join(parts_dir(out), f"rank-{rank}")


def committed_keys(path: str | os.PathLike) -> set[str]:
    """sample_key of every committed sample and error of the store at ``path`` (empty if none), read-only."""
    mf = Path(path) / "manifest.json"
    if not mf.is_file():
        return set()
    import pyarrow.parquet as pq

    m = json.loads(mf.read_text())
    keys: set[str] = set()
    for t in ("samples", "errors"):
        files = [str(Path(path) / f) for f in ((m.get("tables") or {}).get(t) or {}).get("files", [])]
        if files:
            keys.update(pq.read_table(files, columns=["sample_key"]).column(0).to_pylist())
    return keys


def keys_in_parts(out: str | os.PathLike, except_rank: int | None = None) -> set[str]:
    """Keys committed in any part of ``out`` (but the part of ``except_rank``)."""
    keys: set[str] = set()
    pdir = Path(parts_dir(out))
    if pdir.is_dir():
        for d in sorted(pdir.iterdir()):
            if d.name != f"rank-{except_rank}":
                keys |= committed_keys(d)
    return keys


def keys_elsewhere(out: str | os.PathLike, rank: int) -> set[str]:
    """Keys a rank must skip besides its own part's: already joined into the store, or committed in
    another part (a re-run with a different number of ranks). Read before any rank writes."""
    return committed_keys(out) | keys_in_parts(out, except_rank=rank)


def join_ranks(ctx: RankContext, out: str | os.PathLike, keys: Sequence[str], all_ok: bool,
               echo: Callable[[str], None]) -> None:
    """After every rank finished: rank 0 joins the parts into ``out`` in ``keys`` order; all ranks wait."""
    if not all_ok:
        raise RankError(f"a rank failed; the parts are kept under {parts_dir(out)} and a re-run resumes every part")
    if ctx.rank == 0:
        from kevo_store.join import join_parts

        pdir = Path(parts_dir(out))
        parts = sorted((str(d) for d in pdir.iterdir() if (d / "manifest.json").is_file()),
                       key=lambda d: int(d.rsplit("-", 1)[1]) if d.rsplit("-", 1)[1].isdigit() else 1 << 30)
        stats = join_parts(parts, out, list(keys), progress="join the ranks' parts")
        echo(f"joined {len(parts)} parts into {out}: {stats}")
        shutil.rmtree(pdir)  # everything is in the store now; a crash before this line re-joins nothing twice
    ctx.barrier()
