"""The hidden states through the array ecosystem: `xarray.open_zarr(STORE/hidden)` and
`Store.hidden_xarray()` (lazy, dask-backed) give what `Store.hidden` gives, on a store written by
`kevo ingest`; a real dask computation (per-layer mean across tokens) equals numpy's."""

from __future__ import annotations

import numpy as np
import pytest
import store_helpers as H

from kevo_store import open_store
from tests.runner_helpers import REPRODUCIBLE_ENV, kevo, tiny_model_dir

xr = pytest.importorskip("xarray")
pytest.importorskip("dask")


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    d = tmp_path_factory.mktemp("xr")
    prompts = d / "prompts.txt"
    prompts.write_text("".join(f"Describe picture number {i} in a few words.\n" for i in range(6)))
    out = d / "text.kevo"
    kevo("ingest", "text", "--prompts", prompts, "--model", tiny_model_dir("causal_lm"), "--max-new-tokens", "8",
         "--batch-size", "2", "--top-k", "2", "--capture-prompt", "--out", out, env=REPRODUCIBLE_ENV)
    return out


def test_open_zarr_and_hidden_xarray_equal_store_hidden(ingested):
    with open_store(ingested) as s:
        n = s.rows("tokens")
        want = s.hidden(np.arange(n))
        sid = s.sql("SELECT sample_id FROM tokens ORDER BY token_uid")["sample_id"].to_numpy()
        layers = s.hidden_layers
        ds = xr.open_zarr(ingested / "hidden", consolidated=False)
        assert set(ds.data_vars) == {"hidden"}
        v = ds["hidden"]
        assert v.dims == ("token", "layer", "hidden_dim") and v.attrs["logical_dtype"] == "float16"
        assert np.array_equal(v.values.view(np.uint16), want.view(np.uint16))
        assert np.array_equal(ds["token_uid"].values, np.arange(n))
        assert np.array_equal(ds["sample_id"].values, sid)
        assert ds["layer"].values.tolist() == layers
        da = s.hidden_xarray()
        assert da.dims == ("token", "layer", "hidden_dim") and da.chunks is not None  # lazy, dask-backed
        assert np.array_equal(da.values.view(np.uint16), want.view(np.uint16))
        assert np.array_equal(da["sample_id"].values, sid) and da["layer"].values.tolist() == layers
        one = da.sel(layer=layers[1]).isel(token=[3, 0]).values
        assert np.array_equal(one.view(np.uint16), s.hidden([3, 0], layers=[layers[1]])[:, 0].view(np.uint16))


def test_a_dask_per_layer_mean_equals_numpy(ingested):
    with open_store(ingested) as s:
        want = s.hidden(np.arange(s.rows("tokens"))).astype(np.float64).mean(axis=0)
        got = s.hidden_xarray().astype(np.float64).mean("token").compute()
        np.testing.assert_allclose(got.values, want, rtol=1e-12, atol=0)
        assert got.dims == ("layer", "hidden_dim")


@pytest.mark.parametrize("close", [True, False])
def test_hidden_xarray_bfloat16_many_shards_and_tails(tmp_path, close):
    path = tmp_path / "bf.kevo"
    w = H.write_store(path, 6, hidden_dtype="bfloat16", close=False)  # 301 tokens: a partial last shard
    if close:
        w.close()
    else:
        w.abort()  # an open store: rows past the last whole shard are in tails
    with open_store(path) as s:
        n = s.rows("tokens")
        if not close:
            assert s.manifest["hidden"]["tails"]
        want = s.hidden(np.arange(n))
        da = s.hidden_xarray()
        assert da.dtype == np.float32 and len(da.chunks[0]) == -(-n // H.SHARD_TOKENS)
        assert np.array_equal(da.values.view(np.uint32), want.view(np.uint32))
