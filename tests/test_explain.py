"""zf.explain: every class map beside the exact occlusion map; the agreement numbers against
scipy, the SSIM against scikit-image, the deletion curves against explicit loops."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

import zfwidgets as zf
from test_class_maps import classifier, session
from zfwidgets.backend.explain import (deletion_curve, explain_job, grid_means, spearman, ssim)
from zfwidgets.backend.explain.agreement import deletion_order, rankdata
from zfwidgets.backend.jobs import Step
from zfwidgets.errors import BadParameterError, Cancelled

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- the numbers

@pytest.mark.parametrize("seed", range(4))
def test_spearman_and_ranks_equal_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, (7, 9)).astype(float)          # many ties
    b = a + rng.normal(0, 2, a.shape).round()
    assert np.allclose(rankdata(a), scipy.stats.rankdata(a.ravel()))
    assert np.isclose(spearman(a, b), scipy.stats.spearmanr(a.ravel(), b.ravel())[0])
    c, d = rng.normal(size=50), rng.normal(size=50)
    assert np.isclose(spearman(c, d), scipy.stats.spearmanr(c, d)[0])
    assert np.isclose(spearman(c, -c), -1.0) and np.isclose(spearman(c, np.exp(c)), 1.0)


def test_spearman_of_a_constant_is_nan_and_bad_input_is_refused():
    assert np.isnan(spearman(np.ones(5), np.arange(5)))
    with pytest.raises(BadParameterError):
        spearman(np.arange(3), np.arange(4))
    with pytest.raises(BadParameterError):
        spearman([1.0, np.nan], [1.0, 2.0])


@pytest.mark.parametrize("seed", range(3))
def test_ssim_equals_scikit_image(seed):
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(seed)
    a = rng.random((20, 17))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    want = metrics.structural_similarity(a, b, data_range=1.0)
    assert np.isclose(ssim(a, b, normalize=False), want, atol=1e-6)
    assert np.isclose(ssim(a, a), 1.0)


def test_grid_means_equal_a_loop_over_squares():
    rng = np.random.default_rng(0)
    values = rng.random((30, 26))
    rows, cols, size = np.array([0, 5, 10]), np.array([0, 7, 14, 16]), 10
    want = np.array([[values[r:r + size, c:c + size].mean() for c in cols] for r in rows])
    assert np.allclose(grid_means(values, rows, cols, size), want, atol=1e-6)


def test_deletion_order_ranks_pixels_or_squares():
    v = np.array([[0.0, 5.0, 1.0], [9.0, 2.0, np.nan]])
    assert list(deletion_order(v)) == [3, 1, 4, 2, 0, 5]
    cells = np.array([[1, 1, 9, 9], [1, 1, 9, 9], [5, 5, 0, 0]], float)
    # squares of 2: (0,1) mean 9 first, then (1,0) mean 5, (0,0) mean 1, (1,1) mean 0
    assert list(deletion_order(cells, 2)) == [2, 3, 6, 7, 8, 9, 0, 1, 4, 5, 10, 11]


def test_deletion_curve_equals_a_loop_of_greyed_images():
    net = classifier()
    torch.manual_seed(0)
    x = torch.randn(1, 3, 24, 20)
    order = np.random.default_rng(1).permutation(24 * 20)
    fill = torch.tensor([0.1, -0.2, 0.3]).view(1, 3, 1, 1)
    got = deletion_curve(net, x, order, [1, 3], fill, steps=5, batch_size=4)
    want = []
    for k in range(6):
        img = x.clone()
        for flat in order[:round(k * 480 / 5)]:
            img[0, :, flat // 20, flat % 20] = fill[0, :, 0, 0]
        with torch.no_grad():
            p = torch.softmax(net(img), 1)[0]
        want.append(float(p[1] + p[3]))
    assert np.allclose(got, want, atol=1e-6)


# ----------------------------------------------------------------------------- zf.explain

@pytest.fixture(scope="module")
def explained():
    s = session(classifier(), size=(48, 40))
    return s, zf.explain(s, "dog", size=12, stride=4, steps=6, progress=False)


def test_explain_holds_every_map_and_the_exact_occlusion_map(explained):
    s, e = explained
    assert e.target == (2,) and e.label == "dog" and e.layer == "0"
    assert e.methods == ["saliency", "guided", "deconvnet", "gradcam", "guided_gradcam"]
    assert not e.skipped
    assert np.array_equal(e.maps["saliency"].map, s.saliency(2).map)
    assert np.array_equal(e.maps["gradcam"].map, s.gradcam(2).map)
    occ = s.occlusion(size=12, stride=4, target=2, method="plain", progress=False)
    assert np.allclose(e.occlusion.prob, occ.prob, atol=1e-6)
    assert np.allclose(e.drop, occ.base_prob - occ.prob, atol=1e-6)


def test_agreement_is_spearman_of_square_means_with_the_drop(explained):
    _, e = explained
    occ = e.occlusion
    for name, cmap in e.maps.items():
        pooled = np.array([[cmap.map[r:r + occ.size, c:c + occ.size].mean() for c in occ.cols]
                           for r in occ.rows])
        assert np.allclose(e.pooled[name], pooled, atol=1e-6)
        want = scipy.stats.spearmanr(pooled.ravel(), e.drop.ravel())[0]
        assert np.isclose(e.agreement[name], want, atol=1e-9), name
    assert len(set(np.round(list(e.agreement.values()), 6))) > 1   # the methods differ


def test_deletion_curves_rank_squares_of_the_stride(explained):
    s, e = explained
    assert set(e.deletion) == set(e.methods) | {"occlusion", "random"}
    assert np.allclose(e.fractions, np.linspace(0, 1, 7))
    pre = s.preprocessing
    fill = zf.backend.occlusion.fill_tensor("gray", s.input_tensor, pre.mean, pre.std)
    order = deletion_order(e.maps["gradcam"].map, e.occlusion.stride)
    want = deletion_curve(s.model, s.input_tensor, order, [2], fill, steps=6)
    assert np.allclose(e.deletion["gradcam"], want)
    p1 = float(s.probabilities()[2])
    assert all(np.isclose(c[0], p1, atol=1e-6) for c in e.deletion.values())
    area = e.deletion_area()
    assert np.isclose(area["gradcam"], np.trapezoid(e.deletion["gradcam"], e.fractions))


def test_explain_job_steps_and_partials():
    s = session(classifier(), size=(32, 32))
    job = explain_job(s, 0, methods=["saliency", "gradcam"], size=16, stride=8, steps=2)
    steps = []
    while (step := job.step()) is not None:
        steps.append(step)
    assert all(isinstance(st, Step) for st in steps)
    assert [st.done for st in steps] == sorted(st.done for st in steps)
    assert steps[-1].done == steps[-1].total == 2 + 9 + 2 + 2
    assert [st.partial.method for st in steps[:2]] == ["saliency", "gradcam"]
    assert job.result.methods == ["saliency", "gradcam"]


def test_explain_skips_what_the_model_cannot_do_and_validates_first():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 3)).eval()
    s = session(net, size=(16, 16))
    e = zf.explain(s, 0, size=8, stride=8, steps=2, progress=False)
    assert set(e.skipped) == {"guided", "deconvnet", "guided_gradcam"}
    assert e.methods == ["saliency", "gradcam"]
    with pytest.raises(BadParameterError):
        explain_job(s, methods=["occlusion"])
    with pytest.raises(BadParameterError):
        explain_job(s, size=40)
    with pytest.raises(BadParameterError):
        explain_job(s, steps=0)
    with pytest.raises(Cancelled):
        zf.explain(s, size=8, stride=8, progress=False, should_stop=lambda: True)
