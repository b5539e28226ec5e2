"""What knocking feature maps out does to the predictions over a data set.

:func:`knockout_effect` runs a data set through the session's model twice per batch, intact
and with some maps of a layer set to zero (:class:`~.ablation.AblatedModel`), and reports the
fraction of images whose top-1 class changes and how much the intact top-1 class loses in
probability. :func:`knockout_comparison` asks the causal question the paper's visualizations
raise: do the maps that respond most matter most? It knocks out a layer's ``k`` strongest maps
(largest mean activation over the data) and, as the baseline, ``k`` random maps, several times.

Both are jobs (:mod:`zfwidgets.backend.jobs`): one step per batch of images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ...data.datasets import as_source
from ...errors import BadImageError, BadParameterError, DataError
from ..jobs import Job, Step
from ..layers import capture, scoped_eval
from ..occlusion.grid import check_int
from ..occlusion.sweep import class_logits
from .ablation import ablated_model, check_channels

__all__ = ["KnockoutComparison", "KnockoutEffect", "knockout_comparison",
           "knockout_comparison_job", "knockout_effect", "knockout_job"]


@dataclass
class KnockoutEffect:
    """What knocking out ``channels`` of ``layer`` did over a data set.

    Attributes
    ----------
    layer : str
    channels : tuple of int
        The maps set to zero.
    changed : float
        Fraction of images whose top-1 class changed.
    drop : float
        Mean over images of ``P(clean top-1)`` intact minus knocked out.
    clean_class, ablated_class : numpy.ndarray
        ``[N]`` top-1 class ids intact and knocked out.
    clean_prob, ablated_prob : numpy.ndarray
        ``[N]`` probability of the intact top-1 class, intact and knocked out.
    skipped : int
        Images that could not be read.
    """

    layer: str
    channels: tuple[int, ...]
    changed: float
    drop: float
    clean_class: np.ndarray = field(repr=False)
    ablated_class: np.ndarray = field(repr=False)
    clean_prob: np.ndarray = field(repr=False)
    ablated_prob: np.ndarray = field(repr=False)
    skipped: int = 0


@dataclass
class KnockoutComparison:
    """The ``k`` strongest maps of a layer knocked out, against ``k`` random maps.

    Attributes
    ----------
    layer : str
    k : int
    strongest : KnockoutEffect
        The ``k`` maps with the largest mean activation over the data knocked out.
    random : list of KnockoutEffect
        One per trial, ``k`` maps drawn uniformly without replacement (any map may be drawn).
    mean_activation : numpy.ndarray
        ``[C]`` each map's mean activation over the images and positions.
    seed : int
    """

    layer: str
    k: int
    strongest: KnockoutEffect
    random: list[KnockoutEffect]
    mean_activation: np.ndarray = field(repr=False)
    seed: int = 0

    @property
    def random_changed(self) -> float:
        """Mean over the random trials of the fraction of changed top-1 classes."""
        return float(np.mean([r.changed for r in self.random]))

    @property
    def random_drop(self) -> float:
        """Mean over the random trials of the mean probability drop."""
        return float(np.mean([r.drop for r in self.random]))


def _batches(session, source, batch_size: int):
    """``(tensor [b, 3, H, W], skipped)`` per batch of readable images of ``source``."""
    pre = session.preprocessing
    for start in range(0, len(source), batch_size):
        tensors, skipped = [], 0
        for i in range(start, min(start + batch_size, len(source))):
            try:
                tensors.append(pre(source.load(i))[0])
            except BadImageError:
                skipped += 1
        batch = torch.stack(tensors).to(session.device) if tensors else None
        yield batch, skipped


def _predict(model, batch, clean_class=None):
    """Top-1 ids, their probabilities, and ``P(clean_class)`` when given."""
    with torch.inference_mode(), scoped_eval(model):
        p = torch.softmax(class_logits(model(batch)).float(), 1)
    top_p, top = p.max(1)
    mine = top_p if clean_class is None else p.gather(1, clean_class[:, None])[:, 0]
    return top, mine


def _effect(layer, channels, clean_c, clean_p, abl_c, abl_p, skipped) -> KnockoutEffect:
    clean_c, abl_c = torch.cat(clean_c).cpu().numpy(), torch.cat(abl_c).cpu().numpy()
    clean_p, abl_p = torch.cat(clean_p).cpu().numpy(), torch.cat(abl_p).cpu().numpy()
    return KnockoutEffect(layer, tuple(channels), float((clean_c != abl_c).mean()),
                          float((clean_p - abl_p).mean()), clean_c, abl_c, clean_p, abl_p,
                          skipped)


def knockout_job(session, layer: str, channel_sets: Sequence[Iterable[int]], images=None, *,
                 batch_size: int = 16, mean_activation: bool = False) -> Job:
    """Knock-out effects of several sets of maps of one layer, sharing each batch's intact pass.

    Parameters
    ----------
    session : Session
    layer : str
    channel_sets : sequence of sequences of int
        Each set is knocked out on its own.
    images : see :func:`knockout_effect`
    batch_size : int
    mean_activation : bool
        Also measure each map's mean activation over the data (in the intact pass).

    Returns
    -------
    Job
        Its result is ``(effects, mean_activation)``: a list of :class:`KnockoutEffect` (one
        per set) and ``[C]`` means (``None`` unless asked for).
    """
    sets = [check_channels(session, layer, chans) for chans in channel_sets]
    batch_size = check_int("batch_size", batch_size)
    if batch_size < 1:
        raise BadParameterError(f"batch_size must be at least 1, got {batch_size}")
    source = as_source(images)
    if len(source) == 0:
        raise DataError("no images to run the knock-out on")
    return Job(_knockout_steps(session, layer, sets, source, batch_size, mean_activation),
               what=f"knock-out {layer}", unit="img")


def _knockout_steps(session, layer, sets, source, batch_size, want_means):
    model = session.model
    views = [ablated_model(session, layer, chans) for chans in sets]
    clean_c, clean_p, skipped, done = [], [], 0, 0
    abl = [([], []) for _ in sets]
    total_act, count = None, 0

    def on_output(_, out):
        nonlocal total_act
        t = out.detach().float().mean(dim=(2, 3)).sum(0)
        total_act = t if total_act is None else total_act + t

    for batch, bad in _batches(session, source, batch_size):
        skipped += bad
        done += bad
        if batch is not None:
            with capture(model, [layer] if want_means else [], on_output):
                top, p = _predict(model, batch)
            count += batch.shape[0]
            clean_c.append(top)
            clean_p.append(p)
            for view, (cs, ps) in zip(views, abl):
                t, q = _predict(view, batch, top)
                cs.append(t)
                ps.append(q)
            done += batch.shape[0]
        yield Step(done, len(source), note=f"{skipped} skipped" if skipped else "")
    if not clean_c:
        raise DataError(f"none of the {len(source)} images could be read")
    effects = [_effect(layer, chans, clean_c, clean_p, cs, ps, skipped)
               for chans, (cs, ps) in zip(sets, abl)]
    means = None if total_act is None else (total_act / count).cpu().numpy()
    return effects, means


def knockout_effect(session, layer: str, channels, images=None, *, batch_size: int = 16,
                    progress: bool = True,
                    should_stop: Callable[[], bool] | None = None) -> KnockoutEffect:
    """The top-1 change over a data set when ``channels`` of ``layer`` are knocked out.

    Parameters
    ----------
    session : Session
        Gives the model (an ablated session's knock-outs stay in place in both passes) and its
        preprocessing.
    layer : str
        Layer id.
    channels : int or sequence of int
        The maps set to zero.
    images : None, folder, list of images, torch Dataset or ImageSource
        See :func:`zfwidgets.data.as_source`; ``None`` is the offline sample collection.
    batch_size : int
        Images per forward pass.
    progress : bool
        Show a ``tqdm.auto`` progress bar.
    should_stop : callable, optional
        Checked between batches; returning true raises :class:`~zfwidgets.Cancelled`.

    Returns
    -------
    KnockoutEffect

    Raises
    ------
    UnknownLayerError, OutOfRangeError
        A layer or channel the model does not have.
    DataError
        No image could be read.
    """
    job = knockout_job(session, layer, [channels], images, batch_size=batch_size)
    effects, _ = job.run(progress=progress, should_stop=should_stop)
    return effects[0]


def knockout_comparison_job(session, layer: str, images=None, *, k: int = 10, trials: int = 5,
                            seed: int = 0, batch_size: int = 16) -> Job[KnockoutComparison]:
    """The work of :func:`knockout_comparison` as a job: a pass to rank the maps, then one
    pass knocking out the strongest and every random set together.

    Parameters
    ----------
    session, layer, images, k, trials, seed, batch_size
        See :func:`knockout_comparison`.

    Returns
    -------
    Job of KnockoutComparison
    """
    n = session.layer_info(layer).shape[0]
    k, trials = check_int("k", k), check_int("trials", trials)
    if not 1 <= k <= n or trials < 1:
        raise BadParameterError(f"k must lie in 1..{n} (the layer's maps) and trials be at "
                                f"least 1, got k={k}, trials={trials}")
    source = as_source(images)
    return Job(_comparison_steps(session, layer, source, k, trials, int(seed), batch_size),
               what=f"strongest vs random maps of {layer}", unit="img")


def _comparison_steps(session, layer, source, k, trials, seed, batch_size):
    rank = knockout_job(session, layer, [], source, batch_size=batch_size, mean_activation=True)
    while (step := rank.step()) is not None:
        yield Step(step.done, 2 * step.total, note="ranking maps")
    _, means = rank.result
    strongest = [int(c) for c in np.argsort(-means, kind="stable")[:k]]
    rng = np.random.default_rng(seed)
    randoms = [sorted(int(c) for c in rng.choice(means.size, size=k, replace=False))
               for _ in range(trials)]
    run = knockout_job(session, layer, [strongest] + randoms, source, batch_size=batch_size)
    while (step := run.step()) is not None:
        yield Step(step.total + step.done, 2 * step.total, note="knocking out")
    effects, _ = run.result
    return KnockoutComparison(layer, k, effects[0], effects[1:], means, seed)


def knockout_comparison(session, layer: str, images=None, *, k: int = 10, trials: int = 5,
                        seed: int = 0, batch_size: int = 16, progress: bool = True,
                        should_stop: Callable[[], bool] | None = None) -> KnockoutComparison:
    """Knock out a layer's ``k`` strongest maps, and ``k`` random ones, over a data set.

    The strongest maps are those with the largest mean activation over the images (and
    positions); each random set is ``k`` distinct maps drawn uniformly (``trials`` sets, from
    ``numpy.random.default_rng(seed)``).

    Parameters
    ----------
    session : Session
    layer : str
        Layer id.
    images : None, folder, list of images, torch Dataset or ImageSource
        See :func:`zfwidgets.data.as_source`; ``None`` is the offline sample collection.
    k : int
        Maps per set.
    trials : int
        Random sets.
    seed : int
        Seeds the random sets.
    batch_size : int
        Images per forward pass.
    progress : bool
        Show a ``tqdm.auto`` progress bar.
    should_stop : callable, optional
        Checked between batches; returning true raises :class:`~zfwidgets.Cancelled`.

    Returns
    -------
    KnockoutComparison
    """
    job = knockout_comparison_job(session, layer, images, k=k, trials=trials, seed=seed,
                                  batch_size=batch_size)
    return job.run(progress=progress, should_stop=should_stop)
