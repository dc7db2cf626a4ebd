"""The causal-tracing section of BENCHMARKS.md (results of bench/trace_bench.py)."""

from __future__ import annotations


def render_trace(w, t, cmd, _f, head) -> None:
    """``cmd``: the section's command line as the page prints it (backticks and where it ran included)."""
    if not head(w, "## Causal tracing (`kevo trace`) against the naive reference",
                t if t is not None else {"skipped": "not run (`python -m bench.run --only trace`)"}):
        return
    s = t["side_by_side"]
    w(f"Command: {cmd} (section `trace`: bench/trace_bench.py). {t['settings']}, on "
      f"`{t['model']}`. The naive reference (tests/trace_reference.py) runs one full forward of the whole model "
      "per restored row (vision tower included, no cache); `kevo trace`'s engine runs the same rows with its exact "
      "shortcuts (docs/tracing.md). Both in the same process, one after the other.")
    w("")
    w("| | kevo trace | naive | ratio |")
    w("|---|---|---|---|")
    w(f"| one sample, {s['n_positions']} positions ({s['n_image_tokens']} image tokens), {s['rows']} rows "
      f"({s['rows_computed']} computed, {s['rows_before_corrupted_exact']} before the constraint: exactly p_corrupt) "
      f"| {_f(s['kevo_trace_s'])} s | {_f(s['naive_s'])} s | **{_f(s['ratio_naive_vs_kevo'])}x** |")
    w(f"| token-forwards | {s['kevo_forward_tokens']:,} | {s['naive_forward_tokens']:,} | "
      f"{_f(s['naive_forward_tokens'] / max(1, s['kevo_forward_tokens']))}x |")
    w("")
    q0 = next((g for g in t.get("question_length", []) if g["extra_words"] == 0), None)
    if q0 is not None and not s.get("warmed_up"):
        w(f"This run timed the process's first trace (cold: first calls of every kernel, load average ~20 from "
          f"other jobs); the identical {q0['rows_computed']} rows traced again later in the same process took "
          f"{_f(q0['kevo_trace_s'])} s, **{_f(s['naive_s'] / q0['kevo_trace_s'])}x** against the naive time "
          "measured above. bench/trace_bench.py now warms the engine up before the side-by-side timing.")
        w("")
    w(f"Same numbers: the largest |p_restored(kevo) - p_restored(naive)| over the {s['rows_computed']} computed rows "
      f"is {s['max_abs_diff']:.2e} (float32). Target: >= 20x; "
      f"{'met' if t['target']['met'] else 'NOT met'}.")
    w("")
    w("Cost against the question's length (words after the constraint; naive estimated from its measured time "
      "per full forward x the rows):")
    w("")
    w("| extra words | positions | tail positions | rows computed | kevo trace s | naive s (est.) | ratio (est.) |")
    w("|---|---|---|---|---|---|---|")
    for g in t["question_length"]:
        w(f"| {g['extra_words']} | {g['n_positions']} | {g['tail_positions']} | {g['rows_computed']} | "
          f"{_f(g['kevo_trace_s'])} | {_f(g['naive_estimated_s'])} | {_f(g['ratio_estimated'])}x |")
    w("")
    w("Cost against the number of image tokens (same decoder, vision input side varied):")
    w("")
    w("| image side | image tokens | positions | rows computed | kevo trace s | naive s/forward | naive s (est.) | "
      "ratio (est.) |")
    w("|---|---|---|---|---|---|---|---|")
    for g in t["image_tokens"]:
        w(f"| {g['image_side']} | {g['n_image_tokens']} | {g['n_positions']} | {g['rows_computed']} | "
          f"{_f(g['kevo_trace_s'])} | {_f(g['naive_s_per_forward'])} | {_f(g['naive_estimated_s'])} | "
          f"{_f(g['ratio_estimated'])}x |")
    w("")
    w("The restored rows of a swap start after the image (the prefix comes from the corrupted run's cache), so "
      "kevo's cost grows with the question's tail and only mildly with the image tokens (attention over the "
      "cache); the naive cost grows with the whole sequence for every row. kevo's cost grows faster than its row "
      "count with the tail (each restored position re-runs the positions after it, and its rows copy the cache "
      "prefix). Absolute times on this shared machine vary by about 3x between identical runs (15.1 s and 52.9 s "
      "for the same 175 rows above).")
    w("")
    w("On a GPU, `bench/gpu.sh` also runs `bench/gpu_trace.py`: questions per hour of the engine on the "
      "LLaVA-1.5-7B architecture (random weights, fp16, swap, all three kinds). Not run in this session (no GPU); "
      "its logic was checked on the CPU with `python bench/gpu_trace.py --tiny`.")
    w("")
