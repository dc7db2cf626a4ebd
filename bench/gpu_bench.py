"""Benchmark 7 (GPU): LLaVA-1.5-7B's architecture with random weights, batch 8, 256 new tokens:
tokens/s of plain ``model.generate`` and of kevo's capture (all 33 hidden states to fp16 + the
logit lens with top-10 of every generated token), and their ratio, side by side in one process.

    bench/gpu.sh                      # fp16 (and bf16 with --bf16), writes bench/out/gpu-results.json
    python bench/gpu_bench.py --tiny  # the same logic on a tiny config, on the CPU (a smoke test)

With the first dtype it also measures what issue "hidden states at disk speed" asks of a GPU (skip with
``--no-ingest``): the full ``kevo ingest`` (``run_ingest``: capture, background store writes, commits) with
every layer's hidden states against the same ingest with ``--hidden none`` and a plain generate loop, over
16 random images; capture's peak device memory on a long prompt (the image + a long text, about 2,000
tokens) with and without ``--capture-prompt``, hooks against the former ``output_hidden_states`` path; and
the store's hidden-state write throughput against a raw sequential write on that machine's disk
(bench/hidden_write.py, 2,048 tokens x 33 x 4,096).

Self-contained, no download: the model is built from its config directly on the GPU (random
normal weights, std 1/sqrt(fan_in), drawn on the device so a 7B model initialises in seconds), the
tokenizer is bench/models.py's 32,000-entry word-level one, the images are random. The lm_head row
of the end-of-sequence token is zeroed so that every sample generates exactly 256 tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(size, dtype, device: str, seed: int = 0):
    """(adapter, unembedding) of a random LLaVA-1.5 of ``size`` built on ``device``."""
    import torch
    from transformers import CLIPImageProcessorPil, LlavaForConditionalGeneration, LlavaProcessor

    from bench.models import SPECIAL, build_tokenizer, llava_config
    from ingest.lens import Unembedding
    from ingest.models.llava import LlavaAdapter

    cfg = llava_config(size)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(cfg, dtype=dtype)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 1.0 / p.shape[-1] ** 0.5, generator=g)
        model.lm_head.weight[SPECIAL.index("</s>")].zero_()
    model.eval()
    tok = build_tokenizer(size.vocab)
    ip = CLIPImageProcessorPil(size={"shortest_edge": size.image_size},
                               crop_size={"height": size.image_size, "width": size.image_size})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=size.patch,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)
    name = "random-llava-1.5-7b-architecture" if size.layers == 32 else "random-llava-tiny"
    ad = LlavaAdapter(model, proc, model_id=name, revision=None, dtype=str(dtype).removeprefix("torch."), path="")
    return ad, Unembedding(ad)


def measure(ad, U, batch: int, new_tokens: int, reps: int, device: str, lens_chunk_mib: int | None = None) -> dict:
    import numpy as np
    import torch
    from PIL import Image
    from transformers import GenerationConfig

    from bench.models import PROMPT
    from ingest.capture import CaptureSettings, capture

    rng = np.random.default_rng(0)
    ims = [Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) for _ in range(batch)]
    texts = [ad.build_prompt(PROMPT, has_image=True)] * batch
    gc = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=new_tokens, eos_token_id=ad.eos_token_ids,
                          pad_token_id=ad.tokenizer.pad_token_id, use_cache=True)
    settings = CaptureSettings(max_new_tokens=new_tokens, top_k=10, hidden_layers="all",
                               hidden_dtype="bfloat16" if ad.model.dtype == torch.bfloat16 else "float16")
    if lens_chunk_mib:  # default: what `kevo ingest` uses (CaptureSettings.lens_chunk_bytes)
        settings.lens_chunk_bytes = lens_chunk_mib << 20
    cuda = device.startswith("cuda")
    state: dict = {}

    def sync():
        if cuda:
            torch.cuda.synchronize()

    @torch.no_grad()
    def plain():
        state["plain"] = ad.model.generate(**ad.generate_inputs(ad.encode(texts, ims)), generation_config=gc)

    def kevo():
        state["caps"] = capture(ad, texts, ims, settings, unembedding=U)

    def timed(fn):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    timed(plain)  # warm-up (kernels, allocator)
    timed(kevo)
    times = {"generate": [], "kevo_capture": []}
    for _ in range(reps):
        times["generate"].append(timed(plain))
        times["kevo_capture"].append(timed(kevo))
    caps = state["caps"]
    n_gen = sum(c.n_generated for c in caps)
    n_prompt = ad.generate_inputs(ad.encode(texts, ims))["input_ids"].shape[1]  # new tokens follow the prompt
    seq = state["plain"][:, n_prompt:].cpu().numpy()
    same = all(np.array_equal(c.generated_ids, seq[i, : c.n_generated]) for i, c in enumerate(caps))
    lens = caps[0].lens["final_norm"]
    bg, bk = min(times["generate"]), min(times["kevo_capture"])
    res = {
        "dtype": str(ad.model.dtype).removeprefix("torch."), "batch": batch, "new_tokens": new_tokens,
        "generated_tokens": n_gen, "prompt_tokens": int(ad.encode(texts[:1], ims[:1]).input_ids.shape[1]),
        "times_s": times, "generate_tokens_per_s": n_gen / bg, "capture_tokens_per_s": n_gen / bk,
        "ratio_capture_vs_generate": bk / bg, "same_tokens_as_generate": bool(same),
        "lens_finite": bool(np.isfinite(lens.p_out).all() and np.isfinite(lens.entropy).all()),
        "hidden_bytes_per_batch": int(sum(c.hidden.nbytes for c in caps)),
        "lens_chunk_bytes": settings.lens_chunk_bytes,
    }
    if cuda:
        res["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return res


def ingest_ratio(ad, batch: int, new_tokens: int, reps: int, device: str, n_images: int) -> dict:
    """Full ``run_ingest`` with every layer's hidden states / with ``--hidden none`` / a plain generate loop
    (bench/ingest_bench.py ``full_ingest``, here on the pre-built model and its device)."""
    import torch

    from bench import ingest_bench
    from bench.common import OUT
    from bench.models import make_images

    images = make_images(OUT / "images-gpu", n_images)
    dtype = str(ad.model.dtype).removeprefix("torch.")
    # run_ingest reads the checkpoint's config (dimensions, disk estimate, fingerprint) before it uses the
    # model it is given: the random model's config and processor, without weights, stand for the checkpoint
    conf = OUT / "models" / f"{ad.model_id}-config"
    ad.model.config.save_pretrained(str(conf))
    ad.processor.save_pretrained(str(conf))
    res = ingest_bench.full_ingest(conf, images, batch, new_tokens, reps, name="gpu-ingest-stores", hidden_none=True,
                                   adapter=ad, dtype=dtype, device=device)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return res


def capture_memory(ad, U, device: str, prompt_words: int) -> dict:
    """Capture's peak device memory on a long prompt: (hooks | output_hidden_states) x (capture_prompt off | on).
    On CUDA the allocator's own peak (``max_memory_allocated`` after a reset) minus what was allocated just
    before the capture; on the CPU (``--tiny``) the arms run but memory is not measured."""
    import numpy as np
    import torch
    from PIL import Image

    import ingest.residual as residual
    from bench.models import PROMPT
    from ingest.capture import CaptureSettings, capture

    cuda = device.startswith("cuda")
    im = Image.fromarray(np.random.default_rng(1).integers(0, 256, (336, 336, 3), dtype=np.uint8))
    long_text = " ".join([PROMPT] * max(1, prompt_words // len(PROMPT.split())))
    text = ad.build_prompt(long_text, has_image=True)
    n_prompt = int(ad.encode([text], [im]).prompt_lengths[0])
    dtype = "bfloat16" if ad.model.dtype == torch.bfloat16 else "float16"
    arms = []
    saved = residual._OUTPUT_HIDDEN_STATES
    try:
        for prompt in (False, True):
            for path in ("output_hidden_states", "hooks"):
                residual._OUTPUT_HIDDEN_STATES = path == "output_hidden_states"
                settings = CaptureSettings(max_new_tokens=4, top_k=10, capture_prompt=prompt, hidden_dtype=dtype)
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    before = torch.cuda.memory_allocated()
                caps = capture(ad, [text], [im], settings, unembedding=U)
                arm = {"path": path, "capture_prompt": prompt, "rows": int(caps[0].n_tokens)}
                if cuda:
                    torch.cuda.synchronize()
                    arm["peak_over_before_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
                arms.append(arm)
                del caps
    finally:
        residual._OUTPUT_HIDDEN_STATES = saved
    out = {"prompt_tokens": n_prompt, "arms": arms,
           "prompt_hidden_states_mib": (ad.n_layers + 1) * n_prompt * ad.hidden_size * ad.model.dtype.itemsize / 2**20}
    if cuda:
        by = {(a["path"], a["capture_prompt"]): a["peak_over_before_mib"] for a in arms}
        out["saved_without_prompt_mib"] = by[("output_hidden_states", False)] - by[("hooks", False)]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny config on the CPU: checks the logic, not a benchmark")
    ap.add_argument("--bf16", action="store_true", help="also measure bfloat16")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--lens-chunk-mib", type=int, default=None,
                    help="the lens's device temporaries per chunk (default: kevo's CaptureSettings default)")
    ap.add_argument("--no-ingest", action="store_true",
                    help="skip the full-ingest ratio, the capture memory and the store's write throughput")
    ap.add_argument("--ingest-images", type=int, default=16, help="images of the full-ingest comparison")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "gpu-results.json"))
    args = ap.parse_args()

    import torch
    import transformers

    from bench.common import machine
    from bench.models import LLAVA_7B, TINY

    if args.tiny:
        size, device = TINY, "cpu"
        dtypes = [torch.float32] + ([torch.bfloat16] if args.bf16 else [])
        if args.new_tokens == 256:
            args.new_tokens = 8
        args.batch = min(args.batch, 2)
        args.ingest_images = min(args.ingest_images, 4)
    else:
        if not torch.cuda.is_available():
            print("bench/gpu_bench.py: no CUDA device (use --tiny to check the logic on the CPU)", file=sys.stderr)
            return 2
        size, device = LLAVA_7B, "cuda"
        dtypes = [torch.float16] + ([torch.bfloat16] if args.bf16 else [])
    out = {"machine": machine(), "transformers": transformers.__version__, "tiny": args.tiny,
           "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "runs": []}
    for dt in dtypes:
        t0 = time.perf_counter()
        ad, U = build(size, dt, device)
        build_s = time.perf_counter() - t0
        r = measure(ad, U, args.batch, args.new_tokens, args.reps, device, args.lens_chunk_mib)
        r["build_s"] = build_s
        out["runs"].append(r)
        print(f"{r['dtype']}: generate {r['generate_tokens_per_s']:.1f} tok/s, kevo capture "
              f"{r['capture_tokens_per_s']:.1f} tok/s, ratio {r['ratio_capture_vs_generate']:.3f}, "
              f"same tokens {r['same_tokens_as_generate']}", flush=True)
        if not args.no_ingest and dt == dtypes[0]:
            ing = ingest_ratio(ad, args.batch, args.new_tokens, 1 if args.tiny else args.reps, device,
                               args.ingest_images)
            out["ingest"] = {"dtype": r["dtype"], **ing}
            print(f"{r['dtype']}: kevo ingest all hidden / --hidden none {ing['ratio_hidden_all_vs_none']:.3f}, "
                  f"/ generate loop {ing['ratio_ingest_vs_generate']:.3f}", flush=True)
            mem = capture_memory(ad, U, device, prompt_words=40 if args.tiny else 1400)
            out["capture_memory"] = {"dtype": r["dtype"], **mem}
            arms = ", ".join(f"{a['path']}/prompt={int(a['capture_prompt'])} "
                             f"{a.get('peak_over_before_mib', float('nan')):.0f} MiB" for a in mem["arms"])
            print(f"{r['dtype']}: capture memory on {mem['prompt_tokens']} prompt tokens: {arms}", flush=True)
        del ad, U
        if device == "cuda":
            torch.cuda.empty_cache()
    if not args.no_ingest:  # the disk, on its own (no model in memory)
        from bench import hidden_write

        hw = hidden_write.run(tokens=1024 if args.tiny else 2048, batch_tokens=512, reps=1 if args.tiny else 2,
                              d=256 if args.tiny else 4096)
        out["hidden_write"] = {k: hw[k] for k in ("tokens", "layers", "hidden", "batch_tokens", "mib_per_s",
                                                  "ratio_store_vs_raw", "ratio_store_unaligned_vs_raw", "read")}
        print(f"hidden-state writes / raw disk: {hw['ratio_store_vs_raw']} (512-token batches), "
              f"{hw['ratio_store_unaligned_vs_raw']} (800)", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
