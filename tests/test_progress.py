"""ptycho_fast.progress: the adapter over tqdm (quiet rules, stream, counts, description)."""

import io
import sys

from ptycho_fast.progress import Progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_disabled_prints_nothing_and_still_counts():
    stream = _Tty()  # even on a terminal: enabled=False is --quiet
    with Progress(10, "sim", enabled=False, stream=stream) as bar:
        for _ in range(4):
            bar.update(2)
        bar.desc = "sim loss 0.5"
    assert stream.getvalue() == ""
    assert bar.count == 8 and bar.total == 10 and bar.desc == "sim loss 0.5"


def test_default_is_quiet_off_a_terminal():
    stream = io.StringIO()  # isatty() is False
    with Progress(10, "sim", stream=stream) as bar:
        bar.update(10)
    assert not bar.enabled and stream.getvalue() == "" and bar.count == 10


def test_default_is_quiet_on_a_stream_without_isatty():
    class Sink:
        def __init__(self):
            self.text = ""

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    sink = Sink()
    with Progress(3, stream=sink) as bar:
        bar.update(3)
    assert not bar.enabled and sink.text == ""


def test_default_reports_on_a_terminal():
    stream = _Tty()
    with Progress(4, "infer", stream=stream, min_interval=0, unit="pat") as bar:
        bar.update(4)
    assert bar.enabled
    assert "infer:" in stream.getvalue() and "4/4" in stream.getvalue()


def test_enabled_reports_to_a_non_terminal():
    stream = io.StringIO()
    with Progress(10, "sim", enabled=True, stream=stream, min_interval=0, unit="pat") as bar:
        for _ in range(5):
            bar.update(2)
    text = stream.getvalue()
    assert "sim:" in text and "10/10" in text and "100%" in text and "pat/s" in text
    assert text.endswith("\n")  # closed: the final bar stays, on its own line
    assert bar.count == 10


def test_description_change_shows_on_the_next_redraw():
    stream = io.StringIO()
    with Progress(4, "epoch 1/2", enabled=True, stream=stream, min_interval=0) as bar:
        bar.update(1)
        bar.desc = "epoch 1/2 loss 0.125"
        bar.update(3)
    last = stream.getvalue().rstrip("\n").split("\r")[-1]
    assert last.startswith("epoch 1/2 loss 0.125:") and "4/4" in last


def test_min_interval_limits_redraws():
    stream = io.StringIO()
    with Progress(1000, enabled=True, stream=stream, min_interval=3600) as bar:
        for _ in range(1000):
            bar.update(1)
    # the initial bar and the final one on close; none in between
    assert stream.getvalue().count("\r") <= 3 and "1000/1000" in stream.getvalue()


def test_default_stream_is_stderr(capsys):
    with Progress(2, "x", enabled=True, min_interval=0) as bar:
        bar.update(2)
    out, err = capsys.readouterr()
    assert out == "" and "2/2" in err
    assert bar.stream is sys.stderr
