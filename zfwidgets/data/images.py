"""Robust image loading: anything image-like in, a fully loaded 8-bit RGB PIL image out.

:func:`load_image` is the single entry point every other part of zfwidgets uses to read a user's
picture. It accepts paths, raw bytes, file objects, PIL images, numpy arrays and torch tensors;
applies the EXIF orientation; converts every PIL mode (16-bit, float, palette, CMYK, LAB ...) to
RGB with the right scaling; composites transparency over white; and turns every way an image can
be bad (missing, empty, truncated, corrupt, not an image, a decompression bomb, not a regular
file) into a :class:`~zfwidgets.errors.BadImageError` that names the source and the problem.

A path is checked with ``stat`` before it is opened: a named pipe (FIFO), socket or device (or a
symbolic link to one) is refused without being opened, because opening a FIFO blocks until a
writer appears and reading a device may never end. The file is then opened non-blocking and
checked again (``fstat``), so a file swapped for a FIFO in between is refused too.

``min_side`` lets a caller that will shrink the image anyway (the session: its preprocessing
resizes a 12-megapixel photo to 256 pixels) have a large JPEG decoded at 1/2, 1/4 or 1/8 scale by
libjpeg's scaled inverse DCT (Pillow's ``draft``), several times faster than a full decode. The
reduced image differs slightly from a full decode followed by an antialiased resize (the DCT
scaling is its own low-pass filter); the session's preprocessing module documents by how much.

PIL's global settings are left alone: ``ImageFile.LOAD_TRUNCATED_IMAGES`` stays ``False`` (so a
cut-off file raises instead of coming back half grey) and ``Image.MAX_IMAGE_PIXELS`` is never
assigned; the pixel limit is checked locally against the header, before any pixel is decoded.

:func:`load_sample` reads one of the offline sample photos (:mod:`zfwidgets.data.samples` says
which exist and where) through the same path, or composes a sample scene from them.
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from zfwidgets.data.samples import DEFAULT_SAMPLE, sample_images, sample_path, scene_recipe
from zfwidgets.data.scenes import compose_scene
from zfwidgets.errors import BadImageError, BadParameterError, ZFError

__all__ = ["MAX_PIXELS", "load_image", "load_sample"]

#: Default decompression-bomb limit: the largest width * height :func:`load_image` will decode.
MAX_PIXELS = 64_000_000

_ORIENTATION_TAG = 0x0112
#: Formats Pillow can decode at a reduced scale (``Image.draft``): JPEG and its multi-picture form.
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})
_WHITE = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
# Float inputs may overshoot [0, 1] by rounding noise; anything beyond this is a real error.
_FLOAT_TOLERANCE = 1e-4


def load_image(src: Any, *, max_pixels: int | None = None,
               min_side: int | None = None) -> Image.Image:
    """Load any image-like object as a fully decoded 8-bit RGB PIL image.

    Parameters
    ----------
    src : str, os.PathLike, bytes, bytearray, memoryview, file object, PIL.Image.Image, \
numpy.ndarray or torch.Tensor
        The image. A path is read from disk (no file handle stays open); bytes-like objects hold
        an encoded file (PNG, JPEG, ...); a binary file object is read from its start (PIL
        seeks to 0) and is left open. A numpy array must be ``HxW``, ``HxWx1``, ``HxWx3`` or
        ``HxWx4`` of dtype ``uint8``, ``uint16``, ``bool`` or float with values in [0, 1]. A
        torch tensor must be ``[3,H,W]``, ``[1,H,W]``, ``[4,H,W]`` or ``[H,W]`` with the same
        value rules (torch is imported only when a tensor is given).
    max_pixels : int, optional
        Largest ``width * height`` accepted; ``None`` uses :data:`MAX_PIXELS`. The check reads
        only the header, so an oversized file is refused before anything is decoded.
    min_side : int, optional
        For an encoded JPEG (path, bytes or file object): decode it at 1/2, 1/4 or 1/8 scale
        (libjpeg's DCT scaling, Pillow's ``draft``) when both sides of the result stay at least
        ``min_side`` pixels. ``None`` (the default) always decodes at full size. Other formats,
        arrays, tensors and PIL images are never reduced.

    Returns
    -------
    PIL.Image.Image
        A new image of mode ``"RGB"``, fully loaded and detached from any file, with the EXIF
        orientation applied, transparency composited over white, 16-bit data scaled by the full
        0..65535 range, and only the first frame of an animated or multi-page file. Its size is
        the file's, unless ``min_side`` let a JPEG be decoded at a reduced scale.

    Raises
    ------
    BadImageError
        The source is missing, a directory, not a regular file (a FIFO, socket or device, or a
        link to one: refused without opening it), empty, truncated, corrupt, not an image, larger
        than ``max_pixels``, has zero width or height, holds NaN or infinite float values, or is
        an array/tensor of unsupported shape, dtype, layout (sparse) or device (``meta``). The
        message starts with the source (the path, or ``<bytes>``, ``<file>``, ``<array>``,
        ``<tensor>``, ``<PIL image>``) and the original exception is chained.
    BadParameterError
        ``max_pixels`` or ``min_side`` is not a positive integer.

    Examples
    --------
    >>> img = load_image("photo.jpg")                      # doctest: +SKIP
    >>> img.mode
    'RGB'
    """
    limit = _resolve_limit(max_pixels)
    side = _resolve_min_side(min_side)

    if isinstance(src, Image.Image):
        return _from_pil(src, _pil_name(src), limit)
    if isinstance(src, np.ndarray):
        return _from_array(src, "<array>", limit)
    if type(src).__module__.startswith("torch"):
        return _from_tensor(src, limit)
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        if not data:
            raise BadImageError("<bytes>: empty data (0 bytes)")
        return _decode(io.BytesIO(data), "<bytes>", limit, side)
    if isinstance(src, (str, os.PathLike)):
        return _from_path(src, limit, side)
    if callable(getattr(src, "read", None)):
        name = getattr(src, "name", None)
        name = name if isinstance(name, str) and name else "<file>"
        if isinstance(src, io.TextIOBase):
            raise BadImageError(f"{name}: file object is in text mode; open it with 'rb'")
        if isinstance(src, io.BytesIO) and not src.getbuffer().nbytes:
            raise BadImageError(f"{name}: empty data (0 bytes)")
        return _decode(src, name, limit, side)
    raise BadImageError(
        f"<{type(src).__name__}>: cannot load an image from a {type(src).__qualname__} object; "
        "pass a path, bytes, a file object, a PIL image, a numpy array or a torch tensor"
    )


def load_sample(name: str = DEFAULT_SAMPLE) -> Image.Image:
    """Load a bundled sample photo (or compose a sample scene) as an 8-bit RGB PIL image.

    Parameters
    ----------
    name : str, optional
        A name from :func:`~zfwidgets.data.samples.sample_images`; defaults to
        :data:`~zfwidgets.data.samples.DEFAULT_SAMPLE` (``"chelsea"``). A scene such as
        :data:`~zfwidgets.data.samples.OCCLUSION_SAMPLE` is composed from its photos
        (:func:`~zfwidgets.data.scenes.compose_scene`), the same pixels every time.

    Returns
    -------
    PIL.Image.Image
        A fully loaded image of mode ``"RGB"`` (grayscale samples are converted).

    Raises
    ------
    BadParameterError
        ``name`` is not a known sample; the message suggests close names.
    DataError
        The sample's file (or a photo a scene is made of) is not part of this installation.

    Examples
    --------
    >>> load_sample().size
    (451, 300)
    """
    recipe = scene_recipe(name)
    if recipe is not None:
        return compose_scene(recipe, lambda photo: load_image(sample_path(photo)))
    return load_image(sample_path(name))


# -- sources ---------------------------------------------------------------------------------


def _resolve_limit(max_pixels: int | None) -> int:
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit <= 0:
        raise BadParameterError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    return int(limit)


def _resolve_min_side(min_side: int | None) -> int | None:
    if min_side is None:
        return None
    if isinstance(min_side, bool) or not isinstance(min_side, (int, np.integer)) or min_side < 1:
        raise BadParameterError(f"min_side must be a positive integer or None, got {min_side!r}")
    return int(min_side)


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


def not_regular_reason(path: str | os.PathLike, mode: int) -> str | None:
    """Why the file at ``path`` with ``st_mode`` ``mode`` (of ``os.stat``, links followed) is no
    image file (``"is a named pipe (FIFO), not a regular file"``), or ``None`` when it is a
    regular file."""
    if stat.S_ISREG(mode):
        return None
    kind = next((what for test, what in _KINDS if test(mode)), "a special file")
    if os.path.islink(path):
        kind = f"a symbolic link to {kind}"
    if stat.S_ISDIR(mode):
        return f"is {kind}, not an image file"
    return f"is {kind}, not a regular file"


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | \
    getattr(os, "O_BINARY", 0)


def _from_path(src: str | os.PathLike, limit: int, side: int | None) -> Image.Image:
    path = os.fsdecode(os.fspath(src))
    try:
        info = os.stat(path)  # follows links: what would be opened
    except FileNotFoundError as exc:
        what = "broken symbolic link" if os.path.islink(path) else "no such file"
        raise BadImageError(f"{path}: {what}{_sample_hint(path)}") from exc
    except OSError as exc:  # permission denied on a parent, a name too long, a loop ...
        raise BadImageError(f"{path}: cannot open file ({exc.strerror or exc})") from exc
    reason = not_regular_reason(path, info.st_mode)
    if reason:  # never opened: a FIFO would block in open(), a device may never end
        raise BadImageError(f"{path}: {reason}")
    try:
        # Non-blocking: should the path have become a FIFO since the stat, open() returns at once.
        fh = os.fdopen(os.open(path, _OPEN_FLAGS), "rb")
    except FileNotFoundError as exc:
        raise BadImageError(f"{path}: no such file{_sample_hint(path)}") from exc
    except OSError as exc:  # permission denied, ...
        raise BadImageError(f"{path}: cannot open file ({exc.strerror or exc})") from exc
    with fh:
        info = os.fstat(fh.fileno())
        reason = not_regular_reason(path, info.st_mode)
        if reason:  # swapped between the stat and the open
            raise BadImageError(f"{path}: {reason}")
        if info.st_size == 0:
            raise BadImageError(f"{path}: empty file (0 bytes)")
        return _decode(fh, path, limit, side)


def _sample_hint(path: str) -> str:
    """Point a user who typed a sample name as a path to :func:`load_sample`."""
    try:
        if path in sample_images():
            return f"; to load the bundled sample use load_sample({path!r})"
    except Exception:  # the hint is a courtesy; never let it mask the real error
        pass
    return ""


def _pil_name(im: Image.Image) -> str:
    filename = getattr(im, "filename", None)
    return filename if isinstance(filename, str) and filename else "<PIL image>"


def _from_tensor(src: Any, limit: int) -> Image.Image:
    import torch  # only reached when the caller already uses torch

    if not isinstance(src, torch.Tensor):
        raise BadImageError(f"<{type(src).__name__}>: not a tensor; cannot load it as an image")
    shape = list(src.shape)
    if src.device.type == "meta":
        raise BadImageError(f"<tensor>: a tensor on the 'meta' device (shape {shape}) has no "
                            "values to load")
    if src.layout != torch.strided:
        raise BadImageError(f"<tensor>: a {src.layout} tensor (shape {shape}); pass "
                            "tensor.to_dense()")
    if src.ndim == 4 and shape[0] == 1:
        raise BadImageError(f"<tensor>: got a batch of shape {shape}; pass tensor[0] instead")
    if src.ndim == 3 and shape[0] in (1, 3, 4):
        src = src.permute(1, 2, 0)
    elif src.ndim != 2:
        raise BadImageError(
            f"<tensor>: unsupported shape {shape}; expected [3,H,W], [1,H,W], [4,H,W] or [H,W]"
        )
    src = src.detach().cpu()
    if src.is_floating_point() and src.dtype not in (torch.float32, torch.float64):
        src = src.float()  # float16 / bfloat16 have no (or no exact) numpy equivalent
    try:
        arr = src.numpy()
    except (TypeError, RuntimeError) as exc:
        raise BadImageError(f"<tensor>: unsupported dtype {src.dtype} with shape {shape}") from exc
    return _from_array(arr, "<tensor>", limit)


def _from_array(arr: np.ndarray, name: str, limit: int) -> Image.Image:
    shape = tuple(arr.shape)
    if arr.ndim == 3 and shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise BadImageError(
            f"{name}: unsupported shape {shape} (dtype {arr.dtype}); "
            "expected HxW, HxWx1, HxWx3 or HxWx4"
        )
    height, width = arr.shape[:2]
    _check_size(width, height, name, limit)

    kind = arr.dtype.kind
    if arr.dtype == np.uint8:
        out = arr  # _to_rgb always returns a new image, so nothing is shared with the caller
    elif arr.dtype == np.uint16:
        out = _scale_uint16(arr)
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * np.uint8(255)
    elif kind == "f":
        out = _scale_unit_float(arr, name, shape)
    else:
        raise BadImageError(
            f"{name}: unsupported dtype {arr.dtype} with shape {shape}; expected uint8, uint16, "
            "bool or float in [0, 1] (convert with e.g. arr.astype(np.uint8))"
        )
    # uint8 HxW / HxWx3 / HxWx4 -> PIL picks "L" / "RGB" / "RGBA".
    return _to_rgb(Image.fromarray(np.ascontiguousarray(out)), name)


def _scale_uint16(arr: np.ndarray) -> np.ndarray:
    """Map the full 16-bit range 0..65535 onto 0..255 with rounding (65535 -> 255)."""
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _check_finite(arr: np.ndarray, name: str, shape: tuple[int, ...]) -> None:
    """The one rule for float pixels, arrays and float (mode ``F``) files alike: NaN or infinity
    is an error, never silently black."""
    if arr.size and not np.isfinite(arr).all():
        bad = int(arr.size - np.isfinite(arr).sum())
        raise BadImageError(f"{name}: float data contains NaN or infinity ({bad} of {arr.size} "
                            f"values, shape {shape})")


def _scale_unit_float(arr: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
    _check_finite(arr, name, shape)
    lo = float(arr.min()) if arr.size else 0.0
    hi = float(arr.max()) if arr.size else 0.0
    if lo < -_FLOAT_TOLERANCE or hi > 1 + _FLOAT_TOLERANCE:
        hint = ""
        if lo < 0:
            hint = " (it looks mean/std-normalised; undo the normalisation first)"
        raise BadImageError(
            f"{name}: float values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}] "
            f"(dtype {arr.dtype}, shape {shape}){hint}"
        )
    return np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)


# -- decoding --------------------------------------------------------------------------------


def _check_size(width: int, height: int, name: str, limit: int) -> None:
    if width <= 0 or height <= 0:
        raise BadImageError(f"{name}: image has zero size ({width}x{height})")
    pixels = width * height
    if pixels > limit:
        raise BadImageError(
            f"{name}: {width}x{height} = {pixels} pixels exceeds the limit of {limit} "
            "(decompression bomb?)"
        )


def _decode(fp: Any, name: str, limit: int, side: int | None = None) -> Image.Image:
    """Open ``fp`` lazily, check the header, then decode the first frame and convert it."""
    try:
        with warnings.catch_warnings():
            # PIL warns above its own global threshold; our explicit limit replaces it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fp)
            _check_size(im.width, im.height, name, limit)  # header only: nothing decoded yet
            if side is not None and im.format in _DRAFT_FORMATS:
                # Square request: the EXIF rotation applied later may swap width and height.
                im.draft(None, (side, side))
            im.load()
        return _from_pil(im, name, limit, checked=True)
    except ZFError:
        raise
    except Image.DecompressionBombError as exc:
        raise BadImageError(_pil_bomb_message(exc, name, limit)) from exc
    except Image.UnidentifiedImageError as exc:
        raise BadImageError(f"{name}: not a recognised image format") from exc
    except MemoryError:
        raise
    except Exception as exc:  # OSError, SyntaxError, zlib/struct errors, ... from the decoders
        detail = str(exc) or type(exc).__name__
        raise BadImageError(f"{name}: truncated or corrupt image data ({detail})") from exc


def _pil_bomb_message(exc: Exception, name: str, limit: int) -> str:
    """Say what PIL's own (global, hard) bomb check refused, with the dimensions if we can."""
    size = None
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None:  # the innermost frame is PIL's check, whose argument is the size
        candidate = tb.tb_frame.f_locals.get("size")
        if isinstance(candidate, tuple) and len(candidate) == 2:
            size = candidate
    if size is not None:
        width, height = int(size[0]), int(size[1])
        pixels = width * height
        what = f"{width}x{height} = {pixels} pixels"
    else:
        match = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(match.group(1)) if match else None
        what = f"{pixels} pixels" if pixels is not None else "the image"
    if pixels is None or pixels > limit:
        return f"{name}: {what} exceeds the limit of {limit} (decompression bomb?)"
    return (
        f"{name}: {what} exceeds PIL's hard limit of 2 * PIL.Image.MAX_IMAGE_PIXELS = "
        f"{2 * (Image.MAX_IMAGE_PIXELS or 0)} (decompression bomb?); raise "
        "PIL.Image.MAX_IMAGE_PIXELS to load it"
    )


def _from_pil(im: Image.Image, name: str, limit: int, *, checked: bool = False) -> Image.Image:
    if not checked:
        try:
            _check_size(im.width, im.height, name, limit)
            im.load()  # a lazily opened user image: decode it (errors say so below)
        except ZFError:
            raise
        except MemoryError:
            raise
        except Exception as exc:
            detail = str(exc) or type(exc).__name__
            raise BadImageError(f"{name}: truncated or corrupt image data ({detail})") from exc
    im = _apply_orientation(im)
    return _to_rgb(im, name)


def _apply_orientation(im: Image.Image) -> Image.Image:
    """Apply the EXIF (or XMP) orientation; a malformed EXIF block is ignored, not fatal."""
    try:
        orientation = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # broken EXIF must not make an otherwise good image unreadable
        return im
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        try:
            return ImageOps.exif_transpose(im)
        except Exception:
            return im
    return im


def _to_rgb(im: Image.Image, name: str) -> Image.Image:
    """Convert any PIL mode to a new 8-bit RGB image (transparency over white)."""
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        return _integer_to_rgb(im)
    if mode == "F":
        return _float_to_rgb(im, name)
    if mode in _ALPHA_MODES or "transparency" in im.info or _has_alpha_palette(im):
        if mode == "La":  # premultiplied gray: PIL converts it only via LA
            im = im.convert("LA")
        return _over_white(im.convert("RGBA"))
    try:
        # RGB -> a copy, so the result never shares state with the input; L, 1, P, CMYK,
        # YCbCr, LAB, HSV, RGBX -> PIL's own (correct, non-clipping) colour conversions.
        return im.convert("RGB")
    except (ValueError, OSError) as exc:
        raise BadImageError(f"{name}: unsupported image mode {mode!r}") from exc


def _has_alpha_palette(im: Image.Image) -> bool:
    palette = im.palette if im.mode == "P" else None
    return palette is not None and palette.mode == "RGBA"


def _over_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _integer_to_rgb(im: Image.Image) -> Image.Image:
    """16-bit (and 32-bit "I") gray: scale by the true range, not PIL's clipping convert."""
    arr = np.asarray(im)
    if im.mode == "I":
        arr = arr.astype(np.int64)
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 65535:  # genuinely 32-bit data: stretch its own range
            span = max(hi - lo, 1)
            gray = ((arr - lo) * 255 + span // 2) // span
            gray = gray.astype(np.uint8)
        else:
            gray = _scale_uint16(arr.astype(np.uint16))
    else:
        arr = arr.astype(np.uint16)
        gray = _scale_uint16(arr)
    out = Image.fromarray(gray)
    transparency = im.info.get("transparency")
    if isinstance(transparency, int) and not isinstance(transparency, bool):
        alpha = np.where(np.asarray(im) == transparency, 0, 255).astype(np.uint8)
        rgba = out.convert("RGB").convert("RGBA")
        rgba.putalpha(Image.fromarray(alpha))
        return _over_white(rgba)
    return out.convert("RGB")


def _float_to_rgb(im: Image.Image, name: str) -> Image.Image:
    """Float gray: [0, 1] if the maximum is at most 1, otherwise scaled by the maximum; NaN or
    infinity is refused, as for float arrays."""
    arr = np.asarray(im, dtype=np.float64)
    _check_finite(arr, name, arr.shape)
    hi = float(arr.max()) if arr.size else 0.0
    scale = 1.0 if hi <= 1.0 else hi
    gray = np.rint(np.clip(arr / scale, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")
