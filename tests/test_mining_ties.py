"""Top-k ties on saturating rectifiers are ranked by the pre-activation (issue 12 item 4)."""

from __future__ import annotations

import io

import numpy as np
import torch
from torch import nn

from zfwidgets import Preprocessing, Session
from zfwidgets.backend.mining import LayerTopK, Miner, merge, mine
from zfwidgets.backend.mining.topk import order_key

# pre-activations of channel 0 at each image's peak: 7, 9, 6.5, 5 (ReLU6 outputs 6, 6, 6, 5)
PEAKS = [7.0, 9.0, 6.5, 5.0]


def net() -> nn.Sequential:
    """1x1 convolution then ReLU6: channel 0 is the red input, channel 1 minus it (so it is dead
    on these positive images: every output 0, ranked by how close its input came to 0)."""
    conv = nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, 0] = 1.0
        conv.weight[1, 0] = -1.0
    return nn.Sequential(conv, nn.ReLU6(inplace=True)).eval()


def images() -> torch.Tensor:
    """Four 3x3 images; red at the peak position given by PEAKS, 1 elsewhere, except a second
    saturated position in image 1 (pre-activation 8) for per-image ties."""
    x = torch.ones(4, 3, 3, 3)
    for i, (peak, (y, xx)) in enumerate(zip(PEAKS, [(0, 0), (1, 1), (2, 0), (0, 2)])):
        x[i, 0, y, xx] = peak
    x[1, 0, 2, 2] = 8.0
    x[3, 0, 1, 0] = 0.5  # image 3's smallest red: its dead channel-1 unit comes closest to 0
    return x


def mined(k=3, per_image=1, batches=((0, 1, 2, 3),)) -> LayerTopK:
    miner = Miner(net(), ["1"], k=k, per_image=per_image)
    x = images()
    for ids in batches:
        miner.update(x[list(ids)], list(ids))
    return miner.result()["1"]


def test_saturated_ties_are_ranked_by_the_pre_activation():
    top = mined()
    assert top.values[0].tolist() == [6.0, 6.0, 6.0]
    assert top.image[0].tolist() == [1, 0, 2]          # pre 9 > 7 > 6.5, not image order
    assert top.pre[0].tolist() == [9.0, 7.0, 6.5]
    assert top.pre_activations(0) == [9.0, 7.0, 6.5]
    # the dead channel: all 0, ranked by the least negative input (image 3's 0.5, then 1s)
    assert top.values[1].tolist() == [0.0, 0.0, 0.0]
    assert top.image[1].tolist() == [3, 0, 1] and top.pre[1].tolist() == [-0.5, -1.0, -1.0]
    assert (int(top.y[1, 0]), int(top.x[1, 0])) == (1, 0)
    # several hits per image: image 1's 9 and 8, then image 0's 7
    top = mined(k=4, per_image=None)
    assert list(zip(top.image[0].tolist(), top.y[0].tolist(), top.x[0].tolist())) == \
        [(1, 1, 1), (1, 2, 2), (0, 0, 0), (2, 2, 0)]
    # exact ties of value and pre-activation fall back to (image, y, x): the 1s of image 0
    top = mined(k=3, per_image=None, batches=((0,),))
    assert top.values[1].tolist() == [0.0, 0.0, 0.0] and top.pre[1].tolist() == [-1.0] * 3
    assert list(zip(top.y[1].tolist(), top.x[1].tolist())) == [(0, 1), (0, 2), (1, 0)]


def test_the_order_is_the_same_whatever_the_batches_merges_and_checkpoints():
    whole = mined()
    for batches in [((3,), (2,), (1,), (0,)), ((2, 0), (3, 1))]:
        t = mined(batches=batches)
        assert torch.equal(t.image, whole.image) and torch.equal(t.pre, whole.pre)
    a, b = mined(batches=((0, 2),)), mined(batches=((1, 3),))
    for m in (merge(a, b), merge(b, a)):
        assert torch.equal(m.image, whole.image) and torch.equal(m.values, whole.values)
        assert torch.equal(m.pre, whole.pre)
    state = LayerTopK.from_state(whole.to_state())
    assert torch.equal(state.pre, whole.pre)
    miner = Miner(net(), ["1"], k=3)
    miner.update(images()[[0, 1]], [0, 1])
    buf = io.BytesIO()
    torch.save(miner.snapshot(), buf)
    buf.seek(0)
    again = Miner(net(), ["1"], k=3)
    again.restore(torch.load(buf, weights_only=True))
    again.update(images()[[2, 3]], [2, 3])
    assert torch.equal(again.result()["1"].image, whole.image)


def test_mine_on_images_ranks_ties_by_pre_activation_and_leaves_other_layers_alone():
    s = Session(net(), preprocessing=Preprocessing(size=(3, 3), resize=None, mean=(0, 0, 0),
                                                   std=(1 / 255, 1 / 255, 1 / 255)))
    pics = [np.clip(images()[i].permute(1, 2, 0).numpy(), 0, 255).astype(np.uint8)
            for i in range(4)]
    result = mine(s, pics, ["0", "1"], k=3, progress=False, workers=0)
    assert result["1"].image[0].tolist() == [1, 0, 2]
    conv = result["0"]            # not a rectifier's output: pre is the value itself
    assert torch.equal(conv.pre, conv.values)
    assert conv.image[0].tolist() == [1, 0, 2]


def test_order_key_is_lexicographic_and_exact():
    v = torch.tensor([6.0, 6.0, 6.0, 5.0, -0.0, 0.0, float("nan"), -1.0])
    p = torch.tensor([9.0, 6.5, -3.0, 100.0, -2.0, -1.0, 0.0, 1e30])
    key = order_key(v, p)
    ranked = key.argsort(descending=True).tolist()
    assert ranked == [0, 1, 2, 3, 5, 4, 7, 6]
    near = order_key(torch.tensor([1.0, 1.0]), torch.tensor([1.0, float(np.nextafter(np.float32(1), np.float32(2)))]))
    assert near[1] > near[0]
