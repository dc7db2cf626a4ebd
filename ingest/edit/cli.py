"""``kevo edit``: MultEdit (or a fine-tuning baseline) for a list of requests -> an edited model directory;
``kevo edit eval``: the edited and the original model compared on the requests, their paraphrases and
unrelated inputs."""

from __future__ import annotations

import json
from pathlib import Path

import click

from kevo_store.errors import KevoError


@click.group("edit", invoke_without_command=True)
@click.option("--model", "-m", help="The model to edit (local directory or cached hub id).")
@click.option("--requests", "requests_file", type=click.Path(path_type=Path),
              help="JSON/JSONL of {id, image, question, constraint, target[, paraphrases]}.")
@click.option("--images", type=click.Path(path_type=Path), default=None,
              help="Folder the requests' images are relative to (default: the request file's folder).")
@click.option("--out", "-o", type=click.Path(path_type=Path), help="The edited model directory to write (new).")
@click.option("--layer", type=int, default=None,
              help="MLP block to edit, 1..L (block l is decoder layer l-1). Default: from --from-trace, else 3.")
@click.option("--from-trace", "from_trace", default=None,
              help="A store with `kevo trace` results: edit the MLP block with the largest traced effect.")
@click.option("--method", type=click.Choice(["multedit", "ft", "ft-constrained"]), default="multedit",
              show_default=True, help="MultEdit's closed form, or a fine-tuning baseline of the same block.")
@click.option("--lambda", "lam", type=float, default=0.01, show_default=True, help="MultEdit: ridge weight.")
@click.option("--steps", type=int, default=None, help="Adam steps (default: 10 for multedit, 25 for ft).")
@click.option("--lr", type=float, default=None, help="Adam learning rate (default: 0.1 multedit, 5e-4 ft).")
@click.option("--decay", type=float, default=1e-3, show_default=True, help="MultEdit: decay weight on ||delta||.")
@click.option("--clamp", type=float, default=4.0, show_default=True, help="MultEdit: ||delta|| <= clamp * ||v0||.")
@click.option("--eps", type=float, default=5e-4, show_default=True,
              help="ft-constrained: bound on each weight's change.")
@click.option("--dtype", default="auto", show_default=True,
              type=click.Choice(["auto", "float32", "float16", "bfloat16"]))
@click.option("--device", default=None)
@click.pass_context
def edit(ctx, model, requests_file, images, out, layer, from_trace, method, lam, steps, lr, decay, clamp, eps,
         dtype, device):
    """Edit what a model answers: `kevo edit --model M --requests FILE --out DIR`."""
    if ctx.invoked_subcommand is not None:
        return
    missing = [n for n, v in (("--model", model), ("--requests", requests_file), ("--out", out)) if v is None]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (or use `kevo edit eval`)")
    from .finetune import FinetuneSettings, finetune
    from .model_dir import check_out_dir, write_model_dir
    from .multedit import EditSettings, describe, multedit
    from .requests import read_requests
    from .trace_layer import layer_from_trace

    check_out_dir(out)
    reqs = read_requests(requests_file, images)
    layer_source = "--layer"
    if layer is None and from_trace is not None:
        layer, layer_source = layer_from_trace(from_trace), f"--from-trace {from_trace}"
    elif layer is None:
        layer, layer_source = 3, "default (the released layers.2)"
    from ingest.models import load_adapter

    ad = load_adapter(model, dtype=dtype, device=device)
    if not 1 <= layer <= ad.n_layers:
        raise KevoError(f"--layer {layer}: {model} has MLP blocks 1..{ad.n_layers}")
    if method == "multedit":
        s = EditSettings(layer=layer, lam=lam, lr=0.1 if lr is None else lr, steps=10 if steps is None else steps,
                         decay=decay, clamp=clamp)
        record = describe(multedit(ad, reqs, s))
    else:
        fs = FinetuneSettings(layer=layer, lr=5e-4 if lr is None else lr, steps=25 if steps is None else steps,
                              eps=eps if method == "ft-constrained" else None)
        record = finetune(ad, reqs, fs)
    record.update({"source_model": str(model), "source_path": ad.path, "layer_source": layer_source,
                   "n_layers": ad.n_layers})
    write_model_dir(ad, out, record)
    click.echo(f"{method}: block {layer} ({record['module']}), {len(reqs)} request(s), "
               f"||dW|| = {record['weight_delta_norm']:.4g} (||W|| = {record['weight_norm']:.4g}) -> {out}")


@edit.command("eval")
@click.option("--original", required=True, help="The unedited model.")
@click.option("--edited", "edited_dirs", required=True, multiple=True,
              help="An edited model directory (repeat to compare several methods).")
@click.option("--requests", "requests_file", required=True, type=click.Path(path_type=Path))
@click.option("--images", type=click.Path(path_type=Path), default=None)
@click.option("--unrelated", type=click.Path(path_type=Path), default=None,
              help="VQA questions (JSON/JSONL, images under --unrelated-images) the edit should not change.")
@click.option("--unrelated-images", type=click.Path(path_type=Path), default=None)
@click.option("--captions", type=click.Path(path_type=Path), default=None,
              help="An AMBER-format folder: captions compared by CHAIR/Cover/Hal/Cog before and after.")
@click.option("--max-new-tokens", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--templated-paraphrases/--no-templated-paraphrases", "templated", default=True, show_default=True,
              help="Generalisation on a request without its own paraphrases: templated rewrites of its question.")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="Folder for the stores and comparison.json/.csv.")
def eval_cmd(original, edited_dirs, requests_file, images, unrelated, unrelated_images, captions, max_new_tokens,
             templated, out):
    """Efficacy, generalisation and specificity of edits, as store comparisons."""
    from .evaluate import evaluate

    table = evaluate(original, list(edited_dirs), requests_file, images=images, unrelated=unrelated,
                     unrelated_images=unrelated_images, captions=captions, out=out,
                     max_new_tokens=max_new_tokens, templated=templated, echo=lambda m: click.echo(m, err=True))
    click.echo(json.dumps(table, indent=2))


@edit.command("hallucinations")
@click.argument("store")
@click.option("--trigger", required=True, help="The object that brings the hallucination (e.g. car).")
@click.option("--partner", required=True, help="The hallucinated object (e.g. tree).")
@click.option("--images", required=True, type=click.Path(path_type=Path),
              help="The folder the store's samples.image_id are relative to (e.g. AMBER's image/).")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="The requests file (JSONL).")
def hallucinations_cmd(store, trigger, partner, images, out):
    """Edit requests that correct the captions of STORE which hallucinate PARTNER after TRIGGER."""
    from .hallucination import hallucination_requests

    reqs, counts = hallucination_requests(store, trigger, partner, images)
    if not reqs:
        raise KevoError(f"{store}: no caption hallucinates {partner!r} after {trigger!r} with a missed object "
                        f"to put in its place ({counts})")
    out.write_text("".join(json.dumps(r) + "\n" for r in reqs))
    click.echo(f"{counts['requests']} request(s) from {counts['hallucinated']} caption(s) hallucinating {partner!r} "
               f"(no {trigger!r} before it: {counts['no_trigger']}, nothing missed: {counts['nothing_left']}) -> {out}")
