"""Hyperparameters in the state: exact updates given the partition.

* Each update kernel (grid enumeration, slice sampling on the log scale, elliptical
  slice sampling, Escobar & West) is checked alone against its conditional computed
  by quadrature on a fixed partition (Kolmogorov-Smirnov).
* The samplers with hyperparameters in the state are checked against the enumerated
  joint posterior of (partition, hyperparameters) on five points, with grid priors.
* The Pyro program samples the hyperparameters as sites (checkpoints: the resume
  test of test_samplers.py runs a hierarchical model too).
"""

import math

import numpy as np
import pyro.distributions as pdist
import pytest
import torch
from bnpdeep.inference.exact import canonical, set_partitions, total_variation
from bnpdeep.inference.gibbs import CollapsedGibbs
from bnpdeep.inference.hyperparameters import HyperparameterStep, update_alpha
from bnpdeep.inference.subcluster import SubclusterSampler
from bnpdeep.models import DirichletProcess, DPMixture, GaussianNIW, Hyperpriors
from pyro import poutine
from scipy import stats as st

F64 = torch.float64


def gamma(shape, rate):
    return torch.distributions.Gamma(torch.tensor(shape, dtype=F64), torch.tensor(rate, dtype=F64))


def grid(values, probs=None):
    values = torch.as_tensor(values, dtype=F64)
    probs = torch.ones(len(values), dtype=F64) if probs is None else torch.as_tensor(probs,
                                                                                    dtype=F64)
    return pdist.Empirical(values, torch.log(probs))


pytestmark = pytest.mark.usefixtures("one_thread")


def _fixed_partition(d=2, n=60, seed=0):
    g = np.random.default_rng(seed)
    X = np.concatenate([g.normal(-2, 1.0, (n // 2, d)), g.normal(2, 0.6, (n - n // 2, d))])
    z = np.r_[np.zeros(n // 2, int), np.ones(n - n // 2, int)]
    z[::7] = 2                                  # a third, mixed cluster
    return X, torch.as_tensor(z)


def _quadrature_cdf(log_density, lo, hi, m=20001):
    """The CDF of an unnormalised log density on [lo, hi] (log-spaced grid)."""
    u = np.linspace(math.log(lo), math.log(hi), m)
    x = np.exp(u)
    lp = np.array([log_density(v) for v in x]) + u        # density of u
    p = np.exp(lp - lp.max())
    c = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(u))])
    c /= c[-1]
    return lambda v: np.interp(np.log(v), u, c)


@pytest.mark.parametrize("name, prior", [("kappa", gamma(1.0, 1.0)),
                                         ("psi_scale", gamma(2.0, 1.0)),
                                         ("nu", pdist.LogNormal(math.log(6.0), 0.5))])
def test_slice_update_matches_the_conditional_by_quadrature(name, prior):
    """Successive slice updates of one hyperparameter on a fixed partition (the others
    fixed) have p(h) prod_k p(X_k | h) as their stationary law: 3000 updates thinned
    by 3 against the quadrature CDF (KS p > 0.001; with the Jacobian term dropped
    from the slice target the p-values were 1e-40, 1e-13 and 1e-12)."""
    X, z = _fixed_partition()
    fam = GaussianNIW(np.zeros(2), 0.5, 5.0, np.eye(2))
    model = DPMixture(fam, DirichletProcess(1.0), hyperpriors=Hyperpriors(**{name: prior}))
    step = HyperparameterStep(model)
    stats = fam.suff_stats_labels(X, z, 3)

    def log_density(v):
        try:
            f = step.family({name: v})
        except ValueError:
            return -math.inf
        return float(prior.log_prob(torch.tensor(v, dtype=F64))) + float(
            f.log_marginal(stats).sum())

    torch.manual_seed(0)
    values, draws = step.initial(), []
    for t in range(3000):
        values = step.update(values, stats)
        if t % 3 == 0:
            draws.append(values[name])
    draws = np.array(draws)
    lo, hi = draws.min() / 3, draws.max() * 3
    if name == "nu":
        lo = max(lo, 1.0 + 1e-6)
    cdf = _quadrature_cdf(log_density, lo, hi)
    p = st.kstest(draws, cdf).pvalue
    assert p > 1e-3, f"{name}: KS p = {p:.2g}"


def test_elliptical_slice_update_of_mu0_matches_the_conditional():
    """mu0 under a Gaussian prior, on 1-d data: elliptical slice updates against the
    quadrature CDF of p(mu0) prod_k p(X_k | mu0)."""
    X, z = _fixed_partition(d=1)
    fam = GaussianNIW(np.zeros(1), 0.2, 3.0, np.eye(1))
    prior = torch.distributions.MultivariateNormal(torch.zeros(1, dtype=F64),
                                                   4.0 * torch.eye(1, dtype=F64))
    step = HyperparameterStep(DPMixture(fam, hyperpriors=Hyperpriors(mu0=prior)))
    stats = fam.suff_stats_labels(X, z, 3)
    torch.manual_seed(1)
    values, draws = step.initial(), []
    for t in range(3000):
        values = step.update(values, stats)
        if t % 3 == 0:
            draws.append(float(values["mu0"][0]))
    grid_x = np.linspace(-8, 8, 8001)
    lp = np.array([float(prior.log_prob(torch.tensor([v], dtype=F64)))
                   + float(step.family({"mu0": torch.tensor([v], dtype=F64)})
                           .log_marginal(stats).sum()) for v in grid_x])
    p = np.exp(lp - lp.max())
    c = np.cumsum(p)
    c /= c[-1]
    pval = st.kstest(np.array(draws), lambda v: np.interp(v, grid_x, c)).pvalue
    assert pval > 1e-3, f"mu0: KS p = {pval:.2g}"


def test_maximize_finds_the_mode_of_each_conditional_on_soft_statistics():
    """The point-estimate update (variational EM) of every kind of prior, on soft
    statistics: a positive scalar against the largest value of a fine log grid of
    p(h) prod_k Z(S_k; h); a grid prior against the argmax over its values; mu0 (2-d,
    Gaussian prior) against the maximum over a fine 2-d grid."""
    X, z = _fixed_partition()
    r = torch.nn.functional.one_hot(z, 3).to(F64) * 0.8 + 0.2 / 3
    fam = GaussianNIW(np.zeros(2), 0.5, 5.0, np.eye(2))
    stats = fam.suff_stats(torch.as_tensor(X, dtype=F64), weights=r)
    mu_prior = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=F64),
                                                      4.0 * torch.eye(2, dtype=F64))
    kappa_grid = grid([0.05, 0.2, 0.5, 1.0, 3.0])
    cases = [("kappa", gamma(1.0, 1.0)), ("psi_scale", gamma(2.0, 1.0)),
             ("nu", pdist.LogNormal(math.log(6.0), 0.5)), ("kappa", kappa_grid),
             ("mu0", mu_prior)]
    for name, prior in cases:
        step = HyperparameterStep(DPMixture(fam, hyperpriors=Hyperpriors(**{name: prior})))
        found = step.maximize(step.initial(), stats)[name]

        def score(v, step=step, name=name):
            return step.objective({name: v}, stats)

        if name == "mu0":
            axis = np.linspace(-3, 3, 121)
            grid_best = max(score(torch.tensor([a, b], dtype=F64)) for a in axis for b in axis)
        elif prior is kappa_grid:
            grid_best = max(score(float(v)) for v in kappa_grid.enumerate_support())
            assert found in [float(v) for v in kappa_grid.enumerate_support()]
        else:
            lo = 1.0 + 1e-6 if name == "nu" else 1e-3
            grid_best = max(score(v) for v in np.exp(np.linspace(math.log(lo), math.log(100.0),
                                                                   4001)))
        assert score(found) >= grid_best - 1e-6, (name, score(found), grid_best)
        if prior is kappa_grid:
            assert score(found) == pytest.approx(grid_best)


def test_alpha_update_matches_its_conditional():
    """Escobar & West's draw of alpha | K, N against the quadrature CDF of
    Gamma(a, b)(alpha) alpha^K Gamma(alpha) / Gamma(alpha + N)."""
    counts = torch.tensor([30.0, 12.0, 5.0, 2.0, 1.0], dtype=F64)
    prior = gamma(2.0, 0.5)
    torch.manual_seed(2)
    alpha, draws = 1.0, []
    for _ in range(3000):
        alpha = update_alpha(prior, alpha, counts)
        draws.append(alpha)

    def log_density(a):
        return (float(prior.log_prob(torch.tensor(a, dtype=F64)))
                + DirichletProcess(a).log_eppf(counts))

    cdf = _quadrature_cdf(log_density, 1e-3, 100.0)
    assert st.kstest(np.array(draws), cdf).pvalue > 1e-3


def _five_points():
    g = np.random.default_rng(0)
    return np.concatenate([g.normal(-1.0, 0.7, size=(2, 2)), g.normal(1.2, 0.7, size=(3, 2))])


def _exact_joint(model, X, grids):
    """Enumerated p(partition, hyperparameters | X) over every set partition and every
    point of the product of the grids."""
    names = list(grids)
    combos = np.array(np.meshgrid(*[grids[n] for n in names], indexing="ij")).reshape(
        len(names), -1).T
    keys, logp = [], []
    for part in set_partitions(X.shape[0]):
        for c in combos:
            hyper = dict(zip(names, (float(v) for v in c), strict=True))
            keys.append((part, *(round(v, 9) for v in c)))
            logp.append(model.log_joint_collapsed(X, part, hyper))
    logp = np.array(logp)
    p = np.exp(logp - logp.max())
    return dict(zip(keys, p / p.sum(), strict=True))


def _empirical_joint(est, names):
    counts = {}
    for rec in est.chains_:
        for d, labels in enumerate(rec.labels):
            key = (canonical(labels), *(round(float(rec.hyper[n][d]) if n != "alpha"
                                              else rec.alpha[d], 9) for n in names))
            counts[key] = counts.get(key, 0) + 1
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()}


GRIDS = {"kappa": ([0.1, 0.5, 2.5], None), "psi_scale": ([0.3, 1.0, 3.0], [0.2, 0.5, 0.3]),
         "alpha": ([0.3, 1.5], None)}


@pytest.mark.parametrize("names, sampler, options, n_iter", [
    (("kappa", "alpha"), SubclusterSampler, {}, 20000),
    (("psi_scale",), SubclusterSampler, {}, 20000),
    (("psi_scale",), SubclusterSampler, {"backend": "torch"}, 20000),
    (("kappa", "alpha"), CollapsedGibbs, {}, 10000),
], ids=["kappa-alpha-compiled", "psi-scale-compiled", "psi-scale-torch", "kappa-alpha-gibbs"])
def test_joint_posterior_of_partition_and_hyperparameters_matches_enumeration(
        names, sampler, options, n_iter):
    """Five points (52 partitions) with hyperparameters on grids: the sampler's joint
    draws of (partition, hyperparameters) match the enumerated p(z, h | X) (TV <= 0.05),
    and the marginal of each hyperparameter matches its exact marginal and moves over
    every grid value.  (With the log-marginal term dropped from the grid update, so
    that kappa or psi_scale is drawn from its prior, the joint TV was 0.33 and 0.24.)"""
    priors = {n: grid(*GRIDS[n]) for n in names}
    model = DPMixture(GaussianNIW(np.zeros(2), 0.5, 4.0, np.eye(2)), DirichletProcess(1.0),
                      hyperpriors=Hyperpriors(**priors))
    X = _five_points()
    exact = _exact_joint(model, X, {n: GRIDS[n][0] for n in names})
    assert max(exact.values()) < 0.3         # spread over many states
    est = sampler(model=model, max_iter=n_iter, burn_in=200, store_log_likelihood=False,
                  random_state=3, **options).fit(X)
    emp = _empirical_joint(est, names)
    tv = total_variation(exact, emp)
    assert tv < 0.05, f"{sampler.__name__} {options} {names}: joint TV {tv:.3f}"
    for i, name in enumerate(names):
        margin_exact, margin_emp = {}, {}
        for src, dst in ((exact, margin_exact), (emp, margin_emp)):
            for key, p in src.items():
                dst[key[1 + i]] = dst.get(key[1 + i], 0.0) + p
        assert total_variation(margin_exact, margin_emp) < 0.02, name
        assert len(margin_emp) == len(GRIDS[name][0]), name


def test_pyro_program_samples_the_hyperparameters_as_sites():
    """The hyperparameters are sites of DPMixture.model, drawn from their priors, and
    the components are drawn at the drawn values: E[Sigma] = psi_scale Psi0 / (nu - d
    - 1) under the trace's psi_scale."""
    hp = Hyperpriors(kappa=gamma(2.0, 2.0), psi_scale=gamma(3.0, 1.0), alpha=gamma(2.0, 1.0))
    model = DPMixture(GaussianNIW(np.zeros(2), 1.0, 5.0, np.eye(2)), hyperpriors=hp,
                      truncation=5)
    kappas, scales, covs = [], [], []
    for seed in range(400):
        torch.manual_seed(seed)
        tr = poutine.trace(model.model).get_trace(n=4)
        assert {"kappa", "psi_scale", "alpha", "v", "cov", "loc"} <= set(tr.nodes)
        kappas.append(float(tr.nodes["kappa"]["value"]))
        scales.append(float(tr.nodes["psi_scale"]["value"]))
        covs.append(float(tr.nodes["cov"]["value"][:, 0, 0].mean()) / scales[-1])
    assert st.kstest(kappas, st.gamma(2.0, scale=0.5).cdf).pvalue > 1e-3
    assert st.kstest(scales, st.gamma(3.0).cdf).pvalue > 1e-3
    # Sigma / psi_scale ~ IW(5, I): mean 1 / (5 - 2 - 1) = 0.5 per diagonal entry
    assert abs(np.mean(covs) - 0.5) < 0.1


def test_hyperpriors_are_checked():
    fam = GaussianNIW(np.zeros(2), 1.0, 5.0, np.eye(2))
    with pytest.raises(ValueError, match="no hyperparameter 'lam'"):
        DPMixture(fam, hyperpriors=Hyperpriors(lam=gamma(1.0, 1.0)))
    with pytest.raises(TypeError, match="torch distribution"):
        Hyperpriors(kappa=(1.0, 1.0))
    from bnpdeep.models import PitmanYor
    with pytest.raises(ValueError, match="DirichletProcess"):
        DPMixture(fam, PitmanYor(0.2, 1.0), hyperpriors=Hyperpriors(alpha=gamma(1.0, 1.0)))


def test_a_collapsing_hyperparameter_is_named_by_the_sampler(monkeypatch):
    """A column constant within each cluster, with kappa and psi_scale free: their
    conditional is improper (it grows without bound towards 0), the chain's draws
    fall towards 0 and the sampler warns once naming the hyperparameter.  Where a
    step's linear algebra then fails, the error gives the iteration and the values."""
    rng = np.random.default_rng(0)
    X = np.concatenate([np.c_[rng.normal(0, 1, (300, 2)), np.zeros(300)],
                        np.c_[rng.normal(8, 1, (300, 2)), np.ones(300)]])
    model = DPMixture(GaussianNIW.weak(X), DirichletProcess(1.0),
                      hyperpriors=Hyperpriors(kappa=gamma(1.0, 1.0), psi_scale=gamma(1.0, 1.0)))
    with pytest.warns(RuntimeWarning, match="psi_scale was drawn at .* probably improper"):
        est = SubclusterSampler(model, max_iter=100, random_state=0).fit(X)
    assert est.to_inference_data().posterior["psi_scale"].values.max() < 1e-8
    step = SubclusterSampler._step

    def failing(self, state):
        if self._iteration == 30:
            raise torch.linalg.LinAlgError("linalg.cholesky: The factorization could not "
                                           "be completed")
        self._iteration += 1
        return step(self, state)

    monkeypatch.setattr(SubclusterSampler, "_step", failing)
    monkeypatch.setattr(SubclusterSampler, "_iteration", 0, raising=False)
    with pytest.warns(RuntimeWarning), \
            pytest.raises(ValueError, match=r"iteration 31: .*cholesky.* hyperparameters at "
                                            r"kappa=.*, psi_scale="):
        SubclusterSampler(model, max_iter=100, random_state=0).fit(X)
