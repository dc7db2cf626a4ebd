"""The causal-tracing engine (ingest/trace) on tiny models of every family and on the embedded
organism's shipped weights: the identities of the method, \
every row against the naive reference (tests/trace_reference.py: one full hooked forward per
restored run, no cache), and attention contributions against a direct recomputation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ingest.models import load_adapter
from ingest.trace.constraint import constraint_positions, first_piece_id
from ingest.trace.contributions import attention_contributions, contribution_vectors
from ingest.trace.corrupt import noise_draws, parse_corruption
from ingest.trace.engine import Tracer, TraceSettings
from tests.model_helpers import FAMILIES, tiny_image, tiny_model_dir
from tests.trace_reference import NaiveTracer

QUESTION = "Is there a red car in the picture?"
CONSTRAINT = "red car"
TOL = 2e-6  # fp32 rounding of a different batch shape / cached attention


def _model_dir(family):
    """A tiny model of ``family``, or the embedded organism's shipped weights (``"organism"``)."""
    if family == "organism":
        from ingest.organism.train import WEIGHTS_DIR

        return WEIGHTS_DIR
    return tiny_model_dir(family)


def _sample(family):
    ad = load_adapter(str(_model_dir(family)), dtype="float32")
    img = tiny_image() if ad.multimodal else None
    b = ad.encode([ad.build_prompt(QUESTION, img is not None)], [img] if img is not None else None)
    inputs = ad.generate_inputs(b)
    ids = inputs["input_ids"][0].tolist()
    pos = constraint_positions(ad.tokenizer, ids, QUESTION, CONSTRAINT, ad.image_token_ids)
    img_pos = [i for i, t in enumerate(ids) if t in ad.image_token_ids]
    return ad, b, inputs, ids, pos, img_pos


def _sigma(ad):
    emb = ad.model.get_input_embeddings()
    with torch.no_grad():
        return float(emb(torch.arange(emb.weight.shape[0])).float().std())


def _naive(ad, inputs, pos, corrupt, n_samples=1, seed=0, sample_id=0):
    c = parse_corruption(corrupt)
    if c.kind == "swap":
        return NaiveTracer(ad, inputs, pos, ("swap", first_piece_id(ad.tokenizer, c.word)))
    return NaiveTracer(ad, inputs, pos, ("noise", c.scale, _sigma(ad),
                                         noise_draws((len(pos), ad.hidden_size), n_samples, seed, sample_id)))


@pytest.mark.parametrize("family", [*FAMILIES, "organism"])
def test_identities_and_rows_match_naive(family):
    ad, b, inputs, ids, pos, img_pos = _sample(family)
    assert [ad.tokenizer.decode([ids[p]]).strip() for p in pos][-1] == "car"
    tr = Tracer(ad, TraceSettings(parse_corruption("swap:cat"), window=3))
    st = tr.prepare(inputs, pos, replacement_id=first_piece_id(ad.tokenizer, "cat"))
    nv = _naive(ad, inputs, pos, "swap:cat")
    assert st.answer_id == nv.answer and abs(st.p_clean - nv.p_clean) < TOL
    assert abs(np.mean(st.p_corrupt_draws) - nv.p_corrupt) < TOL
    T, L = st.T, ad.n_layers
    everywhere = list(range(T))
    got = tr.restore(st, [("hidden", [2], everywhere), ("hidden", [0], everywhere), ("mlp", [], [pos[0]])])
    # the residual stream restored at every position of one layer is the clean run; nothing restored
    # is the corrupted run
    assert abs(got[0] - st.p_clean) < TOL and abs(got[1] - st.p_clean) < TOL
    assert abs(got[2] - nv.p_corrupt) < TOL
    # a bidirectional prefix (PaliGemma's prefix-LM mask) is detected from the model itself
    assert st.causal_prefix == (family != "paligemma")
    before = [p for p in range(pos[0])][-2:]
    for p in before:
        ref = nv.restored([("attn", [1, 2], [p])])
        if st.causal_prefix:
            assert ref == nv.p_corrupt  # exactly: the prefix is the same in both runs
    if family == "paligemma":
        assert any(nv.restored([("hidden", [1], [p])]) != nv.p_corrupt for p in before)
    # rows against the naive reference: every kind, positions before/at/after the constraint
    rng = np.random.default_rng(0)
    specs = []
    for kind, lo in (("hidden", 0), ("mlp", 1), ("attn", 1)):
        for p in sorted(set(rng.choice(T, 3, replace=False).tolist()) | {pos[-1], T - 1}):
            layer = int(rng.integers(lo, L + 1))
            specs.append((kind, [x for x in (layer - 1, layer, layer + 1) if lo <= x <= L], [p]))
    vals = tr.restore(st, specs)
    for spec, v in zip(specs, vals):
        assert abs(v - nv.restored([spec])) < TOL, (family, spec)


@pytest.mark.parametrize("corrupt, window", [("swap:cat", 1), ("swap:cat", 3), ("noise:3", 3)])
def test_every_row_of_a_trace_equals_the_naive_reference(corrupt, window):
    ad, b, inputs, ids, pos, img_pos = _sample("llava")
    c = parse_corruption(corrupt)
    n = 2 if c.is_noise else 1
    tr = Tracer(ad, TraceSettings(c, window=window, noise_samples=n, seed=3))
    repl = first_piece_id(ad.tokenizer, "cat") if c.kind == "swap" else None
    st = tr.prepare(inputs, pos, sample_id=7, replacement_id=repl)
    res = tr.trace(st, img_pos, ad.patch_grid(b, 0))
    nv = _naive(ad, inputs, pos, corrupt, n_samples=n, seed=3, sample_id=7)
    assert st.kv_cache and abs(res.p_corrupt - nv.p_corrupt) < TOL
    L = ad.n_layers
    assert len(res.rows) == st.T * (3 * L + 1)
    computed = 0
    for r in res.rows:
        lo = 0 if r.kind == "hidden" else 1
        a = r.layer - window // 2
        assert r.window_layers == list(range(max(lo, a), min(L, a + window - 1) + 1))
        if not r.computed:
            assert max(r.positions) < pos[0] and r.p_restored == res.p_corrupt
            continue
        computed += 1
        assert abs(r.p_restored - nv.restored([(r.kind, r.window_layers, r.positions)])) < TOL, r
    assert computed == (st.T - pos[0]) * (3 * L + 1)


@pytest.mark.parametrize("group", [1, 2])
def test_image_noise_with_patch_groups(group):
    ad, b, inputs, ids, pos, img_pos = _sample("llava")
    grid = ad.patch_grid(b, 0)
    tr = Tracer(ad, TraceSettings(parse_corruption("image-noise:3"), kinds=("attn",), noise_samples=2,
                                  patch_group=group))
    st = tr.prepare(inputs, img_pos, sample_id=1)
    res = tr.trace(st, img_pos, grid)
    nv = _naive(ad, inputs, img_pos, "image-noise:3", n_samples=2, sample_id=1)
    assert abs(res.p_corrupt - nv.p_corrupt) < TOL
    image_units = {tuple(r.positions) for r in res.rows if r.positions[0] in img_pos}
    side = int(len(img_pos) ** 0.5)
    assert side * side == len(img_pos) and side % group == 0
    assert len(image_units) == (side // group) ** 2
    for u in image_units:  # a group is an R x R block of the grid
        cells = {tuple(grid[img_pos.index(p)]) for p in u}
        assert len({(r // group, c // group) for r, c in cells}) == 1 and len(u) == group ** 2
    checked = 0
    for r in res.rows:
        if not r.computed:
            assert max(r.positions) < img_pos[0]
            continue
        if r.positions[0] in img_pos or r.positions[0] >= st.T - 2:
            assert abs(r.p_restored - nv.restored([(r.kind, r.window_layers, r.positions)])) < TOL, r
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "paligemma", "organism"])
def test_contributions_equal_direct_recomputation(family):
    ad, b, inputs, ids, pos, img_pos = _sample(family)
    T = len(ids)
    t = pos[-1]
    sources = list(range(T))
    got = attention_contributions(ad, inputs, {"c": (t, sources)}, {"all": (t, sources)})
    # independently: eager attention probabilities of the whole model, block inputs and outputs by hooks
    xs, outs = {}, {}
    hs = []
    for i, layer in enumerate(ad.layers):
        hs.append(layer.self_attn.register_forward_pre_hook(
            lambda m, a, k, i=i: xs.__setitem__(i, (a[0] if a else k["hidden_states"])[0]), with_kwargs=True))
        hs.append(layer.self_attn.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o[0][0])))
    prev = ad.decoder.config._attn_implementation
    ad.decoder.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            att = ad.model(**inputs, output_attentions=True, use_cache=False).attentions
    finally:
        ad.decoder.set_attn_implementation(prev)
        for h in hs:
            h.remove()
    H = att[0].shape[1]
    for i, layer in enumerate(ad.layers):
        mod = layer.self_attn
        d = mod.o_proj.weight.shape[1] // H
        n_kv = mod.v_proj.weight.shape[0] // d
        A = att[i][0]
        ref = torch.zeros(T, mod.o_proj.weight.shape[0], dtype=torch.float64)
        with torch.no_grad():
            v = mod.v_proj(xs[i]).double()
            for h in range(H):
                kvh = h // (H // n_kv)
                vh = v[:, kvh * d:(kvh + 1) * d]
                wo = mod.o_proj.weight[:, h * d:(h + 1) * d].double()
                ref += A[h, t, :, None].double() * (vh @ wo.T)
        np.testing.assert_allclose(got["c"][i], ref.norm(dim=-1).numpy(), rtol=1e-4, atol=1e-6)
        # the sources' shares add up to the block's output at the target (no output bias owned by a source)
        bias = mod.o_proj.bias if mod.o_proj.bias is not None else 0
        total = (outs[i][t] - bias).double()
        np.testing.assert_allclose(got["all"][i][0], float(total.norm()), rtol=1e-4)
        vec = contribution_vectors(mod, xs[i], A, t, torch.arange(T))
        np.testing.assert_allclose(vec.sum(0).double().numpy(), total.numpy(), rtol=1e-4, atol=1e-5)
