"""Running a student's function on the checker's cases, and the verdict that says what differs.

Every checker builds a list of :class:`Case` (the arguments the student's function gets, the
reference's answer, and the answers of known mistakes, computed only when needed) and hands it
to :func:`run_cases`, which calls the function on each case in turn, stops at the first case
whose answer differs, and returns a :class:`Verdict`:

* ``"passed"``: every case agrees with the reference (to ``rtol`` of its largest value);
* ``"not yet"``: the function is still a stub (it returned ``None`` or ``...``, or raised
  ``NotImplementedError``);
* ``"wrong"``: a case differs; the verdict names the case, the largest difference and where it
  is, and a hint (the known mistake whose answer the student's matches, else the case's hint);
* ``"error"``: the function raised on a case (the exception is named, not raised).

Nothing is raised for a wrong answer unless ``strict=True`` (then :class:`ExerciseFailed`
carries the verdict): a notebook shows the verdict, a test fails on it.
"""

from __future__ import annotations

import copy
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ExerciseFailed

__all__ = ["Case", "Verdict", "as_array", "compare_arrays", "leftover_hook_note", "run_cases"]

#: Default relative tolerance: a difference counts when it exceeds this fraction of the
#: reference's largest magnitude (plus a tiny absolute floor).
RTOL = 1e-4


@dataclass
class Case:
    """One test case of a checker.

    Attributes
    ----------
    name : str
        What the case is, in words ("7x9 map, 3x3 windows with stride 2 (they overlap)").
    args : tuple
        The student's function is called as ``fn(*args)`` (on a deep copy).
    expected : object
        The reference's answer.
    hint : str
        What to look at when this case differs and no known mistake matches.
    mistakes : callable, optional
        ``mistakes() -> {hint: answer}``: the answers of known wrong versions on this case,
        computed only when the student's answer differs.
    compare : callable, optional
        ``compare(got, expected) -> str | None``: a description of the difference, or ``None``
        when they agree; default :func:`compare_arrays`.
    """

    name: str
    args: tuple
    expected: object
    hint: str = ""
    mistakes: Callable[[], dict[str, object]] | None = None
    compare: Callable[[object, object], str | None] | None = None


@dataclass
class Verdict:
    """What a checker found.

    Attributes
    ----------
    exercise : str
        The exercise's title.
    status : {"passed", "not yet", "wrong", "error"}
    passed : bool
        ``status == "passed"``.
    cases : int
        How many cases the checker has.
    agreed : int
        How many cases agreed before the first one that did not (all of them when passed).
    case : str
        The case that differs or raised (empty when passed or not yet).
    detail : str
        What differs (the largest difference and where), or the exception.
    hint : str
        What to look at.
    notes : list of str
        Remarks that do not fail the check (a hook left on the model ...).
    covered : str
        What the cases cover, in a few words (said when the function passes).
    """

    exercise: str
    status: str
    cases: int
    agreed: int
    case: str = ""
    detail: str = ""
    hint: str = ""
    notes: list[str] = field(default_factory=list)
    covered: str = ""

    @property
    def passed(self) -> bool:
        """Whether every case agreed with the reference."""
        return self.status == "passed"

    def __bool__(self) -> bool:
        return self.passed

    def text(self) -> str:
        """The verdict as a few lines of text (what the checkers print)."""
        if self.status == "passed":
            lines = [f"PASSED {self.exercise}: your function agrees with the reference on all "
                     f"{self.cases} cases" + (f" ({self.covered})" if self.covered else "") + "."]
        elif self.status == "not yet":
            lines = [f"NOT YET {self.exercise}: your function is still a stub ({self.detail}). "
                     "Write it, then run this cell again."]
        else:
            what = "raised an error" if self.status == "error" else "differs from the reference"
            lines = [f"NOT YET {self.exercise}: {self.agreed} of {self.cases} cases agree; "
                     f"case {self.agreed + 1} {what}.",
                     f"  case: {self.case}",
                     f"  {self.detail}"]
            if self.hint:
                lines.append(f"  hint: {self.hint}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        return (f"Verdict(exercise={self.exercise!r}, status={self.status!r}, "
                f"agreed={self.agreed}/{self.cases})")


def as_array(value) -> np.ndarray | None:
    """A student's answer as a float64 numpy array (tensor, array, list or number), or ``None``
    when it cannot be read as numbers."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr


def _where(index: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(i) for i in index) + ")" if index else "(the value)"


def compare_arrays(got, expected, rtol: float = RTOL) -> str | None:
    """``None`` when ``got`` equals ``expected`` to ``rtol`` of the latter's largest magnitude,
    else one line saying how they differ (shape, or the largest difference and where).

    Leading dimensions of size 1 are forgiven (``[1, 1, H, W]`` for ``[H, W]``).
    """
    exp = as_array(expected)
    arr = as_array(got)
    if arr is None:
        return f"your function returned {type(got).__name__}, not an array of numbers"
    if arr.shape != exp.shape and arr.size == exp.size and \
            tuple(d for d in arr.shape if d != 1) == tuple(d for d in exp.shape if d != 1):
        arr = arr.reshape(exp.shape)
    if arr.shape != exp.shape:
        return f"your answer has shape {tuple(arr.shape)}, the reference {tuple(exp.shape)}"
    if not np.isfinite(arr).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        return f"your answer is not finite at {_where(bad)}: {arr[bad]}"
    scale = float(np.abs(exp).max()) if exp.size else 0.0
    err = np.abs(arr - exp)
    if exp.size == 0 or float(err.max()) <= rtol * scale + 1e-9:
        return None
    at = tuple(int(i) for i in np.unravel_index(int(err.argmax()), err.shape))
    return (f"largest difference {_num(err[at])} at {_where(at)}: yours {_num(arr[at])}, "
            f"expected {_num(exp[at])}" + (f" ({int((err > rtol * scale + 1e-9).sum())} of "
                                           f"{err.size} values differ)" if err.size > 1 else ""))


def _num(v) -> str:
    return f"{float(v):.4g}"


def _stub(got) -> bool:
    return got is None or got is Ellipsis




def _diagnose(case: Case, got) -> str:
    compare = case.compare or compare_arrays
    if case.mistakes is not None:
        for hint, answer in case.mistakes().items():
            if answer is not None and compare(got, answer) is None:
                return hint
    return case.hint


def _error_line(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if "zfwidgets/exercises" not in f.filename.replace("\\", "/")]
    where = f" (line {mine[-1].lineno}: {mine[-1].line})" if mine and mine[-1].line else ""
    return f"your function raised {type(exc).__name__}: {exc}{where}"


def run_cases(exercise: str, fn: Callable, cases: Sequence[Case], *, strict: bool = False,
              show: bool = True, covered: str = "",
              after: Callable[[tuple], str | None] | None = None) -> Verdict:
    """Call ``fn`` on every case, stop at the first that differs, and give the verdict.

    Parameters
    ----------
    exercise : str
        The exercise's title, for the verdict.
    fn : callable
        The student's function.
    cases : sequence of Case
        The checker's cases, in the order they are tried (simple ones first).
    strict : bool
        Raise :class:`~zfwidgets.errors.ExerciseFailed` with the verdict unless it passed.
    show : bool
        Print the verdict.
    covered : str
        What the cases cover, in a few words, for the verdict of a function that passes.
    after : callable, optional
        ``after(args) -> note or None``, run after each call on the (copied) arguments the
        function got (e.g. to find a hook the student left on a model).

    Returns
    -------
    Verdict
    """
    if not callable(fn):
        verdict = Verdict(exercise, "error", len(cases), 0, "(none)",
                          f"expected a function, got {type(fn).__name__}",
                          "pass the function itself, without calling it: check(my_function)")
        return _finish(verdict, strict, show)
    notes: list[str] = []
    for i, case in enumerate(cases):
        args = copy.deepcopy(case.args)        # the student's function cannot spoil a case
        try:
            got = fn(*args)
        except NotImplementedError:
            return _finish(Verdict(exercise, "not yet", len(cases), i,
                                   detail="it raises NotImplementedError"), strict, show)
        except Exception as exc:   # a student's bug is a verdict, not a crash
            return _finish(Verdict(exercise, "error", len(cases), i, case.name,
                                   _error_line(exc), case.hint, notes), strict, show)
        if after is not None:
            note = after(args)
            if note and note not in notes:
                notes.append(note)
        if _stub(got):
            return _finish(Verdict(exercise, "not yet", len(cases), i,
                                   detail=f"it returns {got!r}"), strict, show)
        difference = (case.compare or compare_arrays)(got, case.expected)
        if difference is not None:
            return _finish(Verdict(exercise, "wrong", len(cases), i, case.name, difference,
                                   _diagnose(case, got), notes), strict, show)
    return _finish(Verdict(exercise, "passed", len(cases), len(cases), notes=notes,
                           covered=covered), strict, show)


def _finish(verdict: Verdict, strict: bool, show: bool) -> Verdict:
    if show:
        print(verdict.text())
    if strict and not verdict.passed:
        raise ExerciseFailed(verdict.text())
    return verdict


def leftover_hook_note(args) -> str | None:
    """A note when the student's function left a hook on the model (``args[0]``), else ``None``
    (a checker's ``after=``)."""
    model = args[0]
    for m in model.modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or \
                getattr(m, "_full_backward_hooks", None):
            return ("your function left a hook on the model: keep the handle that "
                    "register_forward_hook returns and call handle.remove() (in a finally: "
                    "block), or a second call will hook the layer twice")
    return None
