"""Progressive occlusion (each stage exact for its grid, positions computed once), the automatic
choice of method (a timed probe, both methods exact), Krypton's approximate mode (its error
measured), and the engine details they rest on (window shapes that do not change from batch to
batch, ceil-mode pooling, multiply-add counts)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zfwidgets import Session
from zfwidgets.backend.jobs import Step
from zfwidgets.backend.occlusion import (Approximation, IncrementalMode, batches, occlude,
                                         occlusion_grid, occlusion_job, occlusion_maps,
                                         occlusion_maps_job)
from zfwidgets.backend.occlusion.approx import check_positions
from zfwidgets.backend.occlusion.choice import Chooser, MacCounter, forget_choices
from zfwidgets.backend.occlusion.handlers import _window_axis
from zfwidgets.backend.occlusion.progressive import schedule, stage_factors
from zfwidgets.errors import BadParameterError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lite0():
    return Session("efficientnet_lite0")


class SmallNet(nn.Module):
    """Conv / BN / ReLU / ceil-mode max pool / residual / global pool: the engine handles every
    op before the pool, so it has something to save."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.head = nn.Linear(16, 10)
        self.bn1.running_mean.uniform_(-0.5, 0.5)
        self.bn1.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = x + F.relu(self.conv2(x))
        return self.head(F.relu(self.conv3(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return SmallNet().eval()


def plain_reference(model, x, size, stride):
    """P(every class) ``[R, C, classes]``, one occluded copy per forward pass (gray)."""
    rows, cols = occlusion_grid(x.shape[2], x.shape[3], size, stride)
    with torch.no_grad():
        out = [torch.softmax(model(occlude(x, [(t, l)], size)), 1)[0] for t in rows for l in cols]
    return torch.stack(out).reshape(len(rows), len(cols), -1).numpy()


def assert_same_maps(a, b, atol=1e-5):
    assert a.shape == b.shape and a.stride == b.stride
    np.testing.assert_array_equal(a.rows, b.rows)
    np.testing.assert_array_equal(a.cols, b.cols)
    assert a.extent() == b.extent()
    np.testing.assert_allclose(a.prob, b.prob, atol=atol, rtol=0)
    np.testing.assert_allclose(a.top_prob, b.top_prob, atol=atol, rtol=0)
    np.testing.assert_array_equal(a.top_class, b.top_class)
    if a.features is not None:
        scale = max(1.0, float(np.abs(b.features).max()))
        np.testing.assert_allclose(a.features, b.features, atol=1e-5 * scale, rtol=1e-5)


# ----------------------------------------------------------------------------- progressive

def test_stage_schedule():
    assert stage_factors(25, 25, 8, True) == [8, 4, 2, 1]  # 4 x 4 = 16 positions first
    assert stage_factors(9, 9, 24, True) == [4, 2, 1]
    assert stage_factors(2, 2, 8, True) == [1]
    assert stage_factors(25, 25, 8, False) == [1]
    assert stage_factors(25, 25, 8, [48, 24]) == [6, 3, 1]
    for bad in ([36], [48, 32], [4], "yes"):
        with pytest.raises(BadParameterError):
            stage_factors(25, 25, 8, bad)
    order, checkpoints = schedule(25, 25, [8, 4, 2, 1])
    assert sorted(order.tolist()) == list(range(625))  # every position once
    assert checkpoints == [(16, 8), (49, 4), (169, 2), (625, 1)]
    for count, k in checkpoints:  # the first `count` positions are exactly the stage's grid
        grid = np.zeros((25, 25), bool)
        grid[::k, ::k] = True
        assert set(order[:count].tolist()) == set(np.flatnonzero(grid).tolist())


def test_every_stage_equals_a_one_shot_sweep_of_its_grid(lite0, monkeypatch):
    """Lite0 at 224 px, 32 px occluder at stride 24 (81 positions): stages at strides 96,
    48 and 24; each exactly the one-shot sweep of its own grid; positions computed once."""
    seen = []
    real = batches.run_batch

    def counting(plan, corners, *rest):
        seen.extend(corners)
        return real(plan, corners, *rest)

    monkeypatch.setattr(batches, "run_batch", counting)
    job = occlusion_job(lite0, 32, 24, method="incremental", progressive=True, batch_size=16)
    steps = []
    while (step := job.step()) is not None:
        steps.append(step)
    final = job.result
    monkeypatch.setattr(batches, "run_batch", real)
    partials = [s.partial for s in steps if s.partial is not None]
    assert [p.stride for p in partials] == [96, 48] and all(p.partial for p in partials)
    assert all(p.method == "incremental" and p.method_note == final.method_note
               for p in partials)
    assert not final.partial and final.stride == 24 and final.shape == (9, 9)
    assert all(isinstance(s, Step) and s.total == 81 for s in steps)
    assert [s.done for s in steps] == sorted(s.done for s in steps) and steps[-1].done == 81
    # reuse: every position of the final grid computed exactly once, nothing else
    grid = {(int(t), int(l)) for t in final.rows for l in final.cols}
    assert len(seen) == 81 == final.positions and set(seen) == grid
    # stage 1 (3 x 3) arrives after the first batch of 16, before most of the work
    assert steps[0].partial is not None and steps[0].done == 16
    for stage in partials + [final]:
        one_shot = lite0.occlusion(32, stage.stride, method="incremental", progress=False)
        plain = lite0.occlusion(32, stage.stride, method="plain", progress=False)
        assert_same_maps(stage, one_shot, atol=1e-6)
        assert_same_maps(stage, plain)
        assert (stage.layer, stage.channel, stage.targets) == \
            (one_shot.layer, one_shot.channel, one_shot.targets)


def test_progressive_steps_with_the_default_method(small):
    forget_choices()
    torch.manual_seed(1)
    x = torch.randn(1, 3, 48, 48)
    job = occlusion_maps_job(small, x, 8, 4, progressive=(16, 8))
    partials = []
    while (step := job.step()) is not None:
        if step.partial is not None:
            partials.append(step.partial)
    assert [p.stride for p in partials] == [16, 8]
    assert {p.method for p in partials} <= {"plain", "incremental"}
    ref = plain_reference(small, x, 8, 4)
    np.testing.assert_allclose(job.result.prob, ref[..., job.result.target], atol=1e-5)
    np.testing.assert_allclose(partials[0].prob, ref[::4, ::4, job.result.target], atol=1e-5)


# ----------------------------------------------------------------------------- auto

def test_auto_probes_both_methods_switches_mid_sweep_and_stays_exact(small):
    forget_choices()
    torch.manual_seed(2)
    x = torch.randn(1, 3, 40, 40)
    r = occlusion_maps(small, x, 6, 2)  # 18 x 18 positions: enough to time both
    assert r.method in ("incremental", "plain")
    assert "timed probe" in r.method_note and "multiply-adds" in r.method_note
    # the probe: the engine on 96 positions (two batches of 16, one of its own 64), plain
    # passes on 64 (its own weights' layout and the channels-last twin's, 32 each): the loser
    # computed exactly its probe's share
    assert "64 positions plain" in r.method_note or "96 positions incremental" in r.method_note
    ref = plain_reference(small, x, 6, 2)
    np.testing.assert_allclose(r.prob, ref[..., r.target], atol=1e-5, rtol=1e-4)
    np.testing.assert_array_equal(r.top_class, ref.argmax(-1))
    again = occlusion_maps(small, x, 6, 2, fill=0.5)  # the next sweep probes nothing
    assert again.method == r.method and "remembered" in again.method_note
    short = occlusion_maps(small, x, 20, 10)  # 3 x 3: too short to time, a remembered choice
    assert short.method == "plain" and "too few" in short.method_note  # is for this size only
    forget_choices()


def test_the_choice_follows_the_probe_times(small):
    x = torch.zeros(1, 3, 40, 40)
    batch = {"plain": 16, "incremental": 16}
    for plain_s, inc_s, expected in [(1.6, 0.5, "incremental"), (0.4, 0.9, "plain"),
                                     (1.0, 0.97, "plain")]:  # a close call: plain
        forget_choices()
        chooser = Chooser(small, x, 6, 2, "auto", batch, 324, None, full_macs=1000)
        # each method's timed batch follows an untimed one of its own
        assert chooser.probing and chooser.next(324) == ("incremental", 16)
        chooser.record("incremental", 16, 5.0)  # first batches: one-time costs, not timed
        assert chooser.next(308) == ("incremental", 16)
        chooser.record("incremental", 16, inc_s + 0.1, macs_saved=8000,
                       setup_seconds=0.1)  # the unoccluded values: not counted
        assert chooser.next(292) == ("plain", 16)
        chooser.record("plain", 16, 5.0)
        assert chooser.probing and chooser.next(276) == ("plain", 16)
        chooser.record("plain", 16, plain_s)
        assert chooser.method == expected and not chooser.probing
        assert chooser.next(260) == (expected, batch[expected])
        assert f"{inc_s / 16 * 1e3:.1f} ms" in chooser.reason and "50%" in chooser.reason
        later = Chooser(small, x, 6, 2, "auto", batch, 324, None)
        assert later.method == expected and "remembered" in later.reason
        assert Chooser(small, x, 6, 4, "auto", batch, 324, None).probing  # other stride
    fixed = Chooser(small, x, 6, 2, "plain", batch, 324, None)
    assert fixed.method == "plain" and fixed.reason == "plain, as asked"
    blocked = Chooser(small, x, 6, 2, "auto", batch, 324, "the model carries hooks")
    assert blocked.method == "plain" and "hooks" in blocked.reason
    forget_choices()


def test_the_engine_is_timed_at_its_own_batch_too_and_keeps_the_faster(small):
    """Where the sweep has the positions, the probe times the engine at its own (larger) batch
    as well: it goes on at whichever of its sizes was faster per position (larger batches
    amortize its per-call work; dense fallbacks make them slower), judged against plain passes
    at that speed; remembered. A sweep too short for it times the engine at the probe's
    batch only."""
    x = torch.zeros(1, 3, 40, 40)
    batch = {"plain": 16, "incremental": 48}
    for big_s, method, kept in [(1.2, "incremental", 48),   # 25 ms a position at 48: faster
                                (3.5, "incremental", 16),   # 73 ms at 48: back to 16
                                (6.0, "incremental", 16)]:
        forget_choices()
        chooser = Chooser(small, x, 6, 2, "auto", batch, 324, None, full_macs=1000)
        for expect, seconds in [(("incremental", 16), 5.0), (("incremental", 16), 1.0),
                                (("incremental", 48), big_s), (("plain", 16), 5.0),
                                (("plain", 16), 3.2)]:        # engine 62.5 ms at 16, plain 200
            assert chooser.next(324) == expect
            chooser.record(*expect, seconds)
        assert chooser.method == method and chooser.next(200) == (method, kept)
        assert "batches of 48" in chooser.reason
        later = Chooser(small, x, 6, 2, "auto", batch, 324, None)
        assert later.next(324) == (method, kept) and "remembered" in later.reason
    forget_choices()
    short = Chooser(small, x, 6, 2, "auto", batch, 100, None)  # 4 x 16 + 48 > 100
    seen = []
    while short.probing:
        seen.append(short.next(100))
        short.record(*seen[-1], 1.0)
    assert seen == [("incremental", 16)] * 2 + [("plain", 16)] * 2
    forget_choices()


def test_mac_counter_and_engine_savings(small):
    x = torch.randn(1, 3, 40, 40)
    with torch.inference_mode(), MacCounter() as counter:
        small(x)
    expected = 40 * 40 * 8 * 27 + 20 * 20 * 8 * 72 + 10 * 10 * 16 * 72 + 10 * 16
    assert counter.macs == expected
    mode = IncrementalMode()
    with torch.inference_mode(), mode:
        mode.resolve(small(mode.inputs(x, np.array([0, 20]), np.array([30, 5]), 6,
                                       torch.zeros(1, 3, 1, 1))))
    convs = 40 * 40 * 8 * 27 + 20 * 20 * 8 * 72 + 10 * 10 * 16 * 72
    assert 0 < mode.macs_computed < 2 * convs
    assert mode.macs_computed + mode.macs_saved == 2 * convs


# ----------------------------------------------------------------------------- approximate

def test_approximate_without_approximations_is_exact(small):
    torch.manual_seed(3)
    x = torch.randn(1, 3, 40, 40)
    exact = occlusion_maps(small, x, 8, 2, method="plain")
    r = occlusion_maps(small, x, 8, 2, approximation=Approximation(tau=1, drill_down=1, check=10))
    assert r.method == "approximate" and r.approx_checked == 10
    np.testing.assert_allclose(r.prob, exact.prob, atol=1e-5)
    assert r.approx_error < 1e-5 and r.approx_mean_error <= r.approx_error
    assert r.positions == exact.prob.size + 10  # every position, and the exact checks


def test_approximate_reports_its_measured_error(lite0):
    size, stride = 32, 16
    exact = lite0.occlusion(size, stride, method="plain", progress=False)
    approx = Approximation(tau=0.5, drill_down=0.25, check=12, seed=5)
    job = occlusion_job(lite0, size, stride, approximation=approx)
    coarse = None
    while (step := job.step()) is not None:
        coarse = coarse or step.partial
    r = job.result
    assert r.method == "approximate" and "tau=0.5" in r.method_note
    assert coarse is not None and coarse.partial and coarse.stride == 32  # k * 16 <= 32
    assert coarse.method == "approximate" and coarse.approx_error is None
    n = exact.prob.size
    coarse_n = coarse.prob.size
    assert r.positions == coarse_n + int(np.ceil(0.25 * (n - coarse_n))) + 12 < n
    checks = check_positions(n, 12, 5)
    diff = np.abs(r.prob.reshape(-1)[checks] - exact.prob.reshape(-1)[checks])
    assert r.approx_error == pytest.approx(float(diff.max()), abs=2e-6)
    assert r.approx_mean_error == pytest.approx(float(diff.mean()), abs=2e-6)
    assert r.approx_error > 1e-4  # it is an approximation: not exact on this model
    assert np.abs(r.prob - exact.prob).max() < 0.5
    # the default is exact
    assert lite0.occlusion(112, 112, progress=False).approx_error is None
    with pytest.raises(BadParameterError):
        lite0.occlusion(size, stride, method="plain", approximation=approx, progress=False)
    for bad in (dict(tau=0), dict(tau=1.5), dict(drill_down=-0.1), dict(check=-1)):
        with pytest.raises(BadParameterError):
            Approximation(**bad)


# ----------------------------------------------------------------------------- engine details

@pytest.mark.parametrize("k,s,p,d", [(3, 2, 1, 1), (5, 1, 2, 1), (3, 2, 0, 1), (3, 1, 2, 2),
                                     (7, 2, 3, 1), (1, 1, 0, 1)])
def test_window_shapes_do_not_depend_on_the_batch(k, s, p, d):
    """One output window length for any corners, and it covers every dirty output."""
    rng = np.random.default_rng(k * 10 + s)
    n_in, h = 57, 9
    n_out = (n_in + 2 * p - d * (k - 1) - 1) // s + 1
    lengths = set()
    for _ in range(20):
        t = rng.integers(0, n_in - h + 1, size=5)
        start, out_len, in_start, in_len = _window_axis(t, h, n_out, k, s, p, d)
        lengths.add(out_len)
        for tt, st in zip(t, start):
            dirty = [r for r in range(n_out)
                     if any(tt <= r * s - p + d * j < tt + h for j in range(k))]
            assert st <= min(dirty) and max(dirty) < st + out_len <= n_out
        assert in_len == (out_len - 1) * s + d * (k - 1) + 1
        np.testing.assert_array_equal(in_start, start * s - p)
    assert len(lengths) == 1


def test_ceil_mode_max_pool_runs_windowed(small):
    for side in (23, 24, 31):
        torch.manual_seed(side)
        x = torch.randn(1, 3, side, side)
        tops, lefts = np.array([0, side - 5, 7]), np.array([side - 5, 0, 9])
        mode = IncrementalMode()
        with torch.inference_mode(), mode:
            out = mode.resolve(small(mode.inputs(x, tops, lefts, 5, torch.zeros(1, 3, 1, 1))))
        assert mode.stats.get("max_pool2d") == 1 and "max_pool2d" not in mode.unhandled
        with torch.no_grad():
            ref = small(occlude(x, list(zip(tops, lefts)), 5))
        assert torch.allclose(out, ref, atol=1e-5)


class SENet(nn.Module):
    """A squeeze-and-excitation block: every map scaled by factors from the whole image."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 8)
        self.convs = nn.ModuleList(nn.Conv2d(8, 8, 3, padding=1) for _ in range(6))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = x * torch.sigmoid(self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1)))[:, :, None, None]
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.head(x.mean((2, 3)))


def test_batches_of_one_image_stay_exact_and_the_memos_bounded():
    """In a batch of one image the excitation scale looks like a broadcast constant: values
    computed with it are exact but new every batch; the engine must not keep them all."""
    torch.manual_seed(6)
    net, x = SENet().eval(), torch.randn(1, 3, 24, 24)
    r = occlusion_maps(net, x, 6, 3, method="incremental", batch_size=1)
    ref = plain_reference(net, x, 6, 3)
    np.testing.assert_allclose(r.prob, ref[..., r.target], atol=1e-6)
    mode, sizes = IncrementalMode(), []
    for i in range(30):
        corner = (i % 18, (5 * i) % 18)
        with torch.inference_mode(), mode:
            out = mode.resolve(net(mode.inputs(x, np.array([corner[0]]), np.array([corner[1]]),
                                               6, torch.zeros(1, 3, 1, 1))))
        with torch.no_grad():
            assert torch.allclose(out, net(occlude(x, [corner], 6)), atol=1e-6)
        sizes.append(len(mode._memo))
    growth = sizes[1] - sizes[0]
    assert growth >= 10  # every batch memoizes its own values after the scale...
    assert max(sizes) <= 2 * sizes[0] + 64 + growth  # ...and the engine forgets them


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_occluded_copies_never_write_into_the_input(small, fmt):
    x = torch.randn(1, 3, 20, 20)
    before = x.clone()
    for corners in ([(0, 0)], [(0, 0), (5, 7)]):
        out = occlude(x, corners, 6, 0.5, memory_format=fmt)
        assert torch.equal(x, before) and out.is_contiguous(memory_format=fmt)
        assert all((out[i, :, t:t + 6, l:l + 6] == 0.5).all() for i, (t, l) in enumerate(corners))
        assert out.data_ptr() != x.data_ptr()
    occlusion_maps(small, x, 20, 20, method="plain")  # one position: a batch of one copy
    assert torch.equal(x, before)
