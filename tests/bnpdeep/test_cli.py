"""The bnpdeep command end to end."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bnpdeep.cli import main
from bnpdeep.data import benchmark_root


def test_fit_end_to_end_on_a_benchmark_file(tmp_path, capsys):
    root = benchmark_root()
    if root is None:
        pytest.skip("benchmark files are not shipped with the package: ../shared/datasets "
                    "is absent and BNPDEEP_DATASETS is unset")
    out = tmp_path / "run"
    rc = main(["fit", str(root / "r15.data.gz"), "--labels", str(root / "r15.labels.gz"),
               "--method", "gmm", "--standardize", "--out", str(out), "--quiet"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "gmm" and summary["n_clusters"] == 15
    assert summary["k_true"] == 15 and summary["nmi"] > 0.9
    assert np.load(out / "labels.npy").shape == (600,)
    assert "K=15" in capsys.readouterr().out


def test_bayesian_fit_writes_inference_data(tmp_path):
    g = np.random.default_rng(0)
    X = np.r_[g.normal(size=(60, 2)), g.normal(size=(60, 2)) + 8]
    np.save(tmp_path / "x.npy", X)
    rc = main(["fit", str(tmp_path / "x.npy"), "--method", "subcluster", "--iters", "20",
               "--out", str(tmp_path / "run"), "--quiet", "--draws"])
    assert rc == 0
    draws = np.load(tmp_path / "run" / "label_draws.npy")
    assert draws.shape == (10, 120)
    import arviz as az

    idata = az.from_netcdf(str(tmp_path / "run" / "idata.nc"))
    assert idata.posterior["K"].shape == (1, 10)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["n_clusters"] == 2


def test_interrupted_sampler_run_resumes_from_its_run_folder(tmp_path, kill_at):
    """`fit --resume` continues a killed sampler run from the checkpoint in --out and
    writes what the uninterrupted run writes."""
    from bnpdeep.inference.subcluster import SubclusterSampler

    g = np.random.default_rng(1)
    X = np.r_[g.normal(size=(60, 2)), g.normal(size=(60, 2)) + 8]
    np.save(tmp_path / "x.npy", X)
    args = ["fit", str(tmp_path / "x.npy"), "--method", "subcluster", "--iters", "30",
            "--quiet", "--draws"]
    assert main(args + ["--out", str(tmp_path / "full")]) == 0
    undo = kill_at(SubclusterSampler, "_step", 25)
    with pytest.raises(KeyboardInterrupt):
        main(args + ["--out", str(tmp_path / "cut")])
    assert (tmp_path / "cut" / "subcluster_checkpoint.pt").exists()
    undo()
    assert main(args + ["--out", str(tmp_path / "cut"), "--resume"]) == 0
    for name in ("labels.npy", "label_draws.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "cut" / name),
                                      np.load(tmp_path / "full" / name))


def test_resume_of_a_method_without_checkpoints_is_refused(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(30, 2)))
    rc = main(["fit", str(tmp_path / "x.npy"), "--method", "bgm", "--out",
               str(tmp_path / "run"), "--resume", "--quiet"])
    assert rc == 2
    assert "'bgm' keeps no checkpoints to resume from" in capsys.readouterr().err


@pytest.mark.parametrize("content, args, message", [
    ("1,2\n3,nan\n5,6\n", [], "x.csv has NaN in row 1"),
    ("1,2\n3,4\n5,6\n", ["--method", "kmeans"], "needs the number of clusters"),
    ("1,2\n3,4\n5,6\n", ["--labels", "LAB"], "the labels hold 2 entries but the data has 3"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, content, args, message):
    (tmp_path / "x.csv").write_text(content)
    (tmp_path / "lab.txt").write_text("1\n2\n")
    args = [str(tmp_path / "lab.txt") if a == "LAB" else a for a in args]
    if "--method" not in args:
        args += ["--method", "bgm"]
    rc = main(["fit", str(tmp_path / "x.csv"), "--out", str(tmp_path / "o")] + args)
    err = capsys.readouterr().err
    assert rc == 2 and message in err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("bnpdeep fit:")


def test_missing_file_and_unknown_dataset(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "nope.npy"), "--method", "bgm",
                 "--out", str(tmp_path)]) == 2
    assert "neither a file nor a known data set" in capsys.readouterr().err
    assert main(["fit", "iris", "--method", "bgm", "--draws", "--out", str(tmp_path)]) == 2
    assert "--draws needs a sampler" in capsys.readouterr().err


def test_datasets_lists_embedded(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "digits" in out and "iris" in out


def test_help_everywhere(capsys):
    for args in ([], ["fit"], ["datasets"], ["demo"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*args, "--help"])
        assert exit_info.value.code == 0 and "usage: bnpdeep" in capsys.readouterr().out


def test_the_console_script_runs():
    res = subprocess.run([sys.executable, "-m", "bnpdeep.cli", "datasets"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "digits" in res.stdout


def test_demo_prints_a_table(capsys, tmp_path):
    assert main(["demo", "--methods", "kmeans", "dbscan", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "true K = 10" in out and (tmp_path / "r" / "report.html").exists()
    row = next(line for line in out.splitlines() if line.startswith("kmeans"))
    k, nmi_value = row.split()[1:3]
    assert k == "10" and 0.5 < float(nmi_value) < 1.0


def test_deepdpm_from_the_command_line(tmp_path):
    g = np.random.default_rng(0)
    X = np.r_[g.normal(size=(150, 2)), g.normal(size=(150, 2)) + 10]
    np.save(tmp_path / "x.npy", X)
    rc = main(["fit", str(tmp_path / "x.npy"), "--method", "deepdpm", "--iters", "20",
               "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["n_clusters"] == 2
    assert (tmp_path / "run" / "idata.nc").exists()
    # amortized fits keep no label draws
    assert main(["fit", str(tmp_path / "x.npy"), "--method", "deepdpm", "--draws",
                 "--out", str(tmp_path / "r2"), "--quiet"]) == 2


@pytest.mark.parametrize("method", ["movb", "svi"])
def test_variational_methods_from_the_command_line(tmp_path, method):
    g = np.random.default_rng(1)
    X = np.r_[g.normal(size=(200, 2)), g.normal(size=(200, 2)) + 10, g.normal(size=(200, 2)) - 10]
    np.save(tmp_path / "x.npy", X)
    iters = ["--iters", "60"] if method == "svi" else []
    rc = main(["fit", str(tmp_path / "x.npy"), "--method", method, "--out",
               str(tmp_path / "run"), "--quiet", *iters])
    assert rc == 0
    k = json.loads((tmp_path / "run" / "summary.json").read_text())["n_clusters"]
    assert k == 3 if method == "movb" else 3 <= k <= 30
    assert (tmp_path / "run" / "idata.nc").exists()
