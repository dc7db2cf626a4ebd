"""kevo_store.join: part stores joined in item order equal one store written in one go (in-process)."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.datasets import Dataset, DatasetItem
from ingest.models import load_adapter
from ingest.runner import IngestConfig, run_ingest
from kevo_store.errors import StoreError
from kevo_store.join import join_parts
from tests.runner_helpers import store_content, tiny_model_dir


def _items(n: int) -> list[DatasetItem]:
    return [DatasetItem(key=f"text:{i}", item_id=str(i), prompt=f"Describe the cat number {i}.", image_path=None)
            for i in range(n)]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("join")
    path = tiny_model_dir("causal_lm")
    ad = load_adapter(str(path), dtype="float32", device="cpu", device_map=None, skip_layers=None, revision=None)
    items = _items(7)

    def ingest(name, subset, **kw):
        cfg = IngestConfig(model=str(path), out=str(tmp / name), top_k=2, lens_modes=("final_norm", "raw"),
                           progress=False, **{"max_new_tokens": 4, **kw})
        run_ingest(Dataset("text", subset), cfg, adapter=ad, echo=lambda m: None)
        return tmp / name

    whole = ingest("whole.kevo", items)
    # parts as two ranks would make them: item i on part i % 2
    parts = [ingest("p0.kevo", items[0::2]), ingest("p1.kevo", items[1::2])]
    other = ingest("other.kevo", items[:1], max_new_tokens=3)
    return dict(tmp=tmp, items=items, whole=whole, parts=parts, other=other)


def test_join_in_item_order_equals_the_whole_run_and_rejoin_adds_nothing(stores):
    out = stores["tmp"] / "joined.kevo"
    keys = [it.key for it in stores["items"]]
    st = join_parts(stores["parts"], out, keys, samples_per_commit=2)
    assert (st.samples, st.errors, st.skipped) == (7, 0, 0)
    a, b = store_content(stores["whole"]), store_content(out)
    for table in ("samples", "tokens", "layers", "topk", "vocab"):
        assert a[table].equals(b[table]), table
    assert np.array_equal(a["hidden"].view(np.uint16), b["hidden"].view(np.uint16))
    # a crashed or repeated join resumes: nothing is copied twice
    st = join_parts(stores["parts"], out, keys)
    assert (st.samples, st.skipped) == (0, 7)
    assert store_content(out)["samples"].num_rows == 7


def test_join_refuses_parts_made_with_other_settings(stores):
    with pytest.raises(StoreError, match="'generation' sections differ"):
        join_parts([stores["parts"][0], stores["other"]], stores["tmp"] / "bad.kevo")
