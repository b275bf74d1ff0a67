"""The reconstruction directory as one contract: what result_files writes, it reads back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ptycho_fast import result_files as rf
from ptycho_fast.files import UserError


def _arrays(seed=0):
    g = np.random.default_rng(seed)
    obj = (g.random((9, 11)) * np.exp(1j * g.random((9, 11)))).astype(np.complex64)
    coverage = g.random((9, 11)).astype(np.float32)
    return rf.ObjectArrays(obj, coverage, coverage > 0.2, g.random((4, 2)) * 8, np.array([3.0, -2.0]), 1e-6)


def test_what_the_writer_writes_the_reader_reads(tmp_path):
    arrays = _arrays()
    rf.write_object_npz(tmp_path / rf.OBJECT_NPZ, arrays)
    (tmp_path / rf.SUMMARY_JSON).write_text(json.dumps({"N": 8, "ops": "reference"}))
    rec = rf.read_reconstruction(tmp_path)
    np.testing.assert_array_equal(rec.object, arrays.object)
    np.testing.assert_array_equal(rec.coverage, arrays.coverage)
    np.testing.assert_array_equal(rec.covered, arrays.covered)
    np.testing.assert_array_equal(rec.positions, arrays.positions)
    assert rec.origin == (3, -2) and rec.N == 8 and rec.summary["ops"] == "reference"
    assert rf.is_reconstruction_dir(tmp_path)
    # the object file alone reads the same arrays (no summary)
    alone = rf.read_reconstruction(tmp_path / rf.OBJECT_NPZ)
    np.testing.assert_array_equal(alone.object, arrays.object)
    assert alone.summary == {} and alone.N is None


def test_a_directory_that_is_not_a_reconstruction_is_one_clear_error(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    with pytest.raises(UserError) as err:
        rf.read_reconstruction(tmp_path / "other", "RECON")
    message = str(err.value)
    assert str(tmp_path / "other") in message and "not a reconstruction directory" in message
    assert rf.OBJECT_NPZ in message and "\n" not in message
    with pytest.raises(UserError) as err:
        rf.read_output_directory(tmp_path / "other", "A")
    message = str(err.value)
    assert str(tmp_path / "other") in message and "holds none of" in message
    for name in (rf.OBJECT_NPZ, rf.SUMMARY_JSON, rf.DEBUG_STATS_JSON):
        assert name in message


def test_patch_statistics_come_from_the_summary_else_the_debug_dump(tmp_path):
    block = {"var_zero_mean": 0.02, "var_zero_mean_view": "amplitude",
             "amplitude": {"mean": 0.8, "std": 0.1, "min": 0.1, "max": 1.0, "var_zero_mean": 0.02}}
    (tmp_path / rf.DEBUG_STATS_JSON).write_text(json.dumps({"patch_stats": block}))
    got = rf.read_output_directory(tmp_path, "A")
    assert got.reconstruction is None and got.summary == {}
    assert got.patch_stats.var_zero_mean == 0.02 and got.patch_stats.source == "stats.json:patch_stats.var_zero_mean"
    assert got.patch_stats.stats == {"mean": 0.8, "std": 0.1, "min": 0.1, "max": 1.0}
    (tmp_path / rf.SUMMARY_JSON).write_text(json.dumps({"patch_stats": {**block, "var_zero_mean": 0.03}}))
    assert rf.read_output_directory(tmp_path, "A").patch_stats.source == "summary.json:patch_stats.var_zero_mean"
    # a refine summary holds no patch statistics
    assert rf.read_patch_statistics({"epochs": 3}, rf.SUMMARY_JSON, "x") is None
    with pytest.raises(UserError, match="expected a number"):
        rf.read_patch_statistics({"patch_stats": {"var_zero_mean": "big"}}, rf.SUMMARY_JSON, "x")
