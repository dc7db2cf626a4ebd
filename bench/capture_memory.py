"""Peak memory of capture on a long prompt: hidden states recorded by hooks at the stored positions
(ingest/residual.py) against the former ``output_hidden_states`` path, with and without prompt positions.

One random LLaVA-1.5-architecture model (bench/models.py, ``LONG``: 2,025 image tokens per image), one
image, batch 1, a few new tokens. Each of the four arms (path x ``capture_prompt``) runs in its own
subprocess. Just before the capture (model loaded, inputs encoded, one warm-up capture of a short prompt
done) the kernel's peak-RSS mark is reset to the current resident set (``/proc/self/clear_refs``);
the peak after the capture (``VmHWM``) minus the resident set before it is what the capture itself
added at its peak. (Not ``ru_maxrss``: Linux carries it over from the parent across fork and exec.)
On the CPU, device memory is that resident memory; with CUDA, ``torch.cuda.max_memory_allocated``
is reported as well.

What the old path keeps and hooks do not, without prompt positions: (L+1) x prompt length x D values
(fp32 here) until ``generate`` returns; with prompt positions both keep them (they are stored).

    .venv/bin/python -m bench.capture_memory MODEL_DIR IMAGE {hooks,output_hidden_states} {0,1}
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.common import ROOT, r3


def _status_kib(field: str) -> int:
    """VmRSS (the resident set now) or VmHWM (its peak since the last reset) of this process, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: reset the peak resident set size (VmHWM) to the current one


def child(model_dir: str, image: str, path: str, prompt: bool) -> dict:
    """One arm, in this process: what capture adds to the resident set at its peak."""
    import torch
    from PIL import Image

    import ingest.residual as residual
    from bench.models import PROMPT
    from ingest.capture import CaptureSettings, capture
    from ingest.models import load_adapter

    torch.set_num_threads(1)
    residual._OUTPUT_HIDDEN_STATES = path == "output_hidden_states"
    ad = load_adapter(model_dir, dtype="float32", device="cpu")
    im = Image.open(image).convert("RGB")
    settings = CaptureSettings(max_new_tokens=4, top_k=5, capture_prompt=prompt)
    text = ad.build_prompt(PROMPT, has_image=True)
    capture(ad, [ad.build_prompt(PROMPT, has_image=False)], None, settings)  # warm-up: allocator, kernels
    n_prompt = ad.encode([text], [im]).prompt_lengths[0]
    _reset_peak()
    before = _status_kib("VmRSS")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    caps = capture(ad, [text], [im], settings)
    peak = _status_kib("VmHWM")
    out = {"path": path, "capture_prompt": prompt, "prompt_tokens": n_prompt, "rows": caps[0].n_tokens,
           "rss_before_mib": r3(before / 1024), "peak_rss_mib": r3(peak / 1024),
           "peak_minus_before_mib": r3((peak - before) / 1024),
           "prompt_hidden_states_mib": r3((ad.n_layers + 1) * n_prompt * ad.hidden_size * 4 / 2**20)}
    if torch.cuda.is_available():
        out["cuda_max_allocated_mib"] = r3(torch.cuda.max_memory_allocated() / 2**20)
    return out


def run(model_dir: Path, image: Path) -> dict:
    """The four arms, each in a fresh subprocess, one after the other."""
    arms = []
    for prompt in (False, True):
        for path in ("output_hidden_states", "hooks"):
            p = subprocess.run([sys.executable, "-m", "bench.capture_memory", str(model_dir), str(image), path,
                                str(int(prompt))], cwd=ROOT, capture_output=True, text=True, timeout=1800,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
            if p.returncode != 0:
                raise RuntimeError(f"capture_memory arm {path}/{prompt} failed:\n{p.stderr[-3000:]}")
            arms.append(json.loads(p.stdout.strip().splitlines()[-1]))
    by = {(a["path"], a["capture_prompt"]): a for a in arms}
    old, new = by[("output_hidden_states", False)], by[("hooks", False)]
    return {
        "arms": arms, "prompt_tokens": new["prompt_tokens"],
        "saved_without_prompt_mib": r3(old["peak_minus_before_mib"] - new["peak_minus_before_mib"]),
        "old_prompt_hidden_states_mib": old["prompt_hidden_states_mib"],
    }


if __name__ == "__main__":
    m, img, which, pr = sys.argv[1:5]
    print(json.dumps(child(m, img, which, pr == "1")))
