"""Dataset producers for ``kevo ingest``: each module yields :class:`DatasetItem` s (see base.py)."""

from ingest.datasets.base import Dataset, DatasetError, DatasetItem, Labeler, sha256_file

__all__ = ["Dataset", "DatasetError", "DatasetItem", "Labeler", "sha256_file"]
