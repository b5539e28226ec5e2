"""Scenes composed from the sample photos at load time (nothing is stored as a binary).

A :class:`~zfwidgets.data.samples.SceneRecipe` says which photo is pasted on which, how large
and where; :func:`compose_scene` does it with plain PIL operations (Lanczos resampling, a
rectangle mask with a Gaussian-blurred edge), so the same installed photos always give the same
pixels. The photos are read by the caller's ``load`` function (the images module passes its own
:func:`~zfwidgets.data.images.load_image`), which keeps this module free of any file handling.
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image, ImageDraw, ImageFilter, ImageOps

from zfwidgets.data.samples import SceneRecipe

__all__ = ["compose_scene", "object_box"]


def object_box(recipe: SceneRecipe, object_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where the pasted photo lands: ``(left, top, right, bottom)`` in scene pixels.

    Parameters
    ----------
    recipe : SceneRecipe
        The scene.
    object_size : tuple of int
        ``(width, height)`` of the object photo before scaling.

    Returns
    -------
    tuple of int
        The box of the scaled object photo (its soft edge included).
    """
    width = int(recipe.width)
    height = max(1, round(width * object_size[1] / object_size[0]))
    left, top = recipe.position
    return left, top, left + width, top + height


def _soft_mask(size: tuple[int, int], feather: int) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle([feather, feather, size[0] - 1 - feather,
                                    size[1] - 1 - feather], fill=255)
    return mask.filter(ImageFilter.GaussianBlur(feather / 2)) if feather > 0 else mask


def compose_scene(recipe: SceneRecipe, load: Callable[[str], Image.Image]) -> Image.Image:
    """Paste the recipe's object photo, scaled down, onto its background photo.

    Parameters
    ----------
    recipe : SceneRecipe
        Which photos, the object's width and position, the scene's size and the soft edge.
    load : callable
        ``load(sample_name) -> PIL.Image.Image`` in RGB.

    Returns
    -------
    PIL.Image.Image
        A ``recipe.size`` x ``recipe.size`` RGB image.
    """
    size = (int(recipe.size), int(recipe.size))
    background = ImageOps.fit(load(recipe.background).convert("RGB"), size,
                              Image.Resampling.LANCZOS)
    photo = load(recipe.object).convert("RGB")
    left, top, right, bottom = object_box(recipe, photo.size)
    small = photo.resize((right - left, bottom - top), Image.Resampling.LANCZOS)
    scene = background.copy()
    scene.paste(small, (left, top), _soft_mask(small.size, int(recipe.feather)))
    return scene
