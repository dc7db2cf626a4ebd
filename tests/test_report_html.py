"""kevo report: one self-contained HTML page that opens in a real headless browser."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import queries
from kevo_store import open_store
from queries.report import build_report

KEVO = str(Path(sys.executable).with_name("kevo"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(planted, tmp_path_factory):  # noqa: F811
    path, _ = planted
    out = tmp_path_factory.mktemp("report") / "report.html"
    r = subprocess.run([KEVO, "report", path, "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return path, out


def test_report_is_self_contained(report):
    path, out = report
    text = out.read_text()
    # nothing fetched from anywhere: no external src/href, every image is a data URI
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:|//|file:)""", text)
    imgs = re.findall(r"<img [^>]*src='([^']*)'", text)
    assert len(imgs) >= 7 and all(i.startswith("data:image/png;base64,") for i in imgs)
    for section in ("Critical layers", "Stages and mutation events", "Hallucinated vs correct object tokens",
                    "Mutation events (", "Provenance"):
        assert section in text
    s = open_store(path)
    # key tables and provenance from the manifest, with the parameters that produced them
    assert "critical-layers: lens=&#x27;final_norm&#x27;" in text
    assert f"tau={queries.bind('critical-layers').params['tau']}" in text
    n_events = queries.run(path, "mutation-events").height
    assert f"Mutation events ({n_events})" in text and "<td>hallucinated</td>" in text
    assert s.manifest["kevo_version"] in text and "synthetic" in text
    assert f"<td>topk</td><td>{s.rows('topk')}</td>" in text


def test_report_params_reach_the_queries(planted, tmp_path):  # noqa: F811
    path, _ = planted
    out = build_report(path, tmp_path / "r.html", lens="raw", tau=0.6)
    text = Path(out).read_text()
    assert "lens=&#x27;raw&#x27;" in text and "tau=0.6" in text


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium); "
                                               "the HTML checks above still ran")
def test_report_renders_in_headless_chromium(report, tmp_path):
    _, out = report
    shot = tmp_path / "shot.png"
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1800",
                        f"--screenshot={shot}", out.resolve().as_uri()],
                       capture_output=True, text=True, timeout=180)
    assert shot.exists(), r.stderr[-2000:]
    im = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert im.shape[:2] == (1800, 1200)
    assert im.std() > 20, "the screenshot is blank"
    # the header bar (dark blue) and figures (many colours) were rendered, not an error page
    assert (np.abs(im[20, 600] - np.array([0x1F, 0x3B, 0x57])) < 12).all()
    assert len(np.unique(im.reshape(-1, 3), axis=0)) > 200
