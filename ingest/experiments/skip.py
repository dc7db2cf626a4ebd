"""`kevo experiment skip BASE.kevo --out DIR`: the paper's skip experiments, derived from the baseline.

1. derive c, m1, m2 from the baseline (:mod:`ingest.experiments.derive`; the SQL is printed and kept in
   ``DIR/derivation/``), and the variants skip.1 = [c, m1), skip.2 = [m1, m2], skip.3 = [c, L-k)
   (decoder layers in ``--skip-layers`` numbering), plus any ``--variant NAME=RANGE``;
2. run each variant as an ordinary ``kevo ingest … --skip-layers RANGE`` of the baseline's dataset
   with its model and settings into ``DIR/<variant>.kevo`` (a re-run resumes each store);
3. compare every variant with the baseline (:mod:`ingest.experiments.compare`) into
   ``DIR/comparison.json`` and ``DIR/comparison.csv``, store that table in each variant store as the
   derived table ``comparison`` (``kevo report`` shows it) and write ``DIR/report.html``.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path

from kevo_store import open_store, write_derived_table
from kevo_store.layerspec import parse_layer_list

from .command import ExperimentError, Kevo
from .compare import StoreSide, compare_sides, flat, metrics
from .derive import derive_ranges, variant_ranges
from .rebuild import dataset_args, settings_args


def layer_spec(layers: list[int]) -> str:
    """[3, 4, 5, 8] -> '3-5,8'."""
    out, run = [], []
    for x in sorted(layers):
        if run and x == run[-1] + 1:
            run.append(x)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [x]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def parse_variant(text: str, n_layers: int) -> tuple[str, list[int]]:
    if "=" not in text:
        raise ExperimentError(f"--variant {text!r}: expected NAME=RANGE, e.g. mine=10-20")
    name, spec = (x.strip() for x in text.split("=", 1))
    if not name or not all(c.isalnum() or c in "._-" for c in name):
        raise ExperimentError(f"--variant {text!r}: the name must be letters, digits, '.', '_' or '-'")
    return name, parse_layer_list(spec, n=n_layers, option=f"--variant {name}", error=ExperimentError)


def run_skip(base: str, out: Path, *, keep_last: int = 2, tau: float | None = None, lens: str | None = None,
             variants: tuple[str, ...] = (), derived: bool = True, model: str | None = None,
             dataset: list[str] | None = None, device: str | None = None, batch_size: int | None = None,
             min_tokens: int = 20, min_mutation_tokens: int = 5, echo: Callable[[str], None] = print) -> dict:
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = open_store(base)
    meta, n_layers = s.manifest, s.n_layers
    s.close()
    if (meta.get("capture") or {}).get("skip_layers"):
        raise ExperimentError(f"baseline {base} already skips layers {meta['capture']['skip_layers']}: "
                              "use a store of the whole model as the baseline")
    kevo = Kevo(out / "experiment.log", echo)
    d = kevo.defaults("critical-layer-distribution", {"tau": tau, "lens": lens})
    tau, lens = d["tau"], d["lens"]
    plan: dict[str, dict] = {}
    derivation = None
    if derived:
        echo(f"1/3 deriving the layer ranges from {base} (L = {n_layers}, tau = {tau}, lens = {lens})")
        derivation = derive_ranges(kevo, base, n_layers, out, tau=tau, lens=lens, min_tokens=min_tokens,
                                   min_mutation_tokens=min_mutation_tokens, echo=echo)
        for name, (layers, how) in variant_ranges(derivation, keep_last).items():
            plan[name] = {"layers": layers, "how": how}
        for name in ("critical_layer", "mutation_layers"):
            echo(f"-- the SQL that derived the {name.replace('_', ' ')} (also in {out}/derivation/{name}.sql):\n"
                 f"{derivation.sql[name]}")
    for v in variants:
        name, layers = parse_variant(v, n_layers)
        plan[name] = {"layers": layers, "how": "--variant"}
    if not plan:
        raise ExperimentError("no variants: drop --no-derive or give --variant NAME=RANGE")
    ds_args = dataset or dataset_args(meta, base)
    (out / "experiment.json").write_text(json.dumps({
        "experiment": "skip", "baseline": str(base), "n_layers": n_layers, "keep_last": keep_last, "tau": tau,
        "lens": lens, "derivation": derivation.as_dict() if derivation else None,
        "variants": {k: {**v, "skip_layers": layer_spec(v["layers"])} for k, v in plan.items()},
        "dataset_args": ds_args}, indent=2) + "\n", encoding="utf-8")

    echo(f"2/3 variants: {len(plan)} ingests into {out}/")
    runs = {}
    for name, v in plan.items():
        spec = layer_spec(v["layers"])
        if not v["layers"]:
            echo(f"  {name} {v['how']}: empty range, not run")
            runs[name] = None
            continue
        if len(v["layers"]) >= n_layers:
            raise ExperimentError(f"variant {name} {v['how']} would skip all {n_layers} decoder layers")
        echo(f"  {name} {v['how']}: --skip-layers {spec}")
        store = out / f"{name}.kevo"
        kevo("ingest", *ds_args, *settings_args(meta, n_layers - len(v["layers"]), model, device, batch_size),
             "--skip-layers", spec, "--out", store, stream=True)
        runs[name] = store

    echo("3/3 comparison with the baseline")
    base_side = StoreSide(base)
    rows = []
    base_m = None
    for name, v in plan.items():
        row = {"variant": name, "range": v["how"], "skip_layers": layer_spec(v["layers"]),
               "n_layers_skipped": len(v["layers"])}
        if runs[name] is None:
            row["note"] = "empty range: not run"
            rows.append(row)
            continue
        var = StoreSide(str(runs[name]))
        keys = [k for k in base_side.samples if k in var.samples]
        if base_m is None or base_m[0] != keys:
            base_m = (keys, metrics(base_side, keys))
        row.update(compare_sides(base_side, var, base_m[1]))
        rows.append(row)
    result = {"experiment": "skip", "baseline": str(base), "n_layers": n_layers, "keep_last": keep_last, "tau": tau,
              "lens": lens, "derivation": derivation.as_dict() if derivation else None, "variants": rows,
              "seconds": round(time.time() - t0, 1)}
    (out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    flat_rows = [flat(r) for r in rows]
    cols = list(dict.fromkeys(k for r in flat_rows for k in r))
    with (out / "comparison.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(flat_rows)
    import pyarrow as pa

    table = pa.Table.from_pylist([{c: (None if r.get(c) is None else str(r[c]) if not isinstance(r.get(c), (int, float))
                                       else float(r[c])) for c in cols} for r in flat_rows])
    params = {"experiment": "skip", "baseline": str(base), "tau": tau, "lens": lens, "keep_last": keep_last,
              "derivation_sql": derivation.sql if derivation else {}}
    for store in runs.values():
        if store is not None:
            write_derived_table(str(store), "comparison", table, params)
    first = next((st for st in runs.values() if st is not None), None)
    if first is not None:
        kevo("report", first, "-o", out / "report.html")
    echo(format_comparison(result))
    return result


def _f(v, fmt="{:.3g}") -> str:
    return "–" if v is None else fmt.format(v) if isinstance(v, float) else str(v)


METRICS = ("CHAIR", "Cover", "Hal", "Cog", "yes_no_accuracy", "yes_no_f1", "CHAIR_s", "CHAIR_i")


def format_comparison(result: dict, metrics: tuple[str, ...] = METRICS, words: bool = True) -> str:
    """The comparison table (``comparison.json``): a row per variant, the ``metrics`` it has with their
    deltas, and (``words``) the words that changed and the hallucinations gone and new."""
    lines = []
    d = result.get("derivation")
    if d:
        lines.append(f"derived: critical layer c = {d['critical_layer']}, mutation layers [m1, m2] = [{d['m1']}, "
                     f"{d['m2']}] ({d['mutation_tokens']} tokens), L = {d['n_layers']}")
    metrics_cols = [m for m in metrics if any(m in r for r in result["variants"])]
    head = f"{'variant':<10}{'skipped':<12}{'exact':>7}{'tokens':>8}{'1st div':>9}" + "".join(
        f"{m.replace('yes_no_', 'yn_'):>14}" for m in metrics_cols)
    lines.append(head)
    for r in result["variants"]:
        if "note" in r:
            lines.append(f"{r['variant']:<10}{r['skip_layers'] or '-':<12}  {r['note']}")
            continue
        cells = "".join(f"{_f(r.get(m), '{:.1f}') + ' (' + _f(r.get(m + '_delta'), '{:+.1f}') + ')':>14}"
                        for m in metrics_cols)
        lines.append(f"{r['variant']:<10}{r['skip_layers']:<12}{_f(r['exact_match_rate'], '{:.2f}'):>7}"
                     f"{_f(r['token_agreement'], '{:.2f}'):>8}{_f(r['first_divergence_mean'], '{:.1f}'):>9}" + cells)
        for key, label in (("words_changed", "words changed"), ("hallucinated_disappeared", "hallucinations gone"),
                           ("hallucinated_appeared", "hallucinations new")):
            if words and r.get(key):
                lines.append(f"    {label}: " + ", ".join(f"{x['word']} ({x['count']})" for x in r[key][:6]))
    return "\n".join(lines)
