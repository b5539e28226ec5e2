"""Tests for zfwidgets.data.images (load_image) and zfwidgets.data.samples.

Every fixture is generated in tmp_path with PIL; no binary files are committed.
"""

from __future__ import annotations

import gc
import io
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, UnidentifiedImageError

from blocking import finishes
from zfwidgets.data import (
    DEFAULT_SAMPLE,
    MAX_PIXELS,
    load_image,
    load_sample,
    sample_images,
    sample_path,
)
from zfwidgets.errors import BadImageError, BadParameterError, ZFError

WHITE = (255, 255, 255)


def px(im: Image.Image, xy=(0, 0)) -> tuple[int, int, int]:
    assert im.mode == "RGB"
    return tuple(im.getpixel(xy))


def save(tmp_path, im: Image.Image, name: str, **kw) -> str:
    path = tmp_path / name
    im.save(path, **kw)
    return str(path)


def close_to(actual, expected, tol):
    return all(abs(int(a) - int(e)) <= tol for a, e in zip(actual, expected))


def noise_rgb(w=96, h=64, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that *declares* width x height but carries only a few bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


# -- modes -----------------------------------------------------------------------------------


def test_rgb_png_exact(tmp_path):
    src = Image.new("RGB", (3, 2), (10, 20, 30))
    src.putpixel((2, 1), (200, 100, 50))
    out = load_image(save(tmp_path, src, "rgb.png"))
    assert out.mode == "RGB" and out.size == (3, 2)
    assert px(out) == (10, 20, 30) and px(out, (2, 1)) == (200, 100, 50)


def test_gray_L(tmp_path):
    out = load_image(save(tmp_path, Image.new("L", (4, 3), 100), "gray.png"))
    assert out.mode == "RGB" and out.size == (4, 3)
    assert px(out) == (100, 100, 100)


def test_bilevel_1(tmp_path):
    im = Image.new("1", (4, 1), 0)
    im.putpixel((3, 0), 1)
    out = load_image(save(tmp_path, im, "bw.png"))
    assert px(out) == (0, 0, 0) and px(out, (3, 0)) == WHITE


def test_gray_LA_alpha_over_white(tmp_path):
    im = Image.new("LA", (2, 1), (50, 255))
    im.putpixel((1, 0), (50, 0))
    out = load_image(save(tmp_path, im, "la.png"))
    assert px(out) == (50, 50, 50)
    assert px(out, (1, 0)) == WHITE


def test_rgba_alpha_over_white(tmp_path):
    im = Image.new("RGBA", (3, 1), (0, 0, 0, 0))
    im.putpixel((1, 0), (10, 20, 30, 255))
    im.putpixel((2, 0), (0, 0, 0, 128))
    out = load_image(save(tmp_path, im, "rgba.png"))
    assert px(out) == WHITE  # fully transparent black -> white, not black
    assert px(out, (1, 0)) == (10, 20, 30)
    assert close_to(px(out, (2, 0)), (127, 127, 127), 1)  # half black over white


def _palette_image() -> Image.Image:
    im = Image.new("P", (3, 1), 0)
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (253 * 3))
    im.putpixel((1, 0), 1)
    im.putpixel((2, 0), 2)
    return im


def test_palette_without_transparency(tmp_path):
    out = load_image(save(tmp_path, _palette_image(), "p.png"))
    assert [px(out, (x, 0)) for x in range(3)] == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


@pytest.mark.parametrize("fmt", ["png", "gif"])
def test_palette_with_transparency(tmp_path, fmt):
    path = save(tmp_path, _palette_image(), f"pt.{fmt}", transparency=1)
    assert Image.open(path).info.get("transparency") == 1  # the fixture really is transparent
    out = load_image(path)
    assert px(out) == (255, 0, 0)
    assert px(out, (1, 0)) == WHITE  # the transparent index, not green
    assert px(out, (2, 0)) == (0, 0, 255)


def test_gray_and_rgb_trns_chunk(tmp_path):
    gray = Image.new("L", (2, 1), 10)
    gray.putpixel((1, 0), 200)
    out = load_image(save(tmp_path, gray, "ltrns.png", transparency=200))
    assert px(out) == (10, 10, 10) and px(out, (1, 0)) == WHITE
    rgb = Image.new("RGB", (2, 1), (1, 2, 3))
    rgb.putpixel((1, 0), (9, 9, 9))
    out = load_image(save(tmp_path, rgb, "rgbtrns.png", transparency=(1, 2, 3)))
    assert px(out) == WHITE and px(out, (1, 0)) == (9, 9, 9)


SIXTEEN = np.array([[0, 257, 300, 32768, 65535]], dtype=np.uint16)
SIXTEEN_EXPECTED = [0, 1, 1, 128, 255]  # scaled by 65535, not clipped (PIL would give 255 for 300)


def _grays(out: Image.Image) -> list[int]:
    arr = np.asarray(out)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    return arr[0, :, 0].tolist()


def test_16bit_png(tmp_path):
    path = save(tmp_path, Image.fromarray(SIXTEEN), "g16.png")
    assert Image.open(path).mode.startswith("I")
    assert _grays(load_image(path)) == SIXTEEN_EXPECTED


@pytest.mark.parametrize("dtype,mode", [("<u2", "I;16"), (">u2", "I;16B")])
def test_16bit_tiff(tmp_path, dtype, mode):
    im = Image.fromarray(SIXTEEN.astype(dtype))
    assert im.mode == mode
    path = save(tmp_path, im, "g16.tif")
    assert Image.open(path).mode == mode
    assert _grays(load_image(path)) == SIXTEEN_EXPECTED


def test_32bit_I_tiff_with_16bit_values(tmp_path):
    im = Image.fromarray(SIXTEEN.astype(np.int32))
    assert im.mode == "I"
    assert _grays(load_image(save(tmp_path, im, "i32.tif"))) == SIXTEEN_EXPECTED


def test_float_F_unit_range_and_scaled_by_max(tmp_path):
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert unit.mode == "F"
    assert _grays(load_image(save(tmp_path, unit, "f1.tif"))) == [0, 128, 255]
    big = Image.fromarray(np.array([[0.0, 2.0, 4.0]], dtype=np.float32))
    assert _grays(load_image(save(tmp_path, big, "f4.tif"))) == [0, 128, 255]


def test_cmyk_tiff_exact(tmp_path):
    out = load_image(save(tmp_path, Image.new("CMYK", (2, 2), (0, 255, 255, 0)), "c.tif"))
    assert px(out) == (255, 0, 0)


def test_cmyk_jpeg_pure_red(tmp_path):
    path = save(tmp_path, Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "c.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    r, g, b = px(load_image(path), (8, 8))
    assert r > 200 and g < 60 and b < 60


def test_ycbcr_tiff(tmp_path):
    ycc = Image.new("RGB", (4, 4), (255, 0, 0)).convert("YCbCr")
    path = save(tmp_path, ycc, "y.tif")
    assert Image.open(path).mode == "YCbCr"
    assert close_to(px(load_image(path)), (255, 0, 0), 3)


def test_lab_tiff(tmp_path):
    lab = Image.new("RGB", (4, 4), (255, 0, 0)).convert("LAB")
    path = save(tmp_path, lab, "lab.tif")
    assert Image.open(path).mode == "LAB"
    r, g, b = px(load_image(path))
    assert r > 200 and g < 60 and b < 60  # a real colour transform, not channels copied


def test_hsv_pil_input():
    hsv = Image.new("RGB", (2, 2), (0, 255, 0)).convert("HSV")
    assert hsv.mode == "HSV"
    assert close_to(px(load_image(hsv)), (0, 255, 0), 2)


def test_multiframe_gif_and_tiff_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    gif = save(tmp_path, frames[0], "anim.gif", save_all=True, append_images=frames[1:])
    tif = save(tmp_path, frames[0], "pages.tif", save_all=True, append_images=frames[1:])
    assert Image.open(gif).n_frames == 3 and Image.open(tif).n_frames == 3
    assert close_to(px(load_image(gif)), (255, 0, 0), 4)
    assert px(load_image(tif)) == (255, 0, 0)


# -- EXIF orientation ------------------------------------------------------------------------

# A 3x2 image with six distinct pixels: any wrong flip or rotation changes the array.
BASE = np.array(
    [[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[255, 255, 0], [0, 255, 255], [255, 0, 255]]],
    dtype=np.uint8,
)
EXPECTED_ORIENTED = {  # what a viewer shows for each EXIF orientation value
    1: BASE,
    2: BASE[:, ::-1],
    3: BASE[::-1, ::-1],
    4: BASE[::-1, :],
    5: BASE.transpose(1, 0, 2),
    6: np.rot90(BASE, -1),  # rotate 90 degrees clockwise
    7: BASE.transpose(1, 0, 2)[::-1, ::-1],
    8: np.rot90(BASE, 1),  # rotate 90 degrees counter-clockwise
}


def _with_orientation(im: Image.Image, orientation: int) -> Image.Exif:
    exif = im.getexif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_all_eight_png(tmp_path, orientation):
    im = Image.fromarray(BASE)
    path = save(tmp_path, im, f"o{orientation}.png", exif=_with_orientation(im, orientation))
    assert Image.open(path).getexif().get(0x0112) == orientation
    out = load_image(path)
    np.testing.assert_array_equal(np.asarray(out), EXPECTED_ORIENTED[orientation])


@pytest.mark.parametrize(
    "orientation,size,marker",
    [(3, (40, 20), (39, 19)), (6, (20, 40), (19, 0)), (8, (20, 40), (0, 39))],
)
def test_exif_orientation_jpeg_marker(tmp_path, orientation, size, marker):
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 8, 8))  # a red marker in the stored top-left corner
    path = save(tmp_path, im, "o.jpg", exif=_with_orientation(im, orientation), quality=95)
    out = load_image(path)
    assert out.size == size
    r, g, b = px(out, marker)
    assert r > 200 and b < 60
    assert px(out, (size[0] // 2, size[1] // 2))[2] > 200  # the middle is still blue


# -- other sources ---------------------------------------------------------------------------


def _png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_bytes_like_and_file_objects(tmp_path):
    data = _png_bytes(Image.new("RGB", (5, 4), (1, 2, 3)))
    for src in (data, bytearray(data), memoryview(data), io.BytesIO(data)):
        out = load_image(src)
        assert out.mode == "RGB" and out.size == (5, 4) and px(out) == (1, 2, 3)
    path = tmp_path / "f.png"
    path.write_bytes(data)
    with open(path, "rb") as fh:
        assert px(load_image(fh)) == (1, 2, 3)
        assert not fh.closed  # the caller's file object is not closed for them
    assert px(load_image(path)) == (1, 2, 3)  # pathlib.Path
    with open(path) as text_mode:
        with pytest.raises(BadImageError, match="f.png.*text mode"):
            load_image(text_mode)


def test_pil_input_returns_new_image_and_leaves_input_alone():
    src = Image.new("RGB", (3, 3), (7, 8, 9))
    out = load_image(src)
    assert out is not src and px(out) == (7, 8, 9)
    out.putpixel((0, 0), (0, 0, 0))
    assert px(src) == (7, 8, 9)
    rgba = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert px(load_image(rgba)) == WHITE and rgba.mode == "RGBA"


def test_lazily_opened_pil_input_with_exif(tmp_path):
    im = Image.fromarray(BASE)
    path = save(tmp_path, im, "lazy.png", exif=_with_orientation(im, 6))
    with Image.open(path) as lazy:
        out = load_image(lazy)
    np.testing.assert_array_equal(np.asarray(out), EXPECTED_ORIENTED[6])


@pytest.mark.parametrize(
    "arr,expected",
    [
        (np.full((2, 3), 77, np.uint8), (77, 77, 77)),
        (np.full((2, 3, 1), 77, np.uint8), (77, 77, 77)),
        (np.tile(np.array([1, 2, 3], np.uint8), (2, 3, 1)), (1, 2, 3)),
        (np.tile(np.array([1, 2, 3, 255], np.uint8), (2, 3, 1)), (1, 2, 3)),
        (np.tile(np.array([1, 2, 3, 0], np.uint8), (2, 3, 1)), WHITE),
        (np.full((2, 3), 65535, np.uint16), WHITE),
        (np.full((2, 3), 32768, np.uint16), (128, 128, 128)),
        (np.ones((2, 3), bool), WHITE),
        (np.full((2, 3, 3), 0.5, np.float32), (128, 128, 128)),
        (np.tile(np.array([1.0, 0.0, 0.0]), (2, 3, 1)), (255, 0, 0)),
    ],
)
def test_numpy_arrays(arr, expected):
    out = load_image(arr)
    assert out.mode == "RGB" and out.size == (3, 2)
    assert px(out) == expected


def test_numpy_array_not_shared():
    arr = np.zeros((2, 2, 3), np.uint8)
    out = load_image(arr)
    arr[:] = 255
    assert px(out) == (0, 0, 0)


@pytest.mark.parametrize(
    "arr,needle",
    [
        (np.zeros((2, 3), np.int64), "int64"),
        (np.zeros((2, 3), np.int16), "int16"),
        (np.zeros((2, 3), np.complex64), "complex64"),
        (np.zeros((2, 3, 2), np.uint8), "(2, 3, 2)"),
        (np.zeros(5, np.uint8), "(5,)"),
        (np.zeros((1, 2, 3, 3), np.uint8), "(1, 2, 3, 3)"),
        (np.full((2, 3), 1.5, np.float32), "[0, 1]"),
        (np.full((2, 3), -0.5), "normalis"),
        (np.full((2, 3), np.nan, np.float32), "NaN"),
        (np.zeros((0, 3), np.uint8), "zero size"),
    ],
)
def test_bad_numpy_arrays(arr, needle):
    with pytest.raises(BadImageError) as info:
        load_image(arr)
    assert "<array>" in str(info.value) and needle in str(info.value)


def test_torch_tensors():
    torch = pytest.importorskip("torch")
    chw = torch.zeros(3, 4, 5)
    chw[0] = 1.0
    out = load_image(chw)
    assert out.size == (5, 4) and px(out) == (255, 0, 0)
    assert px(load_image(torch.full((4, 5), 0.5))) == (128, 128, 128)
    assert px(load_image(torch.ones(1, 4, 5, requires_grad=True))) == WHITE
    assert px(load_image(torch.full((3, 2, 2), 0.5, dtype=torch.float16))) == (128, 128, 128)
    with pytest.raises(BadImageError, match=r"<tensor>.*tensor\[0\]"):
        load_image(torch.zeros(1, 3, 4, 5))
    with pytest.raises(BadImageError, match="<tensor>.*normalis"):
        load_image(torch.full((3, 4, 5), -1.8))
    with pytest.raises(BadImageError, match="<tensor>"):
        load_image(torch.zeros(5, 4, 5))


def test_unsupported_source_type():
    with pytest.raises(BadImageError, match="int"):
        load_image(42)


def test_bad_max_pixels():
    with pytest.raises(BadParameterError):
        load_image(np.zeros((2, 2), np.uint8), max_pixels=0)


# -- bad inputs ------------------------------------------------------------------------------


def _assert_bad(src, *needles):
    with pytest.raises(BadImageError) as info:
        load_image(src)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, msg
    assert isinstance(info.value, ZFError) and isinstance(info.value, ValueError)
    return info.value


def test_truncated_png(tmp_path):
    data = _png_bytes(noise_rgb())
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    err = _assert_bad(str(path), "cut.png", "truncated")
    # the original PIL error is chained
    assert isinstance(err.__cause__, OSError) and "truncated" in str(err.__cause__)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    noise_rgb(160, 120).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    err = _assert_bad(str(path), "cut.jpg", "truncated")
    assert isinstance(err.__cause__, OSError) and "truncated" in str(err.__cause__)
    _assert_bad(data[: len(data) // 2], "<bytes>", "truncated")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_corrupt_png(tmp_path):
    data = bytearray(_png_bytes(noise_rgb()))
    idat = data.find(b"IDAT")
    data[idat + 40 : idat + 240] = b"\x00" * 200
    path = tmp_path / "bad.png"
    path.write_bytes(bytes(data))
    err = _assert_bad(str(path), "bad.png", "corrupt")
    assert isinstance(err.__cause__, OSError)  # the decoder's own error


def test_empty_file_and_empty_bytes(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    _assert_bad(str(path), "empty.png", "empty")
    _assert_bad(b"", "<bytes>", "empty")


def test_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("this is not an image\n" * 10)
    err = _assert_bad(str(path), "notes.txt", "not a recognised image")
    assert isinstance(err.__cause__, UnidentifiedImageError)
    _assert_bad(io.BytesIO(b"hello"), "<file>")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    err = _assert_bad(str(path), "nope.jpg", "no such file")
    assert isinstance(err.__cause__, FileNotFoundError)


def test_missing_file_that_is_a_sample_name_hints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _assert_bad(DEFAULT_SAMPLE, "load_sample")


def test_directory(tmp_path):
    _assert_bad(str(tmp_path), str(tmp_path), "directory")


def test_zero_size_dimensions(tmp_path):
    path = tmp_path / "zero.png"
    path.write_bytes(png_header_only(0, 10))
    _assert_bad(str(path), "zero.png")


def test_decompression_bomb_header_only_png(tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(100_000, 100_000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no PIL DecompressionBombWarning may leak
        err = _assert_bad(str(path), "bomb.png", "100000x100000", str(MAX_PIXELS), "bomb")
    assert isinstance(err.__cause__, Image.DecompressionBombError)  # PIL's own, converted
    assert not isinstance(err, Image.DecompressionBombError)
    assert Image.MAX_IMAGE_PIXELS == before


def test_decompression_bomb_below_pils_limit(tmp_path):
    """72M pixels: under PIL's hard limit, over ours -> our header check refuses it."""
    before = Image.MAX_IMAGE_PIXELS
    path = tmp_path / "big.png"
    path.write_bytes(png_header_only(9000, 8000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_bad(str(path), "big.png", "9000x8000 = 72000000 pixels", "64000000")
        _assert_bad(png_header_only(9000, 8000), "<bytes>", "9000x8000")
    assert Image.MAX_IMAGE_PIXELS == before


def test_max_pixels_argument(tmp_path):
    path = save(tmp_path, Image.new("RGB", (100, 100)), "small.png")
    _assert_bad_kw = pytest.raises(BadImageError, match="10000 pixels exceeds the limit of 5000")
    with _assert_bad_kw:
        load_image(path, max_pixels=5000)
    assert load_image(path, max_pixels=10_000).size == (100, 100)
    with pytest.raises(BadImageError, match="<array>.*exceeds"):
        load_image(np.zeros((100, 100), np.uint8), max_pixels=5000)


def test_pils_global_limit_is_respected_but_converted(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    warn_only = save(tmp_path, Image.new("RGB", (12, 12), (5, 5, 5)), "w.png")  # 144 px
    hard = save(tmp_path, Image.new("RGB", (20, 20)), "h.png")  # 400 px > 2 * 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert px(load_image(warn_only)) == (5, 5, 5)  # our limit allows it; no warning leaks
        with pytest.raises(BadImageError, match="h.png.*20x20.*MAX_IMAGE_PIXELS") as info:
            load_image(hard)
    assert isinstance(info.value.__cause__, Image.DecompressionBombError)
    assert Image.MAX_IMAGE_PIXELS == 100


# -- no leaked file handles ------------------------------------------------------------------


def _open_fds(path) -> int | None:
    """How many of this process's file descriptors are open on ``path`` (None: not Linux).

    Only ``path``'s: other threads open and close descriptors of their own meanwhile (the
    suite's background children's pipes, tests/background.py)."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    target, count = os.path.realpath(path), 0
    for fd in fds:
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == target
        except OSError:          # closed meanwhile
            pass
    return count


@pytest.mark.parametrize("name", ["one.png", "anim.gif", "pages.tif", "photo.jpg"])
def test_no_open_file_handles(tmp_path, name):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
    multi = name.endswith((".gif", ".tif"))
    extra = {"save_all": True, "append_images": frames[1:]} if multi else {}
    path = save(tmp_path, frames[0], name, **extra)
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("error", ResourceWarning)
        warnings.simplefilter("always", ResourceWarning)  # record them even from __del__
        out = load_image(path)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert getattr(out, "fp", None) is None
    assert _open_fds(path) in (0, None)
    out.load()
    assert out.mode == "RGB"


# -- samples ---------------------------------------------------------------------------------


def test_sample_images_listing():
    names = sample_images()
    assert names and names[0] == DEFAULT_SAMPLE == "chelsea"
    assert len(set(names)) == len(names)
    assert {"coffee", "astronaut", "camera"} <= set(names)
    assert "horse" not in names


def test_every_sample_loads_as_rgb():
    from zfwidgets.data.samples import sample_photos, scene_recipe

    for name in sample_images():
        img = load_sample(name)
        assert img.mode == "RGB", name
        if scene_recipe(name) is not None:            # composed at load time, no file
            assert img.size == (scene_recipe(name).size,) * 2
            continue
        path = sample_path(name)
        assert path.is_file() and path.parent.name in {"data", "sample_data", "images"}
        with Image.open(path) as raw:
            assert img.size == raw.size, name
    assert set(sample_photos()) < set(sample_images())


def test_default_and_gray_samples():
    cat = load_sample()
    assert cat.size == (451, 300)
    np.testing.assert_array_equal(np.asarray(cat), np.asarray(load_image(sample_path("chelsea"))))
    cam = np.asarray(load_sample("camera"))
    assert cam.shape == (512, 512, 3)
    assert (cam[..., 0] == cam[..., 1]).all() and (cam[..., 0] == cam[..., 2]).all()
    assert cam.std() > 10  # a real photo, not a blank image


def test_unknown_sample_suggests():
    with pytest.raises(BadParameterError, match="did you mean 'chelsea'") as info:
        load_sample("chelsae")
    assert isinstance(info.value, ValueError)
    with pytest.raises(BadParameterError, match="unknown sample"):
        sample_path("definitely-not-a-sample")
    assert load_sample("Cat").size == (451, 300)  # alias, case-insensitive


def _data_import_graph() -> dict[str, set[str]]:
    """Which modules of zfwidgets.data each one imports, at module level or inside a function."""
    import ast
    from pathlib import Path

    import zfwidgets.data

    folder = Path(zfwidgets.data.__file__).parent
    modules = {f"zfwidgets.data.{p.stem}": p for p in folder.glob("*.py") if p.stem != "__init__"}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = name.rsplit(".", node.level)[0]
                    base = f"{parent}.{base}" if base else parent
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_images_and_samples_import_each_other_in_one_direction_only():
    graph = _data_import_graph()
    assert "zfwidgets.data.samples" in graph["zfwidgets.data.images"]  # the missing-file hint
    assert "zfwidgets.data.images" not in graph["zfwidgets.data.samples"]

    def reaches(start, goal, seen=()):
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, (*seen, nxt)))
                   for nxt in graph[start])

    assert [m for m in graph if reaches(m, m)] == []   # no cycle in zfwidgets.data


# -- not regular files: refused before opening (nothing may hang) ----------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_and_link_to_fifo_are_refused_without_opening(tmp_path):
    fifo = tmp_path / "f.png"
    os.mkfifo(fifo)
    link = tmp_path / "link.png"
    link.symlink_to(fifo)
    for src, needles in ((fifo, ("f.png", "named pipe (FIFO)", "not a regular file")),
                         (str(link), ("link.png", "symbolic link to a named pipe"))):
        with pytest.raises(BadImageError) as info:
            finishes(lambda src=src: load_image(src), 10, fifos=[fifo])
        for needle in needles:
            assert needle in str(info.value), str(info.value)


def test_socket_devices_and_broken_link_are_refused(tmp_path):
    import socket

    sock_path = tmp_path / "s.png"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        _assert_bad(str(sock_path), "s.png", "a socket, not a regular file")
    for device in ("/dev/null", "/dev/zero"):
        if os.path.exists(device):
            with pytest.raises(BadImageError) as info:
                finishes(lambda device=device: load_image(device), 10)
            assert f"{device}: is a character device, not a regular file" in str(info.value)
    dangling = tmp_path / "gone.png"
    dangling.symlink_to(tmp_path / "missing.png")
    _assert_bad(str(dangling), "gone.png", "broken symbolic link")


# -- thin strips: preprocessing work bounded by the output size ------------------------------

STRIP_MEMORY = """
import io, resource, sys
from PIL import Image
from zfwidgets import Preprocessing, load_image

pre = Preprocessing()
pre(Image.new("RGB", (640, 480)))  # warm-up: the allocator, PIL's and torch's first calls
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
for w, h in [(4000, 1), (1, 4000), (20000, 1), (1, 20000), (60000, 3), (3, 60000)]:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 90)).save(buf, "PNG")
    x = pre(load_image(buf.getvalue()))
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(f"{w}x{h} {tuple(x.shape)} {grown:.1f}", flush=True)
    if grown > 64:  # stop at once: the old code would go on to allocate gigabytes
        sys.exit(1)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="ru_maxrss in KiB: Linux")
def test_thin_strips_cost_no_more_memory_than_a_photo():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", STRIP_MEMORY], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    lines = proc.stdout.split("\n")
    assert len([line for line in lines if "(1, 3, 224, 224)" in line]) == 6, proc.stdout


def _resize_then_crop(im: Image.Image, pre) -> np.ndarray:
    """torchvision's order, the obvious way: resize the whole image, then center-crop."""
    new_w, new_h = pre._resized_size(*im.size)
    out_h, out_w = pre.size
    left, top = int(round((new_w - out_w) / 2.0)), int(round((new_h - out_h) / 2.0))
    resized = im.resize((new_w, new_h), Image.Resampling.BILINEAR)
    return np.asarray(resized.crop((left, top, left + out_w, top + out_h)), np.int16)


@pytest.mark.parametrize("size", [(1500, 50), (50, 1500), (3000, 37), (7, 900), (1600, 1),
                                  (1, 1600), (2400, 300)])
def test_thin_strip_equals_resize_then_crop_within_one_level(size):
    from zfwidgets import Preprocessing
    from zfwidgets.models.preprocessing import RESIZE_AREA_LIMIT

    pre = Preprocessing()
    new_w, new_h = pre._resized_size(*size)
    assert new_w * new_h > RESIZE_AREA_LIMIT * 224 * 224  # the bounded path is the one tested
    im = noise_rgb(*size, seed=sum(size))
    ours = np.asarray(pre.to_pixels(im), np.int16)
    assert ours.shape == (224, 224, 3)
    assert np.abs(ours - _resize_then_crop(im, pre)).max() <= 1


@pytest.mark.parametrize("size", [(333, 250), (250, 333), (640, 120), (120, 640), (1000, 180),
                                  (224, 224), (100, 80)])
def test_photo_aspect_ratios_are_resized_then_cropped_exactly(size):
    from zfwidgets import Preprocessing

    for pre in (Preprocessing(), Preprocessing(size=(64, 96), resize=72)):
        im = noise_rgb(*size, seed=size[0])
        assert np.array_equal(np.asarray(pre.to_pixels(im), np.int16), _resize_then_crop(im, pre))


# -- float NaN / infinity, tensors without data ----------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_nan_and_inf_are_refused_alike_for_files_arrays_and_pil(tmp_path, bad):
    data = np.array([[0.0, 0.5, bad], [0.25, 1.0, 0.0]], np.float32)
    path = save(tmp_path, Image.fromarray(data), "f.tif")
    _assert_bad(path, "f.tif", "NaN or infinity", "1 of 6")
    _assert_bad(data, "<array>", "NaN or infinity", "1 of 6")
    _assert_bad(Image.fromarray(data), "NaN or infinity", "1 of 6")


def test_meta_and_sparse_tensors_are_refused():
    torch = pytest.importorskip("torch")
    _assert_bad(torch.zeros(3, 4, 5, device="meta"), "<tensor>", "meta", "no values")
    _assert_bad(torch.zeros(4, 5).to_sparse(), "<tensor>", "sparse", "to_dense()")


# -- JPEG draft: a large JPEG decoded at a reduced scale on request --------------------------


def _photo(w: int, h: int) -> Image.Image:
    """A smooth photo-like image with some detail (noise on gradients)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([xx / w, yy / h, 0.5 + 0.5 * np.sin(xx / 37.0 + yy / 53.0)], -1) * 230
    rgb += np.random.default_rng(0).normal(0, 6, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def test_min_side_decodes_a_large_jpeg_at_a_reduced_scale(tmp_path):
    photo = _photo(2400, 1800)
    jpg = save(tmp_path, photo, "big.jpg", quality=92)
    png = save(tmp_path, photo, "big.png")
    assert load_image(jpg).size == (2400, 1800)
    reduced = load_image(jpg, min_side=512)  # 1800 // 512 = 3 -> libjpeg's 1/2 scale
    assert reduced.size == (1200, 900) and reduced.mode == "RGB"
    assert load_image(jpg, min_side=1000).size == (2400, 1800)  # 1/2 would leave 900 < 1000
    assert load_image(jpg, min_side=400).size == (600, 450)     # 1/4
    assert load_image(jpg, min_side=200).size == (300, 225)     # 1/8
    assert load_image(png, min_side=512).size == (2400, 1800)   # only JPEGs are reduced
    with open(jpg, "rb") as f:
        assert load_image(f.read(), min_side=512).size == (1200, 900)  # bytes too
    # the DCT-scaled decode is close to a full decode shrunk by the same factor
    full = np.asarray(load_image(jpg).resize((1200, 900), Image.Resampling.BOX), np.float32)
    assert np.abs(np.asarray(reduced, np.float32) - full).mean() < 2.0
    # the EXIF rotation still applies (the square request fits either orientation)
    rotated = tmp_path / "rot.jpg"
    photo.save(rotated, quality=92, exif=_with_orientation(photo, 6))
    assert load_image(rotated, min_side=512).size == (900, 1200)
    for bad in (0, -3, 1.5, True):
        with pytest.raises(BadParameterError, match="min_side"):
            load_image(jpg, min_side=bad)


def test_session_decodes_a_large_jpeg_reduced_and_close_to_a_full_decode(tmp_path):
    from nets import tiny_cnn

    from zfwidgets import Preprocessing, Session

    jpg = save(tmp_path, _photo(2400, 1800), "big.jpg", quality=92)
    pre = Preprocessing()
    assert pre.draft_side() == 512
    s = Session(tiny_cnn(), jpg, preprocessing=pre)
    assert s.image.size == (1200, 900)  # reduced: both sides stay >= 512
    reduced = s.preprocessing.denormalize(s.input_tensor)
    s.set_image(load_image(jpg))  # a decoded image is used as it is
    assert s.image.size == (2400, 1800)
    full = s.preprocessing.denormalize(s.input_tensor)
    diff = (reduced - full).abs() * 255
    assert float(diff.mean()) < 1.0 and float(diff.max()) < 24
    small = save(tmp_path, _photo(900, 700), "small.jpg", quality=92)
    s.set_image(small)
    assert s.image.size == (900, 700)  # under 2 x 512 on a side: decoded at full size
