"""Image input for zfwidgets: robust loading of user images and the offline sample photos."""

from zfwidgets.data.images import MAX_PIXELS, load_image, load_sample
from zfwidgets.data.samples import DEFAULT_SAMPLE, sample_images, sample_path

__all__ = [
    "DEFAULT_SAMPLE",
    "MAX_PIXELS",
    "load_image",
    "load_sample",
    "sample_images",
    "sample_path",
]
