"""The one table of the incremental engine's op handlers: function -> handler.

:mod:`.handlers` fills it with ``@handles(...)``; :class:`~.engine.IncrementalMode` looks each
intercepted call up in it. Keeping the table apart from both means the engine needs no handler
and a handler needs no engine internals.
"""

from __future__ import annotations

from collections.abc import Callable
import torch

__all__ = ["Fallback", "HANDLERS", "Handler", "handles"]

#: ``handler(mode, func, args, kwargs)`` with ``mode`` the :class:`~.engine.IncrementalMode`.
Handler = Callable[..., torch.Tensor]

#: The one table: function -> handler.
HANDLERS: dict[Callable, Handler] = {}


class Fallback(Exception):
    """Raised by a handler (or by ``mode.emit`` on its behalf) that cannot treat a call
    exactly; the call then runs on dense values."""


def handles(*funcs: Callable) -> Callable[[Handler], Handler]:
    """Register the decorated handler for each of ``funcs`` in :data:`HANDLERS`.

    Raises
    ------
    ValueError
        If one of ``funcs`` already has another handler (two handlers for one op is a
        mistake; some spellings are one function, ``torch.conv2d is F.conv2d``).
    """
    def register(handler: Handler) -> Handler:
        for func in funcs:
            if HANDLERS.get(func, handler) is not handler:
                raise ValueError(f"{getattr(func, '__name__', func)} is already handled by "
                                 f"{HANDLERS[func].__name__}")
            HANDLERS[func] = handler
        return handler

    return register
