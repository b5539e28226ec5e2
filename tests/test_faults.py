"""Generated faults (hypothesis): bad image bytes, arrays and sizes, bad unit arguments, bad
command-line values and corrupted cache files.

Every example must end in one of the promised ways: a result, or a ``ZFError`` that names the
problem (for the command line: exit status 2); never another exception, never a hang, and for
the cache never a lost or changed result. Examples are derandomized (the same on every run) and
nothing is stored in a hypothesis database. Each test prints its tally (``-s`` shows it).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import struct
import tempfile
import warnings
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from test_mining import assert_same_result, random_images, tiny_session
from zfwidgets import Preprocessing, load_image
from zfwidgets.backend.mining import mine
from zfwidgets.cli import build_parser
from zfwidgets.errors import BadImageError, ZFError

FAST = settings(derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TALLY: dict[str, Counter] = {}


def tally(test: str, outcome: str) -> None:
    TALLY.setdefault(test, Counter())[outcome] += 1


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    for test, counts in TALLY.items():
        print(f"\n{test}: {sum(counts.values())} cases, " +
              ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


# ----------------------------------------------------------------------------- image bytes

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "ICO", "PPM")


def encoded(fmt: str, w: int, h: int, mode: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    if fmt in ("JPEG", "PPM", "BMP") and mode not in ("RGB", "L"):
        im = im.convert("RGB")
    buf = io.BytesIO()
    try:
        im.save(buf, fmt)
    except (OSError, ValueError, KeyError):  # a mode this format cannot store
        buf = io.BytesIO()
        im.convert("RGB").save(buf, fmt)
    return buf.getvalue()


@st.composite
def damaged_files(draw) -> bytes:
    """A valid small image file, then cut, bit-flipped, spliced with garbage, or not at all."""
    fmt = draw(st.sampled_from(FORMATS))
    mode = draw(st.sampled_from(("RGB", "L", "RGBA", "P")))
    data = bytearray(encoded(fmt, draw(st.integers(1, 24)), draw(st.integers(1, 24)), mode,
                             draw(st.integers(0, 9))))
    how = draw(st.sampled_from(("intact", "cut", "flip", "splice", "garbage")))
    if how == "cut":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
    elif how == "splice":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=64))
    elif how == "garbage":
        data = bytearray(data[:draw(st.integers(0, 16))]) + draw(st.binary(max_size=256))
    return bytes(data)


def png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(
        b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def loads_or_refuses(src, test: str, **kw) -> None:
    try:
        out = load_image(src, **kw)
    except BadImageError as exc:
        assert str(exc), "an error without a message"
        tally(test, "refused")
        return
    assert out.mode == "RGB" and out.width >= 1 and out.height >= 1
    tally(test, "loaded")


@settings(FAST, max_examples=400)
@given(data=damaged_files(), as_path=st.booleans(), min_side=st.sampled_from([None, 8]))
def test_damaged_files_load_or_raise_bad_image_error(data, as_path, min_side):
    if not as_path:
        loads_or_refuses(data, "damaged files", min_side=min_side)
        return
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "upload.img"
        path.write_bytes(data)
        loads_or_refuses(path, "damaged files", min_side=min_side)


@settings(FAST, max_examples=100)
@given(width=st.integers(0, 2**31 - 1), height=st.integers(0, 2**31 - 1),
       limit=st.sampled_from([1_000_000, 10_000, 64]))
def test_declared_sizes_are_checked_from_the_header(width, height, limit):
    """A header may declare any size; only what passes the pixel limit is decoded."""
    try:
        out = load_image(png_declaring(width, height), max_pixels=limit)
    except BadImageError as exc:
        too_big = width * height > limit
        tally("declared sizes", "refused as too large" if too_big else "refused as corrupt")
        assert ("exceeds the limit" in str(exc)) == too_big or 0 in (width, height), str(exc)
        return
    assert out.size == (width, height) and width * height <= limit
    tally("declared sizes", "loaded")


# ----------------------------------------------------------------------------- arrays, tensors

DTYPES = (np.uint8, np.uint16, np.int16, np.int64, np.float16, np.float32, np.float64,
          np.bool_, np.complex64)


@st.composite
def arrays(draw):
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=ndim, max_size=ndim)))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    rng = np.random.default_rng(draw(st.integers(0, 99)))
    arr = (rng.normal(0.5, draw(st.sampled_from([0.1, 1.0, 1e6])), shape)).astype(dtype) \
        if dtype.kind in "fc" else rng.integers(0, 2 if dtype == np.bool_ else 300, shape
                                                ).astype(dtype)
    if dtype.kind == "f" and arr.size and draw(st.booleans()):
        arr.flat[draw(st.integers(0, arr.size - 1))] = draw(st.sampled_from([np.nan, np.inf,
                                                                              -np.inf]))
    return arr


@settings(FAST, max_examples=300)
@given(arr=arrays(), as_tensor=st.booleans())
def test_arrays_and_tensors_load_or_raise_bad_image_error(arr, as_tensor):
    if as_tensor and arr.dtype not in (np.uint16, np.complex64):  # torch lacks these
        loads_or_refuses(torch.from_numpy(np.ascontiguousarray(arr)), "arrays and tensors")
    else:
        loads_or_refuses(arr, "arrays and tensors")


# ----------------------------------------------------------------------------- image sizes

@settings(FAST, max_examples=100)
@given(w=st.integers(1, 60_000), h=st.integers(1, 60_000), size=st.sampled_from(
    [(224, 224), (64, 96), (12, 12)]), resize=st.sampled_from([256, 72, None]))
def test_every_aspect_ratio_preprocesses_to_the_input_size(w, h, size, resize):
    if w * h > 200_000:  # keep the source image itself small: its aspect ratio is the point
        w, h = (max(1, 200_000 // h), h) if w > h else (w, max(1, 200_000 // w))
    pre = Preprocessing(size=size, resize=resize)
    x = pre(Image.new("RGB", (w, h), (40, 120, 200)))
    assert x.shape == (1, 3, *pre.size) and bool(torch.isfinite(x).all())
    tally("aspect ratios", "thin (crop, then resize)" if max(w / h, h / w) > 6 else "photo-like")


# ----------------------------------------------------------------------------- unit arguments

VALUES = st.one_of(st.integers(-3, 12), st.floats(allow_nan=True), st.none(), st.booleans(),
                   st.text(max_size=3), st.integers(0, 5).map(np.int64),
                   st.integers(0, 5).map(torch.tensor), st.just([1]), st.just(object()))
POSITIONS = st.one_of(st.none(), st.tuples(VALUES, VALUES), st.tuples(VALUES, VALUES, VALUES),
                      st.tuples(VALUES), VALUES)

SESSION = []


def session():
    if not SESSION:
        SESSION.append(tiny_session())
    return SESSION[0]


@settings(FAST, max_examples=400)
@given(method=st.sampled_from(["project", "strongest", "receptive_field", "project_many"]),
       layer=st.sampled_from(["act2", "conv1", "nope", 3]), channel=VALUES, position=POSITIONS)
def test_unit_arguments_give_a_result_or_a_zf_error(method, layer, channel, position):
    s = session()
    try:
        if method == "project":
            out = s.project(layer, channel, position)
        elif method == "strongest":
            out = s.strongest(layer, channel)
        elif method == "receptive_field":
            y, x = position if isinstance(position, tuple) and len(position) == 2 else (
                channel, position)
            out = s.receptive_field(layer, y, x)
        else:
            unit = (channel,) if position is None else (channel, *(
                position if isinstance(position, tuple) else (position,)))
            out = s.project_many(layer, [unit])
    except ZFError as exc:
        tally("unit arguments", type(exc).__name__)
        return
    assert out is not None
    tally("unit arguments", "result")
    assert all(not m._forward_hooks and not m._backward_hooks for m in s.model.modules())


# ----------------------------------------------------------------------------- command line

CLI_VALUES = st.one_of(st.text(alphabet="abcdu0123456789:-. ", min_size=1, max_size=8),
                       st.sampled_from(["cpu", "cuda", "cuda:0", "cuda:-1", "meta", "all",
                                        "0", "-1", "1e3", "mps", "cuda:x"]))


@settings(FAST, max_examples=200)
@given(option=st.sampled_from(["--per-image", "--device", "-k", "--batch-size", "--workers",
                               "--checkpoint-every"]), value=CLI_VALUES)
def test_cli_values_parse_or_exit_2(option, value):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser().parse_args(["mine", "folder", option, value])
    except SystemExit as stop:
        assert stop.code == 2
        assert "error: argument" in err.getvalue() and "Traceback" not in err.getvalue()
        tally("cli values", "exit 2")
        return
    assert args.command == "mine"
    tally("cli values", "parsed")


# ----------------------------------------------------------------------------- cache files

CACHE = {}


def clean_cache():
    """A tiny run's cache folder (made once) and its result."""
    if not CACHE:
        folder = Path(tempfile.mkdtemp(prefix="zf-faults-cache-"))
        images = random_images(6)
        kw = dict(k=3, batch_size=2, progress=False, workers=0)
        CACHE.update(images=images, kw=kw, folder=folder,
                     result=mine(session(), images, ["act2", "conv1"], cache_dir=folder, **kw))
        CACHE["files"] = {p.name: p.read_bytes() for p in folder.glob("topk-*.pt")}
    return CACHE


@settings(FAST, max_examples=80)
@given(which=st.integers(0, 1), how=st.sampled_from(["cut", "flip", "garbage", "empty",
                                                      "wrong dict", "not a dict"]),
       at=st.floats(0, 1), noise=st.binary(min_size=1, max_size=64))
def test_corrupted_cache_files_are_recomputed_and_no_result_is_lost(which, how, at, noise):
    c = clean_cache()
    folder, files = c["folder"], c["files"]
    for name, data in files.items():  # every example starts from the intact cache
        (folder / name).write_bytes(data)
    name = sorted(files)[which]
    data = bytearray(files[name])
    i = int(at * (len(data) - 1))
    if how == "cut":
        data = data[:i]
    elif how == "flip":
        data[i] ^= 0xFF
    elif how == "garbage":
        data[i:i + len(noise)] = noise
    elif how == "empty":
        data = b""
    else:
        buf = io.BytesIO()
        torch.save({"format": 1, "key": "x"} if how == "wrong dict" else [1, 2], buf)
        data = buf.getvalue()
    (folder / name).write_bytes(bytes(data))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        again = mine(session(), c["images"], ["act2", "conv1"], cache_dir=folder, **c["kw"])
    assert_same_result(again, c["result"])  # data lost: none
    assert {p.name for p in folder.glob("topk-*.pt")} == set(files)
    assert not list(folder.glob("*.tmp")) and not list(folder.glob("*.partial.pt"))
    tally("corrupted cache files", how)


def teardown_module(module):
    if CACHE:
        shutil.rmtree(CACHE["folder"], ignore_errors=True)
