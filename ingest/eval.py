"""``kevo eval amber|coco``: AMBER and CHAIR metrics on a store or on a plain response file.

Scores are recomputed from each sample's response and annotations (``samples.response``,
``samples.annotations``), so the same store can be re-scored with another noun extractor or a
similarity table. Stores are read only through :func:`kevo_store.open_store`.

AMBER modes (the output's ``settings.nouns`` and the table's first line say which one ran)
- ``--nouns auto`` (default): the official pipeline (``nltk``) when NLTK and its data are found, else
  ``offline`` with a warning on stderr stating its measured difference from the official pipeline.
- ``--nouns nltk``: the official pipeline, NLTK's ``word_tokenize`` + ``pos_tag`` + WordNet
  lemmatizer (``pip install 'kevo[amber]'``; data ``punkt_tab``, ``averaged_perceptron_tagger_eng``,
  ``wordnet`` under NLTK_DATA or NLTK's usual paths); an error naming the missing resource without
  them. With exact matching it gives the official evaluator's per-response counts on every
  response of a 1,004-response audit set (tests/test_labels_amber_audit.py).
- ``--nouns offline``: kevo's rule-based noun extraction (:mod:`ingest.labels.nouns`), no downloads;
  an approximation (measured differences: ingest/labels/README.md).
- similarity: exact match by default; ``--similarity TABLE.json`` (a table over the 418-word
  vocabulary, made once with ``kevo eval amber-similarity --spacy-model en_core_web_lg``) or
  ``--spacy-model`` for the official spaCy similarity rule.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import click

# --------------------------------------------------------------------------------------------
# AMBER


def _amber_scorer(data_dir, nouns: str, similarity_table, spacy_model, warn=None):
    from ingest.labels import amber as rules
    from ingest.labels.nouns import make_noun_extractor

    vocab = rules.AmberVocabulary.load(data_dir)
    try:
        extract = make_noun_extractor(nouns, vocab.vocabulary, warn=warn)
        if similarity_table:
            sim = rules.TableSimilarity(similarity_table)
        elif spacy_model:
            sim = rules.SpacySimilarity(spacy_model)
        else:
            sim = rules.exact_similarity
    except (RuntimeError, ValueError, OSError) as e:
        raise click.ClickException(str(e)) from e

    def score(record: dict, response: str) -> dict:
        if record.get("type") == "generative":
            return rules.score_generative(record, extract(response), vocab, sim).metrics()
        return rules.score_discriminative(record, response)

    settings = {"nouns": extract.name, "nouns_requested": nouns, "similarity": getattr(sim, "source", "exact"),
                "vocabulary": vocab.source}
    if extract.name == "nltk":
        settings["nltk"] = extract.version
    return score, settings


def evaluate_amber(pairs: Iterable[tuple[dict, str]], data_dir=None, nouns: str = "auto",
                   similarity_table=None, spacy_model=None, per_sample: list | None = None, warn=None) -> dict:
    """AMBER metrics over (annotation record, response) pairs: {'settings', 'generative', 'discriminative'}.

    ``per_sample``, if a list, receives ``{"id", **metrics}`` for every response (mentions and labels included).
    ``warn(msg)`` receives the offline-fallback warning of ``nouns='auto'`` (default: stderr).
    """
    from ingest.labels.amber import AmberTotals

    score, settings = _amber_scorer(data_dir, nouns, similarity_table, spacy_model, warn)
    totals = AmberTotals()
    n = 0
    for record, response in pairs:
        metrics = score(record, response if response is not None else "")
        totals.add(metrics)
        if per_sample is not None:
            per_sample.append({"id": record.get("id"), **metrics})
        n += 1
    return {"settings": settings, "n_responses": n, **totals.summary()}


def read_responses(path: Path) -> list[dict]:
    """AMBER's response format: a JSON list (or JSONL) of {"id": int, "response": str}."""
    from ingest.datasets.base import DatasetError, read_records

    data = []
    for rec in read_records(path, "--responses"):
        r = rec.value
        if not isinstance(r, dict) or not isinstance(r.get("id"), int) or not isinstance(r.get("response"), str):
            raise DatasetError(f"{path}, {rec.where}: expected {{\"id\": <int>, \"response\": <str>}}, got {r!r:.80}")
        data.append(r)
    return data


def amber_pairs_from_responses(responses: list[dict], data_dir: Path, path: Path):
    from ingest.datasets.amber import find_file, read_json
    from ingest.datasets.base import DatasetError

    ann_path = find_file(Path(data_dir), "annotations.json")
    anns = {r["id"]: r for r in read_json(ann_path) if isinstance(r, dict) and "id" in r}
    top = max(anns) if anns else 0
    out = []
    for i, r in enumerate(responses, 1):
        if r["id"] not in anns:
            raise DatasetError(f"{path}, record {i}: id {r['id']} is out of range: {ann_path.name} has ids 1..{top}")
        out.append((anns[r["id"]], r["response"]))
    return out


def amber_pairs_from_store(store: str):
    from kevo_store import open_store

    s = open_store(store)
    df = s.sql("SELECT item_id, response, annotations FROM samples WHERE dataset = 'amber' ORDER BY sample_id")
    return [(json.loads(a), r) for a, r in zip(df["annotations"].to_list(), df["response"].to_list())]


# --------------------------------------------------------------------------------------------
# COCO / CHAIR


def evaluate_coco_store(store: str) -> dict:
    """CHAIR_s, CHAIR_i, Recall over the COCO samples of a store."""
    from ingest.labels.chair import chair_totals, score_caption
    from kevo_store import open_store

    s = open_store(store)
    df = s.sql("SELECT response, annotations FROM samples WHERE dataset = 'coco' ORDER BY sample_id")
    per = [score_caption(r or "", json.loads(a).get("gt_objects", []))[1]
           for r, a in zip(df["response"].to_list(), df["annotations"].to_list())]
    return chair_totals(per)


def evaluate_coco_responses(path: Path, data_dir: Path) -> dict:
    """CHAIR on CHAIR's own caption format: a JSON list of {"image_id": int, "caption": str}."""
    from ingest.datasets.base import DatasetError, read_json
    from ingest.datasets.coco import annotation_files, load_ground_truth
    from ingest.labels.chair import chair_totals, ground_truth, score_caption

    caps = read_json(path)
    if not isinstance(caps, list):
        raise DatasetError(f"{path}: expected a JSON list of {{\"image_id\", \"caption\"}} records")
    pi, pc = annotation_files(Path(data_dir))
    images, inst, refs = load_ground_truth(read_json(pi), read_json(pc), pi, pc)
    per = []
    for i, r in enumerate(caps, 1):
        if not isinstance(r, dict) or not isinstance(r.get("image_id"), int) or not isinstance(r.get("caption"), str):
            raise DatasetError(f"{path}, record {i}: expected {{\"image_id\": <int>, \"caption\": <str>}}")
        if r["image_id"] not in images:
            raise DatasetError(f"{path}, record {i}: image_id {r['image_id']} is not in {pi.name}")
        gt = ground_truth(sorted(inst.get(r["image_id"], ())), refs.get(r["image_id"], ()))
        per.append(score_caption(r["caption"], gt)[1])
    return chair_totals(per)


# --------------------------------------------------------------------------------------------
# output


_PIPELINE = {"nltk": "the official NLTK pipeline", "offline": "kevo's offline approximation"}


def format_amber(result: dict) -> str:
    st = result["settings"]
    nouns = f"nouns={st['nouns']} ({_PIPELINE.get(st['nouns'], st['nouns'])}"
    nouns += f", NLTK {st['nltk']})" if st.get("nltk") else ")"
    lines = [f"AMBER  ({result['n_responses']} responses; {nouns}, similarity={st['similarity']})"]
    g = result.get("generative")
    if g:
        lines.append(f"Generative ({g['n']})")
        for k in ("CHAIR", "Cover", "Hal", "Cog"):
            lines.append(f"  {k:<8}{g[k]:>7.1f}")
    d = result.get("discriminative")
    if d:
        names = list(d["official"])
        lines.append("Discriminative (\"No\" is positive)   official (exact Yes/No) | normalised")
        lines.append(f"  {'':<10}{'n':>6}  {'Acc':>6}{'P':>7}{'R':>7}{'F1':>7} | {'Acc':>6}{'P':>7}{'R':>7}{'F1':>7}")
        for name in names:
            o, m = d["official"][name], d["normalised"][name]
            lines.append(f"  {name:<10}{o['n']:>6}  {o['accuracy']:>6.1f}{o['precision']:>7.1f}{o['recall']:>7.1f}"
                         f"{o['f1']:>7.1f} | {m['accuracy']:>6.1f}{m['precision']:>7.1f}{m['recall']:>7.1f}"
                         f"{m['f1']:>7.1f}")
    if not g and not d:
        lines.append("  (no AMBER samples)")
    return "\n".join(lines)


def format_chair(result: dict) -> str:
    c = result["counts"]
    return "\n".join([
        f"CHAIR on COCO ({result['n']} captions, {c['mentions']} object mentions)",
        f"  CHAIR_s {result['CHAIR_s']:>7.1f}",
        f"  CHAIR_i {result['CHAIR_i']:>7.1f}",
        f"  Recall  {result['Recall']:>7.1f}",
    ])


# --------------------------------------------------------------------------------------------
# commands


@click.group("eval")
def eval_() -> None:
    """Hallucination metrics: AMBER (CHAIR, Cover, Hal, Cog; Yes/No P/R/F1) and CHAIR on COCO."""


def _fail(e: Exception):
    raise click.ClickException(str(e)) from e


@eval_.command("amber")
@click.argument("store", required=False)
@click.option("--responses", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="A response file in AMBER's format: [{\"id\": …, \"response\": \"…\"}] (instead of STORE).")
@click.option("--data", type=click.Path(path_type=Path),
              help="AMBER directory (annotations.json, relation.json, safe_words.txt). Required with "
                   "--responses; for a store, overrides the packaged relation/safe words.")
@click.option("--nouns", type=click.Choice(["auto", "nltk", "offline"]), default="auto", show_default=True,
              help="Noun extraction: the official NLTK pipeline (nltk; auto = nltk when NLTK and its data "
                   "are found, else offline with a warning) or kevo's offline approximation.")
@click.option("--similarity", "similarity_table", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Precomputed similarity table over the vocabulary (JSON) for the official similarity rule.")
@click.option("--spacy-model", help="spaCy model name or path (e.g. en_core_web_lg) for the official similarity rule.")
@click.option("--per-sample", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write every response's metrics, mentions and labels to this JSONL file.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def amber_cmd(store, responses, data, nouns, similarity_table, spacy_model, per_sample, as_json) -> None:
    """AMBER metrics of STORE's amber samples, or of a --responses file."""
    from ingest.datasets.base import DatasetError
    from kevo_store.errors import KevoError

    if (store is None) == (responses is None):
        raise click.UsageError("give either STORE or --responses FILE (with --data DIR)")
    try:
        if responses is not None:
            if data is None:
                raise click.UsageError("--responses needs --data DIR (the AMBER directory with annotations.json)")
            pairs = amber_pairs_from_responses(read_responses(responses), data, responses)
        else:
            pairs = amber_pairs_from_store(store)
        rows: list | None = [] if per_sample else None
        result = evaluate_amber(pairs, data, nouns, similarity_table, spacy_model, per_sample=rows,
                                warn=lambda m: click.echo(m, err=True))
    except (DatasetError, KevoError) as e:
        _fail(e)
    if per_sample:
        with open(per_sample, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    click.echo(json.dumps(result, indent=2) if as_json else format_amber(result))


@eval_.command("coco")
@click.argument("store", required=False)
@click.option("--responses", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Captions in CHAIR's format: [{\"image_id\": …, \"caption\": \"…\"}] (instead of STORE).")
@click.option("--data", type=click.Path(path_type=Path, file_okay=False),
              help="COCO directory with instances_val2014.json and captions_val2014.json (with --responses).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def coco_cmd(store, responses, data, as_json) -> None:
    """CHAIR_s, CHAIR_i and Recall of STORE's coco samples, or of a --responses file."""
    from kevo_store.errors import KevoError

    if (store is None) == (responses is None):
        raise click.UsageError("give either STORE or --responses FILE (with --data DIR)")
    try:
        if responses is not None:
            if data is None:
                raise click.UsageError("--responses needs --data DIR (the COCO annotations)")
            result = evaluate_coco_responses(responses, data)
        else:
            result = evaluate_coco_store(store)
    except KevoError as e:
        _fail(e)
    click.echo(json.dumps(result, indent=2) if as_json else format_chair(result))


@eval_.command("amber-similarity")
@click.option("--spacy-model", required=True, help="spaCy model name or path (the official: en_core_web_lg).")
@click.option("--data", type=click.Path(path_type=Path), help="AMBER directory (default: the packaged vocabulary).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The JSON table to write.")
def amber_similarity_cmd(spacy_model, data, out) -> None:
    """Precompute spaCy similarities over AMBER's vocabulary (for --similarity)."""
    from ingest.labels.amber import AmberVocabulary, SpacySimilarity, build_similarity_table

    try:
        sim = SpacySimilarity(spacy_model)
    except (RuntimeError, OSError) as e:
        _fail(e)
    table = build_similarity_table(sim, AmberVocabulary.load(data).vocabulary)
    Path(out).write_text(json.dumps(table), encoding="utf-8")
    click.echo(f"wrote {out}: {len(table['words'])} x {len(table['words'])} similarities")
