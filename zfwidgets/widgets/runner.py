"""Work scheduled on the kernel's event loop: long jobs a step per turn, bursts of calls collapsed.

* :class:`Runner` runs one :class:`~zfwidgets.backend.jobs.Job` at a time in the background of a
  Jupyter kernel: one ``job.step()`` per turn of the kernel's asyncio event loop, so the page
  stays live (sliders move, canvases repaint, a cancel button is heard) while an occlusion
  sweep or a mining pass goes on. The newest job wins: starting another closes the one running,
  and a job whose session changed under it is dropped, so no stale result is ever shown.
* A runner can be paused (its view was hidden: nothing computes for a view nobody sees) and
  resumed (shown again): the job waits between two steps, and starting a job resumes it.
* Before each step the runner lets the frames of changed figures out: while a canvas waits for
  the browser to ask for its frame (:func:`~zfwidgets.widgets.canvas.frames_due`, bounded), the
  event loop answers the browser instead of stepping, so a stage drawn is painted at once.
* :class:`Latest` runs only the newest of quickly repeated UI requests (clicks in a burst).

Without a running event loop (plain Python, scripts, tests) both act at once: a job runs to the
end inside :meth:`Runner.start`, a call runs inside ``Latest.__call__``.

A long computation becomes a live widget with a generator (see :mod:`zfwidgets.backend.jobs`)
and a runner::

    self.runner = self.new_runner(on_step=self._progress, on_end=self._hide_progress)
    ...
    self.runner.start(Job(my_steps(self.session, n), what="my experiment"),
                      on_done=self._show)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ..backend.jobs import Job, Step
from ..errors import Cancelled
from .canvas import frames_due

__all__ = ["Latest", "Runner", "running_loop"]

_FRAME_POLL = 0.01   # seconds between two looks at the frames waiting for the browser


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running now (a Jupyter kernel's), or ``None`` (plain Python)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Runner:
    """Run one long job at a time from the kernel's event loop; the newest job wins.

    Parameters
    ----------
    session : zfwidgets.Session, optional
        A job is dropped (closed, no result) when ``session.version`` changes while it runs:
        its result would describe an image or model no longer shown.
    errors : ErrorBox, optional
        Where a failing job (or a failing callback) shows its error. Without one the error is
        raised (from :meth:`start` when the job runs at once, else into the event loop).
    on_step : callable, optional
        ``on_step(step)`` with each :class:`~zfwidgets.backend.jobs.Step` (a progress bar;
        ``step.note`` carries notes such as ``"3 skipped"``).
    on_end : callable, optional
        ``on_end(job)`` once a job stops for any reason but being superseded (finished, failed,
        cancelled, dropped), before ``on_done`` or the error: hide the progress bar there,
        enable the start button again. A superseded job hands the display on to the newer one.
    background : bool, optional
        ``False``: every job runs at once, even in a kernel. Default (``None`` or ``True``):
        step jobs from the event loop when one is running, run them at once when not.

    Attributes
    ----------
    job : Job or None
        The job running now (or waiting, while the runner is paused).
    paused : bool
        While true no step runs (see :meth:`pause`).
    """

    def __init__(self, session=None, *, errors=None,
                 on_step: Callable[[Step], Any] | None = None,
                 on_end: Callable[[Job], Any] | None = None, background: bool | None = None):
        self.session = session
        self.errors = errors
        self.on_step = on_step
        self.on_end = on_end
        self.background = background
        self.job: Job | None = None
        self._on_done: Callable[[Any], Any] | None = None
        self._version = None
        self._handle: asyncio.Handle | None = None
        self.paused = False
        self._parked: Job | None = None  # the job that stopped between two steps for a pause

    @property
    def running(self) -> bool:
        """Whether a job is running (started, not finished, cancelled or dropped)."""
        return self.job is not None

    def start(self, job: Job, *, on_done: Callable[[Any], Any] | None = None,
              at_once: bool = False) -> None:
        """Run ``job``, closing the one running (it is superseded: no result, no ``on_end``).

        Starting a job is asking for it: a paused runner resumes.

        Parameters
        ----------
        job : Job
        on_done : callable, optional
            ``on_done(result)`` once the job has finished (after ``on_end``).
        at_once : bool
            Run the job to the end before returning, even inside a running event loop (a
            blocking call such as ``PatchGallery.mine_now``).
        """
        self._supersede()
        self.paused = False
        self.job, self._on_done = job, on_done
        self._version = None if self.session is None else self.session.version
        loop = running_loop() if self.background is not False and not at_once else None
        if loop is None:
            self._run_now(job)
        else:
            self._handle = loop.call_soon(self._turn, job)

    def pause(self) -> None:
        """Stop stepping: the running job waits between two steps until :meth:`resume` (or a
        newer :meth:`start`). Its session is still watched: a job whose session changed while
        it waited is dropped when it resumes."""
        self.paused = True

    def resume(self) -> None:
        """Step again after :meth:`pause` (a job that waited goes on where it stopped)."""
        self.paused = False
        job, self._parked = self._parked, None
        if job is None or job is not self.job or self._handle is not None:
            return
        loop = running_loop() if self.background is not False else None
        if loop is None:
            self._run_now(job)  # the loop that stepped it is gone: finish it here
        else:
            self._handle = loop.call_soon(self._turn, job)

    def cancel(self) -> None:
        """Stop the running job (its generator's ``finally`` blocks run); ``on_end`` follows."""
        job = self.job
        if job is not None:
            self._supersede()
            self._call(self.on_end, job)

    def close(self) -> None:
        """Stop the running job without calling back (the view that owns the runner closes)."""
        self._supersede()
        self._on_done = None

    # ------------------------------------------------------------------ driving
    def _supersede(self) -> None:
        job, self.job = self.job, None
        self._parked = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if job is not None:
            job.close()

    def _stale(self, job: Job) -> bool:
        return job is not self.job or (self.session is not None
                                       and self.session.version != self._version)

    def _run_now(self, job: Job) -> None:
        try:
            result = job.run(progress=False, on_step=self._report,
                             should_stop=lambda: self._stale(job))
        except Cancelled:
            self._stop(job)
        except Exception as exc:
            self._stop(job, exc)
        except BaseException:  # KeyboardInterrupt: the job is closed, the runner free again
            self._stop(job)
            raise
        else:
            self._finish(job, result)

    def _turn(self, job: Job) -> None:
        """One turn of the event loop: one step of ``job`` (unless superseded or stale)."""
        self._handle = None
        if self._stale(job):
            self._stop(job)
            return
        if self.paused:
            self._parked = job  # resume() steps it again
            return
        if frames_due() > time.monotonic():   # a frame waits for the browser: answer it first
            self._handle = asyncio.get_running_loop().call_later(_FRAME_POLL, self._turn, job)
            return
        try:
            step = job.step()
        except Cancelled:
            self._stop(job)
            return
        except Exception as exc:
            self._stop(job, exc)
            return
        if step is None:
            if job.done:
                self._finish(job, job.result)
            else:
                self._stop(job)
            return
        self._report(step)
        if job is self.job:  # the callback may have started a newer job or cancelled this one
            self._handle = asyncio.get_running_loop().call_soon(self._turn, job)

    def _report(self, step: Step) -> None:
        self._call(self.on_step, step)

    def _finish(self, job: Job, result) -> None:
        on_done = self._on_done
        if self._stop(job):
            self._call(on_done, result)

    def _stop(self, job: Job, error: BaseException | None = None) -> bool:
        """End ``job`` unless a newer one took over; whether it was still the current one."""
        if job is not self.job:
            return False  # superseded: the newer job owns the display
        job.close()
        self.job, self._on_done = None, None
        self._call(self.on_end, job)
        if error is not None:
            self._show(error)
        return True

    def _call(self, callback, *args) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception as exc:
            self._show(exc)

    def _show(self, exc: BaseException) -> None:
        if self.errors is None:
            raise exc
        self.errors.show(exc)


class Latest:
    """Run only the newest of quickly repeated UI requests (clicks arriving in a burst).

    Inside a running kernel a call that comes while the kernel is idle runs at once (no
    delay between a click and its reaction). A call that comes less than ``delay`` seconds
    after the previous one finished (it queued up while that one was computing) waits
    ``delay`` seconds on the event loop and is cancelled by a newer one: clicks that queued up
    while a projection was computing collapse into the last one. Without an event loop
    (scripts, tests) the call runs at once.

    Parameters
    ----------
    delay : float
        Seconds after a call finished during which a new call waits for a newer one.
    """

    def __init__(self, delay: float = 0.03):
        self.delay = delay
        self._handle = None
        self._finished = float("-inf")

    def __call__(self, fn: Callable[[], Any]) -> None:
        loop = running_loop()
        if loop is None:
            fn()
            return
        pending = self._handle is not None
        self.cancel()
        if not pending and loop.time() - self._finished >= self.delay:
            self._run(fn)
        else:
            self._handle = loop.call_later(self.delay, self._run, fn)

    def _run(self, fn: Callable[[], Any]) -> None:
        self._handle = None
        try:
            fn()
        finally:
            loop = running_loop()
            self._finished = loop.time() if loop is not None else float("-inf")

    def cancel(self) -> None:
        """Forget the call waiting, if any."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
