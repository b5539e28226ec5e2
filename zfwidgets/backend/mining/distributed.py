"""Sharded mining under ``torch.distributed``: gather every rank's shard and merge it exactly.

Each rank mines its shard (``mine(..., shard=(rank, world_size))``: items ``rank, rank + W, ...``
with global image ids); :func:`gather_merge` brings the shard results to one rank as plain data
and merges them there with :func:`~zfwidgets.backend.mining.merge`, which gives exactly the
single-process result. ``zfwidgets mine`` under ``torchrun`` does this.
"""

from __future__ import annotations

from .results import MiningResult
from .topk import merge

__all__ = ["gather_merge"]


def gather_merge(result: MiningResult, dst: int = 0, group=None) -> MiningResult | None:
    """Gather every rank's shard result on rank ``dst`` and merge them there (torch.distributed).

    Call it on every rank after each has mined its shard.

    Parameters
    ----------
    result : MiningResult
        This rank's shard result.
    dst : int
        The rank that receives the merged result.
    group : ProcessGroup, optional
        Default: the whole world.

    Returns
    -------
    MiningResult or None
        The merged result (``shard`` ``None``) on ``dst``, ``None`` elsewhere.
    """
    import torch.distributed as dist

    world = dist.get_world_size(group)
    state = result.to_state()
    gathered = [None] * world if dist.get_rank(group) == dst else None
    dist.gather_object(state, gathered, dst=dst, group=group)
    if gathered is None:
        return None
    parts = [MiningResult.from_state(s, source=result.source) for s in gathered]
    merged = parts[0]
    for part in parts[1:]:
        merged = merge(merged, part)
    merged.shard = None
    return merged
