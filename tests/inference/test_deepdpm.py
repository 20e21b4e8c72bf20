"""DeepDPM: net surgery, the Pyro guide, K moving both ways, checkpoints, predict."""

import arviz as az
import numpy as np
import pyro
import pytest
import torch
from bnpdeep.inference import DeepDPM
from bnpdeep.inference.deepdpm import ClusterNet, DeepDPMGuide, SubclusterNets, stick_fractions
from bnpdeep.models import DPMixture, GaussianNIW, stick_breaking
from pyro.infer import SVI, TraceEnum_ELBO

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


def test_stick_fractions_invert_stick_breaking():
    pi = torch.tensor([0.5, 0.2, 0.25, 0.05], dtype=torch.float64)
    torch.testing.assert_close(stick_breaking(stick_fractions(pi)), pi)


def test_guide_runs_under_pyro_svi():
    pyro.clear_param_store()
    X, _ = _easy(200, 3)
    est = DeepDPM(init_k=3, max_epochs=2, burn_in_epochs=100).fit(X)
    m = est._mixture
    model = DPMixture(est._family, truncation=m.k)
    guide = DeepDPMGuide(est._family, est._cluster_net, m.log_pi, m.params, est._scale)
    svi = SVI(model.model, guide, pyro.optim.Adam({"lr": 1e-3}),
              TraceEnum_ELBO(max_plate_nesting=1))
    w0 = est._cluster_net.out.weight.detach().clone()
    losses = [svi.step(torch.as_tensor(X), subsample_size=64) for _ in range(5)]
    assert np.all(np.isfinite(losses))
    assert not torch.equal(w0, est._cluster_net.out.weight.detach())
    assert any(name.startswith("deepdpm_cluster_net") for name in pyro.get_param_store())


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


def test_checkpoint_resume_ends_where_an_uninterrupted_fit_does(tmp_path, kill_at):
    X, _ = _easy(600, 3)
    kw = dict(max_epochs=16, checkpoint_every=5, random_state=3)
    full = DeepDPM(**kw).fit(X, checkpoint_dir=tmp_path / "full")

    undo = kill_at(DeepDPM, "_train_epoch", 12)
    with pytest.raises(KeyboardInterrupt):
        DeepDPM(**kw).fit(X, checkpoint_dir=tmp_path / "cut")
    undo()
    resumed = DeepDPM(**kw).fit(X, checkpoint_dir=tmp_path / "cut", resume=True)
    assert [h["K"] for h in resumed.history_] == [h["K"] for h in full.history_]
    np.testing.assert_array_equal(resumed.labels_, full.labels_)
    for a, b in zip(resumed._cluster_net.parameters(), full._cluster_net.parameters(),
                    strict=True):
        torch.testing.assert_close(a, b)


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
    est._split(Xt, torch.zeros(len(y), dtype=torch.long), zs.clone(), 0,
               sub_stats=est._family.suff_stats_labels(Xt, zs, 2))
    est._make_optimisers()
    assert not est._net_settled(Xt)
    for _ in range(5):
        est._train_epoch(Xt)
    assert est._net_settled(Xt)
    assert evaluate(y, est.current_labels(X))["ari"] > 0.99
