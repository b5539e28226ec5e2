"""Ablated sessions and knock-out effects: equal to channels zeroed by hand, nothing left on
the user's model (also after an error), the effects over a data set against explicit loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import zfwidgets as zf
from nets import tiny_cnn
from test_class_maps import classifier
from test_hygiene import assert_same, snapshot
from zfwidgets.backend.explain import knockout_job, knockouts
from zfwidgets.backend.explain.knockout import knockout_comparison_job
from zfwidgets.errors import BadParameterError, OutOfRangeError, UnknownLayerError
from zfwidgets.models import Preprocessing

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PRE = Preprocessing(size=32, resize=None)


def images(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40, 36, 3), dtype=np.uint8) for _ in range(n)]


def tiny_session(net=None):
    net = tiny_cnn(classes=7) if net is None else net
    return zf.Session(net, images(1)[0], preprocessing=PRE)


def by_hand(net: nn.Sequential, x, layer: int, channels):
    """tiny_cnn run module by module, with ``channels`` of module ``layer``'s output zeroed."""
    h = x
    for i, m in enumerate(net):
        h = m(h.clone() if i == 1 else h)           # module 1 is an in-place ReLU
        if i == layer:
            h = h.clone()
            h[:, list(channels)] = 0
    return h


@pytest.mark.parametrize("layer", [0, 1, 3])
def test_ablated_equals_a_forward_with_the_channels_zeroed_by_hand(layer):
    s = tiny_session()
    a = s.ablated(str(layer), [0, 3])
    x = s.input_tensor
    with torch.no_grad():
        want = by_hand(s.model, x, layer, [0, 3])
    assert torch.allclose(a.logits, want[0], atol=1e-6)
    assert not torch.allclose(a.logits, s.logits, atol=1e-4)
    act = a.activation(str(layer))
    assert torch.all(act[[0, 3]] == 0) and torch.allclose(act[1], s.activation(str(layer))[1])
    assert a.layers == s.layers and knockouts(a) == {str(layer): (0, 3)}
    assert knockouts(s) == {}


def test_a_reused_module_is_knocked_out_in_one_call_only():
    torch.manual_seed(0)
    net = nn.Sequential()
    relu = nn.ReLU()
    conv1, conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2, self.relu = conv1, conv2, relu
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            h = self.relu(self.conv2(self.relu(self.conv1(x))))
            return self.head(h.mean(dim=(2, 3)))

    net = Shared().eval()
    s = zf.Session(net, images(1)[0], preprocessing=PRE)
    a = s.ablated("relu@1", [1])
    x = s.input_tensor
    with torch.no_grad():
        h = torch.relu(conv2(torch.relu(conv1(x))))
        h[:, 1] = 0
        want = net.head(h.mean(dim=(2, 3)))
    assert torch.allclose(a.logits, want[0], atol=1e-6)
    assert torch.equal(a.activation("relu"), s.activation("relu"))


def test_ablations_accumulate_and_everything_sees_them():
    s = tiny_session()
    a = s.ablated("1", [0]).ablated("1", 2).ablated("3", np.array([5]))
    assert knockouts(a) == {"1": (0, 2), "3": (5,)}
    assert torch.all(a.activation("1")[[0, 2]] == 0)
    proj = a.project("3", 1, rule="gradient")
    assert proj.shape == s.input_tensor.shape[1:]
    assert a.gradcam(0).map.shape == (32, 32)
    inc = a.occlusion(size=8, stride=8, layer="3", method="incremental", progress=False)
    plain = a.occlusion(size=8, stride=8, layer="3", method="plain", progress=False)
    assert np.allclose(inc.prob, plain.prob, atol=1e-5)
    assert np.allclose(inc.feature, plain.feature, atol=1e-4)
    assert not np.allclose(plain.prob, s.occlusion(size=8, stride=8, target=plain.target,
                                                   method="plain", progress=False).prob)
    assert a.entry.weights_id != s.entry.weights_id
    assert "ablated" in a.entry.weights_id


def test_nothing_is_left_on_the_users_model_also_after_an_error():
    net = tiny_cnn(classes=7)
    net.train()
    own = net[2].register_forward_hook(lambda m, i, o: None)
    s = tiny_session(net)
    x = s.input_tensor
    before = snapshot(net, x)
    a = s.ablated("2", [1, 2])
    assert len(net[2]._forward_hooks) == 1                  # only the user's, between calls
    seen = []
    spy = net[3].register_forward_hook(lambda m, i, o: seen.append(len(net[2]._forward_hooks)))
    a.predict(3)
    a.project("3", 0)
    a.saliency()
    spy.remove()
    assert seen and min(seen) >= 2            # the knock-out (and a recording): inside calls only
    assert_same(before, snapshot(net, x))

    real = net[4].forward

    def broken(t):
        raise RuntimeError("injected")

    net[4].forward = broken
    with pytest.raises(RuntimeError, match="injected"):
        a.model(x)
    del net[4].forward
    assert net[4].forward.__func__ is real.__func__
    del a
    assert_same(before, snapshot(net, x))
    assert net.training and all(m.training for m in net.modules())
    own.remove()


def test_bad_knockouts_raise_clear_errors():
    s = tiny_session()
    with pytest.raises(OutOfRangeError, match="out of range"):
        s.ablated("1", [8])
    with pytest.raises(UnknownLayerError):
        s.ablated("9", [0])
    with pytest.raises(BadParameterError):
        s.ablated("1", ["a"])


# ----------------------------------------------------------------------------- over a data set

def predictions(net, batch):
    with torch.no_grad():
        return torch.softmax(net(batch), 1)


def test_knockout_effect_equals_an_explicit_loop():
    s = tiny_session()
    imgs = images(5, seed=3)
    effect = zf.knockout_effect(s, "3", [1, 4, 6], imgs, batch_size=2, progress=False)
    changed, drops = [], []
    for img in imgs:
        x = PRE(zf.load_image(img))
        clean = predictions(s.model, x)[0]
        with torch.no_grad():
            ablated = torch.softmax(by_hand(s.model, x, 3, [1, 4, 6]), 1)[0]
        top = int(clean.argmax())
        changed.append(int(ablated.argmax()) != top)
        drops.append(float(clean[top] - ablated[top]))
    assert effect.channels == (1, 4, 6) and effect.layer == "3"
    assert np.isclose(effect.changed, np.mean(changed))
    assert np.isclose(effect.drop, np.mean(drops), atol=1e-6)
    assert np.allclose(effect.clean_prob - effect.ablated_prob, drops, atol=1e-6)


def test_comparison_picks_the_strongest_maps_and_reproducible_random_ones():
    s = tiny_session(classifier())
    s = zf.Session(s.model, images(1)[0], preprocessing=Preprocessing(size=(48, 40),
                                                                      resize=None))
    imgs = images(4, seed=5)
    comp = zf.knockout_comparison(s, "0.relu2", imgs, k=3, trials=2, seed=1, progress=False)
    xs = torch.cat([s.preprocessing(zf.load_image(i)) for i in imgs])
    acts = []
    hook = s.layer_module("0.relu2").register_forward_hook(lambda m, i, o: acts.append(o))
    with torch.no_grad():
        s.model(xs)
    hook.remove()
    means = acts[0].mean(dim=(2, 3)).mean(0).numpy()
    assert np.allclose(comp.mean_activation, means, atol=1e-6)
    assert comp.strongest.channels == tuple(sorted(np.argsort(-means)[:3].tolist()))
    rng = np.random.default_rng(1)
    want = [tuple(sorted(rng.choice(16, size=3, replace=False).tolist())) for _ in range(2)]
    assert [r.channels for r in comp.random] == want
    again = zf.knockout_effect(s, "0.relu2", comp.strongest.channels, imgs, progress=False)
    assert np.isclose(again.drop, comp.strongest.drop) and again.changed == comp.strongest.changed
    assert np.isclose(comp.random_drop, np.mean([r.drop for r in comp.random]))
    with pytest.raises(BadParameterError):
        knockout_comparison_job(s, "0.relu2", imgs, k=17)


def test_knockout_job_steps_and_skips_unreadable_images(tmp_path):
    s = tiny_session()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    job = knockout_job(s, "1", [[0], [1, 2]], images(3) + [bad], batch_size=2)
    steps = []
    while (st := job.step()) is not None:
        steps.append(st)
    assert [st.done for st in steps] == [2, 4] and steps[-1].total == 4
    effects, means = job.result
    assert [e.channels for e in effects] == [(0,), (1, 2)] and means is None
    assert all(e.skipped == 1 and e.clean_class.shape == (3,) for e in effects)


def test_capture_replace_runs_first_and_its_value_is_the_output():
    from zfwidgets.backend.layers import capture

    net = tiny_cnn(classes=7)
    x = torch.randn(1, 3, 32, 32)
    seen = []
    own = net[2].register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    with capture(net, ["2"], lambda layer, out: out * 0, replace=True):
        with torch.no_grad():
            out = net(x)
    own.remove()
    assert torch.all(seen[0] == 0)                          # the user's hook saw the new output
    with torch.no_grad():
        want = net[4:](net[3](torch.zeros_like(net[:3](x))))
    assert torch.allclose(out, want)
    assert not net[2]._forward_hooks


# ----------------------------------------------------------------------------- in place

def test_set_knockouts_in_place_equals_ablated_and_restores_the_users_model():
    net = tiny_cnn(classes=7)
    s = tiny_session(net)
    x = s.input_tensor
    intact_logits, intact_id, layers = s.logits.clone(), s.entry.weights_id, s.layers
    before = snapshot(net, x)
    heard = []
    s.on_change(heard.append)
    s.set_knockouts({"1": [3, 0, 3]})
    assert heard == ["knockouts"] and s.knockouts == {"1": (0, 3)}
    with torch.no_grad():
        want = by_hand(net, x, 1, [0, 3])
    assert torch.allclose(s.logits, want[0], atol=1e-6)
    assert torch.equal(s.logits, s.ablated("1", []).logits)          # the same knock-outs
    assert torch.all(s.activation("1")[[0, 3]] == 0)
    assert s.entry.weights_id != intact_id and s.layers == layers    # same layer ids
    s.set_knockouts({"1": [0, 3]})                                   # no change: no event
    assert heard == ["knockouts"]
    s.set_knockouts({"3": [1]})                                      # replaces, not adds
    assert s.knockouts == {"3": (1,)} and not torch.all(s.activation("1")[0] == 0)
    s.set_knockouts({})
    assert heard == ["knockouts"] * 3 and s.knockouts == {}
    assert s.model is net and s.entry.weights_id == intact_id
    assert torch.equal(s.logits, intact_logits)
    assert_same(before, snapshot(net, x))


def test_set_knockouts_errors_keep_the_knockouts_and_a_new_model_starts_intact():
    s = tiny_session()
    s.set_knockouts({"1": [2]})
    for bad, error in (({"1": [8]}, OutOfRangeError), ({"9": [0]}, UnknownLayerError),
                       ({"1": ["a"]}, BadParameterError), ([("1", 2)], BadParameterError)):
        with pytest.raises(error):
            s.set_knockouts(bad)
        assert s.knockouts == {"1": (2,)}
    s.set_model(tiny_cnn(classes=5))
    assert s.knockouts == {} and not isinstance(s.model, zf.backend.explain.AblatedModel)


def test_intact_probabilities_are_the_users_model_s():
    from zfwidgets.backend.explain import intact_probabilities

    s = tiny_session()
    p0 = s.probabilities()
    assert torch.equal(intact_probabilities(s), p0)
    s.set_knockouts({"3": [0, 1, 2, 3, 4]})
    assert not torch.allclose(s.probabilities(), p0)
    torch.testing.assert_close(intact_probabilities(s), p0)


def test_knockouts_of_channels_last_and_token_layers_zero_their_maps_only():
    from test_layers import _ChannelsLast, _tiny_vit

    torch.manual_seed(0)
    model = _ChannelsLast().eval()
    s = zf.Session(model, images(1)[0], preprocessing=Preprocessing(size=24, resize=None))
    assert s.layer_info("norm").layout.kind == "channels_last"
    s.set_knockouts({"norm": [1, 4]})
    act, intact = s.activation("norm"), s.ablated("norm", []).activation("norm")
    assert torch.all(act[[1, 4]] == 0)
    x = s.input_tensor
    with torch.no_grad():
        h = model.norm(model.stem(x).permute(0, 2, 3, 1))         # [N, H, W, C]
        h[..., [1, 4]] = 0
        h = model.fc(h)
        h = torch.cat([h[:, 0::2, 0::2], h[:, 1::2, 0::2], h[:, 0::2, 1::2],
                       h[..., 1::2, 1::2, :]], -1)
        want = model.head(model.merge(h).permute(0, 3, 1, 2))
    torch.testing.assert_close(s.logits, want[0])
    s.set_knockouts(None)
    assert torch.all(s.activation("norm")[1] != 0) and torch.equal(intact, act)

    vit = _tiny_vit()
    s = zf.Session(vit, images(1)[0], preprocessing=Preprocessing(size=32, resize=None))
    layer = "encoder.layers.encoder_layer_0"
    assert s.layer_info(layer).layout.kind == "tokens"
    seen = {}
    hook = vit.encoder.layers[0].register_forward_hook(lambda m, i, o: seen.update(out=o))
    try:
        s.set_knockouts({layer: [2]})
        s.logits
    finally:
        hook.remove()
    out = seen["out"]                  # the output the model goes on with (knock-outs run first)
    assert torch.all(out[:, 1:, 2] == 0) and torch.all(out[:, 0, 2] != 0)   # class token kept
    maps = s.activation(layer)
    assert torch.all(maps[2] == 0) and not torch.all(maps[3] == 0)
    with torch.no_grad():
        h = out
        h = vit.encoder.ln(vit.encoder.layers[1](h))
        want = vit.heads(h[:, 0])
    torch.testing.assert_close(s.logits, want[0])
