"""The fault battery's failed cases (issue 11), each as a test: non-regular files in folders, a
stale cache for a redefined model, unusable cache and output folders, bad CLI values and Ctrl-C,
argument types, well-formed cache files with wrong content, resume with another batch size, and
the usability slips (an upload's name, a folder of junk, a README in an image folder).

Image-level cases (a FIFO given to ``load_image``, thin strips, NaN, meta tensors) are in
``test_images.py``; generated bad inputs in ``test_faults.py``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import select
import socket
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from blocking import finishes
from test_mining import (assert_same_result, bomb_png, make_folder, png_bytes, random_images,
                         tiny_session)
from zfwidgets import Preprocessing, Session
from zfwidgets.backend.mining import load_result, mine, mine_job, store
from zfwidgets.cli import main
from zfwidgets.data.datasets import ImageFolder, ImageList, as_source
from zfwidgets.errors import BadParameterError, DataError, OutOfRangeError, StorageError, ZFError
from zfwidgets.fingerprint import architecture_digest, model_id

REPO = Path(__file__).resolve().parents[1]
HAS_FIFO = hasattr(os, "mkfifo")
CLI_MODEL = ["--model", "zfnet_small", "--weights", "none", "--layers", "features.relu2",
             "-k", "3", "--no-progress", "--device", "cpu", "--workers", "0"]


def cli(*args, timeout=180, env=None, **kw) -> subprocess.CompletedProcess:
    """``python -m zfwidgets.cli ARGS`` in a subprocess (one torch thread)."""
    return subprocess.run([sys.executable, "-m", "zfwidgets.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, **kw)


def count_forwards(session) -> list[int]:
    """Batch sizes of the model's forward passes from now on (the session's own first pass is
    done before)."""
    session.layers
    sizes: list[int] = []
    session.model.register_forward_pre_hook(lambda m, args: sizes.append(int(args[0].shape[0])))
    return sizes


# ============================================================================ 1. non-regular files

@pytest.mark.skipif(not HAS_FIFO, reason="no FIFOs on this platform")
def test_fifo_in_a_folder_is_skipped_with_its_reason_and_nothing_hangs(tmp_path):
    make_folder(tmp_path, 4)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    (tmp_path / "link.jpg").symlink_to(fifo)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock.png"))
        folder = ImageFolder(tmp_path)
        assert {"pipe.png", "link.jpg", "sock.png"} <= set(folder.paths)
        s = tiny_session()
        for workers in (0, 2):  # in the caller's thread and in the loading threads
            result = finishes(lambda w=workers: mine(s, folder, ["act2"], k=3, workers=w,
                                                     progress=False), fifos=[fifo])
            assert result.n_images == 4 and result.n_skipped == 3
            reasons = {name: why for _, name, why in result.skipped}
            assert "is a named pipe (FIFO), not a regular file" in reasons["pipe.png"]
            assert "symbolic link to a named pipe" in reasons["link.jpg"]
            assert "is a socket, not a regular file" in reasons["sock.png"]
        # a list of paths is fingerprinted without reading the FIFO
        listed = ImageList([tmp_path / "img01.png", fifo])
        assert finishes(listed.fingerprint, 20, fifos=[fifo])
        with pytest.raises(DataError, match="neither a folder nor a regular file"):
            as_source(fifo)


@pytest.mark.skipif(not HAS_FIFO, reason="no FIFOs on this platform")
def test_cli_mine_skips_a_fifo(tmp_path):
    data = tmp_path / "data"
    make_folder(data, 3)
    os.mkfifo(data / "pipe.png")
    out = tmp_path / "top.pt"
    try:
        proc = cli("mine", data, *CLI_MODEL, "--out", out, timeout=120)
    finally:  # should the command hang in open(), let it go on
        with contextlib.suppress(OSError):
            os.close(os.open(data / "pipe.png", os.O_WRONLY | os.O_NONBLOCK))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 images mined, 1 unreadable item(s) skipped (e.g. pipe.png: " in proc.stderr
    assert "named pipe" in proc.stderr
    assert load_result(out).n_images == 3


# ============================================================================ 3. architecture key

class StrideNet(nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=stride, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x):
        return self.head(self.act(self.conv(x)))


def test_a_redefined_model_with_the_same_weights_misses_the_cache(tmp_path):
    torch.manual_seed(0)
    first = StrideNet(1)
    second = StrideNet(2)
    second.load_state_dict(first.state_dict())  # same weights, stride 1 -> 2
    pre = Preprocessing(size=(16, 16), resize=None)
    images = random_images(6)
    kw = dict(k=3, progress=False, cache_dir=tmp_path, workers=0)
    a = Session(first, preprocessing=pre)
    res_a = mine(a, images, ["act"], **kw)
    b = Session(second, preprocessing=pre)
    assert architecture_digest(first) != architecture_digest(second)
    assert model_id(first) != model_id(second)
    sizes = count_forwards(b)
    res_b = mine(b, images, ["act"], **kw)
    assert sizes, "the first model's cached result was used for the redefined one"
    assert res_a["act"].shape == (4, 16, 16) and res_b["act"].shape == (4, 8, 8)
    assert res_b.model != res_a.model
    # the same architecture and weights still hit the cache
    rebuilt = StrideNet(2)
    rebuilt.load_state_dict(first.state_dict())
    again = Session(rebuilt, preprocessing=pre)
    sizes = count_forwards(again)
    assert_same_result(mine(again, images, ["act"], **kw), res_b)
    assert sizes == []


_NET_SOURCE = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return {body}
"""


def test_architecture_digest_covers_forward_code_and_hyper_parameters():
    def build(body: str) -> nn.Module:
        namespace: dict = {}
        exec(_NET_SOURCE.format(body=body), namespace)  # the same class name, another forward
        torch.manual_seed(0)
        return namespace["Net"]()

    relu, pooled = build("self.conv(x).relu()"), build("torch.max_pool2d(self.conv(x), 2)")
    assert weights_equal(relu, pooled)
    assert architecture_digest(relu) != architecture_digest(pooled)
    assert architecture_digest(relu) == architecture_digest(build("self.conv(x).relu()"))
    model = build("self.conv(x).relu()")
    before = architecture_digest(model)
    model.train(False)  # the training flag is not architecture
    assert architecture_digest(model) == before
    model.conv.padding = (2, 2)  # a hyper-parameter changed in place
    assert architecture_digest(model) != before


def weights_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ============================================================================ 4. unusable folders

def test_cache_dir_that_is_a_file_fails_before_any_work(tmp_path):
    s = tiny_session()
    sizes = count_forwards(s)
    path = tmp_path / "cache"
    path.write_text("I am a file")
    with pytest.raises(StorageError, match="is a file, not a folder") as info:
        mine(s, random_images(4), ["act2"], cache_dir=path, progress=False)
    assert str(path) in str(info.value) and isinstance(info.value, ZFError)
    with pytest.raises(StorageError, match="a part of the path is a file"):
        mine_job(s, random_images(4), ["act2"], cache_dir=path / "sub")
    assert sizes == [] and path.read_text() == "I am a file"


def test_full_disk_is_a_clear_error_before_the_run_and_a_warning_during_it(tmp_path,
                                                                          monkeypatch):
    s = tiny_session()
    images = random_images(8)
    clean = mine(s, images, ["act2"], k=3, batch_size=2, progress=False, workers=0)
    real_write = store._write

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store, "_write", full)
    sizes = count_forwards(s)
    with pytest.raises(StorageError, match="no space left on the device") as info:
        mine(s, images, ["act2"], k=3, cache_dir=tmp_path / "c", progress=False)
    assert str(tmp_path / "c") in str(info.value) and sizes == []
    # the disk fills up after the check: the run goes on, warns, and returns its result
    calls = [0]

    def fills_up(fd, data):
        calls[0] += 1
        if calls[0] > 1:  # the probe passes, every later write fails
            full(fd, data)
        real_write(fd, data)

    monkeypatch.setattr(store, "_write", fills_up)
    with pytest.warns(UserWarning) as caught:
        result = mine(s, images, ["act2"], k=3, batch_size=2, cache_dir=tmp_path / "c",
                      checkpoint_every=0, progress=False, workers=0)
    texts = [str(w.message) for w in caught]
    assert any("mining goes on without a checkpoint" in t and "no space left" in t for t in texts)
    assert any("the result is returned but not cached" in t for t in texts)
    assert sum("without a checkpoint" in t for t in texts) == 1  # said once, not per batch
    assert_same_result(result, clean)
    assert not list((tmp_path / "c").glob("*.tmp"))  # no half-written file left
    monkeypatch.setattr(store, "_write", full)
    with pytest.raises(StorageError, match="no space left"):  # a result file too
        result.save(tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_cli_out_that_is_a_folder_or_cannot_be_written_fails_before_mining(tmp_path, capsys):
    data = tmp_path / "data"
    make_folder(data, 3)
    (tmp_path / "outdir").mkdir()
    (tmp_path / "afile").write_text("x")
    for out, needle in ((tmp_path / "outdir", "it is a folder, not a file"),
                        (tmp_path / "afile" / "top.pt", "is a file, not a folder")):
        assert main(["mine", str(data), "--model", "no-such-model", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err and str(out) in err, err
        # "--model no-such-model" would fail later: the output is checked first, before any work


def _namespace_tools() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c",
                            "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d"
                            " && rmdir $d"], capture_output=True, timeout=30)
    return probe.returncode == 0


STORAGE_CASES = textwrap.dedent("""
    import contextlib, io, json, sys
    from zfwidgets.cli import main

    data, base, model = sys.argv[1], sys.argv[2], sys.argv[3:]
    cases = {
        "full cache": ["--cache-dir", f"{base}/full/cache", "--out", f"{base}/ok.pt"],
        "full out": ["--out", f"{base}/full/top.pt"],
        "read-only cache": ["--cache-dir", f"{base}/ro/cache", "--out", f"{base}/ok.pt"],
        "read-only out": ["--out", f"{base}/ro/top.pt"],
    }
    for case, extra in cases.items():
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["mine", data, *model, *extra])
        print(json.dumps({"case": case, "rc": rc, "err": err.getvalue()}), flush=True)
""")


@pytest.mark.skipif(not _namespace_tools(), reason="needs unshare and tmpfs mounts (Linux)")
def test_cli_on_a_really_full_and_a_read_only_file_system(tmp_path):
    """Real kernel errors, no monkeypatching: a 64 KiB tmpfs filled up, and a read-only tmpfs,
    mounted in a private mount namespace (nothing changes outside the subprocess)."""
    data = tmp_path / "data"
    make_folder(data, 3)
    base = tmp_path / "mnt"
    (base / "full").mkdir(parents=True)
    (base / "ro").mkdir()
    script = tmp_path / "cases.py"
    script.write_text(STORAGE_CASES)
    shell = (f"mount -t tmpfs -o size=64k tmpfs {base}/full && "
             f"(dd if=/dev/zero of={base}/full/filler bs=4k 2>/dev/null; true) && "
             f"mount -t tmpfs -o ro,size=64k tmpfs {base}/ro && "
             f"exec {sys.executable} {script} {data} {base} " + " ".join(CLI_MODEL))
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", shell], cwd=REPO, capture_output=True,
                          text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["case"]: r for r in map(json.loads, proc.stdout.splitlines())}
    expect = {"full cache": (f"{base}/full/cache", "no space left on the device"),
              "full out": (f"{base}/full/top.pt", "no space left on the device"),
              "read-only cache": (f"{base}/ro/cache", "the file system is read-only"),
              "read-only out": (f"{base}/ro/top.pt", "the file system is read-only")}
    for case, (path, problem) in expect.items():
        r = results[case]
        assert r["rc"] == 2, (case, r)
        assert r["err"].count("\n") == 1 and path in r["err"] and problem in r["err"], (case, r)
        assert "images mined" not in r["err"] and "Traceback" not in r["err"]


def _without_root() -> list[str] | None:
    """A command prefix that runs without the power to ignore file permissions: nothing for a
    normal user; for root, a user namespace where it is uid 1000 without capabilities (still
    the owner of its files, so it can run this Python, but bound by their mode bits)."""
    if os.name != "posix":
        return None
    if os.geteuid() != 0:
        return []
    if shutil.which("unshare") is None:
        return None
    prefix = ["unshare", "--user", "--map-user=1000", "--map-group=1000"]
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o555)
        probe = subprocess.run([*prefix, sys.executable, "-c",
                                f"open({os.path.join(d, 'x')!r}, 'w')"], capture_output=True)
        os.chmod(d, 0o755)
    return prefix if probe.returncode != 0 and b"PermissionError" in probe.stderr else None


@pytest.mark.skipif(_without_root() is None, reason="POSIX permissions that bind this user")
def test_cli_without_permission_on_cache_or_out(tmp_path):
    data = tmp_path / "data"
    make_folder(data, 3)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for extra, path in ((["--cache-dir", locked / "cache", "--out", tmp_path / "x.pt"],
                             locked / "cache"), (["--out", locked / "top.pt"], locked / "top.pt")):
            proc = subprocess.run([*_without_root(), sys.executable, "-m", "zfwidgets.cli",
                                   "mine", str(data), *CLI_MODEL, *map(str, extra)], cwd=REPO,
                                  capture_output=True, text=True, timeout=180,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
            assert proc.returncode == 2, proc.stderr[-2000:]
            assert f"'{path}': permission denied" in proc.stderr, proc.stderr
            assert "Traceback" not in proc.stderr and "images mined" not in proc.stderr
    finally:
        locked.chmod(0o755)


# ============================================================================ 5. CLI values, Ctrl-C

@pytest.mark.parametrize("args, needle", [
    (["--per-image", "abc"], "argument --per-image: expected a positive integer or 'all', "
                             "got 'abc'"),
    (["--per-image", "-2"], "argument --per-image"),
    (["--device", "bogus"], "argument --device: 'bogus' is not a device to mine on"),
    (["--device", "meta"], "argument --device: 'meta' is not a device to mine on"),
])
def test_cli_bad_values_are_argparse_errors(tmp_path, capsys, args, needle):
    with pytest.raises(SystemExit) as stop:
        main(["mine", str(tmp_path), *args])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cli_device_cuda_without_a_gpu(tmp_path, capsys):
    make_folder(tmp_path, 2)
    assert main(["mine", str(tmp_path), "--device", "cuda", "--out", str(tmp_path / "t.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA GPU is available" in err and "--device cpu" in err


INTERRUPTED_CLI = textwrap.dedent("""
    import signal
    import sys
    from pathlib import Path

    # Ctrl-C as in a terminal: a process started from one whose SIGINT is ignored (some tool in
    # a full test run leaves it so) inherits SIG_IGN, and Python then installs no
    # KeyboardInterrupt handler at start-up: the SIGINT would be lost and the run go on
    signal.signal(signal.SIGINT, signal.default_int_handler)

    import torch

    from zfwidgets.cli import main
    from zfwidgets.data.datasets import ImageFolder

    HANDSHAKE, cache, loads = int(sys.argv[1]), sys.argv[2], [0]
    original = ImageFolder.load

    def load(self, i):
        loads[0] += 1
        if i == HANDSHAKE:
            if cache == "-":
                print("ready", flush=True)
            else:
                (ckpt,) = Path(cache).glob("*.partial.pt")
                print("checkpointed", torch.load(ckpt, weights_only=True)["next"], flush=True)
            sys.stdin.read()  # wait for the SIGINT (the parent never writes)
        return original(self, i)

    ImageFolder.load = load
    try:
        code = main(sys.argv[3:])
    finally:
        print("loads", loads[0], flush=True)
    sys.exit(code)
""")


def _interrupt(script: Path, handshake: int, cache: str, args: list, expect: str):
    """Run the CLI through ``script`` until it loads image ``handshake`` (it says so and waits),
    send SIGINT as Ctrl-C in a terminal would, and return ``(exit status, stderr)``."""
    proc = subprocess.Popen([sys.executable, str(script), str(handshake), cache, *map(str, args)],
                            cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        readable, _, _ = select.select([proc.stdout], [], [], 120)
        line = proc.stdout.readline() if readable else ""
        assert line.split() == expect.split(), (line, proc.poll())
        proc.send_signal(signal.SIGINT)
        # communicate drains both pipes while it waits (a full pipe would block the child)
        _, err = proc.communicate(timeout=180)
        return proc.returncode, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()


def test_ctrl_c_during_cli_mine_says_where_it_stopped_and_a_rerun_resumes(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    make_folder(data, 10)
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED_CLI)
    base = ["mine", data, *CLI_MODEL, "--batch-size", "2", "--seed", "4",
            "--checkpoint-every", "0"]
    cached = [*base, "--cache-dir", cache]
    code, err = _interrupt(script, 6, str(cache), [*cached, "--out", tmp_path / "a.pt"],
                           "checkpointed 6")
    assert code == 130, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err == ("zfwidgets mine: interrupted after 6 of 10 images; the work done is "
                   f"checkpointed in {cache}: run the same command again to resume\n"), err
    resumed = subprocess.run([sys.executable, str(script), "-1", str(cache), *map(str, cached),
                              "--out", str(tmp_path / "b.pt")], cwd=REPO, capture_output=True,
                             text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "loads 4" in resumed.stdout  # images 6..9 only
    clean = cli(*base, "--out", tmp_path / "c.pt")  # no cache: one clean run
    assert clean.returncode == 0, clean.stderr[-2000:]
    assert_same_result(load_result(tmp_path / "b.pt"), load_result(tmp_path / "c.pt"))
    # without a cache folder the line says that nothing was kept
    code, err = _interrupt(script, 2, "-", [*base, "--out", tmp_path / "d.pt"], "ready")
    assert code == 130 and err.count("\n") == 1, err
    assert "interrupted after 2 of 10 images; nothing was kept" in err and "--cache-dir" in err


# ============================================================================ 6. argument types

def test_unit_arguments_are_checked_in_one_place():
    s = tiny_session()
    layer = "act2"
    c = s.layer_info(layer).shape[0]
    bad_channels = [None, 1.7, 2.0, True, "1", [1]]
    for channel in bad_channels:
        with pytest.raises(BadParameterError, match="channel must be an integer"):
            s.project(layer, channel)
    for channel in [1.7, True, "1"]:
        with pytest.raises(BadParameterError, match="channel must be an integer"):
            s.strongest(layer, channel)
    for position in [(1, 2, 3), (1,), (1.5, 2), ("a", 1), 5, "12"]:
        with pytest.raises(BadParameterError, match="position"):
            s.project(layer, 0, position)
    with pytest.raises(BadParameterError, match="position"):
        s.receptive_field(layer, 1.5, 2)
    for unit in [(0, 1), (0, 1, None), (0, 1, 2, 3), 3, ()]:
        with pytest.raises(BadParameterError, match="unit must be"):
            s.project_many(layer, [unit])
    with pytest.raises(OutOfRangeError):
        s.project(layer, c)
    with pytest.raises(OutOfRangeError):
        s.project(layer, 0, (0, 99))
    # integers of every kind work and mean the same unit
    ref = s.project(layer, 1, (2, 3))
    for channel, position in [(np.int64(1), (np.int32(2), 3)), (torch.tensor(1), [2, 3]),
                              (1, np.array([2, 3]))]:
        torch.testing.assert_close(s.project(layer, channel, position), ref, rtol=0, atol=0)
    torch.testing.assert_close(s.project_many(layer, [(1,), (1, None, None)]),
                               torch.stack([s.project(layer, 1)] * 2), rtol=0, atol=0)
    assert s.strongest(layer, np.int64(1))[0] == 1


# ============================================================================ 7. cache content

def test_well_formed_cache_files_with_wrong_content_are_recomputed(tmp_path):
    s = tiny_session()
    images = random_images(8)
    kw = dict(k=3, batch_size=2, progress=False, cache_dir=tmp_path, workers=0)
    first = mine(s, images, ["act2", "conv1"], **kw)
    sizes = count_forwards(s)
    (path, *_) = sorted(tmp_path.glob("topk-*.pt"))
    good = torch.load(path, weights_only=True)
    wrong = [{k: v for k, v in good.items() if k != "layer"},                 # no "layer"
             {**good, "layer": {**good["layer"], "values": torch.zeros(2, 2)}},  # shape
             {**good, "counters": "many"}]                                    # type
    for content in wrong:  # each with a valid checksum, as a faulty writer would leave it
        torch.save(store._sealed(content), path)
        with pytest.warns(UserWarning, match="unexpected content"):
            again = mine(s, images, ["act2", "conv1"], **kw)
        assert_same_result(again, first)
    assert len(sizes) == 3 * 4  # recomputed each time (4 batches), never a KeyError
    torch.save({**good, "counters": {**good["counters"], "n_images": 99}}, path)  # hand-edited
    with pytest.warns(UserWarning, match="checksum does not match"):
        assert_same_result(mine(s, images, ["act2", "conv1"], **kw), first)
    # a checkpoint with wrong content: warned, and the run starts afresh
    job = mine_job(s, images, ["conv1"], k=4, batch_size=2, workers=0, cache_dir=tmp_path,
                   checkpoint_every=1e9)
    job.step()
    job.close()
    (ckpt,) = tmp_path.glob("*.partial.pt")
    state = torch.load(ckpt, weights_only=True)
    for broken in ({**state, "next": 99}, {k: v for k, v in state.items() if k != "states"},
                   {**state, "states": {"conv1": [torch.zeros(3)] * 3}}):
        torch.save(store._sealed(broken), ckpt)
        with pytest.warns(UserWarning, match="unexpected content"):
            job = mine_job(s, images, ["conv1"], k=4, batch_size=2, workers=0, cache_dir=tmp_path,
                           checkpoint_every=1e9)
            assert job.step().done == 2  # from the start
        job.close()
        state = torch.load(ckpt, weights_only=True)


# ============================================================================ 8. batch size, resume

def test_a_resume_with_another_batch_size_is_bit_identical(tmp_path):
    s = tiny_session()
    images = random_images(14)
    clean = mine(s, images, ["conv1", "act2"], k=5, batch_size=2, progress=False, workers=0)
    job = mine_job(s, images, ["conv1", "act2"], k=5, batch_size=2, workers=0,
                   cache_dir=tmp_path, checkpoint_every=1e9)
    for _ in range(3):
        job.step()
    job.close()
    (ckpt,) = tmp_path.glob("*.partial.pt")
    saved = torch.load(ckpt, weights_only=True)
    assert saved["next"] == 6 and saved["batch_size"] == 2
    assert saved["threads"] == torch.get_num_threads()
    sizes = count_forwards(s)
    resumed = mine(s, images, ["conv1", "act2"], k=5, batch_size=3, progress=False, workers=0,
                   cache_dir=tmp_path)
    assert sizes == [2, 2, 2, 2]  # the checkpoint's batches: images 6-7, 8-9, 10-11, 12-13
    assert_same_result(resumed, clean)
    # another thread count cannot be undone: the resume says so
    for done in tmp_path.glob("topk-*.pt"):
        done.unlink()  # the finished layers: the next run resumes from the checkpoint again
    torch.save(store._sealed({**saved, "threads": saved["threads"] + 1}), ckpt)
    with pytest.warns(UserWarning, match="checkpointed with .* torch thread"):
        again = mine(s, images, ["conv1", "act2"], k=5, batch_size=2, progress=False,
                     workers=0, cache_dir=tmp_path)
    assert_same_result(again, clean, exact_values=False)


# ============================================================================ 9. usability slips

def test_upload_error_names_the_uploaded_file():
    from zfwidgets.widgets import ImageChooser

    s = tiny_session()
    chooser = ImageChooser(s)
    assert not chooser.load_file("holiday photo.jpg", b"\xff\xd8\xff\xe0 not really")
    assert chooser.errors.message.startswith("holiday photo.jpg: "), chooser.errors.message
    assert "<bytes>" not in chooser.errors.message
    assert not chooser.load_file("empty.png", b"")
    assert chooser.errors.message == "empty.png: empty data (0 bytes)"
    assert chooser.load_file("ok.png", png_bytes(20, 20)) and chooser.errors.message == ""
    assert s.image_name == "ok.png"


def test_a_folder_of_only_junk_exits_2_with_the_reasons(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes(30, 30)[:100])
    (tmp_path / "b.jpg").write_bytes(b"")
    (tmp_path / "c.png").write_bytes(bomb_png())
    (tmp_path / "README.txt").write_text("photos of my cat\n")
    out = tmp_path / "top.pt"
    proc = cli("mine", tmp_path, *CLI_MODEL, "--out", out)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"zfwidgets mine: error: no readable image in {tmp_path}: "
                                  "3 item(s) skipped: a.png: "), proc.stderr
    assert "b.jpg: " in proc.stderr and "empty" in proc.stderr and "decompression bomb" in \
        proc.stderr and "README" not in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
    # a folder holding no image file at all: the same exit, before any model is loaded
    only_text = tmp_path / "docs"
    only_text.mkdir()
    (only_text / "README.txt").write_text("nothing here\n")
    assert main(["mine", str(only_text), "--out", str(out)]) == 2


def test_non_image_files_in_a_folder_are_counted_apart_silently(tmp_path):
    names = make_folder(tmp_path, 3)
    (tmp_path / "README.txt").write_text("my photos\n")
    (tmp_path / "sub" / "labels.csv").write_text("img01,cat\n")
    (tmp_path / "noext").write_bytes(png_bytes(12, 12))  # no extension: tried, and it loads
    (tmp_path / "photo.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")  # a photo Pillow lacks
    folder = ImageFolder(tmp_path)
    assert folder.ignored == ["README.txt", "sub/labels.csv"]
    assert sorted(folder.paths) == sorted(names + ["noext", "photo.heic"])
    assert "2 non-image file(s) ignored" in repr(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # silently: no warning either
        result = mine(tiny_session(), folder, ["act2"], k=2, progress=False, workers=0)
    assert result.n_images == 4 and result.n_skipped == 1
    assert result.skipped[0][1] == "photo.heic" and "not a recognised" in result.skipped[0][2]
    # fingerprint and ids do not depend on the ignored files
    (tmp_path / "NOTES.md").write_text("more\n")
    assert ImageFolder(tmp_path).fingerprint() == folder.fingerprint()
