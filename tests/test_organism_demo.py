"""`kevo demo` end to end through the real command: world -> ingest -> eval -> queries -> figures -> report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_demo_runs_the_whole_pipeline(tmp_path):
    kevo = Path(sys.executable).parent / "kevo"
    out = tmp_path / "demo"
    r = subprocess.run([str(kevo), "demo", "--out", str(out), "--n-images", "8", "--task", "all"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "steps that did not run" not in r.stdout, r.stdout
    assert (out / "organism.kevo" / "manifest.json").is_file()
    assert (out / "world" / "data" / "annotations.json").is_file()
    summary = json.loads((out / "summary.json").read_text())
    gen = summary["metrics"]["generative"]
    assert gen["n"] == 8 and {"CHAIR", "Cover", "Hal", "Cog"} <= gen.keys()
    assert gen["Cover"] > 50  # the organism describes what it sees
    assert summary["metrics"]["discriminative"]["official"]["all"]["n"] > 8
    dist = summary["critical_layer_distribution"]["rows"]
    assert sum(row["n_critical"] for row in dist) > 0
    # object tokens under the emitted-token definition, through the named query: image-read objects stand out late
    emitted = summary["critical_layer_distribution_emitted"]
    assert set(emitted) == {"correct", "hallucinated"}
    assert emitted["correct"]["params"]["definition"] == "emitted" and emitted["correct"]["params"]["label"] == "correct"
    rows = emitted["correct"]["rows"]
    assert sum(row["n_critical"] for row in rows) == rows[0]["n_tokens"] > 0
    assert any(row["layer"] is not None and row["layer"] >= 4 and row["n_critical"] for row in rows)
    report = Path(summary["report"])
    assert report.is_file() and report.stat().st_size > 10_000
    assert {Path(f).name for f in summary["figures"]} >= {"critical-layers.png", "stages.png", "hallucination.png"}
    for line in ("AMBER generative", "critical layers", "paper's (any top-1)", "correct objects, emitted token top-1",
                 "object tokens", str(out)):
        assert line in r.stdout

    # the ingest went through the standard model path: the manifest's model is the shipped organism directory
    import ingest.organism

    weights = Path(ingest.organism.__file__).parent / "weights"
    manifest = json.loads((out / "organism.kevo" / "manifest.json").read_text())
    assert Path(manifest["model"]["path"]).resolve() == weights.resolve()
    assert manifest["model"]["family"] == "llava"


def test_demo_reports_a_failed_step(tmp_path):
    kevo = Path(sys.executable).parent / "kevo"
    r = subprocess.run([str(kevo), "demo", "--out", str(tmp_path / "d"), "--model", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "kevo ingest amber" in r.stderr and "nope" in (r.stderr + r.stdout)
