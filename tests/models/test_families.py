"""The conjugate algebra of every family, checked against identities and scipy."""

import numpy as np
import pytest
import scipy.stats as st
import torch
from bnpdeep.models import (
    DiagonalGaussian,
    GaussianNIW,
    Multinomial,
    MultinomialParams,
    NormalInverseWishart,
)
from hypothesis import given, settings
from hypothesis import strategies as hs


def _gaussian(d, seed):
    g = np.random.default_rng(seed)
    a = g.normal(size=(d, d))
    return GaussianNIW(g.normal(size=d), 0.5 + g.random(), d + 1 + 3 * g.random(),
                       a @ a.T + d * np.eye(d))


def _diag(d, seed):
    g = np.random.default_rng(seed)
    return DiagonalGaussian(g.normal(size=d), 0.2 + g.random(d), 0.6 + 2 * g.random(d),
                            0.3 + g.random(d))


def _multinomial(v, seed):
    return Multinomial(0.3 + 2 * np.random.default_rng(seed).random(v))


def _data(family, n, seed):
    g = np.random.default_rng(seed + 1)
    if isinstance(family, Multinomial):
        return g.integers(0, 5, size=(n, family.dim)).astype(float)
    return g.normal(size=(n, family.dim)) * 2.0 + 1.0


FAMILIES = [_gaussian, _diag, _multinomial]


@pytest.mark.parametrize("make", FAMILIES)
@settings(max_examples=25, deadline=None)
@given(n=hs.integers(1, 8), d=hs.integers(1, 4), seed=hs.integers(0, 10_000))
def test_chain_rule(make, n, d, seed):
    """log p(x_1..x_n) = sum_i log p(x_i | x_1..x_{i-1})."""
    fam = make(d, seed)
    X = _data(fam, n, seed)
    total = fam.log_marginal_likelihood(X)
    stats = fam.empty_stats(1)
    seq = 0.0
    for i in range(n):
        seq += float(fam.log_predictive(X[i:i + 1], stats)[0, 0])
        stats = stats + fam.suff_stats(X[i:i + 1])
    assert total == pytest.approx(seq, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("make", FAMILIES)
def test_stats_algebra(make):
    fam = make(3, 0)
    X = _data(fam, 40, 0)
    z = np.random.default_rng(0).integers(0, 4, size=40)
    stats = fam.suff_stats_labels(X, z, 4)
    extra = fam.suff_stats(X[:7])
    # add then remove is the identity
    back = (stats[1] + extra) - extra
    for k in stats.fields:
        torch.testing.assert_close(back.fields[k], stats[1].fields[k])
    # merged statistics are the statistics of the union
    merged = stats.merge(0, 2)
    union = fam.suff_stats(X[(z == 0) | (z == 2)])
    for k in stats.fields:
        torch.testing.assert_close(merged[0].fields[k], union.fields[k])
    assert merged.k == 3
    # soft statistics with one-hot weights equal hard-label statistics
    soft = fam.suff_stats(X, np.eye(4)[z])
    for k in stats.fields:
        torch.testing.assert_close(soft.fields[k], stats.fields[k])
    # the union of all clusters
    for k in stats.fields:
        torch.testing.assert_close(stats.total().fields[k], fam.suff_stats(X).fields[k])


def test_niw_posterior_closed_form():
    """Posterior hyperparameters against the centred-scatter formulas."""
    fam = _gaussian(3, 1)
    X = _data(fam, 25, 1)
    post = fam.posterior(fam.suff_stats(X))
    n, xbar = len(X), X.mean(0)
    mu0, k0, nu0, psi0 = fam.mu0.numpy(), float(fam.kappa), float(fam.nu), fam.psi.numpy()
    scatter = (X - xbar).T @ (X - xbar)
    psi_n = psi0 + scatter + k0 * n / (k0 + n) * np.outer(xbar - mu0, xbar - mu0)
    np.testing.assert_allclose(post.mu[0].numpy(), (k0 * mu0 + n * xbar) / (k0 + n))
    np.testing.assert_allclose(post.psi[0].numpy(), psi_n, rtol=1e-10)
    assert float(post.nu[0]) == nu0 + n and float(post.kappa[0]) == k0 + n
    # MAP is the joint mode: no nearby point has a higher NIW density
    mode = fam.map_estimate(fam.suff_stats(X))
    niw = NormalInverseWishart(post.mu[0], post.kappa[0], post.nu[0], post.psi[0])
    best = niw.log_prob(NormalInverseWishart.pack(mode.mean[0], mode.cov[0]))
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        e = 1e-3 * torch.randn(3, 3, generator=g, dtype=torch.float64)
        cov = mode.cov[0] + e @ e.T + 1e-4 * torch.eye(3, dtype=torch.float64) * torch.randn(
            1, generator=g, dtype=torch.float64).abs()
        mean = mode.mean[0] + 1e-3 * torch.randn(3, generator=g, dtype=torch.float64)
        assert niw.log_prob(NormalInverseWishart.pack(mean, cov)) <= best
    # posterior mean of Sigma is Psi_n / (nu_n - d - 1)
    pm = fam.posterior_mean(fam.suff_stats(X))
    np.testing.assert_allclose(pm.cov[0].numpy(), psi_n / (nu0 + n - 4))


def test_diag_posterior_and_map():
    fam = _diag(2, 3)
    X = _data(fam, 30, 3)
    p = fam.posterior(fam.suff_stats(X))
    n, xbar = len(X), X.mean(0)
    mu0, k0, a0, b0 = (t.numpy() for t in (fam.mu0, fam.kappa, fam.a, fam.b))
    b_n = b0 + 0.5 * ((X - xbar) ** 2).sum(0) + k0 * n * (xbar - mu0) ** 2 / (2 * (k0 + n))
    np.testing.assert_allclose(p.b[0].numpy(), b_n, rtol=1e-10)
    np.testing.assert_allclose(p.a[0].numpy(), a0 + n / 2)
    mode = fam.map_estimate(fam.suff_stats(X))
    np.testing.assert_allclose(mode.var[0].numpy(), b_n / (a0 + n / 2 + 1.5))


def test_diag_predictive_is_product_of_student_t():
    fam = _diag(3, 4)
    X = _data(fam, 12, 4)
    stats = fam.suff_stats(X[:8])
    p = fam.posterior(stats)
    scale = np.sqrt((p.b * (p.kappa + 1) / (p.a * p.kappa))[0].numpy())
    ref = st.t.logpdf(X[8:], df=2 * p.a[0].numpy(), loc=p.mu[0].numpy(), scale=scale).sum(1)
    np.testing.assert_allclose(fam.log_predictive(X[8:], stats)[:, 0].numpy(), ref)


def test_niw_predictive_is_multivariate_t():
    fam = _gaussian(2, 5)
    X = _data(fam, 10, 5)
    stats = fam.suff_stats(X[:6])
    p = fam.posterior(stats)
    df = float(p.nu[0]) - 2 + 1
    shape = p.psi[0].numpy() * (float(p.kappa[0]) + 1) / (float(p.kappa[0]) * df)
    ref = st.multivariate_t.logpdf(X[6:], loc=p.mu[0].numpy(), shape=shape, df=df)
    np.testing.assert_allclose(fam.log_predictive(X[6:], stats)[:, 0].numpy(), ref)


def test_multinomial_against_scipy():
    fam = _multinomial(4, 6)
    X = _data(fam, 9, 6)
    alpha = fam.concentration.numpy()
    # a single row's marginal is scipy's Dirichlet-multinomial
    for row in X:
        ref = st.dirichlet_multinomial.logpmf(row, alpha, row.sum())
        assert fam.log_marginal_likelihood(row[None]) == pytest.approx(ref)
    probs = np.random.default_rng(0).dirichlet(np.ones(4), size=3)
    ll = fam.log_likelihood(X, MultinomialParams(torch.as_tensor(probs))).numpy()
    ref = np.array([[st.multinomial.logpmf(x, x.sum(), p) for p in probs] for x in X])
    np.testing.assert_allclose(ll, ref)


def test_gaussian_log_likelihood_against_scipy():
    fam = _gaussian(3, 7)
    X = _data(fam, 5, 7)
    params = fam.sample_prior(2)
    ll = fam.log_likelihood(X, params).numpy()
    for k in range(2):
        ref = st.multivariate_normal.logpdf(X, params.mean[k].numpy(), params.cov[k].numpy())
        np.testing.assert_allclose(ll[:, k], ref)
    dfam = _diag(3, 7)
    dp = dfam.sample_prior(2)
    ref = st.norm.logpdf(X[:, None, :], dp.mean.numpy()[None], np.sqrt(dp.var.numpy())[None])
    np.testing.assert_allclose(dfam.log_likelihood(X, dp).numpy(), ref.sum(-1))


@pytest.mark.parametrize("make", FAMILIES)
def test_expected_log_likelihood_and_kl_by_monte_carlo(make):
    """E_q[log p(x|theta)] and KL(q || prior) against averages over posterior draws."""
    torch.manual_seed(0)
    fam = make(2, 8)
    X = _data(fam, 15, 8)
    stats = fam.suff_stats(X)
    draws = [fam.sample_posterior(stats) for _ in range(4000)]
    ll = torch.stack([fam.log_likelihood(X[:3], p)[:, 0] for p in draws])
    exact = fam.expected_log_likelihood(X[:3], stats)[:, 0]
    se = ll.std(0) / np.sqrt(len(draws))
    assert torch.all((ll.mean(0) - exact).abs() < 5 * se + 1e-6)
    # KL by Monte Carlo: E_q[log q(theta) - log p(theta)]
    lq, lp = _log_densities(fam, stats, draws)
    diff = lq - lp
    kl = float(fam.kl_to_prior(stats)[0])
    assert abs(float(diff.mean()) - kl) < 5 * float(diff.std()) / np.sqrt(len(draws)) + 1e-6


def _log_densities(fam, stats, draws):
    """log q(theta) and log p(theta) of posterior draws, via torch distributions."""
    prior = fam.empty_stats(1)
    out = []
    for s in (stats, prior):
        if isinstance(fam, GaussianNIW):
            p = fam.posterior(s)
            dist = NormalInverseWishart(p.mu[0], p.kappa[0], p.nu[0], p.psi[0])
            out.append(torch.stack([dist.log_prob(NormalInverseWishart.pack(
                d.mean[0], d.cov[0])) for d in draws]))
        elif isinstance(fam, DiagonalGaussian):
            p = fam.posterior(s)
            vals = []
            for d in draws:
                prec = 1.0 / d.var[0]
                lg = torch.distributions.Gamma(p.a[0], p.b[0]).log_prob(prec)
                ln = torch.distributions.Normal(p.mu[0], (p.kappa[0] * prec).rsqrt()).log_prob(
                    d.mean[0])
                vals.append((lg + ln).sum())
            out.append(torch.stack(vals))
        else:
            dist = torch.distributions.Dirichlet(fam.posterior(s)[0])
            out.append(torch.stack([dist.log_prob(d.probs[0]) for d in draws]))
    return out


def test_niw_weak_default_handles_constant_columns():
    X = np.random.default_rng(0).normal(size=(50, 3))
    X[:, 1] = 2.0
    fam = GaussianNIW.weak(X)
    assert np.isfinite(fam.log_marginal_likelihood(X))
    assert float(fam.nu) == 5.0
    np.testing.assert_allclose(fam.mu0.numpy(), X.mean(0))


def test_hyperparameters_accept_lists_arrays_tensors():
    a = GaussianNIW([0.0, 0.0], 1.0, 4.0, [[1.0, 0.0], [0.0, 1.0]])
    b = GaussianNIW(np.zeros(2), np.float64(1.0), 4, np.eye(2))
    c = GaussianNIW(torch.zeros(2), torch.tensor(1.0), torch.tensor(4.0), torch.eye(2))
    X = np.random.default_rng(0).normal(size=(5, 2))
    vals = {f.log_marginal_likelihood(X) for f in (a, b, c)}
    assert len(vals) == 1
    with pytest.raises(ValueError, match="positive definite"):
        GaussianNIW([0, 0], 1.0, 4.0, [[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="nu"):
        GaussianNIW([0, 0], 1.0, 0.5, np.eye(2))


def test_volume_scale_uses_effective_dimension():
    from bnpdeep.models.families.base import volume_scale

    # isotropic: effective dimension d, scale K0 ** (-2 / d)
    assert volume_scale(torch.eye(2)) == pytest.approx(0.1)
    assert volume_scale(torch.eye(8), expected_clusters=4.0) == pytest.approx(4.0 ** -0.25)
    # ten copies of one feature are one direction, not ten
    v = torch.ones(10, 1, dtype=torch.float64)
    assert volume_scale(v @ v.T) == pytest.approx(0.01)
    X = np.random.default_rng(1).normal(size=(400, 2))
    fam = GaussianNIW.weak(X)
    expected = volume_scale(torch.cov(torch.as_tensor(X).T))
    np.testing.assert_allclose(fam.psi.numpy(), expected * np.cov(X.T), rtol=1e-4)


@pytest.mark.parametrize("make", FAMILIES)
def test_weighted_label_stats_equal_soft_stats(make):
    """suff_stats_labels(weights=w) puts w_i of row i in its cluster: the soft
    statistics of the one-hot matrix scaled by w."""
    fam = make(3, 0)
    X = _data(fam, 40, 1)
    g = np.random.default_rng(1)
    z, w = g.integers(0, 4, size=40), g.uniform(0.0, 2.0, size=40)
    hard = fam.suff_stats_labels(X, z, 4, weights=w)
    soft = fam.suff_stats(X, np.eye(4)[z] * w[:, None])
    for k in hard.fields:
        torch.testing.assert_close(hard.fields[k], soft.fields[k])


def test_gaussian_label_stats_across_row_chunks():
    """At d = 32 the outer products go 256 rows at a time: the labelled statistics of
    1000 rows (four chunks, one cluster empty) equal the soft statistics."""
    g = np.random.default_rng(2)
    X = g.normal(size=(1000, 32))
    z, w = g.integers(0, 5, size=1000), g.uniform(0.0, 2.0, size=1000)
    z[z == 3] = 4
    fam = _gaussian(32, 0)
    hard = fam.suff_stats_labels(X, z, 5, weights=w)
    soft = fam.suff_stats(X, np.eye(5)[z] * w[:, None])
    for k in hard.fields:
        torch.testing.assert_close(hard.fields[k], soft.fields[k])
    assert float(hard.sxx[3].abs().max()) == 0.0


@pytest.mark.parametrize("make", FAMILIES)
@pytest.mark.parametrize("d, k, m", [(2, 12, 2), (3, 2, 2), (16, 40, 3), (8, 30, 2), (8, 2, 2)])
def test_log_likelihood_at_picks_the_table_entries(make, d, k, m):
    """log_likelihood_at(X, params, comps) is log_likelihood's (N, K) table read at
    comps: the per-row path (d = 2 against 12 components), the table path
    (2 components) and, for the full Gaussian, the path grouped by component
    (d = 16, 5000 rows of 3 components; d = 8; d = 8 against 2 components); past
    2 components the last is never read."""
    fam = make(d, 1)
    n = 5000 if d == 16 else 300
    X = torch.as_tensor(_data(fam, n, 2))
    params = fam.sample_prior(k)
    high = k - 1 if k > 2 else k
    comps = torch.as_tensor(np.random.default_rng(3).integers(0, high, size=(n, m)))
    got = fam.log_likelihood_at(X, params, comps)
    torch.testing.assert_close(got, fam.log_likelihood(X, params).gather(1, comps))


@pytest.mark.parametrize("make", [_gaussian, _diag])
@pytest.mark.parametrize("d", [1, 3])
def test_standardized_prior_is_the_same_model_in_other_units(make, d):
    """y = (x - shift) / scale: the marginal likelihood changes by the Jacobian
    -N sum log scale only, and parameters mapped back give the same likelihood."""
    fam = make(d, 7)
    X = _data(fam, 9, 7)
    g = np.random.default_rng(3)
    shift, scale = g.normal(size=d) * 5, np.exp(g.normal(size=d) * 3)
    fam_y, Y = fam.standardized(shift, scale), (X - shift) / scale
    jac = X.shape[0] * np.log(scale).sum()
    assert fam_y.log_marginal_likelihood(Y) == pytest.approx(
        fam.log_marginal_likelihood(X) + jac, rel=1e-10)
    # per-row predictive given some rows, in both units
    py = fam_y.log_predictive(Y[:4], fam_y.suff_stats(Y[4:]))
    px = fam.log_predictive(X[:4], fam.suff_stats(X[4:]))
    np.testing.assert_allclose(py.numpy(), px.numpy() + np.log(scale).sum(), rtol=1e-10)
    torch.manual_seed(0)
    params_y = fam_y.sample_posterior(fam_y.suff_stats(Y))
    params_x = fam.params_from_standardized(params_y, shift, scale)
    np.testing.assert_allclose(fam.log_likelihood(X, params_x).numpy(),
                               fam_y.log_likelihood(Y, params_y).numpy()
                               - np.log(scale).sum(), rtol=1e-10)
    with pytest.raises(ValueError, match="scale"):
        fam.standardized(shift, np.zeros(d))


def test_student_and_count_families_under_a_change_of_units():
    from bnpdeep.models import StudentNIW

    g = _gaussian(2, 1)
    t = StudentNIW(g.mu0, g.kappa, g.nu, g.psi, df=3.0).standardized([1.0, -2.0], [2.0, 0.5])
    ref = g.standardized([1.0, -2.0], [2.0, 0.5])
    assert isinstance(t, StudentNIW) and t.df == 3.0
    torch.testing.assert_close(t.psi, ref.psi)
    torch.testing.assert_close(t.mu0, ref.mu0)
    with pytest.raises(NotImplementedError, match="Multinomial"):
        _multinomial(3, 0).standardized(np.zeros(3), np.ones(3))


@pytest.mark.parametrize("cls", [GaussianNIW, DiagonalGaussian])
def test_weak_prior_follows_a_change_of_each_columns_units(cls):
    """weak((X - m) / s) is weak(X) mapped to the new units: the default model, and so
    every fit under it, does not depend on the columns' units (here 1e-4 to 1e5)."""
    g = np.random.default_rng(8)
    X = g.normal(size=(60, 4)) @ g.normal(size=(4, 4)) * [1e5, 1.0, 1e-4, 30.0] + [3e5, 0, 1, -7]
    m, s = X.mean(0) + 1.0, X.std(0) * [2.0, 1.0, 0.5, 3.0]
    ref, fam = cls.weak(X).standardized(m, s), cls.weak((X - m) / s)
    for name in ("mu0", "psi") if cls is GaussianNIW else ("mu0", "b"):
        np.testing.assert_allclose(getattr(fam, name).numpy(), getattr(ref, name).numpy(),
                                   rtol=1e-9, atol=1e-12)
