"""``zfwidgets mine``: top-k mining of a folder from the command line, sharded under torchrun.

One process::

    zfwidgets mine photos/ --model efficientnet_lite0 --layers head.act blocks.7.depthwise.act \\
        --out top9.pt --cache-dir ~/.cache/zfwidgets

Several processes (one machine or many; gloo on CPUs, nccl on GPUs)::

    torchrun --nproc_per_node 4 -m zfwidgets.cli mine photos/ --out top9.pt

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) rank ``r`` mines items
``r, r + W, r + 2W, ...`` of the folder (image ids stay global), the shard results are gathered
on rank 0 and merged exactly (:func:`zfwidgets.backend.mining.gather_merge`), and rank 0 writes
the result file. Every rank uses rank 0's weights (broadcast), so a randomly initialized model
is the same everywhere. Read the file back with :func:`zfwidgets.load_result`.
"""

from __future__ import annotations

import os
import sys

from .common import DEFAULT_MODEL, fail

__all__ = ["add_parser", "run"]

PROG = "zfwidgets mine"


def add_parser(sub) -> None:
    """Add the ``mine`` command to the ``zfwidgets`` subparsers."""
    p = sub.add_parser(
        "mine", help="mine the top-9 activations of a folder of images (torchrun-ready)",
        description="Find the top-k activations of every channel of some layers over a folder "
                    "of images (Zeiler & Fergus Fig. 2). Runs sharded under torchrun: "
                    "`torchrun --nproc_per_node N -m zfwidgets.cli mine FOLDER ...`.")
    p.add_argument("folder", help="folder of images (searched recursively; unreadable files are "
                                  "skipped and counted)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"registry name (see zfwidgets.list_models()); default {DEFAULT_MODEL}")
    p.add_argument("--weights", default="default",
                   help="'default', 'none' (random init) or a checkpoint path")
    p.add_argument("--layers", nargs="+", default=None,
                   help="layer ids (torch named_modules names); default: ~5 layers spread over "
                        "the depth")
    p.add_argument("-k", "--k", type=int, default=9, help="hits kept per channel (default 9)")
    p.add_argument("--per-image", default="1",
                   help="at most this many hits per image and channel; 'all' for no limit "
                        "(default 1)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per forward pass (default: 64 on a GPU; on a CPU as many as "
                        "keep the largest activation under 32 MB, at most 32: "
                        "zfwidgets.backend.mining.mining_batch_size)")
    p.add_argument("--workers", type=int, default=None,
                   help="image-loading threads per process (default: min(4, cpus - 1))")
    p.add_argument("--out", default="topk.pt", help="result file (written by rank 0)")
    p.add_argument("--cache-dir", default=None,
                   help="cache and checkpoint folder: a rerun resumes an interrupted run")
    p.add_argument("--checkpoint-every", type=float, default=60.0,
                   help="seconds between checkpoints (with --cache-dir)")
    p.add_argument("--seed", type=int, default=0,
                   help="torch seed before building the model (random-init models)")
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda if available)")
    p.add_argument("--backend", default=None,
                   help="torch.distributed backend (default: nccl on GPUs, gloo on CPUs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _per_image(text: str) -> int | None:
    if text.lower() in ("all", "none", "0"):
        return None
    return int(text)


def _device(name: str | None, local_rank: int):
    import torch

    if name:
        device = torch.device(name)
    elif torch.cuda.is_available():
        device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def _share_weights(session, dist, rank: int) -> None:
    """Every rank takes rank 0's weights (random inits differ otherwise)."""
    state = [session.model.state_dict() if rank == 0 else None]
    if session.device.type == "cuda":
        dist.broadcast_object_list(state, src=0, device=session.device)
    else:
        dist.broadcast_object_list(state, src=0)
    session.model.load_state_dict(state[0])


def run(args) -> int:
    """Run ``zfwidgets mine``; returns the exit status (0 on success)."""
    import torch

    from ..backend.mining import gather_merge, mine
    from ..backend.session import Session
    from ..data.datasets import ImageFolder
    from ..errors import ZFError

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = _device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
    dist = None
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group(backend=args.backend or
                                ("nccl" if device.type == "cuda" else "gloo"))
    try:
        torch.manual_seed(args.seed)
        weights = None if args.weights.lower() == "none" else args.weights
        session = Session(args.model, weights=weights, device=device)
        if dist is not None:
            _share_weights(session, dist, rank)
        result = mine(session, ImageFolder(args.folder), args.layers, k=args.k,
                      per_image=_per_image(args.per_image), batch_size=args.batch_size,
                      cache_dir=args.cache_dir, progress=not args.no_progress and rank == 0,
                      shard=(rank, world) if world > 1 else None, workers=args.workers,
                      checkpoint_every=args.checkpoint_every)
        if dist is not None:
            result = gather_merge(result, dst=0)
        if rank == 0:
            result.save(args.out)
            print(f"{result.summary()}\nwrote {args.out}", file=sys.stderr)
    except ZFError as exc:
        return fail(str(exc), PROG)
    finally:
        if dist is not None and dist.is_initialized():
            dist.destroy_process_group()
    return 0
