"""Causal tracing from the store (``kevo trace``): where a model stores and transfers what it answers.

corrupt.py        corruptions (swap:WORD, noise:K, image-noise:K) and the noise unit sigma
constraint.py     a question's constraint -> its input positions; the replacement token
hooks.py          the sites (hidden / mlp / attn at layer l) and the decoder's inputs
engine.py         Tracer: clean, corrupted and restored runs of one sample, with the exact shortcuts
contributions.py  attention contributions || sum_h A x W_V W_O || per source token
tables.py         results -> trace_runs, traces, attention_contributions (merged into the store)
run.py            trace_store: a store's samples, checked against the store, written back
cli.py            the `kevo trace` command

The method and why the shortcuts change no number: docs/tracing.md.
"""
