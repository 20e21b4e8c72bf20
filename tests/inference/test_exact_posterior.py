"""Samplers against the exact posterior over partitions, by enumeration.

The sub-cluster sampler and collapsed Gibbs run each Gaussian-NIW case on both
backends: "auto" picks the compiled one there
(:mod:`bnpdeep.inference.subcluster_compiled`, :func:`.kernels.collapsed_labels`),
and "torch" the generic one (the only one for the other families).

On five points every set partition (52 of them) can be scored exactly:
p(z | X) is proportional to EPPF(n_1..n_K) prod_k p(X_k).  A sampler whose
partition frequencies stay within total-variation distance 0.05 of it has the
right Hastings ratios; a wrong split/merge ratio or a biased label step shows
up here.  (Sampling noise alone is about 0.02-0.03 at these chain lengths.)
"""

import numpy as np
import pytest
from bnpdeep.inference.exact import (
    empirical_partition_distribution,
    exact_partition_posterior,
    total_variation,
)
from bnpdeep.inference.gibbs import CollapsedGibbs
from bnpdeep.inference.subcluster import SubclusterSampler
from bnpdeep.inference.subcluster_settings import SamplerOptions
from bnpdeep.models import (
    DiagonalGaussian,
    DirichletProcess,
    DPMixture,
    FiniteDirichlet,
    GaussianNIW,
    Multinomial,
    PitmanYor,
)

N_ITER = 6000
N_SLICE = 20000    # the slice step alone mixes more slowly: TV 0.044-0.065 at 6000
# The compiled backend is cheap enough to run every NIW case for N_SLICE iterations,
# which shrinks the Monte Carlo part of the TV: at 6000 iterations its draws gave
# 0.052-0.053 on two cases at one seed each, and 0.015-0.028 on the same cases and
# seeds at 20000-40000 (noise, not bias).


def _n_iter(case, backend="auto", refine_iter=0):
    """Chain length: N_SLICE where the compiled backend runs, N_ITER elsewhere."""
    compiled = case.startswith("niw") and backend == "auto" and refine_iter == 0
    return N_SLICE if compiled else N_ITER


def _points():
    g = np.random.default_rng(0)
    return np.concatenate([g.normal(-1.0, 0.7, size=(2, 2)), g.normal(1.0, 0.7, size=(3, 2))])


def _counts():
    return np.array([[5, 1, 0], [4, 2, 1], [0, 1, 6], [1, 0, 5], [2, 2, 2]], dtype=float)


CASES = {
    "niw-dp": (lambda: DPMixture(GaussianNIW(np.zeros(2), 0.5, 4.0, np.eye(2)),
                                 DirichletProcess(1.0)), _points),
    "diag-dp": (lambda: DPMixture(DiagonalGaussian(np.zeros(2), 0.5, 2.0, 1.0),
                                  DirichletProcess(1.0)), _points),
    "multinomial-dp": (lambda: DPMixture(Multinomial(np.ones(3)), DirichletProcess(1.0)),
                       _counts),
    "niw-pitman-yor": (lambda: DPMixture(GaussianNIW(np.zeros(2), 0.5, 4.0, np.eye(2)),
                                         PitmanYor(0.3, 0.5)), _points),
}


pytestmark = pytest.mark.usefixtures("one_thread")


NIW_CASES = ["niw-dp", "niw-pitman-yor"]
BACKENDS = ["auto", "torch"]


def _runs():
    for case in CASES:
        yield pytest.param(case, CollapsedGibbs, {}, id=f"{case}-gibbs")
        if case in NIW_CASES:       # the default above is the compiled sweep there
            yield pytest.param(case, CollapsedGibbs, {"backend": "torch"},
                               id=f"{case}-gibbs-torch")
        yield pytest.param(case, SubclusterSampler, {}, id=f"{case}-subcluster")
        # without the collapsed Gibbs updates (on by default), which could hide a small
        # error in the split/merge moves' Hastings ratios
        yield pytest.param(case, SubclusterSampler, {"options": {"gibbs_points": 0}},
                           id=f"{case}-subcluster-no-gibbs")
        if case in NIW_CASES:
            yield pytest.param(case, SubclusterSampler, {"backend": "torch"},
                               id=f"{case}-subcluster-torch")


@pytest.mark.parametrize("case, sampler, options", list(_runs()))
def test_partition_frequencies_match_the_exact_posterior(case, sampler, options):
    make_model, make_data = CASES[case]
    model, X = make_model(), make_data()
    exact = exact_partition_posterior(model, X)
    assert max(exact.values()) < 0.5          # a posterior worth testing: spread out
    n_iter = _n_iter(case, options.get("backend", "auto"))
    est = sampler(model=model, max_iter=n_iter, burn_in=200, store_log_likelihood=False,
                  random_state=1, **options).fit(X)
    if case in NIW_CASES:
        assert est.backend_ == ("compiled" if options.get("backend", "auto") == "auto"
                                else "torch")
    tv = total_variation(exact, empirical_partition_distribution(est.label_draws_))
    assert tv < 0.05, f"{sampler.__name__} {options} on {case}: TV {tv:.3f}"


@pytest.mark.parametrize("weights", [DirichletProcess(1.0), PitmanYor(0.3, 0.5),
                                     FiniteDirichlet(3, 2.0)],
                         ids=["dp", "pitman-yor", "finite-dirichlet"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_slice_label_step_alone_matches_the_exact_posterior(weights, backend):
    """The slice step (weights of the occupied atoms and of the rest from their
    conditional, the rest split by the prior's sticks, u_i ~ U(0, pi_{z_i}), labels
    among the atoms heavier than u_i), after the restricted Gibbs step given the same
    weights and parameters and with no split/merge moves, opens and empties clusters
    on its own (the restricted step never does), and its draws
    match the enumerated posterior for the DP, Pitman-Yor (whose rest is
    PY(d, alpha + K d)) and a finite Dirichlet with three components (which caps K).
    Alone it mixes slowly (TV 0.044-0.065 over three seeds at 6000 iterations on the DP
    case, 0.023 at 30000: Monte Carlo error, not bias), hence the longer chain."""
    model = DPMixture(GaussianNIW(np.zeros(2), 0.5, 4.0, np.eye(2)), weights)
    X = _points()
    exact = exact_partition_posterior(model, X)
    est = SubclusterSampler(model=model, max_iter=N_SLICE, burn_in=200,
                            options=SamplerOptions(slice_every=1, moves_per_iter=0,
                                                   gibbs_points=0),
                            store_log_likelihood=False, random_state=4, backend=backend).fit(X)
    assert est.k_draws_.max() <= weights.max_clusters
    tv = total_variation(exact, empirical_partition_distribution(est.label_draws_))
    assert tv < 0.05, f"slice step alone under {weights!r}: TV {tv:.3f}"


class _CountingSampler(SubclusterSampler):
    """Counts the batches of anchored moves that carry more than one move (on either
    backend)."""

    def _count(self, counts):
        self.multi_move_batches_ = getattr(self, "multi_move_batches_", 0) + int(
            counts["split"][0] + counts["merge"][0] > 1)

    def _move_batch(self, state, pairs, weights):
        batch = super()._move_batch(state, pairs, weights)
        self._count(batch.counts)
        return batch

    def _init_state(self, X, model, chain):
        state = super()._init_state(X, model, chain)
        steps = self._compiled
        if steps is not None:
            move_batch = steps.move_batch

            def counting(z, pairs, eppf):
                out = move_batch(z, pairs, eppf)
                self._count(out[1])
                return out

            steps.move_batch = counting
        return state


@pytest.mark.parametrize("case", NIW_CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_collapsed_gibbs_updates_alone_match_the_exact_posterior(case, backend):
    """The exact phase with no split/merge moves and no slice step: the restricted
    Gibbs step (which keeps K) and the collapsed Gibbs updates of ``gibbs_points``
    labels drawn at random -- here 3 of the 5 -- which open and empty clusters."""
    make_model, make_data = CASES[case]
    model, X = make_model(), make_data()
    exact = exact_partition_posterior(model, X)
    est = SubclusterSampler(model=model, max_iter=_n_iter(case, backend), burn_in=200,
                            warmup=0, options=SamplerOptions(moves_per_iter=0, slice_every=0,
                                                             gibbs_points=3),
                            store_log_likelihood=False, random_state=7, backend=backend).fit(X)
    assert est.gibbs_points_ == 3 and len(np.unique(est.k_draws_)) >= 4
    tv = total_variation(exact, empirical_partition_distribution(est.label_draws_))
    assert tv < 0.05, f"collapsed Gibbs updates on {case} ({backend}): TV {tv:.3f}"


@pytest.mark.parametrize("case", NIW_CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_batches_of_moves_on_disjoint_clusters_match_the_exact_posterior(case, backend):
    """Eight anchor pairs per iteration: most batches carry two or more moves on
    disjoint clusters (a split beside a merge), decided in sequence -- under
    Pitman-Yor the block-count factor of each depends on the moves before it.  The
    kept draws still match the enumerated posterior."""
    make_model, make_data = CASES[case]
    model, X = make_model(), make_data()
    exact = exact_partition_posterior(model, X)
    n_iter = _n_iter(case, backend)
    est = _CountingSampler(model=model, max_iter=n_iter, burn_in=200,
                           options=SamplerOptions(moves_per_iter=8, gibbs_points=0),
                           store_log_likelihood=False, random_state=2, backend=backend).fit(X)
    assert est.multi_move_batches_ > n_iter // 3
    tv = total_variation(exact, empirical_partition_distribution(est.label_draws_))
    assert tv < 0.05, f"batched moves on {case}: TV {tv:.3f}"


@pytest.mark.parametrize("case, backend", [(c, b) for c in NIW_CASES for b in BACKENDS]
                         + [("multinomial-dp", "torch")])
def test_split_merge_moves_alone_match_the_exact_posterior(case, backend):
    """Only the anchored split/merge moves change K: no warm-up, no slice step, no
    collapsed Gibbs updates (the K-preserving restricted Gibbs step still runs).
    Splits and merges are accepted -- a kernel whose moves never accept would keep
    K = 1 and fail the TV -- and the draws match the enumerated posterior.  Every
    backend runs N_SLICE iterations: with moves alone the chain mixes more slowly
    (torch, Pitman-Yor: TV 0.054, 0.035, 0.030 at seeds 8-10 at 6000 iterations,
    0.025 at 20000).  With the proposal term left out of the compiled merge ratio
    the NIW cases gave TV 0.16-0.18."""
    make_model, make_data = CASES[case]
    model, X = make_model(), make_data()
    exact = exact_partition_posterior(model, X)
    est = SubclusterSampler(model=model, max_iter=N_SLICE, burn_in=200,
                            warmup=0, options=SamplerOptions(slice_every=0, gibbs_points=0),
                            store_log_likelihood=False, random_state=8,
                            backend=backend).fit(X)
    stats = est.chains_[0].stats
    assert np.mean(stats["split_acceptance"]) > 0.05
    assert np.mean(stats["merge_acceptance"]) > 0.05
    assert len(np.unique(est.k_draws_)) >= 4
    tv = total_variation(exact, empirical_partition_distribution(est.label_draws_))
    assert tv < 0.05, f"split/merge moves alone on {case} ({backend}): TV {tv:.3f}"


@pytest.mark.parametrize("case, weights, refine_iter, backend",
                         [("niw-dp", (0.0, 0.0, 0.0, 1.0), 20, "auto"),
                          ("niw-dp", (0.0, 0.0, 0.0, 1.0), 0, "auto"),
                          ("niw-dp", (0.0, 0.0, 0.0, 1.0), 0, "torch"),
                          ("niw-dp", (0.0, 0.0, 1.0, 0.0), 0, "auto"),
                          ("multinomial-dp", (1.0, 1.0, 1.0, 1.0), 20, "auto")],
                         ids=["niw-dp-refined-only", "niw-dp-whitened-only",
                              "niw-dp-whitened-only-torch", "niw-dp-carved-only",
                              "multinomial-dp-all-kinds"])
def test_refined_subpartitions_match_the_exact_posterior(case, weights, refine_iter, backend):
    """The whitened sub-partition (whitened 2-means, then -- with refine_iter > 0 --
    EM of the full-covariance sub-mixture) is a deterministic function of a
    cluster's rows and an axis drawn independently of the state; as the only
    proposal kind, or mixed with the other three, the kept draws match the
    enumerated posterior -- also when clusters of more than ``refine_rows`` = 3 rows
    are fitted on three of them (picked by fixed per-row keys) and labelled by the
    fitted sub-mixture."""
    make_model, make_data = CASES[case]
    model, X = make_model(), make_data()
    exact = exact_partition_posterior(model, X)
    est = SubclusterSampler(model=model, max_iter=_n_iter(case, backend, refine_iter),
                            burn_in=200, backend=backend,
                            options=SamplerOptions(proposal_weights=weights,
                                                   refine_iter=refine_iter, refine_rows=3,
                                                   gibbs_points=0),
                            store_log_likelihood=False, random_state=3).fit(X)
    tv = total_variation(exact, empirical_partition_distribution(est.label_draws_))
    assert tv < 0.05, f"refined proposals {weights} on {case}: TV {tv:.3f}"


@pytest.mark.parametrize("case, backend", [("niw-dp", "auto"), ("niw-dp", "torch"),
                                           ("niw-pitman-yor", "auto"),
                                           ("niw-pitman-yor", "torch"),
                                           ("multinomial-dp", "auto")])
def test_resplits_match_the_exact_posterior_given_k(case, backend):
    """Re-splits as the only move (no warm-up, no slice step), beside the K-preserving
    restricted Gibbs step, from two clusters: K stays 2, the re-splits are accepted
    often, and the draws match the enumerated posterior conditioned on K = 2.  (With
    the proposal terms left out of the ratio the NIW case gives TV 0.19.)"""
    make_model, make_data = CASES[case]
    model, X = make_model(), make_data()
    exact = exact_partition_posterior(model, X)
    two = {p: v for p, v in exact.items() if len(set(p)) == 2}
    given_two = {p: v / sum(two.values()) for p, v in two.items()}
    est = SubclusterSampler(model=model, max_iter=_n_iter(case, backend), burn_in=200,
                            warmup=0, init_k=2,
                            options=SamplerOptions(slice_every=0, resplit_prob=1.0,
                                                   moves_per_iter=4, gibbs_points=0),
                            store_log_likelihood=False, random_state=5,
                            backend=backend).fit(X)
    assert (est.k_trace_ == 2).all()
    assert np.mean(est.chains_[0].stats["resplit_acceptance"]) > 0.1
    tv = total_variation(given_two, empirical_partition_distribution(est.label_draws_))
    assert tv < 0.05, f"re-splits on {case}: TV {tv:.3f}"


@pytest.mark.parametrize("case", NIW_CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sampler_with_resplits_matches_the_exact_posterior(case, backend):
    """Half the batches re-splits, half splits and merges (the kernel drawn whatever
    the state), with the warm-up and the slice step: the kept draws match the
    enumerated posterior."""
    make_model, make_data = CASES[case]
    model, X = make_model(), make_data()
    exact = exact_partition_posterior(model, X)
    est = SubclusterSampler(model=model, max_iter=_n_iter(case, backend), burn_in=200,
                            options=SamplerOptions(resplit_prob=0.5),
                            store_log_likelihood=False, random_state=6, backend=backend).fit(X)
    tv = total_variation(exact, empirical_partition_distribution(est.label_draws_))
    assert tv < 0.05, f"sampler with re-splits on {case}: TV {tv:.3f}"


def test_proposal_weights_are_checked():
    X = _points()
    for bad in [(1.0, 1.0, 1.0), (0.0, 0.0, 0.0, 0.0), (1.0, -1.0, 1.0, 1.0)]:
        with pytest.raises(ValueError, match="proposal_weights"):
            SubclusterSampler(max_iter=10, options={"proposal_weights": bad}).fit(X)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="resplit_prob"):
            SubclusterSampler(max_iter=10, options={"resplit_prob": bad}).fit(X)


def test_eight_points_where_carving_engages_match_the_exact_posterior():
    """Eight points (4140 partitions): a cluster of eight rows is large enough for the
    carved sub-partition's own path (the m = d + 2 rows nearest the anchor, then
    reassignment under the two MAP components), which five points never reach.  The
    compiled sampler, with carving as its only proposal kind and with the default
    mixture of kinds, gives the exact P(K) and co-clustering probabilities.  (The
    torch backend gives the same, at four times the time: max co-clustering error
    0.010-0.016 over seeds 0-1 at 20000 iterations.)"""
    g = np.random.default_rng(0)
    X = np.concatenate([g.normal(-1.0, 0.5, size=(4, 2)), g.normal(1.2, 0.6, size=(4, 2))])
    model = DPMixture(GaussianNIW(np.zeros(2), 0.5, 4.0, np.eye(2)), DirichletProcess(1.0))
    exact = exact_partition_posterior(model, X)
    co, p_k = np.zeros((8, 8)), np.zeros(9)
    for part, p in exact.items():
        a = np.array(part)
        co += p * (a[:, None] == a[None])
        p_k[len(set(part))] += p
    # carving alone, then every kind with the collapsed Gibbs updates
    for weights, gibbs_points in [((0.0, 0.0, 1.0, 0.0), 0), ((1.0, 1.0, 1.0, 0.5), "auto")]:
        est = SubclusterSampler(model=model, max_iter=N_SLICE, burn_in=200,
                                options=SamplerOptions(proposal_weights=weights,
                                                       gibbs_points=gibbs_points),
                                store_log_likelihood=False, random_state=0).fit(X)
        draws = est.label_draws_
        co_hat = np.mean(draws[:, :, None] == draws[:, None, :], 0)
        p_k_hat = np.bincount(est.k_draws_.ravel(), minlength=9) / est.k_draws_.size
        assert np.abs(co_hat - co).max() < 0.04, weights
        assert 0.5 * np.abs(p_k_hat - p_k).sum() < 0.03, weights
