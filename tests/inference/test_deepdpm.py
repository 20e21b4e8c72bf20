"""DeepDPM: net surgery, the Pyro guide, K moving both ways, checkpoints, predict."""

from pathlib import Path

import arviz as az
import numpy as np
import pyro
import pytest
import torch
from bnpdeep.inference import DeepDPM
from bnpdeep.inference.deepdpm import ClusterNet, DeepDPMLoss, SubclusterNets, stick_fractions
from bnpdeep.models import (
    DirichletProcess,
    DPMixture,
    GaussianNIW,
    Hyperpriors,
    StudentNIW,
    stick_breaking,
)
from pyro.infer import SVI, Predictive, TraceEnum_ELBO

from bnpdeep.data import make_mixture
from bnpdeep.metrics import evaluate


def _easy(n=1200, k=4, seed=0):
    return make_mixture(n, 2, k, separation=8.0, seed=seed)


def test_cluster_net_split_then_merge_restores_outputs():
    torch.manual_seed(0)
    net = ClusterNet(3, 4)
    x = torch.randn(50, 3)
    before = net(x)
    net.split(2)
    after = net(x)
    assert net.k == 5
    # the other clusters keep their responsibilities; cluster 2 is shared equally
    torch.testing.assert_close(after[:, [0, 1, 3]], before[:, [0, 1, 3]])
    torch.testing.assert_close(after[:, 2], before[:, 2] - np.log(2.0))
    torch.testing.assert_close(after[:, 4], after[:, 2])
    net.merge(2, 4)
    torch.testing.assert_close(net(x), before)


def test_subcluster_nets_surgery_keeps_other_clusters():
    torch.manual_seed(0)
    nets = SubclusterNets(3, 3)
    x = torch.randn(40, 3)
    z = torch.randint(0, 3, (40,))
    before = nets(x, z)
    nets.split(1)
    assert nets.k == 4
    keep = z != 1
    torch.testing.assert_close(nets(x, z)[keep], before[keep])
    nets.merge(0, 3)
    assert nets.k == 3
    keep = z == 2
    torch.testing.assert_close(nets(x, z)[keep], before[keep])


def test_subcluster_nets_apply_each_rows_own_net():
    """Row i goes through net z_i alone: log_softmax(relu(x W1_z + b1_z) W2_z + b2_z),
    written out per row; a cluster with no rows gets no gradient."""
    torch.manual_seed(1)
    nets = SubclusterNets(3, 4, hidden=6)
    x = torch.randn(30, 3)
    z = torch.randint(0, 3, (30,))          # cluster 3 holds no rows
    out = nets(x, z)
    for i in range(30):
        c = int(z[i])
        h = torch.relu(x[i] @ nets.w1[c] + nets.b1[c])
        torch.testing.assert_close(out[i], torch.log_softmax(h @ nets.w2[c] + nets.b2[c], -1))
    out[:, 0].sum().backward()
    assert float(nets.w1.grad[3].abs().sum()) == 0.0
    assert all(float(nets.w1.grad[c].abs().sum()) > 0 for c in range(3))
    assert nets(x[:0], z[:0]).shape == (0, 2)


def test_stick_fractions_invert_stick_breaking():
    pi = torch.tensor([0.5, 0.2, 0.25, 0.05], dtype=torch.float64)
    torch.testing.assert_close(stick_breaking(stick_fractions(pi)), pi)


def test_guide_runs_under_pyro_svi_with_trace_enum_elbo():
    """The fitted guide_ and model_ are a Pyro model/guide pair: SVI with
    TraceEnum_ELBO trains the clustering net and lowers the loss."""
    X, _ = _easy(200, 3)
    est = DeepDPM(init_k=3, max_epochs=2, burn_in_epochs=100).fit(X)
    guide = est.guide_
    w0 = guide.cluster_net.out.weight.detach().clone()
    with pyro.get_param_store().scope():
        svi = SVI(est.model_.model, guide, pyro.optim.Adam({"lr": 1e-2}),
                  TraceEnum_ELBO(max_plate_nesting=1))
        Xt = torch.as_tensor(X)
        losses = [svi.step(Xt) for _ in range(30)]
        assert any(name.startswith(guide.pyro_names()[0]) for name in pyro.get_param_store())
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert not torch.equal(w0, guide.cluster_net.out.weight.detach())


def test_paper_loss_under_svi_lowers_the_kl_and_trains_both_nets():
    X, _ = _easy(300, 3)
    est = DeepDPM(init_k=3, max_epochs=1, burn_in_epochs=100).fit(X)
    guide, Xt = est.guide_, torch.as_tensor(X)
    loss = DeepDPMLoss("kl")
    sub0 = guide.sub_nets.w1.detach().clone()
    with pyro.get_param_store().scope():
        svi = SVI(est.model_.model, guide, pyro.optim.Adam({"lr": 1e-2}), loss)
        first = svi.step(Xt)
        cluster0 = loss.last["cluster"]
        for _ in range(40):
            svi.step(Xt)
    assert svi.evaluate_loss(Xt) < first
    assert loss.last["cluster"] < cluster0
    assert not torch.equal(sub0, guide.sub_nets.w1.detach())


def _gamma(shape, rate):
    return torch.distributions.Gamma(torch.tensor(float(shape), dtype=torch.float64),
                                     torch.tensor(float(rate), dtype=torch.float64))


def _hierarchical(X):
    return DPMixture(GaussianNIW.weak(X), DirichletProcess(1.0), hyperpriors=Hyperpriors(
        kappa=_gamma(1, 1), psi_scale=_gamma(1, 1), alpha=_gamma(1, 1)))


def _model(kind, X):
    """None (the default), the hierarchical model, or Student-t components."""
    return {"default": lambda: None, "hierarchical": lambda: _hierarchical(X),
            "student-t": lambda: DPMixture(StudentNIW.weak(X), DirichletProcess(1.0))}[kind]()


@pytest.mark.parametrize("kind", ["default", "hierarchical", "student-t"])
def test_e_step_targets_are_the_models_conditional_of_z(kind):
    """log r^E from the guide's point parameters equals Pyro's enumeration of z in the
    model replayed at the guide's values of the global sites -- with hyperpriors,
    their point estimates are the guide's Delta sites, so the replayed model's
    family is the guide's (a model left to draw them from their priors fails)."""
    from pyro import poutine
    from pyro.infer import config_enumerate

    X, _ = _easy(200, 3)
    hierarchical = kind == "hierarchical"
    est = DeepDPM(_model(kind, X), init_k=3, max_epochs=1, burn_in_epochs=1).fit(X)
    if hierarchical:
        assert set(est.hyperparameters_) == {"kappa", "psi_scale", "alpha"}
        assert est.hyperparameters_["psi_scale"] != 1.0
    guide, Xt = est.guide_, torch.as_tensor(X)
    g = poutine.trace(guide).get_trace(Xt)
    g.remove_node("z")
    model = poutine.enum(config_enumerate(est.model_.model), first_available_dim=-2)
    tr = poutine.trace(poutine.replay(model, trace=g)).get_trace(Xt)
    tr.compute_log_prob()
    joint = tr.nodes["z"]["log_prob"] + tr.nodes["obs"]["log_prob"]          # (K, N)
    torch.testing.assert_close(torch.log_softmax(joint, 0).T, guide.log_targets(Xt))
    for name, value in (est.hyperparameters_.items() if hierarchical else ()):
        # the model's hyperparameter sites take the guide's point estimates
        assert float(tr.nodes[name]["value"]) == pytest.approx(value, rel=1e-12), name


def test_guide_surgery_split_then_merge_restores_outputs_and_parameters():
    X, _ = _easy(400, 3)
    est = DeepDPM(init_k=3, max_epochs=2, burn_in_epochs=1).fit(X)
    guide, Xt = est.guide_, torch.as_tensor(X)
    before_r, before_pi = guide.log_r(Xt), guide.mixture.log_pi.clone()
    mu_before = guide.mixture.params[0].clone()
    stats, _, z, _ = guide.soft_stats(Xt)
    s = guide.split(1)
    assert (s.kind, s.k_before, s.k_after, s.born) == ("split", 3, 4, (1, 3))
    assert guide.k == guide.cluster_net.k == guide.sub_nets.k == guide.mixture.k == 4
    after = guide.log_r(Xt)
    f32 = dict(rtol=0, atol=1e-5)                 # the nets run in float32
    torch.testing.assert_close(after[:, [0, 2]], before_r[:, [0, 2]], **f32)
    torch.testing.assert_close(torch.logaddexp(after[:, 1], after[:, 3]), before_r[:, 1], **f32)
    torch.testing.assert_close(torch.logsumexp(guide.mixture.log_pi, 0),
                               torch.zeros((), dtype=torch.float64))
    # the halves are the sub-components of cluster 1, the rest untouched
    torch.testing.assert_close(guide.mixture.params[0][[0, 2]], mu_before[[0, 2]])
    m = guide.merge(1, 3, guide.soft_stats(Xt)[0][[1, 3]])
    assert (m.kind, m.k_after, m.index) == ("merge", 3, (0, 1, 2, 1))
    torch.testing.assert_close(guide.log_r(Xt), before_r, **f32)
    torch.testing.assert_close(guide.mixture.log_pi, before_pi)
    r = guide.remove(torch.tensor([0, 2]))
    assert r.index == (0, -1, 1) and guide.k == 2
    torch.testing.assert_close(torch.logsumexp(guide.mixture.log_pi, 0),
                               torch.zeros((), dtype=torch.float64))


def _guide_before_moves(X, init_k: int, **step_options):
    """A fitted guide at its k-means start (no moves yet) after one M-step, with the
    hard labels and statistics of that M-step and a move step on its model."""
    from bnpdeep.inference.guide_moves import GuideSplitMerge

    est = DeepDPM(init_k=init_k, max_epochs=3, burn_in_epochs=100).fit(X)
    guide, Xt = est.guide_, torch.as_tensor(X)
    stats, sub, z, zs = guide.soft_stats(Xt)
    guide.m_step(stats, sub, 1.0)
    step = GuideSplitMerge(est.model_.weights, est.model_.family, **step_options)
    return guide, Xt, stats, z, zs, step


def test_move_step_on_a_guide_changes_k_and_only_the_touched_rows():
    """A split step on a guide whose one cluster holds two blobs: accepted, K 1 -> 2,
    and the sub-nets of untouched clusters keep their weights."""
    X, y = _easy(600, 2)
    X = np.vstack([X, X[:0]])
    guide, Xt, _, z, zs, step = _guide_before_moves(X, 1, carve=False)
    done = step.split(guide, Xt, z, zs, torch.Generator().manual_seed(0))
    assert [d.kind for d in done] == ["split"] and guide.k == 2
    assert evaluate(y, z.numpy())["ari"] > 0.99
    w1, out_w = guide.sub_nets.w1.detach().clone(), guide.cluster_net.out.weight.detach()
    guide.split(0)                                             # touches cluster 0 only
    torch.testing.assert_close(guide.sub_nets.w1[1], w1[1])
    torch.testing.assert_close(guide.cluster_net.out.weight[1], out_w[1])


def test_merge_step_on_a_guide_joins_the_halves_of_one_gaussian():
    """k-means halves of one Gaussian blob: the DP posterior prefers the union
    (log H_m > 0), the step merges them, K 2 -> 1 and every label becomes 0."""
    X = np.random.default_rng(0).normal(size=(500, 2))
    guide, Xt, stats, z, zs, step = _guide_before_moves(X, 2)
    assert guide.k == 2 and set(z.tolist()) == {0, 1}
    done = step.merge(guide, Xt, z, zs, stats, torch.Generator().manual_seed(0))
    assert [(d.kind, d.k_after) for d in done] == [("merge", 1)]
    assert guide.k == guide.cluster_net.k == guide.mixture.k == 1
    assert int(z.max()) == 0


def test_predictive_with_the_fitted_guide_gives_amortized_z_for_new_data():
    X, _ = _easy()
    est = DeepDPM(random_state=1).fit(X)
    X_new, _ = _easy(300)           # the same mixture's means, other draws
    store_before = set(pyro.get_param_store().keys())
    with pyro.get_param_store().scope():
        draws = Predictive(est.model_.model, guide=est.guide_, num_samples=200,
                           return_sites=["z"])(torch.as_tensor(X_new))["z"]
    assert set(pyro.get_param_store().keys()) == store_before
    assert draws.shape == (200, 300)
    mode = torch.mode(draws, 0).values.numpy()
    proba = est.predict_proba(X_new)
    confident = proba.max(1) > 0.9
    assert confident.mean() > 0.5
    np.testing.assert_array_equal(mode[confident], est.predict(X_new)[confident])
    # the draws' frequencies are the net's r
    freq = (draws[:, :, None] == torch.arange(est.guide_.k)).double().mean(0).numpy()
    assert np.abs(freq - proba).max() < 0.15


def _heavy_tailed(seed, k=4, n=400):
    """k clusters of t(3) rows (Gaussian rows over Gamma(1.5, 1.5) precision scales)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=6.0, size=(k, 2))
    w = rng.gamma(1.5, 1 / 1.5, size=(k, n, 1))
    X = (means[:, None, :] + rng.normal(size=(k, n, 2)) / np.sqrt(w)).reshape(-1, 2)
    return X, np.repeat(np.arange(k), n)


@pytest.mark.parametrize("seed", [2, 3])
def test_student_t_components_keep_heavy_tails_in_their_cluster(seed):
    """Four t(3) clusters: with Gaussian components DeepDPM spends extra clusters on
    the tails; with StudentNIW (the E-step's scales in the M-step, the scales
    integrated out of H_s) it finds the four, and the Pyro guide's amortized z draws
    follow the net."""
    X, y = _heavy_tailed(seed)
    est = {fam.__name__: DeepDPM(model=DPMixture(fam.weak(X), DirichletProcess(1.0)),
                                 random_state=0).fit(X)
           for fam in (GaussianNIW, StudentNIW)}
    assert est["GaussianNIW"].n_clusters_ > 4
    t = est["StudentNIW"]
    assert t.n_clusters_ == 4 and evaluate(y, t.labels_)["nmi"] > 0.9
    assert type(t.model_.family).__name__ == "StudentNIW"
    with pyro.get_param_store().scope():
        draws = Predictive(t.model_.model, guide=t.guide_, num_samples=100,
                           return_sites=["z"])(torch.as_tensor(X[::8]))["z"]
    np.testing.assert_array_equal(torch.mode(draws, 0).values.numpy()[t.predict_proba(
        X[::8]).max(1) > 0.9], t.predict(X[::8])[t.predict_proba(X[::8]).max(1) > 0.9])


def test_fit_leaves_pyros_param_store_and_torchs_generator_alone():
    X, _ = _easy(200, 2)
    with pyro.get_param_store().scope():
        pyro.param("users_own", torch.ones(3))
        state = torch.get_rng_state()
        DeepDPM(max_epochs=3).fit(X)
        DeepDPM(max_epochs=3, loss="elbo").fit(X)
        assert list(pyro.get_param_store().keys()) == ["users_own"]
        assert torch.equal(torch.get_rng_state(), state)


def test_k_grows_from_one_to_the_truth():
    X, y = _easy()
    est = DeepDPM(random_state=0).fit(X)
    assert est.n_clusters_ == 4
    assert evaluate(y, est.labels_)["nmi"] > 0.95
    assert sum(h["splits"] for h in est.history_) >= 3


def test_k_shrinks_from_three_times_the_truth():
    X, y = _easy()
    est = DeepDPM(init_k=12, random_state=0).fit(X)
    assert est.n_clusters_ == 4
    assert evaluate(y, est.labels_)["nmi"] > 0.95
    assert sum(h["merges"] for h in est.history_) >= 1


def test_elbo_loss_trains_with_pyros_elbo():
    X, y = _easy(600, 3)
    est = DeepDPM(loss="elbo", random_state=0).fit(X)
    assert np.all(np.isfinite([h["loss"] for h in est.history_]))
    assert est.n_clusters_ == 3
    assert evaluate(y, est.labels_)["nmi"] > 0.9


def test_predict_on_training_data_matches_labels_and_new_data():
    X, y = _easy()
    est = DeepDPM(random_state=1).fit(X)
    np.testing.assert_array_equal(est.predict(X), est.labels_)
    proba = est.predict_proba(X[:10])
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    X_new, y_new = _easy(seed=0)   # same mixture, fresh draw of the same seed's means
    assert evaluate(y_new, est.predict(X_new))["nmi"] > 0.9


@pytest.mark.parametrize("kind", ["default", "hierarchical", "student-t"])
def test_checkpoint_resume_ends_where_an_uninterrupted_fit_does(tmp_path, kill_at, kind):
    X, _ = _easy(600, 3)
    kw = dict(max_epochs=16, checkpoint_every=5, random_state=3, model=_model(kind, X))
    full = DeepDPM(**kw).fit(X, checkpoint_dir=tmp_path / "full")

    undo = kill_at(DeepDPM, "_train_epoch", 12)
    with pytest.raises(KeyboardInterrupt):
        DeepDPM(**kw).fit(X, checkpoint_dir=tmp_path / "cut")
    undo()
    resumed = DeepDPM(**kw).fit(X, checkpoint_dir=tmp_path / "cut", resume=True)
    assert [h["K"] for h in resumed.history_] == [h["K"] for h in full.history_]
    np.testing.assert_array_equal(resumed.labels_, full.labels_)
    for a, b in zip(resumed.guide_.parameters(), full.guide_.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert resumed.hyperparameters_ == full.hyperparameters_


def test_hyperparameter_point_estimates_set_the_scale_in_high_dimensions():
    """128-d clusters of rank 8 (standardised): under the default fixed prior DeepDPM
    joins clusters; with Gamma(1, 1) priors on kappa, psi_scale and alpha the M-step's
    point estimates let it find the ten.  Each estimate maximises its own objective at
    the last M-step's soft statistics (no point of a fine grid along its axis scores
    higher)."""
    X, y = make_mixture(3000, 128, 10, rank=8, separation=6.0, seed=0)
    X = (X - X.mean(0)) / X.std(0)
    fixed = DeepDPM(random_state=0).fit(X)
    model = _hierarchical(X)
    est = DeepDPM(model, random_state=0).fit(X)
    assert fixed.n_clusters_ < 10
    assert est.n_clusters_ == 10 and evaluate(y, est.labels_)["nmi"] > 0.99
    h = {n: est.hyperparameters_[n] for n in ("kappa", "psi_scale")}

    def objective(v):
        fam = model.family.with_hyperparameters(**v)
        return float(fam.log_marginal(est._soft).sum()) + model.hyperpriors.log_prob(v)

    best = objective(h)
    for name in h:
        for f in np.exp(np.linspace(-1.0, 1.0, 41)):
            assert objective({**h, name: h[name] * f}) <= best + 1e-6 * abs(best), name


def test_inference_data_has_sample_draws_and_valid_loo():
    X, _ = _easy(400, 3)
    est = DeepDPM(max_epochs=20, n_samples=20).fit(X)
    idata = est.to_inference_data()
    assert idata.posterior["K"].shape == (1, 20)
    assert idata.log_likelihood["x"].shape == (1, 20, 400)
    assert idata.posterior.attrs["draw_kind"] == "sample"
    assert np.isfinite(az.loo(idata).elpd_loo)


def test_no_nan_on_hard_inputs():
    """Duplicated rows, a near-constant column and a tiny far cluster."""
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(300, 3)), rng.normal(size=(3, 3)) + 50.0])
    X[:100] = X[0]
    X[:, 2] = 1.0 + 1e-9 * rng.normal(size=X.shape[0])
    est = DeepDPM(max_epochs=15, model=DPMixture(GaussianNIW.weak(X))).fit(X)
    assert np.all(np.isfinite(est.predict_proba(X)))
    assert 1 <= est.n_clusters_ <= 10


def test_bad_options_are_named():
    X, _ = _easy(100, 2)
    with pytest.raises(ValueError, match="loss"):
        DeepDPM(loss="mse").fit(X)
    with pytest.raises(ValueError, match="batch_size"):
        DeepDPM(batch_size="large").fit(X)
    with pytest.raises(ValueError, match="resume"):
        DeepDPM().fit(X, resume=True)


def test_refined_split_leaves_k1_where_every_2means_halving_is_rejected():
    """A tight core inside a wide halo (same mean): 2-means halves the data along a
    line and the DP posterior rejects that (log H_s < 0); the EM-refined sub-clusters
    find core and halo.  Carving is off so that the refinement alone is tested."""
    g = np.random.default_rng(0)
    X = np.vstack([g.normal(size=(400, 2)) * 0.2, g.normal(size=(400, 2)) * 1.5])
    y = np.repeat([0, 1], 400)
    kw = dict(max_epochs=40, carve=False, random_state=0)
    plain = DeepDPM(split_refine=0, **kw).fit(X)
    refined = DeepDPM(**kw).fit(X)
    assert plain.n_clusters_ == 1
    assert refined.n_clusters_ == 2
    assert evaluate(y, refined.labels_)["ari"] > 0.75     # the two overlap at the core


def test_mixture_is_held_until_the_net_learns_a_split():
    """Right after a split the new cluster is a copy of its parent's output row, so
    the net's argmax gives it nothing while the E-step targets give it its half: the
    net is not settled, and an M-step then would average the halves back together.
    Training the net against the held mixture settles it."""
    X, y = _easy(600, 2)
    est = DeepDPM(max_epochs=3, burn_in_epochs=100, random_state=0).fit(X)   # K = 1
    Xt = est._X
    zs = torch.as_tensor(y)
    est.guide_.split(0, halves=est._family.suff_stats_labels(Xt, zs, 2))
    with pyro.get_param_store().scope():
        est._make_svi()
        assert not est._net_settled(Xt)
        for _ in range(5):
            est._train_epoch(Xt)
        assert est._net_settled(Xt)
    assert evaluate(y, est.current_labels(X))["ari"] > 0.99


def test_convergence_stop_ends_only_after_rounds_without_moves_and_a_stable_likelihood():
    X, y = _easy()
    est = DeepDPM(random_state=0).fit(X)
    h = est.history_
    assert est.converged_ and est.n_epochs_ == len(h) < est.max_epochs
    steps = [e for e in h if e["move"]]
    assert [e["move"] for e in steps[-4:]] in (["split", "merge"] * 2, ["merge", "split"] * 2)
    first = h.index(steps[-4])
    assert all(e["splits"] == e["merges"] == 0 and e["K"] == 4 for e in h[first:])
    assert abs(h[-1]["log_lik"] - h[-2]["log_lik"]) < est.tol
    # an epoch before it did not pass the test
    steps_ll = [abs(a["log_lik"] - b["log_lik"]) for a, b in zip(h[1:], h[:-1], strict=True)]
    assert max(steps_ll) >= est.tol
    assert evaluate(y, est.labels_)["nmi"] > 0.95
    full = DeepDPM(random_state=0, tol=0, max_epochs=len(h) + 8).fit(X)
    assert not full.converged_ and full.n_epochs_ == len(h) + 8
    # a history from before the likelihood was recorded (an older checkpoint) does
    # not pass the test, and does not break it
    assert est._converged()
    est.history_ = [{k: v for k, v in e.items() if k != "log_lik"} for e in h]
    assert not est._converged()


def test_epoch_log_likelihood_is_the_mixture_log_likelihood_of_the_rows():
    """What the convergence stop compares: the mean over an epoch's rows of
    log sum_k pi_k p(x_i | theta_k) at the point parameters the epoch trained
    against, here checked against scipy's densities."""
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    X, _ = _easy(400, 3)
    est = DeepDPM(max_epochs=12, random_state=0).fit(X)
    Xt = est._X
    mix = est.guide_.mixture
    with pyro.get_param_store().scope():
        est._make_svi()
        _, log_lik = est._train_epoch(Xt)
    x = Xt.numpy()
    dens = np.stack([multivariate_normal(mix.params.mean[k].numpy(), mix.params.cov[k].numpy())
                     .logpdf(x) for k in range(est.guide_.k)], 1)
    expected = logsumexp(dens + mix.log_pi.numpy()[None], 1).mean()
    np.testing.assert_allclose(log_lik, expected, rtol=1e-10)


def test_convergence_stop_on_overlapping_clusters_whose_boundary_labels_keep_moving():
    """On s2 (15 overlapping 2-d clusters) the nets' argmax of boundary rows keeps
    changing from epoch to epoch after the mixture has settled; the stop comes from
    the likelihood, long before max_epochs."""
    from bnpdeep.data import load_benchmark

    X, y = load_benchmark("s2", root=Path(__file__).parents[2] / "benchmarks" / "data")
    est = DeepDPM(random_state=0).fit(X)
    h = est.history_
    assert est.converged_ and est.n_epochs_ < 70
    assert h[-1]["changed"] > est.tol             # the labels alone would not stop it
    assert est.n_clusters_ == 15 and evaluate(y, est.labels_)["nmi"] > 0.94


def test_the_fit_does_not_depend_on_the_data_units():
    """The same rows in other units give the same clustering: every part of the fit
    (the prior from the data's moments, the nets' standardised input, the
    sub-clustering loss in units of the mean feature variance) scales with the data.  The
    isotropic loss on raw values shrank with the square of the units, below Adam's
    epsilon at 1e-6, and the sub-nets stopped learning (NMI 0.67 instead of 0.99)."""
    X, y = make_mixture(600, 3, 4, seed=11)
    fits = {u: DeepDPM(max_epochs=30, random_state=0).fit(X * u).labels_
            for u in (1.0, 1e-6, 1e4)}
    for u, labels in fits.items():
        assert evaluate(y, labels)["nmi"] > 0.95, u
        assert evaluate(fits[1.0], labels)["ari"] > 0.99, u


def test_sub_cluster_loss_is_eq_5_in_units_of_the_mean_feature_variance():
    X, _ = make_mixture(300, 3, 3, seed=2)
    X = X * np.array([1.0, 50.0, 0.01])               # columns in different units
    guide = DeepDPM(max_epochs=6, random_state=0).fit(X).guide_
    Xt = torch.as_tensor(X)
    z = guide.log_r(Xt).argmax(1)
    with torch.no_grad():
        got = float(guide.sub_loss(Xt, z))
        r = guide.sub_log_r(Xt, z).exp().double().numpy()
    unit = (X.std(0, ddof=1) ** 2).mean()             # one number: eq. 5 stays isotropic
    centres = guide.mixture.sub_centres.numpy()[z.numpy()]                 # (N, 2, d)
    dist = ((X[:, None, :] - centres) ** 2).sum(-1) / unit
    np.testing.assert_allclose(got, (r * dist).sum(1).mean(), rtol=1e-5)
