"""The widgets' background runner without a browser: an asyncio loop drives small jobs."""

from __future__ import annotations

import asyncio
import time

import pytest

from zfwidgets.backend.jobs import Job, Step
from zfwidgets.widgets.base import ErrorBox, View
from zfwidgets.widgets.runner import Latest, Runner


class FakeSession:
    """What a runner and a view need of a session: a version and change listeners."""

    def __init__(self):
        self.version = 0
        self.listeners = []

    def on_change(self, callback):
        self.listeners.append(callback)

    def off_change(self, callback):
        if callback in self.listeners:
            self.listeners.remove(callback)


def counting(n, log, name="job", fail_at=None, skipped=0):
    """A job of ``n`` steps; ``log`` records what ran, including the ``finally``."""
    def steps():
        try:
            for i in range(n):
                if i == fail_at:
                    raise RuntimeError(f"{name} broke at {i}")
                log.append((name, i))
                yield Step(i + 1, n, note=f"{skipped} skipped" if skipped else "")
            return f"{name} result"
        finally:
            log.append((name, "closed"))
    return Job(steps(), what=name, unit="item")


class Recorder:
    """A runner (with an error box) whose callbacks record what came, in order."""

    def __init__(self, session=None, **kwargs):
        self.events = []
        self.errors = ErrorBox()
        self.runner = Runner(session, errors=self.errors, on_step=self.step, on_end=self.end,
                             **kwargs)

    def start(self, job):
        self.runner.start(job, on_done=self.done)
        return job

    def step(self, step):
        self.events.append(("step", step.done, step.total, step.note))

    def end(self, job):
        self.events.append(("end", job.what))

    def done(self, result):
        self.events.append(("done", result))


async def turns(n):
    """Let the event loop turn ``n`` times."""
    for _ in range(n):
        await asyncio.sleep(0)


def test_steps_arrive_over_several_loop_turns():
    rec, log = Recorder(), []

    async def scenario():
        job = rec.start(counting(3, log, skipped=2))
        assert rec.runner.running and rec.runner.job is job
        assert log == [] and rec.events == []          # nothing before the loop turns
        await turns(1)
        assert log == [("job", 0)]                     # one step per turn
        assert rec.events == [("step", 1, 3, "2 skipped")]
        await turns(1)
        assert log == [("job", 0), ("job", 1)]
        await turns(3)

    asyncio.run(scenario())
    assert rec.events == [("step", 1, 3, "2 skipped"), ("step", 2, 3, "2 skipped"),
                          ("step", 3, 3, "2 skipped"), ("end", "job"), ("done", "job result")]
    assert log[-1] == ("job", "closed") and not rec.runner.running
    assert rec.errors.message == ""


def test_a_newer_job_closes_the_older():
    rec, log = Recorder(), []

    async def scenario():
        old = rec.start(counting(50, log, "old"))
        await turns(2)
        new = rec.start(counting(2, log, "new"))
        assert old.closed and not old.done             # closed at once, half way
        assert ("old", "closed") in log
        await turns(5)
        return new

    new = asyncio.run(scenario())
    assert [e for e in log if e[0] == "old"] == [("old", 0), ("old", 1), ("old", "closed")]
    assert new.done and new.result == "new result"
    # the superseded job hands the display on: no "end" and no result of its own
    assert rec.events == [("step", 1, 50, ""), ("step", 2, 50, ""),
                          ("step", 1, 2, ""), ("step", 2, 2, ""),
                          ("end", "new"), ("done", "new result")]


def test_an_error_goes_to_the_error_box():
    rec, log = Recorder(), []

    async def scenario():
        rec.start(counting(5, log, "bad", fail_at=2))
        await turns(6)

    asyncio.run(scenario())
    assert rec.errors.message == "RuntimeError: bad broke at 2"
    assert rec.errors.layout.display is None and "RuntimeError" in rec.errors.details
    assert rec.events == [("step", 1, 5, ""), ("step", 2, 5, ""), ("end", "bad")]
    assert log[-1] == ("bad", "closed") and not rec.runner.running


def test_a_job_whose_session_changed_is_dropped():
    session = FakeSession()
    rec, log = Recorder(session), []

    async def scenario():
        job = rec.start(counting(10, log, "stale"))
        await turns(1)
        session.version += 1                           # a new image while the job runs
        await turns(4)
        assert job.closed and not rec.runner.running
        rec.start(counting(1, log, "fresh"))           # the next one runs
        await turns(3)

    asyncio.run(scenario())
    assert [e for e in log if e[0] == "stale"] == [("stale", 0), ("stale", "closed")]
    assert rec.events == [("step", 1, 10, ""), ("end", "stale"),
                          ("step", 1, 1, ""), ("end", "fresh"), ("done", "fresh result")]
    assert rec.errors.message == ""


def test_cancel_stops_the_job_and_ends_it():
    rec, log = Recorder(), []

    async def scenario():
        job = rec.start(counting(10, log, "long"))
        await turns(1)
        rec.runner.cancel()                            # a cancel button
        await turns(3)
        return job

    job = asyncio.run(scenario())
    assert job.closed and not rec.runner.running
    assert log == [("long", 0), ("long", "closed")]
    assert rec.events == [("step", 1, 10, ""), ("end", "long")]


def test_without_a_loop_the_job_runs_at_once():
    rec, log = Recorder(FakeSession()), []
    rec.start(counting(3, log))
    assert rec.events == [("step", 1, 3, ""), ("step", 2, 3, ""), ("step", 3, 3, ""),
                          ("end", "job"), ("done", "job result")]
    assert not rec.runner.running and log[-1] == ("job", "closed")

    rec.events.clear()                                 # errors: shown, the runner free again
    rec.start(counting(3, log, "bad", fail_at=1))
    assert rec.errors.message == "RuntimeError: bad broke at 1" and not rec.runner.running
    assert rec.events == [("step", 1, 3, ""), ("end", "bad")]

    with pytest.raises(RuntimeError, match="broke at 0"):   # no error box: raised
        Runner().start(counting(2, [], "loud", fail_at=0))


def test_at_once_a_newer_job_started_from_a_step_wins():
    log, results = [], []
    runner = Runner(errors=ErrorBox())

    def on_step(step):
        if step.done == 2 and runner.job.what == "first":
            runner.start(counting(2, log, "second"), on_done=results.append)

    runner.on_step = on_step
    first = counting(5, log, "first")
    runner.start(first, on_done=results.append)
    assert first.closed and not first.done
    assert results == ["second result"] and not runner.running


def test_background_false_runs_at_once_inside_a_loop():
    rec = Recorder(background=False)

    async def scenario():
        rec.start(counting(2, []))
        return list(rec.events)

    assert asyncio.run(scenario())[-1] == ("done", "job result")


def test_a_failing_callback_shows_its_error():
    rec = Recorder()

    def show(result):
        raise ValueError(f"cannot draw {result}")

    rec.runner.start(counting(1, []), on_done=show)
    assert rec.errors.message == "ValueError: cannot draw job result"
    assert rec.events[-1] == ("end", "job")


def test_a_view_stops_its_runner_when_closed():
    session = FakeSession()
    rec, log = Recorder(), []

    async def scenario():
        view = View(session)
        view.listen()
        runner = view.new_runner(on_step=rec.step, on_end=rec.end)
        assert runner.session is session and runner.errors is view.errors
        job = counting(10, log, "view job")
        runner.start(job, on_done=rec.done)
        await turns(1)
        view.close()
        await turns(3)
        return job

    job = asyncio.run(scenario())
    assert job.closed and session.listeners == []
    assert rec.events == [("step", 1, 10, "")]         # closed without calling back


def test_a_paused_job_waits_between_steps_and_resumes():
    rec, log = Recorder(), []

    async def scenario():
        job = rec.start(counting(5, log, "slow"))
        await turns(2)
        rec.runner.pause()                             # its view was hidden
        await turns(5)
        assert log == [("slow", 0), ("slow", 1)] and rec.runner.running and not job.done
        rec.runner.resume()                            # shown again: goes on where it stopped
        await turns(6)
        return job

    job = asyncio.run(scenario())
    assert job.done and [e for e in log if e[1] != "closed"] == [("slow", i) for i in range(5)]
    assert rec.events[-2:] == [("end", "slow"), ("done", "slow result")]


def test_a_paused_job_whose_session_changed_is_dropped_and_start_resumes():
    session = FakeSession()
    rec, log = Recorder(session), []

    async def scenario():
        stale = rec.start(counting(5, log, "stale"))
        await turns(1)
        rec.runner.pause()
        await turns(2)
        session.version += 1                           # a new image while it waited
        rec.runner.resume()
        await turns(2)
        assert stale.closed and not rec.runner.running
        rec.runner.pause()
        rec.start(counting(2, log, "asked"))           # starting a job is asking for it
        assert not rec.runner.paused
        await turns(4)

    asyncio.run(scenario())
    assert [e for e in log if e[0] == "stale"] == [("stale", 0), ("stale", "closed")]
    assert rec.events[-2:] == [("end", "asked"), ("done", "asked result")]


def test_at_once_runs_to_the_end_inside_a_loop():
    rec = Recorder()

    async def scenario():
        rec.runner.start(counting(3, []), on_done=rec.done, at_once=True)
        return list(rec.events)

    assert asyncio.run(scenario())[-1] == ("done", "job result")


def test_a_hidden_view_pauses_its_runners():
    from zfwidgets.widgets.base import set_shown
    import ipywidgets as W

    session, log = FakeSession(), []

    async def scenario():
        view = View(session)
        runner = view.new_runner()
        job = counting(6, log, "view job")
        runner.start(job)
        await turns(1)
        tabs = W.Tab(children=[W.VBox([view]), W.VBox()])
        tabs.selected_index = 1                        # its page is not selected
        set_shown(tabs, True)
        assert not view.shown and runner.paused
        await turns(4)
        assert job.last.done == 1
        tabs.selected_index = 0
        set_shown(tabs, True)
        assert view.shown and not runner.paused
        await turns(8)
        view.close()
        return job

    assert asyncio.run(scenario()).done


def test_latest_runs_at_once_when_idle_and_only_the_newest_of_a_burst():
    calls = []
    latest = Latest(delay=0.05)
    latest(lambda: calls.append("now"))                # no loop: at once
    assert calls == ["now"]

    def busy():
        calls.append("first")
        time.sleep(0.02)                               # the kernel computes for a while

    async def burst():
        latest(busy)                                   # the kernel was idle: at once
        assert calls == ["now", "first"]
        for k in range(4):                             # queued up while it computed
            latest(lambda k=k: calls.append(k))
        assert calls == ["now", "first"]
        await asyncio.sleep(0.2)
        assert calls == ["now", "first", 3]            # only the newest of them
        latest(lambda: calls.append("idle again"))     # at once again
        assert calls[-1] == "idle again"

    asyncio.run(burst())
    assert calls == ["now", "first", 3, "idle again"]


def _waiting_canvas(monkeypatch, out):
    """A canvas as a kernel has it (a front end can answer), whose messages land in ``out``."""
    import json

    from zfwidgets.widgets import canvas as canvas_module

    ours, real = [], canvas_module._without_front_end   # other tests' canvases stay as they are
    monkeypatch.setattr(canvas_module, "_without_front_end",
                        lambda canvas: all(canvas is not c for c in ours) and real(canvas))
    fig = canvas_module.canvas_figure(2.0, 1.5, dpi=50)
    ours.append(fig.canvas)
    fig.add_axes((0, 0, 1, 1)).plot([0, 1], [1, 0])
    fig.canvas.send = lambda content, buffers=None: out.append(
        json.loads(content["data"])["type"])
    return fig


def test_frame_due_rules(monkeypatch):
    """No frame waiting: 0. A canvas no browser greeted yet: HELLO_WAIT from when it was made;
    a connected one: FRAME_WAIT from the first change not yet sent; the frame sent: 0 again.
    A canvas that no browser can ever ask (no kernel) never holds a job up."""
    from zfwidgets.widgets import canvas as canvas_module
    from zfwidgets.widgets.canvas import FRAME_WAIT, HELLO_WAIT, close_figure, frames_due

    out = []
    fig = _waiting_canvas(monkeypatch, out)
    canvas = fig.canvas
    assert frames_due() == 0.0                          # nothing drawn: nothing waits
    canvas.draw_idle()                                  # its first picture, before any hello
    assert out == ["draw"]                              # (asks the browser to ask)
    assert frames_due() == pytest.approx(canvas._made + HELLO_WAIT)   # before the browser's hello
    canvas.syncing_data_url = False                     # the browser's view said "initialized"
    assert frames_due() == pytest.approx(canvas._wanted_since + FRAME_WAIT)
    canvas._handle_message(canvas, {"type": "draw"}, [])   # it asks: the frame goes
    assert "binary" in out and frames_due() == 0.0      # nothing waits
    canvas.draw_idle()                                  # not asked again since: the next waits
    since = canvas._wanted_since
    assert frames_due() == pytest.approx(since + FRAME_WAIT) and frames_due() > time.monotonic()
    time.sleep(0.01)
    canvas.draw_idle()                                  # a second change: the wait does not grow
    assert canvas._wanted_since == since
    canvas._handle_message(canvas, {"type": "draw"}, [])   # it asks: the frame goes
    assert frames_due() == 0.0
    canvas._handle_message(canvas, {"type": "draw"}, [])   # the answer to the frame's ping
    canvas.draw_idle()                                  # ready: the frame goes at once
    assert out[-2:] == ["binary", "draw"]
    assert frames_due() == 0.0
    close_figure(fig)                                   # closed: not counted any more
    assert frames_due() == 0.0
    monkeypatch.undo()                                  # no kernel: a dummy comm, never waits
    other = canvas_module.canvas_figure(1.0, 1.0, dpi=50)
    other.canvas.draw_idle()
    assert other.canvas._wanted and frames_due() == 0.0
    close_figure(other)


def test_a_job_waits_for_a_frame_the_browser_is_about_to_ask_for(monkeypatch):
    """While a changed figure's frame waits for the browser's request, the runner lets the
    event loop answer it before the next step; once the frame is out, the job goes on."""
    from zfwidgets.widgets.canvas import close_figure

    rec, log, out = Recorder(), [], []
    fig = _waiting_canvas(monkeypatch, out)
    canvas = fig.canvas
    canvas.syncing_data_url = False                     # connected, and painted:
    canvas.draw_idle()
    canvas._handle_message(canvas, {"type": "draw"}, [])   # its ping not answered yet
    assert out[-2:] == ["binary", "draw"]
    del out[:]

    async def scenario():
        rec.start(counting(3, log, "stages"))
        await turns(1)
        assert log == [("stages", 0)]
        canvas.draw_idle()                              # a stage drawn: its frame waits
        await asyncio.sleep(0.1)
        assert log == [("stages", 0)]                   # no step while the browser may ask
        canvas._handle_message(canvas, {"type": "draw"}, [])   # it asks: the frame goes out
        for _ in range(100):
            await asyncio.sleep(0.01)
            if rec.events and rec.events[-1][0] == "done":
                break

    asyncio.run(scenario())
    assert "binary" in out
    assert [e for e in log if e[1] != "closed"] == [("stages", i) for i in range(3)]
    assert rec.events[-1] == ("done", "stages result")
    close_figure(fig)


def test_a_frame_nobody_asks_for_holds_a_job_up_only_for_its_bound(monkeypatch):
    """A canvas whose browser never says hello (never shown, or gone) delays the next step by
    HELLO_WAIT from when it was made, once: the job finishes all the same."""
    from zfwidgets.widgets import canvas as canvas_module
    from zfwidgets.widgets.canvas import close_figure

    monkeypatch.setattr(canvas_module, "HELLO_WAIT", 0.3)
    rec, log, out = Recorder(), [], []
    fig = _waiting_canvas(monkeypatch, out)
    fig.canvas.draw_idle()                              # its first frame waits for a hello

    async def scenario():
        start = time.monotonic()
        rec.start(counting(3, log, "alone"))
        await asyncio.sleep(0.1)
        assert log == []                                # within the bound: waits
        for _ in range(200):
            await asyncio.sleep(0.01)
            if rec.events and rec.events[-1][0] == "done":
                break
        return time.monotonic() - start

    waited = asyncio.run(scenario())
    assert rec.events[-1] == ("done", "alone result") and waited >= 0.25
    assert "binary" not in out and fig.canvas._wanted  # the frame never went: nobody asked
    close_figure(fig)
