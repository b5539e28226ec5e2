"""Offline sample photos: which natural images the scikit-image wheel bundles, and where.

A catalogue of names (with aliases) -> files inside the installed ``skimage/data`` folder, found
without importing scikit-image. Nothing is ever downloaded: a sample whose file is missing from
the installed scikit-image version is simply not listed by :func:`sample_images`. Nothing here
decodes pixels: :func:`~zfwidgets.data.images.load_sample` reads a sample through
:func:`~zfwidgets.data.images.load_image`, exactly the path user files take.
"""

from __future__ import annotations

import importlib.util
import pathlib

from zfwidgets.errors import BadParameterError, DataError, did_you_mean

__all__ = ["DEFAULT_SAMPLE", "sample_images", "sample_path"]

#: The sample used when none is named: Chelsea the cat (a tabby; a clear ImageNet class).
DEFAULT_SAMPLE = "chelsea"

# name -> (file in skimage/data, what it shows). Colour photos first, then grayscale ones
# (which exercise the gray -> RGB path). Order is the order of sample_images().
_CATALOGUE: dict[str, tuple[str, str]] = {
    "chelsea": ("chelsea.png", "Chelsea the cat (colour photo)"),
    "coffee": ("coffee.png", "a cup of coffee on a table (colour photo)"),
    "astronaut": ("astronaut.png", "astronaut Eileen Collins (colour photo)"),
    "rocket": ("rocket.jpg", "a rocket launch (colour JPEG photo)"),
    "motorcycle": ("motorcycle_left.png", "a motorcycle (colour photo)"),
    "hubble_deep_field": ("hubble_deep_field.jpg", "Hubble deep field galaxies (colour JPEG)"),
    "camera": ("camera.png", "the cameraman (grayscale photo)"),
    "coins": ("coins.png", "Greek coins (grayscale photo)"),
    "moon": ("moon.png", "the surface of the moon (grayscale photo)"),
    "brick": ("brick.png", "a brick wall texture (grayscale photo)"),
    "grass": ("grass.png", "a grass texture (grayscale photo)"),
    "gravel": ("gravel.png", "a gravel texture (grayscale photo)"),
}
_ALIASES = {"cat": "chelsea", "cameraman": "camera", "hubble": "hubble_deep_field"}


def _data_dir() -> pathlib.Path | None:
    """The installed ``skimage/data`` folder, found without importing scikit-image."""
    try:
        spec = importlib.util.find_spec("skimage")
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = pathlib.Path(location) / "data"
        if folder.is_dir():
            return folder
    return None


def sample_images() -> list[str]:
    """Names of the offline sample photos available in this installation.

    Returns
    -------
    list of str
        The names accepted by :func:`~zfwidgets.data.images.load_sample` and
        :func:`sample_path`, with :data:`DEFAULT_SAMPLE` first (when available). Only samples
        whose file ships with the installed scikit-image are listed; the list is empty if
        scikit-image is not installed.
    """
    folder = _data_dir()
    if folder is None:
        return []
    return [name for name, (filename, _) in _CATALOGUE.items() if (folder / filename).is_file()]


def _canonical(name: str) -> str:
    if not isinstance(name, str):
        raise BadParameterError(f"sample name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key in _CATALOGUE:
        return key
    known = list(_CATALOGUE)
    _, close = did_you_mean(key, known + list(_ALIASES))
    close = list(dict.fromkeys(_ALIASES.get(c, c) for c in close))
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    msg = f"unknown sample {name!r}{hint} Samples are: {', '.join(sample_images() or known)}"
    raise BadParameterError(msg)


def sample_path(name: str = DEFAULT_SAMPLE) -> pathlib.Path:
    """The file on disk that holds a sample photo.

    Parameters
    ----------
    name : str, optional
        A name from :func:`sample_images` (case-insensitive; ``"cat"`` means ``"chelsea"``).
        Defaults to :data:`DEFAULT_SAMPLE`.

    Returns
    -------
    pathlib.Path
        The absolute path of the image file inside scikit-image's data folder.

    Raises
    ------
    BadParameterError
        ``name`` is not a known sample; the message suggests close names.
    DataError
        The sample is known but its file is not part of the installed scikit-image.
    """
    key = _canonical(name)
    folder = _data_dir()
    if folder is None:
        raise DataError(
            "the sample photos come from scikit-image, which is not installed "
            "(pip install scikit-image)"
        )
    path = folder / _CATALOGUE[key][0]
    if not path.is_file():
        raise DataError(
            f"sample {key!r} is not bundled with the installed scikit-image ({path} is missing)"
        )
    return path
