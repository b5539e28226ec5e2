"""Layer probes (the paper's Tables 4-7 and Fig. 9): how useful is each layer's representation
for another task, given only a few labelled examples per class?

The paper kept its ImageNet network fixed, took the features of each layer (1-7) for the images
of another data set (Caltech-101, Caltech-256, PASCAL VOC), trained a linear classifier on a few
examples per class and measured test accuracy: it rises with depth. :func:`probe` does the same
for any model, layers and labelled images: each layer's output is pooled over space (average, or
max) to one vector per image, standardized with the training split's statistics, and a
multinomial logistic regression (L2-regularized, fitted with L-BFGS) is trained on
``train_per_class`` random examples of every class and tested on the rest, over several random
splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import BadParameterError, DataError
from ...threads import using_threads
from ..layers import layouts_of, run_captured, scoped_eval

__all__ = ["ProbeResult", "fit_linear", "layer_features", "probe", "stratified_split"]


@dataclass
class ProbeResult:
    """Test accuracy of a linear classifier on each layer's features.

    Attributes
    ----------
    layers : list of str
    accuracy : dict of str to numpy.ndarray
        Layer -> ``[trials]`` test accuracy of each random split.
    classes : list
        Class labels, sorted.
    train_per_class : int
    chance : float
        Accuracy of always answering the most frequent test class (averaged over the splits).
    pool : str
        How feature maps were pooled (``"avg"`` or ``"max"``).
    dims : dict of str to int
        Feature length per layer.
    """

    layers: list[str]
    accuracy: dict[str, np.ndarray]
    classes: list
    train_per_class: int
    chance: float
    pool: str
    dims: dict[str, int] = field(default_factory=dict)

    def mean(self, layer: str) -> float:
        """Mean test accuracy of ``layer`` over the splits."""
        return float(self.accuracy[layer].mean())

    def std(self, layer: str) -> float:
        """Standard deviation of ``layer``'s test accuracy over the splits."""
        return float(self.accuracy[layer].std())

    def table(self) -> list[tuple[str, str]]:
        """Rows ``(layer, "mean ± std")`` in percent."""
        return [(layer, f"{100 * self.mean(layer):.1f} ± {100 * self.std(layer):.1f}")
                for layer in self.layers]


def layer_features(session, images: Any, layers: Sequence[str], *, pool: str = "avg",
                   batch_size: int = 16) -> dict[str, torch.Tensor]:
    """One pooled feature vector per image and layer.

    Parameters
    ----------
    session : Session
    images : data
        Anything :func:`zfwidgets.data.as_source` takes (folder, list, torch Dataset ...);
        every image must load (a probe needs every label's image).
    layers : sequence of str
    pool : {"avg", "max"}
        Reduction of each ``[C, H, W]`` map over space (a ``[C]`` output is kept as is).
    batch_size : int

    Returns
    -------
    dict of str to torch.Tensor
        Layer -> ``[N, C]`` float64 features, in the order of ``images``.
    """
    from ...data.datasets import as_source

    if pool not in ("avg", "max"):
        raise BadParameterError(f"pool must be 'avg' or 'max', got {pool!r}")
    source = as_source(images)
    model = session.model
    out: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}

    def keep(layer, t):
        t = t.detach()
        if t.dim() == 4:
            t = t.mean((2, 3)) if pool == "avg" else t.amax((2, 3))
        out[layer].append(t.flatten(1).double().cpu())

    n = len(source)
    for start in range(0, n, batch_size):
        batch = []
        for i in range(start, min(n, start + batch_size)):
            try:
                image = source.load(i)
            except Exception as exc:
                raise DataError(f"image {i} ({source.name(i)}) cannot be used: {exc}") from exc
            batch.append(session.preprocessing(image))
        x = torch.cat(batch).to(session.input_tensor)
        with torch.inference_mode(), scoped_eval(model):
            run_captured(model, x, list(layers), keep, known=session.layers,
                         layouts=layouts_of(session, layers))
    return {layer: torch.cat(v) for layer, v in out.items()}


def stratified_split(labels: np.ndarray, per_class: int, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``per_class`` random training examples of every class, and of the rest."""
    train = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        train.extend(rng.choice(idx, per_class, replace=False).tolist())
    train = np.sort(np.asarray(train))
    test = np.setdiff1d(np.arange(len(labels)), train)
    return train, test


def fit_linear(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float = 1e-3,
               iterations: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by L-BFGS: minimizes the mean cross-entropy plus
    ``l2 * ||W||^2`` (the bias is not penalized). Returns ``(W [D, K], b [K])``.

    The fit runs on one torch thread whatever the process's count: its operations are tiny
    (a few dozen examples), so a second thread only adds a wake-up per operation (measured,
    the probes of notebook 10 on the 2-core machine: 12.7 s on one thread, 38 s on two with
    ``OMP_WAIT_POLICY=PASSIVE``, 18 s on two with a short spin); the result does not depend on
    it."""
    x = x.double()
    w = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=iterations, tolerance_grad=1e-10,
                            tolerance_change=1e-14, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), using_threads(1):
        opt.step(closure)
    return w.detach(), b.detach()


def probe(session, images: Any, labels: Sequence, layers: Sequence[str] | None = None, *,
          train_per_class: int = 5, trials: int = 5, pool: str = "avg", l2: float = 1e-3,
          seed: int = 0, batch_size: int = 16,
          features: dict[str, torch.Tensor] | None = None) -> ProbeResult:
    """Linear-probe accuracy of each layer with a few training examples per class.

    Parameters
    ----------
    session : Session
        The fixed network.
    images : data
        Labelled images (see :func:`layer_features`).
    labels : sequence
        One label per image (any hashable values).
    layers : sequence of str, optional
        Default :func:`zfwidgets.backend.defaults.mining_layers` (about five, spread over depth).
    train_per_class : int
        Training examples per class in each split; every class needs at least one more.
    trials : int
        Random splits.
    pool : {"avg", "max"}
    l2 : float
        L2 penalty of the classifier.
    seed : int
    batch_size : int
    features : dict of str to torch.Tensor, optional
        Features from :func:`layer_features` (same images, layers and ``pool``), to run
        several probes without running the network again; ``images`` is then not read.

    Returns
    -------
    ProbeResult

    Raises
    ------
    BadParameterError
        Labels not matching the images, a class with too few examples, bad numbers.
    DataError
        An image that cannot be loaded.
    UnknownLayerError
        Unknown layer.
    """
    from ..defaults import mining_layers

    labels = list(labels)
    layers = list(mining_layers(session) if layers is None else dict.fromkeys(layers))
    for layer in layers:
        session.layer_info(layer)
    for name, value in (("train_per_class", train_per_class), ("trials", trials)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadParameterError(f"{name} must be a positive integer, got {value!r}")
    if not l2 >= 0:
        raise BadParameterError(f"l2 must be >= 0, got {l2}")
    classes = sorted(set(labels), key=str)
    if len(classes) < 2:
        raise BadParameterError("a probe needs at least two classes")
    y_all = np.array([classes.index(v) for v in labels])
    counts = np.bincount(y_all, minlength=len(classes))
    if counts.min() <= train_per_class:
        few = [str(classes[c]) for c in np.flatnonzero(counts <= train_per_class)][:5]
        raise BadParameterError(f"classes {few} have {counts.min()} example(s); each needs more "
                                f"than train_per_class={train_per_class}")
    if features is None:
        feats = layer_features(session, images, layers, pool=pool, batch_size=batch_size)
    else:
        missing = [layer for layer in layers if layer not in features]
        if missing:
            raise BadParameterError(f"features lack layers {missing}")
        feats = {layer: torch.as_tensor(features[layer]).double() for layer in layers}
    n = next(iter(feats.values())).shape[0]
    if n != len(labels):
        raise BadParameterError(f"{len(labels)} labels for {n} images")

    rng = np.random.default_rng(seed)
    splits = [stratified_split(y_all, train_per_class, rng) for _ in range(trials)]
    y = torch.as_tensor(y_all)
    accuracy = {}
    for layer in layers:
        f = feats[layer]
        acc = []
        for train, test in splits:
            mu = f[train].mean(0)
            sd = f[train].std(0).clamp(min=1e-8)
            w, b = fit_linear((f[train] - mu) / sd, y[train], len(classes), l2)
            pred = (((f[test] - mu) / sd) @ w + b).argmax(1)
            acc.append(float((pred == y[test]).double().mean()))
        accuracy[layer] = np.asarray(acc)
    chance = float(np.mean([np.bincount(y_all[test]).max() / len(test) for _, test in splits]))
    return ProbeResult(layers=layers, accuracy=accuracy, classes=classes,
                       train_per_class=train_per_class, chance=chance, pool=pool,
                       dims={layer: int(feats[layer].shape[1]) for layer in layers})
