"""Plots: mosaic tiling, filters, deconv panel, top-k bars, headless overview and `zfwidgets render`."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zfwidgets import Session, projection_to_rgb
from zfwidgets.errors import BadParameterError
from zfwidgets.backend.defaults import opening_layer
from zfwidgets.plots.base import SEPARATOR_COLOR
from zfwidgets.plots.deconv import deconv_panel_figure, projection_image, update_deconv_panel
from zfwidgets.plots.mosaic import (feature_mosaic_figure, filters_to_rgb, mosaic_layout,
                                    normalize_maps, tile_maps, update_feature_mosaic)
from zfwidgets.plots.overview import render_overview
from zfwidgets.plots.topk import topk_figure, update_topk


def pixels(fig):
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def slow_normalize(m):
    m = np.asarray(m, np.float64)
    lo, hi = m.min(), m.max()
    return np.zeros_like(m) if hi == lo else (m - lo) / (hi - lo)


@pytest.fixture(scope="module")
def small_session():
    return Session("zfnet_small")


# ----------------------------------------------------------------------------- tiling

@pytest.mark.parametrize("count,h,w", [(7, 5, 3), (1, 4, 4), (16, 2, 2), (480, 14, 14)])
def test_tile_blocks_equal_normalized_maps(count, h, w):
    rng = np.random.default_rng(count)
    maps = rng.normal(size=(count, h, w)).astype(np.float32)
    maps[0] = 3.0  # a constant map becomes 0
    mosaic, layout = tile_maps(maps)
    assert mosaic.shape == layout.shape
    covered = np.zeros(mosaic.shape, bool)
    for k in range(count):
        y0, x0 = layout.origin(k)
        block = mosaic[y0:y0 + h, x0:x0 + w]
        np.testing.assert_allclose(block, slow_normalize(maps[k]), atol=1e-6)
        covered[y0:y0 + h, x0:x0 + w] = True
    # everything else (separators, empty cells) is NaN: the "bad" colour of the colormap
    assert np.isnan(mosaic[~covered]).all()
    assert not np.isnan(mosaic[covered]).any()
    if layout.rows > 1:  # one-pixel separators between rows
        assert np.isnan(mosaic[h, :]).all()


def test_tile_rgb_and_layer_normalization():
    rng = np.random.default_rng(0)
    maps = rng.uniform(-2, 5, size=(5, 3, 4, 3)).astype(np.float32)
    mosaic, layout = tile_maps(maps)
    assert mosaic.shape == layout.shape + (3,)
    for k in range(5):
        y0, x0 = layout.origin(k)
        np.testing.assert_allclose(mosaic[y0:y0 + 3, x0:x0 + 4], slow_normalize(maps[k]),
                                   atol=1e-6)
    y0, x0 = layout.origin(0)
    np.testing.assert_allclose(mosaic[y0 + 3, x0], SEPARATOR_COLOR)  # separator row
    gray = rng.normal(size=(4, 2, 2)).astype(np.float32)
    mosaic, layout = tile_maps(gray, normalize="layer")
    y0, x0 = layout.origin(2)
    expect = (gray[2] - gray.min()) / (gray.max() - gray.min())
    np.testing.assert_allclose(mosaic[y0:y0 + 2, x0:x0 + 2], expect, atol=1e-6)
    with pytest.raises(BadParameterError):
        tile_maps(np.zeros((2, 3)))
    with pytest.raises(BadParameterError):
        normalize_maps(gray, "channel")


def test_layout_locate_round_trip():
    layout = mosaic_layout(10, (3, 2))
    for k in range(10):
        y0, x0 = layout.origin(k)
        for y in range(3):
            for x in range(2):
                assert layout.locate(y0 + y, x0 + x) == (k, y, x)
                assert layout.locate(y0 + y + 0.3, x0 + x - 0.4) == (k, y, x)
    y0, x0 = layout.origin(0)
    assert layout.locate(y0 + 3, x0) is None         # separator below map 0
    assert layout.locate(-1, 0) is None
    assert layout.locate(np.nan, 0) is None
    assert layout.locate(*layout.shape) is None       # outside
    empty_cells = layout.rows * layout.cols - layout.count
    if empty_cells:
        r, c = divmod(layout.count, layout.cols)
        assert layout.locate(r * 4, c * 3) is None     # empty cell after the last map
    with pytest.raises(BadParameterError):
        layout.origin(10)


def test_filters_to_rgb_each_filter_scaled():
    w = torch.randn(6, 3, 5, 5)
    rgb = filters_to_rgb(w)
    assert rgb.shape == (6, 5, 5, 3)
    for k in range(6):
        np.testing.assert_allclose(rgb[k], slow_normalize(w[k].permute(1, 2, 0).numpy()),
                                   atol=1e-6)
    with pytest.raises(BadParameterError):
        filters_to_rgb(torch.randn(4, 1, 3, 3))


def test_projection_image_percentile_contrast():
    rng = np.random.default_rng(1)
    p = rng.normal(size=(3, 20, 20)).astype(np.float32)
    p[0, 0, 0] = 1000.0                              # one extreme pixel
    plain = projection_to_rgb(torch.from_numpy(p))
    shown = projection_image(p, 99.0)
    assert np.abs(plain - 0.5)[1:].max() < 0.02        # plain max scaling: nearly flat gray
    assert np.abs(shown - 0.5).max() == pytest.approx(0.5, abs=1e-6)  # clipped: full range
    assert np.isclose(projection_image(np.zeros((3, 4, 4))), 0.5).all()
    np.testing.assert_allclose(projection_image(p, None), plain)
    batch = projection_image(np.stack([p, 2 * p]), 99.0)
    np.testing.assert_allclose(batch[0], batch[1], atol=1e-6)


# ----------------------------------------------------------------------------- figures

def test_mosaic_figure_places_and_updates_in_place():
    maps = np.zeros((9, 6, 6), np.float32)
    maps[4] = 1.0                                    # only map 4 is bright
    maps[4, 0, 0] = 0.0                              # (a constant map would normalize to 0)
    fig, h = feature_mosaic_figure(maps, title="t", dpi=60)
    px = pixels(fig)
    y0, x0 = h.layout.origin(4)
    cx, cy = h.ax.transData.transform((x0 + 2.5, y0 + 2.5))
    height = px.shape[0]
    assert px[int(height - cy), int(cx)].min() > 240          # the bright tile is there...
    ox, oy = h.ax.transData.transform(h.layout.origin(0)[::-1])
    assert px[int(height - oy) + 2, int(ox) + 2].max() < 15   # ...and map 0 is black

    image = h.image
    update_feature_mosaic(h, selected=4, position=(1, 2))
    assert h.highlight.get_visible() and h.highlight.get_xy() == (x0 - 0.5, y0 - 0.5)
    assert tuple(h.marker.get_data()[0]) == (x0 + 2,) and tuple(h.marker.get_data()[1]) == (y0 + 1,)
    px2 = pixels(fig)
    assert (px2 != px).any()

    new = np.random.default_rng(2).normal(size=(30, 4, 4)).astype(np.float32)
    update_feature_mosaic(h, new, selected=29, title="new layer")
    assert h.image is image and len(h.ax.images) == 1         # same artist, not rebuilt
    assert h.layout.count == 30 and h.data.shape == h.layout.shape
    assert h.image.get_array().shape == h.layout.shape + (4,)
    y0, x0 = h.layout.origin(29)
    expect = np.rint(slow_normalize(new[29]) * 255)          # gray colormap: value -> gray
    np.testing.assert_array_equal(h.image.get_array()[y0:y0 + 4, x0:x0 + 4, 0], expect)
    y0, x0 = h.layout.origin(0)                              # the separator under map 0
    np.testing.assert_array_equal(h.image.get_array()[y0 + 4, x0, :3],
                                  np.round(255 * np.array(SEPARATOR_COLOR)))
    assert h.title.get_text() == "new layer"
    assert h.ax.get_xlim() == (-0.5, h.layout.shape[1] - 0.5)
    px3 = pixels(fig)
    assert (px3 != px2).any()
    update_feature_mosaic(h, selected=None)
    assert not h.highlight.get_visible() and not h.marker.get_visible()


def test_deconv_panel_update_changes_pixels_and_crop():
    rng = np.random.default_rng(3)
    image = rng.uniform(size=(32, 32, 3)).astype(np.float32)
    proj = np.full((32, 32, 3), 0.5, np.float32)
    fig, h = deconv_panel_figure(image, proj, (4, 6, 20, 18), titles=("a", "b", "c"),
                                 suptitle="s", dpi=60)
    np.testing.assert_allclose(h.crop.get_array(), image[4:20, 6:18])
    assert h.boxes[0].get_xy() == (5.5, 3.5) and h.boxes[0].get_width() == 12
    px = pixels(fig)
    proj2 = rng.uniform(size=(32, 32, 3)).astype(np.float32)
    update_deconv_panel(h, projection=proj2, box=(0, 0, 8, 8), titles=(None, "rule", None),
                        suptitle="s2")
    np.testing.assert_allclose(h.crop.get_array(), image[0:8, 0:8])
    assert h.titles[1].get_text() == "rule" and h.titles[0].get_text() == "a"
    assert h.suptitle.get_text() == "s2"
    px2 = pixels(fig)
    assert (px2 != px).any()
    update_deconv_panel(h, box=None)
    assert not h.boxes[0].get_visible()
    assert h.crop.get_array().shape == (32, 32, 3)


def test_rf_crop_figure_shows_patch_projection_and_scale(small_session):
    from zfwidgets.backend.project import projection_crop
    from zfwidgets.plots.deconv import rf_crop_figure, update_rf_crop_figure

    s = small_session
    layer = s.layers[1]
    c = int(s.activation(layer)[:, 5, 5].argmax())
    crop = projection_crop(s, layer, c, (5, 5), "deconvnet")
    fig, h = rf_crop_figure(crop, dpi=60)
    np.testing.assert_allclose(h.patch.get_array(), np.clip(crop.patch, 0, 1))
    np.testing.assert_allclose(h.projection.get_array(), np.clip(crop.rgb, 0, 1))
    labels = [t.get_text() for t in h.axes[2].get_yticklabels()]
    assert labels == [f"+{crop.scale:.3g}", "0", f"-{crop.scale:.3g}"]
    assert h.caption.get_text().startswith("symmetric scale")
    px = pixels(fig)
    bar = np.asarray(h.bar.get_array())
    assert bar[0, 0, 0] == 1.0 and bar[-1, 0, 0] == 0.0   # +scale white on top, -scale black
    deep = s.layers[-3]
    other = projection_crop(s, deep, 0, (0, 0), "guided")
    update_rf_crop_figure(h, other)
    assert h.titles[1].get_text() == "guided: unit (0, 0)"
    assert h.patch.get_array().shape == other.patch.shape
    assert (pixels(fig) != px).any()


def test_topk_update():
    fig, h = topk_figure([("cat", 0.7), ("dog", 0.2)], k=5, dpi=60)
    assert len(h.bars) == 5
    assert h.bars[0].get_width() == pytest.approx(0.7) and h.bars[2].get_width() == 0
    assert h.labels[1].get_text() == "dog" and h.values[0].get_text() == "70.0%"
    px = pixels(fig)
    update_topk(h, [("espresso", 0.9), ("cup", 0.05), ("x", 0.01)], title="new")
    assert h.labels[0].get_text() == "espresso" and h.bars[2].get_width() == pytest.approx(0.01)
    assert (pixels(fig) != px).any()


# ----------------------------------------------------------------------------- overview + CLI

def _check_pngs(paths):
    for path in paths:
        data = path.read_bytes()
        assert len(data) > 1000, path
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("RGB"))
        assert arr.shape[0] > 100 and arr.shape[1] > 100
        assert arr.std() > 5, f"{path} is blank"


def test_render_overview_writes_pngs(small_session, tmp_path):
    paths = render_overview(small_session, tmp_path / "out")
    names = [p.name for p in paths]
    layer = opening_layer(small_session)
    assert names == ["predictions.png", "layer1_filters.png", f"feature_maps_{layer}.png",
                     f"deconvnet_{layer}.png"]
    _check_pngs(paths)
    guided = render_overview(small_session, tmp_path / "g", layer=small_session.layers[0],
                             rule="guided")
    assert guided[-1].name == f"guided_{small_session.layers[0]}.png"


def test_cli_render_default_model(tmp_path, capsys):
    from zfwidgets.cli import main

    out = tmp_path / "figs"
    assert main(["render", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert str(out) in text and "predictions.png" in text
    assert "Egyptian cat" in text or "tabby" in text or "tiger cat" in text   # chelsea's top-5
    _check_pngs(sorted(out.glob("*.png")))
    assert len(list(out.glob("*.png"))) == 4


def test_cli_render_writes_to_a_new_temporary_folder_by_default(tmp_path, monkeypatch, capsys):
    import re
    import shutil

    from zfwidgets.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["render", "--model", "zfnet_small", "--image", "coffee"]) == 0
    text = capsys.readouterr().out
    (folder,) = re.findall(r"wrote 4 figures to (.+):", text)
    out = Path(folder)
    try:
        assert out.is_dir() and out.name.startswith("zfwidgets-figures-")
        assert sorted(p.name for p in out.glob("*.png")) == sorted(
            line.strip() for line in text.splitlines() if line.strip().endswith(".png"))
        assert not any(tmp_path.iterdir())                 # nothing left in the working folder
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_cli_errors_and_help(tmp_path, capsys):
    from zfwidgets.cli import main

    assert main(["render", "--model", "no_such_model", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no_such_model" in err
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert main(["render", "--model", "zfnet_small", "--image", str(bad),
                 "--out", str(tmp_path)]) == 2
    assert "bad.jpg" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for cmd in ("explore", "render", "mine"):
        assert cmd in text


def test_cli_explore_refuses_bad_input_before_starting(tmp_path, capsys):
    import socket

    from zfwidgets.cli import main

    assert main(["explore", "--no-browser", "--model", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["explore", "--no-browser", "--image", str(tmp_path / "missing.jpg")]) == 2
    assert "missing.jpg" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["explore", "--no-browser", "--port", str(port)]) == 2
    assert f"port {port}" in capsys.readouterr().err


def test_cli_explorer_notebook_and_sample_images(tmp_path):
    import json

    from zfwidgets.cli import explorer_notebook, open_session

    path = explorer_notebook(tmp_path / "x.ipynb")
    cells = json.loads(path.read_text())["cells"]
    source = "".join(cells[0]["source"])
    assert len(cells) == 1 and "ZFWIDGETS_MODEL" in source and "ZFWIDGETS_IMAGE" in source
    compile(source, "explorer", "exec")
    session = open_session("zfnet_small", "coffee")        # a sample name, not a file
    assert session.image_name == "coffee"


def test_cli_kernel_env_sets_the_allocator_unless_the_user_did(tmp_path):
    from zfwidgets.cli import ALLOCATOR_ENV, ENV_IMAGE, ENV_MODEL, kernel_env

    photo = tmp_path / "me.jpg"
    env = kernel_env("alexnet", str(photo), {"PATH": "/bin", "MALLOC_TOP_PAD_": "7"})
    assert env["PATH"] == "/bin" and env[ENV_MODEL] == "alexnet"
    assert env[ENV_IMAGE] == str(photo.resolve())
    assert env["MALLOC_TOP_PAD_"] == "7"                       # the user's own setting wins
    assert env["MALLOC_MMAP_THRESHOLD_"] == ALLOCATOR_ENV["MALLOC_MMAP_THRESHOLD_"]
    assert kernel_env("efficientnet_lite0", "coffee", {})[ENV_IMAGE] == "coffee"   # a sample
    assert kernel_env("efficientnet_lite0", None, {})[ENV_IMAGE] == ""
