"""Voila's own entry point (``python -m voila``), started without one slow optional import.

``zfwidgets explore`` runs ``python -m zfwidgets.cli.voila_server ARGS``, which is Voila with
the same arguments. jupyter_server validates its event schemas with jsonschema, whose format
checker imports ``rfc3987_syntax`` when it is installed (jupyter_events asks for jsonschema's
``format-nongpl`` extra): that package builds a parser for RFC 3987 IRIs at import, measured at
1.45 s of Voila's 1.9 s import on the 2-core machine, before the port listens. Its only use is
the ``"iri"`` string format, which none of the server's event schemas uses; marking the module
as absent makes jsonschema skip that one check (``with suppress(ImportError)``), as on a machine
without the package. Nothing else changes.
"""

from __future__ import annotations

import sys

__all__ = ["SKIPPED", "main", "prepare"]

#: optional modules this Voila process does without (see the module's docstring)
SKIPPED = ("rfc3987_syntax",)


def prepare() -> None:
    """Mark :data:`SKIPPED` as absent (an import of them raises ImportError), unless imported."""
    for name in SKIPPED:
        sys.modules.setdefault(name, None)


def main(argv=None) -> int:
    """Run Voila with ``argv`` (default ``sys.argv[1:]``); its exit status."""
    prepare()
    from voila.app import Voila

    Voila.launch_instance(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
