"""An empirical receptive field, independent of the geometry tracker, for tests.

Inside :class:`LinearProbe` every convolution uses ``|w| + eps`` (no cancellation), max-pools
become average pools over the same windows, and rectifiers and batch norm become the identity.
The input-gradient of one unit is then strictly positive exactly on the pixels that can
influence it: its receptive field.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from zfwidgets.backend.layers import forward_to

_IDENTITY = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu6,
             F.hardtanh, F.leaky_relu, F.dropout, F.batch_norm}


class LinearProbe(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _IDENTITY:
            return args[0]
        if func in (F.conv2d, torch.conv2d):
            args = list(args)
            args[1] = args[1].abs() + 1e-3
            return func(*args, **kwargs)
        if func in (F.max_pool2d, torch.max_pool2d):
            names = ("kernel_size", "stride", "padding")
            params = dict(zip(names, args[1:4]))
            params.update({k: v for k, v in kwargs.items() if k in names})
            if kwargs.get("ceil_mode"):
                params["ceil_mode"] = True
            return F.avg_pool2d(args[0], **params)
        return func(*args, **kwargs)


def empirical_box(model, x, layer, y, xx, layout=None):
    """Bounding box ``(top, left, bottom, right)`` of the support of unit (y, xx)'s gradient
    (``layout``: the layer's, for channels-last or token maps)."""
    inp = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        with LinearProbe():
            out = forward_to(model, inp, layer, layout=layout)
        sel = out[:, :, y, xx].sum()
        (g,) = torch.autograd.grad(sel, inp)
    support = g[0].abs().sum(0) > 0
    rows = torch.nonzero(support.any(1)).flatten()
    cols = torch.nonzero(support.any(0)).flatten()
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1
