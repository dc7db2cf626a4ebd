"""One writer per store: an O_EXCL lock file holding the writer's pid, host and start time."""

from __future__ import annotations

import json
import os
import socket
import sys

from .errors import StoreLockedError
from .fs import LocalFS
from .manifest import now_iso

LOCK = ".lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped) holds nothing
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class StoreLock:
    """Held while a writer has the store open; ``release`` removes it."""

    def __init__(self, fs: LocalFS, purpose: str = "writer"):
        self.fs = fs
        self.path = fs.full(LOCK)
        self.purpose = purpose
        self.held = False

    def acquire(self) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso(), "purpose": self.purpose}
        for _attempt in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read()
                if self._stale(holder):
                    print(f"kevo: breaking the stale lock {self.path} of {self._who(holder)} (that process is gone)",
                          file=sys.stderr)
                    try:
                        os.remove(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                raise StoreLockedError(
                    f"{self.fs.root} is locked by {self._who(holder)} ({self.path}); one writer at a time. "
                    "If that writer is really gone, delete the lock file."
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
            self.held = True
            return
        raise StoreLockedError(f"{self.fs.root}: could not take the lock {self.path}")

    def _read(self) -> dict:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _who(h: dict) -> str:
        if not h:
            return "an unknown writer (unreadable lock file)"
        return f"pid {h.get('pid')} on {h.get('host')} ({h.get('purpose', 'writer')}, since {h.get('since')})"

    @staticmethod
    def _stale(h: dict) -> bool:
        if not h or h.get("host") != socket.gethostname() or not isinstance(h.get("pid"), int):
            return False
        if h["pid"] == os.getpid():
            return False  # this very process holds it: a second writer here is a real conflict
        return not _pid_alive(h["pid"])

    def release(self) -> None:
        if self.held:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
            self.held = False
