"""Occlusion of several classes at once (their probabilities summed) and the default-target
policy (the top class and its near-synonyms among the top 5, by ImageNet's coarse groups)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from zfwidgets import Session, wrap_model
from zfwidgets.backend.defaults import IMAGENET_GROUPS, target_classes
from zfwidgets.backend.occlusion import occlude, occlusion_grid
from zfwidgets.errors import BadParameterError, UnknownClassError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CATS = ["tabby", "tiger cat", "Egyptian cat"]


@pytest.fixture(scope="module")
def lite0():
    return Session("efficientnet_lite0")


def plain_probs(session, size, stride):
    """P(every class) ``[R, C, classes]`` of occluded copies, one forward pass each (gray)."""
    x = session.input_tensor
    rows, cols = occlusion_grid(x.shape[2], x.shape[3], size, stride)
    out = []
    with torch.no_grad():
        for top in rows:
            for left in cols:
                out.append(torch.softmax(session.model(occlude(x, [(top, left)], size)), 1)[0])
    return torch.stack(out).reshape(len(rows), len(cols), -1).numpy()


def test_summed_classes_equal_the_sum_of_single_class_maps(lite0):
    ids = [lite0.labels.index(name) for name in CATS]
    kw = dict(size=64, stride=40, method="incremental", progress=False)
    summed = lite0.occlusion(target=CATS, **kw)
    singles = [lite0.occlusion(target=name, **kw) for name in CATS]
    assert summed.targets == tuple(ids) and summed.target == ids[0]
    assert summed.target_label == "tabby + tiger cat + Egyptian cat"
    np.testing.assert_allclose(summed.prob, sum(r.prob for r in singles), atol=2e-6, rtol=0)
    assert summed.base_prob == pytest.approx(sum(r.base_prob for r in singles), abs=1e-6)
    assert summed.base_prob == pytest.approx(float(lite0.probabilities()[ids].sum()), abs=1e-6)
    # the cats share the probability: the sum is not any one of them
    assert all(np.abs(summed.prob - r.prob).max() > 0.05 for r in singles)
    # against plain forward passes (an independent path)
    ref = plain_probs(lite0, 64, 40)[..., ids].sum(-1)
    np.testing.assert_allclose(summed.prob, ref, atol=1e-5, rtol=1e-4)
    # heat maps, channels and labels follow
    drop = summed.heatmap("drop")
    assert np.nanmax(np.abs(drop - (summed.base_prob - summed.heatmap("prob")))) < 1e-6
    other = summed.for_channel(3)
    assert other.targets == summed.targets and other.target_label == summed.target_label
    assert {summed.labels[i] for i in ids} == set(CATS)


def test_target_forms(lite0):
    kw = dict(size=112, stride=112, progress=False)
    tabby = lite0.labels.index("tabby")
    one = lite0.occlusion(target=tabby, **kw)
    assert one.targets == (tabby,) and one.target_label == "tabby"
    mixed = lite0.occlusion(target=[tabby, "tiger cat", tabby], **kw)  # ids, labels, repeats
    assert mixed.targets == (tabby, tabby + 1)
    np.testing.assert_allclose(mixed.prob, one.prob + lite0.occlusion(target="tiger cat",
                                                                      **kw).prob, atol=2e-6)
    default = lite0.occlusion(**kw)
    assert default.targets == (int(lite0.probabilities().argmax()),)
    with pytest.raises(BadParameterError):
        lite0.occlusion(target=[], **kw)
    with pytest.raises(UnknownClassError):
        lite0.occlusion(target=["tabby", "tabbby cat"], **kw)


class _Stub:
    """What the policy reads of a session: labels and logits."""

    def __init__(self, labels, logits):
        self.labels, self.logits = labels, logits

    def probabilities(self):
        return torch.softmax(self.logits, 0)


def _logits(order):
    """1000 logits whose most probable classes are ``order``, in that order."""
    logits = torch.zeros(1000)
    for rank, cid in enumerate(order):
        logits[cid] = 10.0 - rank
    return logits


def test_target_classes_policy(lite0):
    labels = lite0.labels
    # a dog on top: the other dogs of the top 5 join it, the cat and the car do not
    stub = _Stub(labels, _logits([200, 285, 151, 817, 268, 207]))
    assert target_classes(stub) == [200, 151, 268]
    assert target_classes(stub, k=3) == [200, 151]
    # a class outside the nine groups stands alone
    assert target_classes(_Stub(labels, _logits([967, 968, 504]))) == [967]
    # not ImageNet (other labels, or another number of classes): the top class only
    other = [f"c{i}" for i in range(1000)]
    assert target_classes(_Stub(other, _logits([281, 282, 283]))) == [281]
    small = torch.tensor([0.1, 3.0, 2.9, 0.0])
    assert target_classes(_Stub(["a", "b", "c", "d"], small)) == [1]
    # the groups are the Restricted ImageNet ranges, disjoint
    spans = sorted(IMAGENET_GROUPS.values())
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:]))
    assert IMAGENET_GROUPS["cat"] == (281, 285) and IMAGENET_GROUPS["dog"] == (151, 268)
    # on the sample cat: the cat classes among its top 5, most probable first
    top5 = [int(c) for c in lite0.probabilities().argsort(descending=True)[:5]]
    picked = target_classes(lite0)
    assert picked == [c for c in top5 if 281 <= c <= 285] and len(picked) >= 2
    r = lite0.occlusion(112, 112, target=picked, progress=False)
    assert r.target_label == " + ".join(lite0.label(c) for c in picked)


def test_target_classes_on_a_small_user_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 5)).eval()
    session = Session(wrap_model(net, labels=[f"c{i}" for i in range(5)]))
    assert target_classes(session) == [int(session.probabilities().argmax())]
