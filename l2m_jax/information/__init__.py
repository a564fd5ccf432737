"""Information estimators: pure functions over arrays (nats throughout)."""

from l2m_jax.information.bipartite import (
    BipartiteResult,
    DocumentScores,
    ExponentFit,
    ScoringPlan,
    bipartite_estimates,
    bipartite_mi,
    scoring_plan,
)
from l2m_jax.information.counting import CountTable, PairCounts, count_ngrams, count_pairs
from l2m_jax.information.entropy import EntropyEstimate, entropy
from l2m_jax.information.fits import (
    BootstrapInterval,
    HilbergFit,
    PowerLawFit,
    bootstrap_hilberg,
    bootstrap_power_law,
    fit_hilberg,
    fit_power_law,
)
from l2m_jax.information.gaussian import gaussian_mi
from l2m_jax.information.two_point import TwoPointResult, two_point_mi, two_point_mi_from_counts

__all__ = [
    "BipartiteResult",
    "BootstrapInterval",
    "CountTable",
    "DocumentScores",
    "EntropyEstimate",
    "ExponentFit",
    "HilbergFit",
    "PairCounts",
    "PowerLawFit",
    "ScoringPlan",
    "TwoPointResult",
    "bipartite_estimates",
    "bipartite_mi",
    "bootstrap_hilberg",
    "bootstrap_power_law",
    "count_ngrams",
    "count_pairs",
    "entropy",
    "fit_hilberg",
    "fit_power_law",
    "gaussian_mi",
    "scoring_plan",
    "two_point_mi",
    "two_point_mi_from_counts",
]
