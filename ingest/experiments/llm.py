"""`kevo experiment llm LVLM.kevo --llm M --out LLM.kevo`: an LVLM against its LLM on the same tokens.

1. The LVLM store's own responses are teacher-forced into the text-only LLM ``M`` (``kevo ingest text
   --responses``): the same user prompt without the image, in the LLM family's template.
2. The same text, token by token (named query ``align-tokens``): every LVLM token is paired with the
   LLM token that holds its first character. With the same vocabulary the spans coincide ('same');
   with another vocabulary the pairing is by characters ('chars'), and the output says so.
3. Per aligned token (the same query): the paper's critical layer and the mutation events (the
   named queries' definitions) in both models, and js_prev at every layer; store-wide, the critical-layer
   distributions side by side (``critical-layer-distribution``). Written to ``<out>.comparison/``
   (comparison.json, .csv, tokens.csv, distributions.csv, js_prev.csv, comparison.png) and into
   the LLM store as derived tables (``comparison``, ``comparison_distribution``,
   ``comparison_js_prev``) that ``kevo report LLM.kevo`` shows.

The paper's claim tested: the LLM alone shows "no clear evidence of hierarchy or mutations".
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from kevo_store import open_store, write_derived_tables

from .command import ExperimentError, Kevo
from .rebuild import settings_args

SAMPLES_SQL = ("SELECT sample_key, prompt, response FROM samples "
               "WHERE response IS NOT NULL AND length(trim(response)) > 0 ORDER BY sample_id")
VOCAB_SQL = "SELECT vocab_id, piece FROM vocab ORDER BY vocab_id"
JS_SQL = ("SELECT token_uid, layer, js_prev FROM layers WHERE lens = '{lens}' AND layer > 0 "
          "AND token_uid IN (SELECT token_uid FROM tokens WHERE role = 'generated')")


def artifacts_dir(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.name.removesuffix(".kevo") + ".comparison")


def _vocab(path: str) -> list[tuple[int, str]]:
    s = open_store(path)
    v = [(int(i), p) for i, p in s.sql(VOCAB_SQL).iter_rows()]
    s.close()
    return v


def _distribution(kevo: Kevo, store: str, tau: float, lens: str, path: Path) -> dict:
    kevo("query", "critical-layer-distribution", store, "-p", f"tau={tau}", "-p", f"lens={lens}",
         "--format", "json", "-o", path)
    return {r["layer"]: r["frac_critical"] for r in json.loads(path.read_text())["rows"]}


def _js_curves(store: str, lens: str, uids: set[int]) -> dict[int, float]:
    s = open_store(store)
    df = s.sql(JS_SQL.format(lens=lens))
    s.close()
    acc: dict[int, list[float]] = defaultdict(list)
    for uid, layer, js in df.iter_rows():
        if uid in uids and js is not None:
            acc[int(layer)].append(float(js))
    return {layer: statistics.fmean(v) for layer, v in sorted(acc.items())}


def _median(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None


def _share(v):
    return sum(v) / len(v) if v else None


def summarise(tokens: list[dict]) -> list[dict]:
    """Rows (quantity, token class, lvlm, llm) over the aligned tokens."""
    rows = []
    classes = [("all", tokens)] + [(f"object: {lab}", [t for t in tokens if t["label"] == lab])
                                   for lab in ("hallucinated", "correct", "safe")]
    for name, ts in classes:
        if not ts:
            continue
        pairs = [
            ("critical layer reached (share)", _share([t["critical_layer_a"] is not None for t in ts]),
             _share([t["critical_layer_b"] is not None for t in ts])),
            ("critical layer (median)", _median([t["critical_layer_a"] for t in ts]),
             _median([t["critical_layer_b"] for t in ts])),
            ("critical layer / L (median)",
             _median([t["critical_layer_a"] / t["n_layers_a"] for t in ts if t["critical_layer_a"] is not None]),
             _median([t["critical_layer_b"] / t["n_layers_b"] for t in ts if t["critical_layer_b"] is not None])),
            ("tokens with a mutation event (share)", _share([t["n_events_a"] > 0 for t in ts]),
             _share([t["n_events_b"] > 0 for t in ts])),
            ("mutation events per token", statistics.fmean(t["n_events_a"] for t in ts),
             statistics.fmean(t["n_events_b"] for t in ts)),
        ]
        rows += [{"quantity": q, "tokens": name, "n": len(ts), "lvlm": fa, "llm": fb} for q, fa, fb in pairs]
    return rows


def run_llm(lvlm: str, llm: str, out: Path, *, tau: float | None = None, lens: str | None = None,
            device: str | None = None,
            batch_size: int | None = None, echo: Callable[[str], None] = print) -> dict:
    t0 = time.time()
    out = Path(out)
    art = artifacts_dir(out)
    art.mkdir(parents=True, exist_ok=True)
    kevo = Kevo(art / "experiment.log", echo)
    d = kevo.defaults("critical-layer-distribution", {"tau": tau, "lens": lens})
    tau, lens = d["tau"], d["lens"]
    s = open_store(lvlm)
    meta = s.manifest
    samples = list(s.sql(SAMPLES_SQL).iter_rows())
    s.close()
    if not samples:
        raise ExperimentError(f"{lvlm} has no samples with a response to force into the LLM")
    prompts, responses = art / "prompts.jsonl", art / "responses.json"
    with prompts.open("w", encoding="utf-8") as f:
        for key, prompt, _ in samples:
            f.write(json.dumps({"id": key, "prompt": prompt}) + "\n")
    responses.write_text(json.dumps([{"id": key, "response": r} for key, _, r in samples]), encoding="utf-8")

    echo(f"1/3 teacher forcing {len(samples)} responses of {lvlm} into {llm} (text only, the LLM's template)")
    settings = [a for a in settings_args(meta, None, llm, device, batch_size)]
    i = settings.index("--hidden")
    del settings[i:i + 2]  # the LLM's own depth: all its layers (the baseline's list may not fit)
    settings += ["--hidden", "all" if (meta.get("capture") or {}).get("hidden_layers") else "none"]
    settings = [a for a in settings if a != "--capture-prompt"]
    if "--responses" in settings:
        j = settings.index("--responses")
        del settings[j:j + 2]
    # room for the whole response in the LLM's tokens (another vocabulary may need more: up to 4 byte
    # tokens per character), so that no forced response is cut
    j = settings.index("--max-new-tokens")
    settings[j + 1] = str(max(int(settings[j + 1]), 4 * max(len(r) for _, _, r in samples) + 8))
    kevo("ingest", "text", "--prompts", prompts, "--responses", responses, *settings, "--out", out, stream=True)

    echo("2/3 the same text token by token")
    va, vb = _vocab(lvlm), _vocab(str(out))
    same_vocab = va == vb
    alignment_note = ("same vocabulary: every token pairs with the identical token" if same_vocab else
                      f"the vocabularies differ ({len(va)} vs {len(vb)} entries): tokens are aligned by characters, "
                      "each LVLM token paired with the LLM token that holds its first character")
    echo(f"  {alignment_note}")
    kevo("query", "align-tokens", lvlm, str(out), "-p", f"tau={tau}", "-p", f"lens={lens}", "--format", "json",
         "-o", art / "align-tokens.json")
    aligned = json.loads((art / "align-tokens.json").read_text())["rows"]
    if not aligned:
        raise ExperimentError(f"no tokens of {lvlm} align with {out}: did every response fail in the LLM? "
                              f"see: kevo sql {out} \"SELECT * FROM errors\"")
    n_same = sum(t["alignment"] == "same" for t in aligned)

    echo("3/3 distributions side by side")
    da = _distribution(kevo, lvlm, tau, lens, art / "critical-layer-distribution-lvlm.json")
    db = _distribution(kevo, str(out), tau, lens, art / "critical-layer-distribution-llm.json")
    layers = sorted({k for k in (*da, *db) if k is not None})
    dist = [{"layer": layer, "lvlm": da.get(layer, 0.0), "llm": db.get(layer, 0.0)} for layer in layers]
    dist.append({"layer": None, "lvlm": da.get(None, 0.0), "llm": db.get(None, 0.0)})
    ja = _js_curves(lvlm, lens, {t["uid_a"] for t in aligned})
    jb = _js_curves(str(out), lens, {t["uid_b"] for t in aligned})
    js = [{"layer": layer, "lvlm": ja.get(layer), "llm": jb.get(layer)} for layer in sorted({*ja, *jb})]
    summary = summarise(aligned)
    s_llm = open_store(str(out))
    n_llm_samples, n_err = s_llm.rows("samples"), s_llm.rows("errors")
    s_llm.close()
    result = {
        "experiment": "llm", "lvlm": str(lvlm), "llm": llm, "store": str(out), "tau": tau, "lens": lens,
        "n_responses": len(samples), "n_scored": n_llm_samples, "n_failed": n_err,
        "same_vocabulary": same_vocab, "alignment": alignment_note,
        "n_aligned_tokens": len(aligned), "n_same_span": n_same, "summary": summary,
        "critical_layer_distribution": dist, "js_prev_mean": js, "seconds": round(time.time() - t0, 1),
    }
    (art / "comparison.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    _csv(art / "comparison.csv", summary)
    _csv(art / "tokens.csv", aligned)
    _csv(art / "distributions.csv", dist)
    _csv(art / "js_prev.csv", js)
    _figure(art / "comparison.png", dist, js, result)
    import pyarrow as pa

    params = {"experiment": "llm", "lvlm": str(lvlm), "llm": llm, "tau": tau, "lens": lens,
              "alignment": alignment_note, "same_vocabulary": same_vocab}
    rows = [{k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v) for k, v in r.items()}
            for r in summary]
    write_derived_tables(str(out), {  # one commit: the three tables of a comparison appear together or not at all
        "comparison": (pa.Table.from_pylist(rows), params),
        "comparison_distribution": (pa.Table.from_pylist(dist), params),
        "comparison_js_prev": (pa.Table.from_pylist(js), params)})
    echo(format_llm(result, art))
    return result


def _csv(path: Path, rows: list[dict]) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def _figure(path: Path, dist: list[dict], js: list[dict], result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    xs = [d["layer"] for d in dist if d["layer"] is not None]
    w = 0.4
    a1.bar([x - w / 2 for x in xs], [d["lvlm"] for d in dist if d["layer"] is not None], w, label="LVLM")
    a1.bar([x + w / 2 for x in xs], [d["llm"] for d in dist if d["layer"] is not None], w, label="LLM (same text)")
    a1.set_xlabel("critical layer (top-1 p >= tau)")
    a1.set_ylabel("share of generated tokens")
    a1.legend(fontsize=8)
    a2.plot([j["layer"] for j in js], [j["lvlm"] for j in js], marker="o", label="LVLM")
    a2.plot([j["layer"] for j in js], [j["llm"] for j in js], marker="s", label="LLM (same text)")
    a2.set_xlabel("layer")
    a2.set_ylabel("mean js_prev (nats), aligned tokens")
    a2.legend(fontsize=8)
    fig.suptitle(f"{Path(result['lvlm']).name} vs {Path(result['llm']).name}: "
                 f"{result['n_aligned_tokens']} aligned tokens"
                 + ("" if result["same_vocabulary"] else " (aligned by characters)"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _f(v) -> str:
    return "–" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def format_llm(result: dict, art: Path) -> str:
    lines = [f"{result['n_scored']} of {result['n_responses']} responses scored in the LLM "
             f"({result['n_failed']} failed); {result['n_aligned_tokens']} tokens aligned, "
             f"{result['n_same_span']} with the same span. {result['alignment']}.",
             f"{'quantity':<40}{'tokens':<22}{'n':>6}{'LVLM':>9}{'LLM':>9}"]
    for r in result["summary"]:
        lines.append(f"{r['quantity']:<40}{r['tokens']:<22}{r['n']:>6}{_f(r['lvlm']):>9}{_f(r['llm']):>9}")
    lines.append("critical-layer distribution (share of generated tokens): layer  LVLM  LLM")
    for d in result["critical_layer_distribution"]:
        lines.append(f"  {'never' if d['layer'] is None else d['layer']:>5}  {d['lvlm']:.2f}  {d['llm']:.2f}")
    lines.append(f"tables and figure: {art}/ (comparison.json, tokens.csv, comparison.png); "
                 f"kevo report {result['store']}")
    return "\n".join(lines)
