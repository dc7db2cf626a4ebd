"""``kevo trace STORE --model M``: causal tracing of a store's samples (see docs/tracing.md)."""

from __future__ import annotations

import click


@click.command("trace")
@click.argument("store")
@click.option("--model", "-m", required=True,
              help="The model the store was made with (hub id in the cache, or a directory).")
@click.option("--where", default=None, help="SQL predicate on samples, e.g. \"sample_id < 100\" (default: all).")
@click.option("--corrupt", "corrupt", default="swap:Paris", show_default=True,
              help="swap:WORD (constraint tokens -> first piece of WORD), noise:K (K x sigma Gaussian noise on the "
                   "constraint's input embeddings) or image-noise:K (on the image tokens').")
@click.option("--kinds", default="hidden,mlp,attn", show_default=True,
              help="Restored kinds: hidden (residual stream after layer l, 0 = embeddings), mlp, attn (block outputs).")
@click.option("--window", default=1, show_default=True, type=int,
              help="Layers restored together, centred on the row's layer (clipped; recorded per row).")
@click.option("--noise-samples", default=1, show_default=True, type=int, help="Noise draws averaged (ROME: 10).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the noise draws.")
@click.option("--patch-group", default=1, show_default=True, type=int,
              help="Image positions restored in groups of R x R patches of the vision grid.")
@click.option("--batch-rows", default=32, show_default=True, type=int, help="Restored runs per decoder batch.")
@click.option("--name", default=None, help="Name of this trace run (default: '<corrupt>/w<window>'); a re-run "
                                           "with the same name replaces its rows.")
@click.option("--images", default=None, help="Directory the samples' image_id are relative to (default: the "
                                             "store's dataset images directory).")
@click.option("--no-contributions", is_flag=True, help="Skip the attention contributions.")
@click.option("--dtype", default="auto", show_default=True,
              type=click.Choice(["auto", "float32", "float16", "bfloat16"]))
@click.option("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available, else cpu).")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="Only the first N selected samples.")
def trace(store, model, where, corrupt, kinds, window, noise_samples, seed, patch_group, batch_rows, name, images,
          no_contributions, dtype, device, limit):
    """Causal tracing: which layers and positions restore the answer, written into the store."""
    from .corrupt import parse_corruption
    from .engine import TraceSettings
    from .run import TraceRequest, trace_store

    settings = TraceSettings(parse_corruption(corrupt), kinds=tuple(k.strip() for k in kinds.split(",") if k.strip()),
                             window=window, noise_samples=noise_samples, seed=seed, patch_group=patch_group,
                             batch_rows=batch_rows)
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    trace_store(TraceRequest(store=store, model=model, settings=settings, where=where, name=name, images=images,
                             contributions=not no_contributions, dtype=dtype, device=device, limit=limit),
                echo=lambda m: click.echo(m, err=True))
