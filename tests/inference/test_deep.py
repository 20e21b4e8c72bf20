"""Deep features: each loss against its formula written out, the autoencoders' shapes,
checkpoints that resume to the uninterrupted result, and DeepDPM end to end on images
whose raw pixels mislead k-means."""

import warnings

import numpy as np
import pytest
import torch
from bnpdeep.inference.deep.autoencoder import ConvAutoencoder, build_autoencoder
from bnpdeep.inference.deep.dcn import kmeans_term, running_mean_update
from bnpdeep.inference.deep.dec import kl_rows, student_t_assign, target_distribution
from bnpdeep.inference.deep.depict import balanced_targets, gaussian_softmax_head
from sklearn.cluster import KMeans as SkKMeans
from sklearn.metrics import normalized_mutual_info_score as nmi

from bnpdeep import DCN, DEC, DEPICT, IDEC, Autoencoder, DeepDPM, DeepDPMAE

TINY_AE = dict(hidden=(16,), embedding_dim=3, epochs=3, batch_size=32)


def offset_shapes(n_per=100, seed=0):
    """8x8 images of three bars (horizontal, vertical, diagonal), each brightened by a
    random offset on every pixel: the offset (up to 1.5 on 64 pixels) moves an image
    further than a change of bar does, so k-means on the pixels cuts along it."""
    rng = np.random.default_rng(seed)
    bars = np.zeros((3, 8, 8))
    bars[0, 3:5, :] = 1
    bars[1, :, 3:5] = 1
    for i in range(8):
        bars[2, i, max(0, i - 1):i + 1] = 1
    y = np.repeat(np.arange(3), n_per)
    offset = rng.uniform(0, 1.5, size=y.size)
    X = bars[y].reshape(y.size, -1) + offset[:, None] + 0.05 * rng.standard_normal((y.size, 64))
    return X / X.max(), y


@pytest.fixture
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# -- DEC / IDEC -------------------------------------------------------------------------
def test_student_t_assignment_and_target_match_the_formulas_written_out():
    rng = np.random.default_rng(0)
    z, mu = rng.normal(size=(7, 3)), rng.normal(size=(4, 3))
    alpha = 2.5
    q = np.empty((7, 4))
    for i in range(7):
        kern = [(1 + np.sum((z[i] - mu[j]) ** 2) / alpha) ** (-(alpha + 1) / 2) for j in range(4)]
        q[i] = np.array(kern) / sum(kern)
    f = q.sum(0)
    p = np.array([[q[i, j] ** 2 / f[j] / sum(q[i, m] ** 2 / f[m] for m in range(4))
                   for j in range(4)] for i in range(7)])
    q_t = student_t_assign(torch.tensor(z), torch.tensor(mu), alpha)
    np.testing.assert_allclose(q_t.numpy(), q, rtol=1e-10)
    np.testing.assert_allclose(target_distribution(q_t).numpy(), p, rtol=1e-10)


def test_dec_kl_gradients_are_eq_4_and_5():
    """d KL(P||Q)/dz_i and /dmu_j, autograd against DEC's closed forms (P held fixed)."""
    rng = np.random.default_rng(1)
    alpha = 1.0
    z = torch.tensor(rng.normal(size=(6, 2)), requires_grad=True)
    mu = torch.tensor(rng.normal(size=(3, 2)), requires_grad=True)
    p = target_distribution(student_t_assign(z, mu, alpha)).detach()
    kl_rows(p, student_t_assign(z, mu, alpha)).sum().backward()
    with torch.no_grad():
        q = student_t_assign(z, mu, alpha)
        diff = z[:, None, :] - mu[None, :, :]                       # (n, K, d)
        w = ((alpha + 1) / alpha / (1 + diff.pow(2).sum(-1) / alpha) * (p - q))[..., None]
        np.testing.assert_allclose(z.grad.numpy(), (w * diff).sum(1).numpy(), atol=1e-12)
        np.testing.assert_allclose(mu.grad.numpy(), -(w * diff).sum(0).numpy(), atol=1e-12)


def test_kl_rows_is_zero_on_equal_rows_and_treats_zero_targets_as_zero():
    p = torch.tensor([[0.0, 1.0], [0.3, 0.7]], dtype=torch.float64)
    assert torch.allclose(kl_rows(p, p), torch.zeros(2, dtype=torch.float64))
    q = torch.tensor([[0.5, 0.5], [0.5, 0.5]], dtype=torch.float64)
    expected = [np.log(2), 0.3 * np.log(0.6) + 0.7 * np.log(1.4)]
    np.testing.assert_allclose(kl_rows(p, q).numpy(), expected, rtol=1e-12)


# -- DCN --------------------------------------------------------------------------------
def test_dcn_kmeans_term_and_running_mean_are_eq_5_and_8_point_by_point():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(3, 2))
    counts = np.array([4.0, 1.0, 7.0])
    z = rng.normal(size=(9, 2))
    s = np.array([0, 2, 0, 0, 1, 2, 0, 1, 0])
    np.testing.assert_allclose(
        kmeans_term(torch.tensor(z), torch.tensor(centres), torch.tensor(s)).numpy(),
        [0.5 * np.sum((z[i] - centres[s[i]]) ** 2) for i in range(9)], rtol=1e-12)
    m, c = centres.copy(), counts.copy()
    for i in range(9):                                    # eq. 8, one point at a time
        c[s[i]] += 1
        m[s[i]] -= (m[s[i]] - z[i]) / c[s[i]]
    new_m, new_c = running_mean_update(torch.tensor(centres), torch.tensor(counts),
                                       torch.tensor(z), torch.tensor(s))
    np.testing.assert_allclose(new_m.numpy(), m, rtol=1e-12)
    np.testing.assert_allclose(new_c.numpy(), c)


# -- DEPICT -----------------------------------------------------------------------------
def test_depict_balanced_targets_are_eq_7_and_raise_the_small_clusters():
    rng = np.random.default_rng(3)
    p = rng.dirichlet([3.0, 1.0, 0.3], size=20)
    f = p.sum(0)
    q = np.array([[p[i, k] / np.sqrt(f[k]) / sum(p[i, m] / np.sqrt(f[m]) for m in range(3))
                   for k in range(3)] for i in range(20)])
    q_t = balanced_targets(torch.tensor(p)).numpy()
    np.testing.assert_allclose(q_t, q, rtol=1e-12)
    # the rarest cluster gains mass, the commonest loses it
    assert q_t.sum(0)[2] > p.sum(0)[2] and q_t.sum(0)[0] < p.sum(0)[0]
    # balanced columns leave p as it is
    p_bal = np.array([[0.7, 0.3], [0.3, 0.7]])
    np.testing.assert_allclose(balanced_targets(torch.tensor(p_bal)).numpy(), p_bal)


@pytest.mark.parametrize("target", ["sharpened", "balanced"])
def test_depict_epoch_targets_follow_the_chosen_formula(target):
    """Every epoch's targets from the clean pathway's p = softmax(head(z)): p^2 / f_k
    (the authors' code, DEC's target) or p / sqrt(f_k) (the paper's eq. 7), each
    normalised over k; an unknown name is refused."""
    rng = np.random.default_rng(6)
    Z = torch.tensor(rng.normal(size=(15, 3)))
    est = DEPICT(3, target=target)
    est.head_ = torch.nn.Linear(3, 3).double()
    est._epoch_start(Z)
    with torch.no_grad():
        p = torch.softmax(est.head_(Z), 1).numpy()
    f = p.sum(0)
    w = p ** 2 / f if target == "sharpened" else p / np.sqrt(f)
    np.testing.assert_allclose(est._target.numpy(), w / w.sum(1, keepdims=True), rtol=1e-12)
    with pytest.raises(ValueError, match="target must be one of"):
        DEPICT(3, target="square")._init_head(Z, torch.Generator())


def test_depict_head_starts_at_the_nearest_centre():
    rng = np.random.default_rng(4)
    centres = torch.tensor(rng.normal(scale=3, size=(4, 2)))
    labels = torch.arange(4).repeat(10)
    Z = centres[labels] + torch.tensor(rng.normal(scale=0.5, size=(40, 2)))
    head = gaussian_softmax_head(Z.float(), centres.float(), labels)
    nearest = torch.cdist(Z.float(), centres.float()).argmin(1)
    assert torch.equal(head(Z.float()).argmax(1), nearest)


# -- DeepDPM end to end -------------------------------------------------------------------
def test_end_to_end_alternation_finds_the_bars_that_raw_pixels_hide(quiet):
    """k-means on the pixels and on the pretrained embedding follows the offset (NMI
    about 0.35); the alternation's k-means term, with DeepDPM's clusters as its clusters,
    shapes the embedding until the bars are its clusters, K inferred throughout."""
    X, y = offset_shapes()
    raw = nmi(y, SkKMeans(3, n_init=10, random_state=0).fit_predict(X))
    est = DeepDPMAE(autoencoder=Autoencoder(hidden=(64,), embedding_dim=4, epochs=30,
                                            batch_size=64),
                    deepdpm=DeepDPM(max_epochs=30), alternations=2, finetune_epochs=10,
                    batch_size=64, device="cpu").fit(X)
    pre = nmi(y, SkKMeans(3, n_init=10, random_state=0).fit_predict(est.autoencoder_.embedding_))
    post = nmi(y, SkKMeans(3, n_init=10, random_state=0).fit_predict(est.embedding_))
    assert raw < 0.5 and pre < 0.5
    assert post > pre + 0.3
    assert est.n_clusters_ == 3 and nmi(y, est.labels_) > 0.9
    assert [h["round"] for h in est.history_] == [0, 1, 2]
    np.testing.assert_array_equal(est.predict(X), est.deepdpm_.predict(est.transform(X)))


def test_end_to_end_pretrains_the_default_autoencoder_when_given_none(quiet):
    X, _ = offset_shapes()
    est = DeepDPMAE(deepdpm=DeepDPM(max_epochs=3), alternations=0, device="cpu",
                    random_state=3).fit(X[:80])
    expected = {**Autoencoder().get_params(), "random_state": 3, "device": "cpu"}
    assert est.autoencoder_.get_params() == expected
    assert est.autoencoder_.loss_curve_ and len(est.history_) == 1


def test_deepdpm_starts_from_init_labels():
    """Within its burn-in (no moves yet) DeepDPM keeps the partition it was started from;
    from k-means with init_k=1 it would hold one cluster."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 50)
    X = rng.normal(size=(150, 2)) + 8 * np.array([[0, 0], [1, 0], [0, 1]])[y]
    est = DeepDPM(init_labels=2 * y + 5, max_epochs=2, device="cpu").fit(X)
    assert est.n_clusters_ == 3 and nmi(y, est.labels_) > 0.95


def test_deepdpm_init_labels_is_checked():
    X = np.random.default_rng(0).normal(size=(20, 2))
    with pytest.raises(ValueError, match="init_labels must be 20 integer labels"):
        DeepDPM(init_labels=np.zeros(19, int), max_epochs=1).fit(X)


# -- autoencoders -----------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 7, 9)])
def test_conv_autoencoder_reconstructs_to_the_input_size(shape):
    net = ConvAutoencoder(shape, embedding_dim=5)
    x = torch.rand(4, int(np.prod(shape)))
    z, x_hat = net(x)
    assert z.shape == (4, 5) and x_hat.shape == x.shape


def test_autoencoder_arguments_are_checked():
    with pytest.raises(ValueError, match="image_shape"):
        build_autoencoder("conv", 50, 4, (8,), None)
    with pytest.raises(ValueError, match="does not hold"):
        build_autoencoder("conv", 64, 4, (8,), (1, 7, 7))
    with pytest.raises(ValueError, match="architecture"):
        build_autoencoder("rnn", 64, 4, (8,), None)


def test_pretraining_lowers_the_reconstruction_error_and_leaves_torch_seed_alone(quiet):
    X, _ = offset_shapes(n_per=30)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    ae = Autoencoder(hidden=(32,), embedding_dim=4, epochs=20, batch_size=32,
                     device="cpu").fit(X)
    assert torch.equal(torch.rand(1), before)
    assert ae.loss_curve_[-1] < 0.5 * ae.loss_curve_[0]
    assert ae.transform(X).shape == (90, 4)
    err = np.mean((ae.reconstruct(X) - X) ** 2)
    assert err == pytest.approx(ae.loss_curve_[-1], rel=0.5)


# -- checkpoints ------------------------------------------------------------------------
@pytest.mark.parametrize("cls,hook,n", [(DEC, "_epoch_start", 4),      # start of epoch 4
                                        (DCN, "_after_step", 14)])     # mid-way, epoch 4
def test_a_killed_clustering_fit_resumes_to_the_uninterrupted_result(cls, hook, n, tmp_path,
                                                                     kill_at, quiet):
    X, _ = offset_shapes(n_per=20)

    def make():
        return cls(3, autoencoder=Autoencoder(**TINY_AE), max_epochs=6, tol=0, batch_size=16,
                   checkpoint_every=2, device="cpu")

    whole = make().fit(X)
    undo = kill_at(cls, hook, n)
    with pytest.raises(KeyboardInterrupt):
        make().fit(X, checkpoint_dir=tmp_path)
    undo()
    resumed = make().fit(X, checkpoint_dir=tmp_path, resume=True)
    np.testing.assert_allclose(resumed.transform(X), whole.transform(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(resumed.labels_, whole.labels_)
    assert [h["epoch"] for h in resumed.history_] == list(range(1, 7))


def test_killed_pretraining_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, quiet):
    from bnpdeep.inference.deep import autoencoder as ae_mod

    X, _ = offset_shapes(n_per=20)

    def make():
        return Autoencoder(hidden=(16,), embedding_dim=3, epochs=6, batch_size=16,
                           corruption=0.1, checkpoint_every=2, device="cpu")

    whole = make().fit(X)
    calls, original = {"n": 0}, ae_mod.corrupt

    def killed(*args):
        calls["n"] += 1
        if calls["n"] == 4 * 4 + 2:                     # epoch 5 of 6, 4 batches each
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(ae_mod, "corrupt", killed)
    with pytest.raises(KeyboardInterrupt):
        make().fit(X, checkpoint_dir=tmp_path)
    monkeypatch.setattr(ae_mod, "corrupt", original)
    resumed = make().fit(X, checkpoint_dir=tmp_path, resume=True)
    np.testing.assert_allclose(resumed.transform(X), whole.transform(X), rtol=1e-5, atol=1e-6)
    assert resumed.loss_curve_ == pytest.approx(whole.loss_curve_)


def test_a_killed_end_to_end_fit_resumes_at_its_last_round(tmp_path, kill_at, quiet):
    X, _ = offset_shapes(n_per=40)

    def make():
        return DeepDPMAE(autoencoder=Autoencoder(hidden=(32,), embedding_dim=3, epochs=10,
                                                 batch_size=32),
                         deepdpm=DeepDPM(max_epochs=15), alternations=2, finetune_epochs=3,
                         batch_size=32, device="cpu")

    whole = make().fit(X)
    undo = kill_at(DeepDPMAE, "_finetune", 2)                # during round 2
    with pytest.raises(KeyboardInterrupt):
        make().fit(X, checkpoint_dir=tmp_path)
    undo()
    resumed = make().fit(X, checkpoint_dir=tmp_path, resume=True)
    np.testing.assert_array_equal(resumed.labels_, whole.labels_)
    np.testing.assert_allclose(resumed.embedding_, whole.embedding_, rtol=1e-5, atol=1e-6)
    assert resumed.history_ == whole.history_


# -- the estimators ---------------------------------------------------------------------
@pytest.mark.parametrize("cls", [DEC, IDEC, DCN, DEPICT])
def test_given_k_methods_cluster_separated_blobs(cls, quiet):
    rng = np.random.default_rng(5)
    centres = rng.normal(scale=6, size=(3, 10))
    y = np.repeat(np.arange(3), 40)
    X = centres[y] + rng.normal(size=(120, 10))
    ae = Autoencoder(hidden=(32,), embedding_dim=3, epochs=30, batch_size=32)
    est = cls(3, autoencoder=ae, max_epochs=10, batch_size=32, device="cpu").fit(X)
    assert nmi(y, est.labels_) > 0.9
    assert est.n_clusters_ == 3 and est.labels_.max() <= 2
    np.testing.assert_array_equal(est.predict(X), est.labels_)
    if hasattr(est, "predict_proba"):
        proba = est.predict_proba(X)
        np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)


def test_image_estimators_do_not_warn_of_constant_pixels():
    """Border pixels constant over the images are the rule: the zero-variance warning
    (which concerns covariance estimates from X) is not raised by the image estimators,
    nor by predict on a few new rows; a Gaussian estimator's fit still raises it."""
    from bnpdeep import KMeans
    from bnpdeep.data import DataWarning

    X, _ = offset_shapes(n_per=20)
    X[:, :8] = 0.0                                       # a blank top row of pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        ae = Autoencoder(**TINY_AE, device="cpu").fit(X)
        DEC(3, autoencoder=ae, max_epochs=1, device="cpu").fit(X)
        km = KMeans(3).fit(X[:, 8:])
        km.predict(np.c_[np.ones(3), np.arange(3.0)[:, None] + np.zeros((3, 55))])
    with pytest.warns(DataWarning, match="zero-variance columns 0, 1"):
        KMeans(3).fit(X)


def test_autoencoders_warn_of_inputs_far_from_unit_scale():
    """Pixel values of 0-255 or 1e-4: the reconstruction loss and its gradients scale
    with the square of the values, so the defaults' learning rate is wrong for them;
    the pretraining says so and names the divisor.  Images in [0, 1] pass quietly."""
    from bnpdeep.data import DataWarning

    X, _ = offset_shapes(n_per=20)
    assert 0.5 < np.abs(X).max() <= 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        Autoencoder(**TINY_AE, device="cpu").fit(X)
    for scale in (255.0, 1e-4):
        top = np.abs(X).max() * scale
        with pytest.warns(DataWarning, match=f"largest absolute value is {top:.3g}.*divide"):
            Autoencoder(**TINY_AE, device="cpu").fit(X * scale)
