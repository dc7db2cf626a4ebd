"""Experiments as commands (``kevo experiment …``): each is ordinary ingests plus named queries.

``ingest`` never imports ``queries``: the analyses an experiment reuses (the paper's critical layer,
mutation events) are run through the ``kevo query``/``kevo sql`` commands, the same way a user would,
so the definitions live in one place (queries/sql/) and every derivation is a printed, copyable SQL text.

- :mod:`ingest.experiments.skip`: the skip experiments, ranges derived from a baseline store.
- :mod:`ingest.experiments.llm`: an LVLM's responses teacher-forced into its text-only LLM.
"""
