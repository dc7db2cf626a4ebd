"""Commits overlapped with the model: a bounded background writer for ingest.

``BackgroundCommits.submit(rows)`` hands one batch to a single writer thread and returns, so the model
computes the next batch while this one is hashed, written and committed (the store's writer does the
commit, data first, then the commit record, as always). At most one batch is in flight: ``submit``
first waits for the previous commit to finish, so a crash loses at most that batch (and the one the
model was computing, never handed over), exactly as without the thread. A failed commit is raised by
the next ``submit`` or by ``wait``/``close``.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from ingest.rows import BatchRows, write_rows


class BackgroundCommits:
    def __init__(self, writer):
        self.writer = writer
        self._ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kevo-commit")
        self._fut: Future | None = None

    def submit(self, rows: BatchRows) -> None:
        self.wait()
        self._fut = self._ex.submit(write_rows, self.writer, rows)

    def wait(self) -> None:
        """Until the batch in flight (if any) is committed; re-raises its failure."""
        fut, self._fut = self._fut, None
        if fut is not None:
            fut.result()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._ex.shutdown(wait=True)
