"""Information estimators: pure functions over arrays (nats throughout)."""

from l2m_jax.information.fits import PowerLawFit, fit_power_law
from l2m_jax.information.gaussian import gaussian_mi

__all__ = [
    "PowerLawFit",
    "fit_power_law",
    "gaussian_mi",
]
