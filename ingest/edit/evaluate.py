"""``kevo edit eval``: how well edits worked, and what else they changed, measured as the paper does.

- efficacy: on the edit requests themselves, the target answer's first-token probability and rank at
  the answer position, before (original model) and after (each edited model);
- generalisation: the same on each request's paraphrases (its own, or templated rewrites of its
  question: :mod:`ingest.edit.paraphrase`), also per kind of rewrite;
- specificity: unrelated inputs ingested by both models into ordinary stores (``kevo ingest vqa`` for
  unrelated questions, ``kevo ingest amber`` for a caption set) and compared: the share of responses
  that stayed exactly the same, and CHAIR / Cover / Hal / Cog of the captions before and after.

Everything lands in ``OUT/comparison.json`` and ``OUT/comparison.csv`` (one row per model and
measure), beside the stores it was computed from.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

from ingest.models import load_adapter

from .locate import continue_text
from .multedit import answer_probability, load_image, target_token
from .paraphrase import templated_paraphrases
from .requests import EditRequest, read_requests


def paraphrases_of(r: EditRequest, templated: bool = True) -> list[tuple[str, str]]:
    """``(rewrite, question)`` of a request's paraphrases: its own (``"given"``) if it lists any, else
    (with ``templated``) the templated rewrites of :mod:`ingest.edit.paraphrase`."""
    if r.paraphrases:
        return [("given", q) for q in r.paraphrases]
    return templated_paraphrases(r.question, r.constraint, r.constraint_in) if templated else []


def _answer_scores(ad, reqs: list[EditRequest], paraphrases: bool, templated: bool = True) -> list[dict]:
    rows = []
    for r in reqs:
        questions = paraphrases_of(r, templated) if paraphrases else [("request", r.question)]
        image = load_image(r.image)
        for rewrite, q in questions:
            text = ad.build_prompt(q, image is not None)
            text = continue_text(text, r.prefix) if r.prefix else text
            tid = target_token(ad, text, r.target)
            p, rank = answer_probability(ad, text, image, tid)
            rows.append({"id": r.id, "question": q, "rewrite": rewrite, "target": r.target, "p_target": p,
                         "rank_target": rank})
    return rows


def _summary(rows: list[dict]) -> dict:
    if not rows:
        return {"n": 0}
    n = len(rows)
    return {"n": n, "mean_p_target": sum(r["p_target"] for r in rows) / n,
            "top1_rate": sum(r["rank_target"] == 1 for r in rows) / n,
            "mean_rank_target": sum(r["rank_target"] for r in rows) / n}


def _ingest(dataset, model: str, out: Path, max_new_tokens: int, echo) -> Path:
    from ingest.runner import IngestConfig, run_ingest

    run_ingest(dataset, IngestConfig(model=model, out=str(out), max_new_tokens=max_new_tokens, hidden="none",
                                     top_k=1, progress=False), echo=echo)
    return out


def _responses(store: Path) -> dict[str, str]:
    from kevo_store import open_store

    df = open_store(str(store)).sql("SELECT sample_key, response FROM samples ORDER BY sample_id")
    return dict(zip(df["sample_key"].to_list(), df["response"].to_list()))


def _unchanged(base: dict[str, str], other: dict[str, str]) -> dict:
    keys = sorted(base.keys() & other.keys())
    same = sum(base[k] == other[k] for k in keys)
    return {"n": len(keys), "unchanged_rate": same / len(keys) if keys else None,
            "changed": [{"key": k, "before": base[k], "after": other[k]} for k in keys if base[k] != other[k]]}


def evaluate(original: str, edited: list[str], requests_file: Path, *, images=None, unrelated=None,
             unrelated_images=None, captions=None, out: Path, max_new_tokens: int = 32,
             templated: bool = True, echo: Callable[[str], None] = print) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    reqs = read_requests(requests_file, images)
    models = {"original": original, **{Path(e).name: e for e in edited}}
    result: dict = {"requests": str(requests_file), "models": models, "efficacy": {}, "generalisation": {},
                    "generalisation_by_rewrite": {}, "specificity": {}, "captions": {}, "per_request": {}}
    for name, path in models.items():
        echo(f"scoring the requests with {name} ({path})")
        ad = load_adapter(path, dtype="float32")
        eff = _answer_scores(ad, reqs, paraphrases=False)
        gen = _answer_scores(ad, reqs, paraphrases=True, templated=templated)
        result["efficacy"][name] = _summary(eff)
        result["generalisation"][name] = _summary(gen)
        result["generalisation_by_rewrite"][name] = {
            k: _summary([g for g in gen if g["rewrite"] == k]) for k in sorted({g["rewrite"] for g in gen})}
        result["per_request"][name] = eff + [dict(r, paraphrase=True) for r in gen]
        del ad
    stores: dict[str, dict[str, Path]] = {}
    if unrelated is not None:
        from ingest.datasets import vqa

        for name, path in models.items():
            echo(f"unrelated questions through {name}")
            ds = vqa.dataset(unrelated, unrelated_images or Path(unrelated).parent)
            stores.setdefault(name, {})["unrelated"] = _ingest(ds, path, out / f"{name}-unrelated.kevo",
                                                               max_new_tokens, echo)
        base = _responses(stores["original"]["unrelated"])
        for name in models:
            if name != "original":
                result["specificity"][name] = _unchanged(base, _responses(stores[name]["unrelated"]))
    if captions is not None:
        from ingest.datasets import amber
        from ingest.eval import amber_pairs_from_store, evaluate_amber

        for name, path in models.items():
            echo(f"captions through {name}")
            store = _ingest(amber.dataset(captions), path, out / f"{name}-captions.kevo", max_new_tokens, echo)
            stores.setdefault(name, {})["captions"] = store
            gen = evaluate_amber(amber_pairs_from_store(str(store)), data_dir=captions)["generative"]
            result["captions"][name] = {k: gen[k] for k in ("CHAIR", "Cover", "Hal", "Cog") if k in gen}
        base = _responses(stores["original"]["captions"])
        for name in models:
            if name != "original":
                result["captions"][name]["unchanged"] = _unchanged(base, _responses(stores[name]["captions"]))
    result["stores"] = {n: {k: str(v) for k, v in d.items()} for n, d in stores.items()}
    (out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    _write_csv(result, out / "comparison.csv")
    return {k: result[k] for k in ("efficacy", "generalisation", "generalisation_by_rewrite", "specificity",
                                   "captions")}


def _write_csv(result: dict, path: Path) -> None:
    rows = []
    scores = ("n", "mean_p_target", "top1_rate", "mean_rank_target")
    for measure in ("efficacy", "generalisation"):
        for model, s in result[measure].items():
            rows.append({"model": model, "measure": measure, **{k: s.get(k) for k in scores}})
    for model, by in result["generalisation_by_rewrite"].items():
        for rewrite, s in by.items():
            rows.append({"model": model, "measure": f"generalisation:{rewrite}", **{k: s.get(k) for k in scores}})
    for model, s in result["specificity"].items():
        rows.append({"model": model, "measure": "specificity", "n": s["n"], "unchanged_rate": s["unchanged_rate"]})
    for model, s in result["captions"].items():
        rows.append({"model": model, "measure": "captions", **{k: s.get(k) for k in ("CHAIR", "Cover", "Hal", "Cog")},
                     "unchanged_rate": (s.get("unchanged") or {}).get("unchanged_rate")})
    cols = ["model", "measure", "n", "mean_p_target", "top1_rate", "mean_rank_target", "unchanged_rate",
            "CHAIR", "Cover", "Hal", "Cog"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c) for c in cols})
