"""The randomization sanity check (Adebayo et al. 2018): the user's model untouched, the
layers randomized in the stated order, the similarities as scipy computes them."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import scipy.stats
import torch

import zfwidgets as zf
from test_class_maps import classifier, session
from test_hygiene import assert_same, snapshot
from zfwidgets.backend.defaults import sanity_layers
from zfwidgets.backend.explain import compute_map, randomize_layer, sanity_check_job, ssim
from zfwidgets.errors import BadParameterError, UnknownLayerError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CASCADE = ["3", "0.conv3", "0.conv2", "0.conv1"]         # linear first, then the convs, top down


def draw_by_hand(module, seed):
    """The documented re-initialization, written out."""
    gen = torch.Generator().manual_seed(seed)
    bound = 1 / math.sqrt(module.weight[0].numel())
    with torch.no_grad():
        for p in (module.weight, module.bias):
            p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=gen))


def test_cascade_order_is_the_learned_layers_from_the_output_down():
    s = session(classifier())
    assert sanity_layers(s) == CASCADE


@pytest.mark.parametrize("method", ["gradcam", "guided"])
def test_each_map_equals_a_copy_randomized_by_hand_in_that_order(method):
    s = session(classifier())
    result = zf.sanity_check(s, method, "dog", seed=5, progress=False)
    assert result.layers == CASCADE and result.target == (2,) and result.method == method
    assert len(result.maps) == len(CASCADE)
    twin = copy.deepcopy(s.model)
    layer = result.layer
    assert (layer == "0") == (method == "gradcam")
    base = compute_map(twin, s.input_tensor, method, [2], layer=layer)
    assert np.allclose(result.original.map, base.map)
    for i, name in enumerate(CASCADE):
        draw_by_hand(twin.get_submodule(name), 5 + i)
        want = compute_map(twin, s.input_tensor, method, [2], layer=layer)
        assert np.allclose(result.maps[i].map, want.map, atol=1e-6), name
        assert np.allclose(result.maps[i].raw, want.raw, atol=1e-6), name
    for i, m in enumerate(result.maps):
        o = result.original
        assert np.isclose(result.spearman[i], scipy.stats.spearmanr(o.raw.ravel(),
                                                                     m.raw.ravel())[0])
        assert np.isclose(result.spearman_abs[i],
                          scipy.stats.spearmanr(np.abs(o.raw).ravel(), np.abs(m.raw).ravel())[0])
        assert np.isclose(result.ssim[i], ssim(o.map, m.map))
    assert not np.allclose(result.maps[-1].map, result.original.map)


def test_randomize_layer_is_the_documented_draw():
    net = classifier()
    a, b = copy.deepcopy(net[3]), copy.deepcopy(net[3])
    randomize_layer(a, 11)
    draw_by_hand(b, 11)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    with pytest.raises(BadParameterError):
        randomize_layer(torch.nn.ReLU(), 0)


def test_the_users_model_and_random_state_are_untouched():
    net = classifier()
    net.train()
    net[0].conv1.weight.requires_grad_(False)
    calls = []
    own = net[0].conv2.register_forward_hook(lambda m, i, o: calls.append(1))
    s = session(net)
    x = s.input_tensor
    before = snapshot(net, x)
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    zf.sanity_check(s, "gradcam", progress=False)
    zf.sanity_check(s, "saliency", depth=2, progress=False)
    assert torch.equal(torch.get_rng_state(), rng)
    assert_same(before, snapshot(net, x))
    assert net.training and not net[0].conv1.weight.requires_grad
    assert net[0].conv2.weight.grad is None
    own.remove()


def test_closing_the_job_midway_leaves_the_model_alone():
    net = classifier()
    s = session(net)
    before = snapshot(net, s.input_tensor)
    job = sanity_check_job(s, "gradcam")
    first, second = job.step(), job.step()
    assert first.note == "original" and second.note == CASCADE[0]
    assert second.partial[0] == CASCADE[0]
    job.close()
    assert_same(before, snapshot(net, s.input_tensor))


def test_depth_layers_and_errors():
    s = session(classifier())
    r = zf.sanity_check(s, "saliency", 0, layers=["0.conv1", "3"], progress=False)
    assert r.layers == ["0.conv1", "3"] and r.layer is None
    assert zf.sanity_check(s, "saliency", 0, depth=1, progress=False).layers == ["3"]
    with pytest.raises(BadParameterError, match="no weight"):
        sanity_check_job(s, layers=["0.relu1"])
    with pytest.raises(UnknownLayerError):
        sanity_check_job(s, layers=["0.conv9"])
    with pytest.raises(BadParameterError):
        sanity_check_job(s, depth=0)
    with pytest.raises(BadParameterError):
        sanity_check_job(s, "occlusion")


def test_lite0_cascade_starts_at_the_classifier():
    s = zf.Session()
    order = sanity_layers(s)
    assert order[:3] == ["classifier", "head.conv", "blocks.15.project.conv"]
    assert order[-1] == "stem.conv" and len(order) == 50
    r = zf.sanity_check(s, "gradcam", depth=2, progress=False)
    assert r.layer == "head" and r.layers == order[:2]
    assert r.spearman.shape == r.ssim.shape == (2,)
