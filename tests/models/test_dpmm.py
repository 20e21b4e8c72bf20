"""The Pyro program: prior predictive, Predictive, SVI, log joint."""

import numpy as np
import pyro
import pytest
import torch
from bnpdeep.models import (
    DiagonalGaussian,
    DirichletProcess,
    DPMixture,
    FiniteDirichlet,
    GaussianNIW,
    Multinomial,
    PitmanYor,
)
from pyro import poutine
from pyro.infer import SVI, Predictive, TraceEnum_ELBO, config_enumerate
from pyro.infer.autoguide import AutoDelta, AutoNormal

from bnpdeep.data import make_mixture


def _families(d=2):
    X = np.random.default_rng(0).normal(size=(30, d))
    counts = np.random.default_rng(0).integers(0, 6, size=(30, 4)).astype(float)
    return [GaussianNIW.weak(X), DiagonalGaussian.weak(X), Multinomial.weak(counts)]


@pytest.mark.parametrize("family", _families(), ids=lambda f: type(f).__name__)
@pytest.mark.parametrize("weights", [DirichletProcess(1.0), PitmanYor(0.2, 1.0),
                                     FiniteDirichlet(4, 1.0)], ids=repr)
def test_prior_predictive_shapes(family, weights):
    m = DPMixture(family, weights, truncation=6)
    out = m.sample_prior_predictive(40, seed=1)
    assert out["X"].shape == (40, family.dim)
    assert out["z"].shape == (40,) and int(out["z"].max()) < m.truncation
    assert out["weights"].shape == (m.truncation,)
    assert float(out["weights"].sum()) == pytest.approx(1.0)


def test_predictive_runs():
    fam = _families()[0]
    m = DPMixture(fam, truncation=5)
    pred = Predictive(m.model, num_samples=7)
    samples = pred(n=12)
    assert samples["obs"].shape == (7, 12, 2)
    assert samples["z"].shape == (7, 12)
    assert samples["cov"].shape == (7, 5, 2, 2)
    assert samples["v"].shape == (7, 4)


@pytest.mark.parametrize("family", _families(), ids=lambda f: type(f).__name__)
def test_svi_with_an_autoguide(family):
    """A few SVI steps, z enumerated out, every other site in an AutoNormal guide."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    m = DPMixture(family, truncation=4)
    out = m.sample_prior_predictive(50, seed=2)
    X = out["X"]
    model = config_enumerate(m.model)
    guide = AutoNormal(poutine.block(model, hide=["z"]))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), TraceEnum_ELBO(max_plate_nesting=1))
    losses = [svi.step(X) for _ in range(15)]
    assert np.all(np.isfinite(losses))
    # subsampled data plate
    losses = [svi.step(X, subsample_size=16) for _ in range(3)]
    assert np.all(np.isfinite(losses))


def test_map_fit_by_svi_improves_the_loss():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    g = np.random.default_rng(0)
    X = np.concatenate([g.normal(-4, 0.5, size=(60, 2)), g.normal(4, 0.5, size=(60, 2))])
    m = DPMixture(GaussianNIW.weak(X), truncation=3)
    model = config_enumerate(m.model)
    guide = AutoDelta(poutine.block(model, hide=["z"]))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), TraceEnum_ELBO(max_plate_nesting=1))
    Xt = torch.as_tensor(X)
    first = svi.step(Xt)
    for _ in range(200):
        last = svi.step(Xt)
    assert last < first


def test_log_joint_matches_manual_computation():
    fam = _families()[0]
    m = DPMixture(fam, truncation=3)
    out = m.sample_prior_predictive(20, seed=3)
    v = torch.tensor([0.6, 0.5], dtype=torch.float64)
    lj = m.log_joint(out["X"], out["z"], v, out["params"])
    pi = torch.tensor([0.6, 0.2, 0.2], dtype=torch.float64)
    manual = (torch.distributions.Beta(1.0, 1.0).log_prob(v).sum()
              + sum(float(fam.prior_distribution().log_prob(c)) for c in out["params"].cov)
              + sum(float(torch.distributions.MultivariateNormal(
                  fam.mu0, c / fam.kappa).log_prob(mu))
                  for mu, c in zip(out["params"].mean, out["params"].cov, strict=True))
              + pi.log()[out["z"]].sum()
              + fam.log_likelihood(out["X"], out["params"]).gather(
                  1, out["z"][:, None]).sum())
    assert lj == pytest.approx(float(manual))


def test_collapsed_log_joint_is_label_invariant():
    fam = _families()[0]
    m = DPMixture(fam)
    X = np.random.default_rng(1).normal(size=(10, 2))
    z = np.array([0, 0, 1, 1, 2, 2, 0, 1, 2, 0])
    perm = np.array([2, 0, 1])[z]
    assert m.log_joint_collapsed(X, z) == pytest.approx(m.log_joint_collapsed(X, perm))


def test_constructor_checks():
    with pytest.raises(TypeError, match="ConjugateFamily"):
        DPMixture("gaussian")
    assert DPMixture(_families()[0], FiniteDirichlet(7)).truncation == 7


@pytest.mark.parametrize("family", _families(), ids=lambda f: type(f).__name__)
def test_vectorised_particles_see_their_own_components(family):
    """Predictive(parallel=True) draws S particles at once; replaying them through the
    model vectorised over a particle plate gives each particle's obs the log-density
    the unvectorised model gives it alone (z_i indexes its own particle's theta)."""
    m = DPMixture(family, truncation=5)
    s, n = 4, 9
    with pyro.get_param_store().scope():
        draws = Predictive(m.model, num_samples=s, parallel=True)(n=n)
    assert draws["z"].shape == (s, n) and draws["obs"].shape[:2] == (s, n)

    def vectorised():
        with pyro.plate("particles", s, dim=-2):
            m.model(n=n)

    # the draws' leading axis is the particle plate's dim -2 already
    tr = poutine.trace(poutine.condition(vectorised, data=draws)).get_trace()
    joint = tr.nodes["obs"]["fn"].log_prob(tr.nodes["obs"]["value"])         # (S, N)
    assert joint.shape == (s, n)
    for i in range(s):
        one = poutine.trace(poutine.condition(m.model, data={k: draws[k][i] for k in draws})
                            ).get_trace(n=n)
        torch.testing.assert_close(joint[i],
                                   one.nodes["obs"]["fn"].log_prob(one.nodes["obs"]["value"]))


def test_vectorised_elbo_particles_agree_with_one_particle():
    """With a point-mass guide every particle is the same, so TraceEnum_ELBO with
    vectorised particles equals the single-particle ELBO (z enumerated)."""
    X, _ = make_mixture(60, 2, 3, seed=0)
    m = DPMixture(GaussianNIW.weak(X), truncation=5)
    prog = config_enumerate(m.model)
    Xt = torch.as_tensor(X)
    with pyro.get_param_store().scope():
        guide = AutoDelta(poutine.block(prog, hide=["z"]))
        one = TraceEnum_ELBO(max_plate_nesting=1).loss(prog, guide, Xt)
        many = TraceEnum_ELBO(max_plate_nesting=1, num_particles=3,
                              vectorize_particles=True).loss(prog, guide, Xt)
    assert np.isclose(one, many, rtol=1e-10)


def test_prior_predictive_seed_is_reproducible_and_leaves_torchs_generator_alone():
    m = DPMixture(_families()[0], truncation=4)
    state = torch.get_rng_state()
    a, b = m.sample_prior_predictive(20, seed=3), m.sample_prior_predictive(20, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(a["X"], b["X"])
    assert not torch.equal(a["X"], m.sample_prior_predictive(20, seed=4)["X"])


# -- NUTS ------------------------------------------------------------------------------
def _two_groups(n_per=12, sd=0.5, seed=0):
    g = np.random.default_rng(seed)
    X = np.concatenate([g.normal(-3, sd, size=(n_per, 2)), g.normal(3, sd, size=(n_per, 2))])
    return torch.as_tensor(X), np.repeat([0, 1], n_per)


def _pointwise(samples, X):
    """Per draw: log p(x_i | pi, theta) with z summed out (draws, N), and the
    responsibility-weighted component mean E[mu_{z_i} | x_i, pi, theta] (draws, N, d)."""
    from bnpdeep.models.weights import stick_breaking
    pi = stick_breaking(samples["v"])                                          # (S, T)
    comp = torch.distributions.MultivariateNormal(samples["loc"].unsqueeze(-3),
                                                  samples["cov"].unsqueeze(-4))
    joint = pi.log().unsqueeze(-2) + comp.log_prob(X.unsqueeze(-2))            # (S, N, T)
    resp = joint.softmax(-1)
    return torch.logsumexp(joint, -1), resp @ samples["loc"]


def _check_recovers_the_groups(samples, X, labels, sd=0.5):
    """The posterior mean of mu_{z_i}, averaged over a group's points, is that group's
    true centre (-3, -3) or (3, 3) within 4 sd / sqrt(n_group) (the group's sample
    mean is within about 3 sd / sqrt(n_group) of it; the centres are 6 sqrt(2)
    apart), and every point's is within 3 sd of it (a group split over two components
    moves a point's by about sd; one component for both groups, by 3 sqrt(2))."""
    _, mean_loc = _pointwise(samples, X)
    post = mean_loc.mean(0)                                                     # (N, d)
    for k, centre in ((0, -3.0), (1, 3.0)):
        group = labels == k
        err = post[group].mean(0) - centre
        assert float(err.abs().max()) < 4 * sd / np.sqrt(group.sum()), err
        assert float((post[group] - centre).norm(dim=-1).max()) < 3 * sd


def _nuts(model, X, seed=0, **kwargs):
    from pyro.infer import MCMC, NUTS
    pyro.set_rng_seed(seed)
    kernel = NUTS(model, max_plate_nesting=1, max_tree_depth=4)
    mcmc = MCMC(kernel, warmup_steps=30, num_samples=30, num_chains=1, disable_progbar=True)
    mcmc.run(X, **kwargs)
    return mcmc


def test_nuts_with_z_enumerated_recovers_two_groups(one_thread):
    """NUTS on the program with z enumerated (a few seconds: T = 3, 24 points, tree
    depth 4): the sticks, covariances (IW, through the registered bijection) and means
    move in unconstrained space, and the draws put each point at its group."""
    X, labels = _two_groups()
    m = DPMixture(GaussianNIW.weak(X.numpy()), truncation=3)
    mcmc = _nuts(config_enumerate(m.model), X)
    samples = mcmc.get_samples()
    assert samples["v"].shape == (30, 2) and samples["cov"].shape == (30, 3, 2, 2)
    assert "z" not in samples
    _check_recovers_the_groups(samples, X, labels)


@pytest.mark.parametrize("family", _families(), ids=lambda f: type(f).__name__)
def test_marginal_obs_is_the_enumerated_mixture(family):
    """With marginal=True the obs site's log-density is logsumexp_k of log pi_k plus the
    enumerated program's log p(x_i | theta_k), also vectorised over a particle plate."""
    m = DPMixture(family, truncation=4)
    s, n = 3, 7
    with pyro.get_param_store().scope():
        draws = Predictive(m.model, num_samples=s, parallel=True)(n=n)
    x = draws["obs"]
    sites = {k: draws[k] for k in ("v",) + family.param_sites}

    def marginal():
        with pyro.plate("particles", s, dim=-2):
            m.model(n=n, marginal=True)

    tr = poutine.trace(poutine.condition(marginal, data={**sites, "obs": x})).get_trace()
    got = tr.nodes["obs"]["fn"].log_prob(tr.nodes["obs"]["value"])              # (S, N)
    assert "z" not in tr.nodes and got.shape == (s, n)
    for i in range(s):
        one = {k: v[i] for k, v in sites.items()}
        want = []
        for k in range(m.truncation):
            z = torch.full((n,), k, dtype=torch.long)
            t1 = poutine.trace(poutine.condition(m.model, data={**one, "z": z})).get_trace(x[i])
            want.append(t1.nodes["z"]["fn"].log_prob(z)
                        + t1.nodes["obs"]["fn"].log_prob(t1.nodes["obs"]["value"]))
        torch.testing.assert_close(got[i], torch.logsumexp(torch.stack(want), 0))


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")   # 30 draws
def test_nuts_marginal_gives_arviz_its_pointwise_log_likelihood(one_thread):
    """arviz.from_pyro replays the program on the draws without enumerating z: with
    marginal=True its log_likelihood is log p(x_i | pi, theta) with z summed out
    (chain, draw, N), and az.loo runs on it."""
    import arviz as az
    X, labels = _two_groups()
    m = DPMixture(GaussianNIW.weak(X.numpy()), truncation=3)
    mcmc = _nuts(m.model, X, marginal=True)
    samples = mcmc.get_samples()
    _check_recovers_the_groups(samples, X, labels)
    idata = az.from_pyro(mcmc, log_likelihood=True)
    ll = idata.log_likelihood["obs"].values
    assert ll.shape == (1, 30, X.shape[0]) and np.isfinite(ll).all()
    want, _ = _pointwise(samples, X)
    np.testing.assert_allclose(ll[0], want.numpy(), rtol=1e-10, atol=1e-10)
    loo = az.loo(idata, pointwise=True)
    assert np.isfinite(loo.elpd_loo) and loo.loo_i.shape == (X.shape[0],)
