"""The estimator base every bnpdeep clustering method shares (scikit-learn conventions).

* the constructor stores its arguments and nothing else;
* ``fit(X)`` validates X, times ``_fit`` and returns self;
* fitted attributes end in ``_``: ``labels_``, ``n_clusters_``, ``fit_time_``,
  ``n_features_in_``;
* ``predict`` before ``fit`` raises ``NotFittedError``; with another number of
  features it raises :class:`bnpdeep.data.DataError`; a DataFrame's columns are
  kept as ``feature_names_in_`` and checked as scikit-learn does;
* input kinds that are not supported (sparse, complex, strings) are refused with
  a message saying so, and the estimator tags say the same.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.exceptions import ConvergenceWarning, NotFittedError


def resolve_device(spec):
    """The torch device an estimator's ``device`` argument names: ``"auto"`` is CUDA
    when torch sees a GPU and the CPU otherwise; a CUDA device torch cannot see, or
    a name that is no device, is refused with a message saying so."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:<i>' or 'auto', got {spec!r}"
                         ) from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:<i>' or 'auto', got {spec!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={spec!r}, but torch sees no CUDA device "
                         "(torch.cuda.is_available() is False); use 'cpu' or 'auto'")
    return device


def warn_not_converged(estimator, limit: str, rule: str) -> None:
    """A ``ConvergenceWarning`` (scikit-learn's) for an iterative fit that ran out of
    iterations before its convergence stop: its result is the last iterate."""
    warnings.warn(f"{type(estimator).__name__} reached {limit}={getattr(estimator, limit)} "
                  f"before its convergence stop ({rule}); the result is the last iterate, "
                  f"not a converged fit: raise {limit}.", ConvergenceWarning, stacklevel=5)


@contextlib.contextmanager
def own_pyro_state(device=None):
    """Run a fit in a Pyro parameter-store scope of its own and with torch's generator
    forked (CPU, and the CUDA device when ``device`` is one): the user's parameters and
    seeded stream are as they were afterwards, whatever the fit seeds or registers.
    Yields the scope's state, which holds the fit's parameters when the block ends
    (``pyro.get_param_store().scope(state)`` runs the fitted guide again, untouched by
    same-named entries in the user's store)."""
    import pyro
    import torch

    device = torch.device("cpu" if device is None else device)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with pyro.get_param_store().scope() as state, torch.random.fork_rng(devices=cuda):
        yield state


class ValidatedEstimator(BaseEstimator):
    """Input validation and a timed ``fit`` (``_fit(X)`` is the subclass's), shared by
    the clustering estimators and the feature transformers."""

    method_name = "base"
    # warn about zero-variance columns and more features than rows at fit: both bear
    # on covariance estimates from X; estimators of image features set it False
    # (constant border pixels are the rule there, and no covariance is fitted on them)
    _data_warnings = True

    def _full_covariance(self) -> bool:
        """Whether the fit estimates full covariance matrices from X (its data are then
        checked for collinear columns): an estimator of a model without one fits
        :func:`~bnpdeep.inference.mcmc.default_model`'s Gaussian-NIW components; one
        with a model asks its family (:meth:`ConjugateFamily.validate`)."""
        return hasattr(self, "model")

    def _validate_fit_data(self, X) -> np.ndarray:
        model = getattr(self, "model", None)
        family = getattr(model, "family", None)
        if family is not None:
            X_checked = family.validate(X, min_rows=2)
        else:
            from bnpdeep.data import check_array

            X_checked = check_array(X, warn=self._data_warnings,
                                    collinear=self._full_covariance())
        self._check_columns(X, reset=True)
        return X_checked

    def _validate_predict_data(self, X) -> np.ndarray:
        from bnpdeep.data import check_array

        self._check_is_fitted()
        # new rows are not fitted on: a column constant among them warns of nothing
        X_checked = check_array(X, min_rows=1, warn=False)
        self._check_columns(X, reset=False)
        return X_checked

    def _check_columns(self, X, reset: bool):
        """``n_features_in_`` and ``feature_names_in_`` as scikit-learn sets and checks
        them (names from a DataFrame's columns; a mismatch warns, a different number of
        features is an error)."""
        from sklearn.utils.validation import validate_data

        from bnpdeep.data import DataError

        try:
            validate_data(self, X, reset=reset, skip_check_array=True)
        except ValueError as err:
            raise DataError(str(err)) from None

    def _check_is_fitted(self):
        if not hasattr(self, "labels_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet; call fit(X) first.")

    def fit(self, X, y=None):
        X = self._validate_fit_data(X)
        start = time.perf_counter()
        self._fit(X)
        self.fit_time_ = time.perf_counter() - start
        return self

    def _fit(self, X):
        raise NotImplementedError


class ClusterEstimator(ClusterMixin, ValidatedEstimator):
    """Base class of the clustering methods: subclasses implement ``_fit(X)`` and
    ``_predict(X)``."""

    def predict(self, X) -> np.ndarray:
        return np.asarray(self._predict(self._validate_predict_data(X)))

    def result(self, y_true=None):
        """The fit as a :class:`bnpdeep.results.ClusteringResult`."""
        from bnpdeep.results import ClusteringResult

        self._check_is_fitted()
        metrics = None
        if y_true is not None:
            from bnpdeep.metrics import evaluate

            metrics = evaluate(y_true, self.labels_)
        return ClusteringResult(method=self.method_name, labels=np.asarray(self.labels_),
                                n_clusters=int(self.n_clusters_), time_s=float(self.fit_time_),
                                metrics=metrics)

    def _predict(self, X):
        raise NotImplementedError

    def _column_moments(self, X: np.ndarray):
        """The columns' (mean, std) that set the fit's coordinates, and N (a data-parallel
        estimator reduces them over its ranks)."""
        from .units import column_moments

        return column_moments(X)

    def _fit_coordinates(self, model, X: np.ndarray):
        """``(model, rows, units)`` the fit runs with (:func:`.units.fit_coordinates`)."""
        from .units import fit_coordinates

        return fit_coordinates(model, X, self._column_moments(X))


class Checkpointing:
    """Mixin for an estimator whose long fits save their state and can resume.

    ``fit(X, checkpoint_dir=..., resume=True)``: subclasses call
    :meth:`_save_state` every few steps and :meth:`_saved_state` at the start of
    ``_fit``; the file, named ``_CHECKPOINT``, is written atomically through
    :class:`bnpdeep.runs.RunFolder`.
    """

    _CHECKPOINT = "checkpoint.pt"
    _checkpoint_dir = None
    _resume = False

    def fit(self, X, y=None, checkpoint_dir=None, resume: bool = False):
        """Fit; with ``checkpoint_dir`` the state is saved as the fit goes, and with
        ``resume=True`` the fit continues from the last checkpoint there (a resumed
        seeded fit ends where an uninterrupted one would)."""
        if resume and checkpoint_dir is None:
            raise ValueError("resume=True needs a checkpoint_dir")
        self._checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self._resume = bool(resume)
        return super().fit(X, y)

    def checkpoint_path(self, checkpoint_dir) -> Path:
        """The file this estimator checkpoints to in ``checkpoint_dir``."""
        from bnpdeep.runs import RunFolder

        return RunFolder(checkpoint_dir).checkpoint_path(self._CHECKPOINT)

    @property
    def _checkpointing(self) -> bool:
        return self._checkpoint_dir is not None

    def _save_state(self, state: dict):
        from bnpdeep.runs import RunFolder

        RunFolder(self._checkpoint_dir).save_checkpoint(state, self._CHECKPOINT)

    def _saved_state(self) -> dict | None:
        """The checkpoint to resume from, or None (no resume asked, or none saved)."""
        if not self._resume:
            return None
        from bnpdeep.runs import RunFolder

        return RunFolder(self._checkpoint_dir).load_checkpoint(self._CHECKPOINT)


class CheckpointedEstimator(Checkpointing, ClusterEstimator):
    """A clustering estimator with resumable fits (:class:`Checkpointing`)."""
