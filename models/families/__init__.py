"""Conjugate component families: likelihood + conjugate prior, batched over clusters."""

from .base import ConjugateFamily, SuffStats
from .diag_gaussian import DiagGaussianParams, DiagonalGaussian
from .gaussian_niw import GaussianNIW, GaussianParams
from .multinomial import Multinomial, MultinomialParams
from .student_niw import StudentNIW

__all__ = [
    "ConjugateFamily",
    "SuffStats",
    "GaussianNIW",
    "GaussianParams",
    "StudentNIW",
    "DiagonalGaussian",
    "DiagGaussianParams",
    "Multinomial",
    "MultinomialParams",
]
