"""``kevo ingest …``: run a model over a dataset and write everything the analyses need into a store.

Every dataset is one subcommand of the ``ingest`` group. They share one set of options (model,
store, capture and generation settings) through the :func:`ingest_options` decorator and one entry
point, :func:`run_ingest_command`, which builds an :class:`ingest.runner.IngestConfig` from those
options and hands the dataset to :func:`ingest.runner.run_ingest`. Adding a dataset is ten lines::

    @ingest.command("amber")
    @click.option("--data", type=click.Path(path_type=Path), required=True, help="AMBER root directory.")
    @ingest_options
    def amber_cmd(data, **options):
        \"\"\"AMBER generative task: describe each image.\"\"\"
        def make_dataset():
            from ingest.datasets import amber          # imported lazily: `kevo --help` stays fast
            return amber.dataset(data)                 # -> ingest.datasets.Dataset
        run_ingest_command(make_dataset, options)

``make_dataset`` may raise :class:`ingest.datasets.DatasetError` (a ``KevoError``); like every
``KevoError`` it becomes one ``kevo: error: …`` line and exit 1. Torch and transformers are imported
only inside the commands, so importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

LENS_CHOICES = ("final_norm", "raw")


def _split_lens(ctx, param, value: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in value.split(",") if m.strip())
    bad = [m for m in modes if m not in LENS_CHOICES]
    if not modes or bad:
        raise click.BadParameter(
            f"{value!r}: expected a comma-separated list of {', '.join(LENS_CHOICES)}", ctx=ctx, param=param
        )
    return tuple(dict.fromkeys(modes))


def ingest_options(f: Callable) -> Callable:
    """The options every ``kevo ingest <dataset>`` subcommand shares (see the module docstring)."""
    options = [
        click.option("--model", "-m", required=True,
                     help="Hugging Face hub id (found in the local cache, offline) or a local model directory."),
        click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
                     help="The store to write (created, or resumed if it exists)."),
        click.option("--revision", default=None, help="Model revision (branch, tag or commit) for a hub id."),
        click.option("--dtype", default="auto", show_default=True,
                     type=click.Choice(["auto", "float32", "float16", "bfloat16"]),
                     help="Weights dtype; auto = the checkpoint's own dtype."),
        click.option("--device", default=None,
                     help="cpu, cuda, cuda:1, mps … (default: cuda if available, else cpu; per rank LOCAL_RANK)."),
        click.option("--device-map", default=None,
                     help="Spread one model over several GPUs (e.g. 'auto'); exclusive with several ranks."),
        click.option("--batch-size", "-b", default=1, show_default=True, type=click.IntRange(min=1),
                     help="Samples generated together (left padding)."),
        click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(min=1),
                     help="Generation budget per sample (the paper uses 256)."),
        click.option("--lens", "lens_modes", default="final_norm", show_default=True, callback=_split_lens,
                     help="Logit-lens modes, comma-separated: final_norm (norm then head) and/or raw (head only)."),
        click.option("--top-k", default=10, show_default=True, type=click.IntRange(min=0),
                     help="Top-k tokens kept per (token, lens, layer); 0 keeps none."),
        click.option("--hidden", default="all", show_default=True,
                     help="Layers whose hidden states are stored: all, none, or a list like 0,8,16-32."),
        click.option("--hidden-dtype", default="auto", show_default=True,
                     type=click.Choice(["auto", "float16", "bfloat16"]),
                     help="Storage dtype of hidden states; auto = bfloat16 for a bfloat16 model, else float16."),
        click.option("--hidden-codec", default="none", show_default=True, type=click.Choice(["none", "zstd"]),
                     help="Compression of a new store's hidden-state shards (activations barely compress: "
                          "zstd saves about 8% for CPU time)."),
        click.option("--dola", is_flag=True, help="Also store the paper code's JS variant (layers.js_dola)."),
        click.option("--capture-prompt", is_flag=True,
                     help="Also capture prompt and image positions (role, patch grid position)."),
        click.option("--responses", default=None, type=click.Path(exists=True, dir_okay=False),
                     help="Teacher forcing: score these responses (JSON list or JSONL of {\"id\", \"response\"}, "
                          "as `kevo eval amber --responses` reads) instead of generating; items without one are "
                          "left out."),
        click.option("--skip-layers", default=None,
                     help="Decoder layers to remove for a skip experiment, e.g. 20-26,30 (0-based)."),
        click.option("--limit", default=None, type=click.IntRange(min=0),
                     help="Only the first N items of the dataset."),
        click.option("--dry-run", is_flag=True, help="Print the disk-budget estimate and exit; writes nothing."),
        click.option("--force", is_flag=True, help="Start even if the disk estimate exceeds the free space."),
        click.option("--retry-errors", is_flag=True,
                     help="Run again the samples recorded in the errors table (each error row leaves the table "
                          "in the commit that writes the sample anew)."),
        click.option("--resume/--no-resume", default=True, show_default=True,
                     help="Skip samples already committed to --out (a re-run continues a crashed one). "
                          "--no-resume refuses a store that already holds samples."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def run_ingest_command(make_dataset: Callable, options: dict) -> None:
    """Build the dataset, turn the shared options into an IngestConfig, and run the ingest.

    ``make_dataset()`` returns an :class:`ingest.datasets.Dataset`; ``options`` is the ``**kwargs``
    that :func:`ingest_options` added to the command.
    """
    # DatasetError, IngestError, ModelError and StoreError are KevoErrors: the root command prints
    # them as one "kevo: error: ..." line and exits 1
    from ingest.runner import IngestConfig, IngestError, run_ingest

    config = IngestConfig.from_options(**options)
    dataset = make_dataset()
    result = run_ingest(dataset, config, echo=lambda msg: click.echo(msg, err=True))
    if result is not None and result.failed_all:
        raise IngestError(
            f"every sample failed ({result.n_errors} errors); see: kevo sql {config.out} \"SELECT * FROM errors\""
        )


@click.group()
def ingest() -> None:
    """Run a model over a dataset into a store (hidden states + logit lens per generated token)."""


@ingest.command("folder")
@click.option("--images", required=True, type=click.Path(path_type=Path),
              help="Directory of images (searched recursively; sorted by path).")
@click.option("--prompt", required=True, help="The user prompt asked about every image.")
@ingest_options
def folder_cmd(images: Path, prompt: str, **options) -> None:
    """Every image in a folder with one prompt."""

    def make_dataset():
        from ingest.datasets import folder

        return folder.dataset(images, prompt)

    run_ingest_command(make_dataset, options)


@ingest.command("text")
@click.option("--prompts", required=True, type=click.Path(path_type=Path),
              help="Text file with one prompt per line, or JSONL (.jsonl) with {\"id\", \"prompt\"} records.")
@ingest_options
def text_cmd(prompts: Path, **options) -> None:
    """Text-only prompts (no image): the LLM side of the LVLM-vs-LLM comparison."""

    def make_dataset():
        from ingest.datasets import text

        return text.dataset(prompts)

    run_ingest_command(make_dataset, options)



# --- datasets with hallucination labels (ingest/datasets/amber.py, coco.py, vqa.py) ---------------


@ingest.command("amber")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="AMBER directory as published (annotations.json, relation.json, safe_words.txt, query/).")
@click.option("--task", default="generative", show_default=True,
              type=click.Choice(["generative", "discriminative", "existence", "attribute", "relation", "all"]),
              help="Which AMBER query file to run.")
@click.option("--ids", default=None, help="Only these AMBER ids, e.g. 1,2,10-20 (must belong to --task).")
@click.option("--prompt", default=None,
              help="Override AMBER's query (the paper used \"Please describe this image in detail.\").")
@click.option("--images", default=None, type=click.Path(path_type=Path),
              help="Directory of AMBER_<n>.jpg (default: DATA/image or DATA/images).")
@click.option("--nouns", default="auto", show_default=True, type=click.Choice(["auto", "nltk", "offline"]),
              help="Noun extraction for labels: the official NLTK pipeline (nltk; auto = nltk when NLTK and "
                   "its data are found, else offline with a warning) or kevo's offline approximation.")
@click.option("--similarity", default=None, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Similarity table over AMBER's vocabulary (kevo eval amber-similarity) for the official rule.")
@ingest_options
def amber_cmd(data: Path, task: str, ids: str | None, prompt: str | None, images: Path | None, nouns: str,
              similarity: Path | None, **options) -> None:
    """AMBER (generative and/or discriminative) with token-level hallucination labels."""

    def make_dataset():
        from ingest.datasets import amber

        return amber.dataset(data, task=task, ids=ids, prompt=prompt, images=images, nouns=nouns,
                             similarity=similarity, warn=lambda m: click.echo(m, err=True))

    run_ingest_command(make_dataset, options)


@ingest.command("coco")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="COCO directory: annotations/instances_val2014.json, captions_val2014.json, val2014/*.jpg.")
@click.option("--image-ids", default=None, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="File of image ids (one per line, or a JSON list); default: every image.")
@click.option("--prompt", default=None, help="Prompt (default: \"Please describe this image in detail.\").")
@ingest_options
def coco_cmd(data: Path, image_ids: Path | None, prompt: str | None, **options) -> None:
    """COCO 2014 val captions with CHAIR object labels."""

    def make_dataset():
        from ingest.datasets import coco

        return coco.dataset(data, image_ids=image_ids, prompt=prompt, limit=options.get("limit"))

    run_ingest_command(make_dataset, options)


@ingest.command("vqa")
@click.option("--questions", required=True, type=click.Path(path_type=Path),
              help="JSON list or JSONL of {\"image\", \"question\"[, \"answer\"][, \"id\"]}.")
@click.option("--images", required=True, type=click.Path(path_type=Path),
              help="Directory the image paths are relative to.")
@ingest_options
def vqa_cmd(questions: Path, images: Path, **options) -> None:
    """Single-word-answer VQA (the cross-image experiment); the answer token is marked in tokens.is_answer."""

    def make_dataset():
        from ingest.datasets import vqa

        return vqa.dataset(questions, images)

    run_ingest_command(make_dataset, options)


@ingest.command("vqa-constraints")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="VQA-Constraints as released: multimodal_known.csv, multimodal_movies.csv, okvqa.csv + images.")
@click.option("--answers", default=None, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Optional JSON object {\"<csv stem>:<index>\": \"answer\"} joined onto the rows.")
@ingest_options
def vqa_constraints_cmd(data: Path, answers: Path | None, **options) -> None:
    """VQA-Constraints (questions with a constraint, for `kevo trace`); malformed rows go to errors."""

    def make_dataset():
        from ingest.datasets import vqa_constraints

        return vqa_constraints.dataset(data, answers=answers, limit=options.get("limit"))

    run_ingest_command(make_dataset, options)


from ingest.eval import eval_  # noqa: E402,F401  (the `kevo eval` entry point: ingest.cli:eval_)
from ingest.organism.cli import demo, organism  # noqa: E402,F401  (entry points ingest.cli:organism, ingest.cli:demo)
