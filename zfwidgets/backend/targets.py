"""Class targets: what "the class" means when a user names one, or several.

Occlusion, the class explanations and gradient ascent all take a ``target``: a class id, a
label, or several of them (their probabilities or scores are then summed: "cat" as tabby + tiger
cat + Egyptian cat). :func:`resolve_classes` turns any of these into class ids, checked against
the model, with one error for a label the model does not have.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import BadParameterError, OutOfRangeError, UnknownClassError, did_you_mean
from ..models import class_name

__all__ = ["classes_label", "resolve_classes"]


def resolve_classes(session, target) -> tuple[int, ...] | None:
    """Class ids of ``target`` for the session's model.

    Parameters
    ----------
    session : Session
    target : None, int, str or sequence of int / str
        A class id, an exact label (case is forgiven when unambiguous), or several of them.

    Returns
    -------
    tuple of int or None
        Distinct ids in the order given; ``None`` for ``None`` (the caller's default).

    Raises
    ------
    UnknownClassError
        A label the model does not have (the message suggests close labels).
    OutOfRangeError
        An id outside the model's classes.
    BadParameterError
        An empty sequence, or something that is neither an id nor a label.
    """
    if target is None:
        return None
    n = int(session.logits.numel())
    labels = list(session.labels or [])
    items = _items(target)
    if not items:
        raise BadParameterError("target is an empty list of classes")
    out: list[int] = []
    for item in items:
        cid = _one(item, labels, n)
        if cid not in out:
            out.append(cid)
    return tuple(out)


def classes_label(session, classes: Sequence[int]) -> str:
    """``"tabby + tiger cat"``: the names of ``classes`` joined."""
    return " + ".join(class_name(session.labels, c) for c in classes)


def _items(target) -> list:
    if isinstance(target, (str, int, np.integer)) and not isinstance(target, bool):
        return [target]
    if hasattr(target, "tolist") and not isinstance(target, (list, tuple)):  # arrays, tensors
        target = target.tolist()
        return [target] if not isinstance(target, list) else target
    if isinstance(target, (list, tuple, set, frozenset)):
        return list(target)
    raise BadParameterError(f"target must be a class id, a label or a list of them, got "
                            f"{type(target).__name__}")


def _one(item, labels: list[str], n: int) -> int:
    if isinstance(item, str):
        if item in labels:
            return labels.index(item)
        folded = [i for i, lab in enumerate(labels) if lab.lower() == item.strip().lower()]
        if len(folded) == 1:
            return folded[0]
        hint, _ = did_you_mean(item, labels, cutoff=0.6)
        if not hint:
            close = [lab for lab in labels if item.lower() in lab.lower()][:5]
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        where = "the model has no labels" if not labels else "not one of the model's labels"
        raise UnknownClassError(f"unknown target class {item!r} ({where}){hint}")
    if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
        if isinstance(item, float) and item.is_integer():
            item = int(item)
        else:
            raise BadParameterError(f"a target class must be an id or a label, got {item!r}")
    if not 0 <= int(item) < n:
        raise OutOfRangeError(f"target class {item} is out of range: the model has {n} classes "
                              f"(0..{n - 1})")
    return int(item)
