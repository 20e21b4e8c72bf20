"""The sub-cluster samplers' kernel settings: resolved once, the same for both samplers,
and the only thing the compiled steps read of a sampler."""

import numpy as np
import pytest
import torch
from bnpdeep.inference.distributed import DistributedSubclusterSampler
from bnpdeep.inference.subcluster import SubclusterSampler
from bnpdeep.inference.subcluster_settings import (
    KernelSettings,
    SamplerOptions,
    resolve_common,
)
from bnpdeep.models import DirichletProcess, DPMixture, GaussianNIW, PitmanYor


def _settings(est, X):
    est.fit(X)
    return est._settings


def test_defaults_follow_their_rules():
    X = np.random.default_rng(0).normal(size=(60, 2))
    cfg = _settings(SubclusterSampler(max_iter=200, burn_in=120, random_state=0), X)
    assert (cfg.warmup, cfg.burnout) == (60, max(5, 3 * 60 // 20))
    assert cfg.sub_alpha == 1.0 and cfg.moves_per_iter == 4
    torch.testing.assert_close(cfg.kind_weights, torch.tensor([1, 1, 1, 0.5],
                                                              dtype=torch.float64) / 3.5)
    assert cfg.gibbs_points == 60              # min(N, the compiled default)
    # a tenth of the spread of the rows the chains run on: X standardised
    Y = (X - X.mean(0)) / X.std(0)
    assert cfg.bandwidth2 == pytest.approx(0.01 * Y.var(0, ddof=1).mean())
    # the slice step closes every slice_every-th exact iteration, counted from the warm-up
    assert [it for it in range(60, 68) if cfg.slice_due(it)] == [61, 63, 65, 67]
    assert not any(KernelSettings(0, 5, 1.0, cfg.kind_weights, slice_every=0).slice_due(i)
                   for i in range(10))
    # sub-cluster weights take the prior's concentration where it has one
    model = DPMixture(GaussianNIW.weak(X), PitmanYor(discount=0.3, alpha=2.5))
    assert _settings(SubclusterSampler(model=model, max_iter=8, backend="torch"),
                     X).sub_alpha == 2.5


def test_both_samplers_resolve_the_same_kernel_constants():
    X = np.random.default_rng(1).normal(size=(80, 3))
    options = SamplerOptions(burnout=7, slice_every=3, moves_per_iter=2, gibbs_points=5,
                             max_label_tries=4)
    args = {"max_iter": 40, "burn_in": 30, "warmup": 10, "random_state": 0}
    one = _settings(SubclusterSampler(options=options, **args), X)
    # a dict of the fields is the same options
    dp = _settings(DistributedSubclusterSampler(options=dict(burnout=7, slice_every=3,
                                                             moves_per_iter=2, gibbs_points=5,
                                                             max_label_tries=4), **args), X)
    for name in ("warmup", "burnout", "sub_alpha", "slice_every", "moves_per_iter",
                 "gibbs_points", "max_label_tries"):
        assert getattr(one, name) == getattr(dp, name), name
    assert (one.burnout, one.slice_every, one.moves_per_iter, one.gibbs_points,
            one.max_label_tries) == (7, 3, 2, 5, 4)
    assert one.bandwidth2 == pytest.approx(dp.bandwidth2, rel=1e-12)
    # each sampler's own default proposal kinds
    torch.testing.assert_close(dp.kind_weights, torch.tensor([0.5, 0.5], dtype=torch.float64))


@pytest.mark.parametrize("warmup, change, message", [
    (50, {}, "warmup must lie in"),
    (None, {"burnout": -2}, "burnout must be non-negative"),
    (None, {"proposal_weights": (1, 1, 1)}, "proposal_weights must be 4"),
    (None, {"proposal_weights": (0, 0, 0, 0)}, "proposal_weights must be 4"),
    (None, {"slice_every": -1}, "slice_every must be"),
    (None, {"moves_per_iter": 1.5}, "moves_per_iter must be"),
    (None, {"gibbs_points": "all"}, "gibbs_points must be"),
    (None, {"refine_rows": 0}, "refine_rows must be"),
    (None, {"max_label_tries": -1}, "max_label_tries must be"),
    (None, {"warmup_moves": -3}, "warmup_moves must be"),
    (None, {"resplit_prob": 1.5}, "resplit_prob must lie"),
])
def test_resolve_common_names_the_bad_argument(warmup, change, message):
    with pytest.raises(ValueError, match=message):
        resolve_common(warmup, SamplerOptions(**change), DirichletProcess(1.0), 40,
                       (1.0, 1.0, 1.0, 0.5))


def test_options_the_data_parallel_sampler_lacks_are_refused_by_name():
    X = np.random.default_rng(2).normal(size=(40, 2))
    for name, value in [("resplit_prob", 0.5), ("refine_iter", 3), ("refine_rows", 50),
                        ("warmup_moves", 2)]:
        with pytest.raises(ValueError, match=f"SamplerOptions.{name} is not an option"):
            DistributedSubclusterSampler(max_iter=4, options={name: value}).fit(X)
    with pytest.raises(ValueError, match="options: .*unexpected keyword"):
        SubclusterSampler(max_iter=4, options={"gibbs": 3}).fit(X)
    with pytest.raises(ValueError, match="options must be a SamplerOptions"):
        SubclusterSampler(max_iter=4, options=(1, 2)).fit(X)


def test_the_constructors_keep_what_a_statistician_sets():
    """The samplers' own parameters; the kernels' knobs live in SamplerOptions."""
    kept = {"model", "init_k", "max_iter", "burn_in", "thin", "n_chains", "warmup",
            "options", "store_log_likelihood", "random_state", "device", "progress",
            "checkpoint_every"}
    assert set(SubclusterSampler().get_params()) == kept | {"n_jobs", "backend"}
    assert set(DistributedSubclusterSampler().get_params()) == kept | {"n_slots"}
