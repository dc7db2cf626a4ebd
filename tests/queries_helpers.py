"""Shared synthetic stores for the query, plot and report tests (built once per session, small)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from queries.testing import Plant, build_synthetic_store

# Hand-written stories on the first tokens (token_uid 0..6); their answers are written out in the tests.
PLANTS = [
    Plant("mutation", critical_layer=20, mutation_layers=(27,), words=("camera", "water"), label="hallucinated"),
    Plant("never", label="correct", words=("dog",)),
    Plant("js", critical_layer=14, mutation_layers=(24,), words=("cat",), label="correct"),
    Plant("early", critical_layer=15, words=("table", "chair"), label="correct", early=2),
    Plant("double", critical_layer=12, mutation_layers=(18, 25), words=("car", "tree", "person"),
          label="hallucinated"),
    Plant("swap", critical_layer=16, mutation_layers=(22,), words=("horse", "bench"), label="safe"),
    # the emitted token is top-1 from 12, displaced, and back at 25: the emitted definitions disagree
    Plant("double", critical_layer=12, mutation_layers=(18, 25), words=("car", "tree", "car"), label="correct"),
]


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """(store path, truth): 30 samples x 12 tokens, two lenses with different plans, no hidden states."""
    path = tmp_path_factory.mktemp("queries") / "planted.kevo"
    truth = build_synthetic_store(path, n_samples=30, n_tokens=12, seed=11, plants=PLANTS,
                                  lenses=("final_norm", "raw"), batch_samples=8)
    return str(path), truth


@pytest.fixture(scope="session")
def other_seed(tmp_path_factory):
    path = tmp_path_factory.mktemp("queries") / "other.kevo"
    truth = build_synthetic_store(path, n_samples=30, n_tokens=12, seed=12)
    return str(path), truth


@pytest.fixture(scope="session")
def with_hidden(tmp_path_factory):
    """24 samples x 4 tokens with 32-dim hidden states at every layer (the 'guitar' is step 0)."""
    path = tmp_path_factory.mktemp("queries") / "hidden.kevo"
    truth = build_synthetic_store(path, n_samples=24, n_tokens=4, hidden_size=32, seed=5)
    return str(path), truth


def normalise(df: pl.DataFrame) -> pl.DataFrame:
    """Engine-neutral form for comparing answers: integers as Int64, floats as Float64, rows sorted."""
    casts = []
    for c, dt in df.schema.items():
        if dt.is_integer() or isinstance(dt, pl.Decimal):
            casts.append(pl.col(c).cast(pl.Int64))
        elif dt.is_float():
            casts.append(pl.col(c).cast(pl.Float64))
        elif dt == pl.Boolean:
            casts.append(pl.col(c).cast(pl.Boolean))
    df = df.with_columns(casts) if casts else df
    return df.sort(df.columns, nulls_last=True)


def assert_frames_close(a: pl.DataFrame, b: pl.DataFrame, rtol: float = 1e-6, atol: float = 1e-9) -> None:
    """Same rows; floats to float32 precision (the stored values are float32 and the engines accumulate
    means in different precisions), everything else exactly."""
    a, b = normalise(a), normalise(b)
    assert a.columns == b.columns
    assert a.height == b.height
    for c in a.columns:
        x, y = a[c], b[c]
        if x.dtype == pl.Float64:
            xn, yn = x.to_numpy(), y.to_numpy()
            assert np.array_equal(np.isnan(xn), np.isnan(yn)), c
            ok = ~np.isnan(xn)
            np.testing.assert_allclose(xn[ok], yn[ok], rtol=rtol, atol=atol, err_msg=c)
        else:
            assert x.to_list() == y.to_list(), c
