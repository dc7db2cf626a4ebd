"""`kevo demo`: the whole pipeline on the embedded organism, driven through the real `kevo` command.

ingest must not import queries, so every step after the world is a `kevo …` subprocess: exactly
the commands a user would type (each is printed before it runs, so the demo doubles as a tour).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import click

from ingest.organism import world
from ingest.organism.train import WEIGHTS_DIR
from ingest.trace.demo_step import SWAP_WORD, TRACE_RUN, trace_demo

QUERIES = (
    # (name, extra args, output file)
    ("critical-layer-distribution", [], "critical_layer_distribution.csv"),
    ("stage-distribution", [], "stage_distribution.csv"),
    ("hallucination-contrast", [], "hallucination_contrast.csv"),
    ("mutation-events", ["--hallucinated"], "mutation_events_hallucinated.csv"),
    ("displaced-candidates", [], "displaced_candidates.csv"),
    ("hallucination-curves", [], "hallucination_curves.csv"),
)

# The paper's critical layer fires on any confident candidate: on the organism, template words and
# language-prior objects stand out at layer 1. For object tokens the question is when the token the
# model finally emits stands out (top-1 with p_out >= tau): the queries' `definition=emitted`.
EMITTED = (
    # (label, output file stem)
    ("correct", "critical_layer_distribution_emitted_correct"),
    ("hallucinated", "critical_layer_distribution_emitted_hallucinated"),
)

FIGURES = ("critical-layers", "stages", "hallucination", "divergence", "js-heatmap")


class _Step:
    def __init__(self, kevo: list[str], echo: Callable[[str], None], log: Path):
        self.kevo, self.echo, self.log = kevo, echo, log
        self.failed: list[str] = []

    def __call__(self, *args: str, required: bool = True, capture: bool = False) -> str | None:
        shown = " ".join(["kevo", *args])
        self.echo(f"$ {shown}")
        t0 = time.time()
        r = subprocess.run([*self.kevo, *args], capture_output=True, text=True)
        with self.log.open("a", encoding="utf-8") as f:
            f.write(f"$ {shown}\n# exit {r.returncode} after {time.time() - t0:.1f}s\n{r.stdout}{r.stderr}\n")
        if r.returncode != 0:
            msg = (r.stderr.strip().splitlines() or ["(no message)"])[-1]
            if required:
                raise click.ClickException(f"demo step failed: {shown}\n  {msg}\n  (full output in {self.log})")
            self.failed.append(f"{shown}: {msg}")
            self.echo(f"  skipped: {msg}")
            return None
        return r.stdout


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


VQA_IMAGES = 16
"""Images of the cross-image VQA split (one question, single-word answers)."""


def run_demo(out: Path, *, n_images: int, task: str, model: str | None, seed: int, kevo: list[str],
             echo: Callable[[str], None], vqa_images: int = VQA_IMAGES) -> dict:
    t_start = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = str(model or WEIGHTS_DIR)
    data = out / "world"
    store = out / "organism.kevo"
    tables = out / "tables"
    figures = out / "figures"
    tables.mkdir(exist_ok=True)
    figures.mkdir(exist_ok=True)
    log = out / "demo.log"
    log.write_text("", encoding="utf-8")
    step = _Step(kevo, echo, log)

    vqa = out / "vqa"
    vqa_store = out / "vqa.kevo"
    echo(f"1/9 world: {n_images} images in AMBER format -> {data}; {vqa_images} images of the VQA split -> {vqa}")
    world.write_world(data, n_images=n_images, seed=seed, split="test")
    world.write_vqa(vqa, n_images=vqa_images, seed=seed)

    echo("2/9 ingest: greedy captions + logit lens at every layer + hidden states")
    step("ingest", "amber", "--data", str(data), "--task", task, "--model", model, "--out", str(store),
         "--batch-size", "16", "--max-new-tokens", "40", "--top-k", "5")

    echo("3/9 eval: AMBER metrics (CHAIR, Cover, Hal, Cog; Yes/No accuracy)")
    raw = step("eval", "amber", str(store), "--data", str(data), "--json", required=False)
    metrics = json.loads(raw) if raw else None
    if metrics is not None:
        (out / "eval_amber.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")

    echo("4/9 named queries")
    for name, extra, fname in QUERIES:
        step("query", name, str(store), *extra, "--format", "csv", "-o", str(tables / fname), required=False)
        step("query", name, str(store), *extra, "--format", "json", "-o",
             str(tables / fname.replace(".csv", ".json")), required=False)

    for label, stem in EMITTED:
        for fmt in ("csv", "json"):
            step("query", "critical-layer-distribution", str(store), "--param", "definition=emitted",
                 "--param", f"label={label}", "--format", fmt, "-o", str(tables / f"{stem}.{fmt}"), required=False)

    echo("5/9 cross-image VQA: one question over many images; the answer token's hidden states per layer")
    step("ingest", "vqa", "--questions", str(vqa / "questions.json"), "--images", str(vqa / "images"),
         "--model", model, "--out", str(vqa_store), "--batch-size", "16", "--max-new-tokens", "4", "--top-k", "5")
    step("embed", str(vqa_store), "--tokens", "is_answer", "--n-jobs", "2", "--name", "vqa-answer", required=False)

    echo("6/9 causal tracing: colour and existence questions, their object word swapped for another (kevo trace)")
    t_trace = time.time()
    trace_store = trace_demo(step, out, data, model)
    trace_seconds = time.time() - t_trace

    echo("7/9 skip experiments: critical and mutation layers read off the store, each range skipped "
         "(kevo experiment skip)")
    skip = out / "skip"
    step("experiment", "skip", str(store), "--out", str(skip), required=False)

    echo("8/9 figures")
    for fig in FIGURES:
        step("plot", fig, str(store), "-o", str(figures / f"{fig}.png"), required=False)
    token = _hallucination_token(tables / "mutation_events_hallucinated.json")
    if token is not None:  # the paper's Fig. 3: a real hallucination, its displaced candidate and the emitted one
        step("plot", "candidates", str(store), "--token", str(token), "-o",
             str(figures / "candidates-hallucination.png"), required=False)
    else:
        echo("  (no hallucinated token has a top-1 mutation event: no candidates figure of a hallucination)")
    step("plot", "tsne", str(vqa_store), "-o", str(figures / "tsne-vqa.png"), required=False)

    echo("9/9 report")
    step("report", str(store), "-o", str(out / "report.html"), required=False)
    step("report", str(vqa_store), "-o", str(out / "report-vqa.html"), required=False)

    summary = _summary(out, store, metrics, tables)
    summary.update(_vqa_summary(vqa_store, vqa))
    summary["trace"] = _trace_summary(trace_store, tables / "trace_peaks.json", trace_seconds)
    summary["skip"] = _skip_summary(skip / "comparison.json")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    echo("")
    echo(_format_summary(summary, out, time.time() - t_start))
    if step.failed:
        echo("steps that did not run:")
        for f in step.failed:
            echo(f"  {f}")
    return summary


def _hallucination_token(path: Path) -> int | None:
    """The first hallucinated token whose mutation displaced a candidate (a top-1 event)."""
    rows = _rows(_read_json(path))
    for r in rows:
        if r.get("displaced_id") is not None:
            return int(r["token_uid"])
    return None


def _vqa_summary(store: Path, vqa: Path) -> dict:
    """The VQA answers and the per-layer dispersion `kevo embed` recorded in the store's manifest."""
    s: dict = {"vqa_store": str(store)}
    records = _read_json(vqa / "questions.json") or []
    manifest = _read_json(store / "manifest.json") or {}
    runs = (((manifest.get("derived") or {}).get("embeddings") or {}).get("params") or {}).get("runs") or {}
    if runs:
        s["dispersion"] = list(runs.values())[-1].get("dispersion")
    s["vqa"] = {"question": records[0]["question"] if records else None, "n_images": len(records)}
    return s


def _trace_summary(store: Path, peaks: Path, seconds: float) -> dict | None:
    """The demo's causal trace: the run's mean p(answer) clean and corrupted, and per kind the layer of
    the largest average indirect effect (``trace-peaks``, per=dataset)."""
    rows = [r for r in _rows(_read_json(peaks)) if r.get("name") == TRACE_RUN]
    if not rows or not (store / "manifest.json").is_file():
        return None
    from kevo_store import open_store

    by_kind = open_store(store).sql(
        "SELECT split_part(s.item_id, '-', 1) AS kind, count(*) AS n, avg(r.p_clean) AS p_clean, "
        "avg(r.p_corrupt) AS p_corrupt FROM trace_runs r JOIN samples s USING (sample_id) "
        f"WHERE r.name = '{TRACE_RUN}' GROUP BY kind ORDER BY kind").to_dicts()
    report = store.parent / "report-trace.html"
    return {"store": str(store), "report": str(report) if report.is_file() else None, "name": TRACE_RUN,
            "n_samples": sum(int(r["n"]) for r in by_kind), "seconds": seconds,
            "questions": [{"kind": r["kind"], "n": int(r["n"]), "p_clean": r["p_clean"], "p_corrupt": r["p_corrupt"]}
                          for r in by_kind],
            "peaks": [{k: p.get(k) for k in ("kind", "peak_layer", "peak_effect")} for p in rows]}


SKIP_METRICS = ("CHAIR", "Cover", "Hal", "yes_no_accuracy")
"""The columns of the skip table in the demo's summary (the whole table: DIR/skip/comparison.csv)."""


def _skip_summary(path: Path) -> dict | None:
    """``kevo experiment skip``'s comparison.json without its SQL texts: the derivation (c, m1, m2) and a
    row per variant (range, agreement, metrics and deltas, words changed)."""
    c = _read_json(path)
    if not isinstance(c, dict) or not c.get("variants"):
        return None
    d = {k: v for k, v in (c.get("derivation") or {}).items() if k != "sql"}
    return {"comparison": str(path), "report": str(path.parent / "report.html"), "derivation": d,
            "variants": c["variants"]}


def _summary(out: Path, store: Path, metrics: dict | None, tables: Path) -> dict:
    s: dict = {"store": str(store), "metrics": metrics}
    dist = _read_json(tables / "critical_layer_distribution.json")
    if dist is not None:
        s["critical_layer_distribution"] = dist
    contrast = _read_json(tables / "hallucination_contrast.json")
    if contrast is not None:
        s["hallucination_contrast"] = contrast
    displaced = _read_json(tables / "displaced_candidates.json")
    if displaced is not None:
        s["displaced_candidates"] = displaced
    events = _read_json(tables / "mutation_events_hallucinated.json")
    if events is not None:
        s["displaced_in_image"] = _displaced_in_image(_rows(events), store, out / "world")
    emitted = {label: _read_json(tables / f"{stem}.json") for label, stem in EMITTED}
    emitted = {k: v for k, v in emitted.items() if v is not None}
    if emitted:
        s["critical_layer_distribution_emitted"] = emitted
    s["figures"] = sorted(str(p) for p in (out / "figures").glob("*.png"))
    s["report"] = str(out / "report.html") if (out / "report.html").exists() else None
    s["bias_pairs"] = dict(world.BIAS_PAIRS)
    return s


def _displaced_in_image(events: list[dict], store: Path, world_dir: Path) -> dict:
    """Of the hallucinated tokens' top-1 mutation events, how many displaced an object that is in the
    image (the record's AMBER truth): the paper's correct answer overwritten by the language prior."""
    ann = _read_json(world_dir / "data" / "annotations.json") or []
    truth = {r["id"]: set(r["truth"]) for r in ann if r.get("type") == "generative"}
    from kevo_store import open_store

    item = {r["sample_id"]: int(r["item_id"])
            for r in open_store(store).sql("SELECT sample_id, item_id FROM samples").to_dicts()}
    top1 = [e for e in events if e.get("displaced_id") is not None]
    hits = sum((e.get("displaced_piece") or "").lstrip("▁") in truth.get(item.get(e["sample_id"]), ())
               for e in top1)
    return {"n_events": len(top1), "n_in_image": hits}


def _rows(table) -> list[dict]:
    if isinstance(table, dict) and "rows" in table:
        return table["rows"]
    return table if isinstance(table, list) else []


def _format_summary(s: dict, out: Path, seconds: float) -> str:
    tr = s.get("trace") or {}
    lines = [f"demo finished in {seconds:.0f}s" + (f" (causal tracing {tr['seconds']:.0f}s)" if tr else "")
             + f"; everything is under {out}/"]
    lines.append(f"  store    {s['store']}   (try: kevo sql {s['store']} \"SELECT * FROM tokens LIMIT 5\")")
    if s.get("report"):
        sk = s.get("skip") or {}
        more = [Path(tr["report"]).name] if tr.get("report") else []
        more += ["skip/report.html"] if sk.get("report") and Path(sk["report"]).is_file() else []
        lines.append(f"  report   {s['report']}" + "".join(f", {x}" for x in more))
    if s.get("figures"):
        lines.append(f"  figures  {', '.join(Path(f).name for f in s['figures'])} in {out / 'figures'}")
    lines.append(f"  tables   {out / 'tables'}")
    m = s.get("metrics")
    if isinstance(m, dict):
        gen = m.get("generative") or {}
        keys = [k for k in ("CHAIR", "Cover", "Hal", "Cog") if k in gen]
        if keys:
            lines.append("  AMBER generative   " + "  ".join(f"{k} {gen[k]:.1f}" for k in keys)
                         + f"   ({gen.get('n', '?')} captions)")
        disc = ((m.get("discriminative") or {}).get("official") or {}).get("all")
        if disc:
            lines.append(f"  AMBER yes/no       accuracy {disc['accuracy']:.1f}  F1 {disc['f1']:.1f}   "
                         f"({disc['n']} questions)")
            by = (m.get("discriminative") or {}).get("official") or {}
            parts = [f"{k} {by[k]['accuracy']:.1f} ({by[k]['n']})" for k in ("existence", "attribute", "relation")
                     if k in by]
            if parts:
                lines.append("    accuracy by task   " + "  ".join(parts))
    dist = s.get("critical_layer_distribution")
    rows = [("generated tokens, paper's (any top-1)", _rows(dist))]
    for label, table in (s.get("critical_layer_distribution_emitted") or {}).items():
        rows.append((f"{label} objects, emitted token top-1", _rows(table)))
    tau = (dist.get("params") or {}).get("tau") if isinstance(dist, dict) else None  # the query's own record
    lines.extend(_distribution_table([r for r in rows if r[1]], tau))
    contrast = {r.get("token_class"): r for r in _rows(s.get("hallucination_contrast"))}
    if contrast:
        lines.append("  object tokens        n   critical layer (median)   mutation rate   mutation layer (median)")
        for cls in ("hallucinated", "correct", "non-object"):
            r = contrast.get(cls)
            if r:
                lines.append(f"    {cls:<16}{r.get('n_tokens', 0):>5}   {_num(r.get('critical_layer_median')):>22}"
                             f"   {_num(r.get('mutation_rate'), pct=True):>13}"
                             f"   {_num(r.get('mutation_layer_median')):>23}")
        h, c = contrast.get("hallucinated"), contrast.get("correct")
        if h and c and c.get("mutation_rate"):
            lines.append(f"  mutation contrast  hallucinated / correct = "
                         f"{h['mutation_rate'] / c['mutation_rate']:.1f}x")
    displaced = [r for r in _rows(s.get("displaced_candidates")) if r.get("token_class") == "hallucinated"]
    if displaced:
        top = ", ".join(f"{(r.get('displaced_piece') or '?').lstrip('▁')} {r.get('n_events')}" for r in displaced[:6])
        lines.append(f"  displaced candidates of hallucinated objects (events): {top}")
    inimg = s.get("displaced_in_image")
    if inimg and inimg.get("n_events"):
        lines.append(f"    an object in the image: {inimg['n_in_image']} of {inimg['n_events']} top-1 mutation events")
    disp = s.get("dispersion")
    if disp:
        vqa = s.get("vqa") or {}
        lines.append(f"  cross-image VQA: \"{vqa.get('question')}\" over {vqa.get('n_images')} images; "
                     "dispersion of the answer token across images (mean distance to the centroid / mean norm)")
        lines.append("    " + "".join(f"{'L' + str(r['layer']):>6}" for r in disp))
        lines.append("    " + "".join(f"{r['rel_dispersion']:>6.2f}" for r in disp))
        q = max(1, len(disp) // 4)
        first = sum(r["rel_dispersion"] for r in disp[:q]) / q
        last = sum(r["rel_dispersion"] for r in disp[-q:]) / q
        if first > 0:
            lines.append(f"    last quarter / first quarter of the layers = {last / first:.1f}x")
    tr = s.get("trace")
    if tr:
        lines.append(f"  causal trace {tr['name']}: {tr['n_samples']} questions, the object word swapped for "
                     f"\"{SWAP_WORD}\"; mean p(answer)  clean -> corrupted")
        names = {"attribute": "colour (\"Is the car red in this image?\")",
                 "present": "existence of an object shown (\"Is there a car ...?\")"}
        for q in tr["questions"]:
            lines.append(f"    {names.get(q['kind'], q['kind']) + ' (' + str(q['n']) + ')':<58}"
                         f"{q['p_clean']:.4f} -> {q['p_corrupt']:.4f}")
        order = {"hidden": 0, "mlp": 1, "attn": 2}
        peaks = sorted(tr["peaks"], key=lambda p: order.get(p["kind"], 9))
        lines.append("    peak AIE (layer)   " + "   ".join(f"{p['kind']} {p['peak_effect']:.4f} (L{p['peak_layer']})"
                                                       for p in peaks))
    sk = s.get("skip")
    if sk:
        from ingest.experiments.skip import format_comparison

        lines.append("  skip experiments (kevo experiment skip: decoder layers skipped; tokens = agreement with the "
                     "baseline)")
        lines.extend("    " + x for x in format_comparison(sk, SKIP_METRICS, words=False).splitlines())
    return "\n".join(lines)


def _distribution_table(rows: list[tuple[str, list[dict]]], tau: float | None) -> list[str]:
    """Critical-layer counts per layer, one line per token group, columns aligned by layer."""
    if not rows:
        return []
    layers = sorted({r["layer"] for _, dist in rows for r in dist if r.get("layer") is not None})
    w = max(max(len(g) for g, _ in rows) + 2, 40)
    head = f"critical layers (top-1 p >= {'tau' if tau is None else f'{tau:g}'}), tokens"
    out = [f"  {head:<{w}}" + "".join(f"{'L' + str(x):>5}" for x in layers) + "  never  median"]
    for group, dist in rows:
        n = {r.get("layer"): r.get("n_critical", 0) for r in dist}
        counts = [n.get(x, 0) for x in layers]
        out.append(f"    {group:<{w - 2}}" + "".join(f"{c or '.':>5}" for c in counts)
                   + f"{n.get(None, 0) or '.':>7}{_num(_median(layers, counts)):>8}")
    return out


def _median(layers: list[int], counts: list[int]) -> float | None:
    """Median layer of the tokens that reached one (the lower middle value, as a layer)."""
    total = sum(counts)
    if not total:
        return None
    seen = 0
    for layer, c in zip(layers, counts):
        seen += c
        if 2 * seen >= total:
            return layer
    return None


def _num(v, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.0f}%" if pct else f"{v:g}"
