"""Validation messages, file loading, embedded and synthetic data."""

import gzip
import warnings

import numpy as np
import pytest
from bnpdeep.inference import KMeans, SubclusterSampler
from bnpdeep.models import Multinomial
from sklearn.exceptions import ConvergenceWarning

from bnpdeep.data import (
    DataError,
    DataWarning,
    NonNumericDataError,
    check_array,
    check_counts,
    demo_data,
    load,
    load_dataset,
    load_labels,
    make_mixture,
    standardize,
)


def test_nan_and_inf_rows_are_named():
    X = np.ones((10, 2))
    X[3, 1] = np.nan
    X[7, 0] = np.inf
    with pytest.raises(DataError, match=r"NaN in row 3 .*infinite values in row 7"):
        check_array(X)


def test_many_nan_rows_are_abbreviated():
    X = np.zeros((20, 2))
    X[2:12, 0] = np.nan
    with pytest.raises(DataError, match=r"rows 2, 3, 4, 5, 6 and 5 more"):
        check_array(X)


@pytest.mark.parametrize("X, pattern", [
    (np.arange(5.0), "1-D"),
    (np.zeros((2, 3, 4)), "3 dimensions"),
    (np.zeros((1, 3)), r"n_samples=1 .*at least 2 rows"),
    (np.zeros((4, 0)), r"0 feature\(s\)"),
    (np.array([["1", "a"], ["2", "b"]], dtype=object), r"X\[0, 1\] = .a. is not a number"),
])
def test_shape_and_type_errors(X, pattern):
    with pytest.raises(DataError, match=pattern):
        check_array(X)


def test_constant_column_and_wide_data_warn_and_still_fit():
    g = np.random.default_rng(0)
    X = g.normal(size=(30, 3))
    X[:, 1] = 5.0
    with pytest.warns(DataWarning, match="zero-variance columns 1"):
        check_array(X)
    with pytest.warns(DataWarning, match="zero-variance columns 1"):
        est = SubclusterSampler(max_iter=6).fit(X)
    assert np.isfinite(est.lp_draws_).all()
    with pytest.warns(DataWarning, match="more features"):
        check_array(g.normal(size=(4, 6)))


def test_columns_far_from_zero_relative_to_their_spread_warn():
    """A column at 1e6 with unit spread: its centred sum of squares from raw float64
    sums (sum x^2 - n mean^2) keeps about 4 of 16 digits; the warning names it."""
    g = np.random.default_rng(3)
    X = g.normal(size=(200, 3))
    n = X.shape[0]
    far = X.copy()
    far[:, 2] += 1e6
    raw = (far[:, 2] ** 2).sum() - n * far[:, 2].mean() ** 2
    exact = ((X[:, 2] - X[:, 2].mean()) ** 2).sum()
    assert abs(raw / exact - 1) > 1e-8                  # the cancellation is real
    with pytest.warns(DataWarning, match="columns 2 whose mean is more than 1e\\+04"):
        check_array(far)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_array(X + 1e3)                            # 1e3 spreads: well resolved
        check_array(np.c_[X, np.full(n, 1e6)])          # constant: warned of as such
    assert not any("whose mean" in str(w.message) for w in caught)
    assert any("zero-variance columns 3" in str(w.message) for w in caught)


def _collinear_mixture(eps: float, seed: int = 0):
    """Four separated 2-d clusters and a third column 2 x0 + 3 + eps * noise."""
    g = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), 150)
    X = np.array([[-6.0, 0.0], [6.0, 0.0], [0.0, 6.0], [0.0, -6.0]])[y] + g.normal(size=(600, 2))
    return np.c_[X, 2 * X[:, 0] + 3 + eps * g.normal(size=600)], X, y


def test_collinear_columns_warn_where_the_prior_ridge_outweighs_the_data():
    """A column equal to 2 x0 + 3 up to 1e-9 noise: the direction z0 - z2 (unit
    columns) has variance at float64's round-off, under the prior's ridge / N; the warning names
    columns 0 and 2.  With noise 1e-2 (variance about 1e-5) nothing is said.  The
    warning's claim holds: the default model's collapsed log joint of the four
    clusters over two merged pairs falls by 200 nats with the collinear column (27
    with the 1e-2 one)."""
    from bnpdeep.inference import GaussianMixtureEM, MemoizedVB
    from bnpdeep.models import DiagonalGaussian, DPMixture, GaussianNIW

    Z, X, y = _collinear_mixture(1e-9)
    with pytest.warns(DataWarning, match=r"rank-deficient.*1 z0 - 1 z2 .*columns 0, 2"):
        check_array(Z, collinear=True)
    one_hot = np.eye(3)[np.arange(30) % 3]
    with pytest.warns(DataWarning, match=r"rank-deficient.*columns 1, 2, 3"):
        check_array(np.c_[np.linspace(0, 1, 30), one_hot], collinear=True)  # rows sum to 1
    # the estimators that fit full covariances say so; k-means and diagonal ones do not
    for est in (MemoizedVB(max_laps=1), MemoizedVB(DPMixture(GaussianNIW.weak(Z)), max_laps=1),
                GaussianMixtureEM(4, random_state=0)):
        with pytest.warns(DataWarning, match="rank-deficient"):
            est.fit(Z)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_array(_collinear_mixture(1e-2)[0], collinear=True)
        check_array(X, collinear=True)
        check_array(Z)
        KMeans(4, random_state=0).fit(Z)
        MemoizedVB(DPMixture(DiagonalGaussian.weak(Z)), max_laps=1).fit(Z)
    # one lap of moVB is not converged and says so; nothing else may warn
    assert not [w for w in caught if not issubclass(w.category, ConvergenceWarning)]

    def margin(D):              # log p(D, four clusters) - log p(D, two merged pairs)
        D = standardize(D)[0]
        model = DPMixture(GaussianNIW.weak(D))
        return model.log_joint_collapsed(D, y) - model.log_joint_collapsed(D, y // 2)

    assert margin(Z) < margin(X) - 150
    assert margin(_collinear_mixture(1e-2)[0]) > margin(X) - 50


def test_predict_with_other_number_of_features():
    X = np.random.default_rng(1).normal(size=(40, 3))
    est = KMeans(n_clusters=2, random_state=0).fit(X)
    with pytest.raises(DataError, match="X has 2 features, but KMeans is expecting 3 features"):
        est.predict(X[:, :2])


def test_counts_validation():
    with pytest.raises(DataError, match="negative counts in row 1"):
        check_counts(np.array([[1, 2], [-1, 3]]))
    with pytest.raises(DataError, match="non-integer counts in row 0"):
        check_counts(np.array([[1.5, 2], [1, 3]]))
    with pytest.raises(DataError, match="negative counts"):
        Multinomial([1.0, 1.0]).validate(np.array([[1, 2], [-1, 3]]))


def test_standardize_handles_constant_columns():
    X = np.c_[np.arange(10.0), np.full(10, 3.0)]
    Z, mean, scale = standardize(X)
    assert np.allclose(Z[:, 0].mean(), 0) and np.allclose(Z[:, 0].std(), 1)
    assert np.all(Z[:, 1] == 0) and scale[1] == 1


def test_file_formats_round_trip(tmp_path):
    X = np.random.default_rng(2).normal(size=(12, 3))
    y = np.arange(12) % 3 + 1
    np.save(tmp_path / "x.npy", X)
    np.savez(tmp_path / "x.npz", X=X, y=y)
    np.savetxt(tmp_path / "x.csv", X, delimiter=",", header="a,b,c", comments="")
    with gzip.open(tmp_path / "x.data.gz", "wt") as fh:
        np.savetxt(fh, X)
    with gzip.open(tmp_path / "y.labels.gz", "wt") as fh:
        np.savetxt(fh, y, fmt="%d")
    for name in ("x.npy", "x.npz", "x.csv", "x.data.gz"):
        assert np.allclose(load(tmp_path / name), X), name
    assert np.array_equal(load_labels(tmp_path / "y.labels.gz"), y)


def test_file_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load(tmp_path / "missing.npy")
    (tmp_path / "x.xyz").write_text("1 2\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load(tmp_path / "x.xyz")
    (tmp_path / "nan.csv").write_text("1,2\n3,nan\n4,5\n")
    with pytest.raises(DataError, match="nan.csv has NaN in row 1"):
        load(tmp_path / "nan.csv")
    (tmp_path / "lab.txt").write_text("1\n2.5\n")
    with pytest.raises(DataError, match="integer labels"):
        load_labels(tmp_path / "lab.txt")


def test_embedded_data_and_demo_input():
    X, y = demo_data()
    assert X.shape == (1797, 10) and np.unique(y).size == 10
    X, y = load_dataset("iris", standardize=True)
    assert X.shape == (150, 4) and np.allclose(X.std(0), 1)
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("cifar")


def test_make_mixture_labels_and_separation():
    X, y = make_mixture(2000, 3, 5, weights=[5, 1, 1, 1, 2], separation=6.0, seed=0)
    assert X.shape == (2000, 3) and set(np.unique(y)) == set(range(5))
    freq = np.bincount(y) / y.size
    assert freq[0] == pytest.approx(0.5, abs=0.05)
    means = np.stack([X[y == c].mean(0) for c in range(5)])
    gaps = np.linalg.norm(means[:, None] - means[None], axis=-1) + np.eye(5) * 1e9
    assert gaps.min() > 4.0


def test_values_whose_squares_overflow_and_sparse_input_are_refused():
    import scipy.sparse

    X = np.random.default_rng(0).normal(size=(20, 2))
    X[3, 1] = 1e300
    with pytest.raises(DataError, match=r"values up to 1e\+300 in row 3 .*overflow float64"):
        check_array(X)
    with pytest.raises(DataError, match="sparse input is not supported"):
        check_array(scipy.sparse.random(20, 3, density=0.5, format="csr", random_state=0))
    with pytest.raises(DataError, match="Complex data not supported"):
        check_array(np.ones((4, 2)) + 1j)



@pytest.mark.parametrize("text, delimiter", [
    ("1;2;3\n4;5;6\n", None),
    ("1\t2\t3\n4\t5\t6\n", None),
    ("1|2|3\n4|5|6\n", None),
    ("# comment\n1 2  3\n  4 5 6\n", None),
    ("x;y;z\n1;2;3\n4;5;6\n", None),
    ("1\t2\t3\n4\t5\t6\n", "\\t"),
    ("1;2;3\n4;5;6\n", ";"),
])
def test_text_delimiters_are_sniffed_or_named(tmp_path, text, delimiter):
    (tmp_path / "x.txt").write_text(text)
    np.testing.assert_array_equal(load(tmp_path / "x.txt", delimiter=delimiter),
                                  [[1, 2, 3], [4, 5, 6]])


def test_text_files_read_their_lines_as_rows(tmp_path):
    # one line is one row (refused: a mixture needs two), not a column of two
    (tmp_path / "one.csv").write_text("1.5,2.5\n")
    with pytest.raises(DataError, match=r"one.csv has n_samples=1 \(shape=\(1, 2\)\)"):
        load(tmp_path / "one.csv")
    (tmp_path / "ragged.csv").write_text("1,2\n3,4\n5,6,7\n")
    with pytest.raises(DataError, match="ragged.csv: line 3 has 3 cells where line 1 has 2"):
        load(tmp_path / "ragged.csv")
    (tmp_path / "head.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="a header row and no data"):
        load(tmp_path / "head.csv")


def test_non_numeric_cells_are_named_by_line_and_column(tmp_path):
    (tmp_path / "s.csv").write_text("a,b\n1,2\n3,four\n5,6\n")
    with pytest.raises(NonNumericDataError, match="s.csv: line 3, column 2 holds 'four'"):
        load(tmp_path / "s.csv")
    (tmp_path / "e.csv").write_text("1,2\n3,\n5,6\n")
    with pytest.raises(NonNumericDataError, match="line 2, column 2 holds an empty cell"):
        load(tmp_path / "e.csv")


def test_sparse_npz_is_densified_not_read_as_its_data_vector(tmp_path):
    import scipy.sparse

    mat = scipy.sparse.random(30, 4, density=0.5, format="csr", random_state=0)
    scipy.sparse.save_npz(tmp_path / "s.npz", mat)
    with pytest.warns(DataWarning, match="scipy sparse 30 x 4 matrix"):
        X = load(tmp_path / "s.npz")
    np.testing.assert_array_equal(X, mat.toarray())
    scipy.sparse.save_npz(tmp_path / "coo.npz", mat.tocoo())
    with pytest.warns(DataWarning):
        np.testing.assert_array_equal(load(tmp_path / "coo.npz"), mat.toarray())


def test_sparse_npz_too_large_to_densify_is_refused(tmp_path):
    import scipy.sparse

    mat = scipy.sparse.csr_matrix((np.ones(3), ([0, 1, 2], [0, 1, 2])), shape=(10**6, 10**5))
    scipy.sparse.save_npz(tmp_path / "big.npz", mat)
    with pytest.raises(DataError, match="needs 745.1 GiB.*TruncatedSVD"):
        load(tmp_path / "big.npz")


def test_covariance_memory_guard_names_the_size(monkeypatch):
    from bnpdeep import data

    monkeypatch.setattr(data, "physical_memory", lambda: 16 * 10**9)
    data.check_covariance_memory(10_000, matrices=4)          # 3.2 GB: fits
    with pytest.raises(DataError, match=r"on 30000 features holds 4 dense 30000 x 30000 "
                       r"matrices \(about 29 GB\) but this machine has 16 GB"):
        data.check_covariance_memory(30_000, matrices=4)


def test_make_mixture_with_a_rank_has_that_many_directions_above_the_noise():
    X, y = make_mixture(6000, 12, 2, rank=3, noise=0.1, seed=4)
    for c in range(2):
        ev = np.linalg.eigvalsh(np.cov(X[y == c].T))
        # three directions of variance 0.3-1 (+ 0.01), nine of the noise's 0.01
        assert ev[-3:].min() > 0.25
        np.testing.assert_allclose(ev[:-3], 0.01, rtol=0.15)
    with pytest.raises(ValueError, match="rank"):
        make_mixture(10, 3, 2, rank=4)


# -- images -----------------------------------------------------------------------------
def _write_idx(path, arr, type_byte=0x08, dims=None):
    import gzip

    arr = np.asarray(arr)
    dims = arr.shape if dims is None else dims
    head = bytes([0, 0, type_byte, len(dims)]) + b"".join(int(s).to_bytes(4, "big")
                                                           for s in dims)
    body = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(head + body)


def test_idx_images_and_labels_read_back_as_written(tmp_path):
    from bnpdeep.data import load_idx, load_images

    g = np.random.default_rng(0)
    images = g.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    np.testing.assert_array_equal(load_idx(tmp_path / "train-images-idx3-ubyte.gz"), images)
    np.testing.assert_array_equal(load_idx(tmp_path / "train-labels-idx1-ubyte"), labels)
    X, shape = load_images(tmp_path / "train-images-idx3-ubyte.gz")
    assert shape == (1, 4, 3)
    np.testing.assert_allclose(X, images.reshape(5, -1) / 255.0)
    floats = g.normal(size=(2, 3)).astype(np.float32)
    _write_idx(tmp_path / "f.idx", floats, type_byte=0x0D)
    np.testing.assert_array_equal(load_idx(tmp_path / "f.idx"), floats)


def test_bad_idx_files_are_named_with_what_is_wrong(tmp_path):
    from bnpdeep.data import load_idx

    (tmp_path / "a-ubyte").write_bytes(b"\x01\x02\x08\x01\x00")
    with pytest.raises(DataError, match="not an IDX file"):
        load_idx(tmp_path / "a-ubyte")
    _write_idx(tmp_path / "b-ubyte", np.zeros((2, 2), np.uint8), dims=(3, 2))
    with pytest.raises(DataError, match=r"promises \(3, 2\) values"):
        load_idx(tmp_path / "b-ubyte")


def test_npy_and_npz_images_channels_last_or_first(tmp_path):
    from bnpdeep.data import load_images

    g = np.random.default_rng(1)
    rgb = g.integers(0, 256, size=(4, 6, 5, 3), dtype=np.uint8)       # (n, h, w, c)
    np.save(tmp_path / "rgb.npy", rgb)
    X, shape = load_images(tmp_path / "rgb.npy")
    assert shape == (3, 6, 5)
    np.testing.assert_allclose(X, rgb.transpose(0, 3, 1, 2).reshape(4, -1) / 255.0)
    gray = g.uniform(0, 16, size=(3, 8, 8))
    np.savez(tmp_path / "g.npz", images=gray, labels=np.arange(3))
    X, shape = load_images(tmp_path / "g.npz")
    assert shape == (1, 8, 8)
    np.testing.assert_allclose(X, gray.reshape(3, -1) / gray.max())
    np.save(tmp_path / "flat.npy", g.normal(size=(4, 6)))
    with pytest.raises(DataError, match="must be images"):
        load_images(tmp_path / "flat.npy")


def test_image_datasets_are_pixels_in_the_unit_interval():
    from bnpdeep.data import load_image_dataset

    X, y, shape = load_image_dataset("digits-raw")
    assert X.shape == (1797, 64) and shape == (1, 8, 8) and X.min() == 0 and X.max() == 1
    assert np.bincount(y).size == 10
    with pytest.raises(DataError, match="unknown image dataset"):
        load_image_dataset("cifar")


def test_load_rows_reads_a_range_across_shard_files(tmp_path):
    from bnpdeep.data import count_rows, load_rows

    g = np.random.default_rng(0)
    X = g.normal(size=(50, 3))
    np.save(tmp_path / "a.npy", X[:20])
    np.savetxt(tmp_path / "b.csv", X[20:45], delimiter=",")
    np.save(tmp_path / "c.npy", X[45:])
    assert count_rows(tmp_path) == [20, 25, 5]
    np.testing.assert_allclose(load_rows(tmp_path, 15, 47), X[15:47], rtol=1e-15)
    np.testing.assert_array_equal(load_rows(tmp_path / "a.npy", 3, 9), X[3:9])
    with pytest.raises(DataError, match="outside the 50 rows"):
        load_rows(tmp_path, 10, 60)
    np.save(tmp_path / "d.npy", X[:4, :2])
    with pytest.raises(DataError, match="different numbers of columns"):
        load_rows(tmp_path, 0, 54)
