"""``zfwidgets render``: write the main figures of one model and image as PNG files."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .common import check_inputs, fail, model_help, open_session

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    """Add the ``render`` command to the ``zfwidgets`` subparsers."""
    p = sub.add_parser("render", help="write the main figures as PNG files (no browser)",
                       description="Write predictions, layer-1 filters, the feature maps of a "
                                   "layer and a deconvnet projection as PNG files, and print "
                                   "the folder they are in.")
    p.add_argument("--model", default=None, help=model_help())
    p.add_argument("--image", help="image file, or a sample photo's name; default chelsea")
    p.add_argument("--out", help="output folder (default: a new temporary folder, printed)")
    p.add_argument("--layer", help="layer id for the feature maps and the projection "
                   "(default: the model's middle layer)")
    p.add_argument("--rule", default="deconvnet", choices=("deconvnet", "guided", "gradient"),
                   help="backward rule of the projection")
    p.set_defaults(run=run)


def run(args) -> int:
    """Run ``zfwidgets render``; returns the exit status."""
    from ..errors import ZFError
    from ..plots.overview import render_overview

    bad = check_inputs(args)
    if bad is not None:
        return bad
    made = args.out is None
    out = Path(tempfile.mkdtemp(prefix="zfwidgets-figures-") if made else args.out).resolve()
    try:
        session = open_session(args.model, args.image)
        paths = render_overview(session, out, layer=args.layer, rule=args.rule)
    except ZFError as exc:
        if made:
            shutil.rmtree(out, ignore_errors=True)
        return fail(str(exc))
    print(f"model {session.entry.name}, image {session.image_name}")
    print(f"wrote {len(paths)} figures to {out}:")
    for path in paths:
        print(f"  {path.name}")
    if session.logits.dim() == 1 and session.logits.numel() > 1:
        print("top-5:")
        for label, p in session.predict(5):
            print(f"  {100 * p:5.1f}%  {label}")
    return 0
