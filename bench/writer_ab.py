"""The hidden-state writer of another kevo checkout against this one, under the same conditions: the
bench's write (bench/hidden_write.py ``_store``: 4,096 tokens x 33 x 4,096 fp16 in batches of 512,
then syncfs) in fresh subprocesses, alternating old, new, old, new, ... each followed by the raw
write of the same bytes. On a shared machine whose disk and cores change speed from minute to minute,
this says what a change to the writer did, which two separate bench runs cannot.

    git archive <commit> kevo_store | tar -x -C /tmp/old   # the writer before the change
    .venv/bin/python -m bench.writer_ab /tmp/old [reps]     # -> JSON on stdout
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench.common import ROOT, r3

CHILD = """
import os, shutil, sys
root = sys.argv[1]
sys.path[:0] = [root, sys.argv[2]]
import numpy as np
import kevo_store
assert kevo_store.__file__.startswith(root), kevo_store.__file__
from bench import hidden_write as hw
from bench.common import scratch
rng = np.random.default_rng(0)
blocks = [rng.standard_normal((512, 33, 4096), dtype=np.float32).astype(np.float16) for _ in range(8)]
work = scratch("writer-ab")
hw._syncfs(work)
t = hw._store(work / "store", blocks, 33, 4096, True)
shutil.rmtree(work / "store")
hw._syncfs(work)
t_raw = hw._raw(work / "raw", blocks, True)
shutil.rmtree(work)
print(t, t_raw)
"""


def run(old_root: str, reps: int = 3) -> dict:
    times: dict[str, list[float]] = {"old": [], "new": [], "raw_after_old": [], "raw_after_new": []}
    for _ in range(reps):
        for side, root in (("old", os.path.abspath(old_root)), ("new", str(ROOT))):
            p = subprocess.run([sys.executable, "-c", CHILD, root, str(ROOT)], capture_output=True, text=True,
                               check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            t, t_raw = (float(x) for x in p.stdout.split()[-2:])
            times[side].append(r3(t, 4))
            times[f"raw_after_{side}"].append(r3(t_raw, 4))
    return {"old_root": old_root, "reps": reps, "times_s": times,
            "speedup_new_vs_old": r3(min(times["old"]) / min(times["new"])),
            "ratio_new_vs_raw_same_runs": r3(min(times["raw_after_new"]) / min(times["new"]))}


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)))
