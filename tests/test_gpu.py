"""Every backend function and the explorer with the model on a CUDA device (issue 14, item 6).

Each test runs the same call on a CPU session and on a CUDA one and compares the results (float
reductions differ in order across devices: tolerances, not equality). Skipped, with the reason,
where torch sees no CUDA device (the development and CI machines); run them with
``pytest -m gpu`` where there is one.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("module://ipympl.backend_nbagg")

import zfwidgets as zf  # noqa: E402
from zfwidgets import Session, load_sample  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="no CUDA device (torch.cuda.is_available() is False)")]

LAYER = "blocks.7.depthwise.act"
TOP = "head.act"


@pytest.fixture(scope="module")
def pair():
    """The same model and photo on the CPU and on the GPU."""
    image = load_sample("chelsea")
    return (Session("efficientnet_lite0", image, device="cpu"),
            Session("efficientnet_lite0", image, device="cuda"))


def close(a, b, atol=1e-4, rtol=1e-3):
    a = a.detach().cpu().float() if isinstance(a, torch.Tensor) else torch.as_tensor(a).float()
    b = b.detach().cpu().float() if isinstance(b, torch.Tensor) else torch.as_tensor(b).float()
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def cosine(a, b) -> float:
    a, b = a.detach().cpu().double().flatten(), b.detach().cpu().double().flatten()
    return float(a @ b / (a.norm() * b.norm()).clamp(min=1e-30))


def test_the_session_runs_on_the_gpu_and_predicts_as_on_the_cpu(pair):
    cpu, gpu = pair
    assert gpu.device.type == "cuda" and gpu.input_tensor.device.type == "cuda"
    close(gpu.probabilities(), cpu.probabilities(), atol=1e-4)
    assert gpu.predict(1)[0][0] == cpu.predict(1)[0][0]
    close(gpu.activation(LAYER), cpu.activation(LAYER), atol=1e-3)
    assert gpu.layers == cpu.layers
    assert gpu.receptive_field(LAYER, 3, 4) == cpu.receptive_field(LAYER, 3, 4)


@pytest.mark.parametrize("rule", ["gradient", "guided", "deconvnet"])
def test_projections_on_the_gpu_equal_the_cpu_s(pair, rule):
    cpu, gpu = pair
    c, y, x, _ = cpu.strongest(LAYER, 7)
    for units in ([(7, y, x)], [(7,)], [(c, y, x) for c in range(9)]):
        a, b = gpu.project_many(LAYER, units, rule), cpu.project_many(LAYER, units, rule)
        assert a.device.type == "cuda"
        for pa, pb in zip(a, b):
            assert cosine(pa, pb) > 0.9999


def test_class_maps_and_explain_on_the_gpu(pair):
    cpu, gpu = pair
    for method in ("saliency", "gradcam", "guided_gradcam"):
        a, b = getattr(gpu, method)(), getattr(cpu, method)()
        assert cosine(torch.as_tensor(a.map), torch.as_tensor(b.map)) > 0.9999
    e_gpu = zf.explain(gpu, size=56, stride=56, progress=False)
    e_cpu = zf.explain(cpu, size=56, stride=56, progress=False)
    for m in e_cpu.methods:
        assert e_gpu.agreement[m] == pytest.approx(e_cpu.agreement[m], abs=1e-3)


def test_occlusion_on_the_gpu_runs_plain_passes_and_equals_the_cpu_s(pair):
    cpu, gpu = pair
    a = gpu.occlusion(size=56, stride=28, layer=TOP, progress=False)
    b = cpu.occlusion(size=56, stride=28, layer=TOP, progress=False)
    assert a.method == "plain" and "cuda" in a.method_note
    np.testing.assert_allclose(a.prob, b.prob, atol=1e-4)
    np.testing.assert_allclose(a.feature, b.feature, rtol=1e-3, atol=1e-3)
    assert a.channel == b.channel


def test_mining_feeds_the_gpu_from_worker_processes_with_pinned_batches(pair, monkeypatch):
    from zfwidgets.backend.mining import run as mining_run

    cpu, gpu = pair
    pinned = []
    feed = mining_run.MiningRun._feed

    def spy(self, miner, prepared):
        pinned.append(prepared[1] is None or prepared[1].is_pinned())
        return feed(self, miner, prepared)

    monkeypatch.setattr(mining_run.MiningRun, "_feed", spy)
    assert mining_run.MiningRun.plan(gpu, None, [TOP]).loader == "processes"
    a = zf.mine(gpu, None, [TOP], k=9, progress=False, workers=2)
    b = zf.mine(cpu, None, [TOP], k=9, progress=False, workers=2)
    assert pinned and all(pinned)
    top_a, top_b = a[TOP], b[TOP]
    close(top_a.values, top_b.values, atol=1e-3)
    same = (top_a.image == top_b.image).float().mean()
    assert same > 0.99            # hits tied within float rounding may swap places


def test_knockouts_and_ablation_on_the_gpu(pair):
    cpu, gpu = pair
    strongest = cpu.activation(TOP).flatten(1).sum(1).topk(10).indices.tolist()
    a, b = gpu.ablated(TOP, strongest), cpu.ablated(TOP, strongest)
    close(a.probabilities(), b.probabilities(), atol=1e-4)
    gpu.set_knockouts({TOP: strongest})
    try:
        close(gpu.probabilities(), b.probabilities(), atol=1e-4)
        assert torch.all(gpu.activation(TOP)[strongest] == 0)
    finally:
        gpu.set_knockouts(None)


def test_the_explorer_draws_over_a_gpu_session(pair):
    from zfwidgets.widgets.explorer import Explorer

    _, gpu = pair
    ex = Explorer(gpu, layer=LAYER)
    try:
        assert ex.grid.errors.message == "" and ex.deconv.errors.message == ""
        before = np.asarray(ex.deconv.fig.canvas.buffer_rgba()).copy()
        ex.channel = (ex.channel + 1) % gpu.layer_info(LAYER).shape[0]
        ex.deconv.fig.canvas.draw()
        assert (np.asarray(ex.deconv.fig.canvas.buffer_rgba()) != before).any()
        view = ex.open_tab("Occlusion")
        assert view.errors.message == "" and view.result is not None
    finally:
        ex.close()
