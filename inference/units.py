"""The coordinates a fit runs in: the data standardised per column.

A change of units y = (x - shift) / scale maps the model to the one it implies for y
(:meth:`bnpdeep.models.DPMixture.standardized`), with the same posterior over
partitions; densities of x and of y differ by the Jacobian |dy/dx| = prod_j 1/scale_j
per row.  Exact kernels are exact in either coordinates, but proposals (principal
axes, 2-means, births, anchor bandwidths, k-means starts) and optimisers measure
Euclidean lengths, which only standardised coordinates make free of the columns'
units.  So every Bayesian estimator fits in y and reports in x's units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..models import DPMixture
from ..models.hyperpriors import Hyperpriors, is_grid


@dataclass(frozen=True)
class FitUnits:
    """The coordinates a fit runs in, y = (x - shift) / scale per column (None: the
    data's own); what it reports goes back to x's units: log p(x) = log p(y) -
    sum_j log scale_j per row, and ``mu0``."""

    shift: np.ndarray | None = None
    scale: np.ndarray | None = None
    # vectors in x's units the log joint is a density of: the rows, and mu0 under a
    # continuous hyperprior
    vectors: int = 0

    @property
    def log_jacobian(self) -> float:
        """log |dy/dx| of one row, -sum_j log scale_j."""
        return 0.0 if self.scale is None else -float(np.log(self.scale).sum())

    @property
    def lp_offset(self) -> float:
        """log p(x, ...) - log p(y, ...) of the log joint."""
        return self.vectors * self.log_jacobian

    def rows(self, X: np.ndarray) -> np.ndarray:
        """New rows in the fit's coordinates."""
        return X if self.scale is None else (X - self.shift) / self.scale

    def hyper_value(self, name: str, value: np.ndarray) -> np.ndarray:
        if self.scale is None:
            return value
        return Hyperpriors.value_from_standardized(name, value, self.shift, self.scale)


def column_moments(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Each column's mean and standard deviation (divisor N; 1 for a constant column),
    as :func:`bnpdeep.data.standardize` takes them, and N."""
    std = X.std(0)
    return X.mean(0), np.where(std > 0, std, 1.0), X.shape[0]


def fit_coordinates(model: DPMixture, X: np.ndarray, moments=None):
    """``(model, rows, units)`` a fit runs with: X standardised per column under the
    model it implies there, where every part of the model has a change of units; else
    X and the model as given.  ``moments`` are the columns' (mean, std) and the number
    of rows when X is one piece of the data (a data-parallel rank's rows); by default
    X's own.  Data already
    standardised to rounding (|shift| and |scale - 1| below 1e-8) run as given: the
    map would only perturb last bits."""
    shift, scale, n = column_moments(X) if moments is None else moments
    if np.all(np.abs(shift) <= 1e-8 * scale) and np.all(np.abs(scale - 1.0) <= 1e-8):
        return model, X, FitUnits()
    try:
        mapped = model.standardized(shift, scale)
    except NotImplementedError:          # counts, or a hyperprior without units map
        return model, X, FitUnits()
    hp = model.hyperpriors
    mu0_density = hp is not None and "mu0" in hp.priors and not is_grid(hp.priors["mu0"])
    return mapped, (X - shift) / scale, FitUnits(shift, scale, n + int(mu0_density))


__all__ = ["FitUnits", "column_moments", "fit_coordinates"]
