"""Class targets (zfwidgets.backend.targets): ids, labels, several classes, one error family."""

import numpy as np
import pytest
import torch

from zfwidgets import Session
from zfwidgets.backend.targets import classes_label, resolve_classes
from zfwidgets.errors import BadParameterError, OutOfRangeError, UnknownClassError
from nets import tiny_cnn


@pytest.fixture(scope="module")
def session():
    torch.manual_seed(0)
    return Session(tiny_cnn(), labels=[f"thing {i}" for i in range(10)])


def test_ids_labels_and_lists(session):
    assert resolve_classes(session, None) is None
    assert resolve_classes(session, 3) == (3,)
    assert resolve_classes(session, np.int64(4)) == (4,)
    assert resolve_classes(session, "thing 7") == (7,)
    assert resolve_classes(session, "THING 7") == (7,)          # case forgiven when unambiguous
    assert resolve_classes(session, ["thing 2", 5, 2]) == (2, 5)  # distinct, in order
    assert resolve_classes(session, torch.tensor([1, 9])) == (1, 9)
    assert classes_label(session, (2, 5)) == "thing 2 + thing 5"


@pytest.mark.parametrize("target, error", [
    ("thing 77", UnknownClassError), (10, OutOfRangeError), (-1, OutOfRangeError),
    ([], BadParameterError), (True, BadParameterError), (2.5, BadParameterError),
    ({"a": 1}, BadParameterError)])
def test_bad_targets(session, target, error):
    with pytest.raises(error):
        resolve_classes(session, target)


def test_an_unknown_label_suggests_close_ones(session):
    with pytest.raises(UnknownClassError, match="did you mean 'thing 7'"):
        resolve_classes(session, "thing 7x")
    err = UnknownClassError("x")
    assert isinstance(err, OutOfRangeError) and isinstance(err, BadParameterError)
