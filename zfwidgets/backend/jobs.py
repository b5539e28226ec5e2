"""The one protocol for long work: a job is a generator of progress steps.

Occlusion sweeps, mining, gradient ascent and feature evolution each take seconds to minutes.
Each is written once, as a generator function that ``yield``\\ s a :class:`Step` after every
unit of work (a batch, an ascent step, a snapshot) and ``return``\\ s its result. Wrapped in a
:class:`Job`, the same generator is

* run to the end by :meth:`Job.run`, the one driver of progress bars (``tqdm.auto``), progress
  callbacks and cancellation, which the plain functions (``zf.mine``, ``Session.occlusion``,
  ``zf.ascent`` ...) call; or
* advanced one step at a time by :meth:`Job.step` from an event loop (the widgets' background
  runner, :mod:`zfwidgets.widgets.runner`), so a page stays live and a newer request can drop
  an older job between two steps.

Closing a job (:meth:`Job.close`, or a cancellation) closes its generator: its ``finally``
blocks run (mining keeps a checkpoint there), and nothing is left half-done.

A new long computation becomes a live widget by writing one generator::

    def my_steps(session, n):
        acc = 0
        for i in range(n):
            acc += expensive(i)
            yield Step(i + 1, n)
        return acc

    result = Job(my_steps(session, 100), what="my experiment", unit="item").run()
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..errors import BadParameterError, Cancelled

__all__ = ["Job", "Step"]

R = TypeVar("R")


@dataclass(frozen=True)
class Step:
    """Where a job stands after one unit of work.

    Attributes
    ----------
    done : int
        Units finished so far (a resumed job may start above 0).
    total : int
        Units in all.
    note : str
        A short status shown beside the progress bar (``"3 skipped"``, ``"objective 1.2"``).
    partial : object
        An intermediate result worth drawing while the job goes on (a coarse occlusion map),
        else ``None``.
    """

    done: int
    total: int
    note: str = ""
    partial: Any = None

    @property
    def fraction(self) -> float:
        """``done / total`` in [0, 1] (1 for an empty job)."""
        return 1.0 if self.total <= 0 else min(1.0, max(0.0, self.done / self.total))


class Job(Generic[R]):
    """A long computation: a generator of :class:`Step` whose return value is the result.

    Parameters
    ----------
    steps : generator
        Yields :class:`Step` objects and returns the result.
    what : str
        What the job does, for progress bars and messages (``"occlusion 32px/8"``).
    unit : str
        What one step counts (``"pos"``, ``"img"``, ``"step"``).

    Attributes
    ----------
    last : Step or None
        The latest step.
    done : bool
        Whether the generator has returned (then :attr:`result` holds its value).
    result : object
        The job's result once :attr:`done`.
    """

    def __init__(self, steps: Generator[Step, None, R], *, what: str, unit: str = "step"):
        if not hasattr(steps, "send") or not hasattr(steps, "close"):
            raise BadParameterError(f"a Job needs a generator of Step, got {type(steps).__name__}")
        self._steps = steps
        self.what = str(what)
        self.unit = str(unit)
        self.last: Step | None = None
        self.done = False
        self.closed = False
        self._result: Any = None

    @property
    def result(self) -> R:
        """The value the generator returned; ``BadParameterError`` before it has."""
        if not self.done:
            state = "was cancelled" if self.closed else "is not finished"
            raise BadParameterError(f"{self.what} {state}: no result yet")
        return self._result

    def step(self) -> Step | None:
        """Advance by one unit of work.

        Returns
        -------
        Step or None
            The new step, or ``None`` once the job has finished (its result is then in
            :attr:`result`) or was closed.
        """
        if self.done or self.closed:
            return None
        try:
            step = next(self._steps)
        except StopIteration as stop:
            self.done = True
            self._result = stop.value
            return None
        except BaseException:
            self.closed = True
            raise
        if not isinstance(step, Step):
            self.close()
            raise TypeError(f"{self.what} yielded {type(step).__name__}, not a Step")
        self.last = step
        return step

    def close(self) -> None:
        """Stop the job now: its generator's ``finally`` blocks run; no result follows."""
        if not self.done and not self.closed:
            self.closed = True
            self._steps.close()

    def cancelled(self) -> Cancelled:
        """The :class:`~zfwidgets.Cancelled` error that says where this job stopped."""
        where = "" if self.last is None else \
            f" after {self.last.done} of {self.last.total} {self.unit}"
        return Cancelled(f"{self.what} was cancelled{where}")

    def run(self, *, progress: bool = True, on_step: Callable[[Step], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> R:
        """Run the job to the end (the one driver of bars, callbacks and cancellation).

        Parameters
        ----------
        progress : bool
            Show a ``tqdm.auto`` bar (opened at the first step, so a resumed job starts where
            it left off).
        on_step : callable, optional
            Called with every :class:`Step`.
        should_stop : callable, optional
            Checked before every step; when it returns true the job is closed and
            :class:`~zfwidgets.Cancelled` is raised.

        Returns
        -------
        object
            The job's result.

        Raises
        ------
        Cancelled
            ``should_stop`` asked to stop (or a ``KeyboardInterrupt`` is passed on as is,
            after the job was closed).
        """
        bar = None
        try:
            while True:
                if should_stop is not None and should_stop():
                    self.close()
                    raise self.cancelled()
                step = self.step()
                if step is None:
                    break
                if progress:
                    bar = _advance(bar, step, self.what, self.unit)
                if on_step is not None:
                    on_step(step)
        except BaseException:
            self.close()
            raise
        finally:
            if bar is not None:
                bar.close()
        return self.result


def _advance(bar, step: Step, what: str, unit: str):
    if bar is None:
        from tqdm.auto import tqdm

        bar = tqdm(total=step.total, desc=what, unit=unit, leave=False, dynamic_ncols=True)
    if bar.total != step.total:
        bar.total = step.total
    if step.note:
        bar.set_postfix_str(step.note, refresh=False)
    bar.update(step.done - bar.n)
    return bar
