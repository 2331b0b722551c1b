"""core.progress: one cancel path (Progress.step), as_progress, the tqdm terminal bar."""
import io

import pytest

from core.errors import Cancelled
from core.host import HOST
from core.progress import Progress, TerminalBar, as_progress


def test_step_checks_the_host_then_calls_the_callback(monkeypatch):
    events = []
    monkeypatch.setattr(HOST, "check_interrupt", lambda: events.append("check"))
    bar = Progress(3, lambda done, total, *preview: events.append((done, total, *preview)))
    bar.step()
    bar.step(preview="img")
    bar.step(5)  # clamped at the total
    assert events == ["check", (1, 3), "check", (2, 3, "img"), "check", (3, 3)]

    def interrupt():
        raise Cancelled("interrupted")

    monkeypatch.setattr(HOST, "check_interrupt", interrupt)
    called = []
    with pytest.raises(Cancelled, match="interrupted"):
        Progress(2, lambda *a: called.append(a)).step()
    assert called == []  # the host's cancel comes before the callback


def test_as_progress_shares_a_given_progress():
    outer = Progress(6)
    assert as_progress(outer, 3) is outer           # a nested loop counts into the caller's total
    calls = []
    inner = as_progress(lambda d, t: calls.append((d, t)), 3)
    assert isinstance(inner, Progress) and inner.total == 3
    inner.step()
    assert calls == [(1, 3)]
    quiet = as_progress(None, 0)                    # no callback: still a Progress (cancel checks), total >= 1
    assert quiet.total == 1 and quiet.callback is None


def test_terminal_bar_is_tqdm_on_the_stream_and_closes_at_the_end():
    out = io.StringIO()
    bar = TerminalBar("  Render", stream=out)
    for done in range(1, 5):
        bar(done, 4, preview=object())
    text = out.getvalue()
    assert "Render" in text and "4/4" in text and text.endswith("\n")  # closed: the line is finished
    assert bar._bar is None
    # a second loop through the same callback starts a new bar; a growing total (a download) is followed
    bar(1, 2)
    bar(3, 5)
    assert bar._bar is not None and bar._bar.total == 5 and bar._bar.n == 3
    bar(5, 5)
    assert bar._bar is None and out.getvalue().count("\n") == 2 and "5/5" in out.getvalue()


def test_terminal_bar_writes_to_stderr_by_default(capsys):
    bar = TerminalBar("  weights")
    bar(2, 2)
    captured = capsys.readouterr()
    assert "weights" in captured.err and "2/2" in captured.err and captured.out == ""
