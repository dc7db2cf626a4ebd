"""Running the real ``kevo`` command from an experiment (one subprocess per step, output logged)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from kevo_store.errors import KevoError


class ExperimentError(KevoError):
    """An experiment that cannot run: the message names the store, the step or the option."""


def kevo_argv() -> list[str]:
    """The `kevo` command of this environment."""
    exe = Path(sys.executable).parent / "kevo"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("kevo")
    return [found] if found else [sys.executable, "-c", "from kevo_store.cli import main; main()"]


class Kevo:
    """``kevo(*args)`` runs one command, echoes it, appends it and its output to ``log``."""

    def __init__(self, log: Path, echo: Callable[[str], None], quiet: bool = False):
        self.log, self.echo, self.quiet = Path(log), echo, quiet
        self.argv = kevo_argv()

    def __call__(self, *args, stream: bool = False) -> str:
        args = [str(a) for a in args]
        shown = " ".join(["kevo", *(_quote(a) for a in args)])
        if not self.quiet:
            self.echo(f"$ {shown}")
        t0 = time.time()
        if stream:  # long steps (ingest): progress goes to the terminal
            r = subprocess.run([*self.argv, *args], stdout=subprocess.PIPE, text=True)
            err = ""
        else:
            r = subprocess.run([*self.argv, *args], capture_output=True, text=True)
            err = r.stderr
        with self.log.open("a", encoding="utf-8") as f:
            f.write(f"$ {shown}\n# exit {r.returncode} after {time.time() - t0:.1f}s\n{r.stdout}{err}\n")
        if r.returncode != 0:
            last = (err.strip().splitlines() or ["(see the output above)"])[-1]
            raise ExperimentError(f"step failed: {shown}\n  {last}\n  (log: {self.log})")
        return r.stdout

    def json(self, *args):
        return json.loads(self(*args))

    def defaults(self, query: str, given: dict) -> dict:
        """``given`` with every None filled in by the named query's declared default (its SQL file and the
        fragments it includes are the one place a definition's defaults are written)."""
        if all(v is not None for v in given.values()):
            return dict(given)
        declared = json.loads(self("query", query, "--params", "--format", "json"))
        return {k: declared[k]["default"] if v is None else v for k, v in given.items()}


def _quote(a: str) -> str:
    return a if a and all(c.isalnum() or c in "-_=./,:" for c in a) else "'" + a.replace("'", "'\\''") + "'"
