"""Pure matplotlib figures: results in, ``Figure`` and artist handles out; no widget code.

Each ``*_figure`` function has an ``update_*`` partner that changes the existing artists in place
(``set_data``, ``set_xy``) so interactive views never rebuild a figure. One module per figure:

* :mod:`.base`: ``new_figure`` (the one figure factory) and the shared colours.
* :mod:`.mosaic`: feature-map mosaics and layer-1 filters; :mod:`.deconv`: the deconvnet panel
  and ``projection_image``; :mod:`.topk`: top-5 bars; :mod:`.overview`: ``render_overview``.
* :mod:`.occlusion`, :mod:`.gallery`, :mod:`.ascent`, :mod:`.invariance`, :mod:`.evolution`,
  :mod:`.correspondence`, :mod:`.diagnosis`, :mod:`.probes`: the paper's further figures.
"""

from ..backend.layers import first_rgb_conv
from .deconv import (DeconvPanel, deconv_panel_figure, deconv_titles, projection_image,
                     update_deconv_panel)
from .mosaic import (Mosaic, MosaicLayout, feature_mosaic_figure, filters_to_rgb, mosaic_layout,
                     normalize_maps, tile_maps, update_feature_mosaic)
from .overview import render_overview
from .topk import TopKBars, topk_figure, update_topk

__all__ = [
    "DeconvPanel", "Mosaic", "MosaicLayout", "TopKBars", "deconv_panel_figure", "deconv_titles",
    "feature_mosaic_figure", "filters_to_rgb", "first_rgb_conv",
    "mosaic_layout", "normalize_maps", "projection_image", "render_overview", "tile_maps",
    "topk_figure", "update_deconv_panel", "update_feature_mosaic", "update_topk",
]
