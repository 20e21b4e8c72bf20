"""The compiled kernels of the sub-cluster sampler against the torch family, the
torch sub-partitions and scipy: the same statistics, marginal likelihoods and
sub-partitions, and draws from the right distributions."""

import math

import numpy as np
import pytest
import torch
from bnpdeep.inference import kernels as kn
from bnpdeep.inference import moves
from bnpdeep.inference.gibbs import CollapsedGibbs
from bnpdeep.inference.subcluster import SubclusterSampler, log_split_proposal
from bnpdeep.inference.subcluster_compiled import (
    CompiledGaussianSteps,
    dirichlet_log,
    eppf_kernel_args,
    niw_arrays,
    weight_concentration,
)
from bnpdeep.inference.subcluster_settings import KernelSettings
from bnpdeep.inference.subpartition import (
    carve_groups,
    refined_two_means_groups,
    two_means_groups,
)
from bnpdeep.models import (
    DirichletProcess,
    DPMixture,
    FiniteDirichlet,
    GaussianNIW,
    Multinomial,
    PitmanYor,
)
from bnpdeep.models.weights import WeightPrior
from scipy import stats as st


def _family(d=3):
    a = np.random.default_rng(1).normal(size=(d, d))
    return GaussianNIW(np.linspace(-1, 1, d), 0.3, d + 2.5, a @ a.T + d * np.eye(d))


def _steps(family):
    settings = KernelSettings(warmup=0, burnout=5, sub_alpha=1.0,
                              kind_weights=torch.full((4,), 0.25, dtype=torch.float64))
    X = torch.zeros((2, family.dim), dtype=torch.float64)
    steps = CompiledGaussianSteps(settings, X, family, None)
    steps.rng = np.random.default_rng(0)
    return steps


def _grouped_data(seed=0, d=3, groups=4):
    g = np.random.default_rng(seed)
    sizes = g.integers(8, 60, size=groups)
    X = np.concatenate([g.normal(size=(m, d)) * g.uniform(0.5, 2, size=d) + g.normal(size=d) * 3
                        for m in sizes])
    grp = np.concatenate([np.full(m, i) for i, m in enumerate(sizes)])
    perm = g.permutation(X.shape[0])
    return np.ascontiguousarray(X[perm]), grp[perm].astype(np.int64)


def test_statistics_and_log_marginal_match_the_torch_family():
    fam = _family()
    X, grp = _grouped_data()
    n, s1, s2 = kn.group_stats(X, grp, 5)            # group 4 is empty
    ref = fam.suff_stats_labels(torch.from_numpy(X), torch.from_numpy(grp), 5)
    np.testing.assert_allclose(n, ref.n.numpy())
    np.testing.assert_allclose(s1, ref.sx.numpy(), atol=1e-12)
    np.testing.assert_allclose(s2, ref.sxx.numpy(), atol=1e-12)
    lm = _steps(fam).log_marginal((n, s1, s2))
    np.testing.assert_allclose(lm, fam.log_marginal(ref).numpy(), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("d", [3, kn.GEMM_MIN_D])
def test_group_statistics_on_both_paths(d):
    """The loops (small d) and the gathered matrix products (from GEMM_MIN_D) give
    the same n, sum x and sum x x^T, an empty group included."""
    g = np.random.default_rng(d)
    X, lab = g.normal(size=(300, d)), g.choice([0, 1, 3], size=300)
    n, s1, s2 = kn.group_stats(X, lab, 4)
    for k in range(4):
        rows = X[lab == k]
        assert n[k] == len(rows)
        np.testing.assert_allclose(s1[k], rows.sum(0), atol=1e-12)
        np.testing.assert_allclose(s2[k], rows.T @ rows, atol=1e-11)


def test_component_draws_follow_the_niw_posterior():
    """Bartlett draws through (W, b, c): c - |W x - b|^2 / 2 is the Gaussian log density
    of the drawn (mu, Sigma), and over many draws E[Sigma] = Psi_n / (nu_n - d - 1),
    E[mu] = mu_n."""
    fam = _family(d=2)
    X, grp = _grouped_data(d=2, groups=1)
    steps = _steps(fam)
    stats = kn.group_stats(X, grp, 1)
    reps = 20000
    many = tuple(np.repeat(a, reps, axis=0) for a in stats)
    W, b, c, mean = steps.sample_components(many)
    cov = np.linalg.inv(np.einsum("kji,kjl->kil", W, W))
    x = X[0]
    for r in range(3):
        want = st.multivariate_normal(mean[r], cov[r]).logpdf(x)
        assert c[r] - 0.5 * np.sum((W[r] @ x - b[r]) ** 2) == pytest.approx(want, rel=1e-10)
    post = fam.posterior(fam.suff_stats_labels(torch.from_numpy(X), torch.from_numpy(grp), 1))
    e_cov = post.psi[0].numpy() / (float(post.nu[0]) - 2 - 1)
    np.testing.assert_allclose(cov.mean(0), e_cov, rtol=0.05, atol=0.02 * np.abs(e_cov).max())
    # the spread of Sigma too (scipy's inverse-Wishart variances), and W lower triangular
    want_var = st.invwishart(df=float(post.nu[0]), scale=post.psi[0].numpy()).var()
    np.testing.assert_allclose(cov.var(0), want_var, rtol=0.12)
    assert np.all(np.triu(W, 1) == 0.0)
    se = np.sqrt(np.diag(e_cov) / float(post.kappa[0]) / reps)
    assert np.all(np.abs(mean.mean(0) - post.mu[0].numpy()) < 5 * se)


def test_component_draws_at_few_degrees_of_freedom():
    """Two points in 3-d, nu_n = 7.5: each Bartlett diagonal's degrees of freedom
    matter, and E[Sigma] = Psi_n / (nu_n - d - 1) over 60,000 draws."""
    fam = _family(d=3)
    X = np.array([[0.3, -1.0, 2.0], [1.1, 0.4, -0.5]])
    grp = np.zeros(2, dtype=np.int64)
    stats = kn.group_stats(X, grp, 1)
    reps = 60000
    W, _, _, _ = _steps(fam).sample_components(tuple(np.repeat(a, reps, axis=0)
                                                     for a in stats))
    cov = np.linalg.inv(np.einsum("kji,kjl->kil", W, W))
    post = fam.posterior(fam.suff_stats_labels(torch.from_numpy(X), torch.from_numpy(grp), 1))
    e_cov = post.psi[0].numpy() / (float(post.nu[0]) - 3 - 1)
    np.testing.assert_allclose(cov.mean(0), e_cov, rtol=0.04, atol=0.02 * np.abs(e_cov).max())


def test_map_components_are_the_niw_mode():
    fam = _family()
    X, grp = _grouped_data()
    stats = kn.group_stats(X, grp, 4)
    kap, mu, nu, chol = _steps(fam).posterior(stats)
    W, b, c = kn.map_components(kap, mu, nu, chol)
    ref = fam.map_estimate(fam.suff_stats_labels(torch.from_numpy(X), torch.from_numpy(grp), 4))
    for k in range(4):
        want = st.multivariate_normal(ref.mean[k].numpy(), ref.cov[k].numpy()).logpdf(X[:5])
        got = c[k] - 0.5 * ((X[:5] @ W[k].T - b[k]) ** 2).sum(1)
        np.testing.assert_allclose(got, want, rtol=1e-10)


def test_label_cdf_is_the_softmax_and_draws_invert_it():
    g = np.random.default_rng(2)
    X = g.normal(size=(50, 2))
    W, b, c = g.normal(size=(4, 2, 2)), g.normal(size=(4, 2)), g.normal(size=4)
    W = np.tril(W)                      # the components' factors are lower triangular
    logits = c[None] - 0.5 * ((np.einsum("kij,nj->nki", W, X) - b[None]) ** 2).sum(-1)
    cdf = kn.label_cdf(X, W, b, c)
    prob = np.diff(cdf / cdf[:, -1:], prepend=0.0, axis=1)
    soft = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(prob, soft / soft.sum(1, keepdims=True), atol=1e-15)
    u = np.array([0.0, 0.3, 0.999999])
    for i in range(3):
        z = kn.draw_from_cdf(cdf[[i, i, i]], u)
        np.testing.assert_array_equal(z, np.searchsorted(cdf[i] / cdf[i, -1], u, side="right"))


@pytest.mark.parametrize("threads", [False, True], ids=["serial", "threads"])
@pytest.mark.parametrize("d", [3, kn.GEMM_MIN_D, 40])
def test_label_table_matches_the_log_densities_on_both_paths(d, threads):
    """Below GEMM_MIN_D the table's quadratic forms are loops, from it matrix
    products; each on the calling thread or, from PARALLEL_MIN_WORK, in row chunks
    on numba's threads: all give the softmax of log N(x_i | theta_k) + log pi_k, with
    atoms at or below a row's slice left out."""
    g = np.random.default_rng(d)
    k = 5
    work = k * (d * (d + 1) // 2 + 8)           # slice_cdf's rule
    n = kn.PARALLEL_MIN_WORK // work + 300 if threads else min(700, kn.PARALLEL_MIN_WORK // work)
    assert (n * work >= kn.PARALLEL_MIN_WORK) == threads
    X = g.normal(size=(n, d))
    W = np.tril(g.normal(size=(k, d, d))) + 3 * np.eye(d)
    b, c = g.normal(size=(k, d)), g.normal(size=k)
    log_w, log_u = np.log(g.dirichlet(np.ones(k))), np.log(g.uniform(0, 0.15, size=n))
    quad = ((np.einsum("kij,nj->nki", W, X) - b[None]) ** 2).sum(-1)
    logits = np.where(log_w[None] > log_u[:, None], c[None] - 0.5 * quad, -np.inf)
    cdf = kn.slice_cdf(X, W, b, c, log_w, log_u)
    prob = np.diff(cdf / cdf[:, -1:], prepend=0.0, axis=1)
    soft = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(prob, soft / soft.sum(1, keepdims=True), atol=1e-12)
    np.testing.assert_allclose(kn.quad_table(X, W, b), quad, rtol=1e-12)


@pytest.mark.parametrize("d", [3, kn.GEMM_MIN_D, 40])
def test_own_group_log_densities_on_both_paths(d):
    """Each row against its own group's two sub-components (loops below GEMM_MIN_D,
    gathered matrix products from it; one group left empty): c_h - |W x - b|^2 / 2."""
    g = np.random.default_rng(d + 1)
    n, groups = 300, 4
    X = g.normal(size=(n, d))
    grp = g.choice([0, 1, 3], size=n)
    W = np.tril(g.normal(size=(2 * groups, d, d))) + 3 * np.eye(d)
    b, c = g.normal(size=(2 * groups, d)), g.normal(size=2 * groups)
    quad = ((np.einsum("kij,nj->nki", W, X) - b[None]) ** 2).sum(-1)
    ll = c[None] - 0.5 * quad
    want = np.stack([ll[np.arange(n), 2 * grp], ll[np.arange(n), 2 * grp + 1]], 1)
    np.testing.assert_allclose(kn.pair_loglik(X, grp, W, b, c), want, rtol=1e-12)
    np.testing.assert_allclose(kn.two_loglik(X, W[2:4], b[2:4], c[2:4]), ll[:, 2:4],
                               rtol=1e-12)


def test_slice_labels_use_only_atoms_above_the_slice():
    g = np.random.default_rng(3)
    X = g.normal(size=(1, 2))
    W = np.tile(np.eye(2), (3, 1, 1))
    b, c = np.zeros((3, 2)), np.log(np.array([1.0, 2.0, 4.0]))
    log_w = np.log(np.array([0.5, 0.3, 0.1]))
    # u below the first two weights only: p(0) : p(1) = 1 : 2, atom 2 never
    n = 30000
    cdf = kn.slice_cdf(np.repeat(X, n, 0), W, b, c, log_w, np.full(n, math.log(0.2)))
    z = kn.draw_from_cdf(cdf, g.uniform(size=n))
    assert set(np.unique(z)) == {0, 1}
    # an atom below the slice is never drawn, even for u = 1 or with mass before it
    cdf = kn.slice_cdf(X, W, b, c, np.log(np.array([0.1, 0.5, 0.1])), np.array([math.log(0.2)]))
    assert kn.draw_from_cdf(cdf[[0, 0, 0]], np.array([0.0, 0.5, 1.0])).tolist() == [1, 1, 1]
    assert np.mean(z == 1) == pytest.approx(2 / 3, abs=0.015)


@pytest.mark.parametrize("d", [3, 30])
@pytest.mark.parametrize("use_axes", [False, True])
def test_two_means_matches_the_torch_subpartition(use_axes, d):
    X, grp = _grouped_data(seed=4, d=d)
    axes = np.random.default_rng(5).normal(size=(4, d))
    got = kn.two_means_groups(X, grp, 4, axes, use_axes)
    want = two_means_groups(torch.from_numpy(X), torch.from_numpy(grp), 4,
                            torch.from_numpy(axes) if use_axes else None)
    np.testing.assert_array_equal(got, want.numpy())


@pytest.mark.parametrize("d", [3, 30])
def test_carving_matches_the_torch_subpartition(d):
    fam = _family(d)
    X, grp = _grouped_data(seed=6, d=d, groups=3)
    X = np.concatenate([X, np.random.default_rng(7).normal(size=(300 + 10 * d, d)) * 0.2])
    grp = np.concatenate([grp, np.full(300 + 10 * d, 3)])  # a group large enough to carve
    anchors = np.array([np.flatnonzero(grp == k)[0] for k in range(4)])
    got = kn.carve_groups(X, grp, 4, anchors, *niw_arrays(fam), 3)
    want = carve_groups(fam, torch.from_numpy(X), torch.from_numpy(grp), 4,
                        torch.from_numpy(anchors))
    np.testing.assert_array_equal(got, want.numpy())


@pytest.mark.parametrize("d", [3, 30])
@pytest.mark.parametrize("max_rows", [1000, 20])
def test_whitened_two_means_matches_the_torch_subpartition(max_rows, d):
    """Group by group (the torch function also relabels small groups when any group of
    the call exceeds max_rows), with the rows of larger groups subsampled by key."""
    fam = _family(d)
    X, grp = _grouped_data(seed=8, d=d)
    keys = np.random.default_rng(9).uniform(size=X.shape[0])
    axes = np.random.default_rng(10).normal(size=(4, d))
    got = kn.whitened_two_means_groups(X, grp, 4, axes, keys, max_rows, *niw_arrays(fam))
    for k in range(4):
        rows = grp == k
        want = refined_two_means_groups(
            fam, torch.from_numpy(X[rows]), torch.zeros(int(rows.sum()), dtype=torch.long), 1,
            torch.from_numpy(axes[k:k + 1]), n_iter=0, keys=torch.from_numpy(keys[rows]),
            max_rows=max_rows)
        np.testing.assert_array_equal(got[rows], want.numpy())


def test_split_proposal_matches_the_torch_one():
    g = np.random.default_rng(11)
    grp = np.repeat(np.arange(3), 7)
    log_q = np.log(g.dirichlet([1.0, 1.0], size=21))
    side = g.uniform(size=21) < 0.5
    li, lj = np.array([0, 7, 14]), np.array([3, 9, 20])
    got = kn.log_split_proposal(log_q, side, grp, 3, li, lj)
    want = log_split_proposal(torch.from_numpy(log_q), torch.from_numpy(side),
                              torch.from_numpy(grp), 3, torch.from_numpy(li),
                              torch.from_numpy(lj))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-12)


@pytest.mark.parametrize("weights", [DirichletProcess(1.3), PitmanYor(0.3, 0.7),
                                     FiniteDirichlet(6, 2.0), FiniteDirichlet(3, 2.0)],
                         ids=["dp", "pitman-yor", "finite", "finite-full"])
def test_compiled_eppf_terms_match_the_weight_priors(weights):
    """What the kernels compute of a Gibbs-type prior from (alpha, sigma, largest K,
    log W normaliser) -- the new-block ratio and the block weights of a split ratio --
    and the Dirichlet parameters the compiled steps take, against the prior's own."""
    args = eppf_kernel_args(weights)
    assert WeightPrior().gibbs_parameters() is None      # other forms: the torch backend
    with pytest.raises(TypeError, match="no compiled form"):
        eppf_kernel_args(WeightPrior())
    n3 = np.array([5.0, 1.0, 3.0])
    conc, rest = weights.weight_concentration(torch.from_numpy(n3))
    np.testing.assert_allclose(weight_concentration(weights, n3),
                               np.append(conc.numpy(), float(rest)))
    # split ratios agree, whatever the additive convention of W(n)
    for k in (1, 2, 3):
        ours = (kn.log_new_block_ratio(*args[:3], k)
                + kn._log_block_weight(2.0, args[1], args[3])
                + kn._log_block_weight(3.0, args[1], args[3])
                - kn._log_block_weight(5.0, args[1], args[3]))
        ref = float(weights.log_new_block_ratio(torch.tensor(float(k)))
                    + weights.log_block_weight(torch.tensor([2.0, 3.0])).sum()
                    - weights.log_block_weight(torch.tensor(5.0)))
        assert ours == pytest.approx(ref, rel=1e-12) or ours == ref == -math.inf


def test_dirichlet_log_draws_are_normalised_and_zero_concentration_is_minus_inf():
    out = dirichlet_log(np.random.default_rng(0), np.array([[2.0, 0.0, 3.0]] * 4000))
    assert np.all(out[:, 1] == -np.inf)
    np.testing.assert_allclose(np.exp(out).sum(1), 1.0)
    assert np.exp(out[:, 0]).mean() == pytest.approx(0.4, abs=0.01)


@pytest.mark.parametrize("sampler", [SubclusterSampler, CollapsedGibbs])
def test_backend_choice_and_refusals(sampler):
    """The sub-cluster sampler and collapsed Gibbs choose and refuse a backend alike."""
    X = np.random.default_rng(0).normal(size=(40, 2))
    assert sampler(max_iter=4, random_state=0).fit(X).backend_ == "compiled"
    assert sampler(max_iter=4, backend="torch").fit(X).backend_ == "torch"
    with pytest.raises(ValueError, match="backend"):
        sampler(max_iter=4, backend="numpy").fit(X)
    counts = np.random.default_rng(0).integers(0, 5, size=(30, 3)).astype(float)
    model = DPMixture(Multinomial(np.ones(3)), DirichletProcess(1.0))
    assert sampler(model=model, max_iter=4).fit(counts).backend_ == "torch"
    with pytest.raises(ValueError, match="compiled.*Multinomial"):
        sampler(model=model, max_iter=4, backend="compiled").fit(counts)


def test_sampler_backend_with_workers_and_refinement():
    X = np.random.default_rng(0).normal(size=(40, 2))
    # chains in worker processes report it too
    assert SubclusterSampler(max_iter=4, n_chains=2, n_jobs=2, backend="torch").fit(
        X).backend_ == "torch"
    with pytest.raises(ValueError, match="refine_iter=3"):
        SubclusterSampler(max_iter=4, backend="compiled",
                          options={"refine_iter": 3}).fit(X)


def test_first_compiled_fit_loads_the_kernels_once_and_says_when_it_compiles(monkeypatch, capsys):
    import time

    import bnpdeep.inference.subcluster as sampler_module
    import bnpdeep.inference.subcluster_compiled as sc

    loads = []
    monkeypatch.setattr(sc, "_kernels_ready", False)
    monkeypatch.setattr(sc, "COMPILE_NOTICE_AFTER", 0.05)
    monkeypatch.setattr(sampler_module, "compile_kernels",
                        lambda: (loads.append(1), time.sleep(0.5)))
    X = np.random.default_rng(0).normal(size=(40, 2))
    SubclusterSampler(max_iter=2).fit(X)
    SubclusterSampler(max_iter=2).fit(X)
    SubclusterSampler(max_iter=2, backend="torch").fit(X)
    assert loads == [1]
    assert capsys.readouterr().err.count("compiling the sub-cluster sampler's numba kernels") == 1
    # a load from the cache (shorter than the notice delay) prints nothing
    monkeypatch.setattr(sc, "_kernels_ready", False)
    monkeypatch.setattr(sc, "COMPILE_NOTICE_AFTER", 5.0)
    monkeypatch.setattr(sampler_module, "compile_kernels", lambda: loads.append(2))
    SubclusterSampler(max_iter=2).fit(X)
    assert loads == [1, 2] and "compiling" not in capsys.readouterr().err
    # a failed load is tried again by the next fit
    monkeypatch.setattr(sc, "_kernels_ready", False)
    monkeypatch.setattr(sampler_module, "compile_kernels", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        SubclusterSampler(max_iter=2).fit(X)
    assert sc._kernels_ready is False


def test_local_partners_follow_the_kernel_and_never_pick_the_anchor():
    X = np.array([[0.0, 0.0], [0.5, 0.0], [1.0, 0.0], [0.0, 2.0], [30.0, 0.0]])
    u = np.random.default_rng(12).uniform(size=40000)
    j = kn.local_partners(X, np.zeros(u.size, dtype=np.int64), 1.0, u)
    w = np.exp(-0.5 * (X[1:] ** 2).sum(1))
    assert not np.any(j == 0)
    np.testing.assert_allclose(np.bincount(j, minlength=5)[1:] / u.size, w / w.sum(), atol=0.01)
    # a u that rounds to the whole mass still gives a partner with weight, not the anchor
    assert kn.local_partners(X, np.array([0]), 1.0, np.array([1.0]))[0] in (1, 2, 3)


@pytest.mark.parametrize("d", [17, kn.GEMM_MIN_D + 9])
def test_auto_backend_is_compiled_in_high_dimensions(d):
    X = np.random.default_rng(0).normal(size=(60, d))
    assert SubclusterSampler(max_iter=2).fit(X).backend_ == "compiled"
    assert SubclusterSampler(max_iter=2, backend="torch").fit(X).backend_ == "torch"


def test_generator_kernels_draw_the_numpy_streams():
    """draw_niw and draw_dirichlet_log take the chain's Generator and give what the
    numpy calls they replace give, leaving the generator in the same state."""
    fam = _family()
    X, grp = _grouped_data()
    n, s1, s2 = kn.group_stats(X, grp, 4)
    mu0, kappa0, nu0, psi0 = niw_arrays(fam)
    ours, ref = np.random.default_rng(7), np.random.default_rng(7)
    got = kn.draw_niw(ours, n, s1, s2, mu0, kappa0, nu0, psi0)
    shape = np.maximum(0.5 * (nu0 + n[:, None] - np.arange(3)[None]), 1e-300)
    want = kn.sample_niw(n, s1, s2, mu0, kappa0, nu0, psi0, ref.standard_normal((4, 3, 3)),
                         ref.standard_gamma(shape), ref.standard_normal((4, 3)))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    conc = np.array([[0.5, 3.0], [20.0, 0.1], [1.0, 1.0]])
    np.testing.assert_allclose(kn.draw_dirichlet_log(ours, conc), dirichlet_log(ref, conc),
                               rtol=1e-14)
    assert ours.random() == ref.random()


@pytest.mark.parametrize("weights", [DirichletProcess(1.3), PitmanYor(0.3, 0.7)],
                         ids=["dp", "pitman-yor"])
def test_split_terms_match_the_moves_module(weights):
    fam = _family()
    X, grp = _grouped_data(groups=4)
    Xt, gt = torch.from_numpy(X), torch.from_numpy(grp)
    four = fam.suff_stats_labels(Xt, gt, 4)
    union = fam.suff_stats_labels(Xt, gt % 2, 2)         # {0, 2} and {1, 3}
    want = moves.log_split_terms(weights, fam, union, four[torch.tensor([0, 1])],
                                 four[torch.tensor([2, 3])])
    steps = _steps(fam)
    n, s1, s2 = kn.group_stats(X, grp, 4)
    got = steps.split_terms(eppf_kernel_args(weights), (n[:2], s1[:2], s2[:2]),
                            (n[2:], s1[2:], s2[2:]))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-12)


@pytest.mark.parametrize("weights", [DirichletProcess(1.0), PitmanYor(0.4, 0.5)],
                         ids=["dp", "pitman-yor"])
def test_split_merge_batch_is_the_composed_hastings_ratio(weights):
    """The fused batch accepts exactly where the pieces it fuses, with the moves
    module's split terms, proposal ratio and sequential acceptance, accept; and
    moves the rows the accepted moves name."""
    fam = _family(d=2)
    X, grp = _grouped_data(seed=3, d=2, groups=4)
    steps = _steps(fam)
    eppf = eppf_kernel_args(weights)
    z = grp.copy()
    z[np.flatnonzero(grp == 1)[::2]] = 4          # clusters 1 and 4 halve one group
    first = {c: np.flatnonzero(z == c) for c in range(5)}
    pairs = np.array([[first[0][0], first[0][1]], [first[1][0], first[4][0]],
                      [first[3][0], first[2][0]]], dtype=np.int64)     # a split, two merges
    keys = np.random.default_rng(0).random(X.shape[0])
    seen = set()
    for seed in range(40):
        ours, ref = np.random.default_rng(seed), np.random.default_rng(seed)
        z_new, accepted, is_split = kn.split_merge_batch(
            ours, X, z, 5, pairs, steps.kind_cdf, 1.0, keys, 200, *steps.prior,
            steps.prior_const, *eppf)
        rows, _, g, li, lj, log_q, new_b = kn.pair_proposals(
            ref, X, z, 5, pairs, steps.kind_cdf, 1.0, keys, 200, *steps.prior)
        split = np.array([True, False, False])
        side_b = np.where(split[g], new_b, z[rows] == z[pairs[g, 1]])
        Xt = torch.from_numpy(X[rows])
        sides = fam.suff_stats_labels(Xt, torch.from_numpy(2 * g + side_b), 6)
        whole = fam.suff_stats_labels(Xt, torch.from_numpy(g), 3)
        terms = moves.log_split_terms(weights, fam, whole, sides[torch.tensor([0, 2, 4])],
                                      sides[torch.tensor([1, 3, 5])]).numpy()
        log_prop = log_split_proposal(*(torch.from_numpy(a) for a in
                                        (log_q, side_b, g)), 3,
                                      torch.from_numpy(li), torch.from_numpy(lj)).numpy()
        want = moves.accept_in_sequence(weights, 5, np.where(split, terms - log_prop,
                                                             log_prop - terms),
                                        split, uniform=ref.random(3)).numpy()
        np.testing.assert_array_equal(is_split, split)
        np.testing.assert_array_equal(accepted, want)
        moved = rows[side_b & accepted[g]]
        target = np.where(split, [5, -1, -1], z[pairs[:, 0]])
        np.testing.assert_array_equal(np.delete(z_new, moved), np.delete(z, moved))
        assert np.all(z_new[moved] == target[g[side_b & accepted[g]]])
        seen.update((m, bool(a)) for m, a in enumerate(accepted))
    assert seen == {(m, a) for m in range(3) for a in (True, False)}   # both ways, each move


def test_collapsed_predictive_is_the_family_student_t():
    fam = _family(3)
    X, grp = _grouped_data(3, d=3)
    n, s1, s2 = kn.group_stats(X, grp, 4)
    mu, chol = np.empty((4, 3)), np.zeros((4, 3, 3))
    const, scale, half = np.empty(4), np.empty(4), np.empty(4)
    for g in range(4):
        kn._predictive_terms(n, s1, s2, g, *niw_arrays(fam), mu, chol, const, scale, half,
                             np.empty((3, 3)))
    stats = fam.suff_stats_labels(torch.as_tensor(X), torch.as_tensor(grp), 4)
    want = fam.log_predictive(torch.as_tensor(X[:20]), stats).numpy()
    got = np.array([[kn._log_predictive(X[i], g, mu, chol, const, scale, half, np.empty(3))
                     for g in range(4)] for i in range(20)])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def _predictive(fam, n, s1, s2):
    d = s1.shape[1]
    terms = (np.empty((1, d)), np.zeros((1, d, d)), np.empty(1), np.empty(1), np.empty(1))
    kn._predictive_terms(n, s1, s2, 0, *niw_arrays(fam), *terms, np.empty((d, d)))
    return terms


@pytest.mark.parametrize("d", [3, 40])
def test_rank_one_predictive_updates_match_the_recomputed_terms(d):
    """A cluster's predictive terms carried through 60 joins and leaves by rank-one
    Cholesky updates equal those recomputed from its statistics, at every step; a
    leave that would make Psi_n singular falls back to the recomputation."""
    fam = _family(d)
    g = np.random.default_rng(d)
    X = g.normal(size=(80, d)) @ g.normal(size=(d, d)) + 2.0
    inside = list(range(20))
    n, s1, s2 = kn.group_stats(X[inside], np.zeros(20, dtype=np.int64), 1)
    terms = _predictive(fam, n, s1, s2)
    scratch = (np.empty((d, d)), np.empty(d))
    for t in range(60):
        if t % 3 == 2:                                   # a leave
            i, sign = inside.pop(int(g.integers(len(inside)))), -1.0
        else:                                            # a join
            i, sign = 20 + t, 1.0
            inside.append(i)
        kn._add_row(X[i], 0, sign, n, s1, s2)
        kn._predictive_moved(X[i], 0, sign, n, s1, s2, *niw_arrays(fam), *terms, *scratch)
        for got, want in zip(terms, _predictive(fam, n, s1, s2), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    # a leave that shrinks a pivot by more than 1e4 (Psi nearly singular without the
    # point) is refused by the downdate and recomputed
    tiny = GaussianNIW(np.zeros(d), 0.3, d + 2.5, np.eye(d) * 1e-12)
    n, s1, s2 = kn.group_stats(X[:2], np.zeros(2, dtype=np.int64), 1)
    terms = _predictive(tiny, n, s1, s2)
    w = terms[0][0] - X[1]
    assert not kn._chol_rank1(terms[1][0].copy(), w * math.sqrt(2.3 / 1.3), -1.0)
    kn._add_row(X[1], 0, -1.0, n, s1, s2)
    kn._predictive_moved(X[1], 0, -1.0, n, s1, s2, *niw_arrays(tiny), *terms, *scratch)
    for got, want in zip(terms, _predictive(tiny, n, s1, s2), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("weights", [DirichletProcess(2.0), PitmanYor(0.5, 0.4),
                                     FiniteDirichlet(3.0, 5)])
def test_collapsed_update_draws_from_the_predictive_rule(weights):
    """One row's update, drawn 40,000 times from the same state, against the
    probabilities algorithm 3 gives it: the weight prior's predictive rule (torch)
    times the family's posterior predictive."""
    fam = _family(2)
    g = np.random.default_rng(5)
    X = np.concatenate([g.normal(size=(6, 2)), g.normal(size=(5, 2)) + 2.5, [[0.7, 1.4]]])
    z = np.array([0] * 6 + [1] * 5 + [2])
    z[0], i = 2, 0                          # row 0 leaves a two-point cluster
    rest = np.arange(len(z)) != i
    stats = fam.suff_stats_labels(torch.as_tensor(X[rest]), torch.as_tensor(z[rest]), 3)
    log_old, log_new = weights.log_crp_weights(stats.n)
    cand = type(stats).cat([stats, fam.empty_stats(1)])
    logits = fam.log_predictive(torch.as_tensor(X[i:i + 1]), cand)[0] + torch.cat(
        [log_old, log_new.reshape(1)])
    want = torch.softmax(logits, 0).numpy()
    eppf = eppf_kernel_args(weights)
    stats_np = kn.group_stats(X, z, 3)
    rng = np.random.default_rng(0)
    m = 40000
    drawn = np.empty(m, dtype=np.int64)
    for t in range(m):
        out, n, _, _ = kn.collapsed_labels(rng, X, z, 3, np.array([i]), *stats_np,
                                           *niw_arrays(fam), *eppf[:3])
        drawn[t] = out[i]
        assert n.sum() == len(z) and n.min() > 0
    got = np.bincount(drawn, minlength=4) / m
    se = np.sqrt(want * (1 - want) / m)
    assert np.all(np.abs(got - want) < 4.5 * se + 1e-12), (got, want)


def test_collapsed_sweeps_keep_the_statistics_of_their_labels():
    """Many sweeps that open and empty clusters: the statistics returned are those of
    the labels returned, labels stay 0..K-1 with every cluster occupied."""
    fam = _family(3)
    X, grp = _grouped_data(7, d=3, groups=5)
    z = np.where(np.arange(len(grp)) < 6, len(grp) % 3 + np.arange(len(grp)) % 3, grp)
    z = kn.relabel(z)[0]
    eppf = eppf_kernel_args(DirichletProcess(5.0))
    rng = np.random.default_rng(1)
    ks = set()
    for _ in range(30):
        k = int(z.max()) + 1
        idx = rng.permutation(len(z))
        z, n, s1, s2 = kn.collapsed_labels(rng, X, z, k, idx, *kn.group_stats(X, z, k),
                                           *niw_arrays(fam), *eppf[:3])
        k = int(z.max()) + 1
        ks.add(k)
        assert np.array_equal(np.unique(z), np.arange(k)) and n.shape == (k,)
        for got, want in zip((n, s1, s2), kn.group_stats(X, z, k), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    assert len(ks) > 2                       # clusters did open and empty
    # a concentration that opens a cluster for nearly every row: more new clusters in
    # one sweep than the slots it starts with
    eppf = eppf_kernel_args(DirichletProcess(1e12))
    z = np.zeros(len(grp), dtype=np.int64)
    z, n, s1, s2 = kn.collapsed_labels(rng, X, z, 1, np.arange(40), *kn.group_stats(X, z, 1),
                                       *niw_arrays(fam), *eppf[:3])
    assert int(z.max()) + 1 > 30
    for got, want in zip((n, s1, s2), kn.group_stats(X, z, int(z.max()) + 1), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
