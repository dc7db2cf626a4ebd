"""Trace results -> the store's derived tables ``trace_runs``, ``traces``, ``attention_contributions``
(schemas in kevo_store/schema.py), merged with what an earlier ``kevo trace`` left there: rows of
the same run name (and contributions of the same samples) are replaced, every other row is kept."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from kevo_store import schema

from .contributions import attention_contributions


def token_group(pos: int, corrupted: list[int], last: int) -> str:
    """ROME's token groups, relative to the corrupted tokens (the constraint, or the image)."""
    c = sorted(corrupted)
    if pos == last:
        return "last"
    if pos < c[0]:
        return "before"
    if pos == c[0]:
        return "first_corrupted"
    if pos == c[-1]:
        return "last_corrupted"
    if pos < c[-1]:
        return "middle_corrupted"
    return "first_subsequent" if pos == c[-1] + 1 else "further"


def run_row(trace_id, name, p, res, s, repl, sigma, params) -> dict:
    c = s.corruption
    return {
        "trace_id": trace_id, "name": name, "sample_id": p.sample_id, "corruption": c.spec,
        "corrupted_positions": list(p.corrupted), "replacement_id": repl,
        "noise_scale": c.scale if c.is_noise else None, "noise_sigma": sigma,
        "noise_samples": s.noise_samples, "seed": s.seed, "window": s.window, "kinds": list(s.kinds),
        "answer_id": res.answer_id, "p_clean": res.p_clean, "p_corrupt": res.p_corrupt,
        "n_positions": res.n_positions, "first_corrupted": min(p.corrupted), "causal_prefix": res.causal_prefix,
        "kv_cache": res.kv_cache,
        "params": json.dumps({**params, "p_corrupt_draws": res.p_corrupt_draws,
                              "forward_rows": res.n_forward_rows, "forward_tokens": res.n_forward_tokens},
                             sort_keys=True),
    }


def trace_rows(trace_id, p, res) -> pa.Table:
    img = set(p.image_positions)
    grid_of = {pos: (int(g[0]), int(g[1])) for pos, g in zip(p.image_positions, p.grid)} if p.grid is not None else {}
    cols: dict[str, list] = {f.name: [] for f in schema.TRACES}
    last = res.n_positions - 1
    for r in res.rows:
        pos = r.positions[0]
        rc = grid_of.get(pos, (None, None))
        vals = {"trace_id": trace_id, "sample_id": p.sample_id, "kind": r.kind, "layer": r.layer, "position": pos,
                "positions": r.positions, "window_layers": r.window_layers, "token_uid": p.uid_by_position.get(pos),
                "token_id": p.input_ids[pos], "role": "image" if pos in img else "prompt",
                "token_group": token_group(pos, p.corrupted, last),
                "patch_row": rc[0] if rc[0] is None or rc[0] >= 0 else None,
                "patch_col": rc[1] if rc[1] is None or rc[1] >= 0 else None,
                "computed": r.computed, "p_restored": r.p_restored, "effect": r.p_restored - res.p_corrupt}
        for k, v in vals.items():
            cols[k].append(v)
    return pa.table({f.name: pa.array(cols[f.name], f.type) for f in schema.TRACES}, schema=schema.TRACES)


def contribution_rows(ad, p) -> pa.Table:
    """The two targets: the last constraint token (sources: image tokens) and the last token
    (sources: every text token, and the image tokens as one group)."""
    T = len(p.input_ids)
    img = set(p.image_positions)
    targets, groups = {}, {}
    if p.constraint and p.image_positions:
        targets["last_constraint"] = (max(p.constraint), list(p.image_positions))
    text = [i for i in range(T) if i not in img]
    targets["last"] = (T - 1, text)
    if p.image_positions:
        groups["image_all"] = (T - 1, list(p.image_positions))
    out = attention_contributions(ad, p.inputs, targets, groups)
    grid_of = {pos: (int(g[0]), int(g[1])) for pos, g in zip(p.image_positions, p.grid)} if p.grid is not None else {}
    cons = set(p.constraint)
    cols: dict[str, list] = {f.name: [] for f in schema.ATTENTION_CONTRIBUTIONS}

    def add(target, t, src, role_of, norms):
        L = norms.shape[0]
        for li in range(L):
            for j, s in enumerate(src):
                rc = grid_of.get(s, (-1, -1)) if role_of(s) == "image" else (-1, -1)
                cols["sample_id"].append(p.sample_id)
                cols["target"].append(target)
                cols["layer"].append(li + 1)
                cols["source_position"].append(s)
                cols["target_position"].append(t)
                cols["source_role"].append(role_of(s))
                cols["patch_row"].append(rc[0] if rc[0] >= 0 else None)
                cols["patch_col"].append(rc[1] if rc[1] >= 0 else None)
                cols["token_uid"].append(p.uid_by_position.get(s) if role_of(s) != "image_all" else None)
                cols["contribution"].append(float(norms[li, j]))

    def role(s):
        return "image" if s in img else ("constraint" if s in cons else "prompt")
    if "last_constraint" in targets:
        t, src = targets["last_constraint"]
        add("last_constraint", t, src, role, out["last_constraint"])
    t, src = targets["last"]
    add("last", t, src, role, out["last"])
    if "image_all" in groups:
        add("last", T - 1, [min(p.image_positions)], lambda s: "image_all", out["image_all"])
    return pa.table({f.name: pa.array(cols[f.name], f.type) for f in schema.ATTENTION_CONTRIBUTIONS},
                    schema=schema.ATTENTION_CONTRIBUTIONS)


def merge_and_write(store_path, run_name, runs, traces, contribs, params, sample_ids) -> None:
    """Replace this run's rows (and the traced samples' contributions), keep the rest; the three
    tables go into the store in one commit (a crash leaves all of them or none), merged under the
    store's lock with what is committed then (a concurrent `kevo trace` keeps its rows)."""
    import pyarrow.compute as pc

    from kevo_store.writer import replace_run, write_derived_tables

    runs_t = pa.Table.from_pylist(runs, schema=schema.TRACE_RUNS)
    traces_t = pa.concat_tables(traces) if traces else schema.TRACES.empty_table()
    prefix = f"{run_name}:"
    tables = [("traces", traces_t, lambda t: pc.invert(pc.starts_with(t["trace_id"], prefix))),
              ("trace_runs", runs_t, lambda t: pc.invert(pc.equal(t["name"], run_name)))]
    if contribs:
        ids = pa.array(sample_ids, pa.int64())
        tables.insert(1, ("attention_contributions", pa.concat_tables(contribs),
                          lambda t: pc.invert(pc.is_in(t["sample_id"], value_set=ids))))

    write_derived_tables(store_path, {name: replace_run(new, run_name, params, keep) for name, new, keep in tables})


def effects_matrix(res, kind: str) -> tuple[list[int], list[int], np.ndarray]:
    """(positions, layers, p_restored matrix) of one kind of a SampleTrace (for plots and tests)."""
    rows = [r for r in res.rows if r.kind == kind]
    pos = sorted({r.positions[0] for r in rows})
    layers = sorted({r.layer for r in rows})
    m = np.full((len(pos), len(layers)), np.nan)
    pi = {p: i for i, p in enumerate(pos)}
    li = {ly: i for i, ly in enumerate(layers)}
    for r in rows:
        m[pi[r.positions[0]], li[r.layer]] = r.p_restored
    return pos, layers, m
