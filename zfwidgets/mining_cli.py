"""``zfwidgets mine``: top-k mining of a folder from the command line, sharded under torchrun.

One process::

    zfwidgets mine photos/ --model efficientnet_lite0 --layers head.act blocks.7.depthwise.act \\
        --out top9.pt --cache-dir ~/.cache/zfwidgets

Several processes (one machine or many; gloo on CPUs, nccl on GPUs)::

    torchrun --nproc_per_node 4 -m zfwidgets.mining_cli photos/ --out top9.pt

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) rank ``r`` mines items
``r, r + W, r + 2W, ...`` of the folder (image ids stay global), the shard results are gathered
on rank 0 and merged exactly (:func:`zfwidgets.backend.mining.merge`), and rank 0 writes the result
file. Every rank uses rank 0's weights (broadcast), so a randomly initialized model is the same
everywhere. Read the file back with :func:`zfwidgets.load_result`.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main", "build_parser"]


def build_parser(prog: str = "zfwidgets mine") -> argparse.ArgumentParser:
    """The argument parser of ``zfwidgets mine``."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Find the top-k activations of every channel of some layers over a folder "
                    "of images (Zeiler & Fergus Fig. 2). Runs sharded under torchrun.")
    p.add_argument("folder", help="folder of images (searched recursively; unreadable files are "
                                  "skipped and counted)")
    p.add_argument("--model", default="efficientnet_lite0",
                   help="registry name (see zfwidgets.list_models()); default efficientnet_lite0")
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
                   help="images per forward pass (default: 8 on a CPU, 64 on a GPU)")
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
    return p


def _per_image(text: str) -> int | None:
    if text.lower() in ("all", "none", "0"):
        return None
    return int(text)


def main(argv: list[str] | None = None) -> int:
    """Run ``zfwidgets mine``; returns the exit status (0 on success)."""
    import torch

    from zfwidgets.backend.session import Session
    from zfwidgets.backend.mining import gather_merge, mine
    from zfwidgets.data.datasets import ImageFolder
    from zfwidgets.errors import ZFError

    args = build_parser().parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if args.device:
        device = torch.device(args.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)

    dist = None
    if world > 1:
        import torch.distributed as dist

        backend = args.backend or ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend)
    try:
        torch.manual_seed(args.seed)
        weights = None if args.weights.lower() == "none" else args.weights
        session = Session(args.model, weights=weights, device=device)
        if dist is not None:  # every rank uses rank 0's weights (random inits differ otherwise)
            state = [session.model.state_dict() if rank == 0 else None]
            if device.type == "cuda":
                dist.broadcast_object_list(state, src=0, device=device)
            else:
                dist.broadcast_object_list(state, src=0)
            session.model.load_state_dict(state[0])
        source = ImageFolder(args.folder)
        result = mine(session, source, args.layers, k=args.k, per_image=_per_image(args.per_image),
                      batch_size=args.batch_size, cache_dir=args.cache_dir,
                      progress=not args.no_progress and rank == 0,
                      shard=(rank, world) if world > 1 else None, workers=args.workers,
                      checkpoint_every=args.checkpoint_every)
        if dist is not None:
            result = gather_merge(result, dst=0)
        if rank == 0:
            result.save(args.out)
            print(f"{result.summary()}\nwrote {args.out}", file=sys.stderr)
    except ZFError as exc:
        print(f"zfwidgets mine: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist is not None and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":  # torchrun -m zfwidgets.mining_cli ...
    sys.exit(main(sys.argv[1:]))
