"""Results as ArviZ InferenceData, and the diagnostics built on it.

Schema (shared by every Bayesian method):

* ``posterior``: label-invariant draws -- ``K`` (number of occupied clusters),
  ``alpha`` (the concentration), ``log_joint`` (log p(X, z) with weights and
  parameters integrated out; for a family with per-row latent variables, such as
  ``StudentNIW``'s scales w, a sampler records its state's log p(X, w, z) and
  DeepDPM its draws' log p(X, z) with w integrated out, Chib's estimate
  ``family.log_evidence``), ``weights`` (component weights sorted by size,
  padded with zeros, dim ``component``);
* ``sample_stats``: ``lp`` and the algorithm's own statistics (e.g.
  ``split_acceptance``, ``merge_acceptance``, ``resplit_acceptance``);
* ``log_likelihood``: ``x`` -- log p(x_i | weights, parameters) with z summed
  out, so that ``az.loo`` is valid;
* ``observed_data``: ``x`` (dims ``obs_id``, ``feature``).

MCMC results have ``chain`` and ``draw`` dims; variational and amortized
results one chain of ``sample`` draws, stored on the ``draw`` axis with
``sample`` recorded in the attributes.  R-hat and ESS are meaningful on ``K``,
``alpha`` and ``lp``, never on component-specific quantities (labels switch).
"""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import xarray as xr

from bnpdeep.inference.mcmc import chain_diagnostics


def _dataset(variables: dict, dims: dict, n_chains: int, n_draws: int) -> xr.Dataset:
    coords = {"chain": np.arange(n_chains), "draw": np.arange(n_draws)}
    data = {}
    for name, value in variables.items():
        value = np.asarray(value)
        extra = dims.get(name, [f"{name}_dim_{i}" for i in range(value.ndim - 2)])
        data[name] = (["chain", "draw", *extra], value)
    return xr.Dataset(data, coords=coords)


def to_inference_data(estimator) -> az.InferenceData:
    """InferenceData from a fitted estimator that offers ``posterior_arrays()``."""
    arrays = estimator.posterior_arrays()
    post = arrays["posterior"]
    n_chains, n_draws = np.asarray(post["K"]).shape
    dims = arrays.get("dims", {})
    groups = {
        "posterior": _dataset(post, dims, n_chains, n_draws),
        "sample_stats": _dataset(arrays["sample_stats"], {}, n_chains, n_draws),
    }
    if "log_likelihood" in arrays:
        groups["log_likelihood"] = _dataset({"x": arrays["log_likelihood"]},
                                            {"x": ["obs_id"]}, n_chains, n_draws)
    X = np.asarray(arrays["observed_data"])
    groups["observed_data"] = xr.Dataset({"x": (["obs_id", "feature"], X)})
    attrs = {"inference_library": "bnpdeep", "method": estimator.method_name,
             "draw_kind": arrays.get("draw_kind", "mcmc")}
    for ds in groups.values():
        ds.attrs.update(attrs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return az.InferenceData(**groups)


def k_summary(idata: az.InferenceData, hdi_prob: float = 0.9) -> dict:
    """Posterior mean of K, its central interval, and (for >1 chain) R-hat and bulk ESS
    of K and lp (:func:`~bnpdeep.inference.mcmc.chain_diagnostics`: NaN R-hat and the
    number of draws as ESS when every draw holds one value, infinite R-hat when each
    chain holds its own)."""
    k = idata.posterior["K"].values
    lo, hi = np.quantile(k, [(1 - hdi_prob) / 2, 1 - (1 - hdi_prob) / 2])
    out = {"k_mean": float(k.mean()), "k_low": float(lo), "k_high": float(hi)}
    if k.shape[0] > 1:
        for name, da in (("K", idata.posterior["K"]), ("lp", idata.sample_stats["lp"])):
            out[f"rhat_{name}"], out[f"ess_{name}"] = chain_diagnostics(da.values)
    return out


def save_inference_data(idata: az.InferenceData, path) -> str:
    """Write InferenceData to netCDF (loadable with ``az.from_netcdf``)."""
    return idata.to_netcdf(str(path))
