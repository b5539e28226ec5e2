"""Image sources for mining: a folder, a list of images, any torch ``Dataset``, or the samples.

An :class:`ImageSource` is an indexed collection of images. Index ``i`` is the image's *id*: it
is stable (a folder is listed recursively in sorted order), so a mining result can name its hits
by id and a gallery can load image ``i`` again later. Loading one item never raises anything
but :class:`~zfwidgets.errors.BadImageError` for a bad item, which mining skips, counts and
reports.

Every source also has a *fingerprint*: a short string that changes when the data does (a
folder's relative paths, sizes and modification times; a list's content hashes). Mining results
are cached on disk under it. A torch ``Dataset`` cannot be fingerprinted without reading it all,
so its fingerprint is whatever the caller passes (``None``: no disk cache).

:func:`as_source` turns whatever a user hands over into a source; ``None`` means
:func:`sample_collection`, the offline default.
"""

from __future__ import annotations

import io
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from zfwidgets.data.images import load_image, load_sample
from zfwidgets.data.samples import sample_path, sample_photos, scene_recipe
from zfwidgets.errors import BadImageError, BadParameterError, DataError
from zfwidgets.fingerprint import digest, file_digest

__all__ = [
    "ImageSource",
    "ImageFolder",
    "ImageList",
    "DatasetSource",
    "SampleCollection",
    "DEFAULT_SCALES",
    "as_source",
    "image_extension",
    "sample_collection",
    "source_from_spec",
]

#: Crop scales of :func:`sample_collection`: square crops with a side of 1/2 and 1/3 of each
#: photo's shorter side, on a grid that covers the photo.
DEFAULT_SCALES: tuple[float, ...] = (1 / 2, 1 / 3)


class ImageSource:
    """An indexed collection of images (base class).

    Subclasses implement :meth:`__len__`, :meth:`load`, :meth:`name` and :meth:`fingerprint`;
    :meth:`spec` is optional (``None``: the source cannot be rebuilt from a result file).
    """

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> Image.Image:
        """Image ``index`` as an RGB PIL image.

        Raises
        ------
        BadImageError
            The item cannot be read or is not an image (the message names it).
        OutOfRangeError
            ``index`` is not in ``range(len(self))``.
        """
        raise NotImplementedError

    def name(self, index: int) -> str:
        """A short human-readable name of image ``index`` (a relative path, a crop ...)."""
        return f"image {index}"

    def fingerprint(self) -> str | None:
        """A string that changes when the data changes; ``None`` when it cannot be known."""
        return None

    def spec(self) -> dict | None:
        """Plain data from which :func:`source_from_spec` rebuilds this source, or ``None``."""
        return None

    def _check(self, index: int) -> int:
        from zfwidgets.errors import OutOfRangeError

        n = len(self)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < n:
            raise OutOfRangeError(f"image id {index!r} is out of range for {self!r} ({n} images)")
        return int(index)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images)"


def image_extension(name: str) -> bool:
    """Whether a file called ``name`` may hold an image, judged by its extension: one Pillow
    has a plugin for, a photo format it may lack one for (HEIC, AVIF, JPEG XL, camera raw), or
    none at all (an image saved without one). ``README.txt``, ``labels.csv``, ``model.pt`` are
    not."""
    suffix = os.path.splitext(name)[1].lower()
    return not suffix or suffix in _image_extensions()


_PHOTO_EXTENSIONS = frozenset({".heic", ".heif", ".avif", ".jxl", ".svg", ".dng", ".cr2", ".cr3",
                               ".nef", ".arw", ".orf", ".rw2", ".raf", ".raw"})
_EXTENSIONS: list[frozenset] = []


def _image_extensions() -> frozenset:
    if not _EXTENSIONS:  # Pillow registers its plugins' extensions on first use
        _EXTENSIONS.append(frozenset(Image.registered_extensions()) | _PHOTO_EXTENSIONS)
    return _EXTENSIONS[0]


class ImageFolder(ImageSource):
    """Every image file under a folder, recursively, in sorted order of relative path.

    Hidden files and folders (names starting with ``"."``, such as ``.ipynb_checkpoints``) are
    left out. Files whose extension says they are no image (``README.txt``, ``labels.csv``:
    see :func:`image_extension`) are left out too and counted apart, in :attr:`ignored`,
    without a reason each. Every other entry is listed: one that is not a readable image (a
    corrupt or empty file, a decompression bomb, a FIFO, socket or device, which is never
    opened) raises :class:`BadImageError` when loaded, and mining skips it, counts it and
    reports why.

    Parameters
    ----------
    root : str or path-like
        The folder.
    max_pixels : int, optional
        Largest ``width * height`` decoded (see :func:`zfwidgets.data.load_image`).

    Attributes
    ----------
    paths : list of str
        The listed files, relative to ``root`` (``/``-separated); image ``i`` is ``paths[i]``.
    ignored : list of str
        The files left out for their extension, relative to ``root``.

    Raises
    ------
    DataError
        ``root`` is not a folder.
    """

    def __init__(self, root: str | os.PathLike, *, max_pixels: int | None = None):
        root = pathlib.Path(root).expanduser()
        if not root.is_dir():
            raise DataError(f"{str(root)!r} is not a folder of images")
        self.root = root.resolve()
        self.max_pixels = max_pixels
        entries: list[tuple[str, int, int]] = []
        self.ignored: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in filenames:
                if fname.startswith("."):
                    continue
                full = os.path.join(dirpath, fname)
                rel = pathlib.Path(full).relative_to(self.root).as_posix()
                if not image_extension(fname):
                    self.ignored.append(rel)
                    continue
                try:
                    st = os.stat(full)  # stat only: a FIFO is listed, never opened
                except OSError:  # a dangling link: listed, and reported as unreadable later
                    st = None
                entries.append((rel, st.st_size if st else -1, st.st_mtime_ns if st else -1))
        entries.sort()
        self.ignored.sort()
        self.paths: list[str] = [e[0] for e in entries]
        self._fingerprint = digest("folder", *(f"{r}\t{s}\t{m}" for r, s, m in entries))

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image:
        return load_image(self.root / self.paths[self._check(index)], max_pixels=self.max_pixels)

    def name(self, index: int) -> str:
        return self.paths[self._check(index)]

    def path(self, index: int) -> pathlib.Path:
        """Absolute path of image ``index``."""
        return self.root / self.paths[self._check(index)]

    def fingerprint(self) -> str:
        return self._fingerprint

    def spec(self) -> dict:
        return {"kind": "folder", "root": str(self.root), "max_pixels": self.max_pixels}

    def __repr__(self) -> str:
        extra = f", {len(self.ignored)} non-image file(s) ignored" if self.ignored else ""
        return f"ImageFolder({str(self.root)!r}, {len(self)} files{extra})"


def _itemdigest(item: Any) -> str:
    """Content hash of one list item (file bytes, pixels, array data)."""
    if isinstance(item, (str, os.PathLike)):
        try:
            return "file:" + file_digest(item)
        except OSError as exc:
            return digest("unreadable", os.fspath(item), type(exc).__name__)
    if isinstance(item, Image.Image):
        return digest("pil", item.mode, item.size, item.tobytes())
    if isinstance(item, np.ndarray):
        return digest("array", item.dtype.str, item.shape, np.ascontiguousarray(item).tobytes())
    if isinstance(item, (bytes, bytearray, memoryview)):
        return digest("bytes", bytes(item))
    if type(item).__module__.startswith("torch"):
        t = item.detach().cpu().contiguous()
        return digest("tensor", t.dtype, tuple(t.shape), t.numpy().tobytes())
    return digest("object", repr(item))


def _unwrap(item: Any) -> Any:
    """The image of an ``(image, label, ...)`` tuple or an ``{"image": ...}`` dict."""
    if isinstance(item, dict):
        for key in ("image", "img"):
            if key in item:
                return item[key]
    elif isinstance(item, (tuple, list)) and item:
        return item[0]
    return item


class ImageList(ImageSource):
    """A list of images: paths, PIL images, arrays, tensors or encoded bytes (mixed is fine).

    Parameters
    ----------
    items : sequence
        Anything :func:`zfwidgets.data.load_image` accepts, or ``(image, label)`` tuples.
    names : sequence of str, optional
        Display names; default: the path for paths, ``"image i"`` otherwise.
    max_pixels : int, optional
        Largest ``width * height`` decoded.
    """

    def __init__(self, items: Sequence[Any], names: Sequence[str] | None = None, *,
                 max_pixels: int | None = None):
        self.items = list(items)
        if names is not None:
            names = [str(n) for n in names]
            if len(names) != len(self.items):
                raise BadParameterError(
                    f"names has {len(names)} entries but there are {len(self.items)} images")
        self._names = names
        self.max_pixels = max_pixels
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> Image.Image:
        item = _unwrap(self.items[self._check(index)])
        return load_image(item, max_pixels=self.max_pixels)

    def name(self, index: int) -> str:
        index = self._check(index)
        if self._names is not None:
            return self._names[index]
        item = self.items[index]
        if isinstance(item, (str, os.PathLike)):
            return os.fspath(item)
        return f"image {index}"

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = digest("list", *(_itemdigest(item) for item in self.items))
        return self._fingerprint

    def spec(self) -> dict | None:
        if all(isinstance(item, (str, os.PathLike)) for item in self.items):
            return {"kind": "paths", "paths": [os.path.abspath(os.fspath(p)) for p in self.items],
                    "names": self._names, "max_pixels": self.max_pixels}
        return None


class DatasetSource(ImageSource):
    """Any map-style torch ``Dataset`` (or sequence) whose items are images.

    An item may be a PIL image, a numpy array, a tensor ``[3, H, W]`` with values in [0, 1]
    (converted to 8-bit), encoded bytes, an ``(image, label, ...)`` tuple, or a dict with an
    ``"image"`` or ``"img"`` entry. An item that fails to load (the dataset raises, or the image
    is bad) is reported as a bad image.

    Parameters
    ----------
    dataset : torch.utils.data.Dataset or sequence
        Must support ``len()`` and integer indexing.
    fingerprint : str, optional
        Identifies the data for the disk cache (e.g. ``"cifar10-test-v1"``). Without it, results
        over this source are not cached on disk.
    names : callable, optional
        ``names(i) -> str`` display name of item ``i``.
    """

    def __init__(self, dataset: Any, *, fingerprint: str | None = None, names=None):
        try:
            len(dataset)
        except TypeError:
            raise DataError(
                f"a {type(dataset).__name__} has no len(); mining needs a map-style dataset "
                "(an IterableDataset cannot be indexed: wrap it in a list first)") from None
        self.dataset = dataset
        self._fingerprint = None if fingerprint is None else digest("dataset", fingerprint)
        self._names = names

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> Image.Image:
        index = self._check(index)
        try:
            item = self.dataset[index]
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # a dataset's own loader failed: a bad item, not a crash
            raise BadImageError(f"item {index}: the dataset raised {type(exc).__name__}: {exc}"
                                ) from exc
        try:
            return load_image(_unwrap(item))
        except BadImageError as exc:
            raise BadImageError(f"item {index}: {exc}") from exc

    def name(self, index: int) -> str:
        index = self._check(index)
        return str(self._names(index)) if self._names is not None else f"item {index}"

    def fingerprint(self) -> str | None:
        return self._fingerprint

    def __repr__(self) -> str:
        return f"DatasetSource({type(self.dataset).__name__}, {len(self)} items)"


def _grid_starts(length: int, side: int) -> list[int]:
    """Evenly spaced crop starts covering ``[0, length)`` with about ``length / side`` crops."""
    n = max(1, round(length / side))
    if n == 1:
        return [(length - side) // 2]
    return [round(i * (length - side) / (n - 1)) for i in range(n)]


class SampleCollection(ImageSource):
    """The offline sample photos, each whole and cut into square crops at a few scales.

    For each photo (in :func:`zfwidgets.data.sample_photos` order): the whole photo, then for
    each scale ``s`` square crops with side ``round(s * shorter side)`` on an evenly spaced grid
    of about ``width / side`` by ``height / side`` crops covering the photo (a 512x512 photo
    gives 1 + 4 + 9). With the default scales (1/2, 1/3) and every photo the installed packages
    bundle that is 345 images from 19 photos (scikit-image 0.26's 16, matplotlib's Grace
    Hopper, scikit-learn's 2), or 301 from 17 without scikit-learn. A scene such as
    ``"cat_scene"`` can be named in ``samples``; it is not in the default set (it would repeat
    the cat and the gravel).

    Parameters
    ----------
    scales : sequence of float
        Crop sides as fractions of each photo's shorter side, each in (0, 1].
    samples : sequence of str, optional
        Sample names; default: all of :func:`zfwidgets.data.sample_photos`.
    """

    def __init__(self, scales: Sequence[float] = DEFAULT_SCALES, samples: Sequence[str] | None = None):
        scales = tuple(float(s) for s in scales)
        if any(not (0 < s <= 1) for s in scales):
            raise BadParameterError(f"crop scales must lie in (0, 1], got {scales}")
        names = list(sample_photos() if samples is None else samples)
        if not names:
            raise DataError("no sample photos are available (scikit-image is not installed?)")
        self.scales = scales
        self.samples = names
        self._images: dict[str, Image.Image] = {}
        self._items: list[tuple[str, str, tuple[int, int, int, int] | None]] = []
        digests = []
        for sample in names:
            width, height, sample_digest = _sample_header(sample)
            digests.append(sample_digest)
            self._items.append((sample, sample, None))
            for scale in scales:
                side = max(1, round(scale * min(width, height)))
                label = _scale_label(scale)
                ys, xs = _grid_starts(height, side), _grid_starts(width, side)
                for r, top in enumerate(ys):
                    for c, left in enumerate(xs):
                        self._items.append((sample, f"{sample} {label} crop r{r} c{c}",
                                            (left, top, left + side, top + side)))
        self._fingerprint = digest("samples", *digests, *(repr(i) for i in self._items))

    def __len__(self) -> int:
        return len(self._items)

    def _photo(self, sample: str) -> Image.Image:
        if sample not in self._images:
            self._images[sample] = load_sample(sample)
        return self._images[sample]

    def load(self, index: int) -> Image.Image:
        sample, _, box = self._items[self._check(index)]
        photo = self._photo(sample)
        return photo.copy() if box is None else photo.crop(box)

    def name(self, index: int) -> str:
        return self._items[self._check(index)][1]

    def box(self, index: int) -> tuple[int, int, int, int] | None:
        """Crop box ``(left, top, right, bottom)`` of image ``index`` in its photo (``None``: whole)."""
        return self._items[self._check(index)][2]

    def fingerprint(self) -> str:
        return self._fingerprint

    def spec(self) -> dict:
        return {"kind": "samples", "scales": list(self.scales), "samples": list(self.samples)}

    def __repr__(self) -> str:
        return (f"SampleCollection({len(self.samples)} photos, scales "
                f"{', '.join(_scale_label(s) for s in self.scales)}: {len(self)} images)")


def _sample_header(sample: str) -> tuple[int, int, str]:
    """Width, height and content digest of a sample, without decoding a photo's pixels."""
    recipe = scene_recipe(sample)
    if recipe is None:
        path = sample_path(sample)
        with Image.open(path) as im:  # header only: the size, nothing decoded
            width, height = im.size
        return width, height, _itemdigest(path)
    parts = (_itemdigest(sample_path(recipe.object)), _itemdigest(sample_path(recipe.background)))
    return recipe.size, recipe.size, digest("scene", repr(recipe), *parts)


def _scale_label(scale: float) -> str:
    inv = 1 / scale
    return f"1/{round(inv)}" if abs(inv - round(inv)) < 1e-6 else f"{scale:g}"


def sample_collection(scales: Sequence[float] = DEFAULT_SCALES,
                      samples: Sequence[str] | None = None) -> SampleCollection:
    """The offline default data: every sample photo whole and cut into crops at a few scales.

    See :class:`SampleCollection`; with the defaults this is 345 images from the 19 photos that
    ship with scikit-image, matplotlib and scikit-learn (301 from 17 without scikit-learn).

    Parameters
    ----------
    scales : sequence of float
        Crop sides as fractions of the photo's shorter side, in (0, 1]; each scale covers the
        photo with an evenly spaced grid of square crops (default 1/2 and 1/3).
    samples : sequence of str, optional
        Sample names (default: every photo of :func:`zfwidgets.data.sample_photos`).

    Returns
    -------
    SampleCollection

    Examples
    --------
    >>> src = sample_collection()                # doctest: +SKIP
    >>> len(src), src.name(1)                    # doctest: +SKIP
    (345, 'chelsea 1/2 crop r0 c0')
    """
    return SampleCollection(scales, samples)


def as_source(images: Any = None) -> ImageSource:
    """Turn what a user passes as ``images`` into an :class:`ImageSource`.

    Parameters
    ----------
    images : None, ImageSource, folder path, sequence of images, or torch Dataset
        ``None``: :func:`sample_collection`. A path to a folder: :class:`ImageFolder`. A path to
        one file: a one-image :class:`ImageList`. A list or tuple of paths / PIL images / arrays /
        tensors: :class:`ImageList`. Anything else with ``len()`` and indexing (a torch
        ``Dataset``): :class:`DatasetSource` (not cached on disk; wrap it yourself to give a
        fingerprint).

    Returns
    -------
    ImageSource

    Raises
    ------
    DataError
        ``images`` is a path that does not exist, or cannot be used as a collection of images.
    """
    if images is None:
        return sample_collection()
    if isinstance(images, ImageSource):
        return images
    if isinstance(images, (str, os.PathLike)):
        path = pathlib.Path(images).expanduser()
        if path.is_dir():
            return ImageFolder(path)
        if path.is_file():
            return ImageList([path])
        if path.exists():
            raise DataError(f"{str(images)!r} is neither a folder nor a regular file")
        raise DataError(f"{str(images)!r} does not exist (expected a folder of images)")
    if isinstance(images, (Image.Image, np.ndarray, bytes, bytearray, io.IOBase)):
        raise DataError(f"a single {type(images).__name__} is one image, not a collection; "
                        "pass a list of images")
    if isinstance(images, (list, tuple)):
        return ImageList(images)
    if hasattr(images, "__getitem__") and hasattr(images, "__len__"):
        return DatasetSource(images)
    raise DataError(
        f"cannot mine a {type(images).__name__}: pass a folder, a list of images, a torch "
        "Dataset or an ImageSource")


def source_from_spec(spec: dict | None) -> ImageSource | None:
    """Rebuild a source from :meth:`ImageSource.spec` (``None`` when it cannot be rebuilt)."""
    if not spec:
        return None
    kind = spec.get("kind")
    try:
        if kind == "folder":
            return ImageFolder(spec["root"], max_pixels=spec.get("max_pixels"))
        if kind == "paths":
            return ImageList(spec["paths"], spec.get("names"), max_pixels=spec.get("max_pixels"))
        if kind == "samples":
            return SampleCollection(spec.get("scales", DEFAULT_SCALES), spec.get("samples"))
    except DataError:
        return None
    return None
