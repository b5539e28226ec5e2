"""Which rule a view starts with and why, blank panels explained, receptive-field crops, the map
a view opens on, flat colour scales (issue 12 items 1, 3, 4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nets import tiny_cnn
from torch import nn

import zfwidgets as zf
from zfwidgets.backend.defaults import (default_rule, flat_map_note, informative_channel,
                                        informative_channel_choice, max_pools_before,
                                        rule_reason)
from zfwidgets.backend.project import (normalisation_text, projection_crop, projection_to_rgb,
                                       saturation_note)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lite0():
    return zf.Session("efficientnet_lite0")


def user_session(model, size=32):
    return zf.Session(model, preprocessing=zf.Preprocessing(size=(size, size), resize=None))


class FunctionalPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU()

    def forward(self, x):
        return self.relu2(self.conv2(F.max_pool2d(self.relu(self.conv(x)), 2)))


# ----------------------------------------------------------------------------- default_rule

@pytest.mark.parametrize("name", ["alexnet", "vgg16", "zfnet", "zfnet_small"])
def test_max_pooling_registry_models_start_with_the_deconvnet(name):
    s = zf.Session(name, weights=None)
    table = s.layer_table()
    first_pool = next(i for i, info in enumerate(table) if "MaxPool" in info.kind)
    before, after = table[first_pool - 1].name, table[first_pool + 1].name
    assert default_rule(s, s.entry.default_layer) == "deconvnet"
    assert s.default_rule(after) == "deconvnet" and s.default_rule(table[first_pool].name) == \
        "deconvnet"
    assert s.default_rule(before) == "guided"  # conv1 + ReLU: no switches yet
    assert max_pools_before(s, after) == [table[first_pool].name]
    assert table[first_pool].name in s.rule_reason(after)
    assert "no max-pooling" in s.rule_reason(before)


def test_efficientnet_lite0_starts_with_guided_backprop_and_says_why(lite0):
    for layer in (lite0.layers[0], lite0.entry.middle_layer, lite0.entry.default_layer):
        assert lite0.default_rule(layer) == "guided"
        assert max_pools_before(lite0, layer) == []
    reason = rule_reason(lite0, "blocks.7.depthwise.act")
    assert reason.startswith("EfficientNet-Lite0 has no max-pooling before blocks.7")
    assert "Springenberg" in reason and "same for every image" in reason


def test_user_nets_with_and_without_pools():
    plain = user_session(tiny_cnn())
    assert {plain.default_rule(layer) for layer in plain.layers} == {"guided"}
    pooled = user_session(tiny_cnn(pool=True))
    assert pooled.default_rule("1") == "guided" and pooled.default_rule("3") == "deconvnet"
    functional = user_session(FunctionalPool().eval())
    assert functional.default_rule("relu") == "guided"
    assert functional.default_rule("relu2") == "deconvnet"
    assert max_pools_before(functional, "relu2") == ["max_pool2d (functional)"]
    with pytest.raises(zf.UnknownLayerError):
        default_rule(plain, "nope")


def normalized(p: torch.Tensor) -> torch.Tensor:
    return p / p.abs().max()


def live_unit(session, layer):
    """A unit alive (positive, below any cap) on both images, strongest on the weaker one."""
    acts = []
    for name in ("chelsea", "coffee"):
        session.set_image(zf.load_sample(name))
        acts.append(session.activation(layer))
    both = torch.minimum(*acts).masked_fill(torch.maximum(*acts) >= 6.0, -1.0)
    c, rest = divmod(int(both.argmax()), both.shape[1] * both.shape[2])
    assert float(both.max()) > 0
    return (c,) + divmod(rest, both.shape[2])


def two_images(session, layer, unit, rule):
    c, y, x = unit
    out = []
    for name in ("chelsea", "coffee"):
        session.set_image(zf.load_sample(name))
        out.append(session.project(layer, c, (y, x), rule))
    return out


def test_deconvnet_shows_the_weights_without_pools_and_the_image_with_them(lite0):
    """Springenberg et al.'s point: without max-pooling, the deconvnet projection of a unit is
    the same picture for every image (up to the unit's value, which scales it); the switches of
    a max-pooling net make it depend on the image. Guided backprop depends on the image on
    both."""
    layer = lite0.entry.middle_layer
    unit = live_unit(lite0, layer)
    a, b = two_images(lite0, layer, unit, "deconvnet")
    assert float((normalized(a) - normalized(b)).abs().max()) < 1e-5
    ga, gb = two_images(lite0, layer, unit, "guided")
    assert float((normalized(ga) - normalized(gb)).abs().max()) > 0.1
    torch.manual_seed(0)
    alex = zf.Session("alexnet", weights=None)
    a, b = two_images(alex, "features.7", live_unit(alex, "features.7"), "deconvnet")
    assert float((normalized(a) - normalized(b)).abs().max()) > 0.1
    # the same on small user nets that differ only by a max-pool
    for pool, same in ((False, True), (True, False)):
        s = user_session(tiny_cnn(pool=pool), 32)
        pa, pb = two_images(s, "3", live_unit(s, "3"), "deconvnet")
        assert (float((normalized(pa) - normalized(pb)).abs().max()) < 1e-5) == same, pool


# ----------------------------------------------------------------------------- blank panels

def test_saturated_and_dead_units_are_explained(lite0):
    lite0.set_image(zf.load_sample("chelsea"))
    layer = lite0.entry.middle_layer
    act = lite0.activation(layer)
    c, y, x = (int(v) for v in (act >= 6.0).nonzero()[0])
    grad = lite0.project(layer, c, (y, x), "gradient")
    assert not bool(grad.any())                                    # blank, exactly
    note = saturation_note(lite0, layer, c, y, x, "gradient", projection=grad)
    assert "saturated at 6" in note and "exactly 0" in note
    assert lite0.project(layer, c, (y, x), "guided").any()         # guided still shows it
    assert saturation_note(lite0, layer, c, y, x, "guided") is None
    c, y, x = (int(v) for v in (act <= 0).nonzero()[0])
    for rule in ("gradient", "guided"):
        assert not bool(lite0.project(layer, c, (y, x), rule).any())
        assert "dead" in saturation_note(lite0, layer, c, y, x, rule)
    assert lite0.project(layer, c, (y, x), "deconvnet").any()
    assert saturation_note(lite0, layer, c, y, x, "deconvnet") is None
    c, y, x = (int(v) for v in ((act > 0.5) & (act < 5.5)).nonzero()[0])
    assert saturation_note(lite0, layer, c, y, x, "gradient",
                           projection=lite0.project(layer, c, (y, x), "gradient")) is None
    assert "every path" in saturation_note(lite0, layer, c, None, None, "gradient",
                                           projection=torch.zeros(3, 4, 4))


# ----------------------------------------------------------------------------- crops at RF scale

def test_projection_crop_is_the_projection_at_its_receptive_field(lite0):
    lite0.set_image(zf.load_sample("chelsea"))
    for layer, (y, x) in (("stem.act", (40, 50)), ("stem.act", (0, 0)),
                          (lite0.entry.middle_layer, (6, 5))):
        c = int(lite0.activation(layer)[:, y, x].argmax())
        crop = projection_crop(lite0, layer, c, (y, x), "guided")
        t, left, b, r = crop.box
        assert crop.box == lite0.receptive_field(layer, y, x)
        whole = lite0.project(layer, c, (y, x), "guided").numpy()
        np.testing.assert_array_equal(crop.projection, whole[:, t:b, left:r])
        outside = whole.copy()
        outside[:, t:b, left:r] = 0
        assert not outside.any()
        assert crop.scale == pytest.approx(float(np.abs(whole).max()))
        np.testing.assert_allclose(crop.patch, lite0.display_image[t:b, left:r])
        np.testing.assert_allclose(crop.rgb, projection_to_rgb(crop.projection, crop.scale))
        assert crop.rgb.shape == crop.patch.shape
        assert f"{crop.scale:.3g}" in crop.normalisation and crop.note is None
    # layer 1 of the paper's kind: a 3-pixel receptive field, a 2x2 crop in the corner
    assert projection_crop(lite0, "stem.act", 0, (0, 0), "deconvnet").patch.shape == (2, 2, 3)
    assert lite0.layer_info("stem.act").rf_size == (3, 3)
    default = projection_crop(lite0, lite0.entry.middle_layer, 5, (6, 5))
    assert default.rule == "guided"
    whole_map = projection_crop(lite0, "stem.act", 3, None, "guided")
    assert whole_map.box == (0, 0, 224, 224) and whole_map.position is None


def test_projection_to_rgb_with_a_stated_scale():
    p = torch.tensor([[[-2.0, -1.0, 0.0, 1.0, 2.0]]]).expand(3, 1, 5)
    np.testing.assert_allclose(projection_to_rgb(p, scale=1.0)[0, :, 0],
                               [0.0, 0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(projection_to_rgb(p)[0, :, 0], [0.0, 0.25, 0.5, 0.75, 1.0])
    batch = torch.stack([p, 2 * p])
    rgb = projection_to_rgb(batch, scale=[2.0, 4.0])
    np.testing.assert_allclose(rgb[0], rgb[1])
    np.testing.assert_allclose(projection_to_rgb(batch, scale=4.0)[0, 0, :, 0],
                               [0.25, 0.375, 0.5, 0.625, 0.75])
    assert "blank" in normalisation_text(0.0) and "0.0123" in normalisation_text(0.01234)


# ----------------------------------------------------------------------------- informative maps

def designed_session(dead=True, constant=True, flat=True, varying=True):
    """A 1x1 convolution + ReLU whose maps are, by construction: dead, constant (the strongest
    total), nearly flat (553-554, the next strongest) and varying (the weakest total)."""
    conv = nn.Conv2d(3, 4, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([-1.0, 1000.0, 553.0, 0.0]))
        conv.weight[2, 0] = 0.1
        conv.weight[3, 0] = 1.0
        if not varying:
            conv.weight[3, 0] = 0.0
            conv.bias[3] = -2.0
        if not (constant or flat):
            conv.bias[1:3] = -3.0
            conv.weight[2, 0] = 0.0
    return user_session(nn.Sequential(conv, nn.ReLU()).eval(), 16)


def test_informative_channel_skips_dead_constant_and_flat_maps():
    s = designed_session()
    assert s.strongest_channel("1") == 1        # the paper's choice picks the constant map
    assert informative_channel(s, "1") == 3
    c, why = informative_channel_choice(s, "1")
    assert c == 3 and "1 of 4 maps" in why
    c, why = informative_channel_choice(designed_session(varying=False), "1")
    assert c == 1 and "no map" in why
    c, why = informative_channel_choice(designed_session(varying=False, constant=False,
                                                         flat=False), "1")
    assert "dead" in why


def test_flat_map_note_says_when_a_colour_scale_stretches_nothing():
    note = flat_map_note(np.linspace(553.0, 554.0, 50))
    assert note is not None and "0.18%" in note and "553" in note
    assert flat_map_note(np.linspace(0.0, 1.0, 50)) is None
    assert "constant" in flat_map_note(torch.full((4, 4), 6.0))
    assert flat_map_note(np.linspace(-1.0, 1.0, 5)) is None
    assert flat_map_note([1.0, 1.001], threshold=1e-4) is None
    s = designed_session()
    assert flat_map_note(s.activation("1")[2]) is not None
    assert flat_map_note(s.activation("1")[3]) is None
