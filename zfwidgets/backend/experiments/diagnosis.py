"""Architecture diagnosis from the filters (the paper's Fig. 6): dead filters, which spatial
frequencies the filters cover, and how much of them the layer's stride aliases.

Section 4.1 of the paper looks at AlexNet's first layer (11 x 11 filters, stride 4): "a mix of
extremely high and low frequency information, with little coverage of the mid frequencies", some
"dead" filters, and aliasing artifacts in layer 2 "caused by the large stride 4 used in the
1st layer convolutions". Reducing the first filters to 7 x 7 and the stride to 2 (ZFNet) fixed
both. The measures here make those observations numbers, for any convolution of any model:

* **dead**: a filter whose RMS is below ``dead_ratio`` of the layer's largest (it contributes
  almost nothing). With a :class:`~zfwidgets.MiningResult` of the layer, a map that never
  activates on the data set counts as dead too.
* **spectrum**: each filter's energy ``sum over input channels of |DFT|^2`` (zero-padded to
  ``size x size``) in bands of radial frequency, in cycles per pixel (0 = flat, 0.5 = the finest
  stripes a pixel grid can hold, ``0.5 * sqrt(2)`` in the corners).
* **aliased**: the fraction of each filter's energy at frequencies its output grid cannot
  represent: above ``0.5 / stride`` cycles per pixel on either axis. A convolution with stride
  ``s`` samples its output every ``s`` pixels, so that energy folds back as false, lower
  frequencies (the artifacts of Fig. 6 (d)).
* **clipped**: filters whose RMS exceeds the feature-scale-clipping radius (0.1 in the paper),
  the ones its training trick would have renormalized.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ...errors import BadParameterError, OutOfRangeError
from ..layers import first_rgb_conv, resolve_layer

__all__ = ["FilterDiagnosis", "aliased_energy", "diagnose_filters", "filter_spectra"]


@dataclass
class FilterDiagnosis:
    """Measures of the filters of one convolution layer.

    Attributes
    ----------
    layer : str
        Layer id of the ``nn.Conv2d``.
    kernel, stride : (int, int)
        Its kernel size and stride ``(rows, columns)``.
    rms : numpy.ndarray
        ``[F]`` root mean square of each filter's weights.
    dead : numpy.ndarray
        ``[F]`` bool, filters counted as dead (see the module docstring).
    frequencies : numpy.ndarray
        ``[B]`` centre of each radial frequency band, cycles per pixel.
    spectrum : numpy.ndarray
        ``[F, B]`` fraction of each filter's energy per band (rows sum to 1; 0 for an all-zero
        filter).
    aliased : numpy.ndarray
        ``[F]`` fraction of each filter's energy above the output grid's Nyquist frequency.
    radius : float
        The feature-scale-clipping radius used.
    """

    layer: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    rms: np.ndarray
    dead: np.ndarray
    frequencies: np.ndarray
    spectrum: np.ndarray
    aliased: np.ndarray
    radius: float

    @property
    def dominant(self) -> np.ndarray:
        """``[F]`` centre frequency of each filter's strongest band."""
        return self.frequencies[self.spectrum.argmax(1)]

    @property
    def clipped(self) -> np.ndarray:
        """``[F]`` bool, RMS above ``radius`` (by more than one part in a million: a filter
        just renormalized to the radius is not over it)."""
        return self.rms > self.radius * (1 + 1e-6)

    @property
    def nyquist(self) -> tuple[float, float]:
        """Highest frequency the output grid holds on each axis, ``0.5 / stride``."""
        return 0.5 / self.stride[0], 0.5 / self.stride[1]

    def band_coverage(self) -> np.ndarray:
        """``[B]`` mean energy fraction per band over the live (not dead) filters: where the
        layer's filters put their energy. Little mass in the middle bands is Fig. 6's
        "missing mid frequencies"."""
        live = ~self.dead
        if not live.any():
            return np.zeros(len(self.frequencies))
        return self.spectrum[live].mean(0)

    def summary(self) -> dict:
        """A few numbers: filters, dead filters, mean aliased energy of the live filters, filters
        over the clipping radius, and the energy fractions below, between and above a third and
        two thirds of the Nyquist frequency of the pixel grid (0.5 cycles per pixel)."""
        live = ~self.dead
        cover = self.band_coverage()
        f = self.frequencies
        return {
            "layer": self.layer, "kernel": self.kernel, "stride": self.stride,
            "filters": int(len(self.rms)), "dead": int(self.dead.sum()),
            "aliased energy": float(self.aliased[live].mean()) if live.any() else 0.0,
            "over clipping radius": int(self.clipped.sum()),
            "low / mid / high energy": (float(cover[f < 1 / 6].sum()),
                                        float(cover[(f >= 1 / 6) & (f < 1 / 3)].sum()),
                                        float(cover[f >= 1 / 3].sum())),
        }


def filter_spectra(weight: torch.Tensor, size: int = 64) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
    """Energy of each filter per 2-d frequency.

    Parameters
    ----------
    weight : torch.Tensor
        ``[F, C, kh, kw]`` convolution weights.
    size : int
        The filters are zero-padded to ``size x size`` before the DFT (finer frequency bins).

    Returns
    -------
    energy : numpy.ndarray
        ``[F, size, size]`` ``sum over C of |DFT|^2``.
    fy, fx : numpy.ndarray
        ``[size]`` frequency of each bin along rows and columns, cycles per pixel in
        ``[-0.5, 0.5)``.
    """
    w = weight.detach().to(torch.float64).cpu()
    if w.dim() != 4:
        raise BadParameterError(f"filters must be [F, C, kh, kw], got {list(w.shape)}")
    if size < max(w.shape[2], w.shape[3]):
        raise BadParameterError(f"size {size} is smaller than the {w.shape[2]}x{w.shape[3]} "
                                "kernel")
    spec = torch.fft.fft2(w, s=(size, size))
    energy = (spec.real ** 2 + spec.imag ** 2).sum(1).numpy()
    freq = np.fft.fftfreq(size)
    return energy, freq, freq


def _aliased(energy: np.ndarray, fy: np.ndarray, fx: np.ndarray, stride: tuple[int, int]
             ) -> np.ndarray:
    """Each filter's energy above ``0.5 / stride`` cycles per pixel on either axis."""
    sy, sx = stride
    outside = (np.abs(fy)[:, None] > 0.5 / sy + 1e-12) | (np.abs(fx)[None, :] > 0.5 / sx + 1e-12)
    return energy[:, outside].sum(1)


def aliased_energy(weight: torch.Tensor, stride, size: int = 64) -> np.ndarray:
    """The fraction of each filter's energy that a convolution of this stride aliases.

    Parameters
    ----------
    weight : torch.Tensor
        ``[F, C, kh, kw]`` convolution weights.
    stride : int or (int, int)
        The convolution's stride (rows, columns).
    size : int
        The filters are zero-padded to ``size x size`` before the DFT.

    Returns
    -------
    numpy.ndarray
        ``[F]``: energy (``sum over C of |DFT|^2``) at frequencies above ``0.5 / stride`` cycles
        per pixel on either axis, over the filter's whole energy (0 for an all-zero filter).
    """
    sy, sx = (stride, stride) if isinstance(stride, int) else tuple(stride)
    energy, fy, fx = filter_spectra(weight, size)
    total = energy.reshape(energy.shape[0], -1).sum(1)
    return _aliased(energy, fy, fx, (int(sy), int(sx))) / np.where(total > 0, total, 1.0)


def diagnose_filters(model, layer: str | None = None, *, dead_ratio: float = 0.05,
                     size: int = 64, bands: int = 12, radius: float = 0.1,
                     mined=None) -> FilterDiagnosis:
    """Diagnose the filters of one convolution (default: the first one reading RGB).

    Parameters
    ----------
    model : nn.Module or Session
        The network (a :class:`~zfwidgets.Session`'s model is used); only read.
    layer : str, optional
        Layer id of an ``nn.Conv2d``; default the first convolution with 3 input channels.
    dead_ratio : float
        A filter whose RMS is below this fraction of the layer's largest RMS is dead.
    size : int
        Zero-padded DFT size.
    bands : int
        Radial frequency bands between 0 and ``0.5 * sqrt(2)`` cycles per pixel.
    radius : float
        Feature-scale-clipping radius (the paper's 0.1).
    mined : MiningResult or LayerTopK, optional
        Top activations over a data set (:func:`zfwidgets.mine`) of ``layer``, or of the
        rectifier right after it; a map whose strongest activation is not above 0 is counted
        as dead as well.

    Returns
    -------
    FilterDiagnosis

    Raises
    ------
    BadParameterError
        A layer that is not an ``nn.Conv2d``, a model without one reading RGB, or bad numbers.
    UnknownLayerError
        An unknown layer id.
    """
    net = getattr(model, "model", model)
    if not isinstance(net, nn.Module):
        raise BadParameterError(f"expected an nn.Module or a Session, got {type(model).__name__}")
    if not 0 <= dead_ratio < 1:
        raise BadParameterError(f"dead_ratio must be in [0, 1), got {dead_ratio}")
    if isinstance(bands, bool) or not isinstance(bands, int) or bands < 2:
        raise BadParameterError(f"bands must be an integer >= 2, got {bands!r}")
    if not radius > 0:
        raise BadParameterError(f"radius must be positive, got {radius}")
    known = getattr(model, "layers", None)
    if layer is None:
        found = first_rgb_conv(net)
        if found is None:
            raise BadParameterError("the model has no convolution reading 3 channels; "
                                    "pass layer=... (a Conv2d's layer id)")
        layer, conv = found
    else:
        conv, _ = resolve_layer(net, layer, known)
    if not isinstance(conv, nn.Conv2d):
        raise BadParameterError(f"layer {layer!r} is a {type(conv).__name__}, not an nn.Conv2d")
    w = conv.weight.detach()
    F_ = w.shape[0]
    rms = w.double().pow(2).flatten(1).mean(1).sqrt().cpu().numpy()
    dead = rms < dead_ratio * rms.max() if rms.max() > 0 else np.ones(F_, bool)
    if mined is not None:
        top = mined[layer] if hasattr(mined, "layers") else mined  # MiningResult or LayerTopK
        best = np.asarray(top.values[:, 0], dtype=np.float64)
        if best.shape[0] != F_:
            raise OutOfRangeError(f"the mining result has {best.shape[0]} channels, layer "
                                  f"{layer!r} has {F_}")
        dead = dead | ~(best > 0)

    energy, fy, fx = filter_spectra(w, size)
    radial = np.hypot(fy[:, None], fx[None, :])
    edges = np.linspace(0, 0.5 * math.sqrt(2) + 1e-9, bands + 1)
    which = np.clip(np.digitize(radial, edges) - 1, 0, bands - 1)
    per_band = np.stack([energy[:, which == b].sum(1) for b in range(bands)], 1)
    total = energy.reshape(F_, -1).sum(1)
    safe = np.where(total > 0, total, 1.0)
    spectrum = per_band / safe[:, None]
    sy, sx = conv.stride
    aliased = _aliased(energy, fy, fx, (sy, sx)) / safe
    centres = 0.5 * (edges[:-1] + edges[1:])
    return FilterDiagnosis(
        layer=layer, kernel=tuple(conv.kernel_size), stride=(sy, sx), rms=rms, dead=dead,
        frequencies=centres, spectrum=spectrum, aliased=aliased, radius=float(radius))
