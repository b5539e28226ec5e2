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

Bad values exit with status 2 and one line, before any work: an option that does not parse
(``--per-image abc``, ``--device bogus``), a device this machine lacks (``--device cuda``
without a GPU), an ``--out`` or ``--cache-dir`` that cannot be written (checked by writing a
probe file), a folder with no readable image (the reasons of the first few are printed).
Ctrl-C prints where the run stopped and exits 130; with ``--cache-dir`` the work done is in a
checkpoint there, and running the same command again resumes from it.
"""

from __future__ import annotations

import argparse
import os
import sys

from .common import fail, model_help

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
    p.add_argument("--model", default=None, help=model_help("registry name"))
    p.add_argument("--weights", default="default",
                   help="'default', 'none' (random init) or a checkpoint path")
    p.add_argument("--layers", nargs="+", default=None,
                   help="layer ids (torch named_modules names); default: ~5 layers spread over "
                        "the depth")
    p.add_argument("-k", "--k", type=int, default=9, help="hits kept per channel (default 9)")
    p.add_argument("--per-image", default="1", type=per_image_arg,
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
    p.add_argument("--device", default=None, type=device_arg,
                   help="cpu, cuda, cuda:N or mps (default: cuda if available)")
    p.add_argument("--backend", default=None,
                   help="torch.distributed backend (default: nccl on GPUs, gloo on CPUs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def per_image_arg(text: str) -> int | None:
    """``--per-image``: a positive integer, or ``all`` (also ``none``, ``0``) for no limit."""
    if text.lower() in ("all", "none", "0"):
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}")
    return value


_DEVICE_TYPES = ("cpu", "cuda", "mps")


def device_arg(text: str):
    """``--device``: a torch device of a kind mining runs on (availability is checked later)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in _DEVICE_TYPES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device to mine on; use cpu, cuda, "
                                         "cuda:N or mps")
    return device


def _device(device, local_rank: int):
    """The device to mine on, or a message saying why the asked one cannot be used."""
    import torch

    if device is None:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        device = torch.device("cuda")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return (f"--device {device}: no CUDA GPU is available on this machine "
                    "(torch.cuda.is_available() is False); use --device cpu")
        count = torch.cuda.device_count()
        if device.index is None:  # one GPU per local rank under torchrun
            device = torch.device("cuda", local_rank % count)
        elif device.index >= count:
            return f"--device {device}: this machine has {count} CUDA device(s), cuda:0..{count - 1}"
        torch.cuda.set_device(device)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        return f"--device {device}: Apple's MPS backend is not available here; use --device cpu"
    return device


def _share_weights(session, dist, rank: int) -> None:
    """Every rank takes rank 0's weights (random inits differ otherwise)."""
    state = [session.model.state_dict() if rank == 0 else None]
    if session.device.type == "cuda":
        dist.broadcast_object_list(state, src=0, device=session.device)
    else:
        dist.broadcast_object_list(state, src=0)
    session.model.load_state_dict(state[0])


class _Progress:
    """Where the run stands, for the line Ctrl-C prints (``on_progress`` of :func:`mine`)."""

    def __init__(self):
        self.done, self.total = 0, None

    def __call__(self, done: int, total: int, skipped: int) -> None:
        self.done, self.total = done, total


def _interrupted(args, progress: _Progress) -> int:
    """Say where a run stopped by Ctrl-C stands, in one line; the exit status 130."""
    if progress.total is None:
        where = "interrupted before the first batch was mined"
    else:
        where = f"interrupted after {progress.done} of {progress.total} images"
    if args.cache_dir:
        what = (f"the work done is checkpointed in {args.cache_dir}: run the same command again "
                "to resume")
    else:
        what = "nothing was kept: with --cache-dir DIR a rerun resumes an interrupted run"
    print(f"{PROG}: {where}; {what}", file=sys.stderr, flush=True)
    return 130


def _no_image(result, folder) -> str:
    reasons = "; ".join(f"{name}: {why}" for _, name, why in result.skipped[:5])
    more = f" (and {result.n_skipped - 5} more)" if result.n_skipped > 5 else ""
    return f"no readable image in {folder}: {result.n_skipped} item(s) skipped: {reasons}{more}"


def run(args) -> int:
    """Run ``zfwidgets mine``; returns the exit status (0 on success)."""
    progress = _Progress()
    try:
        return _run(args, progress)
    except KeyboardInterrupt:
        return _interrupted(args, progress)


def _run(args, progress: _Progress) -> int:
    import torch

    from ..backend.mining import gather_merge, mine
    from ..backend.mining.store import check_file_writable
    from ..backend.session import Session
    from ..data.datasets import ImageFolder
    from ..errors import ZFError

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = _device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
    if isinstance(device, str):
        return fail(device, PROG)
    try:
        if rank == 0:  # before any work: a result that cannot be written would waste it all
            check_file_writable(args.out, "the result file")
        folder = ImageFolder(args.folder)
    except ZFError as exc:
        return fail(str(exc), PROG)
    if len(folder) == 0:  # before a model is loaded
        ignored = f" ({len(folder.ignored)} non-image file(s) ignored)" if folder.ignored else ""
        return fail(f"no image file in {args.folder}{ignored}", PROG)
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
        result = mine(session, folder, args.layers, k=args.k, per_image=args.per_image,
                      batch_size=args.batch_size, cache_dir=args.cache_dir,
                      progress=not args.no_progress and rank == 0,
                      shard=(rank, world) if world > 1 else None, workers=args.workers,
                      checkpoint_every=args.checkpoint_every, on_progress=progress)
        if dist is not None:
            result = gather_merge(result, dst=0)
        if rank == 0:
            if result.n_images == 0:
                return fail(_no_image(result, args.folder), PROG)
            result.save(args.out)
            ignored = f"; {len(folder.ignored)} non-image file(s) ignored" if folder.ignored else ""
            print(f"{result.summary()}{ignored}\nwrote {args.out}", file=sys.stderr)
    except ZFError as exc:
        return fail(str(exc), PROG)
    finally:
        if dist is not None and dist.is_initialized():
            dist.destroy_process_group()
    return 0
