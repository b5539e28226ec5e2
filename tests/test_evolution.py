"""Fig. 4 feature evolution: each snapshot equals mining + gallery on a model holding those
weights; the session's model is never touched; snapshots load from dicts and files."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import zfwidgets as zf
from zfwidgets.backend.mining import mine
from zfwidgets.backend.project import gallery
from zfwidgets.errors import BadParameterError, OutOfRangeError, WeightsUnavailableError

LAYERS = ["features.relu1", "features.relu4"]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    session = zf.Session("zfnet_small", zf.load_sample("coffee"))
    images = zf.sample_collection(samples=["chelsea", "coffee", "rocket"])
    first = copy.deepcopy(session.model.state_dict())
    torch.manual_seed(1)
    other = zf.get_model("zfnet_small", weights=None).module.state_dict()
    return session, images, first, other


def test_each_snapshot_equals_mining_a_model_with_those_weights(setup, tmp_path):
    session, images, first, other = setup
    path = tmp_path / "late.pt"
    torch.save(other, path)
    before = {k: v.clone() for k, v in session.model.state_dict().items()}
    res = zf.feature_evolution(session, {"early": first, "late": path}, images, LAYERS,
                               channels=2, progress=False)
    assert res.snapshots == ["early", "late"] and res.layers == LAYERS
    for k, v in session.model.state_dict().items():          # the session's model untouched
        assert torch.equal(v, before[k])

    # the reference: a plain Session on a model loaded with the late weights
    late_model = zf.get_model("zfnet_small", weights=None).module
    late_model.load_state_dict(other)
    ref_session = zf.Session(zf.wrap_model(late_model, preprocessing=session.preprocessing),
                             session.image)
    ref = mine(ref_session, images, LAYERS, k=1, progress=False)
    for layer in LAYERS:
        np.testing.assert_allclose(res.values[("late", layer)], ref[layer].values[:, 0].numpy(),
                                   rtol=1e-6)
        # channels: the 2 strongest at the last snapshot
        expected = list(np.argsort(-ref[layer].values[:, 0].numpy(), kind="stable")[:2])
        assert res.channels[layer] == [int(c) for c in expected]
        for c in res.channels[layer]:
            g, r = res.gallery("late", layer, c), gallery(ref_session, ref, layer, c, k=1)
            assert g.image_ids == r.image_ids and g.boxes == r.boxes
            np.testing.assert_allclose(g.projections[0], r.projections[0], rtol=1e-5, atol=1e-6)
            assert res.strongest(layer, c)[1] == pytest.approx(float(g.values[0]))
    # different weights, different answers
    assert not np.allclose(res.values[("early", LAYERS[0])], res.values[("late", LAYERS[0])])


def test_explicit_channels_and_sequence_forms(setup):
    session, images, first, other = setup
    res = zf.feature_evolution(session, [("a", first), other], images, ["features.relu1"],
                               channels={"features.relu1": [3, 5]}, progress=False)
    assert res.snapshots == ["a", "snapshot 1"] and res.channels == {"features.relu1": [3, 5]}
    with pytest.raises(OutOfRangeError):
        res.gallery("a", "features.relu1", 4)


def test_bad_snapshots_and_parameters(setup, tmp_path):
    session, images, first, other = setup
    with pytest.raises(BadParameterError):
        zf.feature_evolution(session, {}, images, progress=False)
    with pytest.raises(BadParameterError):
        zf.feature_evolution(session, [("a", first), ("a", other)], images, progress=False)
    with pytest.raises(BadParameterError):
        zf.feature_evolution(session, [("a", 3)], images, progress=False)
    broken = dict(first)
    broken.pop("features.conv1.weight")
    with pytest.raises(WeightsUnavailableError, match="'bad'"):
        zf.feature_evolution(session, {"bad": broken}, images, progress=False)
    with pytest.raises(WeightsUnavailableError):
        zf.feature_evolution(session, [tmp_path / "missing.pt"], images, progress=False)
    with pytest.raises(OutOfRangeError):
        zf.feature_evolution(session, {"a": first}, images, ["features.relu1"],
                             channels={"features.relu1": [32]}, progress=False)
    with pytest.raises(BadParameterError):
        zf.feature_evolution(session, {"a": first}, images, channels=0, progress=False)


def test_figure_grid(setup):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from zfwidgets.plots.evolution import evolution_figure
    from zfwidgets.plots.deconv import projection_image

    session, images, first, other = setup
    res = zf.feature_evolution(session, {"e1": first, "e2": other}, images, LAYERS,
                               channels=2, progress=False)
    fig = Figure()
    FigureCanvasAgg(fig)
    fig, axes = evolution_figure(res, fig=fig)
    assert len(axes) == 4 and len(axes[0]) == 2 and axes[0][1].get_title() == "e2"
    c = res.channels[LAYERS[1]][1]
    shown = axes[3][1].get_images()[0].get_array()
    np.testing.assert_allclose(shown, projection_image(res.gallery("e2", LAYERS[1], c).projections[0]))
    _, both = evolution_figure(res, show="both")
    assert len(both[0]) == 4
    fig.canvas.draw()
    with pytest.raises(ValueError):
        evolution_figure(res, show="nothing")
