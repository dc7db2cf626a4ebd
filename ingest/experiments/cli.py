"""``kevo experiment skip|llm``: experiments as commands (ingest/experiments/)."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("experiment")
def experiment() -> None:
    """Experiments as commands: the skip experiments, an LVLM against its LLM on the same tokens."""


@experiment.command("skip")
@click.argument("base")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Directory for the variant stores, the comparison and the report.")
@click.option("--keep-last", default=2, show_default=True, type=click.IntRange(min=0),
              help="skip.3 skips [c, L - k): k = the last layers kept.")
@click.option("--tau", default=None, type=float,
              help="Top-1 probability that defines the critical layer [default: the named queries' tau].")
@click.option("--lens", default=None, type=click.Choice(["final_norm", "raw"]),
              help="Logit-lens mode [default: the named queries' lens].")
@click.option("--variant", "variants", multiple=True, metavar="NAME=RANGE",
              help="An explicit variant, e.g. mid=10-20 (decoder layers, 0-based; repeatable).")
@click.option("--derive/--no-derive", default=True, show_default=True,
              help="Derive skip.1-3 from the baseline (--no-derive: only the --variant ranges).")
@click.option("--model", "-m", default=None, help="Model to run the variants with [default: the baseline's].")
@click.option("--dataset-args", default=None,
              help="The dataset part of the ingest command, e.g. \"amber --data ~/AMBER\" [default: from the "
                   "baseline's manifest].")
@click.option("--device", default=None, help="Device for the variant ingests.")
@click.option("--batch-size", "-b", default=None, type=click.IntRange(min=1),
              help="Batch size of the variant ingests [default: the baseline's].")
@click.option("--min-tokens", default=20, show_default=True, type=click.IntRange(min=1),
              help="Generated tokens with a critical layer needed to derive c.")
@click.option("--min-mutation-tokens", default=5, show_default=True, type=click.IntRange(min=1),
              help="Tokens with a mutation event needed to derive [m1, m2] (object tokens, else all).")
def skip_cmd(base, out, keep_last, tau, lens, variants, derive, model, dataset_args, device, batch_size,
             min_tokens, min_mutation_tokens) -> None:
    """The paper's skip experiments on BASE: ranges derived from its own data, one ingest per variant,
    and a comparison (token agreement, CHAIR/Cover/Hal/Cog, yes/no, the words that changed)."""
    from .rebuild import split_args
    from .skip import run_skip

    run_skip(base, out, keep_last=keep_last, tau=tau, lens=lens, variants=variants, derived=derive, model=model,
             dataset=split_args(dataset_args), device=device, batch_size=batch_size, min_tokens=min_tokens,
             min_mutation_tokens=min_mutation_tokens, echo=click.echo)


@experiment.command("llm")
@click.argument("lvlm")
@click.option("--llm", "llm", required=True, help="The text-only LLM (hub id in the local cache or a directory).")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="The LLM store to write; tables and figure go to <out>.comparison/.")
@click.option("--tau", default=None, type=float,
              help="Top-1 probability of the critical layer [default: the named queries' tau].")
@click.option("--lens", default=None, type=click.Choice(["final_norm", "raw"]),
              help="Logit-lens mode [default: the named queries' lens].")
@click.option("--device", default=None, help="Device for the LLM.")
@click.option("--batch-size", "-b", default=None, type=click.IntRange(min=1),
              help="Batch size [default: the LVLM store's].")
def llm_cmd(lvlm, llm, out, tau, lens, device, batch_size) -> None:
    """LVLM's own responses teacher-forced into its LLM (text only), compared token by token:
    critical layers, mutation events, js_prev curves, distributions side by side."""
    from .llm import run_llm

    run_llm(lvlm, llm, out, tau=tau, lens=lens, device=device, batch_size=batch_size, echo=click.echo)
