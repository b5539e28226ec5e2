"""Offline sample photos: which natural images the installed packages bundle, and where.

A catalogue of names (with aliases) -> files inside installed packages: scikit-image's
``skimage/data`` folder, matplotlib's ``mpl-data/sample_data`` and, when scikit-learn happens to
be installed (zfwidgets does not depend on it), ``sklearn/datasets/images``. Each entry says what
the photo shows and whom it is credited to (the package's own note where it has one). Package
folders are found without importing the packages. Nothing is ever downloaded: a sample whose
file is missing from the installation is simply not listed by :func:`sample_images`.

Some files those folders hold are not photos and are left out on purpose: scikit-image's
``horse`` (a silhouette), ``colorwheel``, ``logo``, ``phantom``, ``chessboard``, ``cell`` (a
phase image reconstructed from a hologram), ``page`` (a scan of a printed page),
``microaneurysms`` (a 102-px crop of a retina image), ``motorcycle_right`` (the other view of the
``motorcycle`` stereo pair: nearly the same picture, which would fill a top-9 with near-copies),
and matplotlib's clip-art present and logo.

Besides photos the catalogue holds *scenes*, composed at load time from photos
(:mod:`zfwidgets.data.scenes`): :data:`OCCLUSION_SAMPLE` is a small cat photo on gravel, an
object covering an eighth of the picture, for occlusion. Nothing here decodes pixels:
:func:`~zfwidgets.data.images.load_sample` reads a photo through
:func:`~zfwidgets.data.images.load_image`, exactly the path user files take.
"""

from __future__ import annotations

import importlib.util
import pathlib
from dataclasses import dataclass

from zfwidgets.errors import BadParameterError, DataError, did_you_mean

__all__ = ["DEFAULT_SAMPLE", "OCCLUSION_SAMPLE", "SampleInfo", "SceneRecipe", "sample_images",
           "sample_info", "sample_path", "sample_photos", "scene_recipe"]

#: The sample used when none is named: Chelsea the cat (a tabby; a clear ImageNet class).
DEFAULT_SAMPLE = "chelsea"

#: The sample for occlusion (the paper's Fig. 7): Chelsea scaled down onto gravel, so the object
#: covers 13 % of the picture and an occluder over it changes the answer while one elsewhere
#: does not. EfficientNet-Lite0 still says cat (tabby 0.36, tiger cat 0.22, Egyptian cat 0.16).
OCCLUSION_SAMPLE = "cat_scene"


@dataclass(frozen=True)
class SampleInfo:
    """What a sample is and where it comes from.

    Attributes
    ----------
    name : str
        The sample's name (for :func:`~zfwidgets.data.images.load_sample`).
    description : str
        What it shows, in a few words.
    package : str
        The installed package whose files it comes from (``"scikit-image"``, ``"matplotlib"``,
        ``"scikit-learn"``); for a scene, ``"zfwidgets"``.
    file : str
        The file's path inside that package's folder (for a scene: the photos it is made of).
    credit : str
        Photographer / source and licence, as the package documents them.
    gray : bool
        A grayscale photo (loaded as RGB with three equal channels).
    """

    name: str
    description: str
    package: str
    file: str
    credit: str
    gray: bool = False


@dataclass(frozen=True)
class SceneRecipe:
    """How a scene is composed from two sample photos (see :mod:`zfwidgets.data.scenes`).

    Attributes
    ----------
    object, background : str
        Sample names: the photo pasted, and the photo it is pasted on.
    width : int
        Width in pixels of the pasted photo after scaling (aspect ratio kept).
    position : tuple of int
        ``(left, top)`` of the pasted photo in the background.
    size : int
        The scene is the background fitted (scaled and centre-cropped) to ``size`` x ``size``.
    feather : int
        Width in pixels of the soft edge of the pasted photo (0: a hard edge).
    """

    object: str
    background: str
    width: int
    position: tuple[int, int]
    size: int = 512
    feather: int = 6


_SKIMAGE = ("skimage", "data", "scikit-image")
_MATPLOTLIB = ("matplotlib", "mpl-data/sample_data", "matplotlib")
_SKLEARN = ("sklearn", "datasets/images", "scikit-learn")

# name -> ((import name, folder in it, distribution), file, what it shows, credit, gray).
# Colour photos first, then grayscale ones (which exercise the gray -> RGB path). Order is the
# order of sample_images(). Credits are the packages' own notes (scikit-image's data function
# docstrings, scikit-learn's images/README.txt).
_PHOTOS: dict[str, tuple[tuple[str, str, str], str, str, str, bool]] = {
    "chelsea": (_SKIMAGE, "chelsea.png", "Chelsea the cat, a tabby",
                "Stefan van der Walt; CC0", False),
    "coffee": (_SKIMAGE, "coffee.png", "a cup of espresso on a wooden table",
               "Rachel Michetti, courtesy of Pikolo Espresso Bar; CC0", False),
    "astronaut": (_SKIMAGE, "astronaut.png", "astronaut Eileen Collins",
                  "NASA Great Images database; public domain", False),
    "rocket": (_SKIMAGE, "rocket.jpg", "launch of DSCOVR on a Falcon 9 rocket",
               "SpaceX; public domain", False),
    "motorcycle": (_SKIMAGE, "motorcycle_left.png", "a motorcycle in a workshop",
                   "Middlebury 2014 stereo data set (Scharstein et al., GCPR 2014), "
                   "down-sampled by scikit-image", False),
    "hubble_deep_field": (_SKIMAGE, "hubble_deep_field.jpg", "galaxies of the Hubble deep field",
                          "NASA / HubbleSite; public domain", False),
    "retina": (_SKIMAGE, "retina.jpg", "fundus photograph of a human retina",
               "Mikael H\u00e4ggstr\u00f6m, Wikimedia Commons; CC0", False),
    "ihc": (_SKIMAGE, "ihc.png", "stained colonic glands under a microscope (IHC)",
            "Center for Microscopy And Molecular Imaging (CMMI); no known copyright "
            "restrictions", False),
    "grace_hopper": (_MATPLOTLIB, "grace_hopper.jpg", "Commodore Grace Hopper in uniform",
                     "U.S. Navy official portrait, a U.S. government work (public domain); "
                     "matplotlib ships it without a credit note", False),
    "china": (_SKLEARN, "china.jpg", "a Chinese pagoda among trees",
              "danielbuechele on Flickr; CC BY 2.0 (retrieved by Robert Layton)", False),
    "flower": (_SKLEARN, "flower.jpg", "an orange dahlia",
               "vultilion on Flickr (scikit-learn's README names danielbuechele); CC BY 2.0 "
               "(retrieved by Robert Layton)", False),
    "camera": (_SKIMAGE, "camera.png", "a man with a camera on a tripod",
               "Lav Varshney; CC0", True),
    "coins": (_SKIMAGE, "coins.png", "Greek coins from Pompeii",
              "Brooklyn Museum Collection; no known copyright restrictions", True),
    "moon": (_SKIMAGE, "moon.png", "the surface of the moon",
             "scikit-image (no credit given)", True),
    "text": (_SKIMAGE, "text.png", "hand-written text on a sheet of paper",
             "Wikipedia (File:Corner.png); public domain", True),
    "clock": (_SKIMAGE, "clock_motion.png", "a wall clock, blurred by camera motion",
              "Stefan van der Walt; public domain", True),
    "brick": (_SKIMAGE, "brick.png", "a brick wall",
              "CC0Textures (Bricks25), perspective-corrected by scikit-image; CC0", True),
    "grass": (_SKIMAGE, "grass.png", "grass", "linolafett on DeviantArt; CC0", True),
    "gravel": (_SKIMAGE, "gravel.png", "gravel", "CC0Textures (Gravel04); CC0", True),
}

# Scenes composed from the photos above. cat_scene: chosen among gravel / grass backgrounds, two
# widths and five positions as the one EfficientNet-Lite0 gives the most cat probability
# (tabby + tiger + Egyptian cat 0.73) with the cat off-centre and inside the model's 224 crop.
_SCENES: dict[str, tuple[SceneRecipe, str]] = {
    OCCLUSION_SAMPLE: (SceneRecipe(object="chelsea", background="gravel", width=224,
                                   position=(48, 64)),
                       "Chelsea the cat, small, on gravel (the cat covers 13 % of the picture)"),
}
_ALIASES = {"cat": "chelsea", "cameraman": "camera", "hubble": "hubble_deep_field",
            "hopper": "grace_hopper", "clock_motion": "clock", "scene": OCCLUSION_SAMPLE}


def _package_dir(package: str) -> pathlib.Path | None:
    """The installed folder of ``package``, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for location in list(spec.submodule_search_locations or []) if spec is not None else []:
        folder = pathlib.Path(location)
        if folder.is_dir():
            return folder
    return None


def _photo_file(name: str) -> pathlib.Path | None:
    """Where photo ``name`` would be in this installation (``None``: its package is missing)."""
    (package, folder, _), filename, *_ = _PHOTOS[name]
    root = _package_dir(package)
    return None if root is None else root / folder / filename


def _available(name: str) -> bool:
    if name in _SCENES:
        recipe = _SCENES[name][0]
        return _available(recipe.object) and _available(recipe.background)
    path = _photo_file(name)
    return path is not None and path.is_file()


def sample_photos() -> list[str]:
    """Names of the sample *photos* (no composed scenes) available in this installation.

    Returns
    -------
    list of str
        In catalogue order, :data:`DEFAULT_SAMPLE` first: colour photos, then grayscale ones.
        Only photos whose file ships with the installed packages are listed.
    """
    return [name for name in _PHOTOS if _available(name)]


def sample_images() -> list[str]:
    """Names of the offline samples available in this installation.

    Returns
    -------
    list of str
        The names accepted by :func:`~zfwidgets.data.images.load_sample`: the photos of
        :func:`sample_photos` (:data:`DEFAULT_SAMPLE` first), then the composed scenes
        (:data:`OCCLUSION_SAMPLE`). Only samples whose files ship with the installed
        packages are listed; the list is empty if scikit-image is not installed and neither is
        anything else.
    """
    return sample_photos() + [name for name in _SCENES if _available(name)]


def _canonical(name: str) -> str:
    if not isinstance(name, str):
        raise BadParameterError(f"sample name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key in _PHOTOS or key in _SCENES:
        return key
    known = [*_PHOTOS, *_SCENES]
    _, close = did_you_mean(key, known + list(_ALIASES))
    close = list(dict.fromkeys(_ALIASES.get(c, c) for c in close))
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    msg = f"unknown sample {name!r}{hint} Samples are: {', '.join(sample_images() or known)}"
    raise BadParameterError(msg)


def sample_info(name: str = DEFAULT_SAMPLE) -> SampleInfo:
    """What a sample shows and whom it is credited to.

    Parameters
    ----------
    name : str, optional
        A sample name or alias (case-insensitive); defaults to :data:`DEFAULT_SAMPLE`.

    Returns
    -------
    SampleInfo
        Name, description, source package, file and credit (listed even when the file is not
        installed here).

    Raises
    ------
    BadParameterError
        ``name`` is not a known sample; the message suggests close names.
    """
    key = _canonical(name)
    if key in _SCENES:
        recipe, description = _SCENES[key]
        parts = [sample_info(recipe.object), sample_info(recipe.background)]
        credit = "composed by zfwidgets from " + " and ".join(
            f"{p.name} ({p.credit})" for p in parts)
        return SampleInfo(key, description, "zfwidgets",
                          " + ".join(f"{p.package}:{p.file}" for p in parts), credit)
    (_, folder, dist), filename, description, credit, gray = _PHOTOS[key]
    return SampleInfo(key, description, dist, f"{folder}/{filename}", credit, gray)


def scene_recipe(name: str) -> SceneRecipe | None:
    """How sample ``name`` is composed, or ``None`` when it is a photo.

    Parameters
    ----------
    name : str
        A sample name or alias.

    Returns
    -------
    SceneRecipe or None

    Raises
    ------
    BadParameterError
        ``name`` is not a known sample.
    """
    key = _canonical(name)
    return _SCENES[key][0] if key in _SCENES else None


def sample_path(name: str = DEFAULT_SAMPLE) -> pathlib.Path:
    """The file on disk that holds a sample photo.

    Parameters
    ----------
    name : str, optional
        A name from :func:`sample_photos` (case-insensitive; ``"cat"`` means ``"chelsea"``).
        Defaults to :data:`DEFAULT_SAMPLE`.

    Returns
    -------
    pathlib.Path
        The absolute path of the image file inside its package's folder.

    Raises
    ------
    BadParameterError
        ``name`` is not a known sample; the message suggests close names.
    DataError
        The sample is known but its file is not part of this installation (its package is
        missing, or this version does not ship it), or it is a scene, which has no file
        (:func:`~zfwidgets.data.images.load_sample` composes it).
    """
    key = _canonical(name)
    if key in _SCENES:
        recipe = _SCENES[key][0]
        raise DataError(f"sample {key!r} is composed at load time from {recipe.object!r} and "
                        f"{recipe.background!r} and has no file; use load_sample({key!r})")
    dist = _PHOTOS[key][0][2]
    path = _photo_file(key)
    if path is None:
        raise DataError(f"sample {key!r} comes from {dist}, which is not installed "
                        f"(pip install {dist})")
    if not path.is_file():
        raise DataError(f"sample {key!r} is not bundled with the installed {dist} "
                        f"({path} is missing)")
    return path
