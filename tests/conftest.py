"""Fixtures shared by many test modules, defined once here so a session fixture is built once per run.

- ``planted``, ``other_seed``, ``with_hidden``: synthetic stores with planted answers (tests.queries_helpers);
- ``s3_server`` and ``s3``: a real S3 API server (moto) on loopback and a fresh bucket (tests.share_helpers).

Tiny models of every family come from ``tests.model_helpers.tiny_model_dir(family)``, built once per
process and cached.
"""

from tests.queries_helpers import other_seed, planted, with_hidden  # noqa: F401
from tests.share_helpers import moto_s3_server, s3_bucket  # noqa: F401
