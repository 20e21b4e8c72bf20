"""Pyro distributions against scipy."""

import numpy as np
import pytest
import scipy.stats as st
import torch
from bnpdeep.models import InverseWishart, MultinomialCounts, NormalInverseWishart


def _scale(d, seed=0):
    a = np.random.default_rng(seed).normal(size=(d, d))
    return a @ a.T + d * np.eye(d)


@pytest.mark.parametrize("d", [1, 2, 4])
def test_inverse_wishart_log_prob_matches_scipy(d):
    psi, nu = _scale(d), d + 2.5
    iw = InverseWishart(torch.tensor(nu, dtype=torch.float64), torch.as_tensor(psi))
    samples = st.invwishart.rvs(df=nu, scale=psi, size=5, random_state=1).reshape(5, d, d)
    ref = st.invwishart.logpdf(np.moveaxis(samples, 0, -1) if d > 1 else samples[:, 0, 0],
                               df=nu, scale=psi)
    np.testing.assert_allclose(iw.log_prob(torch.as_tensor(samples)).numpy(), ref)


def test_inverse_wishart_samples_match_scipy():
    """Two-sample KS tests on entries of the sampled matrices, plus the mean."""
    torch.manual_seed(0)
    d, nu, psi = 3, 6.0, _scale(3, 2)
    ours = InverseWishart(torch.tensor(nu, dtype=torch.float64), torch.as_tensor(psi)).sample(
        (4000,)).numpy()
    ref = st.invwishart.rvs(df=nu, scale=psi, size=4000, random_state=0)
    for i, j in [(0, 0), (1, 2), (2, 2)]:
        assert st.ks_2samp(ours[:, i, j], ref[:, i, j]).pvalue > 1e-3
    np.testing.assert_allclose(ours.mean(0), psi / (nu - d - 1), rtol=0.15, atol=0.05)


def test_normal_inverse_wishart_log_prob_and_samples():
    torch.manual_seed(1)
    d, nu, kappa = 2, 5.0, 0.7
    psi, mu0 = _scale(d, 3), np.array([1.0, -2.0])
    niw = NormalInverseWishart(torch.as_tensor(mu0), kappa, nu, torch.as_tensor(psi))
    v = niw.sample((3000,))
    mu, sigma = NormalInverseWishart.unpack(v)
    assert v.shape == (3000, d + 1, d)
    ref = np.array([st.invwishart.logpdf(s, df=nu, scale=psi)
                    + st.multivariate_normal.logpdf(m, mu0, s / kappa)
                    for m, s in zip(mu[:10].numpy(), sigma[:10].numpy(), strict=True)])
    np.testing.assert_allclose(niw.log_prob(v[:10]).numpy(), ref)
    # marginal of mu is a multivariate t with nu - d + 1 dof, scale psi / (kappa (nu - d + 1))
    df = nu - d + 1
    ref_mu = st.multivariate_t.rvs(mu0, psi / (kappa * df), df=df, size=3000, random_state=0)
    assert st.ks_2samp(mu[:, 0].numpy(), ref_mu[:, 0]).pvalue > 1e-3


def test_batch_shapes():
    psi = torch.as_tensor(np.stack([_scale(2, s) for s in range(3)]))
    iw = InverseWishart(torch.full((3,), 4.0, dtype=torch.float64), psi)
    assert iw.batch_shape == (3,) and iw.event_shape == (2, 2)
    assert iw.sample((5,)).shape == (5, 3, 2, 2)
    assert iw.expand((4, 3)).sample().shape == (4, 3, 2, 2)
    niw = NormalInverseWishart(torch.zeros(3, 2, dtype=torch.float64), 1.0, 4.0, psi)
    assert niw.batch_shape == (3,) and niw.sample().shape == (3, 3, 2)
    assert iw.support.check(iw.sample()).all()


def test_multinomial_counts_variable_totals():
    probs = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    x = torch.tensor([[1.0, 2.0, 0.0], [4.0, 0.0, 3.0]], dtype=torch.float64)
    ref = [st.multinomial.logpmf(r, r.sum(), probs.numpy()) for r in x.numpy()]
    np.testing.assert_allclose(MultinomialCounts(probs).log_prob(x).numpy(), ref)
    assert MultinomialCounts(probs, total_count=7).sample((4,)).sum(-1).eq(7).all()


def test_covariance_bijection_round_trip_and_jacobian():
    """The autoguide bijection: inverse(forward(u)) = u and its log-Jacobian against
    torch.autograd's full Jacobian on the lower triangle."""
    from bnpdeep.models.distributions import UnconstrainedToCovariance

    t = UnconstrainedToCovariance()
    d = 3
    u = torch.randn(6, dtype=torch.float64)
    s = t(u)
    assert s.shape == (d, d)
    torch.testing.assert_close(t.inv(s), u)
    rows, cols = torch.tril_indices(d, d)

    def f(v):
        return t(v)[rows, cols]

    jac = torch.autograd.functional.jacobian(f, u)
    ref = torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(t.log_abs_det_jacobian(u, s), ref)
    assert torch.distributions.biject_to(InverseWishart(5.0, torch.eye(d)).support) == t
