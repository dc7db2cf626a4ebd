"""Hallucination labels for generated responses.

* :mod:`ingest.labels.words`  -- the response split into words with character spans (Treebank-like).
* :mod:`ingest.labels.align`  -- word spans -> generated tokens (every overlapping token; the first
  one is the decision token), including byte-fallback pieces.
* :mod:`ingest.labels.nouns`  -- noun extraction: an offline rule-based approximation (default) or
  NLTK's tokenizer + tagger + WordNet lemmatizer when the user provides their data (faithful).
* :mod:`ingest.labels.amber`  -- AMBER's object rules (relation vocabulary, safe words, association
  and similarity matches) and its discriminative Yes/No scoring.
* :mod:`ingest.labels.chair`  -- CHAIR (Rohrbach et al., 2018) for COCO: the synonym table of the 80
  categories, its double words and special cases.
"""
