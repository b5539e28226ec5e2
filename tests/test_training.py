"""The small training loop behind notebooks 07 and 08, and ZFNetSmall's first-layer variants.

References: one full-batch epoch without augmentation equals a hand-written Adam step on the
same loss; the split is checked class by class; clipping against the filters' RMS.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zfwidgets.backend.experiments import (EpochRecord, TrainingRun, photo_task,
                                           stratified_split, train, train_job)
from zfwidgets.errors import BadParameterError, DataError
from zfwidgets.models import ZFNetSmall, paper_initialization
from zfwidgets.models.zfnet import SMALL_PREPROCESSING


def _toy(n=24, classes=3, seed=0, size=16):
    """Images whose class is their mean colour channel (learnable in a few epochs)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = 0.3 * torch.randn(n, 3, size, size, generator=gen)
    x[torch.arange(n), y] += 1.5
    return x, y


def _net(classes=3, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Dropout(dropout),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, classes))


# ------------------------------------------------------------------------------ ZFNetSmall


@pytest.mark.parametrize("kernel, stride, side", [(7, 2, 2), (7, 4, 1), (11, 4, 1), (5, 1, 4)])
def test_zfnet_small_first_layer_variants(kernel, stride, side):
    net = ZFNetSmall(19, kernel=kernel, stride=stride)
    conv = net.features.conv1
    assert conv.kernel_size == (kernel, kernel) and conv.stride == (stride, stride)
    assert conv.padding == (kernel // 2, kernel // 2)
    feats = net.features(torch.zeros(1, 3, 64, 64))
    assert feats.shape == (1, 64, side, side)
    assert net.classifier.fc.in_features == 64 * side * side
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 19)


def test_zfnet_small_default_is_unchanged():
    """The registry's network keeps its layers and state-dict shapes."""
    shapes = {k: tuple(v.shape) for k, v in ZFNetSmall().state_dict().items()}
    assert shapes["features.conv1.weight"] == (32, 3, 7, 7)
    assert shapes["classifier.fc.weight"] == (10, 256)


@pytest.mark.parametrize("bad", [dict(kernel=6), dict(kernel=0), dict(stride=0),
                                 dict(stride=2.0), dict(kernel=True)])
def test_zfnet_small_bad_first_layer(bad):
    with pytest.raises(BadParameterError):
        ZFNetSmall(**bad)


def test_paper_initialization():
    torch.manual_seed(0)
    net = paper_initialization(ZFNetSmall(19))
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert torch.all(m.bias == 0)
            assert abs(float(m.weight.detach().std()) - 0.01) < 0.0025, m
            assert abs(float(m.weight.detach().mean())) < 0.003
    with pytest.raises(BadParameterError):
        paper_initialization(net, std=0)


# ------------------------------------------------------------------------------ the split


def test_stratified_split_holds_out_each_class():
    labels = [0] * 9 + [1] * 3 + [2] * 2 + [3]
    train_idx, test_idx = stratified_split(labels, held_out=1 / 3, seed=4)
    assert set(train_idx.tolist()).isdisjoint(test_idx.tolist())
    assert sorted(train_idx.tolist() + test_idx.tolist()) == list(range(len(labels)))
    held = torch.tensor(labels)[test_idx].tolist()
    assert held.count(0) == 3 and held.count(1) == 1 and held.count(2) == 1
    assert held.count(3) == 0                       # a single item stays in training
    again = stratified_split(labels, held_out=1 / 3, seed=4)
    assert torch.equal(again[1], test_idx)
    other = stratified_split(labels, held_out=1 / 3, seed=5)
    assert not torch.equal(other[1], test_idx)
    for bad in (0, 1, 1.5, True):
        with pytest.raises(BadParameterError):
            stratified_split(labels, held_out=bad)


def test_photo_task_on_a_few_images():
    from zfwidgets import ImageList

    rng = torch.Generator().manual_seed(0)
    arrays = [(torch.rand(40, 50, 3, generator=rng) * 255).to(torch.uint8).numpy()
              for _ in range(6)]
    src = ImageList(arrays)
    names = [src.name(i) for i in range(len(src))]
    task = photo_task(src, label=lambda name: "a" if names.index(name) < 3 else "b",
                      held_out=0.34)
    assert task.classes == ["a", "b"] and task.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert task.x.shape == (6, 3, 64, 64)
    torch.testing.assert_close(task.x[2:3], SMALL_PREPROCESSING(src.load(2)))
    assert len(task.test) == 2 and sorted(task.y[task.test].tolist()) == [0, 1]
    assert task.chance == 0.5
    held = task.images("test")
    assert len(held) == 2 and held.name(0) == names[int(task.test[0])]
    torch.testing.assert_close(SMALL_PREPROCESSING(held.load(1)), task.x[task.test[1]][None])
    assert len(task.images("train")) == 4
    with pytest.raises(BadParameterError):
        task.images("all")
    with pytest.raises(DataError):
        photo_task(src, label=lambda name: "same")


# ------------------------------------------------------------------------------ training


def test_one_full_batch_epoch_equals_a_hand_written_adam_step():
    x, y = _toy()
    net, ref = _net(), _net()
    run = train(net, x, y, epochs=1, lr=0.01, batch_size=len(x), clip=None, flip=False,
                shift=0, progress=False)
    opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    ref.train()
    loss = F.cross_entropy(ref(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    for a, b in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert run.epochs[0].loss == pytest.approx(float(loss.detach()), rel=1e-5)
    assert run.renormalized == 0


def test_training_learns_and_measures_the_held_out_accuracy():
    x, y = _toy(n=48)
    xt, yt = _toy(n=30, seed=1)
    net = _net()
    run = train(net, x, y, held_out=(xt, yt), epochs=15, lr=0.02, batch_size=8,
                progress=False)
    assert isinstance(run, TrainingRun) and len(run.epochs) == 15
    assert run.epochs[-1].loss < 0.5 * run.epochs[0].loss
    net.eval()
    with torch.no_grad():
        manual = float((net(xt).argmax(1) == yt).float().mean())
    assert run.held_out_accuracy == pytest.approx(manual)
    assert run.held_out_accuracy > 0.8
    curve = run.curve()
    assert curve.shape == (16,) and curve[0] == run.start_accuracy
    assert run.seconds == pytest.approx(sum(e.seconds for e in run.epochs))


def test_training_is_deterministic_and_leaves_the_global_random_state():
    x, y = _toy()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = _net(dropout=0.5), _net(dropout=0.5), _net(dropout=0.5)
    torch.set_rng_state(before)
    train(a, x, y, epochs=3, seed=7, progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    train(b, x, y, epochs=3, seed=7, progress=False)
    train(c, x, y, epochs=3, seed=8, progress=False)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_snapshots_and_training_flag():
    x, y = _toy()
    net = _net().eval()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    run = train(net, x, y, epochs=4, snapshots=[0, 2, 4], progress=False)
    assert list(run.snapshots) == ["epoch 0", "epoch 2", "epoch 4"]
    for k, v in start.items():
        assert torch.equal(run.snapshots["epoch 0"][k], v)
    for k, v in net.state_dict().items():
        assert torch.equal(run.snapshots["epoch 4"][k], v)
    assert not torch.equal(run.snapshots["epoch 2"]["0.weight"], start["0.weight"])
    assert not net.training                           # the flag it had
    run.snapshots["epoch 4"]["0.weight"].zero_()      # copies, not views of the model
    assert net[0].weight.abs().sum() > 0


def test_clipping_keeps_filters_within_the_radius():
    x, y = _toy()
    net, free = _net(), _net()
    with torch.no_grad():
        for m in (net, free):
            m[0].weight.mul_(20)                       # RMS far above 0.1
    over = int((free[0].weight.detach().flatten(1).pow(2).mean(1).sqrt() > 0.1).sum())
    clipped = train(net, x, y, epochs=2, clip=0.1, progress=False)
    unclipped = train(free, x, y, epochs=2, clip=None, progress=False)
    rms = net[0].weight.detach().flatten(1).pow(2).mean(1).sqrt()
    assert float(rms.max()) <= 0.1 * (1 + 1e-5)
    assert clipped.renormalized >= over > 0
    assert unclipped.renormalized == 0
    assert float(free[0].weight.detach().flatten(1).pow(2).mean(1).sqrt().max()) > 0.1


def test_train_job_steps_once_per_epoch():
    x, y = _toy()
    job = train_job(_net(), x, y, held_out=(x, y), epochs=3)
    steps = []
    while (step := job.step()) is not None:
        steps.append(step)
    assert [s.done for s in steps] == [1, 2, 3] and all(s.total == 3 for s in steps)
    assert all(isinstance(s.partial, EpochRecord) for s in steps)
    assert "held out" in steps[-1].note
    assert job.result.epochs == [s.partial for s in steps]


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(lr=-1.0), dict(batch_size=0),
                                 dict(clip=0), dict(shift=-1), dict(snapshots=[21]),
                                 dict(snapshots=[-1]), dict(epochs=2.5), dict(lr=float("nan"))])
def test_bad_settings_raise(bad):
    x, y = _toy()
    with pytest.raises(BadParameterError):
        train_job(_net(), x, y, **bad)


def test_bad_data_raise():
    x, y = _toy()
    net = _net()
    for args in ((x[0], y), (x, y[:-1]), (x, y.float()), (x.long(), y), (x, y - 1)):
        with pytest.raises(BadParameterError):
            train_job(net, *args)
    with pytest.raises(BadParameterError, match="outputs"):
        train(net, x, y + 5, epochs=1, progress=False)
    with pytest.raises(BadParameterError):
        train_job("not a model", x, y)


# ------------------------------------------------------------------------------ the figures


def test_first_layer_figure_columns_and_aliased_bands():
    from zfwidgets import diagnose_filters
    from zfwidgets.plots.training import ALIASED_COLOR, first_layer_figure

    variants = []
    for stride in (2, 4):
        torch.manual_seed(stride)
        net = ZFNetSmall(5, stride=stride)
        variants.append((f"stride {stride}", diagnose_filters(net), net.features.conv1.weight))
    fig, axes = first_layer_figure(variants)
    assert len(axes) == 2 and len(axes[0]) == 2
    for (title, diag, _), top, bottom in zip(variants, axes[0], axes[1]):
        assert top.get_title() == title
        assert f"{diag.summary()['aliased energy']:.0%} aliased" in bottom.get_title()
        red = [p for p in bottom.patches
               if np.allclose(p.get_facecolor()[:3], matplotlib.colors.to_rgb(ALIASED_COLOR))]
        assert len(red) == int((diag.frequencies > min(diag.nyquist)).sum())
        np.testing.assert_allclose([p.get_height() for p in bottom.patches],
                                   diag.band_coverage())
    fig.canvas.draw()
    with pytest.raises(ValueError):
        first_layer_figure([])


def test_training_figure_draws_each_run():
    from zfwidgets.plots.training import training_figure

    x, y = _toy()
    runs = {"a": train(_net(), x, y, held_out=(x, y), epochs=3, progress=False),
            "b": train(_net(seed=1), x, y, held_out=(x, y), epochs=2, progress=False)}
    fig, (acc, loss) = training_figure(runs, chance=0.25)
    for line, run in zip(acc.lines, runs.values()):
        np.testing.assert_allclose(line.get_ydata(), run.curve())
    np.testing.assert_allclose(loss.lines[1].get_ydata(), [e.loss for e in runs["b"].epochs])
    assert acc.lines[-1].get_ydata()[0] == 0.25                     # the chance line
    fig.canvas.draw()
