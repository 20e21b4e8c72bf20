"""Run folders and checkpoints."""

import json

import numpy as np
import pytest

from bnpdeep.results import ClusteringResult
from bnpdeep.runs import RunFolder


def test_run_folder_round_trip(tmp_path):
    r = ClusteringResult("kmeans", np.array([0, 1, 1, 0]), 2, 0.5,
                         metrics={"nmi": 1.0, "ari": 1.0, "acc": 1.0, "k_true": 2},
                         info={"eps": np.float64(0.25)})
    run = RunFolder(tmp_path / "run")
    run.save(r, extra={"data": "x.npy"})
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary == {"method": "kmeans", "n_clusters": 2, "time_s": 0.5, "n_points": 4,
                       "nmi": 1.0, "ari": 1.0, "acc": 1.0, "k_true": 2, "eps": 0.25,
                       "data": "x.npy"}
    assert np.array_equal(run.load_labels(), [0, 1, 1, 0])
    assert not (tmp_path / "run" / "idata.nc").exists()


def test_checkpoints(tmp_path):
    run = RunFolder(tmp_path / "ck")
    assert run.load_checkpoint() is None
    run.save_checkpoint({"iteration": 3, "z": np.arange(4)})
    state = run.load_checkpoint()
    assert state["iteration"] == 3 and np.array_equal(state["z"], np.arange(4))
    run.clear_checkpoint()
    assert run.load_checkpoint() is None


def test_folder_path_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        RunFolder(tmp_path / "f").save(ClusteringResult("x", np.zeros(2, int), 1, 0.0))
