"""Convergence reporting: R-hat and ESS of the samplers' draws (Vehtari et al. 2021),
and scikit-learn's ConvergenceWarning where a fit ends unconverged."""

import math
import warnings

import arviz as az
import numpy as np
import pytest
import torch
from bnpdeep.inference.mcmc import chain_diagnostics, convergence_problems
from sklearn.exceptions import ConvergenceWarning

from bnpdeep import (
    CollapsedGibbs,
    DeepDPM,
    DirichletProcess,
    DPMixture,
    GaussianNIW,
    MemoizedVB,
    make_mixture,
)


def _convergence_warnings(fit):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = fit()
    return est, [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]


def test_chain_diagnostics_edge_cases_and_arviz_agreement():
    rng = np.random.default_rng(0)
    iid = rng.normal(size=(4, 500))
    rhat, ess = chain_diagnostics(iid)
    assert rhat == pytest.approx(float(az.rhat(iid)), rel=1e-4)
    assert ess == pytest.approx(float(az.ess(iid, method="bulk")), rel=1e-4)
    assert rhat < 1.01 and ess > 1500
    # chains around different values: R-hat flags them
    shifted = iid + np.arange(4)[:, None]
    assert chain_diagnostics(shifted)[0] > 1.5
    # a random walk: autocorrelated draws, small ESS
    walk = np.cumsum(rng.normal(size=(1, 500)), axis=1)
    rhat, ess = chain_diagnostics(walk)
    assert math.isnan(rhat) and ess < 50
    # every draw the same: R-hat undefined, every draw counts
    rhat, ess = chain_diagnostics(np.full((2, 30), 7.0))
    assert math.isnan(rhat) and ess == 60
    # each chain stuck at its own value: infinitely far from converged
    stuck = np.repeat([[3.0], [4.0]], 30, axis=1)
    assert chain_diagnostics(stuck)[0] == math.inf
    assert all(math.isnan(v) for v in chain_diagnostics(np.ones((2, 3)) * [[1, 2, 3]]))
    # one state's log joint in the last bits differently per chain (summation order),
    # beside excursions drawn alike: round-off is no disagreement between the chains
    mode = np.where(rng.random((2, 500)) < 0.9, -64.3, -64.3 - rng.exponential(3, (2, 500)))
    mode[mode == -64.3] += np.array([[1e-13], [-1e-13]]).repeat(500, 1)[mode == -64.3]
    rhat, ess = chain_diagnostics(mode)
    assert rhat < 1.01 and ess > 500
    with pytest.raises(ValueError, match="shape"):
        chain_diagnostics(np.ones(10))


def test_convergence_problems_apply_vehtari_thresholds():
    ok = {"rhat_K": 1.005, "ess_K": 450.0, "rhat_lp": float("nan"), "ess_lp": 400.0}
    assert convergence_problems(ok, n_chains=4) == []
    bad = {"rhat_K": 1.02, "ess_K": 450.0, "rhat_lp": 1.0, "ess_lp": 399.0}
    assert convergence_problems(bad, n_chains=4) == ["R-hat of K 1.02 > 1.01",
                                                     "bulk ESS of lp 399 < 400"]


def test_mixed_chains_pass_and_unconverged_chains_warn():
    """Two tight groups and a row between them, under a prior at the groups' scale:
    a sweep moves that row and now and then gives it or an edge row a cluster of its
    own, so Gibbs chains mix within a few sweeps."""
    rng = np.random.default_rng(2)
    X = np.vstack([rng.normal(-3, 0.5, (10, 2)), rng.normal(3, 0.5, (10, 2)), [[0.0, 0.0]]])
    eye = torch.eye(2, dtype=torch.float64)
    model = DPMixture(GaussianNIW(mu0=torch.zeros(2, dtype=torch.float64), kappa=0.1,
                                  nu=10.0, psi=1.75 * eye), DirichletProcess(1.0))
    est, caught = _convergence_warnings(
        lambda: CollapsedGibbs(model=model, n_chains=2, max_iter=1000, random_state=0).fit(X))
    assert caught == []
    conv = est.convergence_
    assert max(conv["rhat_K"], conv["rhat_lp"]) < 1.01 and min(conv["ess_K"], conv["ess_lp"]) > 200
    # chains far too short for the data: the fit says so and why
    X, _ = make_mixture(600, 2, 6, separation=3.0, seed=3)
    est, caught = _convergence_warnings(
        lambda: CollapsedGibbs(n_chains=2, max_iter=30, random_state=0).fit(X))
    assert len(caught) == 1
    assert "CollapsedGibbs: the kept draws (2 chains of 15)" in caught[0]
    assert "bulk ESS of lp" in caught[0] and "run the chains longer" in caught[0]
    assert est.convergence_["ess_lp"] < 200


def test_optimisers_warn_when_they_run_out_of_iterations():
    X, _ = make_mixture(300, 2, 3, seed=5)
    est, caught = _convergence_warnings(lambda: MemoizedVB(max_laps=2).fit(X))
    assert not est.converged_ and len(caught) == 1 and "raise max_laps" in caught[0]
    est, caught = _convergence_warnings(lambda: MemoizedVB().fit(X))
    assert est.converged_ and caught == []
    est, caught = _convergence_warnings(lambda: DeepDPM(max_epochs=3).fit(X))
    assert not est.converged_ and len(caught) == 1 and "raise max_epochs" in caught[0]
    # the convergence stop switched off: a fixed number of epochs, nothing to warn of
    est, caught = _convergence_warnings(lambda: DeepDPM(max_epochs=3, tol=0).fit(X))
    assert caught == []
    est, caught = _convergence_warnings(lambda: DeepDPM().fit(X))
    assert est.converged_ and caught == []
