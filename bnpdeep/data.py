"""Loading, validating and generating data.

Every entry point of bnpdeep validates its input here, so that bad data gets
one clear message naming the problem (which rows hold NaN, which columns are
not numeric) instead of a traceback from deep inside torch.
"""

from __future__ import annotations

import gzip
import io
import os
import warnings
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """Input data that bnpdeep cannot use; the message says exactly why."""


class NonNumericDataError(DataError, TypeError):
    """Input holding values that are not numbers (a ``TypeError`` too, as numpy's own
    conversion error is)."""


class DataWarning(UserWarning):
    """Input data that bnpdeep can use but that deserves attention."""


def _rows(idx: np.ndarray, limit: int = 5) -> str:
    idx = np.asarray(idx)
    shown = ", ".join(str(int(i)) for i in idx[:limit])
    more = f" and {idx.size - limit} more" if idx.size > limit else ""
    return f"{'row' if idx.size == 1 else 'rows'} {shown}{more}"


def _first_bad_cell(arr: np.ndarray):
    """(row, column, value) of the first cell of an object array float() cannot read."""
    for idx, value in np.ndenumerate(arr):
        try:
            float(value)
        except (TypeError, ValueError):
            return idx, value
    return None, None


def _to_numpy(X, name: str) -> np.ndarray:
    import scipy.sparse

    if scipy.sparse.issparse(X):
        raise DataError(f"{name} is a scipy sparse matrix ({X.shape[0]} x {X.shape[1]}, "
                        f"{X.nnz} stored values); sparse input is not supported: bnpdeep's "
                        f"models need dense rows, pass {name}.toarray()")
    if hasattr(X, "detach") and hasattr(X, "cpu"):          # torch tensor
        X = X.detach().cpu().numpy()
    if hasattr(X, "select_dtypes") and hasattr(X, "columns"):  # pandas DataFrame
        bad = [str(c) for c in X.columns if not np.issubdtype(X[c].dtype, np.number)
               and X[c].dtype != bool]
        if bad:
            raise NonNumericDataError(f"{name} has non-numeric columns: {', '.join(bad)}; "
                                      f"each value must be a string or a number float() "
                                      f"can read")
        X = X.to_numpy()
    arr = np.asarray(X)
    complex_msg = (f"Complex data not supported: {name} has complex values; pass the real "
                   f"and imaginary parts as separate columns if both matter")
    if arr.dtype.kind == "c":
        raise DataError(complex_msg)
    try:
        return arr.astype(float)
    except (TypeError, ValueError):
        where, value = _first_bad_cell(arr)
        if isinstance(value, complex):
            raise DataError(complex_msg) from None
        cell = f"[{', '.join(map(str, where))}]" if where is not None else ""
        raise NonNumericDataError(
            f"{name}{cell} = {value!r} is not a number ({name} has dtype {arr.dtype}); "
            f"float() argument must be a string or a real number") from None


def constant_columns(X) -> np.ndarray:
    """Indices of the columns of X with zero variance."""
    X = np.asarray(X, dtype=float)
    return np.flatnonzero(np.ptp(X, axis=0) == 0) if X.shape[0] else np.array([], int)


def _check_magnitude(arr: np.ndarray, name: str):
    """Refuse values whose squares, summed over the rows, overflow float64: the
    sufficient statistics (sums of x x^T) of such data are infinite."""
    bound = np.sqrt(np.finfo(np.float64).max / max(arr.shape[0], 1))
    size = np.abs(arr)
    big = size > bound
    if big.any():
        rows = np.flatnonzero(big.any(1))
        raise DataError(f"{name} has values up to {size.max():.3g} in {_rows(rows)} "
                        f"(0-based); sums of their squares over {arr.shape[0]} rows overflow "
                        f"float64 (any value above {bound:.3g} does); rescale the columns, "
                        f"e.g. divide each by its largest absolute value")


def check_array(X, *, name: str = "X", min_rows: int = 2, n_features: int | None = None,
                warn: bool = True) -> np.ndarray:
    """Validate a data matrix and return it as a float64, C-contiguous 2-D array.

    Raises :class:`DataError` for sparse or complex input, non-numeric values (naming
    the cell; also a ``TypeError``), NaN or infinite values (naming the rows), values
    so large that the sums of their squares overflow float64, 1-D or 3-D input, too
    few rows, no columns, or a number of features other than ``n_features``.  Warns
    (:class:`DataWarning`) about zero-variance columns and about more features than
    rows.
    """
    arr = _to_numpy(X, name)
    if arr.ndim == 1:
        raise DataError(f"{name} is 1-D with shape ({arr.shape[0]},); pass a 2-D array of "
                        f"shape (n_samples, n_features). Reshape your data with "
                        f"X.reshape(-1, 1) for one feature or X.reshape(1, -1) for one row")
    if arr.ndim != 2:
        raise DataError(f"{name} has {arr.ndim} dimensions (shape {arr.shape}); "
                        f"pass a 2-D array of shape (n_samples, n_features)")
    if arr.shape[1] == 0:
        raise DataError(f"{name} has 0 feature(s) (shape={arr.shape}) while a minimum of 1 "
                        f"is required.")
    if arr.shape[0] < min_rows:
        raise DataError(f"{name} has n_samples={arr.shape[0]} (shape={arr.shape}); at least "
                        f"{min_rows} {'row is' if min_rows == 1 else 'rows are'} needed")
    finite = np.isfinite(arr)
    if not finite.all():
        nan_rows = np.flatnonzero(np.isnan(arr).any(1))
        inf_rows = np.flatnonzero(np.isinf(arr).any(1))
        parts = []
        if nan_rows.size:
            parts.append(f"NaN in {_rows(nan_rows)}")
        if inf_rows.size:
            parts.append(f"infinite values in {_rows(inf_rows)}")
        raise DataError(f"{name} has {' and '.join(parts)} (0-based); remove or impute them")
    _check_magnitude(arr, name)
    if n_features is not None and arr.shape[1] != n_features:
        raise DataError(f"{name} has {arr.shape[1]} features but the model was fitted on "
                        f"{n_features}")
    if warn:
        const = constant_columns(arr) if arr.shape[0] > 1 else np.array([], int)
        if const.size:
            cols = ", ".join(map(str, const[:10])) + (" ..." if const.size > 10 else "")
            warnings.warn(f"{name} has zero-variance columns {cols}; they carry no "
                          f"clustering information and are handled with a variance floor",
                          DataWarning, stacklevel=2)
        if arr.shape[1] > arr.shape[0]:
            warnings.warn(f"{name} has more features ({arr.shape[1]}) than rows "
                          f"({arr.shape[0]}); covariance estimates rest on the prior",
                          DataWarning, stacklevel=2)
    return np.ascontiguousarray(arr, dtype=np.float64)


def check_counts(X, *, name: str = "X", min_rows: int = 2) -> np.ndarray:
    """Validate a matrix of counts (nonnegative integers) for multinomial models."""
    arr = check_array(X, name=name, min_rows=min_rows, warn=False)
    neg = np.flatnonzero((arr < 0).any(1))
    if neg.size:
        raise DataError(f"{name} has negative counts in {_rows(neg)}")
    frac = np.flatnonzero((arr != np.round(arr)).any(1))
    if frac.size:
        raise DataError(f"{name} has non-integer counts in {_rows(frac)}")
    return arr


def standardize(X) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zero mean, unit variance per column; constant columns get scale 1 (become 0).

    Returns ``(Z, mean, scale)`` with ``Z = (X - mean) / scale``.
    """
    X = np.asarray(X, dtype=float)
    mean = X.mean(0)
    scale = X.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    return (X - mean) / scale, mean, scale


# -- files ---------------------------------------------------------------------------
_TEXT = (".txt", ".dat", ".data", ".labels", ".csv", ".tsv")
SUPPORTED = (".npy", ".npz", ".csv", ".txt", ".dat", ".data", ".labels", ".tsv",
             "(any of them + .gz)")


def _read_bytes(path: Path) -> bytes:
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as fh:
            return fh.read()
    return path.read_bytes()


def _load_raw(path) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise DataError(f"no such file: {path}")
    suffixes = [s.lower() for s in path.suffixes]
    base = suffixes[-2] if suffixes and suffixes[-1] == ".gz" and len(suffixes) > 1 else (
        suffixes[-1] if suffixes else "")
    raw = _read_bytes(path)
    if base == ".npy":
        return np.load(io.BytesIO(raw), allow_pickle=False)
    if base == ".npz":
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            keys = list(z.keys())
            if len(keys) == 1:
                return z[keys[0]]
            for key in ("X", "data"):
                if key in keys:
                    return z[key]
            raise DataError(f"{path.name} holds several arrays ({', '.join(keys)}); "
                            f"name the data 'X' or 'data'")
    if base in _TEXT:
        text = raw.decode("utf-8", errors="replace")
        delim = "," if base == ".csv" else ("\t" if base == ".tsv" else None)
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if not lines:
            raise DataError(f"{path.name} is empty")
        first = lines[0].split(delim)
        try:
            [float(v) for v in first]
            skip = 0
        except ValueError:
            skip = 1                      # a header row
        try:
            arr = np.genfromtxt(io.StringIO("\n".join(lines[skip:])), delimiter=delim,
                                dtype=float)
        except ValueError as err:
            raise DataError(f"{path.name} could not be parsed: {err}") from None
        return arr
    raise DataError(f"unsupported file type '{path.name}'; supported: {', '.join(SUPPORTED)}")


def load(path) -> np.ndarray:
    """Load a data matrix from .npy, .npz, .csv or whitespace text (optionally .gz)."""
    arr = _load_raw(path)
    if arr.ndim == 1:
        arr = arr[:, None]
    return check_array(arr, name=Path(path).name)


def load_labels(path) -> np.ndarray:
    """Load integer labels (one per row) from the same formats."""
    arr = np.asarray(_load_raw(path)).ravel()
    if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
        raise DataError(f"{Path(path).name} must hold integer labels")
    return arr.astype(int)


# -- embedded and synthetic data -------------------------------------------------------
EMBEDDED_DATASETS = {
    "digits": "8x8 handwritten digits, 1797 x 64, 10 classes (scikit-learn)",
    "iris": "iris flowers, 150 x 4, 3 classes (scikit-learn)",
    "wine": "wine cultivars, 178 x 13, 3 classes (scikit-learn)",
}


def load_dataset(name: str, *, standardize: bool = False, pca: int | None = None,
                 random_state: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An embedded data set (no download): ``X, y``.  Optionally standardised, then
    reduced to ``pca`` dimensions."""
    from sklearn import datasets

    loaders = {"digits": datasets.load_digits, "iris": datasets.load_iris,
               "wine": datasets.load_wine}
    if name not in loaders:
        raise DataError(f"unknown dataset '{name}'; embedded: {', '.join(EMBEDDED_DATASETS)}")
    bunch = loaders[name]()
    X, y = bunch.data.astype(float), bunch.target.astype(int)
    if standardize:
        X = globals()["standardize"](X)[0]
    if pca is not None:
        from sklearn.decomposition import PCA

        X = PCA(n_components=int(pca), random_state=random_state).fit_transform(X)
    return np.ascontiguousarray(X), y


def demo_data() -> tuple[np.ndarray, np.ndarray]:
    """The default demo input: digits, standardised, PCA to 10 dimensions."""
    return load_dataset("digits", standardize=True, pca=10)


def make_mixture(n: int, d: int, k: int, *, weights=None, separation: float = 4.0,
                 scale: float = 1.0, seed=None) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic Gaussian mixture with known labels 0..k-1.

    Means are drawn one by one, uniformly in a box, rejecting any closer than
    ``separation * scale`` to an earlier mean; covariances are random, well
    conditioned, of magnitude ``scale**2``; labels follow ``weights`` (default
    uniform).
    """
    if n < 1 or d < 1 or k < 1:
        raise ValueError(f"n, d and k must be positive, got n={n}, d={d}, k={k}")
    g = np.random.default_rng(seed)
    if weights is None:
        w = np.full(k, 1.0 / k)
    else:
        w = np.asarray(weights, dtype=float)
        if w.shape != (k,) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"weights must be {k} nonnegative numbers with a positive sum")
        w = w / w.sum()
    half = separation * scale * max(k, 2) ** (1.0 / d)
    means = []
    for _ in range(k):
        for _attempt in range(10_000):
            m = g.uniform(-half, half, size=d)
            if all(np.linalg.norm(m - o) >= separation * scale for o in means):
                break
        else:
            half *= 1.5
        means.append(m)
    means = np.array(means)
    covs = []
    for _ in range(k):
        q, _r = np.linalg.qr(g.normal(size=(d, d)))
        ev = scale**2 * g.uniform(0.3, 1.0, size=d)
        covs.append((q * ev) @ q.T)
    y = g.choice(k, size=n, p=w)
    X = np.empty((n, d))
    for c in range(k):
        idx = y == c
        X[idx] = g.multivariate_normal(means[c], covs[c], size=int(idx.sum()))
    return X, y


# -- benchmark files (benchmarks and slow tests only) ----------------------------------
BENCHMARK_NAMES = ["s1", "s2", "s3", "s4", "a1", "unbalance", "r15", "d31", "wine", "ecoli",
                   "wdbc", "g2mg_16_20"]
PAPER_NAMES = ["mnist_umap", "fashion_umap"]


def benchmark_root() -> Path | None:
    """The benchmark data folder: $BNPDEEP_DATASETS, else ../shared/datasets beside the
    repository; None if neither exists."""
    env = os.environ.get("BNPDEEP_DATASETS")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[1].parent / "shared" / "datasets")
    for c in candidates:
        if c.is_dir():
            return c
    return None


def load_benchmark(name: str, *, standardize: bool = True, root=None):
    """A benchmark set: ``X, y`` with labels 0-based; standardised by default."""
    root = Path(root) if root is not None else benchmark_root()
    if root is None:
        raise DataError("benchmark data not found: set BNPDEEP_DATASETS or place the sets "
                        "in ../shared/datasets")
    if name not in BENCHMARK_NAMES + PAPER_NAMES:
        raise DataError(f"unknown benchmark '{name}'; known: "
                        f"{', '.join(BENCHMARK_NAMES + PAPER_NAMES)}")
    folder = root / "paper" if name in PAPER_NAMES else root
    data, labels = folder / f"{name}.data.gz", folder / f"{name}.labels.gz"
    for f in (data, labels):
        if not f.exists():
            raise DataError(f"benchmark file missing: {f}")
    X = load(data)
    y = load_labels(labels)
    y = y - y.min()
    if standardize:
        X = globals()["standardize"](X)[0]
    return X, y
