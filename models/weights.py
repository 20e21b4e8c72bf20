"""Priors on the mixture weights: Dirichlet process, Pitman-Yor, finite Dirichlet.

Each prior offers what the inference algorithms need, in one interface:

* stick-breaking: pi_j = v_j prod_{l<j} (1 - v_l) with v_j ~ Beta(a_j, b_j)
  (:meth:`stick_prior`, :meth:`sample_weights`, :meth:`pyro_sample_weights`);
  a truncation T fixes v_T = 1 so that the T weights sum to one;
* the exchangeable partition probability function, log p(partition) for a
  partition with block sizes n_1..n_K (:meth:`log_eppf`), and its one-step
  predictive rule (:meth:`log_crp_weights`), used by collapsed samplers and by
  split/merge Hastings ratios;
* the conditional law of the weights given a partition,
  (pi_1, .., pi_K, pi_rest) ~ Dirichlet(:meth:`weight_concentration`), used by
  samplers that instantiate the weights, and how pi_rest splits over the atoms
  no point occupies (:meth:`rest_stick_prior`, :meth:`sample_rest_log_weights`),
  used by slice samplers;
* variational quantities: the conjugate Beta posterior of the sticks given
  expected counts and E[log pi_j] (:meth:`stick_posterior`,
  :meth:`expected_log_weights`).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as pdist
import torch

from bnpdeep.linalg import DTYPE, as_tensor


def stick_breaking(v: torch.Tensor) -> torch.Tensor:
    """Weights pi_j = v_j prod_{l<j}(1 - v_l) from T - 1 sticks; the last weight takes
    the remaining mass, so the T weights sum to one."""
    one = torch.ones(v.shape[:-1] + (1,), dtype=v.dtype, device=v.device)
    rest = torch.cumprod(torch.cat([one, 1 - v], -1), -1)
    return torch.cat([v, one], -1) * rest


def _counts(counts) -> torch.Tensor:
    c = as_tensor(counts).reshape(-1)
    return c[c > 0]


class WeightPrior:
    """Base class of the weight priors."""

    #: largest number of occupied clusters the prior allows
    max_clusters: float = math.inf

    def stick_prior(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Beta parameters (a_j, b_j) of the sticks v_1..v_{T-1}."""
        raise NotImplementedError

    def log_eppf(self, counts) -> float:
        """log p(partition) for a partition whose blocks have sizes ``counts``."""
        raise NotImplementedError

    def log_block_weight(self, n: torch.Tensor) -> torch.Tensor:
        """log W(n) of the Gibbs-type factorisation EPPF = V(N, K) prod_k W(n_k)."""
        raise NotImplementedError

    def log_new_block_ratio(self, k) -> torch.Tensor:
        """log V(N, K + 1) - log V(N, K): the EPPF cost of one more block when there are K.

        With :meth:`log_block_weight` this gives split and merge ratios for any
        number of candidate moves at once:
        log EPPF(split k into n1, n2) - log EPPF = ratio(K) + W(n1) + W(n2) - W(n).
        """
        raise NotImplementedError

    def log_crp_weights(self, counts) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalised log p(next point joins block k) for each block (K,) and for a
        new block (scalar): the ratio EPPF(counts + e_k) / EPPF(counts)."""
        raise NotImplementedError

    def gibbs_parameters(self) -> tuple[float, float, float] | None:
        """(alpha, sigma, largest K) when the EPPF is the Gibbs-type one with
        V(N, K+1) / V(N, K) = alpha + K sigma and W(n) proportional to
        Gamma(n - sigma): what the compiled sampler computes with.  None for a prior
        of another form (a subclass that changes the EPPF must override this)."""
        return None

    def weight_concentration(self, counts) -> tuple[torch.Tensor, torch.Tensor]:
        """Dirichlet parameters of (pi_1..pi_K, pi_rest) given a partition."""
        raise NotImplementedError

    def rest_stick_prior(self, k: int, j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Beta parameters (a, b) of the sticks j = 0, 1, .. that split pi_rest over the
        atoms no point occupies, given K occupied blocks: the j-th such atom weighs
        pi_rest v_j prod_{l<j} (1 - v_l).  b = 0 marks the last atom of a finite prior
        (v = 1)."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------
    def sample_rest_log_weights(self, k: int, log_rest: float, log_floor: float,
                                chunk: int = 16) -> torch.Tensor:
        """log weights of the unoccupied atoms, in stick order, given K occupied blocks
        and their total mass exp(``log_rest``), down to the first atom before which less
        than exp(``log_floor``) is left: every later atom weighs less than that (the atoms
        a slice sampler needs, Kalli, Griffin & Walker 2011, Sec. 2).  Sticks are drawn
        ``chunk`` at a time, the chunk doubling each round."""
        limit = self.max_clusters - k
        out, left, j = [], float(log_rest), 0
        while left > log_floor and j < limit:
            t = int(min(chunk, limit - j))
            a, b = self.rest_stick_prior(k, torch.arange(j, j + t, dtype=DTYPE))
            ga = torch._standard_gamma(a).clamp_min(1e-300)
            last = b <= 0
            gb = torch.where(last, 0.0, torch._standard_gamma(torch.where(last, 1.0, b))
                             .clamp_min(1e-300))
            log_v = torch.log(ga) - torch.log(ga + gb)
            log_1mv = torch.log(gb) - torch.log(ga + gb)            # -inf for v = 1
            before = left + torch.cat([torch.zeros(1, dtype=DTYPE), log_1mv.cumsum(0)[:-1]])
            keep = before > log_floor
            out.append((before + log_v)[keep])
            left = float(before[-1] + log_1mv[-1])
            if not bool(keep.all()):
                break
            j += t
            chunk *= 2              # heavy tails (Pitman-Yor) need many atoms
        return torch.cat(out) if out else torch.zeros(0, dtype=DTYPE)

    def sample_weights(self, t: int) -> torch.Tensor:
        a, b = self.stick_prior(t)
        return stick_breaking(torch.distributions.Beta(a, b).sample())

    def pyro_sample_weights(self, t: int) -> torch.Tensor:
        """Sample the sticks as the Pyro site ``v`` (plate ``sticks``) and return pi."""
        a, b = self.stick_prior(t)
        with pyro.plate("sticks", t - 1):
            v = pyro.sample("v", pdist.Beta(a, b))
        return stick_breaking(v)

    def stick_posterior(self, counts) -> tuple[torch.Tensor, torch.Tensor]:
        """Beta posterior of the T - 1 sticks given (expected) counts N_1..N_T:
        a_j + N_j and b_j + sum_{l>j} N_l."""
        n = as_tensor(counts).reshape(-1)
        a, b = self.stick_prior(n.shape[0])
        tail = n.flip(0).cumsum(0).flip(0)
        return a + n[:-1], b + tail[1:]

    @staticmethod
    def expected_log_weights(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """E[log pi_j] under independent Beta(a_j, b_j) sticks, j < T, and v_T = 1:
        E log v_j + sum_{l<j} E log(1 - v_l) (Blei & Jordan 2006, eq. 14)."""
        tot = torch.digamma(a + b)
        elog_v = torch.digamma(a) - tot
        elog_1mv = torch.digamma(b) - tot
        zero = torch.zeros(1, dtype=a.dtype, device=a.device)
        prefix = torch.cat([zero, elog_1mv.cumsum(0)])
        return torch.cat([elog_v, zero]) + prefix

    def sample_partition(self, n: int) -> torch.Tensor:
        """Labels 0..K-1 of n points drawn sequentially from the predictive rule."""
        labels = torch.empty(n, dtype=torch.long)
        counts: list[float] = []
        for i in range(n):
            if not counts:          # the first point always opens block 0
                counts.append(1.0)
                labels[i] = 0
                continue
            old, new = self.log_crp_weights(counts)
            logits = torch.cat([old.reshape(-1), new.reshape(1)])
            k = int(torch.distributions.Categorical(logits=logits).sample())
            if k == len(counts):
                counts.append(1.0)
            else:
                counts[k] += 1.0
            labels[i] = k
        return labels


class DirichletProcess(WeightPrior):
    """DP(alpha) weights: GEM(alpha) sticks v_j ~ Beta(1, alpha).

    EPPF (Ewens): alpha^K Gamma(alpha) / Gamma(alpha + N) prod_k Gamma(n_k).
    """

    def __init__(self, alpha: float = 1.0):
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.alpha = float(alpha)

    def stick_prior(self, t):
        one = torch.ones(t - 1, dtype=DTYPE)
        return one, self.alpha * one

    def log_eppf(self, counts) -> float:
        c = _counts(counts)
        a = torch.tensor(self.alpha, dtype=DTYPE)
        return float(c.numel() * torch.log(a) + torch.lgamma(a) - torch.lgamma(a + c.sum())
                     + torch.lgamma(c).sum())

    def log_block_weight(self, n):
        return torch.lgamma(as_tensor(n))

    def log_new_block_ratio(self, k):
        return torch.full_like(as_tensor(k), math.log(self.alpha))

    def log_crp_weights(self, counts):
        c = as_tensor(counts).reshape(-1)
        return torch.log(c), torch.tensor(math.log(self.alpha), dtype=DTYPE)

    def gibbs_parameters(self):
        return self.alpha, 0.0, math.inf

    def weight_concentration(self, counts):
        return as_tensor(counts).reshape(-1), torch.tensor(self.alpha, dtype=DTYPE)

    def rest_stick_prior(self, k, j):
        # the rest of a DP posterior is DP(alpha): GEM(alpha) sticks
        return torch.ones_like(j), self.alpha * torch.ones_like(j)

    def __repr__(self):
        return f"DirichletProcess(alpha={self.alpha:g})"


class PitmanYor(WeightPrior):
    """Pitman-Yor PY(discount d, strength alpha): sticks v_j ~ Beta(1 - d, alpha + j d).

    EPPF (Pitman 1995): prod_{i=1}^{K-1}(alpha + i d) / (alpha + 1)_{N-1}
    prod_k (1 - d)_{n_k - 1}, with (x)_m the rising factorial.
    """

    def __init__(self, discount: float = 0.1, alpha: float = 1.0):
        if not 0 <= discount < 1:
            raise ValueError(f"discount must lie in [0, 1), got {discount}")
        if alpha <= -discount:
            raise ValueError(f"alpha must exceed -discount, got {alpha}")
        self.discount = float(discount)
        self.alpha = float(alpha)

    def stick_prior(self, t):
        j = torch.arange(1, t, dtype=DTYPE)
        return torch.full((t - 1,), 1 - self.discount, dtype=DTYPE), self.alpha + j * self.discount

    def log_eppf(self, counts) -> float:
        c = _counts(counts)
        d, a = self.discount, self.alpha
        k = c.numel()
        i = torch.arange(1, k, dtype=DTYPE)
        n = c.sum()
        at = torch.tensor(a, dtype=DTYPE)
        return float(torch.log(a + i * d).sum()
                     + (torch.lgamma(c - d) - math.lgamma(1 - d)).sum()
                     - (torch.lgamma(at + n) - torch.lgamma(at + 1)))

    def log_block_weight(self, n):
        return torch.lgamma(as_tensor(n) - self.discount) - math.lgamma(1 - self.discount)

    def log_new_block_ratio(self, k):
        return torch.log(self.alpha + as_tensor(k) * self.discount)

    def log_crp_weights(self, counts):
        c = as_tensor(counts).reshape(-1)
        k = int((c > 0).sum())
        return torch.log(c - self.discount), torch.tensor(
            math.log(self.alpha + k * self.discount), dtype=DTYPE)

    def weight_concentration(self, counts):
        c = as_tensor(counts).reshape(-1)
        return c - self.discount, torch.tensor(self.alpha + c.numel() * self.discount,
                                               dtype=DTYPE)

    def gibbs_parameters(self):
        return self.alpha, self.discount, math.inf

    def rest_stick_prior(self, k, j):
        # given K blocks the rest is PY(discount, alpha + K discount) (Pitman 1996)
        d = self.discount
        return torch.full_like(j, 1 - d), self.alpha + k * d + (j + 1) * d

    def __repr__(self):
        return f"PitmanYor(discount={self.discount:g}, alpha={self.alpha:g})"


class FiniteDirichlet(WeightPrior):
    """Symmetric finite Dirichlet: pi ~ Dirichlet(alpha / k, ..., alpha / k) over k components.

    EPPF of the induced partition (blocks unlabelled, K <= k):
    k! / (k - K)! Gamma(alpha) / Gamma(alpha + N) prod_j Gamma(n_j + alpha/k) / Gamma(alpha/k).
    As k grows it tends to the DP(alpha) EPPF.
    """

    def __init__(self, k: int, alpha: float = 1.0):
        if int(k) < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        self.k = int(k)
        self.alpha = float(alpha)
        self.max_clusters = self.k

    def stick_prior(self, t):
        # generalised-Dirichlet sticks: v_j ~ Beta(alpha/k, (k - j) alpha / k)
        j = torch.arange(1, t, dtype=DTYPE)
        g = self.alpha / self.k
        return torch.full((t - 1,), g, dtype=DTYPE), (self.k - j).clamp_min(0) * g

    def log_eppf(self, counts) -> float:
        c = _counts(counts)
        kk = c.numel()
        if kk > self.k:
            return -math.inf
        g = self.alpha / self.k
        return float(math.lgamma(self.k + 1) - math.lgamma(self.k - kk + 1)
                     + math.lgamma(self.alpha) - torch.lgamma(self.alpha + c.sum())
                     + (torch.lgamma(c + g) - math.lgamma(g)).sum())

    def log_block_weight(self, n):
        g = self.alpha / self.k
        return torch.lgamma(as_tensor(n) + g) - math.lgamma(g)

    def log_new_block_ratio(self, k):
        free = self.k - as_tensor(k)
        return torch.where(free > 0, torch.log(free.clamp_min(1e-300)),
                           torch.full_like(free, -math.inf))

    def log_crp_weights(self, counts):
        c = as_tensor(counts).reshape(-1)
        g = self.alpha / self.k
        free = self.k - int((c > 0).sum())
        new = math.log(free * g) if free > 0 else -math.inf
        return torch.log(c + g), torch.tensor(new, dtype=DTYPE)

    def weight_concentration(self, counts):
        c = as_tensor(counts).reshape(-1)
        g = self.alpha / self.k
        return c + g, torch.tensor(max(self.k - c.numel(), 0) * g, dtype=DTYPE)

    def gibbs_parameters(self):
        # alpha + K sigma = (k - K) alpha / k: sigma = -alpha / k
        return self.alpha, -self.alpha / self.k, float(self.k)

    def rest_stick_prior(self, k, j):
        # the K - k empty components share pi_rest by Dir(alpha / K, ..): generalised
        # Dirichlet sticks, the last one taking what is left (b = 0)
        g = self.alpha / self.k
        return torch.full_like(j, g), (self.k - k - 1 - j).clamp_min(0) * g

    def __repr__(self):
        return f"FiniteDirichlet(k={self.k}, alpha={self.alpha:g})"
