"""Mean-field stochastic variational inference on the Pyro DP mixture program.

The "variational DPM in a probabilistic programming language" baseline: the
:class:`~bnpdeep.models.DPMixture` program at a fixed truncation T (sticks
v_1..v_{T-1}, v_T = 1), a mean-field guide and Pyro's own machinery, nothing
hand-derived:

* guide: :class:`pyro.infer.autoguide.AutoNormal` -- independent Normals over
  every global site in its unconstrained space (sticks through a sigmoid,
  covariances through :class:`~bnpdeep.models.distributions.UnconstrainedToCovariance`,
  probabilities through stick-breaking), with the labels z hidden from it;
* objective: ``TraceEnum_ELBO``, which sums z out exactly in every data point
  (enumeration), so the guide needs no local factors;
* minibatches: the model's subsampled data plate scales the likelihood by
  N / B, which gives an unbiased ELBO gradient (Hoffman et al. 2013).

Units: Adam's step (``lr``) and the guide's ``init_scale`` are lengths in the
parameters' own units, so a fit in raw units would depend on them (data in
micrometres barely move, data in metres per 1e-6 overshoot).  The fit therefore
runs in standardised coordinates y = (x - mean) / std, per column, under the
prior the model implies there (:meth:`ConjugateFamily.standardized`: an affine
map changes the likelihood by a constant Jacobian only, so the posterior is the
same), and the parameters are mapped back to the data's units
(:func:`~bnpdeep.inference.units.fit_coordinates`, which every Bayesian estimator
shares).  Families of unitless data (counts) and data already standardised fit as
given.

Initialisation: the guide's locations start at the MAP parameters of a
k-means++ partition into T groups, and the sticks at equal weights; the scales
at ``init_scale``.  Unlike moVB, nothing changes T: components the data do not
need are emptied by the DP prior (or are not).
"""

from __future__ import annotations

import sys

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import SVI, TraceEnum_ELBO, config_enumerate
from pyro.infer.autoguide import AutoNormal, init_to_value
from tqdm.auto import tqdm

from bnpdeep.linalg import as_tensor

from ..models import FiniteDirichlet, stick_breaking
from .base import ClusterEstimator, own_pyro_state
from .draws import approximate_posterior_arrays
from .mcmc import default_model


def _kmeanspp_labels(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans as SkKMeans

    k = min(k, len(np.unique(X, axis=0)))
    return SkKMeans(k, n_init=1, random_state=seed).fit_predict(X)


class MeanFieldSVI(ClusterEstimator):
    """Mean-field SVI (AutoNormal guide, z enumerated) on the truncated DP mixture.

    Parameters
    ----------
    model : DPMixture, optional
        Default: DP(alpha=1) mixture of full Gaussians with ``GaussianNIW.weak(X)``.
        Student-t components (``StudentNIW``) too: the program observes each row
        under the t density itself, so their scales need no variational factor.
    truncation : int, default 30
        Components T of the stick-breaking program (for FiniteDirichlet: its k).
    max_epochs : int, default 100
        Passes over the data.  Plain SVI empties surplus components slowly, by the
        gradient of the stick-breaking prior alone; moVB's merges do it at once.
    batch_size : int, default 512
        Rows per minibatch (the whole data when larger than N).
    lr : float, default 0.05
        Adam learning rate, in the standardised coordinates the fit runs in.
    init_scale : float, default 0.05
        Initial standard deviation of the guide's Normals, in those coordinates.
    num_particles : int, default 1
        Samples of the global sites per ELBO estimate.
    n_samples : int, default 100
        Guide draws kept by :meth:`to_inference_data`.
    random_state : int, default 0
    progress : bool, default False
        A progress bar over epochs (K and ELBO) on stderr.

    Attributes
    ----------
    labels_, n_clusters_ (components that hold a point), weights_ (pi at the guide's
    median), elbo_history_ (per epoch, the mean minibatch ELBO scaled to the full
    data, in the data's units), history_ (per epoch: occupied K at the guide's
    median, ELBO), model_ (the fitted model at truncation T, in the data's units),
    standardized_model_ (the same model for (X - shift_) / scale_), shift_ and
    scale_ (each column's mean and standard deviation; 0 and 1 for unitless
    families and for data already standardised), guide_ (the fitted AutoNormal, a
    guide of ``standardized_model_``: ``Predictive(est.standardized_model_.model,
    guide=est.guide_)`` takes standardised rows), n_epochs_.
    """

    method_name = "svi"

    def __init__(self, model=None, truncation: int = 30, max_epochs: int = 100,
                 batch_size: int = 512, lr: float = 0.05, init_scale: float = 0.05,
                 num_particles: int = 1, n_samples: int = 100, random_state=0,
                 progress: bool = False):
        self.model = model
        self.truncation = truncation
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.init_scale = init_scale
        self.num_particles = num_particles
        self.n_samples = n_samples
        self.random_state = random_state
        self.progress = progress

    def _check_options(self):
        for name in ("truncation", "max_epochs", "batch_size", "num_particles"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not float(self.lr) > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    def _init_values(self, X: torch.Tensor, t: int) -> dict:
        """Guide locations: MAP parameters of a k-means++ partition of the standardised
        rows into T groups (groups beyond the distinct rows get prior-mode parameters;
        a family with per-row latent variables, StudentNIW, at its EM fit of them to
        the groups), equal-weight sticks."""
        fam = self._family_y
        seed = 0 if self.random_state is None else int(self.random_state)
        labels = torch.as_tensor(_kmeanspp_labels(X.cpu().numpy(), t, seed), device=X.device)
        stats = fam.suff_stats_labels(fam.plugin_latent(X, labels, t), labels, t)
        values = dict(fam.sites_from_params(fam.map_estimate(stats)))
        if t > 1:
            j = torch.arange(1, t, dtype=X.dtype)
            values["v"] = 1.0 / (t - j + 1)         # pi_k = 1 / T for every k
        return values

    def _fit(self, X):
        # the fitted guide keeps its parameters as module attributes
        family = (self.model.family if self.model is not None else None)
        with own_pyro_state(getattr(family, "device", None)) as state:
            self._param_state = state
            self._fit_scoped(X)

    def _fit_scoped(self, X):
        self._check_options()
        model = default_model(X) if self.model is None else self.model
        if model.hyperpriors is not None:
            # the program builds the family from floats of the hyperparameter sites, so
            # no gradient of the likelihood would reach their variational factors
            raise ValueError(
                "MeanFieldSVI does not fit hyperpriors (the model has "
                f"{model.hyperpriors!r}); use SubclusterSampler or CollapsedGibbs (sampled), "
                "or MemoizedVB or DeepDPM (point estimates)")
        t = model.weights.k if isinstance(model.weights, FiniteDirichlet) else int(self.truncation)
        self.model_ = model.with_truncation(t)
        self._family, self._weights = model.family, model.weights
        self._alpha = float(getattr(model.weights, "alpha", 1.0))
        # the fit runs in standardised coordinates and reports in X's units (units.py)
        mapped, Y, units = self._fit_coordinates(self.model_, np.asarray(X))
        self.standardized_model_, self._units = mapped, units
        self._family_y = mapped.family
        d = X.shape[1]
        self.shift_ = np.zeros(d) if units.shift is None else units.shift
        self.scale_ = np.ones(d) if units.scale is None else units.scale
        Y = as_tensor(Y, device=self._family.device)
        X = as_tensor(X, device=self._family.device)
        self._X = X
        n = X.shape[0]
        batch = min(int(self.batch_size), n)
        torch.manual_seed(0 if self.random_state is None else int(self.random_state))
        program = config_enumerate(self.standardized_model_.model)
        init = self._init_values(Y, t)
        self.guide_ = AutoNormal(poutine.block(program, hide=["z"]),
                                 init_loc_fn=init_to_value(values=init),
                                 init_scale=float(self.init_scale))
        svi = SVI(program, self.guide_, pyro.optim.Adam({"lr": float(self.lr)}),
                  TraceEnum_ELBO(max_plate_nesting=1, num_particles=int(self.num_particles),
                                 vectorize_particles=int(self.num_particles) > 1))
        steps = max(1, -(-n // batch))
        self.elbo_history_, self.history_ = [], []
        bar = tqdm(range(int(self.max_epochs)), desc="svi", unit="epoch", file=sys.stderr,
                   disable=not self.progress, leave=False)
        for epoch in bar:
            total = 0.0
            for _ in range(steps):
                loss = self._step(svi, Y, batch if batch < n else None, epoch)
                if not np.isfinite(loss):
                    raise FloatingPointError(
                        f"the SVI loss became {loss} at epoch {epoch + 1}; lower lr "
                        f"(now {self.lr}) or init_scale (now {self.init_scale})")
                total += loss
            self.elbo_history_.append(-total / steps + units.lp_offset)   # in X's units
            log_pi, params = self._median()
            z = self._log_resp(X, log_pi, params).argmax(1)
            self.history_.append({"epoch": epoch + 1, "K": int(torch.unique(z).numel()),
                                  "elbo": self.elbo_history_[-1]})
            bar.set_postfix(K=self.history_[-1]["K"], ELBO=f"{self.elbo_history_[-1]:.6g}",
                            refresh=False)
        self.n_epochs_ = len(self.elbo_history_)
        self._params = self._median()
        log_r = self._log_resp(X, *self._params)
        # component indices, as predict gives them (components no point takes leave gaps)
        self.labels_ = log_r.argmax(1).cpu().numpy()
        self.n_clusters_ = int(np.unique(self.labels_).size)
        self.weights_ = self._params[0].exp().detach().cpu().numpy()

    def _step(self, svi, X, subsample_size, epoch: int) -> float:
        try:
            return svi.step(X, subsample_size=subsample_size)
        except ValueError as err:
            if "support" not in str(err) and "positive definite" not in str(err):
                raise
            raise ValueError(
                f"MeanFieldSVI: at epoch {epoch + 1} a draw of the guide gave a parameter "
                f"outside its support (for Gaussian families, a numerically singular "
                f"{X.shape[1]} x {X.shape[1]} covariance).  The Normal guide on the "
                f"unconstrained Cholesky factor is fragile on strongly correlated features: "
                f"use DiagonalGaussian, reduce the dimension (PCA), or lower init_scale "
                f"(now {self.init_scale})") from None

    # -- the fitted approximation ---------------------------------------------------
    def _split_sites(self, values: dict):
        t = self.model_.truncation
        if t > 1:
            log_pi = torch.log(stick_breaking(values["v"].detach()).clamp_min(1e-300))
        else:
            log_pi = torch.zeros(1, dtype=self._X.dtype)
        params = self._family_y.params_from_sites(
            {k: values[k].detach() for k in self._family.param_sites})
        if self._units.scale is not None:
            params = self._family.params_from_standardized(params, self.shift_, self.scale_)
        return log_pi, params

    def _fitted_scope(self):
        """The fit's own parameter store, for running the fitted guide again."""
        import pyro

        return pyro.get_param_store().scope(self._param_state)

    def _median(self):
        with torch.no_grad(), self._fitted_scope():
            return self._split_sites(self.guide_.median())

    def _log_resp(self, X, log_pi, params) -> torch.Tensor:
        with torch.no_grad():
            return torch.log_softmax(self._family.log_likelihood(X, params) + log_pi[None], 1)

    def predict_proba(self, X) -> np.ndarray:
        """p(z = k | x, pi, theta) at the guide's median."""
        X = as_tensor(self._validate_predict_data(X), device=self._X.device)
        return self._log_resp(X, *self._params).exp().cpu().numpy()

    def _predict(self, X):
        X = as_tensor(X, device=self._X.device)
        return self._log_resp(X, *self._params).argmax(1).cpu().numpy()

    def posterior_arrays(self) -> dict:
        """Draws (``sample``) of the global sites from the guide; z from the
        responsibilities at the guide's median; pointwise log-likelihood with z
        summed out under each draw."""
        self._check_is_fitted()
        drawn = {}

        def sample_log_pi():
            with torch.no_grad(), self._fitted_scope():
                log_pi, drawn["params"] = self._split_sites(self.guide_())
            return log_pi, None

        log_r = self._log_resp(self._X, *self._params)
        return approximate_posterior_arrays(
            self._family, self._weights, self._X, log_r, sample_log_pi,
            lambda: drawn["params"], self.n_samples, self.random_state, self._alpha)

    def to_inference_data(self):
        from bnpdeep.diagnostics import to_inference_data

        return to_inference_data(self)


__all__ = ["MeanFieldSVI"]
