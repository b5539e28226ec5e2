"""The headless overview: the explorer's main figures of a session written as PNG files.

:func:`render_overview` is what ``zfwidgets render`` calls: top-5 predictions, layer-1 filters, a
layer's feature maps and the deconvnet panel of its strongest activation.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from matplotlib.figure import Figure

from ..backend.defaults import opening_layer
from ..backend.layers import first_rgb_conv
from .deconv import deconv_panel_figure, deconv_titles, projection_image
from .mosaic import feature_mosaic_figure, filters_to_rgb
from .topk import topk_figure

__all__ = ["render_overview"]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "layer"


def render_overview(session, out_dir: str | os.PathLike, *, layer: str | None = None,
                    rule: str = "deconvnet", dpi: float = 100) -> list[Path]:
    """Write the explorer's main figures for a session as PNG files.

    Parameters
    ----------
    session : zfwidgets.Session
    out_dir : path
        Created if missing.
    layer : str, optional
        Layer of the feature maps and the projection; defaults to the model's middle layer.
    rule : {"deconvnet", "guided", "gradient"}
    dpi : float

    Returns
    -------
    list of Path
        ``predictions.png`` (when the model has class outputs), ``layer1_filters.png`` (when
        the model has a convolution reading RGB), ``feature_maps_<layer>.png`` and
        ``<rule>_<layer>.png`` (image with the receptive-field box of the strongest activation
        of the layer's strongest feature map | that map's projection | the crop).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    def save(fig: Figure, name: str) -> None:
        path = out / name
        fig.savefig(path, dpi=dpi)
        paths.append(path)

    layer = layer or opening_layer(session)
    info = session.layer_info(layer)

    if session.logits.dim() == 1 and session.logits.numel() > 1:
        fig, _ = topk_figure(session.predict(5), title=f"top-5 predictions: {session.image_name}"
                             f" ({session.entry.name})", size=(4.2, 2.0))
        save(fig, "predictions.png")

    conv = first_rgb_conv(session.model)
    if conv is not None:
        name, module = conv
        filters = filters_to_rgb(module.weight)
        fig, _ = feature_mosaic_figure(filters, title=f"layer-1 filters: {name} "
                                       f"({filters.shape[0]} x {filters.shape[1]}x{filters.shape[2]})")
        save(fig, "layer1_filters.png")

    acts = session.activation(layer).detach().cpu().numpy()
    channel = session.strongest_channel(layer)
    _, y, x, value = session.strongest(layer, channel)
    fig, _ = feature_mosaic_figure(acts, selected=channel, position=(y, x),
                                   title=f"{layer} ({info.kind}, {len(acts)} maps): "
                                         f"strongest map {channel}")
    save(fig, f"feature_maps_{_slug(layer)}.png")

    box = session.receptive_field(layer, y, x)
    proj = projection_image(session.project(layer, channel, (y, x), rule))
    fig, _ = deconv_panel_figure(
        session.display_image, proj, box, titles=deconv_titles(info, rule, "strongest"),
        suptitle=f"{layer}: map {channel}, strongest activation {value:.3g} at ({y}, {x})")
    save(fig, f"{rule}_{_slug(layer)}.png")
    return paths
