"""Benchmark 6: openTSNE as ``kevo embed`` runs it, on

- 384 points (the paper's figure: 12 images x 32 layers of one answer token), D = 4,096: the whole
  of ``queries.embed.embed_points`` (exact PCA to 50 dimensions by SVD, then openTSNE);
- 20,000 points x 4,096 dimensions (e.g. 600 images x 33 layers): the whole of
  ``queries.embed.embed_points`` again, which at this size takes the randomized PCA (Halko et al.'s
  seeded range finder, numpy/scipy); its PCA step is also timed alone (``queries.embed.pca`` with
  the method embed_points picks). kevo's exact SVD (``pca(..., method="exact")``) costs O(n D^2)
  and is timed on 2,000 points only, to keep ``make bench`` short (its 20,000-point time is
  recorded separately in BENCHMARKS.md when measured).

Points are synthetic hidden states: per layer a centre, per image a spread that shrinks in the middle
layers (the "neck" of the paper's guitar figure), float32.
"""

from __future__ import annotations

import numpy as np

from bench.common import r3, timed


def points(n: int, d: int = 4096, layers: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((layers, d)).astype(np.float32) * 3
    lay = np.arange(n) % layers
    sigma = (0.3 + 1.5 * np.abs(lay / layers - 0.55)).astype(np.float32)
    return centres[lay] + rng.standard_normal((n, d), dtype=np.float32) * sigma[:, None]


def run(small: int = 384, large: int | None = 20000, exact_pca_points: int | None = 2000, n_jobs: int = 1,
        d: int = 4096) -> dict:
    from queries.embed import PCA_DIMS, embed_points, pca, pca_method

    out: dict = {}
    x = points(small, d, layers=32)
    t_pca, _ = timed(pca, x, PCA_DIMS)
    t_all, (y, info) = timed(embed_points, x, "tsne", n_jobs=n_jobs)
    out["small"] = {"points": small, "dims": d, "exact_pca_s": r3(t_pca, 4), "embed_points_total_s": r3(t_all, 4),
                    "tsne_s": r3(max(t_all - t_pca, 0.0), 4), "finite": bool(np.isfinite(y).all()), **info}
    if exact_pca_points:
        xe = points(exact_pca_points, d, layers=33)
        out["exact_pca"] = {"points": exact_pca_points, "dims": d,
                            "seconds": r3(timed(pca, xe, PCA_DIMS, method="exact")[0], 4)}
    if large:
        xl = points(large, d, layers=33)
        how = pca_method(large, d, PCA_DIMS)
        t_rp, _ = timed(pca, xl, PCA_DIMS, seed=0, method=how)  # the PCA step alone, as embed_points runs it
        t_all, (yl, info) = timed(embed_points, xl, "tsne", n_jobs=n_jobs)  # what `kevo embed` runs
        out["large"] = {"points": large, "dims": d, "function": "queries.embed.embed_points",
                        "pca_s": r3(t_rp, 4), "tsne_s": r3(max(t_all - t_rp, 0.0), 4), "total_s": r3(t_all, 4),
                        "finite": bool(np.isfinite(yl).all()), **info}
    return out


def exact_pca_main(argv=None) -> int:
    """`python bench/tsne_bench.py --exact-pca 20000`: time kevo's exact PCA alone (minutes at 20,000 x 4,096,
    so not part of `make bench`); writes bench/out/exact-pca.json, which bench/run.py folds into its report."""
    import argparse
    import json
    import os
    import sys
    import time
    from pathlib import Path

    ap = argparse.ArgumentParser(description=exact_pca_main.__doc__.splitlines()[0])
    ap.add_argument("--exact-pca", type=int, required=True, help="points (x 4,096 dimensions)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(a.threads)
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from bench.common import machine
    from queries.embed import PCA_DIMS, pca

    x = points(a.exact_pca, 4096, layers=33)
    t = time.perf_counter()
    pca(x, PCA_DIMS, method="exact")
    res = {"points": a.exact_pca, "dims": 4096, "seconds": round(time.perf_counter() - t, 1), "threads": a.threads,
           "command": f"bench/tsne_bench.py --exact-pca {a.exact_pca}", "machine": machine()}
    out = root / "bench" / "out" / "exact-pca.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(exact_pca_main())
