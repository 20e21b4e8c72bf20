"""bnpdeep compare: the table, the report, its figures, and the numbers' provenance."""

import re
import shutil
import subprocess

import arviz as az
import numpy as np
import pytest

from bnpdeep.cli import main
from bnpdeep.compare import compare, idata_row
from bnpdeep.data import make_mixture
from bnpdeep.methods import METHODS, Method


@pytest.fixture(scope="module")
def three_blobs():
    return make_mixture(300, 2, 3, separation=8.0, seed=0)


@pytest.fixture(scope="module")
def report(tmp_path_factory, three_blobs):
    X, y = three_blobs
    out = tmp_path_factory.mktemp("report")
    result = compare(X, methods=["subcluster", "movb", "kmeans", "bgm"], y=y, chains=2,
                     iters={"subcluster": 40}, out=out, progress=False)
    return result, out


def test_table_rows_and_report_files(report):
    result, out = report
    table = result.table
    assert list(table.index) == ["subcluster", "movb", "kmeans", "bgm"]
    assert (table["K"] == 3).all()
    assert (table["nmi"] > 0.95).all()
    assert table.loc["kmeans", "k_source"] == "true K (labels)"
    assert set(table.loc[["subcluster", "movb"], "loo_rank"]) == {1, 2}
    # R-hat of K: undefined (NaN, blank, not flagged) when both chains hold one K in every
    # draw, finite otherwise (a one-point cluster opens in a few draws at some seeds),
    # never infinite; flagged exactly when R-hat of K or lp exceeds 1.01
    k_draws = result.idata["subcluster"].posterior["K"].values
    rhat_k, rhat_lp = table.loc["subcluster", ["rhat_K", "rhat_lp"]]
    assert np.isnan(rhat_k) if np.ptp(k_draws) == 0 else np.isfinite(rhat_k)
    assert bool(table.loc["subcluster", "rhat_flag"]) == bool(rhat_k > 1.01 or rhat_lp > 1.01)
    for name in ("report.md", "report.html", "k_traces.png", "k_posterior.png",
                 "loo_compare.png", "clusters_2d.png", "coclustering_subcluster.png",
                 "confusion.png", "idata_subcluster.nc", "idata_movb.nc"):
        assert (out / name).exists(), name
    md = (out / "report.md").read_text()
    flagged = "subcluster (R-hat!)" if table.loc["subcluster", "rhat_flag"] else "subcluster"
    assert f"| {flagged} |" in md and "ELPD-LOO (SE)" in md


def test_report_numbers_come_from_the_saved_inference_data(report):
    result, out = report
    for name in ("subcluster", "movb"):
        reloaded = az.from_netcdf(out / f"idata_{name}.nc")
        again = idata_row(reloaded)
        for col, value in again.items():
            assert result.table.loc[name, col] == pytest.approx(value, rel=1e-12,
                                                                nan_ok=True), (name, col)
        assert again["k_mean"] == pytest.approx(reloaded.posterior["K"].values.mean())
    # four chains' worth of R-hat needs several chains: present for the sampler only
    assert np.isnan(result.table.loc["movb", "rhat_K"])


def test_html_is_one_file_with_its_figures_inline(report):
    _, out = report
    page = (out / "report.html").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert page.count('src="data:image/png;base64,') == len(pngs)
    assert not re.search(r'src="[^"]+\.png"', page)


def test_rhat_flags_chains_that_disagree(three_blobs):
    """Overlapping clusters and short chains from different seeds: lp varies, R-hat is
    finite and matches ArviZ on the same draws, with values within 1e-9 relative of
    each other taken as ties (round-off in one partition's log joint)."""
    X, y = make_mixture(400, 2, 6, separation=2.0, seed=5)
    result = compare(X, methods=["subcluster"], chains=3, iters={"subcluster": 30},
                     progress=False)
    row = result.table.loc["subcluster"]
    lp = result.idata["subcluster"].sample_stats["lp"].values
    tol = 1e-9 * np.abs(lp).max()
    assert np.isfinite(row["rhat_lp"])
    assert row["rhat_lp"] == pytest.approx(float(az.rhat(np.round(lp / tol) * tol)))
    assert bool(row["rhat_flag"]) == bool(row["rhat_lp"] > 1.01 or row["rhat_K"] > 1.01)


def test_report_without_labels_borrows_k(tmp_path, three_blobs):
    X, _ = three_blobs
    result = compare(X, methods=["kmeans", "movb"], chains=1, out=tmp_path, progress=False)
    assert result.table.loc["kmeans", "k_source"] == "K found by movb"
    assert result.table.loc["kmeans", "K"] == result.table.loc["movb", "K"]
    assert "nmi" not in result.table
    assert (tmp_path / "report.html").exists() and not (tmp_path / "confusion.png").exists()
    assert any("kmeans was told K" in n for n in result.notes)


class _Broken:
    def get_params(self):
        return {}

    def fit(self, X):
        raise RuntimeError("this method always fails")


def test_a_failing_method_gets_a_row_and_the_others_run(monkeypatch, three_blobs):
    X, y = three_blobs
    monkeypatch.setitem(METHODS, "broken", Method("broken", "fails", lambda **kw: _Broken(),
                                                  bayesian=True))
    result = compare(X, methods=["broken", "kmeans"], y=y, progress=False)
    assert "always fails" in result.table.loc["broken", "error"]
    assert result.table.loc["kmeans", "K"] == 3


def test_compare_from_the_command_line(tmp_path, three_blobs, capsys):
    X, y = three_blobs
    np.save(tmp_path / "x.npy", X)
    np.savetxt(tmp_path / "y.txt", y, fmt="%d")
    rc = main(["compare", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.txt"),
               "--methods", "movb,kmeans", "--chains", "1", "--out", str(tmp_path / "r"),
               "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "movb" in out and "report:" in out
    assert main(["compare", str(tmp_path / "x.npy"), "--methods", "nope", "--out",
                 str(tmp_path / "r2")]) == 2


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None,
                    reason="chromium not installed (Debian package 'chromium'; .ci/run "
                           "installs it)")
def test_html_report_renders_in_headless_chromium(report, tmp_path):
    _, out = report
    url = (out / "report.html").resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run([_chromium(), *flags, "--dump-dom", url], capture_output=True,
                         text=True, timeout=120)
    assert 'data-figures-loaded="yes"' in dom.stdout
    shot = tmp_path / "shot.png"
    subprocess.run([_chromium(), *flags, f"--screenshot={shot}", "--window-size=1200,2400",
                    url], capture_output=True, timeout=120)
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.std() > 0.05          # not a blank page


def test_compare_runs_mcmc_chains_in_workers_with_the_same_draws(three_blobs):
    X, y = three_blobs
    runs = [compare(X, methods=["subcluster"], y=y, chains=2, iters={"subcluster": 40},
                    progress=False, jobs=jobs) for jobs in (1, 2)]
    (_, one), (_, two) = runs
    np.testing.assert_array_equal(one["subcluster"].posterior["K"],
                                  two["subcluster"].posterior["K"])
    np.testing.assert_array_equal(one["subcluster"].posterior["log_joint"],
                                  two["subcluster"].posterior["log_joint"])


def test_the_family_reaches_the_bayesian_methods_only(three_blobs):
    """family="diagonal": the sampler and moVB fit DiagonalGaussian components, BGM is
    untouched, and the report names the family; Student-t likewise reaches the sampler
    and moVB."""
    X, y = three_blobs
    result = compare(X, methods=["subcluster", "movb", "bgm"], y=y, chains=1,
                     iters={"subcluster": 30, "movb": 10}, progress=False, family="diagonal")
    for name in ("subcluster", "movb"):
        assert type(result.estimators[name].model_.family).__name__ == "DiagonalGaussian"
    assert result.table.loc["bgm", "K"] == 3
    assert any("diagonal" in note for note in result.notes)
    result = compare(X, methods=["subcluster", "movb"], chains=1,
                     iters={"subcluster": 10, "movb": 5}, progress=False, family="student-t")
    for name in ("subcluster", "movb"):
        assert type(result.estimators[name].model_.family).__name__ == "StudentNIW"
