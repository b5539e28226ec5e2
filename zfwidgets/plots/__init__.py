"""Pure matplotlib figures: results in, ``Figure`` and artist handles out; no widget code.

Each ``*_figure`` function has an ``update_*`` partner that changes the existing artists in place
(``set_data``, ``set_xy``) so interactive views never rebuild a figure.
"""

from .figures import (DeconvPanel, Mosaic, MosaicLayout, TopKBars, deconv_panel_figure,
                      deconv_titles, feature_mosaic_figure, filters_to_rgb,
                      first_rgb_conv, mosaic_layout, normalize_maps, projection_image,
                      render_overview, tile_maps, topk_figure, update_deconv_panel,
                      update_feature_mosaic, update_topk)

__all__ = [
    "DeconvPanel", "Mosaic", "MosaicLayout", "TopKBars", "deconv_panel_figure", "deconv_titles",
    "feature_mosaic_figure", "filters_to_rgb", "first_rgb_conv",
    "mosaic_layout", "normalize_maps", "projection_image", "render_overview", "tile_maps",
    "topk_figure", "update_deconv_panel", "update_feature_mosaic", "update_topk",
]
