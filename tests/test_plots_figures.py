"""Figures are written as PNG and SVG and are not blank; the JS heatmap normalisations do what they say."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kevo_store import open_store
from kevo_store.errors import KevoError
from queries import plots
from queries.embed import embed_store

KEVO = str(Path(sys.executable).with_name("kevo"))


def assert_not_blank(png: str, min_std: float = 10.0) -> None:
    """A figure with content: many distinct colours and real pixel variance (a blank canvas has ~0)."""
    im = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64)
    assert im.shape[0] > 100 and im.shape[1] > 100
    assert im.std() > min_std, f"{png}: pixel std {im.std():.1f}"
    colours = len(np.unique(im.reshape(-1, 3), axis=0))
    assert colours > 20, f"{png}: only {colours} colours"
    non_white = (im.sum(axis=2) < 3 * 250).mean()
    assert non_white > 0.03, f"{png}: {non_white:.1%} non-white pixels"


def assert_svg(path: str) -> None:
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    paths = [e for e in root.iter() if e.tag.endswith("path") or e.tag.endswith("use")]
    assert len(paths) > 20


@pytest.mark.parametrize("kind", ["candidates", "js-heatmap", "stages", "critical-layers", "divergence",
                                  "hallucination"])
def test_each_figure_png_and_svg(planted, kind, tmp_path):  # noqa: F811
    path, _ = planted
    files = plots.plot(kind, path, tmp_path / kind)
    assert [Path(f).suffix for f in files] == [".png", ".svg"]
    assert_not_blank(files[0])
    assert json.loads(Image.open(files[0]).text["Description"])["kevo_plot"] == kind  # what drew it
    assert_svg(files[1])


def test_tsne_figure_coloured_by_layer_group(with_hidden, tmp_path):  # noqa: F811
    path, _ = with_hidden
    out = embed_store(path, where="is_answer", layers=list(range(0, 33, 4)), method="pca", embedding_id="fig")
    files = plots.plot("tsne", path, tmp_path / "t.png", embedding_id=out.embedding_id)
    assert_not_blank(files[0])
    c, m = plots.layer_groups(path, out.frame["token_uid"].unique().to_list())
    assert c is not None and 0 < c < 32


def test_candidates_figure_draws_the_planted_story(planted, tmp_path):  # noqa: F811
    """Token 0 (camera displaced by water at 27): two candidate areas and the critical/mutation lines."""
    path, _ = planted
    fig = plots.figure("candidates", path, token_uid=0)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["▁camera", "▁water (emitted)", "critical layer 20", "mutation 27"]
    plots.plt.close(fig)
    assert plots.default_token(path) == 0  # the first token with a top-1 mutation event


def test_js_heatmap_normalisations(planted):  # noqa: F811
    path, _ = planted
    s = open_store(path)
    raw = s.sql("""SELECT token_uid, layer, js_prev FROM layers WHERE lens = 'final_norm' AND layer > 0
                   AND token_uid IN (SELECT token_uid FROM tokens WHERE sample_id = 0) ORDER BY token_uid, layer""")
    want = raw["js_prev"].to_numpy().reshape(12, 32).astype(np.float64)
    m, labels, layers = plots.js_matrix(path, sample_id=0, norm="none")
    assert layers == list(range(1, 33)) and len(labels) == 12
    np.testing.assert_allclose(m, want)
    g, _, _ = plots.js_matrix(path, sample_id=0, norm="global")
    np.testing.assert_allclose(g, want / want.max())
    c, _, _ = plots.js_matrix(path, sample_id=0, norm="column")
    np.testing.assert_allclose(c.min(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(c.max(axis=0), 1)
    np.testing.assert_allclose(c[:, 5], (want[:, 5] - want[:, 5].min()) / np.ptp(want[:, 5]))
    with pytest.raises(KevoError, match="no layers rows"):
        plots.js_matrix(path, where="token_uid < 0")


def test_cli_plot(planted, tmp_path):  # noqa: F811
    path, _ = planted
    out = tmp_path / "heat.svg"
    r = subprocess.run([KEVO, "plot", "js-heatmap", path, "-o", str(out), "--norm", "global", "--sample", "2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    assert_svg(str(out))
    r = subprocess.run([KEVO, "plot", "tsne", path, "-o", str(tmp_path / "x.png")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode != 0 and "has no embeddings; run `kevo embed" in r.stderr
