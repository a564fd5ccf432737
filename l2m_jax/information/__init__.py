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
    OffsetProfile,
    PowerLawFit,
    bootstrap_power_law,
    fit_power_law,
    offset_profile,
)
from l2m_jax.information.gaussian import gaussian_mi
from l2m_jax.information.two_point import (
    TwoPointEstimates,
    TwoPointResult,
    shifted_pair_counts,
    shuffle_documents,
    two_point_estimates,
    two_point_mi,
    two_point_mi_from_counts,
)

__all__ = [
    "BipartiteResult",
    "BootstrapInterval",
    "CountTable",
    "DocumentScores",
    "EntropyEstimate",
    "ExponentFit",
    "OffsetProfile",
    "PairCounts",
    "PowerLawFit",
    "ScoringPlan",
    "TwoPointEstimates",
    "TwoPointResult",
    "bipartite_estimates",
    "bipartite_mi",
    "bootstrap_power_law",
    "count_ngrams",
    "count_pairs",
    "entropy",
    "fit_power_law",
    "gaussian_mi",
    "offset_profile",
    "scoring_plan",
    "shifted_pair_counts",
    "shuffle_documents",
    "two_point_estimates",
    "two_point_mi",
    "two_point_mi_from_counts",
]
