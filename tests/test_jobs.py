"""The one protocol for long work (zfwidgets.backend.jobs): steps, results, cancellation."""

import pytest

from zfwidgets.backend.jobs import Job, Step
from zfwidgets.errors import BadParameterError, Cancelled


def counting(n, log):
    try:
        total = 0
        for i in range(n):
            total += i
            log.append(i)
            yield Step(i + 1, n, note=f"sum {total}")
        return total
    finally:
        log.append("finally")


def test_run_returns_the_generators_value_and_reports_every_step():
    log, seen = [], []
    job = Job(counting(4, log), what="counting", unit="item")
    assert job.run(progress=False, on_step=seen.append) == 0 + 1 + 2 + 3
    assert [s.done for s in seen] == [1, 2, 3, 4] and {s.total for s in seen} == {4}
    assert seen[-1].note == "sum 6" and seen[-1].fraction == 1.0
    assert log == [0, 1, 2, 3, "finally"] and job.done and job.result == 6


def test_step_by_step_like_an_event_loop():
    job = Job(counting(3, []), what="counting")
    steps = []
    while (step := job.step()) is not None:
        steps.append(step.done)
    assert steps == [1, 2, 3] and job.result == 3
    assert job.step() is None  # finished jobs stay finished


def test_should_stop_closes_the_generator_and_raises_cancelled():
    log = []
    job = Job(counting(100, log), what="counting", unit="item")
    with pytest.raises(Cancelled, match="counting was cancelled after 3 of 100 item"):
        job.run(progress=False, should_stop=lambda: len(log) >= 3)
    assert log == [0, 1, 2, "finally"]  # the generator's finally ran: nothing half-done
    with pytest.raises(BadParameterError, match="cancelled"):
        job.result


def test_close_before_the_end_runs_finally_and_leaves_no_result():
    log = []
    job = Job(counting(10, log), what="counting")
    job.step()
    job.close()
    assert log == [0, "finally"] and job.step() is None
    with pytest.raises(BadParameterError):
        job.result


def test_an_error_inside_the_job_propagates_and_closes_it():
    def failing():
        yield Step(1, 2)
        raise ValueError("boom")

    job = Job(failing(), what="failing")
    with pytest.raises(ValueError, match="boom"):
        job.run(progress=False)
    assert job.closed and not job.done


def test_the_progress_bar_follows_the_steps(monkeypatch):
    import tqdm.auto

    bars = []

    class Recorder:
        def __init__(self, total, desc, unit, **kwargs):
            self.total, self.desc, self.unit, self.n, self.notes = total, desc, unit, 0, []
            self.closed = False
            bars.append(self)

        def update(self, k):
            self.n += k

        def set_postfix_str(self, text, refresh=True):
            self.notes.append(text)

        def close(self):
            self.closed = True

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    assert Job(counting(5, []), what="counting", unit="item").run(progress=True) == 10
    (bar,) = bars
    assert (bar.desc, bar.unit, bar.total, bar.n, bar.closed) == ("counting", "item", 5, 5, True)
    assert bar.notes[-1] == "sum 10"
    assert Job(counting(5, []), what="quiet").run(progress=False) == 10 and len(bars) == 1


def test_a_generator_must_yield_steps():
    def wrong():
        yield (1, 2)

    with pytest.raises(TypeError, match="not a Step"):
        Job(wrong(), what="wrong").run(progress=False)
    with pytest.raises(BadParameterError):
        Job([Step(1, 1)], what="a list")
