"""Posterior draws of a fitted variational or amortized approximation, in the ArviZ schema.

MCMC methods record their draws as they run.  Methods that end with an
approximate posterior q -- moVB, mean-field SVI, DeepDPM -- instead draw
``n_samples`` times from it after the fit: weights pi, component parameters
theta and labels z.  Each draw records what :mod:`bnpdeep.diagnostics` stores
for every method: K (occupied components of z), the collapsed log joint
log p(X, z) (a family's latent variables integrated out: ``family.log_evidence``),
weights sorted by size, and the pointwise log-likelihood
log p(x_i | pi, theta) with z summed out (what ``az.loo`` needs).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .mcmc import pointwise_log_likelihood, relabel


def approximate_posterior_arrays(family, weight_prior, X: torch.Tensor, log_r: torch.Tensor,
                                 sample_log_pi: Callable, sample_params: Callable,
                                 n_samples: int, seed, alpha: float, units=None,
                                 observed=None) -> dict:
    """Arrays for :func:`bnpdeep.diagnostics.to_inference_data` from an approximate
    posterior.

    ``log_r`` (N, K) are the log assignment probabilities q(z_i = k);
    ``sample_log_pi()`` returns one draw of (log pi (K,), log pi_rest) where pi_rest
    is the mass left to components no point uses (None when there is none);
    ``sample_params()`` one draw of the K components' parameters.  With ``units``
    (:class:`~bnpdeep.inference.units.FitUnits`), X, the family and the parameters are
    in the fit's standardised coordinates, and the densities are reported in the
    units of ``observed``, the data as given.  The torch random
    state is restored afterwards, so drawing does not disturb the caller's seeded stream.
    """
    gen_state = torch.get_rng_state()
    torch.manual_seed(0 if seed is None else int(seed))
    k = log_r.shape[1]
    ks, lps, ll, wts, lj = [], [], [], [], []
    try:
        for _ in range(int(n_samples)):
            log_pi, log_rest = sample_log_pi()
            params = sample_params()
            z = torch.distributions.Categorical(logits=log_r).sample()
            counts = torch.bincount(z, minlength=k)
            zz, _ = relabel(z)
            ks.append(int((counts > 0).sum()))
            point = pointwise_log_likelihood(family, X, log_pi, params, log_rest)
            ll.append(point.cpu().numpy())
            lps.append(float(point.sum()))
            wts.append(np.sort(log_pi.exp().cpu().numpy())[::-1])
            kz = int(zz.max()) + 1
            zstats = family.suff_stats_labels(family.plugin_latent(X, zz, kz), zz, kz)
            lj.append(float(weight_prior.log_eppf(zstats.n) + family.log_evidence(zstats).sum()))
    finally:
        torch.set_rng_state(gen_state)
    s = len(ks)
    jac = 0.0 if units is None else units.log_jacobian       # per row
    n = X.shape[0]
    return {"posterior": {"K": np.array(ks)[None], "alpha": np.full((1, s), float(alpha)),
                          "log_joint": np.array(lj)[None] + n * jac,
                          "weights": np.stack(wts)[None]},
            "sample_stats": {"lp": np.array(lps)[None] + n * jac},
            "log_likelihood": np.stack(ll)[None] + jac,
            "observed_data": X.cpu().numpy() if observed is None else np.asarray(observed),
            "dims": {"weights": ["component"]},
            "draw_kind": "sample"}


__all__ = ["approximate_posterior_arrays"]
