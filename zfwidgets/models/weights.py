"""Weights and what ships with them: strict checkpoint loading and class names.

:func:`load_checkpoint` reads a ``torch.save`` file with ``weights_only=True`` (tensors and plain
containers only), finds the state dict inside it and loads it strictly, naming the first
offending keys when it does not fit. :func:`imagenet_labels` gives the ImageNet class names
(torchvision's weights ``meta``, no download, read without importing torchvision);
:func:`class_name` reads a name from any labels.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zfwidgets.errors import WeightsUnavailableError
from zfwidgets.fingerprint import file_digest

__all__ = ["class_name", "imagenet_labels", "load_checkpoint"]


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names, index = class id (from torchvision, no download).

    Returns
    -------
    list of str
        A fresh list, safe to modify.
    """
    return list(_imagenet_categories())


@functools.lru_cache(maxsize=1)
def _imagenet_categories() -> tuple[str, ...]:
    """torchvision's list (the ``meta["categories"]`` of its ImageNet weights), read from its
    data module ``torchvision/models/_meta.py`` as a literal: importing torchvision costs a
    second or more at every start. The import is the fallback when that file changes shape."""
    spec = importlib.util.find_spec("torchvision")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:
            tree = ast.parse(Path(folder, "models", "_meta.py").read_text())
        except (OSError, SyntaxError, ValueError):
            continue
        for node in tree.body:
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and getattr(node.targets[0], "id", None) == "_IMAGENET_CATEGORIES"):
                try:
                    names = ast.literal_eval(node.value)
                except ValueError:
                    break
                if len(names) == 1000 and all(isinstance(n, str) for n in names):
                    return tuple(names)
    from torchvision.models import AlexNet_Weights

    return tuple(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])


def class_name(labels, class_id: int) -> str:
    """Name of class ``class_id``: ``labels[class_id]``, or ``"class N"`` when the model has no
    (or too few) labels."""
    class_id = int(class_id)
    return labels[class_id] if labels and 0 <= class_id < len(labels) else f"class {class_id}"


def _short_list(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsUnavailableError(
            f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state dict "
            "(expected a dict of tensors, or one under 'state_dict' or 'model')"
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise WeightsUnavailableError(
            f"checkpoint {str(path)!r} is not a state dict of tensors; offending entries: "
            f"{_short_list(bad)}"
        )
    state = dict(obj)
    # nn.DataParallel / DistributedDataParallel checkpoints prefix every key with "module."
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_checkpoint(module: nn.Module, path: str | os.PathLike) -> str:
    """Load a checkpoint strictly into ``module`` and return its weights id.

    Parameters
    ----------
    module : torch.nn.Module
        Target network; modified in place only when the whole checkpoint fits.
    path : str or path-like
        File written by ``torch.save``: a state dict, or a dict holding one under
        ``"state_dict"`` or ``"model"``. Only tensors and plain containers are accepted
        (``weights_only=True``): arbitrary pickled objects are refused.

    Returns
    -------
    str
        ``"file:<sha256[:16]>"`` of the file.

    Raises
    ------
    WeightsUnavailableError
        Missing or unreadable file, refused pickle, missing or unexpected keys, or shape
        mismatches; the message names the file and the first offending keys.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"checkpoint file {str(path)!r} does not exist; weights must be 'default', None "
            "(random init) or the path of a checkpoint"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsUnavailableError(
            f"checkpoint {str(path)!r} holds more than tensors and was refused (zfwidgets loads "
            f"with weights_only=True); save model.state_dict() instead. Detail: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    except (OSError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise WeightsUnavailableError(f"cannot read checkpoint {str(path)!r}: {exc}") from exc
    state = _extract_state_dict(obj, path)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_short_list(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches (checkpoint vs model): {_short_list(mismatched)}")
    if problems:
        raise WeightsUnavailableError(
            f"checkpoint {str(path)!r} does not fit {type(module).__name__}; " + "; ".join(problems)
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. dtype casts that cannot happen
        raise WeightsUnavailableError(f"cannot load checkpoint {str(path)!r}: {exc}") from exc
    return f"file:{file_digest(path)}"

