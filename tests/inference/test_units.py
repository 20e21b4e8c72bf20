"""The Bayesian estimators do not depend on the columns' units.

The default prior follows a change of units (``GaussianNIW.weak``), so the model's
posterior over partitions is the same for X and for U = X diag(s) + m; its log
densities differ by the Jacobian.  The estimators run in standardised coordinates, so
their proposals (principal axes, 2-means, births, anchor bandwidths) see the same
numbers too: the same seed gives the same clustering, and what they report in the
data's units differs by exactly the Jacobian.
"""

import numpy as np
import pytest
import torch
from bnpdeep.models import DirichletProcess, DPMixture, GaussianNIW, Hyperpriors

from bnpdeep import CollapsedGibbs, DistributedSubclusterSampler, SubclusterSampler
from bnpdeep.data import make_mixture

S = np.array([1e-3, 1.0, 4e3])           # one column in grams, one in tonnes, ...
M = np.array([2.0, -30.0, 1e5])


def _data(n=240):
    X, y = make_mixture(n, 3, 3, separation=5.0, seed=11)
    # the make_mixture columns already differ a little: standardise so that the
    # reference fit runs on data whose units are 1
    return (X - X.mean(0)) / X.std(0), y


@pytest.mark.parametrize("cls", [SubclusterSampler, CollapsedGibbs,
                                 DistributedSubclusterSampler])
def test_samplers_give_the_same_chains_in_any_units(cls):
    X, _ = _data()
    U = X * S + M
    a = cls(max_iter=40, random_state=3).fit(X)
    b = cls(max_iter=40, random_state=3).fit(U)
    np.testing.assert_array_equal(b.label_draws_, a.label_draws_)
    jac = -np.log(S).sum()
    # log p(u, z) = log p(x, z) - N sum_j log s_j
    np.testing.assert_allclose(b.lp_draws_, a.lp_draws_ + X.shape[0] * jac, rtol=1e-9)
    np.testing.assert_allclose(b.lp_trace_, a.lp_trace_ + X.shape[0] * jac, rtol=1e-9)
    la, lb = a.posterior_arrays()["log_likelihood"], b.posterior_arrays()["log_likelihood"]
    np.testing.assert_allclose(lb, la + jac, rtol=1e-9, atol=1e-9)
    new = np.random.default_rng(0).normal(size=(30, 3))
    np.testing.assert_array_equal(b.predict(new * S + M), a.predict(new))
    np.testing.assert_allclose(b.predict_proba(new * S + M), a.predict_proba(new),
                               rtol=1e-6, atol=1e-12)


def test_hyperparameter_draws_come_back_in_the_datas_units():
    """A hierarchy with a Gaussian prior on mu0: its draws of mu0 map as the points do,
    and the log joint, a density of the N rows and of mu0, moves by (N + 1) times the
    Jacobian."""
    X, _ = _data(150)
    U = X * S + M

    def model(D, loc, tril):
        return DPMixture(GaussianNIW.weak(D), DirichletProcess(1.0), hyperpriors=Hyperpriors(
            kappa=torch.distributions.Gamma(2.0, 2.0),
            mu0=torch.distributions.MultivariateNormal(torch.as_tensor(loc),
                                                       scale_tril=torch.as_tensor(tril))))

    a = SubclusterSampler(model(X, np.zeros(3), np.eye(3)), max_iter=30,
                          random_state=1).fit(X)
    b = SubclusterSampler(model(U, M, np.diag(S)), max_iter=30, random_state=1).fit(U)
    np.testing.assert_array_equal(b.label_draws_, a.label_draws_)
    pa, pb = a.posterior_arrays()["posterior"], b.posterior_arrays()["posterior"]
    np.testing.assert_allclose(pb["kappa"], pa["kappa"], rtol=1e-9)
    np.testing.assert_allclose(pb["mu0"], pa["mu0"] * S + M, rtol=1e-9)
    assert np.ptp(pa["mu0"]) > 0                      # mu0 was sampled
    jac = -np.log(S).sum()
    np.testing.assert_allclose(b.lp_draws_, a.lp_draws_ + (X.shape[0] + 1) * jac,
                               rtol=1e-9)
    np.testing.assert_allclose(b.hyper_["mu0"], a.hyper_["mu0"] * S + M, rtol=1e-9)


def test_standardised_data_run_as_given():
    """Data standardised to rounding skip the map (a no-op that would only perturb the
    last bits); any other data run standardised."""
    from bnpdeep.inference.mcmc import default_model
    from bnpdeep.inference.units import fit_coordinates

    X, _ = _data()
    model = default_model(X)
    same, rows, units = fit_coordinates(model, X)
    assert same is model and rows is X and units.scale is None
    mapped, rows, units = fit_coordinates(default_model(X * 2.0), X * 2.0)
    np.testing.assert_allclose(units.scale, 2.0)
    np.testing.assert_allclose(rows, X, atol=1e-12)
    assert units.lp_offset == pytest.approx(-X.shape[0] * 3 * np.log(2.0))


def test_memoized_vb_gives_the_same_fit_in_any_units():
    """Births split along principal axes and by k-means: in standardised coordinates
    they are the same proposals at any units; L moves by the Jacobian."""
    from bnpdeep import MemoizedVB

    X, y = _data()
    U = X * S + M
    a = MemoizedVB(random_state=0).fit(X)
    b = MemoizedVB(random_state=0).fit(U)
    assert a.n_clusters_ == 3
    np.testing.assert_array_equal(b.labels_, a.labels_)
    np.testing.assert_allclose(b.resp_, a.resp_, atol=1e-8)
    n, jac = X.shape[0], -np.log(S).sum()
    np.testing.assert_allclose(b.elbo_history_, np.asarray(a.elbo_history_) + n * jac,
                               rtol=1e-9)
    for ma, mb in zip(a.moves_, b.moves_, strict=True):
        assert mb["elbo_after"] == pytest.approx(ma["elbo_after"] + n * jac, rel=1e-9)
    new = np.random.default_rng(0).normal(size=(30, 3))
    np.testing.assert_allclose(b.predict_proba(new * S + M), a.predict_proba(new),
                               atol=1e-9)
    pa, pb = a.posterior_arrays(), b.posterior_arrays()
    np.testing.assert_allclose(pb["log_likelihood"], pa["log_likelihood"] + jac, rtol=1e-9)
    np.testing.assert_allclose(pb["sample_stats"]["lp"], pa["sample_stats"]["lp"] + n * jac,
                               rtol=1e-9)
    np.testing.assert_allclose(pb["observed_data"], U)


def test_deepdpm_gives_the_same_fit_in_any_units():
    """The nets, the M-step and the split/merge proposals run on the standardised
    rows; the fitted guide is then the same guide of X: Predictive with the model
    and the guide, predict and predict_proba take rows in X's units."""
    from pyro.infer import Predictive

    from bnpdeep import DeepDPM

    X, y = _data(400)
    U = X * S + M
    kw = dict(max_epochs=30, random_state=0)
    a, b = DeepDPM(**kw).fit(X), DeepDPM(**kw).fit(U)
    assert a.n_clusters_ == 3
    np.testing.assert_array_equal(b.labels_, a.labels_)
    assert [h["K"] for h in b.history_] == [h["K"] for h in a.history_]
    jac = -np.log(S).sum()
    np.testing.assert_allclose([h["log_lik"] for h in b.history_],
                               [h["log_lik"] + jac for h in a.history_], rtol=1e-9)
    new = np.random.default_rng(0).normal(size=(30, 3))
    np.testing.assert_allclose(b.predict_proba(new * S + M), a.predict_proba(new),
                               atol=1e-5)
    np.testing.assert_array_equal(b.predict(U), b.labels_)
    ma, mb = a.guide_.mixture, b.guide_.mixture
    np.testing.assert_allclose(mb.params.mean, ma.params.mean * S + M, rtol=1e-9)
    np.testing.assert_allclose(mb.params.cov, ma.params.cov * S[:, None] * S[None, :],
                               rtol=1e-9)
    draws = Predictive(b.model_.model, guide=b.guide_, num_samples=50,
                       return_sites=["z"])(torch.as_tensor(U))["z"]
    assert (torch.mode(draws, 0).values.numpy() == b.labels_).mean() > 0.99
    pa, pb = a.posterior_arrays(), b.posterior_arrays()
    np.testing.assert_allclose(pb["log_likelihood"], pa["log_likelihood"] + jac, rtol=1e-6)


def test_the_model_maps_with_its_hyperparameters():
    """psi = psi_scale * Psi0 in either coordinates, so a hyperparameter value means
    the same prior before and after the map; a mu0 prior (Gaussian or a grid) maps as
    the points do, so its density of the mapped value differs by the Jacobian."""
    X, _ = _data(50)
    fam = GaussianNIW.weak(X * S + M)
    a = fam.with_hyperparameters(psi_scale=3.0).standardized(M, S)
    b = fam.standardized(M, S).with_hyperparameters(psi_scale=3.0)
    torch.testing.assert_close(a.psi, b.psi)
    assert a.psi_scale == b.psi_scale == 3.0
    c = fam.with_hyperparameters(psi_scale=0.5).standardized(M, S).with_hyperparameters(
        psi_scale=3.0)
    torch.testing.assert_close(c.psi, b.psi)
    import pyro.distributions as pdist

    mvn = torch.distributions.MultivariateNormal(torch.as_tensor(M),
                                                 scale_tril=torch.diag(torch.as_tensor(S)))
    grid = pdist.Empirical(torch.as_tensor(np.stack([M, M + S])), torch.zeros(2))
    point = M + 0.3 * S
    for prior in (mvn, grid):
        mapped = Hyperpriors(mu0=prior).standardized(M, S).priors["mu0"]
        y = torch.as_tensor((point - M) / S)
        if prior is mvn:
            assert float(mapped.log_prob(y)) == pytest.approx(
                float(prior.log_prob(torch.as_tensor(point))) + np.log(S).sum())
        else:
            np.testing.assert_allclose(mapped.enumerate_support().numpy(),
                                       [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], atol=1e-12)
    with pytest.raises(NotImplementedError, match="mu0"):
        Hyperpriors(mu0=torch.distributions.Laplace(torch.zeros(3), 1.0)).standardized(M, S)
