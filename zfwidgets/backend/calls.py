"""Reading the arguments of torch function calls seen by a ``TorchFunctionMode``.

The rules (:mod:`.rules`), the receptive-field tracker (:mod:`.layers`) and the incremental
occlusion engine (:mod:`.occlusion`) all intercept calls such as ``F.conv2d(x, w, b, 2)`` or
``F.max_pool2d(x, kernel_size=3)`` and need an argument whether it was passed by position or by
name.
"""

from __future__ import annotations

__all__ = ["call_arg", "pool_args"]


def call_arg(args, kwargs, index: int, name: str, default=None):
    """Argument ``name`` of a call: from ``kwargs``, else ``args[index]``, else ``default``."""
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def pool_args(args, kwargs, *, has_dilation: bool):
    """``(kernel, stride, padding, dilation)`` of an ``F.max_pool2d`` (``has_dilation``) or
    ``F.avg_pool2d`` call, as given (ints or pairs); a missing or empty stride is the kernel,
    as torch defines it."""
    kernel = call_arg(args, kwargs, 1, "kernel_size")
    stride = call_arg(args, kwargs, 2, "stride")
    if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
        stride = kernel
    padding = call_arg(args, kwargs, 3, "padding", 0)
    dilation = call_arg(args, kwargs, 4, "dilation", 1) if has_dilation else 1
    return kernel, stride, padding, dilation
