"""Benchmarks 1 and 2: the cost of kevo's capture against plain ``model.generate``, and against the
paper's released method (bench/paper_method.py), on the same model, inputs and batch size.

Arms, interleaved in one process (bench/common.py: the ratio is between the fastest runs):

- ``generate``: ``adapter.encode`` + ``model.generate`` (greedy, KV cache), nothing captured;
- ``generate_hidden``: the same with ``output_hidden_states`` (what capture asked of transformers before
  it recorded the hidden states by forward hooks, ingest/residual.py);
- ``kevo_capture``: ``ingest.capture.capture``: generation + hidden states of all layers to fp16 +
  the logit lens (final_norm, top-10, JS/KL/entropy) of every generated token;
- ``lens_matmul``: only ``lm_head`` applied to the L non-final layers of every generated token (one
  matmul). The final layer's logits come with generation; these are the extra FLOPs no lens
  implementation can avoid, so ``1 + lens_matmul / generate`` is the floor of the overhead ratio;
- ``paper_method``: generation with hidden states + the paper's per-step, per-layer loops;
  ``kevo_paper_outputs``: kevo's capture with the same lens (raw, dola on).

``full_ingest``: ``run_ingest`` (images read from disk, capture, token spans, store commits, close
and compaction) against a plain loop that reads the same images and calls ``generate``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from bench.common import best, interleave, r3, scratch, timed


def _setup(model_dir: Path, images: list[Path], batch: int, prompt: str):
    from PIL import Image

    from ingest.lens import Unembedding
    from ingest.models import load_adapter

    ad = load_adapter(str(model_dir), dtype="float32", device="cpu")
    texts = [ad.build_prompt(prompt, has_image=True)] * batch
    ims = [Image.open(p).convert("RGB") for p in images[:batch]]
    return ad, texts, ims, Unembedding(ad)


def _plain_config(ad, n: int, hidden: bool = False):
    from transformers import GenerationConfig

    return GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=n, eos_token_id=ad.eos_token_ids,
                            pad_token_id=ad.tokenizer.pad_token_id, use_cache=True, output_hidden_states=hidden,
                            return_dict_in_generate=hidden)


def overhead(model_dir: Path, images: list[Path], batch: int, new_tokens: int, reps: int,
             paper: bool = True, prompt: str | None = None) -> dict:
    """Benchmarks 1 (capture overhead and its floor) and 2 (against the paper's method)."""
    import torch

    from bench.models import PROMPT
    from ingest.capture import CaptureSettings, capture
    from ingest.lens import compute_lens

    ad, texts, ims, U = _setup(model_dir, images, batch, prompt or PROMPT)
    L, D, V = ad.n_layers, ad.hidden_size, ad.vocab_size
    gc_plain = _plain_config(ad, new_tokens)
    gc_hidden = _plain_config(ad, new_tokens, hidden=True)
    settings = CaptureSettings(max_new_tokens=new_tokens, top_k=10, hidden_layers="all")
    settings_paper = CaptureSettings(max_new_tokens=new_tokens, top_k=10, hidden_layers="all",
                                     lens_modes=("raw",), dola=True)
    state: dict = {}

    @torch.no_grad()
    def plain():
        state["plain"] = ad.model.generate(**ad.generate_inputs(ad.encode(texts, ims)), generation_config=gc_plain)

    @torch.no_grad()
    def gen_hidden():
        state["gh"] = ad.model.generate(**ad.generate_inputs(ad.encode(texts, ims)), generation_config=gc_hidden)

    def kevo():
        state["caps"] = capture(ad, texts, ims, settings, unembedding=U)

    n_tok = batch * new_tokens
    h_all = torch.randn(n_tok, L, D)

    @torch.no_grad()
    def lens_matmul():
        torch.nn.functional.linear(h_all, U.weight)

    arms = {"generate": plain, "generate_hidden": gen_hidden, "kevo_capture": kevo, "lens_matmul": lens_matmul}
    times = interleave(arms, reps)
    caps = state["caps"]
    # generate returns the prompt, then as many steps as the longest sample ran (fewer than new_tokens
    # when every sample stopped early): the new tokens start after the prompt
    n_prompt = ad.generate_inputs(ad.encode(texts, ims))["input_ids"].shape[1]
    gen_plain = state["plain"][:, n_prompt:]
    same = all(np.array_equal(c.generated_ids, gen_plain[i, : c.n_generated].numpy()) for i, c in enumerate(caps))
    n_gen = sum(c.n_generated for c in caps)
    # the lens alone on the captured hidden states (kevo's second phase), for the breakdown
    H = torch.from_numpy(np.concatenate([c.hidden for c in caps]).astype(np.float32))
    out_ids = torch.from_numpy(np.concatenate([c.generated_ids for c in caps]))
    t_lens = min(timed(compute_lens, U, H, out_ids, top_k=10)[0] for _ in range(max(1, reps - 1)))
    b = {k: best(v) for k, v in times.items()}
    res = {
        "model": {"layers": L, "hidden": D, "vocab": V, "dir": str(model_dir)},
        "batch": batch, "new_tokens": new_tokens, "generated_tokens": n_gen, "reps": reps,
        "prompt_tokens": int(ad.encode(texts[:1], ims[:1]).input_ids.shape[1]),
        "times_s": {k: [r3(x, 4) for x in v] for k, v in times.items()},
        "best_s": {k: r3(v, 4) for k, v in b.items()},
        "lens_only_s": r3(t_lens, 4),
        "ratio_capture_vs_generate": r3(b["kevo_capture"] / b["generate"]),
        "ratio_generate_hidden_vs_generate": r3(b["generate_hidden"] / b["generate"]),
        "floor_ratio": r3(1 + b["lens_matmul"] / b["generate"]),
        "lens_matmul_share_of_capture": r3(b["lens_matmul"] / b["kevo_capture"]),
        "same_tokens_as_generate": bool(same),
        "generate_tokens_per_s": r3(n_gen / b["generate"]),
        "capture_tokens_per_s": r3(n_gen / b["kevo_capture"]),
        # FLOPs per generated token: decoder layers (attention + MLP projections) + final lm_head, vs the lens
        "flops_ratio_lens_vs_decode": r3((L * V * D) / (L * (4 * D * D + 3 * D * ad.text_config.intermediate_size)
                                                        + V * D)),
        "target_ratio": 1.5,
    }
    res["met_target"] = res["ratio_capture_vs_generate"] <= 1.5
    if paper:
        res["paper"] = paper_comparison(ad, texts, ims, U, gc_hidden, settings_paper, new_tokens, reps)
    return res


def paper_comparison(ad, texts, ims, U, gc_hidden, settings_paper, new_tokens: int, reps: int) -> dict:
    import torch

    from bench.paper_method import compare, logit_fp32_error, paper_lens
    from ingest.capture import capture

    state: dict = {}

    def paper_arm(as_released: bool):
        key = "as_released" if as_released else "tightened"

        @torch.no_grad()
        def paper():
            out = ad.model.generate(**ad.generate_inputs(ad.encode(texts, ims)), generation_config=gc_hidden)
            new = out.sequences[:, -len(out.hidden_states):]
            t = time.perf_counter()
            # like the released scripts, analyse a sample's tokens up to its end-of-sequence token
            eos = set(ad.eos_token_ids)
            n_gen = [next((k + 1 for k, t in enumerate(row) if t in eos), len(row)) for row in new.tolist()]
            state[key] = paper_lens(ad.lm_head, out.hidden_states, new, n_gen, as_released=as_released)
            state.setdefault(f"{key}_analysis", []).append(time.perf_counter() - t)

        return paper

    def kevo():
        state["caps"] = capture(ad, texts, ims, settings_paper, unembedding=U)

    n = max(1, reps - 1)  # the paper arms are the slowest: one run fewer
    times = interleave({"paper_as_released": paper_arm(True), "paper_tightened": paper_arm(False),
                        "kevo_paper_outputs": kevo}, n, warmup=False)
    from ingest.lens import LensResult

    kl = LensResult.concat([c.lens["raw"] for c in state["caps"]])
    H = torch.from_numpy(np.concatenate([c.hidden for c in state["caps"]]).astype(np.float32))
    err = logit_fp32_error(U.weight, H)
    check = compare(state["as_released"], kl, logit_error=err)
    check_tightened = compare(state["tightened"], kl, logit_error=err)
    # kevo's analysis part for the same outputs: the lens on the captured hidden states
    from ingest.lens import compute_lens

    ids = torch.from_numpy(np.concatenate([c.generated_ids for c in state["caps"]]))
    t_lens = min(timed(compute_lens, U, H, ids, mode="raw", top_k=10, dola=True)[0] for _ in range(n))
    bp, bk = best(times["paper_as_released"]), best(times["kevo_paper_outputs"])
    bt = best(times["paper_tightened"])
    pa, pt = best(state["as_released_analysis"]), best(state["tightened_analysis"])
    return {
        "times_s": {k: [r3(x, 4) for x in v] for k, v in times.items()},
        "paper_analysis_s": [r3(x, 4) for x in state["as_released_analysis"]],
        "paper_tightened_analysis_s": [r3(x, 4) for x in state["tightened_analysis"]],
        "kevo_lens_s": r3(t_lens, 4),
        "ratio_end_to_end": r3(bp / bk),
        "ratio_analysis_only": r3(pa / t_lens),
        "ratio_end_to_end_tightened": r3(bt / bk),
        "ratio_analysis_only_tightened": r3(pt / t_lens),
        "target_ratio": 5.0,
        "met_target_end_to_end": bp / bk >= 5.0,
        "met_target_analysis": pa / t_lens >= 5.0,
        "check": check,
        "check_tightened": check_tightened,
    }


def full_ingest(model_dir: Path, images: list[Path], batch: int, new_tokens: int, reps: int,
                prompt: str | None = None, name: str = "ingest-stores", hidden_none: bool = False,
                adapter=None, dtype: str = "float32", device: str = "cpu") -> dict:
    """``run_ingest`` (store writes included) vs a plain generate loop over the same image files; with
    ``hidden_none`` also ``run_ingest --hidden none`` (the same run without the hidden-state array).
    ``adapter``: a model already built (bench/gpu_bench.py's random 7B architecture on the GPU), used instead
    of loading the one in ``model_dir`` (whose config the ingest still reads)."""
    import torch
    from PIL import Image

    from bench.models import PROMPT
    from ingest.datasets import folder

    prompt = prompt or PROMPT
    from ingest.models import load_adapter
    from ingest.runner import IngestConfig, run_ingest

    ad = adapter if adapter is not None else load_adapter(str(model_dir), dtype=dtype, device=device)
    img_dir = images[0].parent
    gc = _plain_config(ad, new_tokens)
    work = scratch(name)
    counter = {"i": 0}
    result = {}

    @torch.no_grad()
    def plain():
        for s in range(0, len(images), batch):
            chunk = images[s : s + batch]
            ims = [Image.open(p).convert("RGB") for p in chunk]
            texts = [ad.build_prompt(prompt, has_image=True)] * len(chunk)
            out = ad.model.generate(**ad.generate_inputs(ad.encode(texts, ims)), generation_config=gc)
            out.cpu()  # the tokens on the host, as the ingest has them (and the device's queue drained)

    def kevo(hidden: str = "all"):
        counter["i"] += 1
        out = work / f"run{counter['i']}.kevo"
        cfg = IngestConfig(model=str(model_dir), out=str(out), batch_size=batch,
                           max_new_tokens=new_tokens, dtype=dtype, device=device, progress=False, hidden=hidden)
        r = run_ingest(folder.dataset(img_dir, prompt), cfg, echo=lambda m: None, adapter=ad)
        result["n_tokens"] = r.n_tokens
        if hidden == "all":
            result["store"] = out

    arms = {"generate_loop": plain, "kevo_ingest": kevo}
    if hidden_none:
        arms["kevo_ingest_hidden_none"] = lambda: kevo("none")
    times = interleave(arms, reps, warmup=False)
    store = result["store"]
    from bench.common import dir_bytes

    res = {
        "images": len(images), "batch": batch, "new_tokens": new_tokens, "tokens": result["n_tokens"], "reps": reps,
        "times_s": {k: [r3(x, 4) for x in v] for k, v in times.items()},
        "ratio_ingest_vs_generate": r3(best(times["kevo_ingest"]) / best(times["generate_loop"])),
        **({"ratio_hidden_all_vs_none": r3(best(times["kevo_ingest"]) / best(times["kevo_ingest_hidden_none"])),
            "hidden_bytes_per_token": ad.hidden_size * (ad.n_layers + 1) * 2} if hidden_none else {}),
        "store_bytes": dir_bytes(store), "hidden_bytes": dir_bytes(store, "hidden"),
        "store_path": str(store),
    }
    for p in work.iterdir():
        if p != store:
            shutil.rmtree(p, ignore_errors=True)
    return res
