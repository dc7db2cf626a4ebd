"""MultEdit: correct or insert what a multimodal model answers by editing one early MLP block.

The storage-and-transfer analysis (causal tracing, :mod:`ingest.trace`) finds the early MLP blocks
that carry what a visual question's answer needs. MultEdit then rewrites the output projection of
one such block (``mlp.down_proj``) with a closed-form, ridge-regularised update so that, at the
question's last constraint token, the block writes a value that makes a chosen target answer likely:

- key ``k``: the input of ``down_proj`` at the last constraint token;
- target value ``v = v0 + delta``: ``v0`` is ``down_proj``'s output there, ``delta`` optimised with Adam
  on ``-log p(first token of the target)`` plus a decay ``decay * ||delta|| / ||v0||^2``, with
  ``||delta||`` clipped to ``clamp * ||v0||``;
- update: ``W'^T = (K^T K + lambda I)^-1 (K^T V + lambda W^T)`` for the keys ``K`` and values ``V`` of
  every request at once (the multi-edit setting), i.e. the ``W'`` closest to ``W`` (weight ``lambda``)
  that maps each key to its value.

Modules: :mod:`.requests` (the request file), :mod:`.locate` (the constraint's tokens),
:mod:`.multedit` (keys, values, the update), :mod:`.finetune` (the fine-tuning baselines),
:mod:`.model_dir` (writing the edited HF directory), :mod:`.evaluate` (efficacy, generalisation,
specificity), :mod:`.cli` (``kevo edit``). The method and its parameters: docs/editing.md.
"""
