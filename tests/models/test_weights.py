"""Weight priors: EPPFs are probability distributions over partitions, sticks sum to one."""

import math
from collections import Counter

import numpy as np
import pytest
import torch
from bnpdeep.inference.exact import canonical, set_partitions
from bnpdeep.models import DirichletProcess, FiniteDirichlet, PitmanYor, stick_breaking

PRIORS = [DirichletProcess(0.7), DirichletProcess(3.0), PitmanYor(0.3, 1.2),
          PitmanYor(0.5, -0.2), FiniteDirichlet(3, 1.5), FiniteDirichlet(10, 0.8)]


def _sizes(p):
    return np.bincount(np.asarray(p)).astype(float)


@pytest.mark.parametrize("prior", PRIORS, ids=repr)
@pytest.mark.parametrize("n", [1, 2, 4, 6])
def test_eppf_sums_to_one_over_all_partitions(prior, n):
    total = sum(math.exp(prior.log_eppf(_sizes(p))) for p in set_partitions(n))
    assert total == pytest.approx(1.0, abs=1e-10)


@pytest.mark.parametrize("prior", PRIORS, ids=repr)
def test_predictive_rule_is_the_eppf_ratio(prior):
    counts = np.array([3.0, 1.0, 2.0])
    base = prior.log_eppf(counts)
    old, new = prior.log_crp_weights(counts)
    norm = 6 + (prior.alpha if not isinstance(prior, FiniteDirichlet) else prior.alpha)
    for k in range(3):
        c = counts.copy()
        c[k] += 1
        assert float(old[k]) - math.log(norm) == pytest.approx(prior.log_eppf(c) - base)
    assert float(new) - math.log(norm) == pytest.approx(
        prior.log_eppf(np.append(counts, 1.0)) - base)


@pytest.mark.parametrize("prior", PRIORS, ids=repr)
def test_sequential_partitions_follow_the_eppf(prior):
    torch.manual_seed(0)
    draws = Counter(canonical(prior.sample_partition(4)) for _ in range(3000))
    for p in set_partitions(4):
        expected = math.exp(prior.log_eppf(_sizes(p)))
        assert abs(draws[p] / 3000 - expected) < 4 * math.sqrt(expected / 3000) + 2e-3


@pytest.mark.parametrize("prior", PRIORS[:4], ids=repr)
def test_stick_breaking_weights_sum_to_one(prior):
    torch.manual_seed(0)
    w = prior.sample_weights(25)
    assert w.shape == (25,) and (w >= 0).all()
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    sums = stick_breaking(torch.rand(5, 9, dtype=torch.float64)).sum(-1)
    assert float(sums.sub(1).abs().max()) < 1e-12


def test_finite_dirichlet_sticks_are_the_dirichlet():
    """Generalised-Dirichlet sticks reproduce Dirichlet(alpha/k) moments."""
    torch.manual_seed(0)
    prior = FiniteDirichlet(4, 2.0)
    w = torch.stack([prior.sample_weights(4) for _ in range(20000)])
    g = 0.5
    np.testing.assert_allclose(w.mean(0).numpy(), 0.25, atol=0.01)
    var = g * (2.0 - g) / (2.0**2 * 3.0)
    np.testing.assert_allclose(w.var(0).numpy(), var, rtol=0.1)


@pytest.mark.parametrize("prior", PRIORS[:3], ids=repr)
def test_expected_log_weights_by_monte_carlo(prior):
    torch.manual_seed(0)
    counts = torch.tensor([5.0, 0.0, 2.5, 1.0], dtype=torch.float64)
    a, b = prior.stick_posterior(counts)
    exact = prior.expected_log_weights(a, b)
    v = torch.distributions.Beta(a, b).sample((50000,))
    mc = stick_breaking(v).log().mean(0)
    np.testing.assert_allclose(mc.numpy(), exact.numpy(), atol=0.03)


def test_weight_concentration_matches_predictive_rule():
    counts = np.array([4.0, 2.0])
    for prior in PRIORS:
        conc, rest = prior.weight_concentration(counts)
        old, new = prior.log_crp_weights(counts)
        np.testing.assert_allclose(conc.log().numpy(), old.numpy())
        assert float(rest) == pytest.approx(math.exp(float(new)))


def test_invalid_hyperparameters():
    with pytest.raises(ValueError, match="alpha"):
        DirichletProcess(0.0)
    with pytest.raises(ValueError, match="discount"):
        PitmanYor(1.0, 1.0)
    with pytest.raises(ValueError, match="k must"):
        FiniteDirichlet(0)


@pytest.mark.parametrize("prior", PRIORS, ids=repr)
def test_rest_atoms_match_the_eppf(prior):
    """The unoccupied atoms' weights (pi_rest split by :meth:`rest_stick_prior`) given a
    partition with blocks (3, 1): two further points land in the same new block with
    probability EPPF(n, 2) / [EPPF(n, 2) + EPPF(n, 1, 1)] among the ways both open new
    blocks, which under the random measure is E[sum_j p_j^2] for the rest's shares
    p_j.  Monte Carlo over 1000 draws, atoms down to 1e-3 of the rest (the atoms left
    out add at most 1e-3 to the sum of squares)."""
    n = [3.0, 1.0]
    same = math.exp(prior.log_eppf(n + [2.0]))
    diff = math.exp(prior.log_eppf(n + [1.0, 1.0]))
    expected = same / (same + diff)
    torch.manual_seed(0)
    sq, mass = [], []
    for _ in range(1000):
        p = prior.sample_rest_log_weights(2, 0.0, math.log(1e-3)).exp()
        sq.append(float((p * p).sum()))
        mass.append(float(p.sum()))
    assert np.mean(sq) == pytest.approx(expected, abs=0.03)
    assert max(mass) <= 1.0 + 1e-12 and min(mass) > 1.0 - 1e-3 - 1e-12
    if math.isfinite(prior.max_clusters):
        atoms = prior.sample_rest_log_weights(2, 0.0, -math.inf)
        assert atoms.numel() == prior.max_clusters - 2
        assert float(atoms.exp().sum()) == pytest.approx(1.0)
