"""Teacher-forced scoring: a given response scored by the model as if it had emitted those tokens.

    from ingest.forced import capture_forced, read_responses, response_ids
    ids = response_ids(ad, "A cat on a table.")          # tokens + end of sequence, checked to round-trip
    caps = capture_forced(ad, texts, images, [ids], CaptureSettings(max_new_tokens=256))

The result is the same :class:`ingest.capture.SampleCapture` that greedy generation produces (the
runner's rows, labels and writer are shared): row s of a sample is the response's token s, its
hidden state is the one at the position that predicts it (``n_prompt + s - 1``), and the lens's
"out" token is the forced token. Two things are added: ``mode = 'forced'`` (``samples.mode``) and,
per token, whether the model's own greedy choice at that position is the same token
(``tokens.greedy_match``; the head applied to the last layer in the model's own dtype, i.e. the
logits greedy decoding would take the argmax of).

How: the prompt batch is encoded as for generation (left padded), each response is appended to its
sample, and the shorter ones get extra left padding so that the batch stays left padded. Then one
``model.generate(max_new_tokens=1)`` call runs the prefill only: a single forward pass over prompt +
response for the whole batch, with the family's own handling of padding, position ids (Qwen2-VL's
3-D rope included) and image inputs, exactly as generation prepares them. Hidden states are
recorded by :mod:`ingest.residual`'s hooks at the response positions only (prompt positions too
with ``capture_prompt``), the same values ``output_hidden_states`` would give.

A response longer than ``max_new_tokens`` tokens is cut there (stop reason 'max_new_tokens'), as
generation would have been; otherwise the end-of-sequence token ends it (stop reason 'eos').
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kevo_store.errors import KevoError

from .capture import (
    ROLE_GENERATED,
    CaptureSettings,
    SampleCapture,
    prompt_row_columns,
    sample_capture,
    stored_hidden,
)
from .lens import Unembedding, compute_lens
from .models.base import Adapter
from .residual import generate_recorded

MODE_FORCED, MODE_GENERATED = "forced", "generated"
# the inputs laid out along the sequence (batch, T): extended with the response; all others
# (pixel values, grids, Q-Former inputs) are per sample or per image and stay as they are
_SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


class ResponsesError(KevoError):
    """A response file that cannot be used: the message names the file and the record."""


class ForcedResponseError(ValueError):
    """One response the model's tokenizer cannot represent (becomes that sample's errors row)."""


def read_responses(path: str | Path) -> list[dict]:
    """``[{"id", "response"}, ...]`` from a JSON list or JSONL file (the format ``kevo eval amber
    --responses`` reads; ids may be ints or strings). Refuses an empty or duplicated response."""
    from ingest.datasets.base import read_records

    p = Path(path)
    records = read_records(p, "--responses", ResponsesError)
    if not records:
        raise ResponsesError(f"--responses {p}: no records (expected [{{\"id\": ..., \"response\": \"...\"}}, ...])")
    seen: dict[str, int] = {}
    out = []
    for rec in records:
        i, r = rec.index, rec.value
        at = f"--responses {p}, {rec.where}"
        if not isinstance(r, dict) or not isinstance(r.get("id"), (int, str)) or isinstance(r.get("id"), bool) \
                or not isinstance(r.get("response"), str):
            raise ResponsesError(f"{at}: expected {{\"id\": <int or str>, \"response\": <str>}}, got {r!r:.80}")
        rid = str(r["id"])
        if not r["response"].strip():
            raise ResponsesError(f"{at}: the response of id {rid} is empty: there are no tokens to score")
        if rid in seen:
            raise ResponsesError(f"{at}: id {rid} already has a response (record {seen[rid]})")
        seen[rid] = i
        out.append({"id": rid, "response": r["response"]})
    return out


def match_items(responses: list[dict], items: list, path: str, dataset: str) -> dict[str, str]:
    """{sample_key: response} for the dataset's items, matched by ``item_id`` (or the whole sample key).
    A response whose id is not an item of the dataset is refused (naming the record)."""
    by_id = {it.item_id: it.key for it in items}
    by_key = {it.key for it in items}
    out: dict[str, str] = {}
    for i, r in enumerate(responses, 1):
        key = by_id.get(r["id"]) or (r["id"] if r["id"] in by_key else None)
        if key is None:
            ids = sorted(by_id)
            shown = ", ".join(ids[:5]) + (f", ... ({len(ids)} items)" if len(ids) > 5 else "")
            raise ResponsesError(f"--responses {path}, record {i}: id {r['id']} is not an item of dataset "
                                 f"{dataset} (its ids: {shown or 'none'})")
        out[key] = r["response"]
    return out


def response_ids(adapter: Adapter, response: str) -> list[int]:
    """The response's token ids (no special tokens added) followed by the end-of-sequence token.

    Raises :class:`ForcedResponseError` if decoding those tokens does not give the response back
    (a character the vocabulary cannot spell, text the tokenizer normalises): the scored tokens would
    then not be the given text."""
    tok = adapter.tokenizer
    ids = list(tok(response, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ForcedResponseError("the response is empty after tokenization")
    back = tok.decode(ids, skip_special_tokens=True)
    if back != response:
        k = next((j for j, (a, b) in enumerate(zip(back, response)) if a != b), min(len(back), len(response)))
        raise ForcedResponseError(
            f"the tokenizer of {adapter.model_id!r} cannot round-trip the response: decoding its {len(ids)} tokens "
            f"gives {back[max(0, k - 10):k + 20]!r} where the response has {response[max(0, k - 10):k + 20]!r} "
            f"(character {k})")
    eos = adapter.eos_token_ids
    return ids + ([eos[0]] if eos else [])


def _forced_inputs(adapter: Adapter, batch, forced: list[torch.Tensor]) -> tuple[dict, int]:
    """The batch's inputs with each sample's forced ids appended; left padded (extra padding in front)."""
    inputs = adapter.generate_inputs(batch)
    B, T = batch.input_ids.shape
    S = max(len(f) for f in forced)
    pad_id = adapter.tokenizer.pad_token_id
    out = dict(inputs)
    for key in _SEQUENCE_KEYS:
        v = inputs.get(key)
        if v is None or not torch.is_tensor(v) or v.shape[:2] != (B, T):
            continue
        rows = []
        for i, f in enumerate(forced):
            n = len(f)
            front = torch.full((S - n,), pad_id if key == "input_ids" else 0, dtype=v.dtype, device=v.device)
            if key == "input_ids":
                back = f.to(device=v.device, dtype=v.dtype)
            elif key == "token_type_ids":
                back = torch.full((n,), adapter.generated_token_type, dtype=v.dtype, device=v.device)
            elif key == "attention_mask":
                back = torch.ones(n, dtype=v.dtype, device=v.device)
            else:
                back = torch.zeros(n, dtype=v.dtype, device=v.device)
            rows.append(torch.cat([front, v[i], back]))
        out[key] = torch.stack(rows)
    return out, S


@torch.no_grad()
def capture_forced(adapter: Adapter, prompt_texts: list[str], images: list | None, forced_ids: list[list[int]],
                   settings: CaptureSettings, unembedding: Unembedding | None = None) -> list[SampleCapture]:
    """Score ``forced_ids[i]`` after prompt i: one forward pass for the batch; SampleCaptures in the
    same layout as :func:`ingest.capture.capture` (mode 'forced', greedy_match per token)."""
    if len(forced_ids) != len(prompt_texts):
        raise ValueError(f"{len(prompt_texts)} prompts but {len(forced_ids)} forced responses")
    unembedding = unembedding or adapter.unembedding
    eos = set(adapter.eos_token_ids)
    cut, stops = [], []
    for f in forced_ids:
        f = [int(x) for x in f]
        if not f:
            raise ValueError("a forced response has no tokens")
        end = next((k + 1 for k, t in enumerate(f) if t in eos), len(f))  # generation stops at eos
        f = f[: min(end, settings.max_new_tokens)]
        cut.append(torch.as_tensor(f, dtype=torch.long))
        stops.append("eos" if f[-1] in eos else "max_new_tokens")
    batch = adapter.encode(prompt_texts, images)
    B, T = batch.input_ids.shape
    inputs, S = _forced_inputs(adapter, batch, cut)
    # the prefill of generation, over prompt + response: hidden states of all layers at the positions
    # kept (every position with capture_prompt; else the last S + 1, which hold every sample's
    # response positions: sample i's predicting positions are T + S - n_i - 1 .. T + S - 2)
    keep = None if settings.capture_prompt else S + 1
    _, passes = generate_recorded(adapter, inputs, 1, keep, unembedding.device)
    hs = passes[0]
    L = adapter.n_layers
    if len(hs) != L + 1:
        raise RuntimeError(f"expected {L + 1} hidden states, got {len(hs)}")
    dev = unembedding.device
    full = torch.stack(hs)  # (L+1, B, kept positions, D)
    offset = T + S - full.shape[2]  # padded position of kept position 0
    del hs, passes
    mask = inputs["attention_mask"]
    image_ids = adapter.image_token_ids
    rows_h, meta = [], []
    for i in range(B):
        n_prompt = batch.prompt_lengths[i]
        n_gen = len(cut[i])
        valid = torch.nonzero(mask[i]).squeeze(1).to(dev)  # the sample's real positions, in order
        gen_pos = valid[n_prompt - 1 : n_prompt - 1 + n_gen]  # the positions that predict the response
        h = [full[:, i, gen_pos - offset].transpose(0, 1)]  # (n_gen, L+1, D)
        step = [np.arange(n_gen, dtype=np.int32)]
        position = [np.arange(n_prompt - 1, n_prompt - 1 + n_gen, dtype=np.int32)]
        role = [np.full(n_gen, ROLE_GENERATED, dtype=object)]
        tok = [cut[i].numpy().astype(np.int32)]
        prow = [np.full(n_gen, -1, np.int16)]
        pcol = [np.full(n_gen, -1, np.int16)]
        known = [cut[i].to(dev)]
        bvalid = torch.nonzero(batch.inputs["attention_mask"][i]).squeeze(1)
        input_ids = batch.input_ids[i][bvalid]
        if settings.capture_prompt:
            h.insert(0, full[:, i, valid[:n_prompt]].transpose(0, 1))
            for col, val in zip((step, position, role, tok, prow, pcol),
                                prompt_row_columns(adapter, batch, i, input_ids, image_ids)):
                col.insert(0, val)
            known.insert(0, torch.full((n_prompt,), -1, dtype=torch.long, device=dev))
        rows_h.append(torch.cat(h, 0))
        meta.append(dict(n_gen=n_gen, n_prompt=n_prompt, step=step, position=position, role=role, tok=tok,
                         prow=prow, pcol=pcol, known=torch.cat(known), input_ids=input_ids))
    del full
    H = torch.cat(rows_h, 0)
    known = torch.cat([m["known"] for m in meta]).long()
    lens = {mode: compute_lens(unembedding, H, known, mode=mode, top_k=settings.top_k, dola=settings.dola,
                               chunk_bytes=settings.lens_chunk_bytes) for mode in settings.lens_modes}
    # the model's own greedy choice: its head on the last layer, in its own dtype (what generate's argmax sees)
    greedy = _greedy_ids(adapter, H[:, L])
    hidden_layers = settings.resolve_hidden_layers(L)
    hidden_np, overflow = stored_hidden(H, hidden_layers, settings.hidden_dtype)

    caps, start = [], 0
    for i, m in enumerate(meta):
        n_rows = len(rows_h[i])
        sl = slice(start, start + n_rows)
        start += n_rows
        gen = cut[i].numpy().astype(np.int64)
        is_gen = np.concatenate(m["role"]) == ROLE_GENERATED
        match = np.zeros(n_rows, bool)
        match[is_gen] = greedy[sl][is_gen] == gen
        caps.append(sample_capture(adapter, prompt_texts[i], m, gen, stops[i], sl, lens, hidden_np, overflow,
                                   hidden_layers, mode=MODE_FORCED, greedy_match=match))
    return caps


def _greedy_ids(adapter: Adapter, h_last: torch.Tensor) -> np.ndarray:
    head = adapter.lm_head
    logits = head(h_last.to(head.weight.device, head.weight.dtype))
    cap = adapter.final_logit_softcapping
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits.argmax(-1).cpu().numpy().astype(np.int64)
