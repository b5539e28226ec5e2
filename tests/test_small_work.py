"""The thread count of one image's passes (zfwidgets.backend.small_work): measured per model where
OpenMP threads are passive, left alone elsewhere, and used by every pass over one image."""

from __future__ import annotations

import importlib
import time

import pytest
import torch
from torch import nn

import zfwidgets as zf
from zfwidgets.backend.explain.methods import class_backward
from zfwidgets.backend.experiments.ascent import ascent_job
from zfwidgets.backend.layers import record_forward

small_work = importlib.import_module("zfwidgets.backend.small_work")


class Timed(nn.Module):
    """A model whose forward takes ``one`` seconds on one torch thread and ``many`` on more;
    it records the thread count, the training flag and the grad mode of every call."""

    def __init__(self, one: float, many: float):
        super().__init__()
        self.one, self.many = one, many
        self.bn = nn.BatchNorm2d(3)
        self.calls = []

    def forward(self, x):
        self.calls.append((torch.get_num_threads(), self.bn.training, torch.is_grad_enabled()))
        time.sleep(self.one if torch.get_num_threads() == 1 else self.many)
        return self.bn(x).mean((2, 3))


@pytest.fixture
def passive(monkeypatch):
    """Two torch threads under a passive OpenMP policy, no choice remembered."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.setattr(small_work, "_choices", type(small_work._choices)())
    with zf.using_threads(2):
        yield


@pytest.mark.parametrize("one, many, chosen", [(0.002, 0.02, 1), (0.02, 0.002, 2)])
def test_the_faster_count_is_measured_once_per_model_and_amount_of_work(passive, one, many,
                                                                         chosen):
    model, x = Timed(one, many), torch.rand(1, 3, 8, 8)
    assert small_work.small_work_count(model, x) == chosen
    timed = len(model.calls)
    assert timed == 1 + 2 * small_work.ROUNDS          # a warm-up, then both counts in turn
    assert [c[0] for c in model.calls[1:]] == [1, 2] * small_work.ROUNDS
    assert small_work.small_work_count(model, x) == chosen
    # as many pixels to the nearest power of two (64 and 63): the same work, remembered
    assert small_work.small_work_count(model, torch.rand(1, 3, 9, 7)) == chosen
    assert len(model.calls) == timed
    # more work is measured anew where one thread won (it might want more) and follows where
    # every thread won (more work wants them too) ...
    anew = timed if chosen == 1 else 0
    assert small_work.small_work_count(model, torch.rand(1, 3, 16, 16)) == chosen
    assert len(model.calls) == timed + anew
    small_work.small_work_count(model, torch.rand(4, 3, 8, 8))
    assert len(model.calls) == timed + anew            # ... once: four 8x8 items are 16x16's
    with small_work.small_work_threads(model, x):
        assert torch.get_num_threads() == chosen
    assert torch.get_num_threads() == 2


class Batched(nn.Module):
    """A forward of ``n`` items that takes ``n * 4 ms`` on one thread and ``n * 1 ms + 12 ms``
    on two (a fixed cost for waking the second thread in every pass), like Lite0's."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x):
        n = x.shape[0]
        self.calls.append((n, torch.get_num_threads()))
        time.sleep(n * 0.004 if torch.get_num_threads() == 1 else n * 0.001 + 0.012)
        return x.mean((1, 2, 3))


@pytest.mark.parametrize("one, many, chosen", [(0.002, 0.02, 1), (0.02, 0.002, 2)])
def test_what_the_measured_choices_imply_is_not_timed(passive, one, many, chosen):
    """Less work than one that ran faster on one thread runs on one untimed (a click's crop
    after the session's image), more work than one that ran faster on all runs on all."""
    model = Timed(one, many)
    measured = torch.rand(1, 3, 16, 16)
    implied, open_ = (torch.rand(1, 3, 8, 8), torch.rand(1, 3, 32, 32)) if chosen == 1 else \
        (torch.rand(1, 3, 32, 32), torch.rand(1, 3, 8, 8))
    assert small_work.small_work_count(model, measured) == chosen
    timed = len(model.calls)
    assert small_work.small_work_count(model, implied) == chosen
    assert len(model.calls) == timed                   # implied: not timed
    small_work.small_work_count(model, open_)
    assert len(model.calls) == 2 * timed               # the other side is measured


def test_the_count_follows_the_work_of_the_pass(passive):
    """One item of a model of small operations runs on one thread, many items on both: the
    calibration times the pass's own batch, not its first item."""
    model = Batched()
    assert small_work.small_work_count(model, torch.rand(1, 3, 8, 8)) == 1
    assert small_work.small_work_count(model, torch.rand(9, 3, 8, 8)) == 2
    assert {n for n, _ in model.calls} == {1, 9}


def test_the_calibration_leaves_the_model_as_it_was(passive):
    model = Timed(0.001, 0.003).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small_work.small_work_count(model, torch.rand(2, 3, 8, 8) * 5)
    assert model.calls and all(not training and not grad for _, training, grad in model.calls)
    assert model.training and model.bn.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)   # running stats untouched
    assert all(p.grad is None for p in model.parameters())


def test_a_slow_first_forward_keeps_every_thread_without_timing_more(passive):
    model = Timed(0.001, small_work.CALIBRATION_LIMIT_S + 0.05)
    assert small_work.small_work_count(model, torch.rand(1, 3, 8, 8)) == 2
    assert len(model.calls) == 1


def test_a_model_that_fails_is_left_to_fail_in_the_real_pass(passive):
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("shape mismatch")

    assert small_work.small_work_count(Broken(), torch.rand(1, 3, 8, 8)) == 2


@pytest.mark.parametrize("policy, spin, threads", [("ACTIVE", None, 2), ("PASSIVE", "1000", 2),
                                                   ("PASSIVE", None, 1)])
def test_nothing_is_timed_where_threads_spin_or_one_thread_runs(monkeypatch, policy, spin,
                                                                 threads):
    monkeypatch.setenv("OMP_WAIT_POLICY", policy)
    if spin is None:
        monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    else:
        monkeypatch.setenv("GOMP_SPINCOUNT", spin)
    model = Timed(0.001, 0.01)
    with zf.using_threads(threads):
        assert small_work.small_work_count(model, torch.rand(1, 3, 8, 8)) == threads
    assert model.calls == []


@pytest.fixture
def session_on(passive, monkeypatch):
    """A small model's session whose measured count is ``count`` (the calibration replaced),
    and the thread counts its model saw."""
    def make(count):
        monkeypatch.setattr(small_work, "_calibrate", lambda model, x, threads: count)
        torch.manual_seed(0)
        session = zf.Session("zfnet_small", weights=None)
        seen = []
        session.model.register_forward_pre_hook(lambda m, a: seen.append(torch.get_num_threads()))
        return session, seen
    return make


@pytest.mark.parametrize("count", [1, 2])
def test_every_pass_over_one_image_runs_on_the_measured_count(session_on, count):
    """The session's forward, a projection, a class map's backward and each ascent step run on
    the count chosen for the model; the caller's count is back after each."""
    session, seen = session_on(count)
    layer = session.layers[len(session.layers) // 2]
    passes = {
        "record_forward": lambda: record_forward(session.model, session.input_tensor),
        "project": lambda: session.project(layer, 1, (1, 1), rule="deconvnet"),
        "class_backward": lambda: class_backward(session.model, session.input_tensor, [3]),
        "ascent step": lambda: ascent_job(session, steps=2).step(),
    }
    for name, run in passes.items():
        seen.clear()
        run()
        assert seen and set(seen) == {count}, name
        assert torch.get_num_threads() == 2, name


def test_a_pass_gives_the_same_result_on_either_count(passive, monkeypatch):
    torch.manual_seed(0)
    session = zf.Session("zfnet_small", weights=None)
    layer = session.layers[len(session.layers) // 2]
    got = {}
    for count in (1, 2):
        small_work._choices.clear()
        monkeypatch.setattr(small_work, "_calibrate", lambda model, x, threads, c=count: c)
        session._projections.clear()
        got[count] = (session.project(layer, 1, (1, 1), rule="deconvnet"),
                      class_backward(session.model, session.input_tensor, [3]).input_grad)
    for a, b in zip(got[1], got[2]):
        assert a.abs().max() > 0 and torch.allclose(a, b, atol=1e-6)


def test_a_projection_is_measured_on_its_own_batch_of_crops(passive, monkeypatch):
    """Nine units of one image go down as one batch of nine crops: that batch is what the
    count is measured on (not the one image, whose single item would want one thread)."""
    shapes = []

    def calibrate(model, x, threads):   # one thread for the session's image, like Lite0's
        shapes.append(tuple(x.shape))
        return 1 if x.shape[0] == 1 else threads

    monkeypatch.setattr(small_work, "_calibrate", calibrate)
    torch.manual_seed(0)
    session = zf.Session("zfnet_small", weights=None)
    layer = "features.relu2"                   # a 27 px receptive field in a 64 px image
    h, w = session.activation(layer).shape[-2:]
    units = [(c, h // 2, w // 2) for c in range(9)]
    shapes.clear()
    session.project_many(layer, units, rule="deconvnet")
    assert len(shapes) == 1 and shapes[0][0] == 9
    assert shapes[0][-2:] < tuple(session.input_tensor.shape[-2:])   # crops, not the image
