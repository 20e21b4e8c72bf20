"""StudentNIW: the scale-mixture algebra against scipy, and both samplers against the
exact posterior over partitions (and df) computed by numerical integration."""

import itertools
import math

import numpy as np
import pytest
import torch
from bnpdeep.inference.exact import (
    canonical,
    empirical_partition_distribution,
    total_variation,
)
from bnpdeep.inference.gibbs import CollapsedGibbs
from bnpdeep.inference.subcluster import SubclusterSampler
from bnpdeep.models import DirichletProcess, DPMixture, GaussianNIW, Hyperpriors, StudentNIW
from pyro.distributions import Empirical
from scipy import integrate
from scipy import stats as st


def _family(d=2, df=3.0):
    return StudentNIW(np.zeros(d), 0.5, d + 2.0, 0.7 * np.eye(d), df=df)


def _scaled_data(n=7, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.distributions.Gamma(2.0, 2.0).sample((n,)).double()
    return X, w


def test_log_marginal_is_chibs_identity_at_any_parameter():
    """log p(X, w) = log p(X | mu, Sigma, w) + log p(mu, Sigma) + log p(w)
    - log p(mu, Sigma | X, w), every density from scipy."""
    fam, (X, w) = _family(), _scaled_data()
    stats = fam.suff_stats(fam.augment(X, w))
    mu, S = np.array([0.1, -0.2]), np.array([[1.0, 0.3], [0.3, 0.8]])
    loglik = sum(st.multivariate_normal(mu, S / wi).logpdf(xi)
                 for xi, wi in zip(X.numpy(), w.numpy(), strict=True))
    log_w = st.gamma(1.5, scale=1 / 1.5).logpdf(w.numpy()).sum()
    prior = st.invwishart(4.0, 0.7 * np.eye(2)).logpdf(S) \
        + st.multivariate_normal(np.zeros(2), S / 0.5).logpdf(mu)
    post = fam.posterior(stats)
    posterior = st.invwishart(float(post.nu[0]), post.psi[0].numpy()).logpdf(S) \
        + st.multivariate_normal(post.mu[0].numpy(), S / float(post.kappa[0])).logpdf(mu)
    assert float(fam.log_marginal(stats)[0]) == pytest.approx(
        loglik + prior + log_w - posterior, rel=1e-7)


def test_predictive_of_scaled_rows_is_the_chain_rule():
    fam, (X, w) = _family(), _scaled_data()
    Xa = fam.augment(X, w)
    stats = fam.suff_stats_labels(Xa[:6], torch.tensor([0, 0, 1, 1, 1, 0]), 2)
    both = fam.suff_stats_labels(Xa, torch.tensor([0, 0, 1, 1, 1, 0, 1]), 2)
    pred = fam.log_predictive(Xa[6:], stats)[0]
    assert float(pred[1]) == pytest.approx(
        float(fam.log_marginal(both)[1] - fam.log_marginal(stats)[1]), rel=1e-10)


def test_predictive_of_plain_rows_integrates_the_scale():
    """p(x | X_k, w_k) = int p(x | X_k, w_k, w) Gamma(w; df/2, df/2) dw (scipy quad)."""
    fam, (X, w) = _family(df=2.5), _scaled_data()
    stats = fam.suff_stats(fam.augment(X[:6], w[:6]))
    x = X[6:]

    def density(v):
        row = fam.augment(x, torch.tensor([v], dtype=torch.float64))
        return math.exp(float(fam.log_predictive(row, stats)[0, 0]))   # includes Gamma(v)

    exact, _ = integrate.quad(density, 0, np.inf, limit=200)
    assert float(fam.log_predictive(x, stats)[0, 0]) == pytest.approx(math.log(exact),
                                                                       abs=1e-6)


def test_likelihood_of_plain_rows_is_the_t_density():
    fam, (X, w) = _family(df=3.0), _scaled_data()
    params = fam.sample_posterior(fam.suff_stats(fam.augment(X, w)))
    ours = fam.log_likelihood(X, params)[:, 0].numpy()
    ref = st.multivariate_t(params.mean[0].numpy(), params.cov[0].numpy(), df=3.0).logpdf(
        X.numpy())
    np.testing.assert_allclose(ours, ref, rtol=1e-10)


def test_plain_rows_have_no_statistics_and_soft_weights_are_refused():
    fam, (X, _) = _family(), _scaled_data()
    with pytest.raises(ValueError, match="scale w_i"):
        fam.suff_stats_labels(X, torch.zeros(X.shape[0], dtype=torch.long))
    for weights in (torch.ones(X.shape[0]), torch.ones(X.shape[0], 2)):
        with pytest.raises(TypeError, match="variational_stats"):
            fam.suff_stats(X, weights=weights)


def test_weighted_statistics_of_scaled_rows_count_each_row_r_times():
    """Augmented rows with responsibilities r (N, K): n_k = sum r, W_k = sum r w,
    s_k = sum r w x, S_k = sum r w x x^T, l_k = sum r log w; the labelled form with
    per-row weights gives the same for hard labels."""
    fam, (X, w) = _family(), _scaled_data(n=9)
    r = torch.distributions.Dirichlet(torch.ones(3)).sample((9,)).double()
    got = fam.suff_stats(fam.augment(X, w), weights=r)
    x, wn, rn = X.numpy(), w.numpy(), r.numpy()
    rw = rn * wn[:, None]
    np.testing.assert_allclose(got.n.numpy(), rn.sum(0), rtol=1e-12)
    np.testing.assert_allclose(got.w.numpy(), rw.sum(0), rtol=1e-12)
    np.testing.assert_allclose(got.sx.numpy(), rw.T @ x, rtol=1e-12)
    np.testing.assert_allclose(got.sxx.numpy(), np.einsum("ik,ia,ib->kab", rw, x, x),
                               rtol=1e-12)
    np.testing.assert_allclose(got.slw.numpy(), rn.T @ np.log(wn), rtol=1e-12)
    z = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    one_hot = torch.nn.functional.one_hot(z, 3).double() * r[:, :1]
    labelled = fam.suff_stats_labels(fam.augment(X, w), z, 3, weights=r[:, 0])
    dense = fam.suff_stats(fam.augment(X, w), weights=one_hot)
    for name in ("n", "w", "sx", "sxx", "slw"):
        torch.testing.assert_close(getattr(labelled, name), getattr(dense, name))


def test_expected_statistics_weight_rows_by_their_conditional_mean_scales():
    """The t mixture's E-step (Peel & McLachlan 2000): u_ik = (df + d) / (df + delta_ik)
    with delta the Mahalanobis distance under component k; expected_suff_stats are the
    statistics of the rows (x_i, u_ik) weighted by r_ik, with E[log w_i] in place of
    log u_ik; expected_rows the rows (x_i, u_{i, comps[i]})."""
    fam, (X, _) = _family(df=3.0), _scaled_data(n=8)
    params = fam.sample_prior(2)
    r = torch.distributions.Dirichlet(torch.ones(2)).sample((8,)).double()
    x = X.numpy()
    u = np.stack([(3.0 + 2) / (3.0 + np.einsum("ia,ab,ib->i", x - m, np.linalg.inv(S), x - m))
                  for m, S in zip(params.mean.numpy(), params.cov.numpy(), strict=True)], 1)
    got = fam.expected_suff_stats(X, r, params)
    ru = r.numpy() * u
    np.testing.assert_allclose(got.n.numpy(), r.numpy().sum(0), rtol=1e-12)
    np.testing.assert_allclose(got.w.numpy(), ru.sum(0), rtol=1e-12)
    np.testing.assert_allclose(got.sx.numpy(), ru.T @ x, rtol=1e-12)
    # E[log w] under w ~ Gamma((df + d) / 2, rate (df + delta) / 2), from scipy
    mean_log = np.stack([st.gamma(2.5, scale=2 * ui / 5.0).expect(np.log) for ui in u.ravel()]
                        ).reshape(u.shape)
    np.testing.assert_allclose(got.slw.numpy(), (r.numpy() * mean_log).sum(0), rtol=1e-7)
    comps = torch.tensor([0, 1, 1, 0, 0, 1, 0, 1])
    rows = fam.expected_rows(X, params, comps)
    np.testing.assert_allclose(rows[:, 2].numpy(), u[np.arange(8), comps.numpy()], rtol=1e-12)
    np.testing.assert_array_equal(rows[:, :2].numpy(), x)


def _niw_t_log_posterior(fam, X, mu, chol):
    """log of prod_i t_df(x_i | mu, Sigma) NIW(mu, Sigma) at Sigma = L L^T, written
    out (torch, differentiable)."""
    d, df = fam.dim, fam.df
    S = chol @ chol.T
    sol = torch.linalg.solve_triangular(chol, (X - mu).T, upper=False)
    delta = (sol ** 2).sum(0)
    half_logdet = torch.log(torch.diagonal(chol)).sum()
    loglik = (math.lgamma((df + d) / 2) - math.lgamma(df / 2) - d / 2 * math.log(df * math.pi)
              - half_logdet - (df + d) / 2 * torch.log1p(delta / df)).sum()
    kappa, nu = float(fam.kappa), float(fam.nu)
    log_mu = torch.distributions.MultivariateNormal(fam.mu0, S / kappa).log_prob(mu)
    log_iw = (nu / 2 * torch.logdet(fam.psi) - nu * d / 2 * math.log(2)
              - torch.mvlgamma(torch.tensor(nu / 2, dtype=X.dtype), d)
              - (nu + d + 1) * half_logdet
              - 0.5 * torch.trace(fam.psi @ torch.cholesky_inverse(chol)))
    return loglik + log_mu + log_iw


def test_ecm_fixed_point_is_the_posterior_mode_of_the_t():
    """Iterating map_estimate(expected_suff_stats(X, 1, params)) -- the E-step's scales,
    then the MAP M-step -- converges to a stationary point of log prod_i t(x_i | mu,
    Sigma) + log NIW(mu, Sigma): the gradient there is zero (autograd)."""
    g = torch.Generator().manual_seed(3)
    w = torch.distributions.Gamma(1.5, 1.5).sample((300,)).double()
    X = torch.randn(300, 2, generator=g, dtype=torch.float64) / w.sqrt()[:, None] + 1.0
    fam = StudentNIW(np.zeros(2), 0.5, 4.0, 0.7 * np.eye(2), df=3.0)
    ones = torch.ones(300, 1, dtype=torch.float64)
    params = fam.map_estimate(fam.suff_stats(fam.augment(X)))
    for _ in range(500):
        params = fam.map_estimate(fam.expected_suff_stats(X, ones, params))
    mu = params.mean[0].clone().requires_grad_(True)
    chol = torch.linalg.cholesky(params.cov[0]).requires_grad_(True)
    _niw_t_log_posterior(fam, X, mu, chol).backward()
    assert float(mu.grad.abs().max()) < 1e-6
    assert float(torch.tril(chol.grad).abs().max()) < 1e-6


def _laplace_log_evidence(fam, X):
    """log p(X) of one cluster by the Laplace approximation in (mu, L), L the Cholesky
    factor with log-diagonal (its Jacobian included)."""
    d = fam.dim
    tri = torch.tril_indices(d, d)
    j = torch.arange(1, d + 1, dtype=X.dtype)

    def log_density(theta):
        mu, off = theta[:d], theta[d:]
        lower = torch.zeros(d, d, dtype=X.dtype).index_put((tri[0], tri[1]), off)
        diag = torch.diagonal(lower)
        chol = lower - torch.diag(diag) + torch.diag(diag.exp())
        # Sigma = L L^T: Jacobian 2^d prod_j L_jj^(d - j + 1), and d L_jj = L_jj d log L_jj
        log_jac = d * math.log(2) + ((d - j + 2) * diag).sum()
        return _niw_t_log_posterior(fam, X, mu, chol) + log_jac

    theta = torch.zeros(d + tri.shape[1], dtype=X.dtype)
    theta[:d] = X.mean(0)
    theta.requires_grad_(True)
    opt = torch.optim.LBFGS([theta], max_iter=500, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10)

    def closure():
        opt.zero_grad()
        v = -log_density(theta)
        v.backward()
        return v

    for _ in range(5):
        opt.step(closure)
    theta = theta.detach()
    hess = torch.autograd.functional.hessian(lambda t: -log_density(t), theta)
    return (float(log_density(theta)) + theta.numel() / 2 * math.log(2 * math.pi)
            - 0.5 * float(torch.logdet(hess)))


def test_log_evidence_integrates_the_scales_out():
    """log_evidence at plugin_latent's rows (Chib's identity with the scales'
    conditional at the fitted parameters) against the Laplace approximation of
    log p(X_k) = log int prod_i t(x_i | mu, Sigma) NIW(mu, Sigma): within 1 nat on
    400 rows, where the complete-data log_marginal at the same rows is off by
    about n (a log a - lgamma(a) - a) - l."""
    g = torch.Generator().manual_seed(5)
    w = torch.distributions.Gamma(1.5, 1.5).sample((400,)).double()
    X = torch.randn(400, 2, generator=g, dtype=torch.float64) / w.sqrt()[:, None]
    X = X @ torch.tensor([[1.0, 0.4], [0.0, 0.7]], dtype=torch.float64) + 2.0
    fam = StudentNIW(np.zeros(2), 0.1, 4.0, np.eye(2), df=4.0)
    z = torch.zeros(400, dtype=torch.long)
    stats = fam.suff_stats_labels(fam.plugin_latent(X, z), z, 1)
    laplace = _laplace_log_evidence(fam, X)
    assert abs(float(fam.log_evidence(stats)[0]) - laplace) < 1.0
    assert abs(float(fam.log_marginal(stats)[0]) - laplace) > 50.0


def test_scales_are_drawn_from_their_conditional():
    """With a cluster so large that its posterior is a point, w_i | x_i has mean
    (df + d) / (df + delta_i) and shape (df + d) / 2."""
    torch.manual_seed(0)
    fam = _family(d=2, df=3.0)
    g = torch.Generator().manual_seed(1)
    X = torch.randn(200_000, 2, generator=g, dtype=torch.float64)
    Xa = fam.augment(X)
    z = torch.zeros(X.shape[0], dtype=torch.long)
    w = fam.latent(fam.update_latent(Xa, z, fam.suff_stats_labels(Xa, z, 1)))
    delta = (X ** 2).sum(1)                    # the posterior is close to N(0, I)
    ratio = w * (3.0 + delta) / (3.0 + 2)      # Gamma(5/2, 5/2): mean 1, variance 2/5
    assert float(ratio.mean()) == pytest.approx(1.0, abs=0.01)
    assert float(ratio.var()) == pytest.approx(0.4, abs=0.01)


# ---- exact posterior over partitions of four 1-d points -----------------------------
POINTS = np.array([[-1.3], [-0.7], [0.8], [1.6]])


def _log_cluster_marginal(xs, df, mu0=0.0, kappa=0.5, nu=3.0, psi=1.0, nodes=400):
    """log int prod_i t_df(x_i | mu, s2) N(mu | mu0, s2/kappa) IG(s2 | nu/2, psi/2)
    d mu d s2 (the 1-d NIW prior of StudentNIW), by Gauss-Legendre quadrature over
    (mu, log s2) on a box that holds the integrand's mass; densities from scipy."""
    xs = np.asarray(xs).ravel()
    t, wt = np.polynomial.legendre.leggauss(nodes)
    mu = 10.0 * t - 2.0                       # [-12, 8]
    u = 15.0 * t                              # [-15, 15]
    M, U = np.meshgrid(mu, u, indexing="ij")
    s = np.exp(0.5 * U)
    log_f = (st.t.logpdf(xs[:, None, None], df, loc=M, scale=s).sum(0)
             + st.norm.logpdf(M, mu0, s / math.sqrt(kappa))
             + st.invgamma.logpdf(np.exp(U), nu / 2, scale=psi / 2) + U)
    log_w = np.log(10.0 * wt)[:, None] + np.log(15.0 * wt)[None, :]
    top = (log_f + log_w).max()
    return float(top + np.log(np.exp(log_f + log_w - top).sum()))


def _set_partitions(n):
    if n == 0:
        yield []
        return
    for part in _set_partitions(n - 1):
        for i in range(len(part)):
            yield part[:i] + [part[i] + [n - 1]] + part[i + 1:]
        yield part + [[n - 1]]


def _exact_posterior(dfs, log_prior_df):
    """p(partition, df | X) for the DP(1) mixture, over a grid of df values."""
    n = POINTS.shape[0]
    cache = {}
    out = {}
    for part in _set_partitions(n):
        z = np.empty(n, dtype=int)
        for c, block in enumerate(part):
            z[block] = c
        for df, lp_df in zip(dfs, log_prior_df, strict=True):
            lp = lp_df + float(DirichletProcess(1.0).log_eppf(
                torch.tensor([len(b) for b in part], dtype=torch.float64)))
            for block in part:
                key = (tuple(block), df)
                if key not in cache:
                    cache[key] = _log_cluster_marginal(POINTS[block], df)
                lp += cache[key]
            out[(canonical(z), df)] = lp
    top = max(out.values())
    total = sum(math.exp(v - top) for v in out.values())
    return {k: math.exp(v - top) / total for k, v in out.items()}


def _model(df=3.0, hyperpriors=None):
    return DPMixture(StudentNIW(np.zeros(1), 0.5, 3.0, np.eye(1), df=df), DirichletProcess(1.0),
                     hyperpriors=hyperpriors)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("sampler, options", [
    (CollapsedGibbs, {}),
    (SubclusterSampler, {"options": {"gibbs_points": 0}}),
    (SubclusterSampler, {}),
], ids=["gibbs", "subcluster-moves", "subcluster-default"])
def test_partition_frequencies_match_the_integrated_posterior(sampler, options):
    exact = {z: p for (z, _), p in _exact_posterior([3.0], [0.0]).items()}
    assert max(exact.values()) < 0.5
    est = sampler(model=_model(), max_iter=6000, burn_in=200, store_log_likelihood=False,
                  random_state=1, **options).fit(POINTS)
    tv = total_variation(exact, empirical_partition_distribution(est.label_draws_))
    assert tv < 0.05, f"{sampler.__name__} {options}: TV {tv:.3f}"


def test_joint_posterior_of_partition_and_df_matches_on_a_grid():
    """df under a grid prior, drawn from p(df | w) through the scales' Gamma prior
    inside log_marginal: the joint (partition, df) frequencies match."""
    dfs = [0.5, 2.0, 30.0]
    exact = _exact_posterior(dfs, [math.log(1 / 3)] * 3)
    marg_df = {df: sum(p for (_, d), p in exact.items() if d == df) for df in dfs}
    assert max(marg_df.values()) < 0.6           # df is not pinned by the data
    prior = Empirical(torch.tensor(dfs, dtype=torch.float64), torch.zeros(3))
    est = CollapsedGibbs(model=_model(hyperpriors=Hyperpriors(df=prior)), max_iter=8000,
                         burn_in=200, store_log_likelihood=False, random_state=2).fit(POINTS)
    df_draws = est.to_inference_data().posterior["df"].values.ravel()
    empirical = {}
    for z, df in zip(est.label_draws_, df_draws, strict=True):
        key = (canonical(z), float(df))
        empirical[key] = empirical.get(key, 0) + 1 / len(df_draws)
    tv = total_variation(exact, empirical)
    assert tv < 0.06, f"TV {tv:.3f}"


def test_student_sampler_fit_predicts_and_stores_t_likelihoods():
    """A heavy-tailed two-cluster set: K = 2, predict agrees with labels_, and the
    stored pointwise log-likelihoods are the t mixture's (finite)."""
    g = np.random.default_rng(0)
    X = np.concatenate([g.standard_t(3, size=(150, 2)) * 0.5 - 3,
                        g.standard_t(3, size=(150, 2)) * 0.5 + 3])
    est = SubclusterSampler(model=DPMixture(StudentNIW.weak(X, df=3.0), DirichletProcess(1.0)),
                            random_state=0).fit(X)
    assert est.n_clusters_ == 2
    assert (est.predict(X) == est.labels_).mean() > 0.99
    ll = est.to_inference_data().log_likelihood["x"].values
    assert np.isfinite(ll).all()


def test_weak_prior_and_hyperparameters():
    X = np.random.default_rng(0).normal(size=(50, 3))
    fam = StudentNIW.weak(X, df=5.0)
    ref = GaussianNIW.weak(X)
    assert fam.df == 5.0 and torch.allclose(fam.psi, ref.psi)
    moved = fam.with_hyperparameters(df=7.0, psi_scale=2.0)
    assert isinstance(moved, StudentNIW) and moved.df == 7.0
    assert torch.allclose(moved.psi, 2.0 * ref.psi)
    with pytest.raises(ValueError, match="df must be positive"):
        StudentNIW(np.zeros(2), 1.0, 4.0, np.eye(2), df=0.0)


def test_exact_set_partitions_helper_counts_bell_numbers():
    assert [sum(1 for _ in _set_partitions(n)) for n in range(1, 6)] == [1, 2, 5, 15, 52]
    assert len(set(tuple(map(tuple, p)) for p in _set_partitions(4))) == 15
    assert all(sorted(itertools.chain(*p)) == list(range(4)) for p in _set_partitions(4))


def _vb_case(n=30, k=2, seed=0):
    """A family, plain rows, responsibilities and Gamma rates of w's VB factors."""
    fam = _family(df=3.0)
    g = torch.Generator().manual_seed(seed)
    X = 1.5 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    r = torch.softmax(2 * torch.randn(n, k, generator=g, dtype=torch.float64), 1)
    rate = 0.5 + 2 * torch.rand(n, k, generator=g, dtype=torch.float64)
    return fam, X, r, rate


def _mc_theta(fam, stats, draws=20000, seed=1):
    """Monte Carlo over q(theta_k) = NIW(stats): E[delta_ik] (N, K) and E[log|Sigma_k|]
    (K,) as functions of the rows, from scipy's inverse-Wishart and normal draws."""
    post = fam.posterior(stats)
    rng = np.random.default_rng(seed)
    out = []
    for k in range(stats.k):
        psi = (post.chol[k] @ post.chol[k].T).numpy()
        sig = st.invwishart(df=float(post.nu[k]), scale=psi).rvs(draws, random_state=rng)
        mu = np.stack([rng.multivariate_normal(post.mu[k].numpy(), s / float(post.kappa[k]))
                       for s in sig])
        out.append((sig, mu))
    return out


def _expected_complete_loglik(fam, X, r, rate, mc):
    """sum_ik r_ik E_q[log N(x_i | mu_k, Sigma_k / w) + log Gamma(w; df/2, df/2)] with
    w ~ Gamma(a, rate_ik) (scipy's digamma) and theta by Monte Carlo."""
    from scipy.special import digamma as psi_fn

    d, a, h = fam.dim, 0.5 * (fam.df + fam.dim), 0.5 * fam.df
    ew, elogw = a / rate.numpy(), psi_fn(a) - np.log(rate.numpy())
    total = 0.0
    for k, (sig, mu) in enumerate(mc):
        prec = np.linalg.inv(sig)
        diff = X.numpy()[None] - mu[:, None]                     # (S, N, d)
        delta = np.einsum("snd,sde,sne->sn", diff, prec, diff).mean(0)
        elogdet = np.linalg.slogdet(sig)[1].mean()
        gauss = 0.5 * d * elogw[:, k] - 0.5 * d * np.log(2 * np.pi) - 0.5 * elogdet \
            - 0.5 * ew[:, k] * delta
        gam = h * np.log(h) - math.lgamma(h) + (h - 1) * elogw[:, k] - h * ew[:, k]
        total += float((r.numpy()[:, k] * (gauss + gam)).sum())
    return total


def test_variational_bound_is_the_log_marginal_of_the_weighted_statistics():
    """log Z(S_k) = sum_i r_ik E_q[log p(x_i, w_ik | theta_k)] - KL(q(theta_k) || p)
    at q(theta_k) = NIW(S_k), for the statistics of any Gamma factors of w: the
    expectations by Monte Carlo over scipy's inverse-Wishart draws, the KL from the
    Gaussian family's closed form (checked in the moVB tests), and the entropy of
    the factors against scipy's Gamma entropy."""
    fam, X, r, rate = _vb_case()
    stats = fam.variational_stats(X, r, rate)
    mc = _mc_theta(fam, stats)
    explicit = _expected_complete_loglik(fam, X, r, rate, mc) - float(
        GaussianNIW.kl_to_prior(fam, stats).sum())
    assert float(fam.log_marginal(stats).sum()) == pytest.approx(explicit, abs=0.15)
    a = 0.5 * (fam.df + fam.dim)
    ent = st.gamma(a, scale=1 / rate.numpy()).entropy()
    assert fam.variational_entropy(r, rate).numpy() == pytest.approx(
        (r.numpy() * ent).sum(1), rel=1e-12)


def test_variational_local_step_is_the_optimal_gamma_factor():
    """ell_ik = max over Gamma(shape, rate) factors of E_q[log p(x_i, w | theta_k)] +
    H[q(w)]: equal to it at the returned rate and shape (df + d) / 2, above it at
    perturbed shapes and rates (the objective evaluated with Monte Carlo over theta)."""
    fam, X, _, _ = _vb_case(n=5)
    r = torch.ones(5, 1, dtype=torch.float64)
    stats = fam.variational_stats(1.5 * X, r)                    # some q(theta)
    ell, rate = fam.variational_local(X, stats)
    mc = _mc_theta(fam, stats, draws=40000)
    a = 0.5 * (fam.df + fam.dim)

    def objective(shape, b):
        from scipy.special import digamma as psi_fn

        sig, mu = mc[0]
        prec = np.linalg.inv(sig)
        diff = X.numpy()[None] - mu[:, None]
        delta = np.einsum("snd,sde,sne->sn", diff, prec, diff).mean(0)
        elogdet = np.linalg.slogdet(sig)[1].mean()
        d, h = fam.dim, 0.5 * fam.df
        ew, elogw = shape / b, psi_fn(shape) - np.log(b)
        val = (0.5 * d * elogw - 0.5 * d * np.log(2 * np.pi) - 0.5 * elogdet - 0.5 * ew * delta
               + h * np.log(h) - math.lgamma(h) + (h - 1) * elogw - h * ew)
        return val + st.gamma(shape, scale=1 / b).entropy()

    b = rate[:, 0].numpy()
    best = objective(a, b)
    assert ell[:, 0].numpy() == pytest.approx(best, abs=0.02)
    for shape, scale in [(a, 1.2), (a, 0.8), (a + 0.5, 1.0), (a - 0.5, 1.0)]:
        assert (objective(shape, b * scale) < best - 1e-3).all()


def test_expected_statistics_are_the_variational_ones_at_the_conditional_factors():
    """The ECM's E-step statistics are variational_stats with each w's factor its
    conditional Gamma(a, (df + delta) / 2) at point parameters."""
    fam, X, r, _ = _vb_case()
    from bnpdeep.models.families.gaussian_niw import GaussianParams

    params = GaussianParams(torch.tensor([[0.0, 0.0], [1.0, -1.0]], dtype=torch.float64),
                            torch.stack([torch.eye(2), 0.5 * torch.eye(2)]).double())
    delta = torch.stack([((X - params.mean[k]) @ torch.linalg.inv(params.cov[k])
                          * (X - params.mean[k])).sum(1) for k in range(2)], 1)
    want = fam.variational_stats(X, r, 0.5 * (fam.df + delta))
    got = fam.expected_suff_stats(X, r, params)
    for name in want.fields:
        assert torch.allclose(got.fields[name], want.fields[name], rtol=1e-12, atol=1e-12)


def test_the_pyro_program_observes_t_components():
    """obs in DPMixture.model is the family's t: its log-density is the sum of
    StudentNIW.log_likelihood at the traced components and labels."""
    import pyro

    X = torch.as_tensor(np.random.default_rng(0).normal(size=(30, 2)))
    fam = StudentNIW.weak(X, df=3.0)
    tr = pyro.poutine.trace(DPMixture(fam, DirichletProcess(1.0), truncation=6).model
                            ).get_trace(X)
    node = tr.nodes["obs"]
    params = fam.params_from_sites({s: tr.nodes[s]["value"] for s in fam.param_sites})
    z = tr.nodes["z"]["value"]
    expected = fam.log_likelihood(X, params).gather(1, z[:, None]).sum()
    assert float(node["fn"].log_prob(node["value"]).sum()) == pytest.approx(float(expected),
                                                                           rel=1e-10)


def test_deepdpm_split_ratio_is_the_posterior_ratio_of_the_plain_rows():
    """GuideSplitMerge's log H_s for a t family: the scales integrated out of every
    block (each grouping with its own fitted scales), so that it matches the Laplace
    approximation of log p(X_1) + log p(X_2) - log p(X) plus the EPPF ratio within
    2 nats; the complete-data ratio at the parent's scales (what a sampler holding
    w fixed would use) is 60 nats away."""
    from bnpdeep.inference.guide_moves import GuideSplitMerge

    g = torch.Generator().manual_seed(7)
    w = torch.distributions.Gamma(1.5, 1.5).sample((600,)).double()
    X = torch.randn(600, 2, generator=g, dtype=torch.float64) / w.sqrt()[:, None]
    X[300:] += torch.tensor([4.0, -2.0], dtype=torch.float64)
    fam = StudentNIW(X.mean(0).numpy(), 0.01, 4.0, np.cov(X.numpy().T), df=4.0)
    dp = DirichletProcess(1.0)
    z, zs = torch.zeros(600, dtype=torch.long), (torch.arange(600) >= 300).long()
    log_h = float(GuideSplitMerge(dp, fam).log_split_ratios(X, z, zs, 1)[0][0])
    eppf = float(dp.log_eppf(torch.tensor([300.0, 300.0])) - dp.log_eppf(torch.tensor([600.0])))
    laplace = (_laplace_log_evidence(fam, X[:300]) + _laplace_log_evidence(fam, X[300:])
               - _laplace_log_evidence(fam, X) + eppf)
    assert abs(log_h - laplace) < 2.0
    parent = fam.plugin_latent(X, z)
    stats = fam.suff_stats_labels(parent, zs, 2)
    fixed = float(fam.log_marginal(stats).sum() - fam.log_marginal(stats[[0]] + stats[[1]])[0])
    assert abs(fixed + eppf - laplace) > 50.0
