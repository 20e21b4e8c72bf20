"""The sub-cluster samplers' kernel settings: resolved once, the same for both samplers,
and the only thing the compiled steps read of a sampler."""

import numpy as np
import pytest
import torch
from bnpdeep.inference.distributed import DistributedSubclusterSampler
from bnpdeep.inference.subcluster import SubclusterSampler
from bnpdeep.inference.subcluster_settings import KernelSettings, resolve_common
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
    assert cfg.bandwidth2 == pytest.approx(0.01 * X.var(0, ddof=1).mean())
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
    args = {"max_iter": 40, "burn_in": 30, "warmup": 10, "burnout": 7, "slice_every": 3,
            "moves_per_iter": 2, "gibbs_points": 5, "max_label_tries": 4, "random_state": 0}
    one = _settings(SubclusterSampler(**args), X)
    dp = _settings(DistributedSubclusterSampler(**args), X)
    for name in ("warmup", "burnout", "sub_alpha", "slice_every", "moves_per_iter",
                 "gibbs_points", "max_label_tries"):
        assert getattr(one, name) == getattr(dp, name), name
    assert one.bandwidth2 == pytest.approx(dp.bandwidth2, rel=1e-12)


@pytest.mark.parametrize("change, message", [
    ({"warmup": 50}, "warmup must lie in"),
    ({"burnout": -2}, "burnout must be non-negative"),
    ({"proposal_weights": (1, 1, 1)}, "proposal_weights must be four"),
    ({"proposal_weights": (0, 0, 0, 0)}, "proposal_weights must be four"),
    ({"slice_every": -1}, "slice_every must be"),
])
def test_resolve_common_names_the_bad_argument(change, message):
    est = SubclusterSampler(**{"warmup": None, "burnout": None, "slice_every": 2,
                               "proposal_weights": (1.0, 1.0, 1.0, 0.5), **change})
    with pytest.raises(ValueError, match=message):
        resolve_common(est, DirichletProcess(1.0), 40, 4, "four non-negative numbers")
