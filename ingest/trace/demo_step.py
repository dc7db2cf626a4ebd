"""The causal-tracing step of `kevo demo` on the embedded organism, as the commands a user types.

``trace_demo(step, out, world)`` takes the demo's step runner (``ingest.organism.demo._Step``: runs
``kevo ARGS...``, prints the command) and the world the demo generated; it writes the organism's
colour questions with their object word as the constraint, ingests them with the prompt captured,
traces them (swap of the object word, every kind, window 1) and draws the heatmaps and patch grid.
"""

from __future__ import annotations

from pathlib import Path

from .questions import constraint_questions


def trace_demo(step, out: Path, world: Path, weights: Path, n_questions: int = 12) -> Path:
    out = Path(out)
    q = constraint_questions(Path(world) / "data", out / "colour-questions.jsonl", per_kind=n_questions,
                             kinds=("attribute",))
    store = out / "trace.kevo"
    step("ingest", "vqa", "--questions", str(q), "--images", str(Path(world) / "image"), "--model", str(weights),
         "--out", str(store), "--max-new-tokens", "2", "--capture-prompt", "--hidden", "none")
    step("trace", str(store), "--model", str(weights), "--corrupt", "swap:dog", "--kinds", "hidden,mlp,attn",
         "--window", "1")
    step("query", "trace-peaks", str(store), "-p", "per=dataset")
    (out / "figures").mkdir(parents=True, exist_ok=True)
    step("plot", "trace", str(store), "-o", str(out / "figures" / "trace.png"))
    step("plot", "attention-patches", str(store), "-o", str(out / "figures" / "attention-patches.png"))
    return store
