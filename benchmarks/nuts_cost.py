"""What Pyro's NUTS costs on DPMixture: seconds per iteration and gradient
evaluations per iteration, at a given size, truncation and tree depth.

    python benchmarks/nuts_cost.py --n 100 --truncation 10 --depth 10 --budget 60
    python benchmarks/nuts_cost.py --n 100 --truncation 10 --depth 5 --marginal

Data: make_mixture(n, 2, 3, seed=0); GaussianNIW.weak prior; one chain, torch on one
thread.  z is enumerated (config_enumerate) unless --marginal (obs is the mixture,
z summed out in closed form: the same posterior).  The run stops after --iters
warmup iterations or --budget seconds, whichever comes first, and prints the
iterations done, seconds per iteration and model evaluations (leapfrog gradients)
per iteration.
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch
from bnpdeep.models import DPMixture, GaussianNIW
from pyro.infer import MCMC, NUTS, config_enumerate

from bnpdeep.data import make_mixture


class _OutOfTime(Exception):
    pass


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--truncation", type=int, default=10)
    ap.add_argument("--depth", type=int, default=10, help="max_tree_depth (Pyro's default 10)")
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--budget", type=float, default=60.0, help="seconds")
    ap.add_argument("--marginal", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    X, _ = make_mixture(args.n, 2, 3, seed=args.seed)
    m = DPMixture(GaussianNIW.weak(X), truncation=args.truncation)
    calls = [0]

    def counted(*a, **k):
        calls[0] += 1
        return m.model(*a, **k)

    model = counted if args.marginal else config_enumerate(counted)
    done, start = [0], time.perf_counter()

    def hook(kernel, params, stage, i):
        done[0] += 1
        if time.perf_counter() - start > args.budget:
            raise _OutOfTime

    pyro.set_rng_seed(args.seed)
    mcmc = MCMC(NUTS(model, max_plate_nesting=1, max_tree_depth=args.depth),
                warmup_steps=args.iters, num_samples=1, num_chains=1,
                disable_progbar=True, hook_fn=hook)
    Xt = torch.as_tensor(X)
    try:
        mcmc.run(Xt, marginal=args.marginal)
    except _OutOfTime:
        pass
    secs = time.perf_counter() - start
    it = max(done[0], 1)
    z = "marginal" if args.marginal else "z enumerated"
    print(f"n={args.n} T={args.truncation} depth={args.depth} {z}: {done[0]} iterations "
          f"in {secs:.1f} s, {secs / it:.2f} s/iteration, {calls[0] / it:.0f} model "
          f"evaluations/iteration")


if __name__ == "__main__":
    main()
