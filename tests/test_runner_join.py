"""kevo_store.join: part stores joined in item order, copied verbatim (in-process). That the result equals a
one-process run is shown end to end by test_runner_distributed.py."""

from __future__ import annotations

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

    # parts as two ranks would make them: item i on part i % 2
    parts = [ingest("p0.kevo", items[0::2]), ingest("p1.kevo", items[1::2])]
    other = ingest("other.kevo", items[:1], max_new_tokens=3)
    return dict(tmp=tmp, items=items, parts=parts, other=other)


def _by_key(c: dict) -> dict:
    """Per sample_key: its samples row, tokens/layers/topk rows and hidden bytes, with store ids removed."""
    samples = c["samples"].to_pylist()
    key_of = {r["sample_id"]: r["sample_key"] for r in samples}
    tokens = c["tokens"].to_pylist()
    uid_key = {t["token_uid"]: key_of[t["sample_id"]] for t in tokens}
    out = {r["sample_key"]: {"sample": {k: v for k, v in r.items() if k != "sample_id"}, "tokens": [],
                             "layers": [], "topk": [], "hidden": []} for r in samples}
    for t in tokens:
        row = {k: v for k, v in t.items() if k not in ("token_uid", "sample_id")}
        out[uid_key[t["token_uid"]]]["tokens"].append(row)
        out[uid_key[t["token_uid"]]]["hidden"].append(c["hidden"][t["token_uid"]].tobytes())
    for name in ("layers", "topk"):
        for r in c[name].to_pylist():
            out[uid_key[r["token_uid"]]][name].append({k: v for k, v in r.items() if k != "token_uid"})
    return out


def test_join_copies_every_sample_verbatim_in_item_order_and_rejoin_adds_nothing(stores):
    out = stores["tmp"] / "joined.kevo"
    keys = [it.key for it in stores["items"]]
    st = join_parts(stores["parts"], out, keys, samples_per_commit=2)
    assert (st.samples, st.errors, st.skipped) == (7, 0, 0)
    j = store_content(out)
    # ids are dense in item order, exactly as a one-process run assigns them
    assert j["samples"].column("sample_key").to_pylist() == keys
    assert j["samples"].column("sample_id").to_pylist() == list(range(7))
    assert j["tokens"].column("token_uid").to_pylist() == list(range(j["tokens"].num_rows))
    # every row and every hidden byte is the part's, only renumbered
    expected = {**_by_key(store_content(stores["parts"][0])), **_by_key(store_content(stores["parts"][1]))}
    assert _by_key(j) == expected
    assert j["vocab"].equals(store_content(stores["parts"][0])["vocab"])
    # a crashed or repeated join resumes: nothing is copied twice
    st = join_parts(stores["parts"], out, keys)
    assert (st.samples, st.skipped) == (0, 7)
    assert store_content(out)["samples"].num_rows == 7


def test_join_refuses_parts_made_with_other_settings(stores):
    with pytest.raises(StoreError, match="'generation' sections differ"):
        join_parts([stores["parts"][0], stores["other"]], stores["tmp"] / "bad.kevo")
