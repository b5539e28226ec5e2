"""Top-k mining: exactness against brute force, shards, torchrun, robustness, resume, cache."""

from __future__ import annotations

import io
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from zfwidgets import Preprocessing, Session
from zfwidgets.backend.mining import (LayerTopK, Miner, MiningResult, load_result, merge, mine,
                                      mine_job)
from zfwidgets.backend.project import gallery
from zfwidgets.data.datasets import (DatasetSource, ImageFolder, ImageList, as_source,
                                     sample_collection)
from zfwidgets.errors import BadParameterError, DataError, UnknownLayerError

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- fixtures

class Tiny(nn.Module):
    """Small conv net with an in-place ReLU after the mined conv and a saturating ReLU6."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)  # overwrites conv1's output: mining must not see it
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1)
        self.act2 = nn.ReLU6()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4))

    def forward(self, x):
        return self.head(self.act2(self.conv2(self.pool(self.relu1(self.conv1(x))))))


def tiny_session(seed: int = 0) -> Session:
    torch.manual_seed(seed)
    model = Tiny()
    with torch.no_grad():
        model.conv2.weight.mul_(8.0)  # many ReLU6 outputs saturate at exactly 6: real ties
    return Session(model, preprocessing=Preprocessing(size=(12, 12), resize=None))


def random_images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (14 + i % 3, 15, 3), dtype=np.uint8) for i in range(n)]
    for i in range(0, n, 5):  # constant images: every position ties
        images[i] = np.full((14, 15, 3), 40 * (i % 7), np.uint8)
    return images


TINY_LAYERS = ["conv1", "relu1", "act2"]


def record(session, source, ids, batch_size, layers=None, inputs=False):
    """Activations over ``ids`` (copies taken when each module returns), with the same batches
    as mining uses. Plain forward hooks on the named modules: an independent reference. With
    ``inputs=True``, the modules' inputs instead (copies taken before each module runs: the
    pre-activations of rectifier modules, which rank tied values), for the rectifier modules
    among ``layers`` only."""
    modules = dict(session.model.named_modules())
    layers = layers or [layer for layer in session.layers if "@" not in layer]
    if inputs:
        layers = [layer for layer in layers if isinstance(
            modules[layer], (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.Threshold))]
    acts: dict[str, list] = {layer: [] for layer in layers}
    handles = [modules[layer].register_forward_pre_hook(
        lambda m, i, layer=layer: acts[layer].append(i[0].detach().clone())) if inputs else
        modules[layer].register_forward_hook(
        lambda m, i, o, layer=layer: acts[layer].append(o.detach().clone())) for layer in layers]
    try:
        with torch.no_grad():
            for j in range(0, len(ids), batch_size):
                chunk = ids[j:j + batch_size]
                session.model.eval()(torch.cat([session.preprocessing(source.load(i))
                                                for i in chunk]))
    finally:
        for h in handles:
            h.remove()
    return {layer: torch.cat(a).numpy() for layer, a in acts.items()}


def brute_force(session, source, ids, layer, k, per_image, batch_size, acts=None, pre=None):
    """Slow, obvious reference: every activation of every image, sorted by (value desc,
    pre-activation desc, image asc, y asc, x asc); at most ``per_image`` per image. The
    pre-activation is a rectifier module's input, the value itself for other layers."""
    a = (acts or record(session, source, ids, batch_size, [layer]))[layer]
    pre = pre if pre is not None else record(session, source, ids, batch_size, [layer], True)
    b = pre.get(layer, a)
    n, c, h, w = a.shape
    img_of = np.repeat(np.asarray(ids), h * w)
    pos = np.tile(np.arange(h * w), n)
    out_v = np.full((c, k), -np.inf, np.float32)
    out_i = np.full((c, k), -1, np.int64)
    out_y = np.full((c, k), -1, np.int64)
    out_x = np.full((c, k), -1, np.int64)
    for ch in range(c):
        v = a[:, ch].reshape(-1)
        order = np.lexsort((pos, img_of, -b[:, ch].reshape(-1), -v))
        taken: dict[int, int] = {}
        slot = full = 0
        for o in order:
            im = int(img_of[o])
            if per_image is not None and taken.get(im, 0) >= per_image:
                if full == n:
                    break  # every image has given all it may
                continue
            taken[im] = taken.get(im, 0) + 1
            full += per_image is not None and taken[im] == per_image
            out_v[ch, slot], out_i[ch, slot] = v[o], im
            out_y[ch, slot], out_x[ch, slot] = divmod(int(pos[o]), w)
            slot += 1
            if slot == k:
                break
    return out_v, out_i, out_y, out_x


def assert_equal_topk(top: LayerTopK, ref) -> None:
    v, i, y, x = ref
    np.testing.assert_array_equal(top.image.numpy(), i)
    np.testing.assert_array_equal(top.y.numpy(), y)
    np.testing.assert_array_equal(top.x.numpy(), x)
    np.testing.assert_array_equal(top.values.numpy(), v)


def assert_same_result(a: MiningResult, b: MiningResult, exact_values: bool = True) -> None:
    assert list(a.layers) == list(b.layers)
    for layer in a.layers:
        ta, tb = a[layer], b[layer]
        assert torch.equal(ta.image, tb.image), layer
        assert torch.equal(ta.y, tb.y) and torch.equal(ta.x, tb.x), layer
        if exact_values:
            assert torch.equal(ta.values, tb.values), layer
        else:
            torch.testing.assert_close(ta.values, tb.values, rtol=0, atol=1e-6)
    assert (a.n_images, a.n_skipped) == (b.n_images, b.n_skipped)


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def png_bytes(w: int, h: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares a huge image (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def make_folder(root: Path, n: int = 6, seed: int = 0) -> list[str]:
    """``n`` good images in nested folders; returns their relative paths."""
    names = []
    for i in range(n):
        rel = f"{'sub/' if i % 2 else ''}img{i:02d}.{'png' if i % 3 else 'jpg'}"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed + i)
        Image.fromarray(rng.integers(0, 256, (20 + i, 18, 3), dtype=np.uint8)).save(path)
        names.append(rel)
    return names


# ----------------------------------------------------------------------------- exactness

@pytest.mark.parametrize("per_image", [1, 2, None])
def test_tiny_net_equals_brute_force(per_image):
    s = tiny_session()
    src = ImageList(random_images(23))
    k = 7
    result = mine(s, src, TINY_LAYERS, k=k, per_image=per_image, batch_size=4, progress=False,
                  workers=0)
    assert result.n_images == 23 and result.n_skipped == 0
    for layer in TINY_LAYERS:
        top = result[layer]
        assert top.values.shape == (s.layer_info(layer).shape[0], k)
        assert bool((top.values[:, :-1] >= top.values[:, 1:]).all())  # sorted descending
        assert_equal_topk(top, brute_force(s, src, list(range(23)), layer, k, per_image, 4))
    if per_image == 1:  # one hit per image per channel
        for c in range(result["act2"].channels):
            ids = result["act2"].image[c].tolist()
            assert len(set(ids)) == len(ids)
    # ties really happened (ReLU6 saturation / constant images), so tie-breaking was tested
    assert bool((result["act2"].values == 6.0).any())


def test_lite0_equals_brute_force():
    s = Session()
    src = sample_collection(samples=["chelsea", "coffee"])
    sub = ImageList([src.load(i) for i in (0, 1, 5, 9, 14, 30)])
    layers = ["stem.act", "blocks.4.expand.act", "head.act"]
    acts = record(s, sub, list(range(6)), 3, layers)
    pre = record(s, sub, list(range(6)), 3, layers, inputs=True)
    assert set(pre) == set(layers)
    for per_image in (1, None):
        result = mine(s, sub, layers, k=9, per_image=per_image, batch_size=3, progress=False)
        for layer in layers:
            assert_equal_topk(result[layer], brute_force(s, sub, list(range(6)), layer, 9,
                                                         per_image, 3, acts, pre))
        # ReLU6 saturates: exact ties at 6.0 were ranked by the pre-activation
        top = result["stem.act"]
        assert bool((top.values == 6.0).sum() > 1)
        tied = (top.values == 6.0)[:, :-1] & (top.values == 6.0)[:, 1:]
        assert bool((top.pre[:, :-1] >= top.pre[:, 1:])[tied].all()) and bool(tied.any())
    assert no_hooks(s.model)


def test_fewer_hits_than_k_are_padded():
    s = tiny_session()
    result = mine(s, random_images(3), ["act2"], k=5, progress=False, workers=0)
    top = result["act2"]
    assert top.values.shape == (5, 5)
    assert bool((top.image[:, 3:] == -1).all()) and bool(torch.isinf(top.values[:, 3:]).all())
    assert bool((top.y[:, 3:] == -1).all())
    assert len(top.hits(0)) == 3


def test_two_shard_merge_equals_one_pass():
    s = tiny_session()
    src = ImageList(random_images(17))
    kw = dict(k=6, per_image=1, batch_size=1, progress=False, workers=0)
    whole = mine(s, src, TINY_LAYERS, **kw)
    a = mine(s, src, TINY_LAYERS, shard=(0, 2), **kw)
    b = mine(s, src, TINY_LAYERS, shard=(1, 2), **kw)
    assert a.n_images == 9 and b.n_images == 8
    assert set(a["act2"].image.flatten().tolist()) <= set(range(0, 17, 2))
    merged = merge(a, b)
    assert_same_result(merged, whole)
    assert_same_result(merge(b, a), whole)  # order does not matter
    with pytest.raises(BadParameterError):
        merge(a, a)  # a shard with itself would count images twice
    unrestricted = mine(s, src, ["act2"], k=6, per_image=None, batch_size=1, progress=False)
    parts = [mine(s, src, ["act2"], k=6, per_image=None, batch_size=1, progress=False,
                  shard=(r, 3)) for r in range(3)]
    assert_same_result(merge(merge(parts[2], parts[0]), parts[1]), unrestricted)


def test_memory_is_flat_in_the_data_size():
    s = tiny_session()
    sizes = []
    for n in (4, 40):
        miner = Miner(s.model, TINY_LAYERS, k=5, per_image=None)
        images = random_images(n, seed=n)
        for j in range(0, n, 4):
            x = torch.cat([s.preprocessing(im) for im in images[j:j + 4]])
            miner.update(x, list(range(j, j + x.shape[0])))
            for layer, state in miner.states.items():  # never more than k per channel
                assert all(t.shape[0] == s.layer_info(layer).shape[0] and t.shape[1] <= 5
                           for t in state)
        result = MiningResult(miner.result(), k=5, per_image=None, n_images=n)
        buf = io.BytesIO()
        torch.save(result.to_state(), buf)
        sizes.append(len(buf.getvalue()))
        assert {layer: tuple(t.values.shape) for layer, t in result.layers.items()} == \
            {layer: (s.layer_info(layer).shape[0], 5) for layer in TINY_LAYERS}
    assert abs(sizes[0] - sizes[1]) <= 16, sizes  # same tensors: only a few digits differ


# ----------------------------------------------------------------------------- data

def test_folder_with_bad_files_is_mined_with_them_skipped(tmp_path):
    good = make_folder(tmp_path, 5)
    (tmp_path / "sub" / "truncated.png").write_bytes(png_bytes(30, 30)[:120])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image\n")  # not an image by its extension
    (tmp_path / "notes.png").write_text("not an image\n")  # named like one: tried, skipped
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "huge.png").write_bytes(bomb_png())
    (tmp_path / ".hidden.png").write_bytes(png_bytes(8, 8))  # hidden: not listed at all

    src = ImageFolder(tmp_path)
    assert src.paths == sorted(src.paths) and len(src) == 9 and src.ignored == ["notes.txt"]
    s = tiny_session()
    t0 = time.monotonic()
    result = mine(s, tmp_path, ["act2", "conv1"], k=4, batch_size=2, progress=False)
    assert time.monotonic() - t0 < 30  # the bomb is refused from its header, never decoded
    assert result.n_images == 5 and result.n_skipped == 4
    skipped = {name: reason for _, name, reason in result.skipped}
    assert set(skipped) == {"sub/truncated.png", "empty.png", "notes.png", "deep/er/huge.png"}
    assert "exceeds the limit" in skipped["deep/er/huge.png"]
    assert "empty" in skipped["empty.png"]
    assert "4 unreadable" in result.summary()
    good_ids = [src.paths.index(g) for g in good]
    hit_ids = set(result["act2"].image.flatten().tolist()) - {-1}
    assert hit_ids <= set(good_ids)
    # exact against brute force over the readable files, ids being the folder's
    for layer in ("act2", "conv1"):
        ref = brute_force(s, src, sorted(good_ids), layer, 4, 1, 1)
        top = result[layer]
        np.testing.assert_array_equal(top.image.numpy(), ref[1])
        np.testing.assert_allclose(top.values.numpy(), ref[0], rtol=0, atol=1e-5)


def test_sources_and_fingerprints(tmp_path):
    make_folder(tmp_path, 3)
    a = ImageFolder(tmp_path).fingerprint()
    assert ImageFolder(tmp_path).fingerprint() == a
    (tmp_path / "img00.jpg").write_bytes((tmp_path / "img00.jpg").read_bytes() + b"\0")
    assert ImageFolder(tmp_path).fingerprint() != a  # size changed
    images = random_images(3)
    assert ImageList(images).fingerprint() == ImageList([im.copy() for im in images]).fingerprint()
    images[1] = images[1].copy()
    images[1][0, 0, 0] ^= 1
    assert ImageList(images).fingerprint() != ImageList(random_images(3)).fingerprint()
    # a torch Dataset of (tensor [3,H,W] in [0,1], label) tuples
    data = [(torch.rand(3, 10, 12), 1), (torch.rand(3, 9, 9), 0)]
    ds = DatasetSource(data)
    assert ds.load(0).size == (12, 10) and ds.fingerprint() is None
    assert as_source(data).load(1).size == (9, 9)  # a plain list of tuples works too
    assert isinstance(as_source(tmp_path), ImageFolder)
    assert isinstance(as_source([tmp_path / "img01.png"]), ImageList)
    coll = sample_collection()
    assert len(coll) == len(set(coll.name(i) for i in range(len(coll))))
    assert coll.load(1).size[0] == coll.load(1).size[1]  # crops are square
    with pytest.raises(DataError):
        as_source(tmp_path / "nope")
    with pytest.raises(DataError):
        mine(tiny_session(), ImageList([]), ["act2"], progress=False)


def test_torch_dataset_with_bad_items():
    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 6

        def __getitem__(self, i):
            if i == 3:
                raise OSError("disk on fire")
            g = torch.Generator().manual_seed(i)
            return torch.rand(3, 13, 13, generator=g), i % 2

    s = tiny_session()
    result = mine(s, Data(), ["act2"], k=3, progress=False)
    assert result.n_images == 5 and result.n_skipped == 1
    assert "disk on fire" in result.skipped[0][2]
    with pytest.warns(UserWarning, match="fingerprint"):
        mine(s, Data(), ["act2"], k=3, progress=False, cache_dir="/nonexistent-unused")


def test_errors_and_hygiene():
    s = tiny_session()
    s.model.train()
    with pytest.raises(UnknownLayerError, match="did you mean"):
        mine(s, random_images(2), ["act22"], progress=False)
    with pytest.raises(BadParameterError):
        mine(s, random_images(2), ["act2"], k=0, progress=False)
    with pytest.raises(BadParameterError):
        mine(s, random_images(2), ["act2"], per_image=0, progress=False)
    with pytest.raises(BadParameterError):
        mine(s, random_images(2), ["act2"], shard=(2, 2), progress=False)

    class Boom(ImageList):
        def load(self, i):
            if i == 2:
                raise RuntimeError("injected")
            return super().load(i)

    with pytest.raises(RuntimeError, match="injected"):
        mine(s, Boom(random_images(4)), ["conv1", "act2"], batch_size=1, progress=False,
             workers=0)
    assert no_hooks(s.model)
    assert all(m.training for m in s.model.modules())  # flags restored


# ----------------------------------------------------------------------------- cache / resume

def count_forwards(session) -> list[int]:
    session.layers  # the session's own forward pass (layer table) is not mining
    model = session.model
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_cache_is_reused_and_invalidated(tmp_path):
    s = tiny_session()
    images = random_images(12)
    kw = dict(k=4, batch_size=4, progress=False, cache_dir=tmp_path)
    calls = count_forwards(s)
    first = mine(s, images, ["act2"], **kw)
    assert calls[0] == 3
    again = mine(s, images, ["act2"], **kw)
    assert calls[0] == 3  # nothing recomputed
    assert_same_result(first, again)
    both = mine(s, images, ["act2", "conv1"], **kw)  # only conv1 is mined, in one pass
    assert calls[0] == 6
    assert_same_result(MiningResult({"act2": both["act2"]}, 4, 1, 12), MiningResult(
        {"act2": first["act2"]}, 4, 1, 12))
    mine(s, images, ["act2"], k=5, batch_size=4, progress=False, cache_dir=tmp_path)
    assert calls[0] == 9  # another k: another key
    with torch.no_grad():
        s.model.conv2.bias.add_(0.5)  # weights changed in place: the cache must not be used
    changed = mine(s, images, ["act2"], **kw)
    assert calls[0] == 12
    assert not torch.equal(changed["act2"].values, first["act2"].values)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.partial.pt"))
    for path in tmp_path.glob("topk-*.pt"):  # a corrupt cache file is recomputed, not fatal
        path.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable"):
        recomputed = mine(s, images, ["act2"], **kw)
    assert calls[0] == 15
    assert_same_result(recomputed, changed)


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    s = tiny_session()
    images = random_images(14)
    clean = mine(s, images, ["conv1", "act2"], k=5, batch_size=2, progress=False, workers=0)

    class Interrupt(ImageList):
        loads = 0

        def load(self, i):
            type(self).loads += 1
            if i == 9 and self.armed:
                raise KeyboardInterrupt
            return super().load(i)

    src = Interrupt(images)
    src.armed = True
    with pytest.raises(KeyboardInterrupt):
        mine(s, src, ["conv1", "act2"], k=5, batch_size=2, progress=False, workers=0,
             cache_dir=tmp_path, checkpoint_every=1e9)  # no periodic checkpoint: on error only
    (ckpt,) = tmp_path.glob("*.partial.pt")
    assert torch.load(ckpt, weights_only=True)["next"] == 8
    src.armed = False
    Interrupt.loads = 0
    resumed = mine(s, src, ["conv1", "act2"], k=5, batch_size=2, progress=False, workers=0,
                   cache_dir=tmp_path)
    assert Interrupt.loads == 14 - 8  # resumed, not restarted
    assert_same_result(resumed, clean)
    assert not list(tmp_path.glob("*.partial.pt"))


def test_mine_job_steps_equal_mine_and_report_progress():
    s = tiny_session()
    images = random_images(9)
    images[4] = b"not an image"                                  # one unreadable item
    kw = dict(k=3, batch_size=2, workers=0)
    clean = mine(s, images, TINY_LAYERS, progress=False, **kw)
    seen = []
    assert_same_result(mine(s, images, TINY_LAYERS, progress=False,
                            on_progress=lambda *a: seen.append(a), **kw), clean)
    job = mine_job(s, images, TINY_LAYERS, **kw)
    assert job.what == "mining 3 layers" and job.unit == "img"
    steps = []
    while (step := job.step()) is not None:                      # as an event loop drives it
        steps.append(step)
    assert_same_result(job.result, clean)
    assert [(st.done, st.total) for st in steps] == [(2, 9), (4, 9), (6, 9), (8, 9), (9, 9)]
    assert [st.note for st in steps] == ["", "", "1 skipped", "1 skipped", "1 skipped"]
    assert seen == [(2, 9, 0), (4, 9, 0), (6, 9, 1), (8, 9, 1), (9, 9, 1)]
    assert job.result.n_skipped == 1 and job.result.skipped[0][0] == 4
    with pytest.raises(BadParameterError):                       # arguments checked up front
        mine_job(s, images, ["act2"], k=0)


def test_closing_the_job_keeps_a_checkpoint_to_resume_from(tmp_path):
    s = tiny_session()
    images = random_images(10)
    kw = dict(k=4, batch_size=2, workers=0)
    clean = mine(s, images, ["conv1", "act2"], progress=False, **kw)
    job = mine_job(s, images, ["conv1", "act2"], cache_dir=tmp_path, checkpoint_every=1e9, **kw)
    assert [job.step().done for _ in range(3)] == [2, 4, 6]
    assert not list(tmp_path.glob("*.partial.pt"))               # none periodic (1e9 s)
    job.close()                                                  # a newer request drops it
    assert job.closed and not job.done and job.step() is None
    (ckpt,) = tmp_path.glob("*.partial.pt")
    assert torch.load(ckpt, weights_only=True)["next"] == 6

    class Counting(ImageList):
        loads = 0

        def load(self, i):
            type(self).loads += 1
            return super().load(i)

    resumed = mine_job(s, Counting(images), ["conv1", "act2"], cache_dir=tmp_path, **kw)
    assert resumed.step().done == 8                              # went on from image 6
    assert_same_result(resumed.run(progress=False), clean)
    assert Counting.loads == 10 - 6
    assert not list(tmp_path.glob("*.partial.pt"))


def test_miner_snapshot_and_restore_continue_exactly():
    s = tiny_session()
    images = random_images(12)
    batches = [(list(range(j, j + 3)), torch.cat([s.preprocessing(im) for im in images[j:j + 3]]))
               for j in range(0, 12, 3)]
    whole = Miner(s.model, TINY_LAYERS, k=5, per_image=2)
    half = Miner(s.model, TINY_LAYERS, k=5, per_image=2)
    for ids, x in batches:
        whole.update(x, ids)
    for ids, x in batches[:2]:
        half.update(x, ids)
    buf = io.BytesIO()
    torch.save(half.snapshot(), buf)                             # plain data, as a checkpoint
    buf.seek(0)
    again = Miner(s.model, TINY_LAYERS, k=5, per_image=2)
    again.restore(torch.load(buf, weights_only=True))
    for ids, x in batches[2:]:
        again.update(x, ids)
    for layer in TINY_LAYERS:
        a, b = again.result()[layer], whole.result()[layer]
        assert torch.equal(a.values, b.values) and torch.equal(a.image, b.image)
        assert torch.equal(a.y, b.y) and torch.equal(a.x, b.x)
    with pytest.raises(BadParameterError, match="does not mine"):
        Miner(s.model, ["act2"], k=5).restore(half.snapshot())


KILLED_RUN = textwrap.dedent("""
    import sys
    from pathlib import Path

    import torch

    from zfwidgets import Session, get_model
    from zfwidgets.data.datasets import ImageFolder
    from zfwidgets.backend.mining import mine

    HANDSHAKE = 8  # batches of 2, a checkpoint after each: loading image 8, images 0-7 are saved

    class Handshake(ImageFolder):
        def load(self, i):
            if i == HANDSHAKE:
                (ckpt,) = Path(sys.argv[3]).glob("*.partial.pt")
                print("checkpointed", torch.load(ckpt, weights_only=True)["next"], flush=True)
                sys.stdin.read()  # wait to be killed (the parent never writes)
            return super().load(i)

    session = Session(get_model("zfnet_small", weights=sys.argv[1]))
    mine(session, Handshake(sys.argv[2]), ["features.relu2", "features.relu4"], k=4,
         batch_size=2, cache_dir=sys.argv[3], checkpoint_every=0, workers=0, progress=False)
    print("finished")
""")


def test_killed_process_resumes_from_checkpoint(tmp_path):
    folder, cache = tmp_path / "data", tmp_path / "cache"
    make_folder(folder, 16)
    torch.manual_seed(0)
    from zfwidgets.models import ZFNetSmall

    weights = tmp_path / "w.pt"
    torch.save(ZFNetSmall().state_dict(), weights)
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN)
    errors = tmp_path / "stderr.txt"
    with open(errors, "wb") as err:
        proc = subprocess.Popen([sys.executable, str(script), str(weights), str(folder),
                                 str(cache)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=err, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        # the handshake: the child says it has checkpointed, then waits to be killed
        readable, _, _ = select.select([proc.stdout], [], [], 120)
        line = proc.stdout.readline() if readable else b""
        assert line.split() == [b"checkpointed", b"8"], (line, errors.read_text()[-3000:])
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)  # no chance to clean up
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        proc.stdin.close()
    assert proc.returncode == -signal.SIGKILL
    assert b"finished" not in proc.stdout.read()
    (ckpt,) = cache.glob("*.partial.pt")
    done = torch.load(ckpt, weights_only=True)["next"]
    assert done == 8

    from zfwidgets import get_model

    session = Session(get_model("zfnet_small", weights=weights))

    class Counting(ImageFolder):
        loads = 0

        def load(self, i):
            type(self).loads += 1
            return super().load(i)

    layers = ["features.relu2", "features.relu4"]
    resumed = mine(session, Counting(folder), layers, k=4, batch_size=2, cache_dir=cache,
                   workers=0, progress=False)
    assert Counting.loads == 16 - done
    clean = mine(session, folder, layers, k=4, batch_size=2, workers=0, progress=False)
    assert_same_result(resumed, clean)
    Counting.loads = 0
    reused = mine(session, Counting(folder), layers, k=4, batch_size=2, cache_dir=cache,
                  progress=False)
    assert Counting.loads == 0
    assert_same_result(reused, clean)


# ----------------------------------------------------------------------------- torchrun

def test_torchrun_two_processes_equal_single_process(tmp_path):
    folder = tmp_path / "data"
    make_folder(folder, 9)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    args = [str(folder), "--model", "zfnet_small", "--layers", "features.relu2",
            "features.relu4", "-k", "4", "--batch-size", "1", "--seed", "3", "--no-progress",
            "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "GLOO_SOCKET_IFNAME": "lo"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "dist.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "zfwidgets.cli", "mine",
         *args, "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from zfwidgets.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["mine", *args, "--out", str(tmp_path / "single.pt")]) == 0
    finally:
        torch.set_num_threads(threads)
    dist, single = load_result(out), load_result(tmp_path / "single.pt")
    assert dist.n_images == 9 and dist.n_skipped == 1 and dist.shard is None
    assert dist.skipped[0][1] == "broken.jpg"
    assert_same_result(dist, single, exact_values=False)
    assert isinstance(dist.source, ImageFolder) and len(dist.source) == 10


def test_cli_mine_parser_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "zfwidgets.cli", "mine", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    help_text = " ".join(proc.stdout.split())
    assert help_text.startswith("usage: zfwidgets mine")
    for option in ("folder", "--layers", "--per-image", "--cache-dir", "--checkpoint-every",
                   "--backend"):
        assert option in help_text
    assert "mining_batch_size" in help_text and "8 on a CPU" not in help_text
    from zfwidgets.cli import main

    with pytest.raises(SystemExit) as stop:                      # the folder is required
        main(["mine"])
    assert stop.value.code == 2


# ----------------------------------------------------------------------------- gallery

def test_gallery_patches_and_projections_match_the_session():
    s = tiny_session()
    images = random_images(10)
    result = mine(s, images, ["act2"], k=4, progress=False)
    g = gallery(s, result, "act2", channel=2)
    assert len(g) == 4 and g.layer == "act2" and g.channel == 2
    info = s.layer_info("act2")
    for j, img in enumerate(g.image_ids):
        x = s.preprocessing(images[img])
        view = s.preprocessing.denormalize(x)[0].permute(1, 2, 0).numpy()
        y0, x0 = g.positions[j]
        assert g.boxes[j] == info.geometry.box(y0, x0, 12, 12)
        t, l, b, r = g.boxes[j]
        np.testing.assert_allclose(g.patches[j], view[t:b, l:r], atol=1e-6)
        np.testing.assert_allclose(g.views[j], view, atol=1e-6)
        one = Session(s.model, images[img], preprocessing=s.preprocessing)
        ref = one.project("act2", 2, (y0, x0))
        np.testing.assert_allclose(g.projections[j], ref[:, t:b, l:r].numpy(), atol=1e-5)
        act = one.activation("act2")[2, y0, x0]
        assert abs(float(act) - float(g.values[j])) < 1e-4
        assert g.projections[j].shape == (3,) + g.patches[j].shape[:2]
        assert g.scales[j] == pytest.approx(float(np.abs(g.projections[j]).max()))
    assert g.pre_values.tolist() == result["act2"].pre_activations(2)[:4]
    with torch.no_grad():
        s.model.conv1.bias.add_(1.0)
    with pytest.raises(DataError, match="other model weights"):
        gallery(s, result, "act2", 0)


def test_worker_processes_give_the_same_result_and_resume(tmp_path):
    """Issue 14: decoding in DataLoader worker processes (what feeds a GPU) mines exactly what
    threads and the caller's thread mine, unreadable items skipped alike, and resumes from a
    checkpoint written by a threaded run."""
    s = tiny_session()
    images = random_images(11)
    images[3] = b"not an image"
    kw = dict(k=4, batch_size=3, progress=False)
    inline = mine(s, images, TINY_LAYERS, workers=0, **kw)
    threads = mine(s, images, TINY_LAYERS, workers=2, loader="threads", **kw)
    procs = mine(s, images, TINY_LAYERS, workers=2, loader="processes", **kw)
    assert_same_result(threads, inline)
    assert_same_result(procs, inline)
    assert procs.n_skipped == 1 and procs.skipped[0][0] == 3

    from zfwidgets.backend.mining.run import MiningRun, load_batches

    assert MiningRun.plan(s, images, TINY_LAYERS).loader == "threads"     # auto, on a CPU
    with pytest.raises(BadParameterError, match="loader"):
        mine(s, images, TINY_LAYERS, loader="gpu", **kw)
    batches = list(load_batches(as_source(images), s.preprocessing, range(11), 5, 3, 2,
                                processes=True))
    assert [end for end, _ in batches] == [8, 11]
    assert [ids for _, (ids, _, _) in batches] == [[5, 6, 7], [8, 9, 10]]

    job = mine_job(s, images, TINY_LAYERS, workers=0, cache_dir=tmp_path, **{
        k: v for k, v in kw.items() if k != "progress"})
    job.step()
    job.step()
    job.close()                                          # a checkpoint after 6 images
    assert list(tmp_path.glob("*.partial.pt"))
    resumed = mine(s, images, TINY_LAYERS, workers=2, loader="processes", cache_dir=tmp_path,
                   **kw)
    assert_same_result(resumed, inline)
