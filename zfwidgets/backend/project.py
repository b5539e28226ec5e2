"""Projections of activations back to pixel space (the paper's Section 2.1), batched.

A projection starts from one activation (or one whole feature map) of a layer, with every other
activation of that layer set to zero, and carries it down to the input with a backward rule
(see :mod:`zfwidgets.backend.rules`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from .layers import forward_to
from .rules import RuleMode, check_rule

__all__ = ["Target", "project", "projection_to_rgb"]


class Target(NamedTuple):
    """What to project: ``channel`` of input ``index``; one unit ``(y, x)`` or the whole map."""

    index: int
    channel: int
    y: int | None = None
    x: int | None = None


def _signal(acts: torch.Tensor, targets: Sequence[Target]) -> torch.Tensor:
    """Backward signal ``[N, C, h, w]``: zero except the target unit / map of each row.

    A whole map is sent down with its own activation values. A single unit is sent down with
    its activation value when that is positive, else with 1 (so that a silent unit still shows
    what it responds to).
    """
    sig = torch.zeros_like(acts)
    for n, t in enumerate(targets):
        if t.y is None:
            sig[n, t.channel] = acts[n, t.channel]
        else:
            v = acts[n, t.channel, t.y, t.x]
            sig[n, t.channel, t.y, t.x] = v if v > 0 else 1.0
    return sig


def project(model: nn.Module, inputs: torch.Tensor, layer: str, targets: Sequence[Target],
            rule: str = "deconvnet", *, batch_size: int = 16, known: list[str] | None = None,
            ) -> torch.Tensor:
    """Project activations of ``layer`` to input space, batched.

    Each distinct image is run forward once (up to ``layer`` only). The targets are then arranged
    in *rounds* holding at most one target per image, and each round goes down in one
    backward pass over the retained graph: 9 units of one image cost one forward and 9
    backward passes; the top units of 9 images cost one batch-9 forward and one backward.

    Parameters
    ----------
    model : nn.Module
        The network; left exactly as it was (no hooks, same flags).
    inputs : torch.Tensor
        Preprocessed images ``[B, 3, H, W]``.
    layer : str
        Layer id.
    targets : sequence of Target
        One row per projection; ``index`` picks the image in ``inputs``.
    rule : {"deconvnet", "guided", "gradient"}
    batch_size : int
        At most this many targets are projected per forward/backward pass (bounds memory).
    known : list of str, optional
        Valid layer ids, for error messages.

    Returns
    -------
    torch.Tensor
        ``[N, 3, H, W]`` projections, in input (normalized) space, one per target.
    """
    check_rule(rule)
    targets = [Target(*t) for t in targets]
    out = []
    for start in range(0, len(targets), batch_size):
        out.append(_project_chunk(model, inputs, layer, targets[start:start + batch_size], rule,
                                  known))
    if not out:
        return inputs.new_zeros((0,) + tuple(inputs.shape[1:]))
    return torch.cat(out)


def _project_chunk(model, inputs, layer, targets, rule, known):
    images = sorted({t.index for t in targets})
    slot = {b: i for i, b in enumerate(images)}
    rounds: list[int] = []            # round of each target
    seen: dict[int, int] = {}
    for t in targets:
        rounds.append(seen.get(t.index, 0))
        seen[t.index] = rounds[-1] + 1
    n_rounds = max(rounds) + 1
    x = inputs[images].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        with RuleMode(rule):
            acts = forward_to(model, x, layer, known)
        a = acts.detach()
        sig = torch.zeros((n_rounds,) + tuple(a.shape), dtype=a.dtype, device=a.device)
        for t, r in zip(targets, rounds):
            sig[r, slot[t.index]] = _signal(a[slot[t.index]][None], [Target(0, t.channel, t.y, t.x)])[0]
        # One backward pass per round over the retained graph. (The signals cannot be summed
        # into one pass: the rules rectify the backward signal, which is not linear. A plain
        # loop measured faster than `is_grads_batched` on CPU: vmap loops and concatenates.)
        grads = torch.stack([
            torch.autograd.grad(acts, x, sig[r], retain_graph=r < n_rounds - 1)[0]
            for r in range(n_rounds)])
    return torch.stack([grads[r, slot[t.index]] for t, r in zip(targets, rounds)]).detach()


def projection_to_rgb(projection: torch.Tensor | np.ndarray) -> np.ndarray:
    """Turn a projection ``[3, H, W]`` (or ``[N, 3, H, W]``) into displayable RGB in [0, 1].

    Zero maps to mid-gray and the largest absolute value of each projection to 0 or 1, the
    symmetric scaling of the paper's figures.

    Parameters
    ----------
    projection : torch.Tensor or numpy.ndarray
        One projection ``[3, H, W]`` or a batch ``[N, 3, H, W]`` in input (normalized) space,
        as returned by :func:`project` or :meth:`Session.project`.

    Returns
    -------
    numpy.ndarray
        ``[H, W, 3]`` (or ``[N, H, W, 3]``) float32.
    """
    p = torch.as_tensor(projection).detach().float().cpu()
    single = p.dim() == 3
    if single:
        p = p[None]
    scale = p.abs().flatten(1).amax(1).clamp(min=1e-12)[:, None, None, None]
    rgb = (0.5 + 0.5 * p / scale).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    return rgb[0] if single else rgb
