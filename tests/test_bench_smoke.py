"""The benchmark's correctness guard: the paper's method (bench/paper_method.py, per-step, per-layer
lm_head calls and float64 JS loops) and kevo's batched lens produce the same values on a tiny
random LLaVA, so the speed ratio in BENCHMARKS.md compares equal outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.models import PROMPT, TINY, build_llava, make_images
from bench.paper_method import compare, paper_lens


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from PIL import Image

    from ingest.lens import Unembedding
    from ingest.models import load_adapter

    d = tmp_path_factory.mktemp("bench-smoke")
    ad = load_adapter(str(build_llava(d / "model", TINY)), dtype="float32", device="cpu")
    ims = [Image.open(p).convert("RGB") for p in make_images(d / "img", 2, size=(50, 36))]
    texts = [ad.build_prompt(PROMPT, has_image=True)] * 2
    return ad, texts, ims, Unembedding(ad)


def _paper(ad, texts, ims, n, as_released=False):
    from transformers import GenerationConfig

    gc = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=n, eos_token_id=ad.eos_token_ids,
                          pad_token_id=ad.tokenizer.pad_token_id, output_hidden_states=True,
                          return_dict_in_generate=True)
    with torch.no_grad():
        out = ad.model.generate(**ad.generate_inputs(ad.encode(texts, ims)), generation_config=gc)
    new = out.sequences[:, -len(out.hidden_states):]
    return new, paper_lens(ad.lm_head, out.hidden_states, new, [new.shape[1]] * new.shape[0], top_k=5,
                           as_released=as_released)


@pytest.mark.parametrize("as_released", [False, True], ids=["tightened", "as_released"])
def test_paper_method_and_kevo_lens_agree(tiny, as_released):
    from ingest.capture import CaptureSettings, capture
    from ingest.lens import LensResult

    ad, texts, ims, U = tiny
    new, paper = _paper(ad, texts, ims, 6, as_released)
    caps = capture(ad, texts, ims, CaptureSettings(max_new_tokens=6, top_k=5, lens_modes=("raw", "final_norm"),
                                                   dola=True), unembedding=U)
    assert [c.generated_ids.tolist() for c in caps] == new.tolist()
    raw = LensResult.concat([c.lens["raw"] for c in caps])
    check = compare(paper, raw)
    assert check["agree"], check
    assert check["js_values"] == 2 * 6 * TINY.layers
    # the values are not degenerate: layers disagree, so equal JS is a real match
    assert np.nanmax(paper["js_true"]) > 1e-3
    # the comparison can fail: the standard lens (final norm on layers < L) differs from the paper's raw lens
    assert not compare(paper, LensResult.concat([c.lens["final_norm"] for c in caps]))["agree"]


def test_report_states_failed_skipped_and_unmeasured_sections():
    """BENCHMARKS.md never hides a section: a failure, a skip and the absent GPU run are all spelled out."""
    from bench import report

    r = {"command": "make bench", "threads": 1, "total_s": 1.0,
         "machine": {"date_utc": "2026-01-01 00:00 UTC", "cpu": "X", "cores": 2},
         "sections": {"ingest": {"error": "RuntimeError: boom"},
                      "organism": {"skipped": "weights not shipped"},
                      "hidden_write": {"error": "OSError: disk full"}}}
    md = report.render(r)
    assert "FAILED: `RuntimeError: boom`" in md and "FAILED: `OSError: disk full`" in md
    assert "not measured: weights not shipped" in md
    assert "Not measured in this session: no GPU" in md
    assert "## 4-5. Query latency and storage\n\nnot run in this invocation" in md
