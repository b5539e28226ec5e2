"""The ``zfwidgets`` command: open the explorer, render figures headless, mine top-9 patches.

::

    zfwidgets explore [--model NAME] [--image PATH] [--port N] [--no-browser]
    zfwidgets render  [--model NAME] [--image PATH] [--out DIR] [--layer ID] [--rule RULE]
    zfwidgets mine FOLDER [--model NAME] [--layers ID ...] [--out FILE] ...

The same as ``python -m zfwidgets.cli ...``, so that ``torchrun --nproc_per_node N -m
zfwidgets.cli mine FOLDER ...`` runs the miner sharded. Each command is one module here
(:mod:`~zfwidgets.cli.explore`, :mod:`~zfwidgets.cli.render`, :mod:`~zfwidgets.cli.mine`) with
an ``add_parser(subparsers)`` that registers its options and its ``run(args)``; a new command
is a new module added to :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from . import explore, mine, render
from .common import (ALLOCATOR_ENV, ENV_IMAGE, ENV_MODEL, default_model_choice, kernel_env,
                     one_cell_notebook, open_session)
from .explore import explorer_notebook

__all__ = ["ALLOCATOR_ENV", "COMMANDS", "ENV_IMAGE", "ENV_MODEL", "build_parser",
           "default_model_choice",
           "explorer_notebook", "kernel_env", "main", "one_cell_notebook", "open_session"]

#: The command modules, in the order ``--help`` lists them.
COMMANDS = (explore, render, mine)


def build_parser() -> argparse.ArgumentParser:
    """The ``zfwidgets`` argument parser: one subcommand per module of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="zfwidgets",
        description="Zeiler & Fergus (2014) visualizations of any PyTorch CNN: live Jupyter "
                    "widgets and headless figures.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``zfwidgets`` command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.command is None:
        parser.print_help()
        return 0
    with contextlib.suppress(AttributeError):
        sys.stdout.reconfigure(line_buffering=True)
    return int(args.run(args) or 0)
