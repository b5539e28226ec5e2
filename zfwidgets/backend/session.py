"""The Session: one model, one image, one cached forward pass; the state every widget shares."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data import DEFAULT_SAMPLE, load_image, load_sample
from ..errors import BadParameterError, OutOfRangeError, UnknownLayerError, UnsupportedModelError
from ..fingerprint import tensor_digest
from ..models import LoadedModel, Preprocessing, class_name, get_model, wrap_model
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


class Session:
    """A model, an image and everything computed from them, cached.

    Parameters
    ----------
    model : str or nn.Module or LoadedModel, default "efficientnet_lite0"
        A registry name (see :func:`zfwidgets.list_models`), any CNN ``nn.Module`` (ImageNet
        preprocessing at 224x224 unless ``preprocessing`` says otherwise), or a LoadedModel.
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

    Notes
    -----
    The session never changes the model: forward passes run in eval mode with every module's
    ``training`` flag restored afterwards, hooks live only inside a call, and backward rules are
    applied without touching the modules (see :mod:`zfwidgets.backend.rules`). The input is
    fed in the model's own dtype (float64, bfloat16 ...).
    """

    def __init__(self, model: str | nn.Module | LoadedModel = "efficientnet_lite0", image=None, *,
                 weights="default", preprocessing: Preprocessing | None = None, labels=None,
                 device: str | torch.device | None = None, output=None):
        self._listeners: list[Listener] = []
        self._device_request = device
        self.version = 0
        self._image: Image.Image | None = None
        self.image_name = ""
        self._set_model(resolve_model(model, weights=weights, preprocessing=preprocessing,
                                      labels=labels, output=output))
        self._set_image(image)

    # ------------------------------------------------------------------ state changes
    def on_change(self, callback: Listener) -> None:
        """Call ``callback(what)`` after the image (``"image"``) or model (``"model"``) changes."""
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
        else:
            image = load_image(src)
        if name is None:
            name = str(src) if isinstance(src, (str,)) or hasattr(src, "__fspath__") else "image"
        self._image = image
        self.image_name = name
        self._reset()

    def set_model(self, model: str | nn.Module | LoadedModel, *, weights="default",
                  preprocessing: Preprocessing | None = None, labels=None, output=None) -> None:
        """Switch to another model (same arguments as the constructor); keeps the image."""
        self._set_model(resolve_model(model, weights=weights, preprocessing=preprocessing,
                                      labels=labels, output=output))
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
    def _check_unit(self, layer: str, channel: int | None, position=None) -> LayerInfo:
        info = self.layer_info(layer)
        c, h, w = info.shape
        if channel is not None and not (0 <= int(channel) < c):
            raise OutOfRangeError(f"channel {channel} is out of range for layer {layer!r} "
                                  f"({c} channels: 0..{c - 1})")
        if position is not None:
            y, x = position
            if not (0 <= int(y) < h and 0 <= int(x) < w):
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
            return int(channel), y, x, float(act[channel, y, x])
        flat = int(act.argmax())
        c, rest = divmod(flat, act.shape[1] * act.shape[2])
        y, x = divmod(rest, act.shape[2])
        return c, y, x, float(act[c, y, x])

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
        return self.project_many(layer, [(channel,) + (tuple(position) if position else (None, None))],
                                 rule)[0]

    def project_many(self, layer: str, units: Sequence[tuple], rule: str = "deconvnet"
                     ) -> torch.Tensor:
        """Several projections of one layer in one batched pass.

        Parameters
        ----------
        layer : str
        units : sequence of (channel, y, x)
            ``y`` and ``x`` may be ``None`` for a whole map.
        rule : {"deconvnet", "guided", "gradient"}

        Returns
        -------
        torch.Tensor
            ``[N, 3, H, W]``.
        """
        check_rule(rule)
        targets, todo = [], []
        for unit in units:
            channel, y, x = (tuple(unit) + (None, None))[:3]
            pos = None if y is None else (int(y), int(x))
            self._check_unit(layer, channel, pos)
            key = (layer, int(channel), pos, rule)
            targets.append(key)
            if key not in self._projections and key not in todo:
                todo.append(key)
        if todo:
            result = project(self.model, self.input_tensor, layer,
                             [Target(0, k[1], *(k[2] or (None, None))) for k in todo], rule,
                             known=self.layers, layout=self.layer_info(layer).layout)
            for key, p in zip(todo, result):
                self._projections[key] = p
                while len(self._projections) > 256:
                    self._projections.popitem(last=False)
        for key in targets:
            self._projections.move_to_end(key)
        return torch.stack([self._projections[k] for k in targets])

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

    def __repr__(self) -> str:
        c = self.entry
        return (f"Session(model={c.name!r}, image={self.image_name!r}, "
                f"input={tuple(self.input_tensor.shape)}, layers={len(self.layers)})")
