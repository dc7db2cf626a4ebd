"""Figures of causal tracing (tables written by ``kevo trace``; docs/tracing.md).

- trace: p(answer) with the clean state restored, tokens x layers, one panel per kind (ROME's
  heatmaps: Purples = hidden, Greens = MLP, Reds = attention; corrupted tokens starred). For one
  sample (``--sample``), or the dataset average by ROME's token groups (from ``trace-effects``).
- attention-patches: the attention contributions of the image tokens to the last constraint token on
  the vision grid, summed over a range of layers, for one sample or averaged over samples.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from kevo_store.errors import KevoError

from .engine import as_store, run

CMAPS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
TITLES = {"hidden": "residual stream (hidden)", "mlp": "MLP output", "attn": "attention output"}
GROUPS = ("before", "first_corrupted", "middle_corrupted", "last_corrupted", "first_subsequent", "further", "last")


def _need(s, *tables):
    missing = [t for t in tables if t not in s.tables]
    if missing:
        raise KevoError(f"{s.root}: no {', '.join(missing)} table: run `kevo trace {s.root} --model M` first")


def _run_name(s, name: str | None) -> str:
    names = s.sql("SELECT DISTINCT name FROM trace_runs ORDER BY name")["name"].to_list()
    if name:
        if name not in names:
            raise KevoError(f"no trace run {name!r} in {s.root}; runs: {', '.join(names)}")
        return name
    if len(names) > 1:
        raise KevoError(f"{s.root} holds several trace runs ({', '.join(names)}): choose one with -p trace_run=...")
    return names[0]


def fig_trace(store, sample_id: int | None = None, trace_run: str | None = None, **_):
    name = trace_run

    s = as_store(store)
    _need(s, "traces", "trace_runs")
    name = _run_name(s, name)
    runs = s.sql(f"SELECT * FROM trace_runs WHERE name = '{name}' ORDER BY sample_id")
    kinds = runs["kinds"][0].to_list()
    window = int(runs["window"][0])
    if sample_id is None and runs.height == 1:
        sample_id = int(runs["sample_id"][0])
    panels = []
    if sample_id is not None:
        r = runs.filter(runs["sample_id"] == sample_id)
        if r.height == 0:
            raise KevoError(f"sample {sample_id} is not traced in run {name!r}")
        r = r.to_dicts()[0]
        t = s.sql(f"""SELECT t.kind, t.layer, t.position, t.role, t.token_group, t.patch_row, t.patch_col,
                             t.p_restored, v.text FROM traces t LEFT JOIN vocab v ON v.vocab_id = t.token_id
                      WHERE t.trace_id = '{r['trace_id']}'""")
        first = r["first_corrupted"]
        if r["corruption"].startswith("image-noise"):
            shown = t.filter(t["position"] >= first)
        else:
            shown = t.filter((t["position"] >= max(0, first - 3)) & (t["role"] != "image"))
        positions = sorted(set(shown["position"].to_list()))
        corrupted = set(r["corrupted_positions"])
        lab = {}
        for row in shown.unique(subset=["position"]).to_dicts():
            text = (row["text"] or "").replace("\n", "\\n")
            if row["role"] == "image":
                text = f"img {row['patch_row']},{row['patch_col']}"
            lab[row["position"]] = f"{text}*" if row["position"] in corrupted else text
        labels = [lab[p] for p in positions]
        for kind in kinds:
            k = shown.filter(shown["kind"] == kind)
            layers = sorted(set(k["layer"].to_list()))
            m = np.full((len(positions), len(layers)), np.nan)
            pi = {p: i for i, p in enumerate(positions)}
            li = {ly: i for i, ly in enumerate(layers)}
            for row in k.iter_rows(named=True):
                m[pi[row["position"]], li[row["layer"]]] = row["p_restored"]
            panels.append((kind, m, labels, layers))
        title = f"sample {sample_id}: p_clean {r['p_clean']:.3f}, p_corrupt {r['p_corrupt']:.3f}"
    else:
        e = run(s, "trace-effects", trace_run=name)
        present = [g for g in GROUPS if g in set(e["token_group"].to_list())]
        for kind in kinds:
            k = e.filter(e["kind"] == kind)
            layers = sorted(set(k["layer"].to_list()))
            m = np.full((len(present), len(layers)), np.nan)
            for row in k.iter_rows(named=True):
                m[present.index(row["token_group"]), layers.index(row["layer"])] = row["p_restored"]
            panels.append((kind, m, [g.replace("_", " ") + ("*" if "corrupted" in g else "") for g in present],
                           layers))
        title = f"average over {runs.height} samples (p_clean {runs['p_clean'].mean():.3f}, " \
                f"p_corrupt {runs['p_corrupt'].mean():.3f})"
    n_rows = len(panels[0][2])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), max(2.5, 0.28 * n_rows + 1.4)),
                             squeeze=False)
    for ax, (kind, m, labels, layers) in zip(axes[0], panels):
        im = ax.imshow(m, aspect="auto", cmap=CMAPS[kind], interpolation="nearest")
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=7)
        step = max(1, len(layers) // 12)
        ax.set_xticks(range(0, len(layers), step))
        ax.set_xticklabels([layers[i] for i in range(0, len(layers), step)])
        ax.set_xlabel(f"layer (window {window})")
        ax.set_title(TITLES[kind], fontsize=9)
        fig.colorbar(im, ax=ax, label="p(answer)")
    fig.suptitle(f"causal trace {name}: {title}", fontsize=9)
    fig.tight_layout()
    return fig


def _layer_range(spec: str | None, n_layers: int) -> tuple[int, int]:
    if not spec:
        return 1, n_layers
    a, _, b = str(spec).partition("-")
    return int(a), int(b or a)


def fig_attention_patches(store, sample_id: int | None = None, layers: str | None = None, **_):

    s = as_store(store)
    _need(s, "attention_contributions")
    lo, hi = _layer_range(layers, s.n_layers)
    where = f"target = 'last_constraint' AND layer BETWEEN {lo} AND {hi}"
    if sample_id is not None:
        where += f" AND sample_id = {int(sample_id)}"
    d = s.sql(f"""SELECT patch_row, patch_col, SUM(contribution) / COUNT(DISTINCT sample_id) AS c,
                         COUNT(DISTINCT sample_id) AS n
                  FROM attention_contributions WHERE {where} AND patch_row IS NOT NULL
                  GROUP BY patch_row, patch_col""")
    if d.height == 0:
        raise KevoError(f"{s.root}: no image-token contributions to a constraint token"
                        + (f" for sample {sample_id}" if sample_id is not None else ""))
    h, w = int(d["patch_row"].max()) + 1, int(d["patch_col"].max()) + 1
    m = np.full((h, w), np.nan)
    for row in d.iter_rows(named=True):
        m[row["patch_row"], row["patch_col"]] = row["c"]
    n = int(d["n"].max())
    fig, ax = plt.subplots(figsize=(5, 4.3))
    im = ax.imshow(m, cmap="magma", interpolation="nearest")
    ax.set_xticks(range(0, w, max(1, w // 12)))
    ax.set_yticks(range(0, h, max(1, h // 12)))
    ax.set_xlabel("patch column")
    ax.set_ylabel("patch row")
    who = f"sample {sample_id}" if sample_id is not None else f"mean over {n} samples"
    ax.set_title(f"image tokens -> last constraint token, layers {lo}-{hi} ({who})", fontsize=9)
    fig.colorbar(im, ax=ax, label="attention contribution (sum over layers)")
    return fig
