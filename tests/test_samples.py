"""The offline samples: every photo the installed packages bundle, credited, and the scene.

The catalogue is checked against the package folders themselves (found here by importing the
packages, which zfwidgets avoids), the scene against a plain re-composition with PIL and against
what it is for: EfficientNet-Lite0 calls it a cat, and covering the cat (not anything else)
takes that away.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import skimage
from PIL import Image, ImageOps

import zfwidgets as zf
from zfwidgets.data import samples
from zfwidgets.data.datasets import DEFAULT_SCALES, SampleCollection, sample_collection
from zfwidgets.data.samples import (OCCLUSION_SAMPLE, sample_images, sample_info, sample_path,
                                    sample_photos, scene_recipe)
from zfwidgets.data.scenes import object_box
from zfwidgets.errors import BadParameterError, DataError

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
#: Files of those folders that are not photos of things (or near-copies of one), left out.
NOT_PHOTOS = ["horse", "colorwheel", "color", "logo", "phantom", "chessboard", "cell", "page",
              "microaneurysms", "motorcycle_right", "Minduka_Present_Blue_Pack", "logo2"]
CAT_CLASSES = range(281, 286)   # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


def _package_folder(package: str) -> Path:
    module = __import__(package)
    return Path(module.__file__).parent


def test_every_bundled_photo_is_listed_with_a_credit():
    import matplotlib

    photos = sample_photos()
    assert photos[0] == zf.DEFAULT_SAMPLE and len(set(photos)) == len(photos)
    # every photo of the skimage data folder that is a photo of something
    skimage_files = {sample_info(n).file.split("/")[-1] for n in photos
                     if sample_info(n).package == "scikit-image"}
    expected = {"chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png",
                "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "camera.png", "coins.png",
                "moon.png", "text.png", "clock_motion.png", "brick.png", "grass.png",
                "gravel.png"}
    assert skimage_files == {f for f in expected if (SKIMAGE_DATA / f).is_file()}
    assert "grace_hopper" in photos            # matplotlib is a dependency of zfwidgets
    assert Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg" == \
        sample_path("grace_hopper")
    assert not set(NOT_PHOTOS) & set(photos)
    for name in photos:
        info = sample_info(name)
        assert info.name == name and len(info.description) > 3 and len(info.credit) > 10
        path = sample_path(name)
        assert path.is_file() and path.is_relative_to(
            _package_folder({"scikit-image": "skimage", "matplotlib": "matplotlib",
                             "scikit-learn": "sklearn"}[info.package]))
        assert path.as_posix().endswith(info.file)


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="needs scikit-learn")
def test_scikit_learn_photos_when_it_is_installed():
    import sklearn.datasets

    ours = [np.asarray(zf.load_sample(n)) for n in ("china", "flower")]
    theirs = sklearn.datasets.load_sample_images().images
    assert [a.shape for a in ours] == [a.shape for a in theirs]
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    assert "CC BY 2.0" in sample_info("china").credit


def test_a_package_that_is_missing_leaves_its_photos_out(monkeypatch):
    real = samples._package_dir
    monkeypatch.setattr(samples, "_package_dir",
                        lambda package: None if package == "sklearn" else real(package))
    assert "china" not in sample_images() and "flower" not in sample_photos()
    assert "grace_hopper" in sample_photos()
    with pytest.raises(DataError, match="scikit-learn, which is not installed"):
        sample_path("china")
    assert sample_info("china").package == "scikit-learn"     # still described
    coll = sample_collection()
    assert "china" not in coll.samples
    assert not any(coll.name(i).startswith(("china", "flower")) for i in range(len(coll)))


def test_samples_load_as_rgb_and_gray_ones_have_equal_channels():
    for name in sample_photos():
        image = np.asarray(zf.load_sample(name))
        assert image.ndim == 3 and image.shape[2] == 3 and image.std() > 5, name
        equal = bool((image[..., 0] == image[..., 1]).all() and
                     (image[..., 1] == image[..., 2]).all())
        assert equal == sample_info(name).gray, name


def test_unknown_and_alias_names():
    assert sample_info("Hopper").name == "grace_hopper"
    assert sample_info("clock_motion").name == "clock"
    with pytest.raises(BadParameterError, match="did you mean 'cat_scene'"):
        sample_info("cat_scen")


# -- the scene ------------------------------------------------------------------------------


def _reference_scene() -> tuple[np.ndarray, tuple[int, int, int, int], np.ndarray]:
    """The scene by hand: gravel at 512 x 512, Chelsea resized to 224 px wide at (48, 64)."""
    gravel = Image.open(SKIMAGE_DATA / "gravel.png").convert("RGB")
    gravel = ImageOps.fit(gravel, (512, 512), Image.Resampling.LANCZOS)
    cat = Image.open(SKIMAGE_DATA / "chelsea.png").convert("RGB")
    small = cat.resize((224, round(224 * cat.height / cat.width)), Image.Resampling.LANCZOS)
    return np.asarray(gravel), (48, 64, 48 + small.width, 64 + small.height), np.asarray(small)


def test_scene_is_the_cat_scaled_onto_gravel():
    assert OCCLUSION_SAMPLE == zf.OCCLUSION_SAMPLE == "cat_scene"
    assert OCCLUSION_SAMPLE in sample_images() and OCCLUSION_SAMPLE not in sample_photos()
    scene = np.asarray(zf.load_sample(OCCLUSION_SAMPLE))
    assert np.array_equal(scene, np.asarray(zf.load_sample("scene")))      # deterministic
    gravel, box, cat = _reference_scene()
    left, top, right, bottom = box
    assert box == object_box(scene_recipe(OCCLUSION_SAMPLE), zf.load_sample("chelsea").size)
    assert scene.shape == (512, 512, 3)
    assert (right - left) * (bottom - top) < 512 * 512 / 4            # under a quarter
    outside = np.ones((512, 512), bool)
    outside[top:bottom, left:right] = False
    assert np.array_equal(scene[outside], gravel[outside])            # the background untouched
    f = scene_recipe(OCCLUSION_SAMPLE).feather * 3                     # past the soft edge
    assert np.array_equal(scene[top + f:bottom - f, left + f:right - f], cat[f:-f, f:-f])
    info = sample_info(OCCLUSION_SAMPLE)
    assert "chelsea" in info.credit and "gravel" in info.credit and info.package == "zfwidgets"
    with pytest.raises(DataError, match="load_sample"):
        sample_path(OCCLUSION_SAMPLE)


def test_scene_is_a_cat_and_covering_the_cat_is_what_matters():
    session = zf.Session("efficientnet_lite0", zf.load_sample(OCCLUSION_SAMPLE))
    top5 = session.predict(5)
    probs = session.probabilities()
    assert top5[0][0] in {session.label(c) for c in CAT_CLASSES}
    assert float(probs[list(CAT_CLASSES)].sum()) > 0.5

    scene = np.asarray(zf.load_sample(OCCLUSION_SAMPLE))
    left, top, right, bottom = _reference_scene()[1]

    def p_cat_with_gray(x: int, y: int) -> float:
        occluded = scene.copy()
        occluded[y:y + bottom - top, x:x + right - left] = 128
        session.set_image(occluded)
        return float(session.probabilities()[list(CAT_CLASSES)].sum())

    assert p_cat_with_gray(left, top) < 0.05                          # the cat covered
    assert p_cat_with_gray(240, 300) > 0.5                            # the same gray elsewhere


def test_scene_in_a_collection():
    coll = SampleCollection(samples=[OCCLUSION_SAMPLE])
    assert coll.name(0) == OCCLUSION_SAMPLE and coll.load(0).size == (512, 512)
    assert len(coll) == 1 + 4 + 9
    assert np.array_equal(np.asarray(coll.load(1)),
                          np.asarray(zf.load_sample(OCCLUSION_SAMPLE))[:256, :256])
    assert coll.fingerprint() != SampleCollection(samples=["gravel"]).fingerprint()


# -- the collection -------------------------------------------------------------------------


def _crops(width: int, height: int) -> int:
    total = 1
    for scale in DEFAULT_SCALES:
        side = round(scale * min(width, height))
        total += max(1, round(width / side)) * max(1, round(height / side))
    return total


def test_collection_holds_every_photo_whole_and_in_crops():
    coll = sample_collection()
    assert coll.samples == sample_photos()                    # photos only, no scene
    sizes = {n: Image.open(sample_path(n)).size for n in sample_photos()}
    assert len(coll) == sum(_crops(*size) for size in sizes.values())
    photos = [coll.name(i).split()[0] for i in range(len(coll))]
    assert set(photos) == set(sample_photos())
    assert photos.count("chelsea") == _crops(451, 300) == 22
    assert coll.fingerprint() == sample_collection().fingerprint()
    assert coll.spec() == {"kind": "samples", "scales": list(DEFAULT_SCALES),
                           "samples": sample_photos()}
