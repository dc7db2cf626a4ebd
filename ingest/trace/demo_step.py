"""The causal-tracing step of `kevo demo` on the embedded organism, as the commands a user types.

``trace_demo(step, out, world, weights)`` takes the demo's step runner (``ingest.organism.demo._Step``:
runs ``kevo ARGS...``, prints the command) and the world the demo generated; it writes the
organism's colour questions and existence questions about an object each image shows, with their
object word as the constraint, ingests them with the prompt captured, traces them (the object word
swapped for "house", every kind, window 1), writes the dataset peaks (``trace-peaks``) as a table,
draws the heatmaps and the patch grid, and reports the trace store. Each step may fail without
stopping the demo (the demo lists the steps that did not run).
"""

from __future__ import annotations

from pathlib import Path

from ingest.organism.world import OBJECTS

from .questions import constraint_questions

SWAP_WORD = "house"
"""An object of the organism's world that none of the traced questions asks about, on none of their
images for the existence questions (a word outside its vocabulary, e.g. "dog", would be swapped for
``<unk>``)."""
TRACE_RUN = f"swap:{SWAP_WORD}/w1"
"""The demo's run (the name ``kevo trace`` gives it): the object word swapped, window 1."""


def trace_demo(step, out: Path, world: Path, weights: Path | str, n_questions: int = 12) -> Path:
    """Returns the trace store (``out/trace.kevo``); the peaks go to ``out/tables/trace_peaks.json``,
    the figures to ``out/figures/trace.png`` and ``attention-patches.png``, the report to
    ``out/report-trace.html``."""
    out = Path(out)
    q = constraint_questions(Path(world) / "data", out / "trace-questions.jsonl", per_kind=n_questions,
                             kinds=("attribute", "present"), exclude=(SWAP_WORD,), objects=OBJECTS,
                             without=(SWAP_WORD,))
    store = out / "trace.kevo"
    tables, figures = out / "tables", out / "figures"
    tables.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    if step("ingest", "vqa", "--questions", str(q), "--images", str(Path(world) / "image"), "--model", str(weights),
            "--out", str(store), "--max-new-tokens", "2", "--capture-prompt", "--hidden", "none",
            required=False) is None:
        return store
    if step("trace", str(store), "--model", str(weights), "--corrupt", f"swap:{SWAP_WORD}",
            "--kinds", "hidden,mlp,attn", "--window", "1", required=False) is None:
        return store
    step("query", "trace-peaks", str(store), "-p", "per=dataset", "--format", "json", "-o",
         str(tables / "trace_peaks.json"), required=False)
    step("plot", "trace", str(store), "-o", str(figures / "trace.png"), required=False)
    step("plot", "attention-patches", str(store), "-o", str(figures / "attention-patches.png"), required=False)
    step("report", str(store), "-o", str(out / "report-trace.html"), required=False)
    return store
