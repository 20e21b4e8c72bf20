"""Memoized online VB: the exact ELBO, monotone laps, exact moves, memo bookkeeping."""

import arviz as az
import numpy as np
import pytest
import torch
from bnpdeep.inference import MemoizedVB
from bnpdeep.inference.movb import elbo_from_stats, stick_terms
from bnpdeep.models import (
    DiagonalGaussian,
    DirichletProcess,
    DPMixture,
    FiniteDirichlet,
    GaussianNIW,
    Hyperpriors,
    Multinomial,
    PitmanYor,
    StudentNIW,
)
from scipy.special import betaln

from bnpdeep.data import make_mixture
from bnpdeep.metrics import nmi


def _counts(n=600, k=3, v=8, total=40, seed=0):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(v, 0.3), size=k)
    z = rng.integers(0, k, n)
    X = np.stack([rng.multinomial(total, probs[c]) for c in z]).astype(float)
    return X, z


def _models(X_gauss, X_counts):
    return {
        "niw-dp": (DPMixture(GaussianNIW.weak(X_gauss), DirichletProcess(1.0)), X_gauss),
        "student-dp": (DPMixture(StudentNIW.weak(X_gauss, df=4.0), DirichletProcess(1.0)),
                       X_gauss),
        "diag-py": (DPMixture(DiagonalGaussian.weak(X_gauss), PitmanYor(0.2, 1.0)), X_gauss),
        "multinomial-dp": (DPMixture(Multinomial.weak(X_counts), DirichletProcess(2.0)),
                           X_counts),
    }


MODELS = _models(make_mixture(500, 3, 4, seed=1)[0], _counts()[0])


@pytest.mark.parametrize("name", [m for m in MODELS if m != "student-dp"])
def test_elbo_from_statistics_equals_explicit_expectations(name):
    """The closed form from memoised statistics equals the ELBO written term by term:
    E_q[log p(x|theta)] weighted by r, minus KL(q(theta)||p(theta)), plus the stick and
    entropy terms -- for q(theta) the conjugate posterior of soft statistics."""
    model, X = MODELS[name]
    fam = model.family
    gen = torch.Generator().manual_seed(0)
    r = torch.softmax(3 * torch.randn(X.shape[0], 5, generator=gen, dtype=torch.float64), 1)
    stats = fam.suff_stats(X, weights=r)
    entropy = -(r * r.log()).sum()
    elog, _, kl_v = stick_terms(model.weights, stats.n)
    explicit = ((r * fam.expected_log_likelihood(X, stats)).sum() - fam.kl_to_prior(stats).sum()
                + (stats.n * elog).sum() - kl_v + entropy)
    closed = elbo_from_stats(fam, model.weights, stats, entropy)
    assert float(closed) == pytest.approx(float(explicit), rel=1e-10)


@pytest.mark.parametrize("weights", [DirichletProcess(1.5), PitmanYor(0.3, 0.7)])
def test_stick_terms_equal_the_beta_integral(weights):
    """At the optimal q(v), sum_k N_k E[log pi_k] - KL(q(v)||p(v)) is the log of
    the integral of prod_k pi_k^{N_k} under the stick prior: a product of Beta functions."""
    n = torch.tensor([30.5, 12.25, 7.0, 0.5], dtype=torch.float64)
    elog, _, kl = stick_terms(weights, n)
    a0, b0 = weights.stick_prior(5)
    a, b = weights.stick_posterior(torch.cat([n, torch.zeros(1, dtype=torch.float64)]))
    exact = (betaln(a.numpy(), b.numpy()) - betaln(a0.numpy(), b0.numpy())).sum()
    assert float((n * elog).sum() - kl) == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("name", list(MODELS))
def test_elbo_never_decreases_over_laps_without_moves(name):
    model, X = MODELS[name]
    est = MemoizedVB(model, n_batches=4, init_k=6, births=False, merges=False, deletes=False,
                     max_laps=0, random_state=0)
    est.fit(X)
    values = [est.elbo()]
    for _ in range(25):
        est.lap()
        values.append(est.elbo())
    diffs = np.diff(values)
    assert np.all(diffs >= -1e-8 * np.abs(values[1:])), diffs.min()
    assert values[-1] > values[0] + 1.0          # the laps did something


@pytest.mark.parametrize("name", ["niw-dp", "student-dp"])
def test_every_visit_is_an_ascent_step(name):
    model, X = MODELS[name]
    est = MemoizedVB(model, n_batches=5, init_k=5, max_laps=0, random_state=1).fit(X)
    prev = est.elbo()
    for _ in range(3):
        for b in range(5):
            est._visit(b)
            value = est.elbo()
            assert value >= prev - 1e-8 * abs(prev)
            prev = value


@pytest.mark.parametrize("name", ["niw-dp", "student-dp"])
def test_memoised_totals_equal_fresh_recomputation(name):
    model, X = MODELS[name]
    est = MemoizedVB(model, n_batches=4, init_k=5, max_laps=3, random_state=0).fit(X)
    # incremental updates mid-lap, without the end-of-lap resummation
    est._visit(2)
    est._visit(0)
    fresh, entropy = est.fresh_statistics()
    for name, value in fresh.fields.items():
        torch.testing.assert_close(est._stats.fields[name], value, rtol=1e-10, atol=1e-8)
    assert float(est._entropy) == pytest.approx(entropy, rel=1e-10)
    for b, idx in enumerate(est._batches):
        local = None if est._latent is None else est._latent[idx]
        batch = est._family.variational_stats(est._X[idx], est._resp[idx], local)
        torch.testing.assert_close(est._memo_stats[b].sxx, batch.sxx, rtol=1e-10, atol=1e-8)


def _check_moves(est):
    """Every accepted move raises L; pruning an empty component leaves it unchanged."""
    for move in est.moves_:
        before, after = move["elbo_before"], move["elbo_after"]
        if move["move"] == "prune":
            assert after == pytest.approx(before, rel=1e-8), move
        else:
            assert after > before, move


def test_recovers_k_from_one_component_and_every_move_raises_the_elbo():
    X, y = make_mixture(3000, 2, 6, separation=6.0, seed=3)
    est = MemoizedVB(random_state=0).fit(X)
    assert est.n_clusters_ == 6
    assert nmi(y, est.labels_) > 0.97
    kinds = {m["move"] for m in est.moves_}
    assert "birth" in kinds
    _check_moves(est)
    assert est.history_[0]["K"] <= 2 and est.converged_


def test_merges_shrink_an_overcomplete_start():
    X, y = make_mixture(2000, 2, 4, separation=8.0, seed=4)
    est = MemoizedVB(init_k=16, births=False, random_state=0).fit(X)
    assert est.n_clusters_ == 4
    merges = [m for m in est.moves_ if m["move"] in ("merge", "delete")]
    assert len(merges) >= 10
    _check_moves(est)


def test_multinomial_and_diagonal_families_recover_k():
    X, z = _counts(900, 4, seed=5)
    est = MemoizedVB(DPMixture(Multinomial.weak(X)), random_state=0).fit(X)
    assert est.n_clusters_ == 4 and nmi(z, est.labels_) > 0.95
    Xg, y = make_mixture(1500, 4, 5, separation=8.0, seed=6)
    est = MemoizedVB(DPMixture(DiagonalGaussian.weak(Xg), PitmanYor(0.1, 1.0)),
                     random_state=0).fit(Xg)
    assert est.n_clusters_ == 5 and nmi(y, est.labels_) > 0.95


class _Spy(MemoizedVB):
    """Records each accepted move's L as the move evaluated it, beside the L of the
    statistics it left (``_record``'s value)."""

    def _elbo_with(self, n, log_z_sum, entropy):
        self._predicted = super()._elbo_with(n, log_z_sum, entropy)
        return self._predicted

    def _elbo_parts(self, stats, entropy):
        value = super()._elbo_parts(stats, entropy)
        self._predicted = float(value)
        return value

    def _record(self, kind, before):
        after = super()._record(kind, before)
        self.checks_ = getattr(self, "checks_", []) + [(kind, self._predicted, after)]
        return after


def _heavy_tailed(n=800, k=4, d=2, df=3.0, seed=0):
    """k clusters whose offsets from their means are multivariate t(df)."""
    rng = np.random.default_rng(seed)
    centres = 8.0 * rng.normal(size=(k, d))
    y = rng.integers(0, k, n)
    off = rng.standard_normal((n, d)) * np.sqrt(df / rng.chisquare(df, (n, 1)))
    return centres[y] + off, y


def test_student_components_find_heavy_tailed_clusters_with_exact_moves():
    """Student-t components (w's Gamma factors per row and component): on clusters
    with t(3) offsets the Gaussian model covers the tails with extra components and
    the t model finds the 4; every move evaluates L exactly and raises it, every lap
    raises it, and the memoised statistics (the factors included) equal a
    recomputation."""
    X, y = _heavy_tailed()
    gauss = _Spy(random_state=0).fit(X)
    est = _Spy(DPMixture(StudentNIW.weak(X, df=4.0)), n_samples=10, random_state=0).fit(X)
    assert gauss.n_clusters_ > 4
    assert est.n_clusters_ == 4 and nmi(y, est.labels_) > nmi(y, gauss.labels_)
    assert {"birth", "merge", "delete"} <= {m["move"] for m in est.moves_}
    _check_moves(est)
    # each move evaluated the L it then had exactly (the latent factors' terms included)
    for fit in (gauss, est):
        for kind, predicted, after in fit.checks_:
            assert predicted == pytest.approx(after, rel=1e-9, abs=1e-9), kind
    values = np.array(est.elbo_history_)
    assert np.all(np.diff(values) >= -1e-8 * np.abs(values[1:]))
    fresh, entropy = est.fresh_statistics()
    for name, value in fresh.fields.items():
        torch.testing.assert_close(est._stats.fields[name], value, rtol=1e-8, atol=1e-8)
    assert float(est._entropy) == pytest.approx(entropy, rel=1e-10)
    np.testing.assert_array_equal(est.predict(X), est.labels_)
    idata = est.to_inference_data()
    assert np.isfinite(az.loo(idata).elpd_loo)


def _whole_and_resumed(model, X, path, laps, every, seed):
    """An uninterrupted fit of ``laps`` laps, and one stopped after ``every`` laps (a
    checkpoint) and resumed to ``laps``."""
    opts = dict(tol=0.0, patience=10**6, checkpoint_every=every, random_state=seed)
    whole = MemoizedVB(model, max_laps=laps, **opts).fit(X)
    MemoizedVB(model, max_laps=every, **opts).fit(X, checkpoint_dir=path)
    resumed = MemoizedVB(model, max_laps=laps, **opts).fit(X, checkpoint_dir=path, resume=True)
    assert resumed.elbo_history_ == whole.elbo_history_
    np.testing.assert_array_equal(resumed.resp_, whole.resp_)
    return whole, resumed


def test_student_checkpoint_resume_keeps_the_latent_factors(tmp_path):
    X, _ = _heavy_tailed(seed=1)
    _whole_and_resumed(DPMixture(StudentNIW.weak(X, df=4.0)), X, tmp_path, 6, 2, 0)


def test_predict_and_inference_data():
    X, y = make_mixture(800, 2, 3, separation=8.0, seed=7)
    est = MemoizedVB(n_samples=20, random_state=0).fit(X)
    np.testing.assert_array_equal(est.predict(X), est.labels_)
    proba = est.predict_proba(X[:10])
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert proba.shape == (10, len(est.weights_))
    idata = est.to_inference_data()
    assert idata.posterior["K"].shape == (1, 20)
    assert idata.posterior.attrs["draw_kind"] == "sample"
    assert idata.log_likelihood["x"].shape == (1, 20, 800)
    assert np.isfinite(az.loo(idata).elpd_loo)
    assert np.all(idata.posterior["K"].values >= 3)


def test_options_and_priors_are_checked():
    X, _ = make_mixture(100, 2, 2, seed=0)
    with pytest.raises(ValueError, match="DirichletProcess or PitmanYor"):
        MemoizedVB(DPMixture(GaussianNIW.weak(X), FiniteDirichlet(5))).fit(X)
    with pytest.raises(ValueError, match="n_batches"):
        MemoizedVB(n_batches=0).fit(X)
    with pytest.raises(ValueError, match="init_k"):
        MemoizedVB(init_k=0).fit(X)
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        MemoizedVB().fit(bad)


def test_checkpoint_resume_ends_where_an_uninterrupted_fit_ends(tmp_path):
    X, _ = make_mixture(3000, 2, 16, separation=5.0, seed=8)
    opts = dict(tol=0.0, patience=10**6, checkpoint_every=3, random_state=2)
    whole = MemoizedVB(max_laps=9, **opts).fit(X)
    # the fit is still moving after lap 3, so the resumed part has work to reproduce
    assert any(m["lap"] >= 3 and m["move"] == "birth" for m in whole.moves_)
    # an "interrupted" fit: 3 laps, a checkpoint after lap 3
    MemoizedVB(max_laps=3, **opts).fit(X, checkpoint_dir=tmp_path)
    resumed = MemoizedVB(max_laps=9, **opts).fit(X, checkpoint_dir=tmp_path, resume=True)
    assert resumed.elbo_history_ == whole.elbo_history_
    assert resumed.moves_ == whole.moves_
    np.testing.assert_array_equal(resumed.labels_, whole.labels_)
    np.testing.assert_array_equal(resumed.resp_, whole.resp_)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        MemoizedVB().fit(X, resume=True)


# -- hyperparameters as point estimates (variational EM) ---------------------------------

def _gamma(shape, rate):
    return torch.distributions.Gamma(torch.tensor(float(shape), dtype=torch.float64),
                                     torch.tensor(float(rate), dtype=torch.float64))


def _scaled_clusters(scale=4.0, k=30, per=80, d=2, seed=0):
    """k well separated clusters whose covariances are drawn from IW(d + 3, scale I)."""
    from scipy.stats import invwishart

    rng = np.random.default_rng(seed)
    centres = 40.0 * np.stack(np.meshgrid(np.arange(6), np.arange(5)), -1).reshape(-1, 2)[:k]
    X, y = [], []
    for c in range(k):
        cov = invwishart(df=d + 3, scale=scale * np.eye(d)).rvs(random_state=rng)
        X.append(rng.multivariate_normal(centres[c], cov, per))
        y += [c] * per
    return np.concatenate(X), np.array(y)


def test_hyperparameter_point_estimate_recovers_the_covariance_scale():
    """Clusters whose covariances are IW(nu, s Psi0) draws with s = 4 and Psi0 = I:
    with a Gamma(1, 1) prior on psi_scale, moVB finds the clusters and puts psi_scale
    near s (30 clusters: the type-II MAP's relative error is about 0.1).  Without the
    hyperparameter update it stays at 1 and this fails."""
    X, y = _scaled_clusters()
    fam = GaussianNIW(X.mean(0), 1e-3, 5.0, np.eye(2))
    model = DPMixture(fam, DirichletProcess(1.0),
                      hyperpriors=Hyperpriors(psi_scale=_gamma(1, 1), alpha=_gamma(1, 1)))
    est = MemoizedVB(model, random_state=0).fit(X)
    assert est.n_clusters_ == 30 and nmi(y, est.labels_) > 0.99
    assert abs(np.log(est.hyperparameters_["psi_scale"] / 4.0)) < 0.3, est.hyperparameters_
    # alpha's point estimate: K = 30 at N = 2,400 puts it well above 1
    assert est.hyperparameters_["alpha"] > 3.0
    assert np.all(np.diff(est.elbo_history_) >= -1e-8 * np.abs(est.elbo_history_[1:]))
    assert est.history_[-1]["hyperparameters"] == est.hyperparameters_


def test_hyperparameter_updates_maximise_the_objective():
    """After the fit, each hyperparameter maximises L + log p(h) along its own axis
    (the fitted soft statistics held fixed): no point of a fine grid around it scores
    higher, and the lap's update never lowered the recorded objective."""
    X, _ = make_mixture(1500, 3, 5, separation=6.0, seed=2)
    hp = Hyperpriors(kappa=_gamma(1, 1), psi_scale=_gamma(2, 1), alpha=_gamma(2, 1))
    est = MemoizedVB(DPMixture(GaussianNIW.weak(X), DirichletProcess(1.0), hyperpriors=hp),
                     random_state=0).fit(X)
    values = {n: est.hyperparameters_[n] for n in ("kappa", "psi_scale")}
    # the fit's statistics are of its standardised rows: the prior there, and the
    # Jacobian that puts the objective in X's units
    units = est._units
    base = GaussianNIW.weak(X).standardized(units.shift, units.scale)

    def objective(v):
        fam = base.with_hyperparameters(**v)
        return float(fam.log_marginal(est._stats).sum()) + units.lp_offset + hp.log_prob(v)

    best = objective(values)
    for name in values:
        for f in np.exp(np.linspace(-1.0, 1.0, 81)):
            assert objective({**values, name: values[name] * f}) <= best + 1e-6 * abs(best), name
    alpha = est.hyperparameters_["alpha"]

    def alpha_objective(a):
        return float(hp.alpha.log_prob(torch.tensor(a, dtype=torch.float64))) \
            + est._stick_objective(a)

    a_best = alpha_objective(alpha)
    assert all(alpha_objective(alpha * f) <= a_best + 1e-9
               for f in np.exp(np.linspace(-1.0, 1.0, 81)))
    assert np.all(np.diff(est.elbo_history_) >= -1e-8 * np.abs(est.elbo_history_[1:]))


def test_high_dimensional_scale_is_set_by_the_data():
    """128-d clusters of rank 8 (standardised): the default fixed prior's scale joins
    pairs of clusters; a Gamma(1, 1) prior on kappa and on psi_scale lets moVB find
    the ten (the samplers' posterior puts psi_scale near 20 on these data)."""
    X, y = make_mixture(3000, 128, 10, rank=8, separation=6.0, seed=0)
    X = (X - X.mean(0)) / X.std(0)
    fam = GaussianNIW.weak(X)
    fixed = MemoizedVB(DPMixture(fam, DirichletProcess(1.0)), random_state=0).fit(X)
    hp = Hyperpriors(kappa=_gamma(1, 1), psi_scale=_gamma(1, 1))
    est = MemoizedVB(DPMixture(fam, DirichletProcess(1.0), hyperpriors=hp),
                     random_state=0).fit(X)
    assert fixed.n_clusters_ < 10
    assert est.n_clusters_ == 10 and nmi(y, est.labels_) > 0.99
    assert est.hyperparameters_["psi_scale"] > 5.0


def test_checkpoint_resume_keeps_the_hyperparameters(tmp_path):
    X, _ = make_mixture(2000, 2, 8, separation=5.0, seed=8)
    hp = Hyperpriors(kappa=_gamma(1, 1), psi_scale=_gamma(1, 1), alpha=_gamma(1, 1))
    model = DPMixture(GaussianNIW.weak(X), DirichletProcess(1.0), hyperpriors=hp)
    whole, resumed = _whole_and_resumed(model, X, tmp_path, 7, 3, 2)
    assert resumed.hyperparameters_ == whole.hyperparameters_


def test_a_scale_estimate_without_a_maximum_is_named():
    """A column constant within each cluster makes every cluster's scatter singular
    (with kappa free, the clusters' mean shifts no longer fill that direction): the
    marginal likelihood then grows without bound as psi_scale shrinks, and the
    point estimate says so instead of returning a collapsed scale silently.  On
    clusters with full-rank scatter no warning is given."""
    import warnings

    rng = np.random.default_rng(0)
    X = np.concatenate([np.c_[rng.normal(0, 1, (300, 2)), np.zeros(300)],
                        np.c_[rng.normal(8, 1, (300, 2)), np.ones(300)]])
    hp = Hyperpriors(kappa=_gamma(1, 1), psi_scale=_gamma(1, 1))
    with pytest.warns(RuntimeWarning, match="psi_scale .* not a maximum"):
        MemoizedVB(DPMixture(GaussianNIW.weak(X), DirichletProcess(1.0), hyperpriors=hp),
                   random_state=0).fit(X)
    X[:, 2] += rng.normal(0, 0.5, 600)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        est = MemoizedVB(DPMixture(GaussianNIW.weak(X), DirichletProcess(1.0),
                                   hyperpriors=hp), random_state=0).fit(X)
    assert est.n_clusters_ == 2


def test_student_degrees_of_freedom_estimate_recovers_the_generating_df():
    """df under a vague Gamma(2, 0.1) hyperprior, set in every lap to the maximiser of
    log p(df) + sum_k log Z(S_k; df) at the Gamma factors of the scales (variational
    EM): on clusters with t(3) offsets the estimate is near 3, and the objective
    L + log p(df) never falls."""
    X, y = _heavy_tailed(n=1500, seed=2)
    model = DPMixture(StudentNIW.weak(X, df=20.0), DirichletProcess(1.0),
                      hyperpriors=Hyperpriors(df=_gamma(2.0, 0.1)))
    est = _Spy(model, random_state=0).fit(X)
    assert est.n_clusters_ == 4 and nmi(y, est.labels_) > 0.8
    assert 2.3 < est.hyperparameters_["df"] < 4.0
    values = np.array(est.elbo_history_)
    assert np.all(np.diff(values) >= -1e-8 * np.abs(values[1:]))
    assert all(p == pytest.approx(a, rel=1e-9, abs=1e-9) for _, p, a in est.checks_)
