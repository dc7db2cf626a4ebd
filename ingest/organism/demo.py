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

QUERIES = (
    # (name, extra args, output file)
    ("critical-layer-distribution", [], "critical_layer_distribution.csv"),
    ("stage-distribution", [], "stage_distribution.csv"),
    ("hallucination-contrast", [], "hallucination_contrast.csv"),
    ("mutation-events", ["--hallucinated"], "mutation_events_hallucinated.csv"),
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


def run_demo(out: Path, *, n_images: int, task: str, model: str | None, seed: int, kevo: list[str],
             echo: Callable[[str], None]) -> dict:
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

    echo(f"1/6 world: {n_images} images in AMBER format -> {data}")
    world.write_world(data, n_images=n_images, seed=seed, split="test")

    echo("2/6 ingest: greedy captions + logit lens at every layer + hidden states")
    step("ingest", "amber", "--data", str(data), "--task", task, "--model", model, "--out", str(store),
         "--batch-size", "16", "--max-new-tokens", "40", "--top-k", "5")

    echo("3/6 eval: AMBER metrics (CHAIR, Cover, Hal, Cog; Yes/No accuracy)")
    raw = step("eval", "amber", str(store), "--data", str(data), "--json", required=False)
    metrics = json.loads(raw) if raw else None
    if metrics is not None:
        (out / "eval_amber.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")

    echo("4/6 named queries")
    for name, extra, fname in QUERIES:
        step("query", name, str(store), *extra, "--format", "csv", "-o", str(tables / fname), required=False)
        step("query", name, str(store), *extra, "--format", "json", "-o",
             str(tables / fname.replace(".csv", ".json")), required=False)

    for label, stem in EMITTED:
        for fmt in ("csv", "json"):
            step("query", "critical-layer-distribution", str(store), "--param", "definition=emitted",
                 "--param", f"label={label}", "--format", fmt, "-o", str(tables / f"{stem}.{fmt}"), required=False)

    echo("5/6 figures")
    for fig in FIGURES:
        step("plot", fig, str(store), "-o", str(figures / f"{fig}.png"), required=False)

    echo("6/6 report")
    step("report", str(store), "-o", str(out / "report.html"), required=False)

    summary = _summary(out, store, metrics, tables)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    echo("")
    echo(_format_summary(summary, out, time.time() - t_start))
    if step.failed:
        echo("steps that did not run:")
        for f in step.failed:
            echo(f"  {f}")
    return summary


def _summary(out: Path, store: Path, metrics: dict | None, tables: Path) -> dict:
    s: dict = {"store": str(store), "metrics": metrics}
    dist = _read_json(tables / "critical_layer_distribution.json")
    if dist is not None:
        s["critical_layer_distribution"] = dist
    contrast = _read_json(tables / "hallucination_contrast.json")
    if contrast is not None:
        s["hallucination_contrast"] = contrast
    emitted = {label: _read_json(tables / f"{stem}.json") for label, stem in EMITTED}
    emitted = {k: v for k, v in emitted.items() if v is not None}
    if emitted:
        s["critical_layer_distribution_emitted"] = emitted
    s["figures"] = sorted(str(p) for p in (out / "figures").glob("*.png"))
    s["report"] = str(out / "report.html") if (out / "report.html").exists() else None
    s["bias_pairs"] = dict(world.BIAS_PAIRS)
    return s


def _rows(table) -> list[dict]:
    if isinstance(table, dict) and "rows" in table:
        return table["rows"]
    return table if isinstance(table, list) else []


def _format_summary(s: dict, out: Path, seconds: float) -> str:
    lines = [f"demo finished in {seconds:.0f}s; everything is under {out}/"]
    lines.append(f"  store    {s['store']}   (try: kevo sql {s['store']} \"SELECT * FROM tokens LIMIT 5\")")
    if s.get("report"):
        lines.append(f"  report   {s['report']}")
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
            lines.append(f"  AMBER yes/no       accuracy {disc['accuracy']:.1f}  F1 {disc['f1']:.1f}   ({disc['n']} questions)")
    dist = s.get("critical_layer_distribution")
    rows = [("generated tokens, paper's (any top-1)", _rows(dist))]
    for label, table in (s.get("critical_layer_distribution_emitted") or {}).items():
        rows.append((f"{label} objects, emitted token top-1", _rows(table)))
    tau = (dist.get("params") or {}).get("tau", 0.5) if isinstance(dist, dict) else 0.5
    lines.extend(_distribution_table([r for r in rows if r[1]], tau))
    contrast = {r.get("token_class"): r for r in _rows(s.get("hallucination_contrast"))}
    if contrast:
        lines.append("  object tokens        n   critical layer (median)   mutation rate   mutation layer (median)")
        for cls in ("hallucinated", "correct", "non-object"):
            r = contrast.get(cls)
            if r:
                lines.append(f"    {cls:<16}{r.get('n_tokens', 0):>5}   {_num(r.get('critical_layer_median')):>22}"
                             f"   {_num(r.get('mutation_rate'), pct=True):>13}   {_num(r.get('mutation_layer_median')):>23}")
    return "\n".join(lines)


def _distribution_table(rows: list[tuple[str, list[dict]]], tau: float) -> list[str]:
    """Critical-layer counts per layer, one line per token group, columns aligned by layer."""
    if not rows:
        return []
    layers = sorted({r["layer"] for _, dist in rows for r in dist if r.get("layer") is not None})
    w = max(max(len(g) for g, _ in rows) + 2, 40)
    head = f"critical layers (top-1 p >= {tau:g}), tokens"
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
