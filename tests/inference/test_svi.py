"""Mean-field SVI on the Pyro program: recovery, draws, options."""

import arviz as az
import numpy as np
import pyro
import pytest
import torch
from bnpdeep.inference import MeanFieldSVI
from bnpdeep.models import (
    DirichletProcess,
    DPMixture,
    FiniteDirichlet,
    GaussianNIW,
    Hyperpriors,
    Multinomial,
    StudentNIW,
)
from sklearn.metrics import homogeneity_score

from bnpdeep.data import make_mixture
from bnpdeep.metrics import nmi


def test_recovers_a_separated_mixture_and_the_elbo_rises():
    X, y = make_mixture(900, 2, 3, separation=8.0, seed=0)
    est = MeanFieldSVI(truncation=8, max_epochs=300, batch_size=300, random_state=0).fit(X)
    h = np.asarray(est.elbo_history_)
    assert len(h) == 300 and np.all(np.isfinite(h))
    assert h[-10:].mean() > h[:10].mean() + 20
    # the k-means start puts 8 components on 3 clusters; the DP prior drains the
    # surplus slowly (the point of comparing plain SVI with moVB's merges): in
    # standardised coordinates 6 remain occupied after 150 epochs
    assert 3 <= est.n_clusters_ <= 6
    assert np.sort(est.weights_)[::-1][:3].sum() > 0.8
    assert nmi(y, est.labels_) > 0.85
    np.testing.assert_array_equal(est.predict(X), est.labels_)
    np.testing.assert_allclose(est.predict_proba(X[:5]).sum(1), 1.0)


def test_inference_data_from_guide_draws():
    X, _ = make_mixture(300, 2, 2, separation=8.0, seed=1)
    est = MeanFieldSVI(truncation=5, max_epochs=20, n_samples=15, random_state=0).fit(X)
    idata = est.to_inference_data()
    assert idata.posterior["K"].shape == (1, 15)
    assert idata.log_likelihood["x"].shape == (1, 15, 300)
    assert np.isfinite(az.loo(idata).elpd_loo)
    # drawing does not disturb the caller's random stream
    torch.manual_seed(5)
    a = torch.rand(1)
    torch.manual_seed(5)
    est.posterior_arrays()
    assert torch.equal(torch.rand(1), a)


def test_finite_dirichlet_and_multinomial():
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.full(6, 0.3), size=2)
    z = rng.integers(0, 2, 400)
    X = np.stack([rng.multinomial(30, probs[c]) for c in z]).astype(float)
    model = DPMixture(Multinomial.weak(X), FiniteDirichlet(4))
    est = MeanFieldSVI(model, max_epochs=30, random_state=0).fit(X)
    assert est.model_.truncation == 4
    # surplus components may stay occupied (slow pruning), but each one is pure
    assert homogeneity_score(z, est.labels_) > 0.9


def test_options_are_checked():
    X, _ = make_mixture(50, 2, 2, seed=0)
    with pytest.raises(ValueError, match="truncation"):
        MeanFieldSVI(truncation=0).fit(X)
    with pytest.raises(ValueError, match="lr"):
        MeanFieldSVI(lr=0).fit(X)
    with pytest.raises(ValueError, match="features"):
        MeanFieldSVI(DPMixture(GaussianNIW.weak(X[:, :1]))).fit(X)
    gamma = torch.distributions.Gamma(torch.tensor(1.0, dtype=torch.float64),
                                      torch.tensor(1.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="does not fit hyperpriors"):
        MeanFieldSVI(DPMixture(GaussianNIW.weak(X), hyperpriors=Hyperpriors(kappa=gamma))).fit(X)


def test_fit_leaves_pyros_param_store_and_torchs_generator_alone():
    X, _ = make_mixture(150, 2, 2, seed=0)
    with pyro.get_param_store().scope():
        pyro.param("users_own", torch.ones(3))
        state = torch.get_rng_state()
        est = MeanFieldSVI(max_epochs=3).fit(X)
        assert list(pyro.get_param_store().keys()) == ["users_own"]
        assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(est.predict(X), est.labels_)


def test_fitted_guide_ignores_same_named_parameters_in_the_users_store():
    """A user's store holding another AutoNormal's parameters (other shapes) does not
    reach the fitted guide's draws."""
    X, _ = make_mixture(150, 2, 2, seed=0)
    other = MeanFieldSVI(truncation=3, max_epochs=2).fit(X)
    est = MeanFieldSVI(truncation=5, max_epochs=3, n_samples=5).fit(X)
    with pyro.get_param_store().scope():
        with pyro.get_param_store().scope(other._param_state) as leaked:
            pass
        pyro.get_param_store().set_state(leaked)
        assert "AutoNormal.locs.v" in pyro.get_param_store()
        arrays = est.posterior_arrays()
    assert np.isfinite(arrays["log_likelihood"]).all()


def test_the_fit_does_not_depend_on_the_datas_units():
    """Adam's steps and init_scale are lengths in the parameters' units; the fit runs
    in standardised coordinates, so rescaled and shifted data give the same clusters,
    and the ELBO differs by the Jacobian N sum_j log(unit)."""
    X, y = make_mixture(300, 2, 3, separation=10.0, seed=4)
    fits = {u: MeanFieldSVI(truncation=6, max_epochs=15, random_state=0).fit(X * u + 3 * u)
            for u in (1.0, 1e-6, 1e6)}
    ref = fits[1.0]
    assert nmi(y, ref.labels_) > 0.8
    for u, est in fits.items():
        np.testing.assert_array_equal(est.labels_, ref.labels_)
        np.testing.assert_allclose(est.weights_, ref.weights_, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(np.asarray(est.elbo_history_) + 300 * 2 * np.log(u),
                                   ref.elbo_history_, rtol=1e-8)
        # component parameters come back in the data's units
        params, ref_params = est._params[1], ref._params[1]
        np.testing.assert_allclose(params.mean, ref_params.mean * u, rtol=1e-6)
        np.testing.assert_allclose(params.cov, ref_params.cov * u * u, rtol=1e-6)
        np.testing.assert_array_equal(est.predict(X[:20] * u + 3 * u), ref.labels_[:20])
        np.testing.assert_allclose(est.scale_, ref.scale_ * u, rtol=1e-10)


def test_strongly_correlated_columns_fit():
    """Columns with correlations near 1 (wdbc's radius, perimeter and area): the guide's
    covariance coordinates are scale-free (LDL^T), so its draws stay positive definite
    in floating point; a step on the Cholesky factor's entries themselves made
    L L^T numerically singular at the first step."""
    rng = np.random.default_rng(0)
    X, y = make_mixture(400, 3, 2, separation=8.0, seed=1)
    mix = rng.normal(size=(3, 24))
    Xc = X @ mix + 1e-3 * rng.normal(size=(400, 24))     # rank 3 plus noise of 1e-3
    est = MeanFieldSVI(truncation=6, max_epochs=100, random_state=0).fit(Xc)
    h = np.asarray(est.elbo_history_)
    assert np.all(np.isfinite(h)) and h[-5:].mean() > h[:5].mean()
    assert est.n_clusters_ == 2 and nmi(y, est.labels_) > 0.99


def test_student_components_fit_the_t_density():
    """With StudentNIW the program observes the t density: on clusters with t(3)
    offsets the t model's ELBO (a bound on its evidence) and its LOO predictive
    density beat the Gaussian model's, and fewer of its components hold points."""
    rng = np.random.default_rng(0)
    centres = 8.0 * rng.normal(size=(4, 2))
    y = rng.integers(0, 4, 800)
    X = centres[y] + rng.standard_normal((800, 2)) * np.sqrt(3 / rng.chisquare(3, (800, 1)))
    fits = {name: MeanFieldSVI(model=model, n_samples=20, random_state=0).fit(X)
            for name, model in [("gauss", None), ("t", DPMixture(StudentNIW.weak(X, df=4.0),
                                                                 DirichletProcess(1.0)))]}
    loo = {name: az.loo(est.to_inference_data()).elpd_loo for name, est in fits.items()}
    assert loo["t"] > loo["gauss"] + 10.0, loo
    assert fits["t"].elbo_history_[-1] > fits["gauss"].elbo_history_[-1] + 20.0
    assert fits["t"].n_clusters_ < fits["gauss"].n_clusters_
    assert fits["t"].elbo_history_[-1] > fits["t"].elbo_history_[0]
