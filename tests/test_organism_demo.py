"""`kevo demo` end to end through the real command (world -> ingest -> eval -> queries -> VQA ->
embed -> figures -> report), and the organism's findings recomputed on the demo store with kevo's
own queries, so that a retraining cannot silently lose them."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from ingest.organism import world

README = Path(__file__).resolve().parents[1] / "ingest" / "organism" / "README.md"

# the demo runs in about two minutes on an idle 2-core machine; a shared, loaded one needs far longer
pytestmark = pytest.mark.timeout(2400)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The default demo (40 images, captions and yes/no questions, 16 VQA images, 24 traced questions:
    12 colour, 12 existence of an object shown) on the shipped weights."""
    kevo = Path(sys.executable).parent / "kevo"
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    r = subprocess.run([str(kevo), "demo", "--out", str(out)], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return out, r.stdout, json.loads((out / "summary.json").read_text())


def test_demo_runs_the_whole_pipeline(demo):
    out, stdout, summary = demo
    assert "steps that did not run" not in stdout, stdout
    assert (out / "organism.kevo" / "manifest.json").is_file()
    assert (out / "vqa.kevo" / "manifest.json").is_file()
    assert (out / "world" / "data" / "annotations.json").is_file()
    gen = summary["metrics"]["generative"]
    assert gen["n"] == 40 and {"CHAIR", "Cover", "Hal", "Cog"} <= gen.keys()
    disc = summary["metrics"]["discriminative"]["official"]
    assert disc["all"]["n"] > 40
    emitted = summary["critical_layer_distribution_emitted"]
    assert set(emitted) == {"correct", "hallucinated"}
    assert (emitted["correct"]["params"]["definition"] == "emitted"
            and emitted["correct"]["params"]["label"] == "correct")
    for name in ("report.html", "report-vqa.html"):
        assert (out / name).is_file() and (out / name).stat().st_size > 10_000
    figures = {Path(f).name for f in summary["figures"]}
    assert figures >= {"critical-layers.png", "stages.png", "hallucination.png", "tsne-vqa.png", "trace.png",
                       "attention-patches.png"}
    # the causal trace: every sample traced, per question kind, its peaks per kind of block, its report
    tr = summary["trace"]
    assert tr["name"] == "swap:house/w1" and tr["n_samples"] == 24
    assert {q["kind"]: q["n"] for q in tr["questions"]} == {"attribute": 12, "present": 12}
    assert {p["kind"] for p in tr["peaks"]} == {"hidden", "mlp", "attn"}
    assert (out / "report-trace.html").is_file() and "trace-peaks" in (out / "report-trace.html").read_text()
    # the skip experiments on the demo store: derived from it, every variant ingested and compared
    sk = summary["skip"]
    assert [v["variant"] for v in sk["variants"]] == ["skip.1", "skip.2", "skip.3"]
    assert all("note" in v or {"token_agreement", "CHAIR", "Cover", "Hal"} <= v.keys() for v in sk["variants"])
    assert sk["derivation"]["m1"] <= sk["derivation"]["m2"] <= _n_layers(out)
    assert (out / "skip" / "comparison.json").is_file()
    # the paper's Fig. 3 is drawn when a hallucinated token has a top-1 mutation event to show
    assert ("candidates-hallucination.png" in figures) == (summary["displaced_in_image"]["n_events"] > 0)
    assert "t-SNE" in (out / "report-vqa.html").read_text()
    for line in ("AMBER generative", "critical layers", "paper's (any top-1)", "correct objects, emitted token top-1",
                 "object tokens", "mutation contrast", "cross-image VQA", "causal trace swap:house/w1",
                 "peak AIE (layer)", "skip experiments", "derived: critical layer c =",
                 str(out)):
        assert line in stdout
    # the displaced candidates are listed when hallucinated tokens have top-1 mutation events
    assert ("displaced candidates" in stdout) == (summary["displaced_in_image"]["n_events"] > 0)
    # the ingest went through the standard model path: the manifest's model is the shipped organism directory
    import ingest.organism

    weights = Path(ingest.organism.__file__).parent / "weights"
    manifest = json.loads((out / "organism.kevo" / "manifest.json").read_text())
    assert Path(manifest["model"]["path"]).resolve() == weights.resolve()
    assert manifest["model"]["family"] == "llava"


def _n_layers(out: Path) -> int:
    """The decoder's layer count, from the demo store's manifest."""
    from kevo_store import open_store

    return open_store(str(out / "organism.kevo")).n_layers


def _summary_lines(text: str) -> list[str]:
    """The numeric lines of the demo's summary (paths and timing dropped)."""
    start = text.index("  AMBER generative")
    return [ln.rstrip() for ln in text[start:].splitlines()
            if ln.strip() and "steps that did not run" not in ln and not ln.startswith("  skipped")]


def test_demo_numbers_are_what_the_readme_says(demo):
    """The organism README quotes the demo's summary; on the shipped weights they agree line for line."""
    _, stdout, _ = demo
    block = re.search(r"<!-- demo-summary -->\n```\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert block, "the organism README lost its demo-summary block"
    assert _summary_lines(stdout) == _summary_lines(block.group(1))


def _acceptance(out: Path) -> dict:
    """The acceptance numbers, recomputed from the demo's stores with kevo's queries."""
    from kevo_store import open_store
    from queries.embed import token_dispersion
    from queries.engine import run

    store = open_store(str(out / "organism.kevo"))
    n_layers = int(store.sql("SELECT max(layer) AS m FROM layers")["m"][0])
    dist = [r for r in run(store, "critical-layer-distribution").to_dicts()]
    reached = sorted(r["layer"] for r in dist if r["layer"] is not None for _ in range(r["n_critical"]))
    total = sum(r["n_critical"] for r in dist)
    contrast = {r["token_class"]: r for r in run(store, "hallucination-contrast").to_dicts()}
    ev = run(store, "mutation-events", label="hallucinated").to_dicts()
    ann = {int(r["item_id"]): json.loads(r["annotations"])
           for r in store.sql("SELECT item_id, annotations FROM samples").to_dicts()}
    item = {r["sample_id"]: int(r["item_id"]) for r in store.sql("SELECT sample_id, item_id FROM samples").to_dicts()}
    top1 = [e for e in ev if e["displaced_id"] is not None]
    in_image = sum(e["displaced_piece"].lstrip("▁") in ann[item[e["sample_id"]]]["truth"] for e in top1)
    # the biased partner on images that show its object alone (captions, from the store's labels)
    said = {(r["sample_id"], r["object"]) for r in store.sql(
        "SELECT sample_id, object FROM tokens WHERE label = 'hallucinated'").to_dicts()}
    alone = hits = 0
    for sid, i in item.items():
        a = ann[i]
        if a.get("type") != "generative":
            continue
        for x, y in world.BIAS_PAIRS.items():
            if x in a["truth"] and y not in a["truth"]:
                alone += 1
                hits += (sid, y) in said
    disp = token_dispersion(str(out / "vqa.kevo"), "is_answer")["rel_dispersion"].to_list()
    q = len(disp) // 4
    metrics = json.loads((out / "eval_amber.json").read_text())
    return {
        "n_layers": n_layers,
        "critical_median": statistics.median_low(reached),
        "critical_low_share": sum(r["n_critical"] for r in dist if r["layer"] is not None and r["layer"] <= 1) / total,
        "mut_hallucinated": contrast["hallucinated"]["mutation_rate"],
        "mut_correct": contrast["correct"]["mutation_rate"],
        "n_top1_events": len(top1),
        "displaced_in_image": in_image / max(1, len(top1)),
        "dispersion_ratio": (sum(disp[-q:]) / q) / (sum(disp[:q]) / q),
        "cover": metrics["generative"]["Cover"],
        "partner_rate": hits / max(1, alone),
        "yes_no_accuracy": metrics["discriminative"]["official"]["all"]["accuracy"],
    }


def test_acceptance_numbers_on_the_demo_store(demo):
    """The paper's findings on the shipped organism, recomputed from the demo stores. The thresholds
    are the targets where the organism reaches them, else the level it does reach (measured on the
    shipped weights: critical median 1 with 96% at layers 0-1; mutations on 55% of 20 hallucinated
    and 31% of 109 correct object tokens; 3 of 6 top-1 events displace an object in the image;
    dispersion 4.3x; Cover 85.8; partner 35% of 20; yes/no 75.2). The organism README's acceptance
    table states which targets are missed (critical layers, the mutation contrast, the partner rate)."""
    out, _, _ = demo
    a = _acceptance(out)
    # (1) target (median in the upper half, < 10% at layers 0-1) NOT met: without the first
    # generation's outlier dimension the lens reads most tokens at layers 0-1
    assert a["critical_median"] <= 1 and a["critical_low_share"] > 0.9, a
    # (2) mutations mark hallucinations: the 30% level met, the 3x contrast not (1.8x)
    assert a["mut_hallucinated"] >= 0.30, a
    assert a["mut_hallucinated"] >= 1.5 * a["mut_correct"], a
    assert a["n_top1_events"] >= 3 and a["displaced_in_image"] >= 0.3, a
    # (3) the "guitar": answer tokens agree across images in shallow layers, spread in deep ones (met)
    assert a["dispersion_ratio"] >= 2.0, a
    # (6) still a good model: Cover and yes/no accuracy met; the partner rate at the level reached
    assert a["cover"] >= 85.0, a
    assert a["partner_rate"] >= 0.30, a
    assert a["yes_no_accuracy"] >= 75.0, a


def test_demo_reports_a_failed_step(tmp_path):
    kevo = Path(sys.executable).parent / "kevo"
    r = subprocess.run([str(kevo), "demo", "--out", str(tmp_path / "d"), "--model", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "kevo ingest amber" in r.stderr and "nope" in (r.stderr + r.stdout)
