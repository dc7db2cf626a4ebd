"""Sharing stores: read them at a URL, push, pull (whole or in part), merge.

- ``remote``: ``store_fs(location)``, the filesystem layer for a path or an fsspec URL
  (``RemoteFS``: read-only, manifest-checked, endpoint and credentials from the environment);
- ``safety``: the checks that make reading someone else's store safe (strict JSON, paths, sizes,
  unnamed files, Zarr metadata);
- ``transfer``: what push and pull share (checked copies, listings, progress);
- ``push``, ``pull``: a local store to a URL and back, data first and the manifest last;
- ``merge``: several stores into one (``kevo store merge``);
- ``cli``: ``kevo store push|pull|merge`` (imports only click).

Nothing is imported here, so ``kevo --help`` stays light.
"""
