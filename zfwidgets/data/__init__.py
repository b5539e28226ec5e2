"""Image input for zfwidgets: robust loading of user images and the offline sample photos."""

from zfwidgets.data.images import MAX_PIXELS, load_image, load_sample
from zfwidgets.data.samples import (DEFAULT_SAMPLE, OCCLUSION_SAMPLE, SampleInfo, sample_images,
                                    sample_info, sample_path, sample_photos)

__all__ = [
    "DEFAULT_SAMPLE",
    "MAX_PIXELS",
    "OCCLUSION_SAMPLE",
    "SampleInfo",
    "load_image",
    "load_sample",
    "sample_images",
    "sample_info",
    "sample_path",
    "sample_photos",
]
