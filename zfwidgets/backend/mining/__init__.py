"""Top-k mining over a data set (the paper's Fig. 2): exact, streaming, resumable, shardable.

For every channel of every requested layer, :func:`mine` keeps the ``k`` strongest activations
seen over a whole data set: their values, the image id and the position ``(y, x)`` in the
feature map. The data is streamed once, one forward pass per batch for all layers together, and
the forward pass stops as soon as the deepest requested layer has been computed. Hits are ranked
by a total order (value descending, then pre-activation descending, then image, y, x ascending),
so the result does not depend on the batch size, the order of the batches or the split into
shards, and :func:`merge` of shard results is exact. The pre-activation (a rectifier layer's
input) ranks the many exact ties of saturating rectifiers (ReLU6 at 6, dead units at 0). Memory is ``O(layers x channels x k)`` whatever the number of images.

``per_image=1`` (the default) keeps at most one hit per image and channel, its strongest
position, as the paper's galleries show nine different images; ``per_image=m`` allows up to
``m`` positions per image, ``per_image=None`` any number.

============== ==================================================================================
module         idea
============== ==================================================================================
``results``    what mining returns (:class:`LayerTopK`, :class:`MiningResult`) as plain data,
               saved and loaded (:func:`load_result`)
``topk``       the exact streaming top-k: the order, per-batch candidates, the running state of
               several layers (:class:`Miner`, with ``snapshot`` / ``restore``), :func:`merge`
``run``        a run over a data set as a :class:`~zfwidgets.backend.jobs.Job`
               (:func:`mine_job`, :func:`mine`): loading, batching, cache and checkpoints
``store``      the cache folder: atomic writes, safe reads, keys, checkpoints
``distributed`` :func:`gather_merge` of the shards of a ``torch.distributed`` run
============== ==================================================================================

The gallery of a mined feature map (receptive-field crops and projections of its top hits) is
:func:`zfwidgets.backend.project.gallery`.
"""

from .distributed import gather_merge
from .results import LayerTopK, MiningResult, Tally, load_result
from .run import MiningRun, load_batches, mine, mine_job, mining_batch_size
from .store import MiningStore
from .topk import Miner, merge

__all__ = ["LayerTopK", "Miner", "MiningResult", "MiningRun", "MiningStore", "Tally",
           "gather_merge", "load_batches", "load_result", "merge", "mine", "mine_job",
           "mining_batch_size"]
