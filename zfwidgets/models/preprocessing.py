"""How an image becomes a model's input: resize, center-crop, scale, normalize.

:class:`Preprocessing` is the one pipeline every registry entry carries (as torchvision's weights
carry their ``transforms``). The ImageNet normalization constants live here and nowhere else in
the project. A model may read 1 (grayscale), 3 (RGB) or 4 (RGBA) channels; what a learner sees
(:meth:`Preprocessing.to_rgb`) is always RGB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from zfwidgets.errors import BadImageError, BadParameterError
from zfwidgets.fingerprint import digest

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "RESIZE_AREA_LIMIT", "Preprocessing"]

#: Per-channel RGB mean of ImageNet, in [0, 1] pixel units.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: Per-channel RGB standard deviation of ImageNet, in [0, 1] pixel units.
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Largest resized-image area, in multiples of the output area, that :meth:`Preprocessing.to_pixels`
#: builds before cropping (torchvision's order: resize, then crop). Beyond it (an aspect ratio
#: over about 6:1 for 256 -> 224: a panorama, a 4000 x 1 strip) only the crop's part of the
#: image is resized, so the work stays proportional to the output whatever the aspect ratio.
RESIZE_AREA_LIMIT = 8
# PIL mode an image is converted to for a model reading this many channels
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
_NAMES = {1: "gray", 3: "R, G, B", 4: "R, G, B, A"}


def _default_stats(channels: int, rgb: tuple[float, float, float]) -> tuple[float, ...]:
    """ImageNet's statistics for ``channels``: RGB as is, their mean for gray, alpha 0.5."""
    if channels == 1:
        return (round(sum(rgb) / 3, 4),)
    return rgb if channels == 3 else rgb + (0.5,)


def _per_channel(value: Any, what: str, channels: int) -> tuple[float, ...]:
    names = _NAMES[channels]
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise BadParameterError(f"{what} must be {channels} number(s) ({names}), got "
                                f"{value!r}") from None
    if len(out) != channels or not all(math.isfinite(v) for v in out):
        raise BadParameterError(f"{what} must be {channels} finite number(s) ({names}), got "
                                f"{value!r}")
    return out


@dataclass(frozen=True)
class Preprocessing:
    """How a PIL image becomes the model's input tensor.

    The pipeline is the usual ImageNet evaluation one (as in torchvision's weight transforms):
    convert to RGB (or gray, or RGBA: ``channels``), resize the shorter side to ``resize``
    (bilinear, antialiased), center-crop to ``size``, scale to [0, 1], subtract ``mean`` and
    divide by ``std`` per channel. For an image so elongated that the resized image would exceed
    :data:`RESIZE_AREA_LIMIT` times the output area, only the part inside the crop is resized
    (within one level of 255 of resize-then-crop per pixel), so that no aspect ratio costs more
    than a normal photo.

    Parameters
    ----------
    size : tuple of int or int
        Model input ``(H, W)``; an int means a square input (28 for MNIST-style models, 32 for
        CIFAR's ...).
    resize : int, None or "auto"
        Length the shorter image side is resized to before the center crop. ``"auto"`` (the
        default) keeps ImageNet's ratio, ``round(min(size) * 8 / 7)``: 256 for 224, 32 for 28.
        ``None`` resizes the image straight to ``size`` (aspect ratio not kept). Should the
        resized image not cover ``size`` (``resize`` smaller than the crop), it is enlarged
        just enough to cover it.
    mean, std : tuple of float, optional
        Per-channel normalization in [0, 1] pixel units, one number per channel; default
        ImageNet's (for a gray model the mean of its three values, for alpha 0.5).
    channels : {1, 3, 4}
        How many channels the model reads: 1 converts images to grayscale, 3 to RGB, 4 to RGBA.

    Examples
    --------
    >>> pre = Preprocessing()                      # ImageNet, 256 -> 224
    >>> x = pre(Image.new("RGB", (320, 240)))      # doctest: +SKIP
    >>> x.shape                                    # doctest: +SKIP
    torch.Size([1, 3, 224, 224])
    """

    size: tuple[int, int] = (224, 224)
    resize: int | None | str = "auto"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels: int = 3

    def __post_init__(self) -> None:
        size = self.size
        if isinstance(size, (int, np.integer)):
            size = (int(size), int(size))
        try:
            size = tuple(int(s) for s in size)
        except (TypeError, ValueError):
            raise BadParameterError(f"size must be (H, W) or an int, got {self.size!r}") from None
        if len(size) != 2 or min(size) < 1:
            raise BadParameterError(f"size must be two positive ints (H, W), got {self.size!r}")
        resize = self.resize
        if isinstance(resize, str) and resize == "auto":
            resize = round(min(size) * 8 / 7)
        elif resize is not None:
            if isinstance(resize, bool) or not isinstance(resize, (int, np.integer)) or resize < 1:
                raise BadParameterError(f"resize must be a positive int, None or 'auto', got "
                                        f"{resize!r}")
            resize = int(resize)
        channels = self.channels
        if isinstance(channels, bool) or channels not in _MODES:
            raise BadParameterError(f"channels must be 1 (gray), 3 (RGB) or 4 (RGBA), got "
                                    f"{channels!r}; for another input, preprocess the images "
                                    "yourself and pass tensors")
        channels = int(channels)
        mean = _per_channel(_default_stats(channels, IMAGENET_MEAN) if self.mean is None
                            else self.mean, "mean", channels)
        std = _per_channel(_default_stats(channels, IMAGENET_STD) if self.std is None
                           else self.std, "std", channels)
        if min(std) <= 0:
            raise BadParameterError(f"std must be positive, got {self.std!r}")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "resize", resize)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "channels", channels)

    # -- pixels -----------------------------------------------------------------------------

    def _resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step, before the crop."""
        out_h, out_w = self.size
        if self.resize is None:
            return out_w, out_h
        # torchvision's rule: the short side becomes `resize`, the long side int(resize*long/short)
        if width <= height:
            new_w, new_h = self.resize, int(self.resize * height / width)
        else:
            new_w, new_h = int(self.resize * width / height), self.resize
        if new_w < out_w or new_h < out_h:  # would not cover the crop: enlarge to cover it
            scale = max(out_w / width, out_h / height)
            new_w = max(out_w, math.ceil(width * scale))
            new_h = max(out_h, math.ceil(height * scale))
        return new_w, new_h

    def to_pixels(self, image: Image.Image | np.ndarray) -> Image.Image:
        """Resize and crop an image exactly as the model sees it, without normalization.

        Parameters
        ----------
        image : PIL.Image.Image or numpy.ndarray
            Any PIL image (converted to RGB), or an ``HxW``/``HxWx3``/``HxWx4`` ``uint8`` array.

        Returns
        -------
        PIL.Image.Image
            RGB (gray, RGBA: ``channels``) image of size ``size`` (PIL reports it as ``(W, H)``).

        Raises
        ------
        BadImageError
            If ``image`` is not an image or cannot be converted.
        """
        image = _as_pil(image)
        mode = _MODES[self.channels]
        try:
            rgb = image.convert(mode) if image.mode != mode else image
        except (OSError, ValueError) as exc:
            raise BadImageError(f"cannot convert a {image.mode} image to {mode}: {exc}") from exc
        width, height = rgb.size
        if width < 1 or height < 1:
            raise BadImageError(f"image is empty ({width}x{height})")
        new_w, new_h = self._resized_size(width, height)
        out_h, out_w = self.size
        left = int(round((new_w - out_w) / 2.0))
        top = int(round((new_h - out_h) / 2.0))
        if new_w * new_h > RESIZE_AREA_LIMIT * out_w * out_h:
            # Crop, then resize: the crop's box in source pixels is resized straight to the
            # output (same sampling positions and filter as resizing the whole image first).
            sx, sy = width / new_w, height / new_h
            box = (left * sx, top * sy, (left + out_w) * sx, (top + out_h) * sy)
            return rgb.resize((out_w, out_h), Image.Resampling.BILINEAR, box=box)
        if (new_w, new_h) != (width, height):
            rgb = rgb.resize((new_w, new_h), Image.Resampling.BILINEAR)
        if (new_w, new_h) != (out_w, out_h):
            rgb = rgb.crop((left, top, left + out_w, top + out_h))
        return rgb

    def draft_side(self) -> int:
        """The smallest side a large JPEG may be decoded at (libjpeg's DCT scaling) for this
        preprocessing: twice the resize target (``2 * max(resize, *size)``, 512 for 256 -> 224),
        so that the resize still shrinks the decoded image at least 2x.

        :class:`~zfwidgets.Session` passes it to :func:`zfwidgets.load_image` as ``min_side``:
        only JPEGs whose both sides are at least twice that (1024 pixels) are reduced. The
        model's input then differs slightly from a full decode (libjpeg's scaled inverse DCT
        is another low-pass filter than the antialiased resize): measured on JPEGs of photos of
        1600 x 1200 to 4000 x 3000 pixels (``bench/upload.py``), by 0.2-0.4 levels of 255 on
        average and at most 6-10 per input pixel, the top-1 class unchanged and top-5
        probabilities within 0.007. A 12-megapixel upload is analysed twice as fast.

        Returns
        -------
        int
        """
        return 2 * max(self.resize or 0, *self.size)

    def __call__(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """Turn an image into a normalized model input.

        Parameters
        ----------
        image : PIL.Image.Image or numpy.ndarray
            See :meth:`to_pixels`.

        Returns
        -------
        torch.Tensor
            ``[1, channels, H, W]`` float32 tensor on the CPU.
        """
        pixels = np.asarray(self.to_pixels(image), dtype=np.float32) / 255.0
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        x01 = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).contiguous()
        return self.normalize(x01)

    # -- normalization ----------------------------------------------------------------------

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.channels
        if x.dim() < 3 or x.shape[-3] != c:
            raise BadParameterError(f"expected a [..., {c}, H, W] tensor, got shape "
                                    f"{tuple(x.shape)}")
        dtype = x.dtype if x.is_floating_point() else torch.float32
        mean = torch.tensor(self.mean, dtype=dtype, device=x.device).view(c, 1, 1)
        std = torch.tensor(self.std, dtype=dtype, device=x.device).view(c, 1, 1)
        return mean, std

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Normalize ``[..., C, H, W]`` pixels in [0, 1] to model input.

        Parameters
        ----------
        x01 : torch.Tensor
            Pixels in [0, 1], the model's ``channels`` in dimension ``-3``.

        Returns
        -------
        torch.Tensor
            ``(x01 - mean) / std``, same shape and device.
        """
        mean, std = self._stats(x01)
        return (x01 - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`, clamped to [0, 1].

        Parameters
        ----------
        x : torch.Tensor
            Normalized ``[..., C, H, W]`` tensor.

        Returns
        -------
        torch.Tensor
            ``clamp(x * std + mean, 0, 1)``.
        """
        mean, std = self._stats(x)
        return (x * std + mean).clamp(0.0, 1.0)

    def to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """What a learner sees of a model input: :meth:`denormalize` as RGB.

        Parameters
        ----------
        x : torch.Tensor
            A model input (any batch shape, the model's channels in dimension ``-3``).

        Returns
        -------
        torch.Tensor
            RGB float32 in [0, 1] (3 channels in dimension ``-3``): a gray channel repeated
            three times, an alpha channel dropped.
        """
        x01 = self.denormalize(x).float()
        if self.channels == 1:
            return x01.expand(*x01.shape[:-3], 3, *x01.shape[-2:])
        return x01[..., :3, :, :]

    def fingerprint(self) -> str:
        """Short string that changes whenever the preprocessing does, for cache keys.

        Returns
        -------
        str
            e.g. ``"224x224r256-1a2b3c4d"``; stable across processes and platforms.
        """
        key = (self.size, self.resize, self.mean, self.std)
        if self.channels != 3:
            key += (self.channels,)
        d = digest(repr(key), length=8)
        h, w = self.size
        return f"{h}x{w}r{self.resize if self.resize is not None else 'none'}-{d}"


def _as_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
            image.ndim == 3 and image.shape[2] not in (3, 4)
        ):
            raise BadImageError(
                "an array image must be uint8 HxW, HxWx3 or HxWx4, "
                f"got {image.dtype} with shape {image.shape}"
            )
        if image.size == 0:
            raise BadImageError(f"image is empty (shape {image.shape})")
        return Image.fromarray(np.ascontiguousarray(image))
    raise BadImageError(f"expected a PIL image or a uint8 array, got {type(image).__name__}")

