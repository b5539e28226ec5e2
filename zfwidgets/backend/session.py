"""The Session: one model, one image, one cached forward pass; the state every widget shares."""

from __future__ import annotations

import dataclasses
import operator
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data import DEFAULT_SAMPLE, load_image, load_sample
from ..errors import BadParameterError, OutOfRangeError, UnknownLayerError, UnsupportedModelError
from ..fingerprint import tensor_digest
from ..models import LoadedModel, Preprocessing, class_name, default_model, get_model, wrap_model
from ..models.registry import check_output, input_channels
from .layers import (
    LayerInfo,
    Record,
    model_dtype,
    receptive_field_box,
    record_forward,
    split_layer_id,
)
from .project import Target, project
from .rules import check_rule

__all__ = ["Session", "resolve_model"]

Listener = Callable[[str], None]


def resolve_model(model: str | nn.Module | LoadedModel, *, weights="default",
                  preprocessing: Preprocessing | None = None, labels=None,
                  output=None) -> LoadedModel:
    """Turn a registry name, a user ``nn.Module`` or a :class:`LoadedModel` into a LoadedModel.

    ``preprocessing`` and ``labels`` apply to a user module only; registry models own theirs.
    ``output`` (which part of the output is the logits, see
    :func:`~zfwidgets.models.registry.pick_logits`) applies to any model.
    """
    entry = _resolve(model, weights, preprocessing, labels, output)
    if output is not None and entry.output is not output:
        entry = dataclasses.replace(entry, output=check_output(output))
    return entry


def _resolve(model, weights, preprocessing, labels, output) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, str):
        return get_model(model, weights=weights)
    if isinstance(model, nn.Module):
        return wrap_model(model, preprocessing=preprocessing, labels=labels, output=output)
    raise BadParameterError(
        f"model must be a registry name, an nn.Module or a LoadedModel, not {type(model).__name__}")


def _chosen(model) -> tuple[object, str]:
    """``model``, or the default model when it is ``None``, with the one-line reason."""
    if model is None:
        choice = default_model()
        return choice.name, choice.reason
    name = model if isinstance(model, str) else getattr(model, "name", type(model).__name__)
    return model, f"{name}: chosen by the caller"


def _as_index(value, what: str) -> int:
    """``value`` as an int: a Python or numpy integer, or an integer tensor of one element;
    :class:`BadParameterError` for anything else (``None``, a float, a bool, a string)."""
    if value is None or isinstance(value, (bool, np.bool_)):
        raise BadParameterError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise BadParameterError(f"{what} must be an integer, got {value!r} "
                                f"({type(value).__name__})") from None


def _as_position(position) -> tuple[int, int]:
    """``position`` as ``(y, x)`` ints: exactly two integers."""
    try:
        parts = None if isinstance(position, (str, bytes)) else tuple(position)
    except TypeError:
        parts = None
    if parts is None or len(parts) != 2:
        raise BadParameterError(f"position must be two integers (y, x), got {position!r}")
    return _as_index(parts[0], "position y"), _as_index(parts[1], "position x")


def _as_unit(unit) -> tuple:
    """``(channel, position or None)`` of a unit ``(channel,)``, ``(channel, None, None)`` or
    ``(channel, y, x)``; the values themselves are checked by :meth:`Session._check_unit`."""
    try:
        parts = None if isinstance(unit, (str, bytes)) else tuple(unit)
    except TypeError:
        parts = None
    if parts is None or len(parts) not in (1, 3) or (
            len(parts) == 3 and (parts[1] is None) != (parts[2] is None)):
        raise BadParameterError(f"a unit must be (channel, y, x) or (channel,) with y and x both "
                                f"given or both None, got {unit!r}")
    if len(parts) == 1 or parts[1] is None:
        return parts[0], None
    return parts[0], _as_position(parts[1:])


class Session:
    """A model, an image and everything computed from them, cached.

    Parameters
    ----------
    model : str or nn.Module or LoadedModel or None
        A registry name (see :func:`zfwidgets.list_models`), any CNN ``nn.Module`` (ImageNet
        preprocessing at 224x224 unless ``preprocessing`` says otherwise), or a LoadedModel.
        ``None`` (the default): :func:`zfwidgets.default_model` decides, ``alexnet`` when its
        ImageNet weights are in torch's hub cache, else the offline ``efficientnet_lite0``
        (``ZFWIDGETS_MODEL`` overrides); :attr:`model_reason` says which and why.
    image : path, bytes, PIL image, array or None
        The image to analyse; ``None`` loads the default sample photo.
    weights : "default", None or path
        Passed to :func:`zfwidgets.get_model` for registry names.
    preprocessing : Preprocessing, optional
        For a user module: input size, mean and std.
    labels : list of str, optional
        For a user module: class names.
    device : str or torch.device, optional
        Where to run a registry model. A user module is never moved: it runs where its
        parameters are.
    output : str, int or callable, optional
        Which part of the model's output holds the class scores, for a model returning a dict
        or a tuple (see :func:`zfwidgets.models.registry.pick_logits`: by default a tensor, the
        first tensor of a tuple, a dict's ``"logits"``).

    Attributes
    ----------
    model_reason : str
        Which model runs and why, in one line: :func:`zfwidgets.default_model`'s reason when
        the model was not named, else ``"<name>: chosen by the caller"``.

    Notes
    -----
    The session never changes the model: forward passes run in eval mode with every module's
    ``training`` flag restored afterwards, hooks live only inside a call, and backward rules are
    applied without touching the modules (see :mod:`zfwidgets.backend.rules`). The input is
    fed in the model's own dtype (float64, bfloat16 ...).
    """

    def __init__(self, model: str | nn.Module | LoadedModel | None = None, image=None, *,
                 weights="default", preprocessing: Preprocessing | None = None, labels=None,
                 device: str | torch.device | None = None, output=None):
        self._listeners: list[Listener] = []
        self._device_request = device
        self.version = 0
        self._pre_cache: dict = {}            # (version, layer) -> pre-activation, one entry
        self._image: Image.Image | None = None
        self.image_name = ""
        model, self.model_reason = _chosen(model)
        self._set_model(resolve_model(model, weights=weights, preprocessing=preprocessing,
                                      labels=labels, output=output))
        self._set_image(image)

    # ------------------------------------------------------------------ state changes
    def on_change(self, callback: Listener) -> None:
        """Call ``callback(what)`` after the image (``"image"``), the model (``"model"``) or
        the maps knocked out (``"knockouts"``, :meth:`set_knockouts`) change."""
        if callback not in self._listeners:
            self._listeners.append(callback)

    def off_change(self, callback: Listener) -> None:
        """Stop calling ``callback``."""
        if callback in self._listeners:
            self._listeners.remove(callback)

    def _notify(self, what: str) -> None:
        self.version += 1
        for cb in list(self._listeners):
            cb(what)

    def _set_model(self, entry: LoadedModel) -> None:
        module = entry.module
        if self._device_request is not None and isinstance(self._device_request, (str, torch.device)):
            param = next(module.parameters(), None)
            wanted = torch.device(self._device_request)
            if param is not None and param.device != wanted:
                module.to(wanted)
        param = next(module.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")
        self.entry = entry
        self._reset()

    def _set_image(self, src, name: str | None = None) -> None:
        if src is None:
            image, name = load_sample(DEFAULT_SAMPLE), name or DEFAULT_SAMPLE
        elif isinstance(src, Image.Image) and src.mode == "RGB":
            image = src.copy()
        else:  # a large JPEG is decoded at a reduced scale (see Preprocessing.draft_side)
            image = load_image(src, min_side=self.preprocessing.draft_side())
        if name is None:
            name = str(src) if isinstance(src, (str,)) or hasattr(src, "__fspath__") else "image"
        self._image = image
        self.image_name = name
        self._reset()

    def set_model(self, model: str | nn.Module | LoadedModel | None, *, weights="default",
                  preprocessing: Preprocessing | None = None, labels=None, output=None) -> None:
        """Switch to another model (same arguments as the constructor); keeps the image."""
        model, reason = _chosen(model)
        self._set_model(resolve_model(model, weights=weights, preprocessing=preprocessing,
                                      labels=labels, output=output))
        self.model_reason = reason
        self._notify("model")

    def set_image(self, src, name: str | None = None) -> None:
        """Analyse another image (path, bytes, PIL image, array; ``None`` = default sample).

        Raises
        ------
        BadImageError
            When the image cannot be decoded; the session keeps its previous image.
        """
        self._set_image(src, name)
        self._notify("image")

    def _reset(self) -> None:
        self._record: Record | None = None
        self._input: torch.Tensor | None = None
        self._projections: OrderedDict = OrderedDict()
        self._infos: dict[str, LayerInfo] | None = None

    # ------------------------------------------------------------------ basics
    @property
    def model(self) -> nn.Module:
        """The network being analysed."""
        return self.entry.module

    @property
    def preprocessing(self) -> Preprocessing:
        """The model's preprocessing (size, mean, std)."""
        return self.entry.preprocessing

    @property
    def labels(self) -> list[str] | None:
        """The model's class names, if it has any."""
        return self.entry.labels

    @property
    def image(self) -> Image.Image:
        """The current image as loaded (RGB, original size)."""
        return self._image

    @property
    def input_tensor(self) -> torch.Tensor:
        """The preprocessed ``[1, C, H, W]`` tensor fed to the model, in the model's dtype."""
        if self._input is None:
            self._input = self.preprocessing(self._image).to(self.device,
                                                             model_dtype(self.model))
        return self._input

    @property
    def display_image(self) -> np.ndarray:
        """The model's view of the image: ``[H, W, 3]`` float32 in [0, 1] (resized, cropped;
        RGB whatever the model reads)."""
        return self.preprocessing.to_rgb(self.input_tensor)[0].permute(1, 2, 0).cpu().numpy()

    @property
    def image_key(self) -> str:
        """Hash of the preprocessed input, for cache keys."""
        return tensor_digest(self.input_tensor)

    def _rec(self) -> Record:
        if self._record is None:
            x = self.input_tensor
            try:
                self._record = record_forward(self.model, x, self.entry.output)
            except RuntimeError as exc:
                channels = input_channels(self.model)
                if channels is not None and channels != x.shape[1]:
                    raise BadParameterError(
                        f"the model's first convolution reads {channels} channel(s) but the "
                        f"preprocessing makes {x.shape[1]}: pass Preprocessing(..., "
                        f"channels={channels})") from exc
                if "not implemented for" not in str(exc) or x.dtype == torch.float32:
                    raise
                raise UnsupportedModelError(
                    f"the model is {x.dtype} and {x.device.type} cannot run one of its ops in "
                    f"that dtype ({exc}); convert it, e.g. model.float(), or put it on a device "
                    "that runs it (Session(..., device='cuda'))") from exc
        return self._record

    # ------------------------------------------------------------------ layers
    @property
    def layers(self) -> list[str]:
        """Ids of the layers one can visualize (4-d outputs), in forward order."""
        return [info.name for info in self._rec().layers]

    def layer_table(self) -> list[LayerInfo]:
        """One :class:`LayerInfo` per layer, in forward order."""
        return list(self._rec().layers)

    def layer_info(self, layer: str) -> LayerInfo:
        """Kind, output shape ``(C, H, W)`` and receptive field of ``layer``."""
        if self._infos is None:
            self._infos = {info.name: info for info in self._rec().layers}
        try:
            return self._infos[layer]
        except (KeyError, TypeError):
            raise UnknownLayerError(layer, self.layers) from None

    def activation(self, layer: str) -> torch.Tensor:
        """``[C, H, W]`` maps of ``layer`` for the current image (cached forward pass); a
        token layer gives its ``D`` maps of the patch grid, class tokens left out."""
        self.layer_info(layer)
        return self._rec().activations[layer][0]

    # ------------------------------------------------------------------ predictions
    @property
    def logits(self) -> torch.Tensor:
        """The model's class scores for the current image, ``[num_classes]`` (picked from a
        dict or tuple output by the model's ``output`` rule)."""
        return self._rec().output[0]

    def probabilities(self) -> torch.Tensor:
        """Softmax of :attr:`logits`."""
        return torch.softmax(self.logits.float(), dim=0)

    def label(self, class_id: int) -> str:
        """Class name of ``class_id`` (``"class N"`` when the model has no labels)."""
        labels = self.labels
        return class_name(labels, class_id)

    def predict(self, k: int = 5) -> list[tuple[str, float]]:
        """Top-``k`` classes as ``[(label, probability), ...]``, most probable first."""
        probs = self.probabilities()
        k = max(1, min(int(k), probs.numel()))
        values, ids = probs.topk(k)
        return [(self.label(int(i)), float(v)) for v, i in zip(values, ids)]

    # ------------------------------------------------------------------ units and boxes
    def _check_unit(self, layer: str, channel: int | None, position=None, *,
                    need_channel: bool = False) -> LayerInfo:
        """The one check of a unit's arguments, for every method that takes them.

        ``channel`` must be an integer (a Python or numpy int, or an integer tensor of one
        element) in range, or ``None`` when ``need_channel`` is false; ``position`` ``None`` or
        exactly two integers ``(y, x)`` inside the layer's map. A wrong type or form (``None``
        where a channel is needed, ``1.7``, ``True``, ``(1, 2, 3)``) raises
        :class:`BadParameterError`, a value outside the layer :class:`OutOfRangeError`.
        """
        info = self.layer_info(layer)
        c, h, w = info.shape
        if channel is not None or need_channel:
            ch = _as_index(channel, "channel")
            if not 0 <= ch < c:
                raise OutOfRangeError(f"channel {ch} is out of range for layer {layer!r} "
                                      f"({c} channels: 0..{c - 1})")
        if position is not None:
            y, x = _as_position(position)
            if not (0 <= y < h and 0 <= x < w):
                raise OutOfRangeError(f"position {(y, x)} is outside layer {layer!r}'s "
                                      f"{h}x{w} map")
        return info

    def strongest(self, layer: str, channel: int | None = None) -> tuple[int, int, int, float]:
        """The strongest activation of ``layer`` (of one channel if given).

        Returns
        -------
        tuple
            ``(channel, y, x, value)``.
        """
        self._check_unit(layer, channel)
        act = self.activation(layer)
        if channel is not None:
            flat = int(act[channel].argmax())
            y, x = divmod(flat, act.shape[2])
            tied = act[channel] == act[channel, y, x]
            if int(tied.sum()) > 1:                   # at a rectifier's cap: many maxima
                pre = self._pre_activation(layer)
                if pre is not None:                   # the largest input among them, as mining
                    score = torch.where(tied, pre[channel].to(act.dtype), -torch.inf)
                    y, x = divmod(int(score.argmax()), act.shape[2])
            return int(channel), y, x, float(act[channel, y, x])
        flat = int(act.argmax())
        c, rest = divmod(flat, act.shape[1] * act.shape[2])
        y, x = divmod(rest, act.shape[2])
        return c, y, x, float(act[c, y, x])

    def _pre_activation(self, layer: str) -> torch.Tensor | None:
        """``[C, H, W]`` the input of ``layer``'s rectifier for the current image (``None`` when
        the layer is not a non-decreasing rectifier's output, or its input is no such map):
        what breaks ties among its capped values, as in top-k mining."""
        from .layers import run_captured, scoped_eval
        from .mining.topk import rectifier_layers

        cache = self._pre_cache
        key = (self.version, layer)
        if key not in cache:
            found = {}
            if rectifier_layers(self.model, [layer], self.layers):
                with torch.inference_mode(), scoped_eval(self.model):
                    run_captured(self.model, self.input_tensor, [layer],
                                 lambda name, t: found.setdefault(name, t.detach().clone()),
                                 known=self.layers, inputs=True)
            pre = found.get(layer)
            shape = tuple(self.activation(layer).shape)
            cache.clear()
            cache[key] = pre[0] if isinstance(pre, torch.Tensor) and pre.dim() == 4 and \
                tuple(pre.shape[1:]) == shape else None
        return cache[key]

    def strongest_channel(self, layer: str) -> int:
        """The channel with the largest total activation (the paper's Fig. 7 choice)."""
        return int(self.activation(layer).flatten(1).sum(1).argmax())

    def receptive_field(self, layer: str, y: int, x: int) -> tuple[int, int, int, int]:
        """Input pixels that unit ``(y, x)`` of ``layer`` sees, ``(top, left, bottom, right)``.

        ``bottom`` / ``right`` are exclusive and the box is clipped to the input image. When the
        geometry could not be tracked, the whole image is returned.
        """
        info = self._check_unit(layer, None, (y, x))
        H, W = self.input_tensor.shape[-2:]
        return receptive_field_box(info.geometry, int(y), int(x), int(H), int(W))

    # ------------------------------------------------------------------ projections
    def project(self, layer: str, channel: int, position: tuple[int, int] | None = None,
                rule: str = "deconvnet") -> torch.Tensor:
        """Project one activation, or a whole feature map, down to input space.

        Parameters
        ----------
        layer : str
            Layer id.
        channel : int
            Feature map.
        position : (y, x) or None
            One unit of the map; ``None`` projects the whole map. Every other activation of the
            layer is set to zero.
        rule : {"deconvnet", "guided", "gradient"}
            Backward rule (see :mod:`zfwidgets.backend.rules`).

        Returns
        -------
        torch.Tensor
            ``[3, H, W]`` in the model's input space; :func:`zfwidgets.projection_to_rgb`
            turns it into an image.
        """
        self._check_unit(layer, channel, position, need_channel=True)
        unit = (channel,) if position is None else (channel, *_as_position(position))
        return self.project_many(layer, [unit], rule)[0]

    def project_many(self, layer: str, units: Sequence[tuple], rule: str = "deconvnet"
                     ) -> torch.Tensor:
        """Several projections of one layer in one batched pass.

        Parameters
        ----------
        layer : str
        units : sequence of (channel, y, x) or (channel,)
            ``y`` and ``x`` may be ``None`` (or left out) for a whole map.
        rule : {"deconvnet", "guided", "gradient"}

        Returns
        -------
        torch.Tensor
            ``[N, 3, H, W]``.
        """
        check_rule(rule)
        targets, todo = [], []
        for unit in units:
            channel, pos = _as_unit(unit)
            self._check_unit(layer, channel, pos, need_channel=True)
            key = (layer, int(channel), pos, rule)
            targets.append(key)
            if key not in self._projections and key not in todo:
                todo.append(key)
        if todo:
            result = project(self.model, self.input_tensor, layer,
                             [Target(0, k[1], *(k[2] or (None, None))) for k in todo], rule,
                             known=self.layers, geometry=self.layer_info(layer).geometry,
                             reference=self._rec().activations[layer],
                             layout=self.layer_info(layer).layout)
            for key, p in zip(todo, result):
                self._projections[key] = p
                while len(self._projections) > 256:
                    self._projections.popitem(last=False)
        for key in targets:
            self._projections.move_to_end(key)
        return torch.stack([self._projections[k] for k in targets])

    # ------------------------------------------------------------------ rule choice (defaults)
    def default_rule(self, layer: str) -> str:
        """The backward rule a view of ``layer`` starts with; see
        :func:`zfwidgets.backend.defaults.default_rule`."""
        from .defaults import default_rule

        return default_rule(self, layer)

    def rule_reason(self, layer: str) -> str:
        """One line saying why :meth:`default_rule` picks its rule; see
        :func:`zfwidgets.backend.defaults.rule_reason`."""
        from .defaults import rule_reason

        return rule_reason(self, layer)

    def occlusion(self, size: int = 32, stride: int = 8, target: int | None = None,
                  layer: str | None = None, fill: str | float = "gray", **kwargs):
        """Occlusion sensitivity maps (the paper's Fig. 7) for the current image.

        See :func:`zfwidgets.backend.occlusion.occlusion` for the parameters and the result.
        """
        from .occlusion import occlusion

        return occlusion(self, size=size, stride=stride, target=target, layer=layer, fill=fill,
                         **kwargs)

    def layer_module(self, layer: str) -> nn.Module:
        """The ``nn.Module`` behind a layer id."""
        self.layer_info(layer)
        return self.model.get_submodule(split_layer_id(layer)[0])

    # ------------------------------------------------------------------ class maps, ablation
    def saliency(self, target=None):
        """Gradient saliency of a class (Simonyan et al. 2014); see
        :func:`zfwidgets.backend.explain.saliency`. Returns a :class:`ClassMap`."""
        from .explain import saliency

        return saliency(self, target)

    def gradcam(self, target=None, layer: str | None = None):
        """Grad-CAM of a class (Selvaraju et al. 2017); see
        :func:`zfwidgets.backend.explain.gradcam`. Returns a :class:`ClassMap`."""
        from .explain import gradcam

        return gradcam(self, target, layer)

    def guided_gradcam(self, target=None, layer: str | None = None):
        """Guided Grad-CAM of a class; see :func:`zfwidgets.backend.explain.guided_gradcam`.
        Returns a :class:`ClassMap`."""
        from .explain import guided_gradcam

        return guided_gradcam(self, target, layer)

    def ablated(self, layer: str, channels) -> Session:
        """A new session on the same model and image with ``channels`` of ``layer`` set to
        zero in everything it computes; nothing is left registered on the model. See
        :func:`zfwidgets.backend.explain.ablated_session`."""
        from .explain import ablated_session

        return ablated_session(self, layer, channels)

    @property
    def knockouts(self) -> dict[str, tuple[int, ...]]:
        """The maps knocked out (zero) in everything the session computes: layer id ->
        channels; empty when the model is intact (see :meth:`set_knockouts`)."""
        from .explain import knockouts

        return knockouts(self)

    def set_knockouts(self, knockouts=None) -> None:
        """Knock these maps out from now on, in place of those knocked out before.

        Parameters
        ----------
        knockouts : mapping of str to int or sequence of int, or None
            Layer id -> the channels of its maps to set to zero in every forward pass the
            session runs (predictions, maps, projections, class maps, occlusion, mining).
            ``None`` or an empty mapping: the intact model again.

        Raises
        ------
        UnknownLayerError, OutOfRangeError, BadParameterError
            An unknown layer, a channel it does not have, something that is not a channel id;
            the session keeps its knock-outs.

        Notes
        -----
        The session's model becomes an :class:`~zfwidgets.backend.explain.AblatedModel` over
        the same modules (nothing is registered on the user's model between calls), its
        ``entry.weights_id`` names the knock-outs, the image stays, and the listeners hear
        ``"knockouts"`` (views keep their layer and channel and recompute). A new model
        (:meth:`set_model`) starts intact. :meth:`ablated` gives a separate session instead.
        """
        from .explain.ablation import ablated_entry

        entry = ablated_entry(self, knockouts)
        if entry.weights_id == self.entry.weights_id:
            return
        self._set_model(entry)
        self._notify("knockouts")

    def __repr__(self) -> str:
        c = self.entry
        return (f"Session(model={c.name!r}, image={self.image_name!r}, "
                f"input={tuple(self.input_tensor.shape)}, layers={len(self.layers)})")
