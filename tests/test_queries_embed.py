"""kevo embed: openTSNE / PCA embeddings written back to the store, and the per-layer dispersion."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kevo_store import open_store
from kevo_store.errors import KevoError
from queries.embed import dispersion, embed_store, parse_layers, pca, token_dispersion

KEVO = str(Path(sys.executable).with_name("kevo"))  # the installed console script
GUITAR = "is_answer AND piece = '▁guitar'"


def test_parse_layers():
    assert parse_layers("0-3,8") == [0, 1, 2, 3, 8]
    assert parse_layers(None) is None
    with pytest.raises(KevoError, match="--layers 'a-b'"):
        parse_layers("a-b")


def test_tsne_is_deterministic_for_a_seed_and_written_back(with_hidden, tmp_path):  # noqa: F811
    path, _ = with_hidden
    kw = {"where": GUITAR, "layers": list(range(0, 33, 3)), "perplexity": 20.0, "n_jobs": 1}
    a = embed_store(path, seed=3, write=False, **kw)
    b = embed_store(path, seed=3, write=False, **kw)
    c = embed_store(path, seed=4, write=False, **kw)
    assert a.n_points == 24 * 11
    assert a.frame.equals(b.frame)
    assert not np.allclose(a.frame["x"].to_numpy(), c.frame["x"].to_numpy())
    assert np.isfinite(a.frame["x"].to_numpy()).all() and a.frame["x"].std() > 0
    # written back: the embeddings table with its parameters in the manifest
    out = embed_store(path, seed=3, **kw)
    s = open_store(path)
    e = s.sql(f"SELECT * FROM embeddings WHERE embedding_id = '{out.embedding_id}' ORDER BY token_uid, layer")
    assert e.height == 24 * 11
    np.testing.assert_array_equal(e["x"].to_numpy(), a.frame.sort("token_uid", "layer")["x"].to_numpy())
    run = s.manifest["derived"]["embeddings"]["params"]["runs"][out.embedding_id]
    assert run["seed"] == 3 and run["method"] == "tsne" and run["tokens"] == GUITAR and run["n_jobs"] == 1
    assert run["perplexity"] == 20.0 and run["pca_dims"] == 32
    # a second run with another id keeps the first
    other = embed_store(path, method="pca", where="sample_id < 3", layers=[0, 16, 32])
    s = open_store(path)
    ids = set(s.sql("SELECT DISTINCT embedding_id FROM embeddings")["embedding_id"])
    assert {out.embedding_id, other.embedding_id} <= ids


def test_dispersion_recovers_the_planted_neck(with_hidden):  # noqa: F811
    """Answer tokens agree across images where the planted spread is small ("the neck") and diverge elsewhere."""
    path, truth = with_hidden
    d = token_dispersion(path, GUITAR)
    sigma = truth.dispersion_sigma
    # hidden = centre + sigma * N(0, I_32): the mean distance to the centroid is ~ sigma * sqrt(32)
    ratio = d["mean_dist"].to_numpy() / sigma
    assert np.allclose(ratio, ratio.mean(), rtol=0.12)
    assert abs(ratio.mean() - np.sqrt(32 - 0.5) * np.sqrt(23 / 24)) < 0.3
    assert int(d["layer"][int(np.argmin(d["mean_dist"].to_numpy()))]) == int(np.argmin(sigma))
    assert d["mean_cos_dist"].to_numpy()[np.argmin(sigma)] < d["mean_cos_dist"].to_numpy()[0]


def test_dispersion_against_a_direct_computation():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(7, 3, 5))
    d = dispersion(h, [0, 1, 2])
    for j in range(3):
        x = h[:, j]
        assert d["mean_dist"][j] == pytest.approx(np.linalg.norm(x - x.mean(0), axis=1).mean())
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        cos = u @ u.T
        assert d["mean_cos_dist"][j] == pytest.approx(1 - cos[~np.eye(7, dtype=bool)].mean())


def test_pca_is_deterministic_and_orthogonal():
    x = np.random.default_rng(1).normal(size=(40, 60))
    a, b = pca(x, 50), pca(x.copy(), 50)
    assert a.shape == (40, 40) and np.array_equal(a, b)
    cov = a.T @ a
    assert np.allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-8)


def test_randomized_pca_spans_the_exact_top_subspace():
    """Above EXACT_PCA_MAX rows and columns `kevo embed` uses the randomized PCA: on a matrix with a clear
    spectral gap its top components must span the subspace numpy's exact SVD finds (principal angles, since
    the coordinates within the subspace may differ), and it must be deterministic for a seed."""
    from scipy.linalg import subspace_angles

    from queries.embed import embed_points, pca_method

    rng = np.random.default_rng(7)
    n, d, r = 1500, 600, 10
    u, _ = np.linalg.qr(rng.standard_normal((n, r)))
    v, _ = np.linalg.qr(rng.standard_normal((d, r)))
    sv = np.geomspace(2000, 1000, r)  # noise's largest singular value is about sqrt(n) + sqrt(d) = 63
    x = ((u * sv) @ v.T + rng.standard_normal((n, d)) + 5.0).astype(np.float32)
    assert pca_method(n, d) == "randomized"
    xc = x.astype(np.float64) - x.astype(np.float64).mean(axis=0)
    ref = np.linalg.svd(xc, full_matrices=False)[0][:, :r]  # numpy's exact top-r left singular vectors
    a = pca(x, 50, seed=3)
    assert a.shape == (n, 50) and np.array_equal(a, pca(x.copy(), 50, seed=3))
    assert np.degrees(subspace_angles(a[:, :r], ref)).max() < 0.05
    assert np.degrees(subspace_angles(pca(x, 50, seed=4)[:, :r], ref)).max() < 0.05
    # the variance along each top component is the exact one (a rotation inside the subspace would mix them)
    assert np.allclose(np.sqrt((a[:, :r] ** 2).sum(axis=0)), np.linalg.svd(xc, compute_uv=False)[:r], rtol=1e-4)
    _, info = embed_points(x, method="pca", seed=3)
    assert info["pca_method"] == "randomized" and info["pca_power_iterations"] >= 1
    assert embed_points(x[:400], method="pca")[1]["pca_method"] == "exact"


def test_cli_embed_and_errors(with_hidden, planted, tmp_path):  # noqa: F811
    path, _ = with_hidden
    r = subprocess.run([KEVO, "embed", path, "--tokens", GUITAR, "--layers", "0-32",
                        "--method", "pca", "--name", "cli-pca"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "cli-pca" in r.stdout and "rel_dispersion" in r.stdout
    s = open_store(path)
    assert s.sql("SELECT count(*) AS n FROM embeddings WHERE embedding_id = 'cli-pca'")["n"][0] == 24 * 33
    for args, msg in [([path, "--tokens", "piece = 'nothing'"], "selects no tokens"),
                      ([path, "--tokens", "no_such_column = 1"], "--tokens 'no_such_column = 1'"),
                      ([path, "--layers", "40-41"], "no hidden states at layers [40, 41]"),
                      ([planted[0]], "holds no hidden states")]:
        r = subprocess.run([KEVO, "embed", *args], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode != 0 and msg in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_cli_embed_shows_its_stages_and_tsne_progress(with_hidden, tmp_path):  # noqa: F811
    """t-SNE of 20,000 points takes about a minute: `kevo embed` says what it does and shows a bar over
    openTSNE's iterations (its callbacks do not change the result)."""
    import shutil

    from queries.embed import embed_points

    path = tmp_path / "copy.kevo"
    shutil.copytree(with_hidden[0], path)
    r = subprocess.run([KEVO, "embed", str(path), "--tokens", GUITAR, "--layers", "0-3", "--n-jobs", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for msg in ("reading hidden states: 24 tokens x 4 layers = 96 points", "PCA to 50 dims", "t-SNE (96 points)",
                "750/750", "writing the embeddings table (96 rows)"):
        assert msg in r.stderr, (msg, r.stderr[-2000:])
    x = np.random.default_rng(3).normal(size=(60, 16)).astype(np.float32)
    a, _ = embed_points(x, n_jobs=1)
    b, _ = embed_points(x, n_jobs=1, progress=True)
    assert np.array_equal(a, b)
