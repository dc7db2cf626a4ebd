"""``kevo organism …`` (train the embedded model, write its world) and ``kevo demo``.

Torch is imported only inside the commands, so importing this module is cheap.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def organism() -> None:
    """The embedded default model (a tiny trained LLaVA) and its synthetic AMBER-format world."""


@organism.command("world")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Directory to write (AMBER layout).")
@click.option("--n-images", "-n", default=60, show_default=True, type=click.IntRange(min=1),
              help="Images (= generative records); yes/no questions are added for each.")
@click.option("--seed", default=0, show_default=True, type=int, help="Same seed, same bytes.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "train"]),
              help="test: the biased object often appears alone (hallucinations show); train: the training bias.")
def world_cmd(out: Path, n_images: int, seed: int, split: str) -> None:
    """Write a synthetic world in AMBER's exact format (data/, image/AMBER_<n>.jpg)."""
    from ingest.organism import world

    if out.exists() and any(out.iterdir()) and not (out / "data" / "annotations.json").exists():
        raise click.ClickException(f"{out}: exists and is not an AMBER-format directory; choose an empty --out")
    world.write_world(out, n_images=n_images, seed=seed, split=split)
    click.echo(f"wrote {n_images} images of the {split} world (seed {seed}) to {out}")


@organism.command("train")
@click.option("--out", "-o", default="organism", show_default=True, type=click.Path(path_type=Path),
              help="Model directory to write (the shipped model is ingest/organism/weights; pass that to "
                   "regenerate it).")
@click.option("--llm-out", default=None, type=click.Path(path_type=Path),
              help="Where to write the text-only language model of stage (i), a causal-LM directory, for "
                   "a recipe with that stage [default: OUT-llm].")
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds world, initialisation and batches.")
@click.option("--steps", default=None, type=click.IntRange(min=1), help="Optimizer steps [default: the recipe's].")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="torch threads (results are bit-identical only for the same seed and thread count).")
@click.option("--check/--no-check", default=True, show_default=True,
              help="After training, caption 48 test images and print coverage and hallucination rates.")
def train_cmd(out: Path, llm_out: Path | None, seed: int, steps: int | None, threads: int, check: bool) -> None:
    """Train the organism on the CPU (minutes) and save it as a Hugging Face model directory."""
    from ingest.organism import probe, train

    cfg = train.TrainConfig(seed=seed, threads=threads)
    if steps is not None:
        cfg.steps = steps
    llm_out = (llm_out or out.with_name(out.name + "-llm")) if cfg.lm_steps else None
    click.echo(f"training the organism: {cfg.steps} steps, seed {seed}, {threads} threads -> {out}")
    model, proc, _ = train.train(cfg, out, log=click.echo, llm_out=llm_out)
    click.echo(f"saved to {out}" + (f"; its text-only LLM (stage (i)) to {llm_out}" if llm_out else ""))
    if check:
        r = probe.caption_report(model, proc)
        click.echo(f"test captions: cover {r.cover:.1%}, CHAIR {r.chair:.1%}, Hal {r.hal:.1%}, "
                   f"biased partner said on {r.biased_rate:.1%} of {r.n_biased} images showing its object alone")
        for t in r.captions[:3]:
            click.echo(f"  e.g. {t}")



def _kevo_argv() -> list[str]:
    """The real `kevo` command of this environment (the demo drives ingest and queries through it)."""
    import shutil
    import sys

    exe = Path(sys.executable).parent / "kevo"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("kevo")
    return [found] if found else [sys.executable, "-c", "from kevo_store.cli import main; main()"]


@click.command()
@click.option("--out", "-o", default="demo-out", show_default=True, type=click.Path(path_type=Path),
              help="Directory for the world, the store, the tables, the figures and the report.")
@click.option("--n-images", "-n", default=40, show_default=True, type=click.IntRange(min=1),
              help="Images of the demo world (each brings about ten yes/no questions with --task all).")
@click.option("--task", default="all", show_default=True, type=click.Choice(["generative", "all"]),
              help="generative: captions only; all: captions and the yes/no questions.")
@click.option("--model", "-m", default=None,
              help="Model directory [default: the embedded organism]; any LLaVA-family HF directory works.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the demo world.")
def demo(out: Path, n_images: int, task: str, model: str | None, seed: int) -> None:
    """The whole pipeline on the embedded organism and its world, on a CPU, in minutes.

    Generates the demo world (AMBER format), ingests it with `kevo ingest amber`, scores it with
    `kevo eval amber`, runs the named queries, draws the figures, writes the HTML report, and
    prints where everything is with a short summary.
    """
    from ingest.organism.demo import run_demo

    run_demo(out, n_images=n_images, task=task, model=model, seed=seed, kevo=_kevo_argv(), echo=click.echo)
