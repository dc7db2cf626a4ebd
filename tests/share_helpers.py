"""Fixtures for the sharing tests: a real S3 API server (moto, server mode) on a free loopback port.

tests/conftest.py registers the fixtures once for the whole suite (as ``s3_server`` and ``s3``).
Every process that talks to the server (this one through s3fs, the ``kevo`` subprocesses through
their environment) is pointed at it with the standard variables a user would set for MinIO:
``AWS_ENDPOINT_URL`` and dummy credentials. Nothing leaves the loopback interface.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KEVO = str(Path(sys.executable).with_name("kevo"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3:
    """One bucket on the test server, with the environment that points a process at it."""

    endpoint: str
    bucket: str
    env: dict = field(default_factory=dict)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    @property
    def fs(self):
        import s3fs

        # a fresh instance each time: no listing cache shared with what a subprocess changed
        return s3fs.S3FileSystem(endpoint_url=self.endpoint, key="testing", secret="testing",
                                 skip_instance_cache=True, use_listings_cache=False)

    def keys(self, prefix: str) -> list[str]:
        """Object keys under ``bucket/prefix``, relative to it."""
        base = f"{self.bucket}/{prefix.rstrip('/')}/"
        try:
            return sorted(p[len(base):] for p in self.fs.find(base))
        except FileNotFoundError:
            return []

    def run_kevo(self, *args: str, check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
        """The real ``kevo`` command, in a subprocess configured for this server."""
        env = {**os.environ, **self.env}
        p = subprocess.run([KEVO, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"kevo {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p


def s3_env(endpoint: str) -> dict:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        # never fall back to a real profile or the instance metadata service
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture(scope="session", name="s3_server")
def moto_s3_server():
    """A moto S3 server in a thread of this process, on a free loopback port; yields its endpoint."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(name="s3")
def s3_bucket(s3_server, monkeypatch) -> S3:
    """A fresh bucket, with this process's environment pointed at the server for the test."""
    env = s3_env(s3_server)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    bucket = f"lab-{uuid.uuid4().hex[:12]}"
    s = S3(endpoint=s3_server, bucket=bucket, env=env)
    s.fs.mkdir(bucket)
    return s


# ---------------------------------------------------------------------------------------------
# stores


def synthetic_meta(n_layers: int, n_tokens: int, top_k: int, hidden_size: int | None, vocab_size: int,
                   dataset: str = "synthetic") -> dict:
    return {
        "model": {"id": "synthetic", "family": "synthetic", "revision": None, "dtype": "float16",
                  "n_layers": n_layers, "hidden_size": hidden_size, "vocab_size": vocab_size},
        "lens": {"modes": ["final_norm"], "top_k": top_k, "dtype": "float32"},
        "generation": {"greedy": True, "max_new_tokens": n_tokens},
        "dataset": {"name": dataset},
        "capture": {"roles": ["generated"]},
    }


def write_sample_range(path, synth, s0: int, s1: int, *, batch_samples: int = 2, meta_patch: dict | None = None,
                       errors: list[str] = ()):
    """Write samples [s0, s1) of ``synth = synthesize(...)`` (+ its shape) as a store at ``path``.

    The same sample always gets the same key, whichever store it is written to, exactly as the
    same input item would in two ingests; batches of ``batch_samples`` are separate commits.
    ``errors``: keys of samples that "failed", written as ``errors`` rows.
    """
    from kevo_store import StoreWriter
    from queries.testing import slice_batch

    tables, hidden, n_tokens, n_layers, top_k = synth
    d = hidden.shape[-1] if hidden is not None else None
    meta = synthetic_meta(n_layers, n_tokens, top_k, d, tables["vocab"].num_rows)
    for sec, patch in (meta_patch or {}).items():
        meta[sec].update(patch)
    kw = {"hidden_size": d, "hidden_layers": list(range(n_layers)), "hidden_dtype": "float16"} if d else {}
    with StoreWriter(path, meta=meta, **kw) as w:
        w.write_vocab(tables["vocab"])
        for a in range(s0, s1, batch_samples):
            b = min(s1, a + batch_samples)
            samples, tokens, layers, topk, h = slice_batch(tables, hidden, a, b, n_tokens, n_layers,
                                                           n_layers * top_k, 1)
            w.write_batch(samples=samples.drop_columns(["sample_id"]) if "sample_id" in samples.column_names
                          else samples, tokens=tokens, layers=layers, topk=topk, hidden=h)
        if errors:  # samples that failed, as an ingest records them
            w.write_batch(errors={"sample_key": list(errors), "dataset": ["synthetic"] * len(errors),
                                  "item_id": [k.split(":")[-1] for k in errors], "stage": ["read"] * len(errors),
                                  "error_type": ["OSError"] * len(errors),
                                  "message": [f"cannot decode image of {k}" for k in errors],
                                  "time": ["2026-01-01T00:00:00Z"] * len(errors)})
    return path


def synth(n_samples: int = 6, n_tokens: int = 10, n_layers: int = 24, top_k: int = 4, hidden_size: int | None = 16,
          seed: int = 0):
    from queries.testing import synthesize

    tables, hidden, _truth = synthesize(n_samples, n_tokens, n_layers, top_k, hidden_size, seed)
    return tables, hidden, n_tokens, n_layers, top_k


# ---------------------------------------------------------------------------------------------
# a static HTTP host (like a lab web server or a bucket's website endpoint)


@contextlib.contextmanager
def static_http_server(directory):
    """Serve ``directory`` on a free loopback port with Range support and no directory listings."""
    import functools
    import http.server
    import threading

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def list_directory(self, path):
            self.send_error(404, "no listings")
            return None

        def send_head(self):
            rng = self.headers.get("Range")
            path = self.translate_path(self.path)
            if not rng or not os.path.isfile(path):
                return super().send_head()
            size = os.path.getsize(path)
            start_s, _, end_s = rng.removeprefix("bytes=").partition("-")
            if start_s == "":
                start, end = max(0, size - int(end_s)), size - 1
            else:
                start, end = int(start_s), min(int(end_s) if end_s else size - 1, size - 1)
            f = open(path, "rb")
            f.seek(start)
            self.send_response(206)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            return _Limited(f, end - start + 1)

        def end_headers(self):
            self.send_header("Accept-Ranges", "bytes")
            super().end_headers()

    class _Limited:
        def __init__(self, f, n):
            self.f, self.n = f, n

        def read(self, k=-1):
            k = self.n if k < 0 else min(k, self.n)
            data = self.f.read(k)
            self.n -= len(data)
            return data

        def close(self):
            self.f.close()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
