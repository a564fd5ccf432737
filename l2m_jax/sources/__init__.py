"""Where sequences come from: ground-truth families with exact information, and corpora."""

from l2m_jax.sources.gaussian import GaussianFamily, log_gaussian, subvolume_gaussian

__all__ = [
    "GaussianFamily",
    "log_gaussian",
    "subvolume_gaussian",
]
