"""The store's tables: one Arrow schema each, with the meaning of every column.

This module is the single source of truth for the table layout of store format v1.
FORMAT.md is written from it; the writer validates every batch against it; the reader
exposes each table as a DuckDB view of the same name.

Conventions
- Layers are numbered 0..L: 0 is the embedding output, l is the output of decoder layer l
  (transformers' ``hidden_states[l]``), L is the last layer (already passed through the final norm
  in transformers, so the lens never norms it twice).
- Ranks are 1-based: rank 1 is the top-1 token.
- Probabilities are softmax probabilities in [0, 1]; divergences are in nats (natural log), so a
  Jensen-Shannon divergence lies in [0, ln 2].
- ``token_uid`` is unique in the store, dense from 0 in commit order, and is the row of the token
  in the Zarr array ``hidden``.
"""

from __future__ import annotations

import pyarrow as pa

FORMAT_VERSION = 2

LENS_MODES = ("final_norm", "raw")
ROLES = ("image", "prompt", "generated")


def _f(name: str, type_: pa.DataType, doc: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


SAMPLES = pa.schema(
    [
        _f("sample_id", pa.int64(), "Dense id in commit order; key of the table.", False),
        _f("sample_key", pa.string(), "Stable resume key: '<dataset>:<item_id>[:<variant>]'. Unique.", False),
        _f("dataset", pa.string(), "Dataset name (amber, coco, vqa, folder, text, ...).", False),
        _f("item_id", pa.string(), "The dataset's own id of the item (AMBER id, COCO image id, file name)."),
        _f("image_id", pa.string(), "Image file name relative to the dataset root, null for text-only."),
        _f("image_sha256", pa.string(), "sha256 of the image file's bytes, null for text-only."),
        _f("prompt", pa.string(), "The user prompt, before templating."),
        _f("prompt_text", pa.string(), "The exact text handed to the processor after templating."),
        _f("response", pa.string(), "The decoded generated text (special tokens skipped)."),
        _f("n_prompt_tokens", pa.int32(), "Tokens in the model input, image tokens included (no padding)."),
        _f("n_generated", pa.int32(), "Generated tokens, the end-of-sequence token included if emitted."),
        _f("stop_reason", pa.string(), "'eos' or 'max_new_tokens'."),
        _f("annotations", pa.string(), "The dataset's record for this item, verbatim, as JSON."),
        _f("metrics", pa.string(), "Per-sample evaluation metrics (e.g. AMBER/CHAIR counts) as JSON, or null."),
        _f("mode", pa.string(), "'generated' (the model's own greedy response) or 'forced' (a given response "
           "scored as if the model had emitted it: teacher forcing, `kevo ingest --responses`)."),
    ]
)

TOKENS = pa.schema(
    [
        _f("token_uid", pa.int64(), "Unique in the store; row in the Zarr array 'hidden'. Key.", False),
        _f("sample_id", pa.int64(), "The sample this token belongs to.", False),
        _f("step", pa.int32(), "Generation step (0 = first generated token); -1 for image/prompt positions.", False),
        _f("position", pa.int32(), "Position in the unpadded sequence (prompt + generated) that PREDICTED "
           "this token for "
           "generated tokens, i.e. the hidden state's position; the token's own position for image/prompt.", False),
        _f("role", pa.string(), "image | prompt | generated.", False),
        _f("token_id", pa.int32(), "Vocabulary id of the token (the emitted token for generated rows).", False),
        _f("piece", pa.string(), "The tokenizer's piece for token_id (e.g. '▁guitar')."),
        _f("char_start", pa.int32(), "Start offset of the token's text in samples.response (generated only)."),
        _f("char_end", pa.int32(), "End offset (exclusive) of the token's text in samples.response."),
        _f("word_index", pa.int32(), "Index of the word (whitespace/punctuation split) in the response."),
        _f("word", pa.string(), "The word this token overlaps."),
        _f("is_word_start", pa.bool_(), "True for the first token of the word: the decision token."),
        _f("patch_row", pa.int16(), "Image tokens: row of the patch in the vision grid."),
        _f("patch_col", pa.int16(), "Image tokens: column of the patch in the vision grid."),
        _f("object", pa.string(), "Canonical object word if this token belongs to an object mention (AMBER/CHAIR)."),
        _f("label", pa.string(), "Object mention label: 'correct' | 'hallucinated' | 'safe'; null if no object."),
        _f("hallucinated", pa.bool_(), "label == 'hallucinated' (null if not an object token)."),
        _f("is_answer", pa.bool_(), "VQA: the first token of the answer word."),
        _f("greedy_match", pa.bool_(), "Generated rows: the model's own greedy choice at this position is this "
           "token (always true when samples.mode = 'generated'; null for image/prompt rows)."),
        _f("is_constraint", pa.bool_(), "Questions with a constraint: this prompt token carries the constraint "
           "(the span of the question the answer depends on); null for generated tokens."),
    ]
)

LAYERS = pa.schema(
    [
        _f("token_uid", pa.int64(), "Token (key part 1).", False),
        _f("lens", pa.string(), "Lens mode: 'final_norm' (lm_head(norm(h_l))) or 'raw' (lm_head(h_l), L normed). "
           "Key part 2.", False),
        _f("layer", pa.int16(), "Layer 0..L (key part 3).", False),
        _f("p_out", pa.float32(), "Probability at this layer of the token the model finally emitted.", False),
        _f("logit_out", pa.float32(), "Logit of the emitted token at this layer (after soft-capping if any).", False),
        _f("rank_out", pa.int32(), "1-based rank of the emitted token at this layer.", False),
        _f("top1_id", pa.int32(), "Vocabulary id of the top-1 token at this layer.", False),
        _f("top1_prob", pa.float32(), "Probability of the top-1 token.", False),
        _f("entropy", pa.float32(), "Shannon entropy of the layer's distribution, nats.", False),
        _f("js_prev", pa.float32(), "Jensen-Shannon divergence to layer-1's distribution, nats; null at layer 0."),
        _f("js_final", pa.float32(), "Jensen-Shannon divergence to the last layer's distribution, nats.", False),
        _f("kl_final", pa.float32(), "KL(final || this layer), nats.", False),
        _f("js_dola", pa.float32(), "Paper code's variant vs layer-1 (reverse KL to the mixture, vocab-mean); "
           "null unless captured."),
    ]
)

TOPK = pa.schema(
    [
        _f("token_uid", pa.int64(), "Token (key part 1).", False),
        _f("lens", pa.string(), "Lens mode (key part 2).", False),
        _f("layer", pa.int16(), "Layer 0..L (key part 3).", False),
        _f("rank", pa.int32(), "1-based rank (key part 4); int8 in older stores (see the format notes).", False),
        _f("vocab_id", pa.int32(), "Vocabulary id.", False),
        _f("prob", pa.float32(), "Probability.", False),
    ]
)

VOCAB = pa.schema(
    [
        _f("vocab_id", pa.int32(), "Vocabulary id. Key.", False),
        _f("piece", pa.string(), "Tokenizer piece (convert_ids_to_tokens)."),
        _f("text", pa.string(), "Decoded text of the single token."),
    ]
)

ERRORS = pa.schema(
    [
        _f("sample_key", pa.string(), "The sample that failed (same key scheme as samples.sample_key).", False),
        _f("dataset", pa.string(), "Dataset name."),
        _f("item_id", pa.string(), "The dataset's own id."),
        _f("stage", pa.string(), "Where it failed: read | prepare | generate | label | write."),
        _f("error_type", pa.string(), "Exception class name."),
        _f("message", pa.string(), "Human-readable reason."),
        _f("time", pa.string(), "UTC ISO-8601 time of the failure."),
    ]
)

# Written back by `kevo embed` (queries), one row per embedded point.
EMBEDDINGS = pa.schema(
    [
        _f("embedding_id", pa.string(), "Name of the embedding run (parameters in the manifest's 'derived').", False),
        _f("token_uid", pa.int64(), "Token whose hidden state was embedded.", False),
        _f("layer", pa.int16(), "Layer of the hidden state.", False),
        _f("x", pa.float32(), "First embedding coordinate.", False),
        _f("y", pa.float32(), "Second embedding coordinate.", False),
    ]
)

# Written back by `kevo trace` (ingest/trace): causal tracing, one row per (sample, trace run).
TRACE_RUNS = pa.schema(
    [
        _f("trace_id", pa.string(), "'<run name>:<sample_id>'; the run name is `kevo trace --name` (key).", False),
        _f("name", pa.string(), "The trace run's name (its parameters: manifest 'derived'.traces.params.runs).", False),
        _f("sample_id", pa.int64(), "The traced sample.", False),
        _f("corruption", pa.string(), "'swap:WORD', 'noise:K' or 'image-noise:K'.", False),
        _f("corrupted_positions", pa.list_(pa.int32()), "Input positions corrupted (constraint or image tokens).",
           False),
        _f("replacement_id", pa.int32(),
           "swap: the id of the replacement token (first piece of WORD); null for noise."),
        _f("noise_scale", pa.float32(), "noise: K (the noise's standard deviation is K x sigma); null for swap."),
        _f("noise_sigma", pa.float32(), "noise: sigma, the standard deviation of the model's token embeddings."),
        _f("noise_samples", pa.int32(), "Noise draws averaged (1 for swap).", False),
        _f("seed", pa.int64(), "Seed of the noise draws (per sample: seeded by (seed, sample_id)).", False),
        _f("window", pa.int16(), "Layers restored together per row (W), centred on the row's layer, clipped.", False),
        _f("kinds", pa.list_(pa.string()), "Restored kinds: hidden, mlp, attn.", False),
        _f("answer_id", pa.int32(),
           "The answer: the clean run's greedy first token (= the store's first generated token).", False),
        _f("p_clean", pa.float32(), "p(answer) at the last position, clean run.", False),
        _f("p_corrupt", pa.float32(), "p(answer), corrupted run (mean over noise draws).", False),
        _f("n_positions", pa.int32(), "Length of the model input (positions 0..n-1).", False),
        _f("first_corrupted", pa.int32(), "The first corrupted position.", False),
        _f("causal_prefix", pa.bool_(), "Every site before first_corrupted was bitwise equal in the clean "
           "and the corrupted run (so those rows are exactly p_corrupt and not computed); "
           "false for bidirectional prefixes.", False),
        _f("kv_cache", pa.bool_(), "The corrupted run's key/value cache was re-used for the unaffected prefix.", False),
        _f("params", pa.string(), "Every parameter of the run, as JSON.", False),
    ]
)

TRACES = pa.schema(
    [
        _f("trace_id", pa.string(), "The trace run and sample (trace_runs.trace_id). Key part 1.", False),
        _f("sample_id", pa.int64(), "The traced sample.", False),
        _f("kind", pa.string(), "hidden (residual stream after layer l; 0 = embeddings), "
           "mlp or attn (block l's output). Key part 2.", False),
        _f("layer", pa.int16(), "The row's layer (hidden 0..L, mlp/attn 1..L). Key part 3.", False),
        _f("position", pa.int32(), "First restored position in the model's input sequence (as tokens.position). "
           "Key part 4.", False),
        _f("positions", pa.list_(pa.int32()), "Every restored position (one, or a patch group of image tokens).",
           False),
        _f("window_layers", pa.list_(pa.int16()), "The layers actually restored (the window, clipped).", False),
        _f("token_uid", pa.int64(), "tokens.token_uid of the position where the prompt was captured, else null."),
        _f("token_id", pa.int32(), "Input token id at the position.", False),
        _f("role", pa.string(), "image | prompt.", False),
        _f("token_group", pa.string(), "ROME's token groups relative to the corrupted tokens: before, first_corrupted, "
           "middle_corrupted, last_corrupted, first_subsequent, further, last.", False),
        _f("patch_row", pa.int16(), "Image positions: vision-grid row of the first restored patch."),
        _f("patch_col", pa.int16(), "Image positions: vision-grid column of the first restored patch."),
        _f("computed", pa.bool_(), "False where the effect is exactly 0 by the causal mask (position before the first "
           "corrupted one, prefix checked bitwise equal): no forward ran, p_restored = p_corrupt.", False),
        _f("p_restored", pa.float32(), "p(answer) with the clean values restored (mean over noise draws).", False),
        _f("effect", pa.float32(), "p_restored - p_corrupt: the indirect effect (its mean over samples is ROME's AIE).",
           False),
    ]
)

ATTENTION_CONTRIBUTIONS = pa.schema(
    [
        _f("sample_id", pa.int64(), "The sample (clean run). Key part 1.", False),
        _f("target", pa.string(), "'last_constraint' (sources: image tokens) or 'last' (sources: text tokens, and the "
           "image as one group). Key part 2.", False),
        _f("layer", pa.int16(), "Decoder layer 1..L. Key part 3.", False),
        _f("source_position", pa.int32(), "Source position (the first image position for the image group). "
           "Key part 4.", False),
        _f("target_position", pa.int32(), "The target's position.", False),
        _f("source_role", pa.string(), "image | constraint | prompt | image_all (every image token as one group).",
           False),
        _f("patch_row", pa.int16(), "Image sources: vision-grid row."),
        _f("patch_col", pa.int16(), "Image sources: vision-grid column."),
        _f("token_uid", pa.int64(), "tokens.token_uid of the source where the prompt was captured, else null."),
        _f("contribution", pa.float32(), "|| sum_h A_{t,s} x_s W_V^h W_O^h ||: the norm of the source's share of the "
           "attention block's output at the target.", False),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "samples": SAMPLES,
    "tokens": TOKENS,
    "layers": LAYERS,
    "topk": TOPK,
    "vocab": VOCAB,
    "errors": ERRORS,
}
DERIVED_TABLES: dict[str, pa.Schema] = {"embeddings": EMBEDDINGS, "trace_runs": TRACE_RUNS, "traces": TRACES,
                                        "attention_contributions": ATTENTION_CONTRIBUTIONS}

# Sort keys: each table's Parquet files are sorted by these columns.
KEYS: dict[str, tuple[str, ...]] = {
    "samples": ("sample_id",),
    "tokens": ("token_uid",),
    "layers": ("token_uid", "lens", "layer"),
    "topk": ("token_uid", "lens", "layer", "rank"),
    "vocab": ("vocab_id",),
    "errors": ("sample_key",),
    "embeddings": ("embedding_id", "token_uid", "layer"),
    "trace_runs": ("trace_id",),
    "traces": ("trace_id", "kind", "layer", "position"),
    "attention_contributions": ("sample_id", "target", "layer", "source_position"),
}

# Units of the columns that have one (by column name: the same name means the same unit everywhere).
UNITS: dict[str, str] = {
    "p_out": "probability", "top1_prob": "probability", "prob": "probability",
    "logit_out": "logit", "entropy": "nats", "js_prev": "nats", "js_final": "nats", "kl_final": "nats",
    "js_dola": "nats (vocab-mean)", "rank_out": "rank (1 = top)", "rank": "rank (1 = top)",
    "layer": "layer 0..L", "step": "generation step", "position": "sequence position",
    "char_start": "characters", "char_end": "characters", "n_prompt_tokens": "tokens", "n_generated": "tokens",
    "x": "embedding units", "y": "embedding units",
    "p_clean": "probability", "p_corrupt": "probability", "p_restored": "probability",
    "effect": "probability difference", "contribution": "hidden-state norm",
}

# Older stores hold these columns in a narrower type; readers and verify accept both (values fit).
LEGACY_TYPES: dict[tuple[str, str], tuple[pa.DataType, ...]] = {("topk", "rank"): (pa.int8(),)}

# Changes to the layout within format v1, newest last (rendered into FORMAT.md).
FORMAT_NOTES: tuple[str, ...] = (
    "`topk.rank` is int32 (was int8, which wrapped to negative numbers for `--top-k` >= 128). Stores written "
    "with int8 ranks stay valid and readable (their k is at most 127; a resume keeps k, so its new parts "
    "hold the same values as int32).",
    "`tokens.is_constraint` (questions with a constraint) and the derived tables `trace_runs`, `traces` and "
    "`attention_contributions` (written by `kevo trace`) are additions; stores without them stay valid.",
    "Format v2: the hidden states became a sharded Zarr v3 group with coordinates and per-shard checksums "
    "(see Hidden states); the tables and the notes above are the same in v1 and v2. v1 stores are read as "
    "they are; `kevo store upgrade` rewrites one as v2.",
    "Within v2, hidden tails are no longer fsynced at their commit, and writers keep "
    "`hidden/hidden/checkpoint.json` (see Committing, resuming, locking). Stores are read and resumed as "
    "before; one written before this change has no checkpoint until its next commit whose files are all on disk.",
)
