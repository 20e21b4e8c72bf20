"""What is assumed: conjugate families, weight priors and the Pyro mixture program."""

from .distributions import InverseWishart, MultinomialCounts, NormalInverseWishart
from .dpmm import DPMixture, gather_params
from .families import (
    ConjugateFamily,
    DiagGaussianParams,
    DiagonalGaussian,
    GaussianNIW,
    GaussianParams,
    Multinomial,
    MultinomialParams,
    StudentNIW,
    SuffStats,
)
from .hyperpriors import Hyperpriors
from .weights import (
    DirichletProcess,
    FiniteDirichlet,
    PitmanYor,
    WeightPrior,
    stick_breaking,
)

__all__ = [
    "InverseWishart", "NormalInverseWishart", "MultinomialCounts",
    "DPMixture", "gather_params", "Hyperpriors",
    "ConjugateFamily", "SuffStats",
    "GaussianNIW", "GaussianParams", "StudentNIW", "DiagonalGaussian", "DiagGaussianParams",
    "Multinomial", "MultinomialParams",
    "WeightPrior", "DirichletProcess", "PitmanYor", "FiniteDirichlet", "stick_breaking",
]
