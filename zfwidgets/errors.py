"""The one exception family of zfwidgets.

Every error that zfwidgets raises on purpose is a :class:`ZFError`. The subclasses also derive
from the built-in exception a Python user would expect (``ValueError``, ``LookupError`` ...), so
``except ValueError`` keeps working for code that does not know about zfwidgets.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ZFError",
    "BadImageError",
    "UnknownLayerError",
    "OutOfRangeError",
    "BadParameterError",
    "UnknownClassError",
    "UnsupportedModelError",
    "WeightsUnavailableError",
    "DataError",
    "StorageError",
    "Cancelled",
    "ExerciseFailed",
    "check_choice",
    "did_you_mean",
]


def did_you_mean(name, known: Iterable[str], *, cutoff: float = 0.5, n: int = 3
                 ) -> tuple[str, list[str]]:
    """Close matches of ``name`` among ``known``, and the hint that says them.

    Returns
    -------
    hint : str
        ``"; did you mean 'a', 'b'?"``, or ``""`` when nothing is close.
    close : list of str
        The matches, closest first.
    """
    close = difflib.get_close_matches(str(name), list(known), n=n, cutoff=cutoff)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return hint, close


class ZFError(Exception):
    """Base class of every error raised by zfwidgets."""


class BadImageError(ZFError, ValueError):
    """An image could not be decoded or converted (corrupt, truncated, empty, too large ...)."""


class UnknownLayerError(ZFError, LookupError):
    """A layer name is not one of the session's layers."""

    def __init__(self, name: str, known: Iterable[str]):
        known = list(known)
        hint, close = did_you_mean(name, known)
        msg = f"unknown layer {name!r}{hint}"
        if not close and known:
            shown = ", ".join(repr(k) for k in known[:8])
            msg += f"; layers are {shown}{' ...' if len(known) > 8 else ''}"
        super().__init__(msg)
        self.name = name
        self.suggestions = close

    def __str__(self) -> str:  # LookupError would repr() the message otherwise
        return str(self.args[0])


class OutOfRangeError(ZFError, IndexError):
    """A channel, position or class id lies outside what the layer or model has."""


class BadParameterError(ZFError, ValueError):
    """A parameter has a value that cannot work (a size of 0, a negative stride ...)."""


class UnknownClassError(OutOfRangeError, BadParameterError):
    """A class label the model does not have (the message suggests close labels). It is both an
    :class:`OutOfRangeError` and a :class:`BadParameterError`: a name outside the model's
    classes, given as a parameter."""


class UnsupportedModelError(ZFError, TypeError):
    """The model contains something a rule cannot handle faithfully."""


class WeightsUnavailableError(ZFError, RuntimeError):
    """Pretrained weights cannot be loaded (offline, missing package, bad checkpoint)."""


class DataError(ZFError, ValueError):
    """A data set cannot be used (empty, no readable image ...)."""


class StorageError(ZFError, OSError):
    """A file or folder zfwidgets must write cannot be used: a cache folder or a result file on a
    full disk or a read-only file system, without permission, or a path that is a file where a
    folder is needed (or the reverse). The message names the path and the problem."""


class Cancelled(ZFError):
    """A long computation (a :class:`~zfwidgets.backend.jobs.Job`: an occlusion sweep, mining,
    gradient ascent ...) was stopped by its ``should_stop`` callback, typically because a newer
    request from a widget superseded it. Nothing is left half-done: the model and the session
    are as before the call."""


class ExerciseFailed(ZFError, AssertionError):
    """A student's function differs from the reference in a :mod:`zfwidgets.exercises` check
    run with ``strict=True`` (tests and solution notebooks); the message is the verdict: which
    case, what differs, and a hint. Without ``strict`` the checkers print the verdict instead."""


def check_choice(what: str, value, choices: Iterable):
    """Return ``value`` if it is one of ``choices``, else raise :class:`BadParameterError`
    naming ``what``, the value and the choices."""
    choices = tuple(choices)
    if value not in choices:
        raise BadParameterError(f"unknown {what} {value!r}; choose one of "
                                f"{', '.join(map(str, choices))}")
    return value
