"""Test support for the analyses: synthetic stores whose right answers are known (the answer key).

    from queries.testing import Plant, build_synthetic_store
    truth = build_synthetic_store("planted.kevo", n_samples=30, plants=[Plant("mutation", ...)])

``plan`` (each token's story), ``render`` (the store's tables), ``truth`` (what was planted, under
each definition of docs/analyses.md) and ``build`` (writing the store). No model, no torch.
"""

from .build import build_scaled_store, build_synthetic_store, slice_batch, synthesize
from .plan import DEFAULTS, KINDS, LABELS, OBJECT_WORDS, Plant
from .truth import DEFINITIONS, SyntheticTruth

__all__ = ["DEFAULTS", "DEFINITIONS", "KINDS", "LABELS", "OBJECT_WORDS", "Plant", "SyntheticTruth",
           "build_scaled_store", "build_synthetic_store", "slice_batch", "synthesize"]
