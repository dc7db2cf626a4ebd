"""A variant store against its baseline: token agreement, hallucination metrics and the words that changed.

Per variant (one row, see docs/experiments.md):

- ``exact_match_rate``: samples whose response text is identical to the baseline's, over the samples
  both stores have; ``token_agreement``: generated tokens equal at the same step, over the baseline's
  generated tokens of those samples;
- ``first_divergence_mean``/``_median``: the first step at which the token ids differ (a response
  that is a prefix of the other diverges at the shorter one's length), over the samples that diverge;
- the dataset's metrics (:mod:`ingest.eval`: AMBER's CHAIR, Cover, Hal, Cog and the yes/no
  accuracy, precision, recall, F1; CHAIR_s, CHAIR_i, Recall on COCO) and their deltas (variant -
  baseline);
- ``words_changed``: word substitutions between the two responses of a sample (``difflib`` on the
  lower-cased words), counted over samples, e.g. ``standing -> playing``;
- ``hallucinated_disappeared`` / ``hallucinated_appeared``: objects AMBER labels hallucinated in a
  sample's baseline response but not in its variant response, and the reverse.
"""

from __future__ import annotations

import difflib
import json
import re
import statistics
from collections import Counter
from pathlib import Path

from kevo_store import open_store

WORD = re.compile(r"[A-Za-z0-9']+")
TOKENS_SQL = ("SELECT s.sample_key, list(t.token_id ORDER BY t.step) AS ids FROM tokens t "
              "JOIN samples s ON s.sample_id = t.sample_id WHERE t.role = 'generated' GROUP BY s.sample_key")
SAMPLES_SQL = "SELECT sample_key, dataset, response, annotations FROM samples ORDER BY sample_id"


class StoreSide:
    """What the comparison reads from one store."""

    def __init__(self, path: str):
        s = open_store(str(path))
        self.path = str(path)
        self.meta = s.manifest
        df = s.sql(SAMPLES_SQL)
        self.samples = {k: {"dataset": d, "response": r or "", "annotations": a}
                        for k, d, r, a in df.iter_rows()}
        self.ids = {k: list(v) for k, v in s.sql(TOKENS_SQL).iter_rows()}
        self.n_layers = s.n_layers
        s.close()

    def data_dir(self) -> str | None:
        root = ((self.meta.get("dataset") or {}).get("fingerprint") or {}).get("root")
        return root if root and Path(root).is_dir() else None


def metrics(side: StoreSide, keys: list[str]) -> tuple[dict, dict[str, set[str]]]:
    """The dataset's metrics over the samples ``keys`` and, per sample, its hallucinated objects."""
    out: dict = {}
    halluc: dict[str, set[str]] = {k: set() for k in keys}
    amber = [k for k in keys if side.samples[k]["dataset"] == "amber"]
    if amber:
        from ingest.eval import evaluate_amber

        per: list = []
        pairs = [(json.loads(side.samples[k]["annotations"]), side.samples[k]["response"]) for k in amber]
        res = evaluate_amber(pairs, side.data_dir(), per_sample=per)
        for k, row in zip(amber, per):
            halluc[k] = {m["object"] for m in row.get("mentions", []) if m.get("label") == "hallucinated"}
        g = res.get("generative")
        if g:
            out.update({name: g[name] for name in ("CHAIR", "Cover", "Hal", "Cog")})
        d = res.get("discriminative")
        if d:
            allq = d["official"]["all"]
            out.update({"yes_no_n": allq["n"], "yes_no_accuracy": allq["accuracy"],
                        "yes_no_precision": allq["precision"], "yes_no_recall": allq["recall"],
                        "yes_no_f1": allq["f1"]})
    coco = [k for k in keys if side.samples[k]["dataset"] == "coco"]
    if coco:
        from ingest.labels.chair import chair_totals, score_caption

        per = []
        for k in coco:
            found, score = score_caption(side.samples[k]["response"],
                                         json.loads(side.samples[k]["annotations"]).get("gt_objects", []))
            per.append(score)
        r = chair_totals(per)
        out.update({"CHAIR_s": r["CHAIR_s"], "CHAIR_i": r["CHAIR_i"], "Recall": r["Recall"]})
    return out, halluc


def _words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def word_changes(a: str, b: str) -> list[tuple[str, str]]:
    """Substituted word runs between two responses: [('standing', 'playing'), ...]."""
    wa, wb = _words(a), _words(b)
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=wa, b=wb, autojunk=False).get_opcodes():
        if op == "replace":
            out.append((" ".join(wa[i1:i2]), " ".join(wb[j1:j2])))
    return out


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """The first step where two token sequences differ; None if identical."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _top(counter: Counter, n: int = 12) -> list[dict]:
    return [{"word": w, "count": c} for w, c in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def compare_sides(base: StoreSide, var: StoreSide, base_metrics: tuple | None = None) -> dict:
    keys = [k for k in base.samples if k in var.samples]
    n_same = sum(base.samples[k]["response"] == var.samples[k]["response"] for k in keys)
    n_tok = sum(len(base.ids.get(k, [])) for k in keys)
    n_tok_same = sum(sum(x == y for x, y in zip(base.ids.get(k, []), var.ids.get(k, []))) for k in keys)
    div = [d for d in (first_divergence(base.ids.get(k, []), var.ids.get(k, [])) for k in keys) if d is not None]
    changes: Counter = Counter()
    for k in keys:
        changes.update(f"{x} -> {y}" for x, y in word_changes(base.samples[k]["response"], var.samples[k]["response"]))
    mb, hb = base_metrics or metrics(base, keys)
    mv, hv = metrics(var, keys)
    gone, new = Counter(), Counter()
    for k in keys:
        gone.update(hb.get(k, set()) - hv.get(k, set()))
        new.update(hv.get(k, set()) - hb.get(k, set()))
    row = {
        "n_samples": len(keys),
        "exact_match_rate": n_same / len(keys) if keys else None,
        "token_agreement": n_tok_same / n_tok if n_tok else None,
        "n_diverged": len(div),
        "first_divergence_mean": statistics.fmean(div) if div else None,
        "first_divergence_median": statistics.median(div) if div else None,
    }
    for name, v in mv.items():
        row[name] = v
        row[f"{name}_baseline"] = mb.get(name)
        row[f"{name}_delta"] = None if mb.get(name) is None else round(v - mb[name], 4)
    row["words_changed"] = _top(changes)
    row["hallucinated_disappeared"] = _top(gone)
    row["hallucinated_appeared"] = _top(new)
    return row


FLAT_LISTS = ("words_changed", "hallucinated_disappeared", "hallucinated_appeared")


def flat(row: dict) -> dict:
    """A CSV-friendly row: word lists as 'a -> b (3); c -> d (1)'."""
    out = {}
    for k, v in row.items():
        if k in FLAT_LISTS:
            out[k] = "; ".join(f"{x['word']} ({x['count']})" for x in v)
        elif isinstance(v, (list, dict)):
            out[k] = json.dumps(v)
        else:
            out[k] = v
    return out
