"""DeepDPM data-parallel (bnpdeep.inference.deepdpm.distributed).

Claims: the averaged gradient of R ranks is the gradient of the mean loss over the
union of their minibatches; on one rank the sharded split/merge step makes the
single-process step's decisions; 2 ranks reach the single-process fit's K and NMI
with equal guides on both ranks; a killed rank is named and the run resumes from
its checkpoints to the uninterrupted fit.  The multi-rank tests spawn gloo
processes on this machine.
"""

import copy
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from bnpdeep.inference.deepdpm import ShardedGuideSplitMerge
from bnpdeep.inference.distributed import RankFailure, ShardComm
from bnpdeep.inference.guide_moves import GuideSplitMerge
from sklearn.metrics import normalized_mutual_info_score as nmi

from bnpdeep import DeepDPM, DistributedDeepDPM, fit_on_ranks
from bnpdeep.data import make_mixture

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g), torch.randn(n, generator=g)


def _grad_rank(rank: int, world: int, init: str, out: str):
    """Rank r's gradient of its batch's mean squared error (batches of 3 and 5 rows),
    averaged over the ranks by DistributedDeepDPM's reduction."""
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        X, y = _batch(8, 0)
        rows = slice(0, 3) if rank == 0 else slice(3, 8)
        lin = torch.nn.Linear(3, 1)
        torch.nn.init.constant_(lin.weight, 0.3)
        torch.nn.init.constant_(lin.bias, -0.2)
        extra = torch.nn.Parameter(torch.ones(2))       # a gradient on rank 1 only
        loss = (lin(X[rows])[:, 0] - y[rows]).pow(2).mean()
        if rank == 1:
            loss = loss + extra.sum()
        loss.backward()
        est = DistributedDeepDPM()
        est._comm = ShardComm.for_local_rows(4)          # the rows it holds: 4 of 8
        est._step_rows = 3 if rank == 0 else 5           # the rows in this step
        params = [lin.weight, lin.bias, extra]
        est._average_grads(params)
        torch.save([p.grad for p in params], f"{out}/grad{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_averaged_gradients_are_the_gradient_of_the_union_batch():
    X, y = _batch(8, 0)
    lin = torch.nn.Linear(3, 1)
    torch.nn.init.constant_(lin.weight, 0.3)
    torch.nn.init.constant_(lin.bias, -0.2)
    (lin(X)[:, 0] - y).pow(2).mean().backward()
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_grad_rank, args=(2, f"file://{tmp}/rendezvous", tmp), nprocs=2)
        grads = [torch.load(f"{tmp}/grad{r}.pt") for r in range(2)]
    for g in grads:
        torch.testing.assert_close(g[0], lin.weight.grad, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(g[1], lin.bias.grad, rtol=1e-6, atol=1e-7)
        # rank 1's term enters with its weight 5 / 8; rank 0 had no gradient for it
        torch.testing.assert_close(g[2], torch.full((2,), 5 / 8))
    for a, b in zip(grads[0], grads[1], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("student", [False, True])
def test_one_rank_sharded_moves_make_the_single_process_decisions(student):
    """ShardedGuideSplitMerge on a one-rank communicator, with every row read
    (refine_rows=None), accepts exactly the splits GuideSplitMerge accepts (with
    Student-t components, each grouping's scales fitted over the reduced
    statistics)."""
    from bnpdeep import DirichletProcess, DPMixture, StudentNIW

    X, _ = make_mixture(600, 2, 4, seed=3)
    Xt = torch.as_tensor(X)
    model = DPMixture(StudentNIW.weak(X), DirichletProcess(1.0)) if student else None
    est = DeepDPM(model, max_epochs=2, random_state=0).fit(X)         # K = 1, no move yet
    _, _, z, zs = est.guide_.soft_stats(Xt)
    fam, w = est._family, est._weights
    results = []
    for moves in (GuideSplitMerge(w, fam, refine_rows=None),
                  ShardedGuideSplitMerge(ShardComm(600, 0, 600), w, fam, refine_rows=None)):
        guide, zz, zzs = copy.deepcopy(est.guide_), z.clone(), zs.clone()
        done = moves.split(guide, Xt, zz, zzs, torch.Generator().manual_seed(7))
        results.append((len(done), guide.k, zz))
    assert results[0][0] >= 1                  # the step split something
    assert results[0][:2] == results[1][:2]
    assert torch.equal(results[0][2], results[1][2])


def _mixture(n, seed):
    return make_mixture(n, 3, 6, seed=seed)


def test_two_ranks_reach_the_single_process_fit():
    X, y = _mixture(3000, seed=0)
    one = DeepDPM(random_state=0).fit(X)
    two = fit_on_ranks(DistributedDeepDPM(random_state=0), X, 2, threads=1)
    # K grew from one cluster by accepted splits on both
    assert [h["K"] for h in two.history_][0] == 1 and sum(h["splits"] for h in two.history_) >= 2
    assert two.n_clusters_ == one.n_clusters_ == 6
    assert abs(nmi(y, two.labels_) - nmi(y, one.labels_)) <= 0.01
    assert nmi(y, two.labels_) > 0.95
    assert two.labels_.shape == (3000,)
    np.testing.assert_array_equal(two.predict(X), two.labels_)
    assert two.bytes_reduced_ > 0 and two.collectives_ > 0


class _DyingDeepDPM(DistributedDeepDPM):
    """Rank 1 ends its process in epoch 12 the first time it gets there (a marker
    file in the checkpoint folder says it did)."""

    def _train_epoch(self, X):
        marker = Path(self._checkpoint_dir) / "died"
        if self._comm.rank == 1 and len(self.history_) == 11 and not marker.exists():
            marker.touch()
            os._exit(3)
        return super()._train_epoch(X)


def test_a_killed_rank_is_named_and_the_fit_resumes_to_the_uninterrupted_fit(tmp_path):
    X, _ = _mixture(1200, seed=1)
    kw = {"max_epochs": 24, "random_state": 2, "checkpoint_every": 5}
    with pytest.raises(RankFailure, match="rank 1 of 2"):
        fit_on_ranks(_DyingDeepDPM(**kw), X, 2, checkpoint_dir=tmp_path, threads=1)
    assert sorted(p.name for p in tmp_path.glob("*checkpoint.pt")) == [
        "deepdpm-dp_rank0of2_checkpoint.pt", "deepdpm-dp_rank1of2_checkpoint.pt"]
    resumed = fit_on_ranks(_DyingDeepDPM(**kw), X, 2, checkpoint_dir=tmp_path, resume=True,
                           threads=1)
    whole = fit_on_ranks(DistributedDeepDPM(**kw), X, 2, threads=1)
    assert [h["K"] for h in resumed.history_] == [h["K"] for h in whole.history_]
    assert max(h["K"] for h in whole.history_) > 1
    assert [h["loss"] for h in resumed.history_] == [h["loss"] for h in whole.history_]
    np.testing.assert_array_equal(resumed.labels_, whole.labels_)


def test_bad_settings_are_named():
    X, _ = _mixture(100, seed=0)
    with pytest.raises(ValueError, match="on the CPU"):
        DistributedDeepDPM(device="cuda", max_epochs=2).fit(X)


def _heavy_tailed(seed=3):
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=6.0, size=(4, 2))
    w = rng.gamma(1.5, 1 / 1.5, size=(4, 400, 1))
    X = (means[:, None, :] + rng.normal(size=(4, 400, 2)) / np.sqrt(w)).reshape(-1, 2)
    return X, np.repeat(np.arange(4), 400)


def _t_moves(comm=None):
    from bnpdeep import DirichletProcess, StudentNIW

    X, _ = _heavy_tailed()
    fam, dp = StudentNIW.weak(X), DirichletProcess(1.0)
    return (GuideSplitMerge(dp, fam) if comm is None
            else ShardedGuideSplitMerge(comm, dp, fam))


def _t_stats_rank(rank: int, world: int, init: str, out: str):
    """Rank r's hard statistics of its shard (each rank holding rows of every
    cluster), from the moves' reduced fit of the scales."""
    from bnpdeep.inference.distributed import shard_range

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        X, y = _heavy_tailed()
        start, stop = shard_range(X.shape[0], world, rank)
        order = np.random.default_rng(0).permutation(X.shape[0])[start:stop]
        comm = ShardComm.for_local_rows(stop - start)
        z = torch.as_tensor(y[order] // 2)
        zs = torch.as_tensor(y[order] % 2)
        stats, sub = _t_moves(comm).hard_stats(torch.as_tensor(X[order]), z, zs, 2)
        torch.save([dict(stats.fields), dict(sub.fields)], f"{out}/stats{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_fit_the_scales_of_student_t_groups_over_all_rows():
    """A t family's move statistics on 2 ranks (each with part of every group) are
    those of one process on all rows: the scales are fitted to the reduced
    statistics, not to each rank's own rows."""
    X, y = _heavy_tailed()
    ref = _t_moves().hard_stats(torch.as_tensor(X), torch.as_tensor(y // 2),
                                torch.as_tensor(y % 2), 2)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_t_stats_rank, args=(2, f"file://{tmp}/rendezvous", tmp), nprocs=2)
        got = [torch.load(f"{tmp}/stats{r}.pt") for r in range(2)]
    for ranks in got:
        for mine, theirs in zip(ranks, ref, strict=True):
            for name, value in theirs.fields.items():
                torch.testing.assert_close(mine[name], value, rtol=1e-9, atol=1e-9)


def test_two_ranks_fit_student_t_components_as_one_process_does():
    """Heavy-tailed clusters (t with 3 df) under StudentNIW: the ranks' E-step
    statistics and the moves' fitted scales are reduced over the ranks, so 2 ranks
    find the clusters one process finds."""
    from bnpdeep import DirichletProcess, DPMixture, StudentNIW

    X, y = _heavy_tailed()
    model = DPMixture(StudentNIW.weak(X), DirichletProcess(1.0))
    one = DeepDPM(model=model, random_state=0).fit(X)
    two = fit_on_ranks(DistributedDeepDPM(model=model, random_state=0), X, 2, threads=1)
    assert type(two.model_.family).__name__ == "StudentNIW"
    assert two.n_clusters_ == one.n_clusters_ == 4
    assert nmi(y, two.labels_) > 0.9 and abs(nmi(y, two.labels_) - nmi(y, one.labels_)) <= 0.01


def test_two_ranks_estimate_the_hyperparameters_of_one():
    """With hyperpriors in the model, the M-step's point estimates come from the
    reduced statistics and counts: 2 ranks estimate what one estimates."""
    import pyro.distributions as pdist
    from bnpdeep.models import Hyperpriors

    from bnpdeep import DirichletProcess, DPMixture, GaussianNIW

    X, _ = make_mixture(1500, 3, 5, seed=4)
    model = DPMixture(GaussianNIW.weak(X), DirichletProcess(1.0), hyperpriors=Hyperpriors(
        kappa=pdist.Gamma(1.0, 1.0), psi_scale=pdist.Gamma(1.0, 1.0),
        alpha=pdist.Gamma(1.0, 1.0)))
    one = DistributedDeepDPM(model=model, random_state=0).fit(X)
    two = fit_on_ranks(DistributedDeepDPM(model=model, random_state=0), X, 2, threads=1)
    assert two.n_clusters_ == one.n_clusters_ == 5
    for name, value in one.hyperparameters_.items():
        assert two.hyperparameters_[name] == pytest.approx(value, rel=0.01), name
    assert one.hyperparameters_["alpha"] != pytest.approx(1.0, rel=0.05)   # it moved
