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


def _two_blobs(n=40, seed=0):
    g = np.random.default_rng(seed)
    return np.r_[g.normal(size=(n, 2)), g.normal(size=(n, 2)) + 8]


@pytest.mark.parametrize("write, message", [
    (lambda p: p.write_text("1.5,2.5\n"), "x.csv has n_samples=1 (shape=(1, 2))"),
    (lambda p: p.write_text("a,b\n1,2\n3,x\n"), "x.csv: line 3, column 2 holds 'x'"),
    (lambda p: p.write_text("1,2\n3,4\n5,6,7\n"), "x.csv: line 3 has 3 cells where line 1"),
])
def test_the_loader_refuses_what_it_cannot_read_as_a_table(tmp_path, capsys, write,
                                                           message):
    write(tmp_path / "x.csv")
    rc = main(["fit", str(tmp_path / "x.csv"), "--method", "bgm", "--out",
               str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_semicolon_tab_and_sparse_files_fit_their_full_table(tmp_path):
    import scipy.sparse

    X = _two_blobs()
    np.savetxt(tmp_path / "x.csv", X, delimiter=";", header="u;v", comments="")
    np.savetxt(tmp_path / "x.tsv", X, delimiter="\t")
    np.savetxt(tmp_path / "bar.txt", X, delimiter="|")
    scipy.sparse.save_npz(tmp_path / "s.npz", scipy.sparse.csr_matrix(X))
    for name, extra in [("x.csv", []), ("x.tsv", []), ("bar.txt", ["--delimiter", "|"]),
                        ("s.npz", [])]:
        out = tmp_path / ("run_" + name)
        assert main(["fit", str(tmp_path / name), "--method", "kmeans", "--k", "2",
                     "--out", str(out), "--quiet", *extra]) == 0, name
        labels = np.load(out / "labels.npy")
        assert labels.shape == (80,), name
        assert np.unique(labels[:40]).size == 1 and labels[0] != labels[-1], name


def test_too_wide_for_a_full_covariance_is_one_line_and_exit_2(tmp_path, capsys):
    """10 rows of 100,000 features: a full covariance is 80 GB; refused before it is
    allocated, with the size and what to do instead."""
    np.save(tmp_path / "wide.npy", np.random.default_rng(0).normal(size=(10, 100_000)))
    for method in ("subcluster", "bgm"):
        rc = main(["fit", str(tmp_path / "wide.npy"), "--method", method, "--out",
                   str(tmp_path / "o"), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err, method
        last = err.strip().splitlines()[-1]
        assert last.startswith("bnpdeep fit: error:") and "100000 x 100000" in last, method
        assert "PCA" in last and "diagonal" in last


def test_out_of_memory_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys,
                                                                 monkeypatch):
    from bnpdeep import cli

    np.save(tmp_path / "x.npy", _two_blobs())

    def boom(*args, **kwargs):
        raise MemoryError("Unable to allocate 80.0 GiB")

    monkeypatch.setattr(cli, "fit_one", boom)
    args = ["fit", str(tmp_path / "x.npy"), "--method", "bgm", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "bnpdeep fit: error: out of memory")
    with pytest.raises(MemoryError):
        main(["--debug", *args])


def test_resume_without_a_checkpoint_is_refused(tmp_path, capsys):
    np.save(tmp_path / "x.npy", _two_blobs())
    (tmp_path / "empty").mkdir()
    for method in ("subcluster", "movb", "deepdpm"):
        rc = main(["fit", str(tmp_path / "x.npy"), "--method", method, "--out",
                   str(tmp_path / "empty"), "--resume", "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and "nothing to resume" in err and "_checkpoint.pt" in err, method
        assert not (tmp_path / "empty" / "summary.json").exists()


def test_each_data_warning_prints_once(tmp_path, capsys):
    X = np.c_[_two_blobs(), np.ones(80)]
    np.save(tmp_path / "x.npy", X)
    assert main(["fit", str(tmp_path / "x.npy"), "--method", "subcluster", "--iters", "10",
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0
    warned = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    data = [ln for ln in warned if ln.startswith("warning: X has")]
    assert len(data) == 1 and "zero-variance columns 2" in data[0]
    # besides it only the 5 kept draws' convergence warning, once
    assert len(warned) == 2 and "SubclusterSampler: the kept draws" in warned[1]


def test_methods_take_spaces_or_commas_in_compare_and_demo(tmp_path, capsys):
    np.save(tmp_path / "x.npy", _two_blobs())
    tables = []
    for methods in (["kmeans,dbscan"], ["kmeans", "dbscan"], ["kmeans,", "dbscan"]):
        assert main(["compare", str(tmp_path / "x.npy"), "--methods", *methods, "--out",
                     str(tmp_path / "r"), "--quiet"]) == 0
        out = capsys.readouterr().out
        tables.append([ln.split()[0] for ln in out.splitlines()
                       if ln.split() and ln.split()[0] in ("kmeans", "dbscan")])
    assert tables[0] == tables[1] == tables[2] == ["kmeans", "dbscan"]
    assert main(["compare", str(tmp_path / "x.npy"), "--methods", "kmeans,kmeanz", "--out",
                 str(tmp_path / "r")]) == 2
    assert "unknown method(s) kmeanz" in capsys.readouterr().err
    assert main(["demo", "--methods", "kmeanz", "--out", str(tmp_path / "d")]) == 2
    assert "unknown method(s) kmeanz" in capsys.readouterr().err


def test_deep_methods_fit_image_files_from_the_command_line(tmp_path):
    """--images reads an IDX-like array of images; a given-K deep method and DeepDPM end
    to end run on its pixels."""
    g = np.random.default_rng(2)
    images = np.zeros((60, 8, 8))
    images[:30, 2:4, :] = 1
    images[30:, :, 2:4] = 1
    images += 0.05 * g.random((60, 8, 8))
    np.save(tmp_path / "img.npy", images)
    rc = main(["fit", str(tmp_path / "img.npy"), "--images", "--method", "dcn", "--k", "2",
               "--iters", "3", "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["n_clusters"] == 2 and summary["method"] == "dcn"
    assert main(["fit", str(tmp_path / "img.npy"), "--method", "dec", "--out",
                 str(tmp_path / "r2"), "--quiet"]) == 2          # 3-d array without --images


def test_torchrun_fits_the_data_parallel_sampler_from_shard_files(tmp_path):
    """``torchrun --nproc-per-node 2 -m bnpdeep fit FOLDER --method subcluster``: each
    rank reads its rows of the shard files; the labels and draws rank 0 writes are
    those of the one-rank data-parallel fit with the same seed."""
    from bnpdeep.inference.distributed import DistributedSubclusterSampler

    g = np.random.default_rng(2)
    centres = g.normal(0.0, 6.0, (4, 3))
    y = g.integers(0, 4, 500)
    X = centres[y] + g.normal(size=(500, 3))
    shards = tmp_path / "shards"
    shards.mkdir()
    np.save(shards / "part0.npy", X[:130])
    np.savetxt(shards / "part1.csv", X[130:], delimiter=",")
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--standalone", "-m", "bnpdeep", "fit", str(shards), "--method",
         "subcluster", "--iters", "30", "--seed", "4", "--labels", str(tmp_path / "y.npy"),
         "--out", str(out), "--quiet", "--draws"],
        capture_output=True, text=True, timeout=600, env={**__import__("os").environ,
                                                          "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["n_points"] == 500
    assert summary["bytes_reduced_rank0"] > 0
    one = DistributedSubclusterSampler(max_iter=30, random_state=4).fit(X)
    np.testing.assert_array_equal(np.load(out / "label_draws.npy"), one.label_draws_)
    np.testing.assert_array_equal(np.load(out / "labels.npy"), one.labels_)
    assert summary["n_clusters"] == one.n_clusters_


def test_torchrun_fits_data_parallel_deepdpm(tmp_path):
    """``torchrun --nproc-per-node 2 -m bnpdeep fit FILE --method deepdpm``: rank 0
    writes the labels of all rows, with the K and NMI of the one-rank fit."""
    from bnpdeep.inference.deepdpm import DistributedDeepDPM
    from sklearn.metrics import normalized_mutual_info_score as nmi

    g = np.random.default_rng(3)
    centres = g.normal(0.0, 6.0, (4, 3))
    y = g.integers(0, 4, 800)
    X = centres[y] + g.normal(size=(800, 3))
    np.save(tmp_path / "X.npy", X)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--standalone", "-m", "bnpdeep", "fit", str(tmp_path / "X.npy"), "--method",
         "deepdpm", "--seed", "1", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=600, env={**__import__("os").environ,
                                                          "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["n_points"] == 800
    labels = np.load(out / "labels.npy")
    one = DistributedDeepDPM(random_state=1).fit(X)
    assert summary["n_clusters"] == one.n_clusters_ == 4
    assert abs(nmi(y, labels) - nmi(y, one.labels_)) <= 0.01


def test_family_diagonal_from_the_command_line(tmp_path, capsys):
    """--family diagonal fits DiagonalGaussian components: on 150 rows of 60 full-rank
    columns in 3 separated clusters it finds them (the full-covariance default's
    posterior prefers about 120 clusters there: benchmarks/README.md, High dimensions)."""
    from bnpdeep.cli import fit_one
    from bnpdeep.data import make_mixture

    X, y = make_mixture(150, 60, 3, separation=6.0, seed=0)
    np.save(tmp_path / "x.npy", X)
    np.savetxt(tmp_path / "y.txt", y, fmt="%d")
    rc = main(["fit", str(tmp_path / "x.npy"), "--method", "subcluster", "--family",
               "diagonal", "--labels", str(tmp_path / "y.txt"), "--iters", "100",
               "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["n_clusters"] == 3 and summary["nmi"] == 1.0
    for family, kind in (("diagonal", "DiagonalGaussian"), ("student-t", "StudentNIW")):
        _, est = fit_one("subcluster", X[:40, :3], iters=4, family=family,
                         return_estimator=True)
        assert type(est.model_.family).__name__ == kind
    _, est = fit_one("deepdpm", X[:60, :3], iters=3, family="student-t", return_estimator=True)
    assert type(est.model_.family).__name__ == "StudentNIW"
    _, est = fit_one("movb", X[:40, :3], iters=2, return_estimator=True)
    assert type(est.model_.family).__name__ == "GaussianNIW"      # "full": the default
    _, est = fit_one("movb", X[:60, :3], iters=3, family="student-t", return_estimator=True)
    assert type(est.model_.family).__name__ == "StudentNIW"


@pytest.mark.parametrize("method, family, message", [
    ("bgm", "diagonal", "takes no mixture model"),
    ("dbscan", "student-t", "takes no mixture model")])
def test_a_family_a_method_cannot_take_is_one_line_and_exit_2(tmp_path, capsys, method,
                                                                family, message):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(50, 2)))
    rc = main(["fit", str(tmp_path / "x.npy"), "--method", method, "--family", family,
               "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("bnpdeep fit: error:") and message in last
