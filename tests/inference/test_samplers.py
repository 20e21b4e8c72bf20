"""The samplers as estimators: K recovery, predictions, draws, InferenceData."""

import math

import arviz as az
import numpy as np
import pytest
import torch
from bnpdeep.inference.distributed import DistributedSubclusterSampler
from bnpdeep.inference.gibbs import CollapsedGibbs
from bnpdeep.inference.subcluster import SubclusterSampler
from bnpdeep.inference.subcluster_settings import SamplerOptions
from bnpdeep.models import (
    DiagonalGaussian,
    DirichletProcess,
    DPMixture,
    GaussianNIW,
    Hyperpriors,
    Multinomial,
    PitmanYor,
    StudentNIW,
)
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import adjusted_rand_score

from bnpdeep.data import DataError, make_mixture
from bnpdeep.diagnostics import k_summary, to_inference_data


def _blobs(n=600, k=4, seed=0, spread=6.0):
    g = np.random.default_rng(seed)
    angles = 2 * np.pi * np.arange(k) / k
    means = spread * np.c_[np.cos(angles), np.sin(angles)]
    y = g.integers(0, k, n)
    return means[y] + g.normal(scale=0.7, size=(n, 2)), y


def _singleton_odds(model, X, y):
    """Exact posterior odds, summed over the points, of the partition y with one point
    moved into a cluster of its own, against y itself."""
    fam, Xt = model.family, torch.as_tensor(X)

    def log_joint(z):
        st = fam.suff_stats_labels(Xt, torch.as_tensor(z), int(z.max()) + 1)
        return float(model.weights.log_eppf(st.n) + fam.log_marginal(st).sum())

    base, k = log_joint(y), int(y.max()) + 1
    return sum(math.exp(log_joint(np.where(np.arange(len(y)) == i, k, y)) - base)
               for i in range(len(y)))


@pytest.mark.parametrize("init_k", [1, 12])
def test_subcluster_recovers_k_from_one_and_from_too_many(init_k):
    X, y = _blobs()
    # a warm-up over all 30 burn-in iterations removes a bad start's clusters; without
    # the collapsed Gibbs updates the split/merge and slice steps alone keep K at 4
    # or 5
    est = SubclusterSampler(max_iter=60, warmup=30, options=SamplerOptions(gibbs_points=0),
                            init_k=init_k, random_state=0).fit(X)
    assert est.n_clusters_ == 4
    assert adjusted_rand_score(y, est.labels_) > 0.95
    # draws after burn-in: draws x N labels, K per draw.  Under the default DP(1) a
    # one-point fifth cluster holds about 13% of the posterior mass (two such clusters
    # about 1%), so the chain may visit K = 5 but stays at K = 4 most of the time --
    # on either backend.
    assert est.label_draws_.shape == (30, 600)
    assert np.isin(est.k_draws_, [4, 5]).all() and np.mean(est.k_draws_ == 4) > 0.5
    est = SubclusterSampler(max_iter=60, warmup=30, options=SamplerOptions(gibbs_points=0),
                            init_k=init_k, random_state=0, backend="torch").fit(X)
    assert est.n_clusters_ == 4
    assert np.isin(est.k_draws_, [4, 5]).all() and np.mean(est.k_draws_ == 4) > 0.5
    # Over six chains of 4000 iterations each backend gave K = 4 / 5 / 6 in
    # 0.72 / 0.23 / 0.04 (torch) and 0.71 / 0.25 / 0.04 (compiled) of the draws; an
    # excursion to K = 5 lasts tens of iterations, so a longer chain checks the
    # frequencies too.
    long = SubclusterSampler(max_iter=1000, burn_in=100, init_k=init_k, random_state=0,
                             store_log_likelihood=False).fit(X)
    assert long.k_draws_.min() >= 4 and np.mean(long.k_draws_ == 4) > 0.5
    assert np.mean(long.k_draws_ <= 6) > 0.95
    # The odds of that fifth cluster are 0.16 (summed over the points) under DP(1);
    # with alpha = 1e-3 they fall a thousandfold, so every draw must have K = 4.
    model = DPMixture(GaussianNIW.weak(X), DirichletProcess(1e-3))
    assert _singleton_odds(model, X, y) < 1e-3
    est = SubclusterSampler(model=model, max_iter=60, warmup=30, init_k=init_k,
                            random_state=0).fit(X)
    assert np.all(est.k_draws_ == 4)


def test_subcluster_predict_matches_training_labels_and_new_points():
    X, y = _blobs(seed=1)
    est = SubclusterSampler(max_iter=40).fit(X)
    assert (est.predict(X) == est.labels_).mean() > 0.99
    Xnew, ynew = _blobs(n=200, seed=2)
    assert adjusted_rand_score(ynew, est.predict(Xnew)) > 0.95


@pytest.mark.parametrize("cls", [SubclusterSampler, CollapsedGibbs,
                                 DistributedSubclusterSampler])
def test_predict_proba_is_the_crp_predictive_given_labels(cls):
    """p(z = k | x, labels_) proportional to N_k t(x | NIW posterior of cluster k)
    (Murphy 2007, eq. 258), written out with scipy; its argmax is predict."""
    from scipy.stats import multivariate_t

    X, _ = _blobs(n=200, k=3, seed=4, spread=3.0)
    fam = GaussianNIW.weak(X)
    est = cls(model=DPMixture(fam), max_iter=20, random_state=0).fit(X)
    Xnew = _blobs(n=40, k=3, seed=5, spread=3.0)[0] * 1.3
    d = X.shape[1]
    mu0, kappa0, nu0, psi0 = (fam.mu0.numpy(), float(fam.kappa), float(fam.nu),
                              fam.psi.numpy())
    logp = []
    for k in range(est.n_clusters_):
        Xk = X[est.labels_ == k]
        n, xbar = len(Xk), Xk.mean(0)
        S = (Xk - xbar).T @ (Xk - xbar)
        kn, nun = kappa0 + n, nu0 + n
        mun = (kappa0 * mu0 + n * xbar) / kn
        psin = psi0 + S + kappa0 * n / kn * np.outer(xbar - mu0, xbar - mu0)
        df = nun - d + 1
        logp.append(np.log(n) + multivariate_t(mun, psin * (kn + 1) / (kn * df), df=df)
                    .logpdf(Xnew))
    logp = np.stack(logp, 1)
    expect = np.exp(logp - logp.max(1, keepdims=True))
    expect /= expect.sum(1, keepdims=True)
    proba = est.predict_proba(Xnew)
    np.testing.assert_allclose(proba, expect, rtol=1e-8, atol=1e-12)
    np.testing.assert_array_equal(proba.argmax(1), est.predict(Xnew))


def test_inference_data_schema_loo_and_multichain_diagnostics():
    X, y = _blobs(n=300, seed=3)
    # K = 4 in every draw below must be what the posterior says: under DP(1) a one-point
    # fifth cluster has odds 0.22 here (about 18% of the mass), under DP(1e-3) 2e-4
    model = DPMixture(GaussianNIW.weak(X), DirichletProcess(1e-3))
    assert _singleton_odds(model, X, y) < 1e-3
    est = SubclusterSampler(model=model, max_iter=40, n_chains=2, random_state=0).fit(X)
    idata = est.to_inference_data()
    assert {"posterior", "sample_stats", "log_likelihood", "observed_data"} <= set(
        idata.groups())
    assert idata.posterior["K"].shape == (2, 20)
    assert idata.log_likelihood["x"].shape == (2, 20, 300)
    assert "split_acceptance" in idata.sample_stats
    w = idata.posterior["weights"].values
    assert np.allclose(w.sum(-1), 1.0, atol=0.1)  # the rest mass is the remainder
    assert np.all(np.diff(w, axis=-1) <= 1e-12)      # sorted by size
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo)
    summary = k_summary(idata)
    assert summary["k_mean"] == pytest.approx(4.0)
    assert "rhat_lp" in summary and np.isfinite(summary["ess_lp"])
    # the pointwise log-likelihood integrates the rest mass: it is a density, finite
    assert np.isfinite(idata.log_likelihood["x"].values).all()
    same = to_inference_data(est)
    assert np.array_equal(same.posterior["K"].values, idata.posterior["K"].values)


def test_k_summary_of_chains_stuck_at_different_k_is_infinite_rhat():
    """Chains each holding one K but disagreeing are the plainest non-convergence:
    R-hat infinite (W = 0), not NaN; identical constant chains stay NaN (undefined)."""
    lp = np.random.default_rng(0).normal(size=(3, 50))
    stuck = az.from_dict(posterior={"K": np.repeat([[4], [5], [7]], 50, axis=1)},
                         sample_stats={"lp": lp})
    summary = k_summary(stuck)
    assert summary["rhat_K"] == np.inf
    assert np.isfinite(summary["rhat_lp"])
    same = az.from_dict(posterior={"K": np.full((3, 50), 4)}, sample_stats={"lp": lp})
    assert np.isnan(k_summary(same)["rhat_K"])
    mixing = az.from_dict(posterior={"K": np.random.default_rng(1).integers(4, 6, (3, 50))},
                          sample_stats={"lp": lp})
    assert 0.9 < k_summary(mixing)["rhat_K"] < 1.1


def test_gibbs_estimator_on_a_small_mixture():
    X, y = _blobs(n=120, seed=4)
    est = CollapsedGibbs(max_iter=30, random_state=0).fit(X)
    assert est.n_clusters_ == 4
    assert adjusted_rand_score(y, est.labels_) > 0.95
    assert est.to_inference_data().posterior["K"].shape == (1, 15)


@pytest.mark.parametrize("make_model", [
    lambda X: DPMixture(DiagonalGaussian.weak(X), DirichletProcess(1.0)),
    lambda X: DPMixture(GaussianNIW.weak(X), PitmanYor(0.2, 1.0)),
], ids=["diagonal", "pitman-yor"])
def test_subcluster_with_other_models(make_model):
    # blobs on a grid: their pairwise halves are axis-aligned, which a diagonal
    # covariance can represent (a diamond of blobs pairs off along diagonals)
    g = np.random.default_rng(5)
    means = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0], [8.0, 8.0]])
    y = g.integers(0, 4, 400)
    X = means[y] + g.normal(scale=0.7, size=(400, 2))
    est = SubclusterSampler(model=make_model(X), max_iter=40).fit(X)
    assert est.n_clusters_ == 4
    assert adjusted_rand_score(y, est.labels_) > 0.9


def test_subcluster_multinomial_mixture():
    g = np.random.default_rng(6)
    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7], [0.1, 0.7, 0.1, 0.1]])
    y = g.integers(0, 3, 300)
    X = np.stack([g.multinomial(40, probs[c]) for c in y]).astype(float)
    model = DPMixture(Multinomial.weak(X))
    est = SubclusterSampler(model=model, max_iter=40,
                            options=SamplerOptions(gibbs_points=0)).fit(X)
    assert est.n_clusters_ == 3
    assert adjusted_rand_score(y, est.labels_) > 0.95
    # At the defaults (collapsed Gibbs updates on)
    est = SubclusterSampler(model=model, max_iter=200).fit(X)
    # Under this prior a small fourth cluster is likely too: 2000 iterations of this
    # sampler gave K = 3 / 4 / 5 / 6 in 0.50 / 0.38 / 0.10 / 0.02 of the draws,
    # collapsed Gibbs 0.60 / 0.31 / 0.07 / 0.02.  The three mixtures are never merged.
    assert est.k_draws_.min() >= 3 and np.mean(est.k_draws_ <= 4) > 0.7
    assert adjusted_rand_score(y, est.labels_) > 0.95


def test_escobar_west_alpha_moves():
    X, _ = _blobs(n=300, seed=7)
    gamma = torch.distributions.Gamma(torch.tensor(1.0, dtype=torch.float64),
                                      torch.tensor(1.0, dtype=torch.float64))
    model = DPMixture(GaussianNIW.weak(X), hyperpriors=Hyperpriors(alpha=gamma))
    est = SubclusterSampler(model=model, max_iter=40).fit(X)
    alpha = est.to_inference_data().posterior["alpha"].values
    assert np.unique(alpha).size > 5 and np.all(alpha > 0)


def test_estimator_conventions_and_errors():
    est = SubclusterSampler(max_iter=5, init_k=2)
    assert clone(est).get_params()["init_k"] == 2
    with pytest.raises(NotFittedError):
        est.predict(np.zeros((3, 2)))
    X, _ = _blobs(n=100)
    est.fit(X)
    assert est.warmup_ == 1                  # half the burn-in (max_iter // 2) by default
    assert SubclusterSampler(max_iter=6, warmup=1).fit(X).warmup_ == 1
    with pytest.raises(DataError, match="features"):
        est.predict(np.zeros((3, 5)))
    with pytest.raises(TypeError, match="DPMixture"):
        SubclusterSampler(model="gaussian").fit(X)
    with pytest.raises(ValueError, match="burn_in"):
        SubclusterSampler(max_iter=5, burn_in=5).fit(X)
    for kwargs, name in [({"init_k": 0}, "init_k"), ({"warmup": 4}, "warmup"),
                         ({"options": {"burnout": -1}}, "burnout")]:
        with pytest.raises(ValueError, match=name):
            SubclusterSampler(max_iter=5, **kwargs).fit(X)
    bad = X.copy()
    bad[[3, 17]] = np.nan
    with pytest.raises(DataError, match="3"):
        SubclusterSampler(max_iter=5).fit(bad)


def _hierarchical():
    """A model with kappa, psi_scale and alpha in the chain's state."""
    def gamma(a, b):
        return torch.distributions.Gamma(torch.tensor(a, dtype=torch.float64),
                                         torch.tensor(b, dtype=torch.float64))

    return DPMixture(GaussianNIW(np.zeros(2), 1.0, 4.0, np.eye(2)),
                     hyperpriors=Hyperpriors(kappa=gamma(1.0, 1.0), psi_scale=gamma(1.0, 1.0),
                                             alpha=gamma(1.0, 1.0)))


def _student():
    """Student-t components, whose per-point scales are part of the chain's state."""
    return DPMixture(StudentNIW(np.zeros(2), 1.0, 4.0, np.eye(2), df=4.0))


@pytest.mark.parametrize("cls,kw,cut", [
    (SubclusterSampler, dict(max_iter=30, n_chains=2, checkpoint_every=4), 47),
    (SubclusterSampler, dict(max_iter=30, n_chains=2, checkpoint_every=4), 11),
    (SubclusterSampler, dict(max_iter=30, n_chains=2, checkpoint_every=4, backend="torch"), 47),
    (SubclusterSampler, dict(max_iter=30, n_chains=2, checkpoint_every=4,
                             options=SamplerOptions(gibbs_points="auto")), 47),
    (SubclusterSampler, dict(max_iter=30, n_chains=2, checkpoint_every=4,
                             options=SamplerOptions(gibbs_points="auto"), backend="torch"), 47),
    (CollapsedGibbs, dict(max_iter=12, checkpoint_every=5), 8),
    (SubclusterSampler, dict(max_iter=30, n_chains=2, checkpoint_every=4,
                             model=_hierarchical()), 47),
    (SubclusterSampler, dict(max_iter=30, n_chains=2, checkpoint_every=4, backend="torch",
                             model=_hierarchical()), 47),
    # Student-t components: the chain's scales w_i travel in the checkpoint
    (SubclusterSampler, dict(max_iter=30, n_chains=2, checkpoint_every=4, model=_student()), 47),
    (CollapsedGibbs, dict(max_iter=12, checkpoint_every=5, model=_student()), 8),
])
def test_resumed_fit_ends_with_the_draws_of_an_uninterrupted_one(tmp_path, kill_at,
                                                                 cls, kw, cut):
    """Killed in the second chain (step 47 of 60) or the first (step 11), a resumed
    fit continues from the last checkpoint and gives the uninterrupted fit's draws,
    traces and counters exactly (the compiled backend's numpy generator travels in
    the checkpointed state; the torch one's in torch's saved generator state)."""
    X, _ = _blobs(n=150, seed=5)
    full = cls(random_state=2, **kw).fit(X, checkpoint_dir=tmp_path / "full")
    undo = kill_at(cls, "_step", cut)
    with pytest.raises(KeyboardInterrupt):
        cls(random_state=2, **kw).fit(X, checkpoint_dir=tmp_path / "cut")
    undo()
    resumed = cls(random_state=2, **kw).fit(X, checkpoint_dir=tmp_path / "cut", resume=True)
    np.testing.assert_array_equal(resumed.label_draws_, full.label_draws_)
    np.testing.assert_array_equal(resumed.k_trace_, full.k_trace_)
    np.testing.assert_array_equal(resumed.lp_trace_, full.lp_trace_)
    # step times: one per iteration, those before the checkpoint kept from the first run
    assert resumed.seconds_trace_.shape == full.k_trace_.shape
    assert (resumed.seconds_trace_ > 0).all()
    np.testing.assert_array_equal(resumed.labels_, full.labels_)
    a, b = resumed.to_inference_data(), full.to_inference_data()
    np.testing.assert_array_equal(a.posterior["weights"].values, b.posterior["weights"].values)
    np.testing.assert_array_equal(a.log_likelihood["x"].values, b.log_likelihood["x"].values)
    # hyperparameters in the state resume with it
    for name in ("kappa", "psi_scale", "alpha"):
        hyper = getattr(kw.get("model"), "hyperpriors", None)
        if name in a.posterior and hyper is not None and name in hyper.priors:
            assert np.ptp(b.posterior[name].values) > 0
            np.testing.assert_array_equal(a.posterior[name].values, b.posterior[name].values)
    if cls is SubclusterSampler:
        assert resumed.label_rejections_ == full.label_rejections_
        np.testing.assert_array_equal(a.sample_stats["merge_acceptance"].values,
                                      b.sample_stats["merge_acceptance"].values)


def test_checkpoints_write_each_kept_draw_once(tmp_path, monkeypatch, kill_at):
    """The kept label and log-likelihood draws go to append-only files beside the
    checkpoint, each draw once; the checkpoint itself holds none of them, so saving
    costs the same at the end of a long run as at its start.  A fresh fit in the
    folder drops the files a previous fit left."""
    from bnpdeep.runs import RunFolder

    X, _ = _blobs(n=120, seed=4)
    written = []
    save = RunFolder.save_arrays

    def spy(self, name, **arrays):
        written.append((name, arrays["labels"].shape[0], arrays["log_lik"].shape))
        return save(self, name, **arrays)

    monkeypatch.setattr(RunFolder, "save_arrays", spy)
    est = SubclusterSampler(max_iter=40, n_chains=2, checkpoint_every=5, random_state=1)
    est.fit(X, checkpoint_dir=tmp_path)
    # each chain: 20 kept draws after burn-in, written in contiguous pieces
    assert sum(n for _, n, _ in written) == 2 * 20
    assert all(shape[1] == 120 for _, _, shape in written)
    saved = RunFolder(tmp_path).load_checkpoint(est._CHECKPOINT)
    for c, rec in enumerate(saved["chains"]):
        assert rec.labels == [] and rec.log_lik == []
        stops = [0] + [b for _, b in rec.draw_files]
        assert [a for a, _ in rec.draw_files] == stops[:-1] and stops[-1] == 20
        back = np.stack(est._restored(rec, c).labels)
        np.testing.assert_array_equal(back, np.stack(est.chains_[c].labels))
    left = sorted(p.name for p in tmp_path.glob("*.npz"))
    SubclusterSampler(max_iter=40, n_chains=1, checkpoint_every=40, random_state=1).fit(
        X, checkpoint_dir=tmp_path)
    assert len(left) > 1 and len(list(tmp_path.glob("*.npz"))) == 1
    # a fresh fit killed before its first save leaves no checkpoint naming lost files
    undo = kill_at(SubclusterSampler, "_step", 2)
    with pytest.raises(KeyboardInterrupt):
        SubclusterSampler(max_iter=40, checkpoint_every=5).fit(X, checkpoint_dir=tmp_path)
    undo()
    assert not (tmp_path / est._CHECKPOINT).exists() and not list(tmp_path.glob("*.npz"))


def test_checkpoint_of_other_data_or_settings_is_refused(tmp_path):
    X, _ = _blobs(n=100, seed=6)
    SubclusterSampler(max_iter=10, checkpoint_every=3).fit(X, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="other data"):
        SubclusterSampler(max_iter=10).fit(X[:90], checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="other data"):
        SubclusterSampler(max_iter=10).fit(X + 1.0, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="max_iter=10 there, 20 here"):
        SubclusterSampler(max_iter=20).fit(X, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="resume=True needs a checkpoint_dir"):
        SubclusterSampler(max_iter=10).fit(X, resume=True)
    with pytest.raises(ValueError, match="checkpoint_every"):
        SubclusterSampler(max_iter=10, checkpoint_every=0).fit(X, checkpoint_dir=tmp_path)
    # a finished fit resumed is the same fit, with nothing left to run
    again = SubclusterSampler(max_iter=10, checkpoint_every=3).fit(
        X, checkpoint_dir=tmp_path, resume=True)
    first = SubclusterSampler(max_iter=10).fit(X)
    np.testing.assert_array_equal(again.label_draws_, first.label_draws_)
    # the samplers keep their checkpoints apart in one folder
    assert (tmp_path / "subcluster_checkpoint.pt").exists()


@pytest.mark.parametrize("cls", [SubclusterSampler, CollapsedGibbs])
def test_device_argument_is_checked(cls):
    X, _ = _blobs(n=60, seed=7)
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda', 'cuda:<i>' or 'auto'"):
        cls(max_iter=4, device="tpu").fit(X)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA device"):
            cls(max_iter=4, device="cuda").fit(X)
        # "auto" falls back to the CPU: the same chain as device="cpu"
        auto = cls(max_iter=6, device="auto").fit(X)
        cpu = cls(max_iter=6, device="cpu").fit(X)
        np.testing.assert_array_equal(auto.label_draws_, cpu.label_draws_)


def test_gibbs_points_default_and_check():
    X, _ = _blobs(n=100)
    assert SubclusterSampler(max_iter=4, options={"gibbs_points": 0}).fit(X).gibbs_points_ == 0
    auto = SubclusterSampler(max_iter=4)                         # "auto" by default
    assert auto.fit(X).gibbs_points_ == 100                                 # min(N, 256)
    assert auto.set_params(backend="torch").fit(X).gibbs_points_ == 32
    assert SubclusterSampler(max_iter=4, options={"gibbs_points": 500}).fit(X).gibbs_points_ == 100
    for bad in (-1, 2.5, "all"):
        with pytest.raises(ValueError, match="gibbs_points"):
            SubclusterSampler(max_iter=4, options={"gibbs_points": bad}).fit(X)


@pytest.mark.parametrize("make", [
    lambda: SubclusterSampler(max_iter=60, n_chains=3, random_state=3),
    lambda: SubclusterSampler(max_iter=40, n_chains=2, backend="torch", random_state=3),
    lambda: CollapsedGibbs(max_iter=20, n_chains=2, random_state=3)],
    ids=["compiled", "torch", "gibbs"])
def test_chains_in_worker_processes_give_the_same_draws(make, one_thread):
    """n_jobs=2: every chain in a spawned worker, seeded from random_state and its
    index, gives the draws, traces and log-likelihoods of n_jobs=1 (one thread each)."""
    X, _ = _blobs(seed=5, n=60)
    one = make().fit(X)
    two = make().set_params(n_jobs=2).fit(X)
    np.testing.assert_array_equal(one.label_draws_, two.label_draws_)
    np.testing.assert_array_equal(one.lp_trace_, two.lp_trace_)
    np.testing.assert_array_equal(one.to_inference_data().log_likelihood["x"],
                                  two.to_inference_data().log_likelihood["x"])
    assert np.array_equal(one.labels_, two.labels_)
    assert (one.predict(X) == two.predict(X)).all()
    if isinstance(one, SubclusterSampler):
        assert (one.warmup_, one.gibbs_points_) == (two.warmup_, two.gibbs_points_)


def test_worker_processes_do_not_checkpoint(tmp_path):
    X, _ = _blobs(seed=5, n=40)
    with pytest.raises(ValueError, match="n_jobs=1 to use checkpoint_dir"):
        SubclusterSampler(max_iter=10, n_chains=2, n_jobs=2).fit(X, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="n_jobs must be"):
        SubclusterSampler(max_iter=10, n_chains=2, n_jobs=0).fit(X)


def test_progress_bar_redraws_at_its_own_rate_not_every_iteration(capsys):
    """The bar's K and lp follow the chain, but it redraws at tqdm's interval (0.1 s):
    a log of stderr gets a few lines a second, not one per iteration."""
    X, _ = make_mixture(300, 2, 3, separation=8.0, seed=0)
    est = SubclusterSampler(max_iter=400, progress=True, random_state=0).fit(X)
    err = capsys.readouterr().err
    redraws = err.count("lp=")
    assert est.n_clusters_ == 3 and 1 <= redraws < est.max_iter // 2
