"""Cross-image clustering: 2-D embeddings of hidden states and their per-layer dispersion
(docs/analyses.md, "Cross-image clustering").

``embed_store`` picks tokens with an SQL predicate on ``tokens`` (e.g. the answer token "guitar"
over many images), reads their hidden states from the store's Zarr array at the chosen layers,
reduces every (token, layer) point to 50 dimensions with PCA, embeds it in 2-D with openTSNE (or
keeps the first two principal components), and writes the points back to the store as the
``embeddings`` table with the run's parameters in the manifest. The per-layer dispersion of the
same tokens across images ("the neck where images agree, the body where they diverge") is computed
from the full hidden states, not from the 2-D picture.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from kevo_store import open_store, replace_run, write_derived_tables
from kevo_store.errors import KevoError, QueryError
from kevo_store.layerspec import parse_layers  # noqa: F401 - the one layer-list parser (kevo embed --layers)

from .engine import as_store

PCA_DIMS = 50


@dataclass
class EmbedOutput:
    embedding_id: str
    n_points: int
    n_tokens: int
    layers: list[int]
    seconds: float
    params: dict = field(default_factory=dict)
    frame: pl.DataFrame | None = None
    """The embedded points: embedding_id, token_uid, layer, x, y."""
    dispersion: pl.DataFrame | None = None


# Below this many rows or columns the exact SVD is cheap (well under a second); above it, its
# O(n D min(n, D)) cost dominates `kevo embed` (339 s at 20,000 x 4,096), so a randomized PCA is used.
EXACT_PCA_MAX = 500
# Randomized PCA (Halko, Martinsson & Tropp 2011, algorithms 4.3/4.4 + 5.1): oversampling and
# subspace (power) iterations. Two iterations suffice when the spectrum decays, as hidden states' do.
PCA_OVERSAMPLING = 10
PCA_POWER_ITERATIONS = 2


def _fix_signs(comp: np.ndarray) -> np.ndarray:
    """SVD signs are arbitrary: flip each component so its largest loading is positive."""
    k = comp.shape[0]
    sign = np.sign(comp[np.arange(k), np.abs(comp).argmax(axis=1)])
    sign[sign == 0] = 1
    return comp * sign[:, None]


def pca_method(n: int, d: int, k: int = PCA_DIMS) -> str:
    """'exact' (full SVD) for small matrices, 'randomized' otherwise."""
    k = min(k, n, d)
    return "exact" if min(n, d) <= EXACT_PCA_MAX or k + PCA_OVERSAMPLING >= min(n, d) else "randomized"


def pca(x: np.ndarray, k: int = PCA_DIMS, seed: int = 0, method: str | None = None) -> np.ndarray:
    """Project rows onto the first k principal components, with a deterministic sign per component.

    ``method``: 'exact' (SVD in float64), 'randomized' (seeded range finder in float32), or None to
    pick by size (``pca_method``). The randomized result depends on ``seed`` only through the sign-fixed
    subspace it finds, so it is deterministic for a seed."""
    n, d = x.shape
    k = min(k, n, d)
    method = method or pca_method(n, d, k)
    if method == "exact":
        x = np.asarray(x, dtype=np.float64)
        xc = x - x.mean(axis=0, keepdims=True)
        _, _, vt = np.linalg.svd(xc, full_matrices=False)
        return xc @ _fix_signs(vt[:k]).T
    if method != "randomized":
        raise KevoError(f"unknown PCA method {method!r} (exact | randomized)")
    return _randomized_pca(x, k, seed)


def _randomized_pca(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Halko et al.'s randomized SVD of the centred data: about 2 + 2 * PCA_POWER_ITERATIONS passes of a
    (n, D) x (D, k + p) product instead of a full SVD. float32 products (the data are float32 hidden
    states); the mean in float64, the small SVD in float64; orthonormalised after every pass (QR) so the
    power iterations lose no precision to the float32 products."""
    import scipy.linalg as sla

    n, d = x.shape
    mean = np.asarray(x, dtype=np.float64).mean(axis=0) if x.dtype != np.float64 else x.mean(axis=0)
    xc = np.asarray(x, dtype=np.float32) - mean.astype(np.float32)  # one centred float32 copy
    width = min(k + PCA_OVERSAMPLING, n, d)
    rng = np.random.default_rng(seed)
    q = xc @ rng.standard_normal((d, width), dtype=np.float32)
    q, _ = sla.qr(q, mode="economic", overwrite_a=True, check_finite=False)
    for _ in range(PCA_POWER_ITERATIONS):
        z, _ = sla.qr(xc.T @ q, mode="economic", overwrite_a=True, check_finite=False)
        q, _ = sla.qr(xc @ z, mode="economic", overwrite_a=True, check_finite=False)
    b = (q.T @ xc).astype(np.float64)  # (width, d): xc ~= q @ b
    _, _, vt = np.linalg.svd(b, full_matrices=False)
    comp = _fix_signs(vt[:k]).astype(np.float32)
    return (xc @ comp.T).astype(np.float64)


def embed_points(x: np.ndarray, method: str = "tsne", perplexity: float = 30.0, seed: int = 0,
                 n_jobs: int | None = None, progress: bool = False) -> tuple[np.ndarray, dict]:
    """(n, D) -> (n, 2) and the effective parameters (perplexity is capped at (n - 1) / 3).

    ``progress``: a bar on stderr over openTSNE's iterations (its callbacks never change the result)."""
    n = x.shape[0]
    if n < 4:
        raise KevoError(f"only {n} points to embed; choose more tokens or layers")
    pca_how = pca_method(n, x.shape[1], PCA_DIMS)
    reduced = pca(x, PCA_DIMS, seed=seed, method=pca_how)
    info = {"pca_dims": int(reduced.shape[1]), "pca_method": pca_how}
    if pca_how == "randomized":  # what reproduces it: Halko et al.'s range finder, seeded with the run's seed
        info.update({"pca_oversampling": PCA_OVERSAMPLING, "pca_power_iterations": PCA_POWER_ITERATIONS,
                     "pca_seed": seed})
    if method == "pca":
        y = reduced[:, :2] if reduced.shape[1] >= 2 else np.hstack([reduced, np.zeros((n, 1))])
        return y.astype(np.float32), info
    if method != "tsne":
        raise KevoError(f"unknown method {method!r} (tsne | pca)")
    from openTSNE import TSNE

    eff = float(min(perplexity, (n - 1) / 3.0))
    jobs = n_jobs or os.cpu_count() or 1
    kw: dict = {}
    bar = None
    if progress:
        from tqdm import tqdm

        every = 10
        total = 250 + 500  # openTSNE's defaults: early exaggeration, then the optimisation
        bar = tqdm(total=total, unit="iter", desc=f"t-SNE ({n:,} points)", leave=True)

        def tick(iteration, error, embedding):  # noqa: ARG001 - openTSNE's callback signature
            bar.update(every)
            return False  # never stop early

        kw = {"callbacks": tick, "callbacks_every_iters": every}
    tsne = TSNE(n_components=2, perplexity=eff, random_state=seed, n_jobs=jobs, initialization="pca",
                verbose=False, **kw)
    try:
        y = np.asarray(tsne.fit(reduced), dtype=np.float32)
    finally:
        if bar is not None:
            bar.close()
    info.update({"perplexity_effective": eff, "n_jobs": jobs})
    return y, info


def dispersion(h: np.ndarray, layers: list[int]) -> pl.DataFrame:
    """Per layer, how much the tokens' hidden states spread across images.

    h: (n_tokens, n_layers, D). Columns: mean_dist (mean Euclidean distance to the layer's
    centroid), rel_dispersion (mean_dist / mean norm: comparable across layers whose scale grows),
    mean_cos_dist (mean pairwise cosine distance)."""
    h = np.asarray(h, dtype=np.float64)
    cen = h.mean(axis=0, keepdims=True)
    dist = np.linalg.norm(h - cen, axis=2)  # (n, L)
    norms = np.linalg.norm(h, axis=2)
    unit = h / np.maximum(norms[:, :, None], 1e-12)
    n = h.shape[0]
    # mean pairwise cosine similarity from the norm of the summed unit vectors (no n x n matrix)
    s = np.linalg.norm(unit.sum(axis=0), axis=1) ** 2
    mean_cos = (s - n) / max(n * (n - 1), 1)
    return pl.DataFrame({
        "layer": np.asarray(layers, dtype=np.int64),
        "n_tokens": np.full(len(layers), n, dtype=np.int64),
        "mean_dist": dist.mean(axis=0),
        "rel_dispersion": dist.mean(axis=0) / np.maximum(norms.mean(axis=0), 1e-12),
        "mean_cos_dist": 1.0 - mean_cos,
    })


def select_tokens(store, where: str) -> np.ndarray:
    from kevo_store.confine import predicate

    try:
        df = store.sql(f"SELECT token_uid FROM tokens WHERE ({predicate(where)}) ORDER BY token_uid")
    except QueryError as e:
        raise KevoError(f"--tokens {where!r}: {e}") from None
    uids = df["token_uid"].to_numpy()
    if len(uids) == 0:
        raise KevoError(f"--tokens {where!r} selects no tokens in {store.path}")
    return uids


def token_dispersion(store, where: str = "is_answer", layers: list[int] | None = None) -> pl.DataFrame:
    """Per-layer dispersion of the tokens chosen by ``where`` (no embedding)."""
    store = as_store(store)
    uids = select_tokens(store, where)
    layers = _layers(store, layers)
    return dispersion(store.hidden(uids, layers), layers)


def _layers(store, layers: list[int] | None) -> list[int]:
    have = store.hidden_layers
    if not have:
        raise KevoError(f"{store.path} holds no hidden states; ingest with hidden-state capture to embed")
    if layers is None:
        return list(have)
    missing = sorted(set(layers) - set(have))
    if missing:
        raise KevoError(f"{store.path}: no hidden states at layers {missing} (captured: {have[0]}..{have[-1]})")
    return list(layers)


def embed_store(path, where: str = "is_answer", layers: list[int] | None = None, method: str = "tsne",
                perplexity: float = 30.0, seed: int = 0, n_jobs: int | None = None, embedding_id: str | None = None,
                max_points: int = 20000, write: bool = True, echo=None) -> EmbedOutput:
    """``echo`` (e.g. click.echo): say each stage as it starts and show t-SNE's progress bar."""
    t0 = time.perf_counter()
    say = echo or (lambda _msg: None)
    store = open_store(path)
    uids = select_tokens(store, where)
    layers = _layers(store, layers)
    n_points = len(uids) * len(layers)
    if n_points > max_points:
        raise KevoError(f"{len(uids)} tokens x {len(layers)} layers = {n_points} points > --max-points {max_points}; "
                        "narrow --tokens or --layers")
    say(f"reading hidden states: {len(uids):,} tokens x {len(layers)} layers = {n_points:,} points")
    h = store.hidden(uids, layers)  # (n, n_layers, D)
    x = np.asarray(h, dtype=np.float32).reshape(n_points, -1)
    say(f"PCA to {PCA_DIMS} dims ({pca_method(n_points, x.shape[1], PCA_DIMS)}), then {method}")
    y, info = embed_points(x, method, perplexity, seed, n_jobs, progress=echo is not None)
    params = {"tokens": where, "layers": layers, "method": method, "perplexity": perplexity, "seed": seed,
              "n_tokens": int(len(uids)), **info}
    if embedding_id is None:
        digest = hashlib.sha256(json.dumps({k: params[k] for k in ("tokens", "layers", "method", "perplexity", "seed")},
                                           sort_keys=True).encode()).hexdigest()[:8]
        embedding_id = f"{method}-{digest}"
    frame = pl.DataFrame({
        "embedding_id": [embedding_id] * n_points,
        "token_uid": np.repeat(uids.astype(np.int64), len(layers)),
        "layer": np.tile(np.asarray(layers, dtype=np.int16), len(uids)),
        "x": y[:, 0], "y": y[:, 1],
    })
    disp = dispersion(h, layers)
    store.close()
    if write:
        say(f"writing the embeddings table ({n_points:,} rows) into {path}")
        _write(path, embedding_id, frame, params, disp)
    return EmbedOutput(embedding_id, n_points, int(len(uids)), layers, time.perf_counter() - t0, params, frame, disp)


def _write(path, embedding_id: str, frame: pl.DataFrame, params: dict, disp: pl.DataFrame) -> None:
    """Add this run to the embeddings table, keeping other runs (one table, many embedding_ids),
    merged under the store's lock with what is committed then (a concurrent run keeps its rows)."""
    import pyarrow.compute as pc

    update = replace_run(frame.to_arrow(), embedding_id, {**params, "dispersion": disp.to_dicts()},
                         lambda t: pc.not_equal(t["embedding_id"], embedding_id))
    write_derived_tables(path, {"embeddings": update})
