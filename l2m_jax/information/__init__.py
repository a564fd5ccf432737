"""Information estimators: pure functions over arrays (nats throughout)."""

from l2m_jax.information.entropy import EntropyEstimate, entropy
from l2m_jax.information.fits import PowerLawFit, fit_power_law
from l2m_jax.information.gaussian import gaussian_mi

__all__ = [
    "EntropyEstimate",
    "PowerLawFit",
    "entropy",
    "fit_power_law",
    "gaussian_mi",
]
