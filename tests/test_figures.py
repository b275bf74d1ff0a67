"""figures: every series passed to a loss-curve figure is drawn."""

from __future__ import annotations

import io

from PIL import Image

from ptycho_fast import figures


def test_loss_curve_draws_every_series(monkeypatch):
    drawn = []
    real_plot = None

    import matplotlib.axes
    real_plot = matplotlib.axes.Axes.plot

    def spy(self, *args, **kwargs):
        drawn.append(kwargs.get("label"))
        return real_plot(self, *args, **kwargs)
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    series = {f"run{k}": [10.0 - k - e for e in range(3)] for k in range(9)}
    png = figures.loss_curve_png([1, 2, 3], series)
    assert drawn == list(series)            # nine series, nine lines (was: the first four)
    with Image.open(io.BytesIO(png)) as im:
        im.verify()
