"""Smoke checks of the end-to-end report script (benchmarks/e2e.py), run with the other
benchmarks in CI: the training time split on the bundled sample, and the report text.
The full end-to-end run (minutes of training) is ``python benchmarks/e2e.py``."""

import argparse

import e2e
from ptycho_fast import infer


def test_training_time_split_on_the_sample():
    model, data = infer.sample_paths()
    split = e2e.training_time_split(model, data, batch_size=2, steps=1)
    ms = split["ms_per_step"]
    assert split["C"] == 4 and split["N"] == 64 and split["batch_groups"] == 2
    parts = [v for k, v in ms.items() if k != "total"]
    assert all(v >= 0 for v in parts) and abs(sum(parts) - ms["total"]) < 1e-6 * ms["total"]
    # object_big runs our kernels; the forward model runs FFTs; Adam runs
    assert ms["ptycho_fast kernels"] > 0 and ms["FFT"] > 0 and ms["optimizer (Adam)"] > 0
    assert ms["network and the rest"] > ms["ptycho_fast kernels"]


def test_report_names_every_number():
    args = argparse.Namespace(seed=0, patterns=2000, photons=1e6, object="deadleaves", width=0.5,
                              batch_size=8, epochs=10, n_groups=None)
    metrics = {"amplitude_ssim": 0.5, "phase_ssim": 0.25, "amplitude_psnr": 15.0,
               "region": {"crop": "illuminated", "rows": [3, 90], "cols": [4, 91], "shape": [87, 87],
                          "object_shape": [100, 100]}}
    summary = {"patterns_per_s": 180.0, "timings_s": {"network": 8.0, "stitching": 0.2},
               "versions": {"torch": "2.13.0+cpu"}}
    split = {"steps": 4, "batch_groups": 8, "C": 4, "N": 64,
             "ms_per_step": {"ptycho_fast kernels": 2.0, "FFT": 1.0, "optimizer (Adam)": 3.0,
                             "network and the rest": 54.0, "total": 60.0}}
    history = {"epochs": [{"train_loss": 30.0, "val_loss": 31.0, "patterns_per_s": 400.0}]}
    text = e2e.render(args, {"simulate": 4.0, "train": 300.0}, metrics, summary, split, history)
    for fragment in ("| amplitude | 0.5 |", "| phase | 0.25 |", "| ptycho_fast kernels | 2.0 | 3.3 % |",
                     "| FFT | 1.0 | 1.7 % |", "illuminated region", "180 patterns/s", "| train | 300.0 |",
                     "final loss 30", "400 patterns/s"):
        assert fragment in text, fragment
